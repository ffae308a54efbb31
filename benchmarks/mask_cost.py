"""What masks at the frame's size cost: the old drawing (ids blown up with nearest neighbour, hard
overlay with the border as an outline) against the default (scores upsampled, soft-edged animal),
for the overlay alone and for the class-id mask, at camera sizes.

    python benchmarks/mask_cost.py [--model models/segnet_dsc.onnx] [--photo calibration/Bengal_107.jpg]

Postprocess + render in ms (medians of 200 after 20, interleaved per size), from the same model
scores; the frame is the photo scaled to each size.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import cv2
import numpy as np

from edgeseg.runtime.backends.predictor import Predictor
from edgeseg.runtime.images import read_image
from edgeseg.runtime.loop.overlay import Renderer

SIZES = ((640, 480), (1280, 720), (1920, 1080))


def main() -> None:
    repo = Path(__file__).resolve().parents[1]
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=repo / "models" / "segnet_dsc.onnx")
    ap.add_argument("--photo", type=Path, default=repo / "calibration" / "Bengal_107.jpg")
    ap.add_argument("--runs", type=int, default=200)
    args = ap.parse_args()
    predictor = Predictor.load(args.model, backend="onnxruntime", precision="fp32")
    photo = read_image(args.photo)
    renderers = {"nearest": Renderer(border="outline"), "smooth": Renderer()}
    print("frame | overlay: old, default ms | class-id mask: nearest, smooth ms")
    for size in SIZES:
        frame = cv2.resize(photo, size, interpolation=cv2.INTER_CUBIC)
        scores = predictor.scores(predictor.preprocess(frame))[0]

        def overlay(mode: str, frame=frame, scores=scores) -> None:
            predictor.upsample = mode
            renderers[mode].render(frame, predictor.masks(scores, frame.shape))

        def ids(mode: str, frame=frame, scores=scores) -> None:
            predictor.upsample = mode
            _ = predictor.masks(scores, frame.shape).ids

        jobs = {(k, m): f for k, f in (("overlay", overlay), ("ids", ids)) for m in ("nearest", "smooth")}
        times = {key: [] for key in jobs}
        for i in range(args.runs + 20):
            for key, fn in jobs.items():
                t0 = time.perf_counter()
                fn(key[1])
                if i >= 20:
                    times[key].append(1000 * (time.perf_counter() - t0))
        med = {k: float(np.median(v)) for k, v in times.items()}
        print(f"{size[0]}x{size[1]} | {med['overlay', 'nearest']:.2f}, {med['overlay', 'smooth']:.2f} | "
              f"{med['ids', 'nearest']:.2f}, {med['ids', 'smooth']:.2f}")


if __name__ == "__main__":
    main()
