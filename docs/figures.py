"""Regenerate README's and the model card's pictures from the bundled model (FP32 ONNX in ONNX Runtime at
fp32, so they do not depend on the CPU), on test-split photos only (the model trained on trainval lines):

    python docs/figures.py [--datasets ../shared/datasets]

- docs/overlays.jpg: the default overlay on six test photos (the first test line of six breeds);
- docs/edges.jpg: three test photos at camera size (1280 wide), centre crops: the old rendering (class
  ids blown up with nearest neighbour, the border class as an outline) beside the default (scores
  upsampled, the animal one soft-edged shape);
- docs/failures.jpg: the four test photos of both test splits with the lowest animal IoU, each beside
  its trimap's animal (white), with the IoU printed;
- docs/scenes.jpg: the default overlay on pet-camera scenes no training saw: the first three people
  photos of the report split (201-300) and the three COCO cats/dogs whose animal fills the least of the
  frame.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np

from edgeseg.evaluation.datasets import IGNORE, Sample, breed, oxford_split, read_trimap
from edgeseg.evaluation.metrics import ConfusionMatrix
from edgeseg.evaluation.scenes import COCO_ANIMALS, in_range, rasterize
from edgeseg.evaluation.yolo_data import load_yolo_set, read_yolo_labels
from edgeseg.runtime.backends.predictor import Predictor
from edgeseg.runtime.images import list_images, read_image
from edgeseg.runtime.loop.overlay import Renderer
from edgeseg.runtime.masks import BACKGROUND, Masks

REPO = Path(__file__).resolve().parents[1]
TEST_SETS = ("oxford-pets-3breeds", "oxford-pets-extra")
OVERLAY_BREEDS = ["Maine_Coon", "Bombay", "american_bulldog", "pomeranian", "Bengal", "german_shorthaired"]
EDGE_BREEDS = ["Sphynx", "Siamese", "havanese"]


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


def masks_of(predictor: Predictor, image: np.ndarray) -> Masks:
    """The masks the live loop draws (smooth: soft edges), not just the class ids."""
    return predictor.masks(predictor.scores(predictor.preprocess(image))[0], image.shape)


def first_of(samples: list[Sample], breeds: list[str]) -> list[Sample]:
    """The first test line of each breed, in the order given."""
    firsts = {}
    for s in samples:
        firsts.setdefault(breed(s.name), s)
    missing = [b for b in breeds if b not in firsts]
    if missing:
        raise SystemExit(f"no test photo of {', '.join(missing)} in {', '.join(TEST_SETS)}: pass --datasets "
                         "the folder that holds them")
    return [firsts[b] for b in breeds]


def failures(predictor: Predictor, samples: list[Sample], n: int = 4) -> np.ndarray:
    """The ``n`` photos with the lowest animal IoU, each as overlay | truth, the IoU written on it."""
    scored = []
    for s in samples:
        image, truth = read_image(s.image), read_trimap(s.mask)
        masks = masks_of(predictor, image)
        cm = ConfusionMatrix()
        cm.update(truth, masks.ids)
        scored.append((cm.summary()["pet_iou"], s, image, masks, truth))
    scored.sort(key=lambda t: t[0])
    panels = []
    for iou, s, image, masks, truth in scored[:n]:
        view = Renderer().render(image, masks)
        animal = np.where(((truth != BACKGROUND) & (truth != IGNORE))[..., None], 255, 0).astype(np.uint8)
        panel = np.hstack([view, np.repeat(animal, 3, axis=2)])
        cv2.putText(panel, f"{s.name}: animal IoU {iou:.2f}", (8, 24), cv2.FONT_HERSHEY_SIMPLEX, 0.7, (0, 0, 0), 3)
        cv2.putText(panel, f"{s.name}: animal IoU {iou:.2f}", (8, 24), cv2.FONT_HERSHEY_SIMPLEX, 0.7,
                    (255, 255, 255), 1)
        panels.append(panel)
        print(f"failure: {s.name} animal IoU {iou:.3f}")
    return tile(panels, columns=2, height=220)


def scene_frames(root: Path) -> list[np.ndarray]:
    """The first three people photos numbered 201-300, and the three cats/dogs filling the least of their frame."""
    people = [read_image(p) for p in list_images(root / "people" / "images") if in_range(p, (201, 300))][:3]
    sized = []
    for image, label in load_yolo_set(root / "coco128-cats-dogs").pairs:
        frame = read_image(image)
        shapes = read_yolo_labels(label) if label else []
        sized.append((rasterize(shapes, set(COCO_ANIMALS), frame.shape[:2]).mean(), str(image), frame))
    small = [frame for _, _, frame in sorted(sized, key=lambda t: t[:2])[:3]]
    return people + small


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=REPO / "models" / "segnet_dsc.onnx")
    ap.add_argument("--datasets", type=Path, default=REPO.parent / "shared" / "datasets")
    ap.add_argument("--out", type=Path, default=REPO / "docs")
    args = ap.parse_args()
    predictor = Predictor.load(args.model, backend="onnxruntime", precision="fp32", threads=2)
    tests = [s for name in TEST_SETS for s in oxford_split(args.datasets / name, "test")]
    frames = [read_image(s.image) for s in first_of(tests, OVERLAY_BREEDS)]
    save(args.out / "overlays.jpg", tile([Renderer().render(f, masks_of(predictor, f)) for f in frames],
                                         columns=3, height=200))
    pairs = [comparison(predictor, read_image(s.image)) for s in first_of(tests, EDGE_BREEDS)]
    save(args.out / "edges.jpg", tile(pairs, columns=1, height=240))
    save(args.out / "failures.jpg", failures(predictor, tests))
    frames = scene_frames(args.datasets / "people-and-scenes")
    save(args.out / "scenes.jpg", tile([Renderer().render(f, masks_of(predictor, f)) for f in frames],
                                       columns=3, height=200))


if __name__ == "__main__":
    main()
