"""Labelled data: Oxford-IIIT Pet layout folders, their split files and trimaps as class ids."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from edgeseg.errors import EdgesegError
from edgeseg.runtime.images import ImageError, resize

IGNORE = 255  # label value for pixels that no metric or loss counts


def resize_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Class-id mask to (height, width); nearest, so no new class values appear."""
    return resize(mask, size, "nearest")


def read_trimap(path: str | Path) -> np.ndarray:
    """Oxford trimap (1 pet, 2 background, 3 border) -> class ids 0/1/2, anything else IGNORE."""
    path = Path(path)
    m = cv2.imdecode(np.fromfile(path, dtype=np.uint8), cv2.IMREAD_UNCHANGED) if path.exists() else None
    if m is None:
        raise ImageError("not a readable trimap PNG", path)
    if m.ndim == 3:
        m = m[:, :, 0]
    out = np.full(m.shape, IGNORE, dtype=np.uint8)
    valid = (m >= 1) & (m <= 3)
    out[valid] = m[valid] - 1
    return out


@dataclass(frozen=True)
class Sample:
    name: str
    image: Path
    mask: Path


def breed(name: str) -> str:
    """The breed of an Oxford-IIIT Pet photo name (``Bengal_107``, ``american_bulldog_12``)."""
    return name.rsplit("_", 1)[0]


def species(name: str) -> str:
    """Oxford-IIIT Pet names cat breeds with a capital letter, dog breeds without."""
    return "cat" if name[:1].isupper() else "dog"


def oxford_split(root: str | Path, split: str = "test") -> list[Sample]:
    """Samples of an Oxford-IIIT Pet layout folder for ``split`` (trainval, test or list)."""
    root = Path(root)
    split_file = root / "annotations" / f"{split}.txt"
    if not split_file.is_file():
        raise EdgesegError(
            f"no annotations/{split}.txt: expected the Oxford-IIIT Pet layout "
            "(images/, annotations/trimaps/, annotations/trainval.txt|test.txt)",
            root,
        )
    samples = []
    for line in split_file.read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        name = line.split()[0]
        samples.append(Sample(name, root / "images" / f"{name}.jpg", root / "annotations" / "trimaps" / f"{name}.png"))
    missing = [s for s in samples if not s.image.exists() or not s.mask.exists()]
    if missing:
        raise EdgesegError(f"{len(missing)} image/trimap pair(s) listed in {split}.txt are missing, e.g. "
                           f"{missing[0].image.name}", root)
    return samples


def is_oxford_layout(root: str | Path) -> bool:
    root = Path(root)
    return (root / "images").is_dir() and (root / "annotations" / "trimaps").is_dir()
