"""Mask rendering, vectorised: overlay, mask or side-by-side views with the border class as an outline."""

from __future__ import annotations

import cv2
import numpy as np

VIEWS = ("overlay", "mask", "side-by-side")
PET, BACKGROUND, BORDER = 0, 1, 2


def parse_color(text: str) -> tuple[int, int, int]:
    """``"#ff8000"`` or ``"255,128,0"`` (RGB) -> BGR tuple."""
    t = text.strip().lstrip("#")
    try:
        rgb = tuple(int(t[i:i + 2], 16) for i in (0, 2, 4)) if len(t) == 6 and "," not in t else tuple(
            int(v) for v in t.split(","))
    except ValueError:
        rgb = ()
    if len(rgb) != 3 or not all(0 <= v <= 255 for v in rgb):
        raise ValueError(f"colour {text!r} is not #rrggbb or r,g,b")
    return rgb[2], rgb[1], rgb[0]


class Renderer:
    """Draws a class-id mask on a BGR frame. Palette lookups and one blend; no per-pixel Python."""

    def __init__(self, view: str = "overlay", alpha: float = 0.5, pet_color: tuple[int, int, int] = (0, 200, 255),
                 border_color: tuple[int, int, int] = (255, 255, 255), border_as_pet: bool = False) -> None:
        if view not in VIEWS:
            raise ValueError(f"view {view!r}: choose one of {', '.join(VIEWS)}")
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha {alpha} must be within 0..1")
        self.view, self.alpha, self.border_as_pet = view, alpha, border_as_pet
        self.pet_color, self.border_color = np.array(pet_color, np.uint8), np.array(border_color, np.uint8)
        # class id -> colour of the mask view
        self.palette = np.array([pet_color, (0, 0, 0), border_color], dtype=np.uint8)
        if border_as_pet:
            self.palette[BORDER] = pet_color
        self._tint = np.hstack([np.eye(3) * (1.0 - alpha), alpha * np.array(pet_color, np.float64)[:, None]])
        self._border = np.hstack([np.zeros((3, 3)), np.array(border_color, np.float64)[:, None]])

    def mask_image(self, mask: np.ndarray) -> np.ndarray:
        return self.palette[np.minimum(mask, 2)]

    def overlay(self, frame: np.ndarray, mask: np.ndarray) -> np.ndarray:
        # One affine pass tints the whole frame (out = (1 - a) * frame + a * colour), then the pet
        # pixels are copied over under the mask; the border class is painted as an outline.
        tinted = cv2.transform(frame, self._tint)
        out = frame.copy()
        if self.border_as_pet:
            cv2.copyTo(tinted, _compare(mask, BACKGROUND, cv2.CMP_NE), out)
        else:
            cv2.copyTo(tinted, _compare(mask, PET, cv2.CMP_EQ), out)
            solid = cv2.transform(frame, self._border)  # numpy's colour broadcast is 15x slower
            cv2.copyTo(solid, _compare(mask, BORDER, cv2.CMP_EQ), out)
        return out

    def render(self, frame: np.ndarray, mask: np.ndarray) -> np.ndarray:
        if self.view == "mask":
            return self.mask_image(mask)
        if self.view == "overlay":
            return self.overlay(frame, mask)
        return np.hstack([frame, self.overlay(frame, mask)])


def _compare(mask: np.ndarray, class_id: int, op: int) -> np.ndarray:
    """255 where ``mask op class_id``. OpenCV reads a 1x1 array beside a number as two scalars and
    refuses them, so a one-pixel image (a frame that can occur) compares through numpy."""
    if mask.size == 1:
        hit = mask == class_id if op == cv2.CMP_EQ else mask != class_id
        return hit.astype(np.uint8) * 255
    return cv2.compare(mask, class_id, op)
