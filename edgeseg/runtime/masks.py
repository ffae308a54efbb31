"""From the model's 128x128 scores to masks at the frame's size: upsample scores, then decide.

Blowing class ids up with nearest neighbour turns every edge into a staircase of the model's grid
(10 pixels per step on a 1280-wide frame). Here the decision margins are interpolated instead:

- ``a = score_pet - score_background`` and ``b = score_border - score_background`` per model
  pixel; the class is pet where ``min(a, a - b) >= 0``, border where ``min(b, b - a) > 0``,
  background elsewhere (the argmax, the first maximum winning ties);
- those two margins are upsampled bilinearly as int16 images (1/256 of a logit per step) and
  thresholded, so a class edge can fall on any frame pixel;
- the animal's opacity (pet or border, 0..255) ramps from 0 to 255 as its probability
  ``1 - softmax_background`` goes from 0.25 to 0.75, upsampled the same way: overlays, cut-outs and
  blurred backgrounds use it for soft edges.

Each is computed on first use only (:class:`Masks`), so a loop that only shows an overlay never
builds the class-id mask. ``nearest`` keeps the old exact-id path. :class:`Smoother` averages the
margins over time for cameras and videos. :func:`drop_unsure_regions` turns each connected animal
region the model is unsure of, on average, into background (``--region-confidence``).
"""

from __future__ import annotations

from functools import cached_property

import cv2
import numpy as np

UPSAMPLING = ("smooth", "nearest")
PET, BACKGROUND, BORDER = 0, 1, 2
OPACITY_RAMP = (0.25, 0.75)  # animal probability mapped to opacity 0 .. 255
_FIXED = 256.0  # int16 units per logit: margins within +-128 logits, steps of 0.004


def animal_probability(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``1 - softmax_background`` from the margins ``a`` (pet) and ``b`` (border) over background."""
    ea, eb = np.exp(np.minimum(a, 60.0)), np.exp(np.minimum(b, 60.0))  # exp stays finite
    return (ea + eb) / (1.0 + ea + eb)


def drop_unsure_regions(logits: np.ndarray, min_confidence: float) -> np.ndarray:
    """(C, h, w) class scores -> the same, with every connected animal region (pet or border by the argmax,
    8-connected, on the model's grid) whose mean animal probability ``1 - softmax_background`` is under
    ``min_confidence`` made background (its probability then near 0). A region is one decision: the
    model's false animals in rooms (faces, food) are mostly a few uncertain blobs, while a real animal is
    a confident one, so this removes the former without eating into the edges of the latter, as a
    per-pixel threshold would. 0: off (the scores themselves are returned)."""
    if min_confidence <= 0.0:
        return logits
    logits = logits.astype(np.float32, copy=False)
    a, b = logits[PET] - logits[BACKGROUND], logits[BORDER] - logits[BACKGROUND]
    count, regions = cv2.connectedComponents(((a >= 0) | (b > 0)).view(np.uint8), connectivity=8)
    if count < 2:
        return logits
    mean = np.bincount(regions.ravel(), weights=animal_probability(a, b).ravel(), minlength=count) / np.bincount(
        regions.ravel(), minlength=count)
    unsure = mean < min_confidence
    unsure[0] = False  # label 0: the background around the regions
    drop = unsure[regions]
    if not drop.any():
        return logits
    out = logits.copy()
    out[BACKGROUND][drop] = np.maximum(logits[PET], logits[BORDER])[drop] + 10.0
    return out


class Smoother:
    """Exponential moving average of the decision margins at model resolution, for sequences of
    frames of one scene: ``keep`` is the weight of the past (0: off). It starts over when the frame
    size changes; use a new one for unrelated images."""

    def __init__(self, keep: float) -> None:
        if not 0.0 <= keep < 1.0:
            raise ValueError(f"smoothing {keep} must be within 0 (off) and 1 (exclusive)")
        self.keep = keep
        self._state: np.ndarray | None = None
        self._shape: tuple[int, ...] | None = None

    def __call__(self, margins: np.ndarray, frame_shape: tuple[int, ...]) -> np.ndarray:
        if self.keep == 0.0:
            return margins
        if self._state is None or self._state.shape != margins.shape or self._shape != frame_shape[:2]:
            self._state, self._shape = margins.astype(np.float32, copy=True), frame_shape[:2]
        else:
            self._state *= self.keep
            self._state += (1.0 - self.keep) * margins
        return self._state.copy()  # the frame's own margins: the state changes with the next frame


class Masks:
    """One frame's segmentation at the frame's size: :attr:`ids` (uint8 class ids) and
    :attr:`animal` (uint8 opacity of pet or border, 0..255, see OPACITY_RAMP), each built when first read."""

    def __init__(self, shape: tuple[int, ...], *, margins: np.ndarray | None = None, ids: np.ndarray | None = None,
                 upsample: str = "smooth") -> None:
        """``margins``: (2, h, w) float32 ``(a, b)`` at model resolution (see the module docstring);
        or ``ids``: class ids at model resolution or already at the frame's size (a model with an
        ArgMax head, or the ``nearest`` path)."""
        if upsample not in UPSAMPLING:
            raise ValueError(f"upsampling {upsample!r}: choose smooth or nearest")
        if (margins is None) == (ids is None):
            raise ValueError("give margins or ids")
        self.shape = tuple(shape[:2])
        if margins is not None:  # float16 logits (an engine built elsewhere) would overflow exp() below
            margins = margins.astype(np.float32, copy=False)
        self._margins, self._ids, self.upsample = margins, ids, upsample

    @classmethod
    def from_logits(cls, logits: np.ndarray, shape: tuple[int, ...], upsample: str = "smooth",
                    smoother: Smoother | None = None) -> Masks:
        """(C, h, w) class scores of one frame -> its masks (margins smoothed over time by ``smoother``)."""
        margins = np.stack([logits[PET] - logits[BACKGROUND], logits[BORDER] - logits[BACKGROUND]])
        if smoother is not None:
            margins = smoother(margins, shape)
        return cls(shape, margins=margins, upsample=upsample)

    @cached_property
    def ids(self) -> np.ndarray:
        h, w = self.shape
        if self._margins is None or self.upsample == "nearest":
            small = self._ids if self._ids is not None else self._small_ids()
            return small if small.shape == (h, w) else cv2.resize(small, (w, h), interpolation=cv2.INTER_NEAREST)
        a, b = self._margins
        not_pet = np.less(self._up(np.minimum(a, a - b)), 0).view(np.uint8)
        ids = np.greater(self._up(np.minimum(b, b - a)), 0).view(np.uint8)  # 1 border, 0 background
        ids += 1  # 2 border, 1 background
        ids *= not_pet  # 0 pet
        return ids

    @cached_property
    def animal(self) -> np.ndarray:
        h, w = self.shape
        if self._margins is None or self.upsample == "nearest":  # hard: from the ids, at their own size
            small = self._ids if self._ids is not None else self._small_ids()
            opaque = np.not_equal(small, BACKGROUND).view(np.uint8) * np.uint8(255)
            return opaque if opaque.shape == (h, w) else cv2.resize(opaque, (w, h), interpolation=cv2.INTER_NEAREST)
        p = animal_probability(*self._margins)
        # opaque where the model is sure (p >= 0.75), clear where it is sure of background (p <= 0.25):
        # a cut-out's background must not keep a haze of 10-20% probabilities; soft in between
        opacity = np.rint(np.clip((p - OPACITY_RAMP[0]) / (OPACITY_RAMP[1] - OPACITY_RAMP[0]), 0, 1) * 255)
        opacity = opacity.astype(np.uint8)
        return opacity if opacity.shape == (h, w) else cv2.resize(opacity, (w, h), interpolation=cv2.INTER_LINEAR)

    def animal_grid(self) -> np.ndarray:
        """Animal (pet or border) as booleans on the model's own grid (the frame's, for a model with an ArgMax
        head whose ids were already resized): cheap figures for events and zones."""
        small = self._ids if self._margins is None else self._small_ids()
        return small != BACKGROUND

    def _small_ids(self) -> np.ndarray:
        a, b = self._margins
        ids = np.full(a.shape, BACKGROUND, np.uint8)
        ids[(b > 0) & (b > a)] = BORDER
        ids[(a >= 0) & (a >= b)] = PET
        return ids

    def _up(self, margin: np.ndarray) -> np.ndarray:
        h, w = self.shape
        fixed = np.clip(np.rint(margin * _FIXED), -32767, 32767).astype(np.int16)
        return fixed if fixed.shape == (h, w) else cv2.resize(fixed, (w, h), interpolation=cv2.INTER_LINEAR)
