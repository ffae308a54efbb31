"""Regenerate README's picture: the bundled model's overlays on six bundled calibration photos.

    python docs/figures.py            # writes docs/overlays.jpg (about 60 KB)

Runs the FP32 ONNX in ONNX Runtime at fp32, so the picture does not depend on the CPU.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np

from edgeseg.runtime.images import read_image
from edgeseg.runtime.overlay import Renderer
from edgeseg.runtime.predictor import Predictor

REPO = Path(__file__).resolve().parents[1]
PHOTOS = ["Bengal_107.jpg", "Bombay_10.jpg", "beagle_10.jpg", "pug_112.jpg", "samoyed_108.jpg", "Sphynx_111.jpg"]


def tile(images: list[np.ndarray], columns: int, height: int) -> np.ndarray:
    """Scale each image to ``height`` and pad to one width, then lay them out in rows."""
    scaled = [cv2.resize(im, (round(im.shape[1] * height / im.shape[0]), height), interpolation=cv2.INTER_AREA)
              for im in images]
    width = max(im.shape[1] for im in scaled)
    cells = [cv2.copyMakeBorder(im, 2, 2, 2, 2 + width - im.shape[1], cv2.BORDER_CONSTANT, value=(255, 255, 255))
             for im in scaled]
    rows = [np.hstack(cells[i:i + columns]) for i in range(0, len(cells), columns)]
    return np.vstack(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=REPO / "models" / "segnet_dsc.onnx")
    ap.add_argument("-o", "--output", type=Path, default=REPO / "docs" / "overlays.jpg")
    args = ap.parse_args()
    predictor = Predictor.load(args.model, backend="onnxruntime", precision="fp32", threads=2)
    renderer = Renderer(view="overlay")
    frames = [read_image(REPO / "calibration" / name) for name in PHOTOS]
    grid = tile([renderer.render(f, predictor.predict(f)) for f in frames], columns=3, height=200)
    _, data = cv2.imencode(".jpg", grid, [cv2.IMWRITE_JPEG_QUALITY, 80])
    args.output.write_bytes(data.tobytes())
    print(f"{args.output}: {grid.shape[1]}x{grid.shape[0]}, {len(data) / 1e3:.0f} KB")


if __name__ == "__main__":
    main()
