"""Regenerate README's pictures from the bundled model (FP32 ONNX in ONNX Runtime at fp32, so they do
not depend on the CPU):

    python docs/figures.py [--extra ../shared/datasets/oxford-pets-extra]

- docs/overlays.jpg: the default overlay on six bundled calibration photos;
- docs/edges.jpg: three photos of oxford-pets-extra (or of calibration/ without it) at camera size
  (1280 wide), centre crops: the old rendering (class ids blown up with nearest neighbour, the
  border class as an outline) beside the default (scores upsampled, the animal one soft-edged shape).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np

from edgeseg.runtime.images import read_image
from edgeseg.runtime.masks import BACKGROUND
from edgeseg.runtime.overlay import Renderer
from edgeseg.runtime.predictor import Predictor

REPO = Path(__file__).resolve().parents[1]
PHOTOS = ["Bengal_107.jpg", "Bombay_10.jpg", "beagle_10.jpg", "pug_112.jpg", "samoyed_108.jpg", "Sphynx_111.jpg"]
EDGE_PHOTOS = ["Sphynx_15.jpg", "Siamese_117.jpg", "german_shorthaired_12.jpg"]


def tile(images: list[np.ndarray], columns: int, height: int) -> np.ndarray:
    """Scale each image to ``height`` and pad to one width, then lay them out in rows."""
    scaled = [cv2.resize(im, (round(im.shape[1] * height / im.shape[0]), height), interpolation=cv2.INTER_AREA)
              for im in images]
    width = max(im.shape[1] for im in scaled)
    cells = [cv2.copyMakeBorder(im, 2, 2, 2, 2 + width - im.shape[1], cv2.BORDER_CONSTANT, value=(255, 255, 255))
             for im in scaled]
    rows = [np.hstack(cells[i:i + columns]) for i in range(0, len(cells), columns)]
    return np.vstack(rows)


def comparison(predictor: Predictor, photo: np.ndarray) -> np.ndarray:
    """Old | new at 1280 wide, 480x360 of each around the animal's edges."""
    frame = cv2.resize(photo, (1280, round(photo.shape[0] * 1280 / photo.shape[1])), interpolation=cv2.INTER_CUBIC)
    scores = predictor.scores(predictor.preprocess(frame))[0]
    h, w = frame.shape[:2]
    animal = (predictor.masks(scores, frame.shape).ids != BACKGROUND).view(np.uint8)
    ys, xs = np.nonzero(cv2.morphologyEx(animal, cv2.MORPH_GRADIENT, np.ones((3, 3), np.uint8)))
    cy, cx = (int(np.median(ys)), int(np.median(xs))) if len(ys) else (h // 2, w // 2)  # where the edges are
    cy, cx = min(max(cy, 180), h - 180), min(max(cx, 240), w - 240)
    crop = (slice(cy - 180, cy + 180), slice(cx - 240, cx + 240))
    views = []
    for upsample, border in (("nearest", "outline"), ("smooth", "pet")):
        predictor.upsample = upsample
        views.append(Renderer(border=border).render(frame, predictor.masks(scores, frame.shape))[crop])
    return np.hstack(views)


def save(path: Path, image: np.ndarray) -> None:
    _, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 80])
    path.write_bytes(data.tobytes())
    print(f"{path}: {image.shape[1]}x{image.shape[0]}, {len(data) / 1e3:.0f} KB")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=REPO / "models" / "segnet_dsc.onnx")
    ap.add_argument("--extra", type=Path, default=REPO.parent / "shared" / "datasets" / "oxford-pets-extra")
    ap.add_argument("--out", type=Path, default=REPO / "docs")
    args = ap.parse_args()
    predictor = Predictor.load(args.model, backend="onnxruntime", precision="fp32", threads=2)
    frames = [read_image(REPO / "calibration" / name) for name in PHOTOS]
    save(args.out / "overlays.jpg", tile([Renderer().render(f, predictor.predict(f)) for f in frames],
                                         columns=3, height=200))
    folder = args.extra / "images" if (args.extra / "images").is_dir() else REPO / "calibration"
    names = EDGE_PHOTOS if folder.parent == args.extra else PHOTOS[:3]
    pairs = [comparison(predictor, read_image(folder / name)) for name in names]
    save(args.out / "edges.jpg", tile(pairs, columns=1, height=240))


if __name__ == "__main__":
    main()
