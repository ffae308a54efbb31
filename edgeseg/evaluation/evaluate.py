"""Score models side by side on an Oxford-layout split, at each image's original resolution.

Each image is decoded once and given to every model, so the models see identical pixels; a
model's mask is compared with the trimap (class = trimap - 1) and with the first model's mask.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from edgeseg.errors import EdgesegError
from edgeseg.evaluation.datasets import Sample, breed, oxford_split, read_trimap
from edgeseg.evaluation.metrics import ConfusionMatrix
from edgeseg.runtime.backends.predictor import Predictor
from edgeseg.runtime.images import read_image


def evaluate(predictors: Sequence[Predictor], samples: Sequence[Sample],
             progress: Callable[[int, int], None] | None = None, by_breed: bool = False) -> list[dict]:
    """Per model: pixel accuracy, per-class IoU, mIoU, pet IoU, and agreement with the first model;
    with ``by_breed``, the same per breed (from the Oxford file names) under ``"breeds"``."""
    if not samples:
        raise EdgesegError("no samples to evaluate")
    cms = [ConfusionMatrix(len(p.meta.class_names)) for p in predictors]
    counts = Counter(breed(s.name) for s in samples) if by_breed else Counter()  # images per breed
    per_breed = [{b: ConfusionMatrix(len(p.meta.class_names)) for b in sorted(counts)} for p in predictors]
    agree = np.zeros(len(predictors), dtype=np.int64)
    seconds = np.zeros(len(predictors))
    pixels = 0
    for i, s in enumerate(samples):
        image, truth = read_image(s.image), read_trimap(s.mask)
        if truth.shape != image.shape[:2]:
            raise EdgesegError(f"trimap is {truth.shape[1]}x{truth.shape[0]} but its image is "
                               f"{image.shape[1]}x{image.shape[0]}", s.mask)
        first = None
        for j, p in enumerate(predictors):
            t0 = time.perf_counter()
            mask = p.predict(image)
            seconds[j] += time.perf_counter() - t0
            cms[j].update(truth, mask)
            if by_breed:
                per_breed[j][breed(s.name)].update(truth, mask)
            first = mask if first is None else first
            agree[j] += int((mask == first).sum())
        pixels += truth.size
        if progress:
            progress(i + 1, len(samples))
    results = []
    for j, p in enumerate(predictors):
        results.append({**p.describe(), **cms[j].summary(p.meta.class_names),
                        "agreement_with_first": float(agree[j] / pixels), "images": len(samples),
                        "ms_per_image": 1000 * seconds[j] / len(samples)})
        if by_breed:
            results[-1]["breeds"] = {b: {"images": counts[b], **cm.summary(p.meta.class_names)}
                                     for b, cm in per_breed[j].items()}
    return results


def animal_free(predictors: Sequence[Predictor], images: Sequence[Path],
                progress: Callable[[int, int], None] | None = None) -> list[dict]:
    """Per model, on photos without any animal: the share of pixels called pet, and pet or border
    (every such pixel is wrong), as the mean over the photos, the worst photo, and per photo."""
    if not images:
        raise EdgesegError("no photos to evaluate")
    shares = np.zeros((len(predictors), len(images), 2))
    for i, path in enumerate(images):
        image = read_image(path)
        for j, p in enumerate(predictors):
            mask = p.predict(image)
            shares[j, i] = (mask == 0).mean(), (mask != 1).mean()
        if progress:
            progress(i + 1, len(images))
    return [{**p.describe(), "images": len(images), "pet_share": float(shares[j, :, 0].mean()),
             "animal_share": float(shares[j, :, 1].mean()), "worst_pet_share": float(shares[j, :, 0].max()),
             "worst_image": str(images[int(shares[j, :, 0].argmax())]),
             "per_image": {str(path): float(shares[j, i, 0]) for i, path in enumerate(images)}}
            for j, p in enumerate(predictors)]


def load_split(data: str | Path, split: str, limit: int = 0) -> list[Sample]:
    samples = oxford_split(data, split)
    return samples[:limit] if limit else samples
