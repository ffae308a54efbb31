"""Labelled sets that are not Oxford portraits, read as a user's own data comes:

- a YOLO segmentation set (a folder or a dataset YAML, read by ``yolo_data``), scored with a class
  map saying which ids are animals: the animal IoU (pet and border against the animal's polygons) per
  photo, and on photos without an animal the share of pixels called pet, and the labels those pixels
  fall on (the smallest shape holding each, by the set's class names); pixels of people
  (``--person-class``) called pet, where the labels have them;
- photos with person masks (``images/N.jpg``, ``masks/N.png``: 0 background, anything else person;
  a mask smaller than its photo is resized, nearest): the share of person pixels called pet.

"Called pet" is pet or border, the pixels ``edgeseg run`` paints as the animal.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from pathlib import Path

import cv2
import numpy as np

from edgeseg.errors import EdgesegError
from edgeseg.evaluation.datasets import resize_mask
from edgeseg.evaluation.yolo_data import COCO_PERSON, Shape, YoloSet, read_yolo_labels
from edgeseg.runtime.backends.predictor import Predictor
from edgeseg.runtime.images import ImageError, list_images, read_image

COCO_ANIMALS = (15, 16)  # COCO-80's cat and dog, as Ultralytics numbers them
PAINTED = 0.2  # a person "painted" when more than this share of their pixels is called pet


def _pixels(s: Shape, shape: tuple[int, int]) -> np.ndarray:
    """A shape's polygon in pixel coordinates of an image of ``shape`` (h, w), as cv2.fillPoly takes it."""
    h, w = shape
    return np.round(s.points * [w, h] - 0.5).astype(np.int32)


def rasterize(shapes: Sequence[Shape], classes: set[int], shape: tuple[int, int]) -> np.ndarray:
    """A bool mask of the pixels inside any polygon of ``classes`` (even-odd within one polygon)."""
    out = np.zeros(shape, np.uint8)
    for s in shapes:
        if s.cls in classes:
            cv2.fillPoly(out, [_pixels(s, shape)], 1)
    return out.astype(bool)


def label_map(shapes: Sequence[Shape], shape: tuple[int, int]) -> np.ndarray:
    """Per pixel the class of the smallest shape holding it (a pizza on a table is pizza), -1 where none."""
    out = np.full(shape, -1, np.int32)
    polygons = [(s.cls, _pixels(s, shape)) for s in shapes]
    for cls, pts in sorted(polygons, key=lambda p: -abs(cv2.contourArea(p[1]))):
        cv2.fillPoly(out, [pts], cls)
    return out


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.count_nonzero(a | b)
    return np.count_nonzero(a & b) / union if union else 1.0


def score_yolo(predictors: Sequence[Predictor], data: YoloSet, animal_classes: Sequence[int] = COCO_ANIMALS,
               person_class: int | None = COCO_PERSON, progress: Callable[[int, int], None] | None = None
               ) -> list[dict]:
    """Per model: mean animal IoU over the photos with an animal (and pooled over their pixels), photos whose
    animal was missed (IoU under 0.1), the share of pixels called pet on the photos without one (and its
    split by the label those pixels fall on, largest first; the parts sum to it), and the share of
    labelled person pixels called pet; each photo's IoU or share by its file name (the means count every photo,
    two of one name too)."""
    pairs, names, animals = data.pairs, data.names, set(animal_classes)
    acc = [{"ious": [], "inter": 0, "union": 0, "free": [], "by_label": {}, "person": [0, 0], "per_image": {},
            "per_image_free": {}} for _ in predictors]
    for i, (image_path, label) in enumerate(pairs):
        image = read_image(image_path)
        shapes = read_yolo_labels(label) if label else []
        truth = rasterize(shapes, animals, image.shape[:2])
        person = rasterize(shapes, {person_class}, image.shape[:2]) & ~truth if person_class is not None else None
        labels = None if truth.any() else label_map(shapes, image.shape[:2])
        for p, a in zip(predictors, acc, strict=True):
            animal = p.predict(image) != 1
            if truth.any():
                iou = _iou(animal, truth)
                a["ious"].append(iou)
                a["inter"] += int(np.count_nonzero(animal & truth))
                a["union"] += int(np.count_nonzero(animal | truth))
                a["per_image"][image_path.name] = iou
            else:
                a["free"].append(float(animal.mean()))
                a["per_image_free"][image_path.name] = a["free"][-1]
                found, counts = np.unique(labels[animal], return_counts=True)
                for cls, n in zip(found.tolist(), counts.tolist(), strict=True):
                    a["by_label"][cls] = a["by_label"].get(cls, 0.0) + n / animal.size
            if person is not None:  # a person holding a cat: the cat's pixels are the cat's
                a["person"][0] += int(np.count_nonzero(animal & person))
                a["person"][1] += int(np.count_nonzero(person))
        if progress:
            progress(i + 1, len(pairs))
    out = []
    for p, a in zip(predictors, acc, strict=True):
        ious = np.array(a["ious"])
        out.append({**p.describe(), "images": len(pairs), "with_animal": len(ious),
                    "animal_iou_mean": float(ious.mean()) if len(ious) else None,
                    "animal_iou_pooled": a["inter"] / a["union"] if a["union"] else None,
                    "missed": int((ious < 0.1).sum()), "without_animal": len(a["free"]),
                    "pet_share_without_animal": float(np.mean(a["free"])) if a["free"] else None,
                    "pet_share_by_label": {("unlabelled" if c < 0 else names.get(c, str(c))): v / len(a["free"])
                                           for c, v in sorted(a["by_label"].items(), key=lambda kv: -kv[1])},
                    "person_pixels_called_pet": a["person"][0] / a["person"][1] if a["person"][1] else None,
                    "per_image_iou": a["per_image"], "per_image_pet_share": a["per_image_free"]})
    return out


def person_pairs(root: Path, numbered: tuple[int, int] | None = None) -> list[tuple[Path, Path]]:
    """(photo, person mask) pairs of ``root/images`` and ``root/masks`` (same stem, .png); with
    ``numbered`` only the photos whose name is a number in that range (a split by number)."""
    images, masks = root / "images", root / "masks"
    if not images.is_dir() or not masks.is_dir():
        raise EdgesegError("expected images/ and masks/ (person masks, 0 background) side by side", root)
    pairs = []
    for image in list_images(images):
        if not in_range(image, numbered):
            continue
        mask = masks / f"{image.stem}.png"
        if not mask.is_file():
            raise EdgesegError(f"{image.name} has no mask {mask.name}", masks)
        pairs.append((image, mask))
    if not pairs:
        raise EdgesegError("no photo with a person mask" + (f" numbered {numbered[0]}-{numbered[1]}" if numbered
                                                            else ""), root)
    return pairs


def in_range(path: Path, numbered: tuple[int, int] | None) -> bool:
    """Whether a file's name is a number within ``numbered`` (always, without a range)."""
    return numbered is None or (path.stem.isdigit() and numbered[0] <= int(path.stem) <= numbered[1])


def parse_range(text: str, option: str = "--numbered") -> tuple[int, int]:
    m = re.fullmatch(r"\s*(\d+)\s*-\s*(\d+)\s*", text)
    if not m or int(m[1]) > int(m[2]):
        raise EdgesegError(f"{option} {text!r}: write a range of file numbers, e.g. 201-300")
    return int(m[1]), int(m[2])


def score_people(predictors: Sequence[Predictor], pairs: Sequence[tuple[Path, Path]],
                 progress: Callable[[int, int], None] | None = None) -> list[dict]:
    """Per model: the share of person pixels called pet (pooled, mean and median per photo), photos with more
    than a fifth of the person painted, and the share of all pixels called pet."""
    shares = np.zeros((len(predictors), len(pairs)))
    pooled = np.zeros((len(predictors), 2), dtype=np.int64)
    everywhere = np.zeros((len(predictors), len(pairs)))
    for i, (image_path, mask_path) in enumerate(pairs):
        image = read_image(image_path)
        raw = cv2.imread(str(mask_path), cv2.IMREAD_GRAYSCALE)
        if raw is None:
            raise ImageError("not a readable mask PNG", mask_path)
        person = resize_mask(raw, image.shape[:2]) > 0
        for j, p in enumerate(predictors):
            pet = p.predict(image) != 1  # pet or border: what the overlay paints
            n = int(np.count_nonzero(person))
            hit = int(np.count_nonzero(pet & person))
            shares[j, i] = hit / n if n else 0.0
            pooled[j] += hit, n
            everywhere[j, i] = pet.mean()
        if progress:
            progress(i + 1, len(pairs))
    return [{**p.describe(), "images": len(pairs), "person_pixels_called_pet": pooled[j, 0] / max(pooled[j, 1], 1),
             "person_share_mean": float(shares[j].mean()), "person_share_median": float(np.median(shares[j])),
             "photos_painted": int((shares[j] > PAINTED).sum()), "all_pixels_called_pet": float(everywhere[j].mean()),
             "worst_image": pairs[int(shares[j].argmax())][0].name, "worst_share": float(shares[j].max())}
            for j, p in enumerate(predictors)]
