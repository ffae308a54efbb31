"""Temporal smoothing of masks: flicker on a still scene against lag on a moving one, per weight.

    python benchmarks/smoothing.py [--model models/segnet_dsc.onnx] [--photos calibration] [--keep 0 0.3 0.5 0.7]

Clips are made from photos (no video of pets ships with the data): each photo is placed on a
1280x720 frame and
- still: 60 frames with camera-like noise (Gaussian, sigma 4 grey levels) and sub-pixel jitter
  (+-0.5 px): flicker is 1 - the mean IoU of the animal mask (pet + border) between consecutive frames;
- moving: the photo pans 8 px per frame (240 px/s at 30 FPS, a walking pet across the frame in
  5 s): lag is how far the smoothed mask's centroid trails the unsmoothed one's, in pixels, and
  the IoU between them.
Medians over the photos. Masks come from ``Predictor.masks`` as in the live loop (smooth upsampling).
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path

import cv2
import numpy as np

from edgeseg.runtime.backends.predictor import Predictor
from edgeseg.runtime.images import list_images, read_image
from edgeseg.runtime.masks import BACKGROUND, Smoother

SIZE = (1280, 720)


def still_clip(photo: np.ndarray, rng: np.random.Generator, n: int = 60) -> list[np.ndarray]:
    base = cv2.resize(photo, SIZE, interpolation=cv2.INTER_CUBIC).astype(np.float32)
    frames = []
    for _ in range(n):
        dx, dy = rng.uniform(-0.5, 0.5, 2)
        moved = cv2.warpAffine(base, np.float32([[1, 0, dx], [0, 1, dy]]), SIZE, borderMode=cv2.BORDER_REFLECT)
        frames.append(np.clip(moved + rng.normal(0, 4, moved.shape), 0, 255).astype(np.uint8))
    return frames


def moving_clip(photo: np.ndarray, step: int = 8, n: int = 60) -> list[np.ndarray]:
    h = SIZE[1]
    small = cv2.resize(photo, (round(photo.shape[1] * h / photo.shape[0]), h), interpolation=cv2.INTER_AREA)
    canvas = np.full((h, SIZE[0] + step * n, 3), 90, np.uint8)
    frames = []
    for i in range(n):
        frame = canvas[:, :SIZE[0]].copy()
        x = i * step
        width = min(small.shape[1], SIZE[0] - x)
        if width <= 0:
            break
        frame[:, x:x + width] = small[:, :width]
        frames.append(frame)
    return frames


def animal_masks(predictor: Predictor, frames: list[np.ndarray], keep: float) -> list[np.ndarray]:
    smoother = Smoother(keep) if keep else None
    out = []
    for f in frames:
        scores = predictor.scores(predictor.preprocess(f))[0]
        out.append(predictor.masks(scores, f.shape, smoother).ids != BACKGROUND)
    return out


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.count_nonzero(a | b)
    return np.count_nonzero(a & b) / union if union else 1.0


def centroid_x(m: np.ndarray) -> float:
    xs = np.nonzero(m)[1]
    return float(xs.mean()) if xs.size else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    repo = Path(__file__).resolve().parents[1]
    ap.add_argument("--model", type=Path, default=repo / "models" / "segnet_dsc.onnx")
    ap.add_argument("--photos", type=Path, default=repo / "calibration")
    ap.add_argument("--count", type=int, default=12, help="photos used")
    ap.add_argument("--keep", type=float, nargs="+", default=[0.0, 0.3, 0.5, 0.7])
    args = ap.parse_args()
    predictor = Predictor.load(args.model, backend="onnxruntime", precision="fp32")
    photos = [read_image(p) for p in list_images(args.photos)[:: max(1, len(list_images(args.photos)) // args.count)]]
    rng = np.random.default_rng(0)
    stills = [still_clip(p, rng) for p in photos[: args.count]]
    moving = [moving_clip(p) for p in photos[: args.count]]
    print(f"{len(stills)} photos from {args.photos}, {SIZE[0]}x{SIZE[1]}; medians over photos")
    print("keep | still: consecutive-frame IoU, flicker | moving 8 px/frame: lag px, IoU with unsmoothed")
    reference = [animal_masks(predictor, clip, 0.0) for clip in moving]
    for keep in args.keep:
        still_iou = [np.mean([iou(a, b) for a, b in itertools.pairwise(m)])
                     for m in (animal_masks(predictor, clip, keep) for clip in stills)]
        lags, ious = [], []
        for clip, ref in zip(moving, reference, strict=True):
            got = animal_masks(predictor, clip, keep)
            lags.append(np.nanmedian([centroid_x(r) - centroid_x(g) for g, r in zip(got[5:], ref[5:], strict=True)]))
            ious.append(np.mean([iou(g, r) for g, r in zip(got[5:], ref[5:], strict=True)]))
        print(f"{keep:4.2f} | {np.median(still_iou):.4f}, {1 - np.median(still_iou):.4f} | "
              f"{np.median(lags):5.1f}, {np.median(ious):.4f}")


if __name__ == "__main__":
    main()
