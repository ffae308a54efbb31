"""Segmentation metrics from one confusion matrix: pixel accuracy, per-class IoU, mIoU, pet-vs-rest IoU.

"pet IoU" is the animal against the rest: pet and border classes together (the trimap's border is
the animal's outline) against background, what a user cutting the animal out cares about.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from edgeseg import CLASS_NAMES
from edgeseg.evaluation.datasets import IGNORE


@dataclass
class ConfusionMatrix:
    """Accumulates ``counts[true, predicted]`` over images; pixels labelled IGNORE are not counted."""

    num_classes: int = len(CLASS_NAMES)
    counts: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.counts = np.zeros((self.num_classes, self.num_classes), dtype=np.int64)

    def update(self, truth: np.ndarray, pred: np.ndarray) -> None:
        if truth.shape != pred.shape:
            raise ValueError(f"mask shapes differ: truth {truth.shape}, prediction {pred.shape}")
        valid = truth != IGNORE
        n = self.num_classes
        idx = truth[valid].astype(np.int64) * n + pred[valid].astype(np.int64)
        self.counts += np.bincount(idx, minlength=n * n).reshape(n, n)

    def summary(self, class_names: tuple[str, ...] = CLASS_NAMES) -> dict:
        c = self.counts.astype(np.float64)
        tp = np.diag(c)
        union = c.sum(0) + c.sum(1) - tp
        with np.errstate(invalid="ignore", divide="ignore"):
            iou = np.where(union > 0, tp / union, np.nan)
        # the animal (pet + border) against background
        animal = [i for i, n in enumerate(class_names) if n != "background"]
        pet_tp = c[np.ix_(animal, animal)].sum()
        pet_union = c[animal, :].sum() + c[:, animal].sum() - pet_tp
        total = c.sum()
        return {
            "pixel_accuracy": float(tp.sum() / total) if total else float("nan"),
            "iou": {name: float(v) for name, v in zip(class_names, iou, strict=False)},
            "miou": float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan"),
            "pet_iou": float(pet_tp / pet_union) if pet_union else float("nan"),
            "pixels": int(total),
        }
