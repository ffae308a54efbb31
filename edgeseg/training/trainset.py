"""Training data: the trainval lines of several Oxford-layout folders, decoded and resized once, with
background-only crops as "no animal" examples, photos of YOLO segmentation sets labelled as trimaps, balanced
sampling weights, and a compact cache that travels without the photos (to a GPU machine: JPEG and PNG bytes in
one .npz, about 11 KB a photo).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import zipfile
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from edgeseg.errors import EdgesegError
from edgeseg.evaluation.datasets import IGNORE, Sample, breed, oxford_split, read_trimap, resize_mask, species
from edgeseg.evaluation.scenes import rasterize
from edgeseg.evaluation.yolo_data import Shape, YoloSet, read_yolo_labels
from edgeseg.files import atomic_write
from edgeseg.runtime.images import ImageError, images_in, read_image, resize
from edgeseg.runtime.masks import BACKGROUND, BORDER, PET

BALANCE = ("none", "breed", "species")
COMPOSITE = "composite_"  # photos named so (edgeseg composites --pets) are never held out for validation
YOLO = "yolo:"  # the photos of --yolo-data sets, named so: never held out either
BAND_SHARE, MIN_BAND = 0.01, 3  # a YOLO animal's border band: this share of the long side either way, in pixels
MIN_NEGATIVE_SIDE = 0.3  # a background crop is kept when its side is at least this share of the photo's short side


@dataclass
class TrainSet:
    images: np.ndarray  # (N, 3, H, W) uint8 RGB
    masks: np.ndarray  # (N, H, W) uint8 class ids, IGNORE where unlabelled
    names: list[str]  # the photo each sample comes from ("<breed>_<n>")
    negative: np.ndarray  # (N,) bool: a background-only crop of that photo

    def __len__(self) -> int:
        return len(self.names)

    def select(self, index: np.ndarray) -> TrainSet:
        return TrainSet(self.images[index], self.masks[index], [self.names[i] for i in index], self.negative[index])

    def __add__(self, other: TrainSet) -> TrainSet:
        return TrainSet(np.concatenate([self.images, other.images]), np.concatenate([self.masks, other.masks]),
                        self.names + other.names, np.concatenate([self.negative, other.negative]))


def trainval_samples(folders: Sequence[str | Path]) -> list[Sample]:
    """The trainval lines of every folder, each photo once: a photo listed in two folders with the
    same bytes (the 37-breed folder repeats some 3-breed trainval photos) is taken from the first; a
    different photo under a name already taken (two ``composites`` folders both start at
    ``composite_00000``) is kept, as ``name@folder``."""
    samples: list[Sample] = []
    seen: dict[str, list[Sample]] = {}
    for folder in folders:
        for s in oxford_split(folder, "trainval"):
            taken = seen.setdefault(s.name, [])
            if any(_same_files(t, s) for t in taken):
                continue
            if taken:
                s = Sample(f"{s.name}@{Path(folder).name}", s.image, s.mask)
            taken.append(s)
            samples.append(s)
    return samples


def _same_files(a: Sample, b: Sample) -> bool:
    return a.image.read_bytes() == b.image.read_bytes() and a.mask.read_bytes() == b.mask.read_bytes()


def background_square(trimap: np.ndarray) -> tuple[int, int, int] | None:
    """(x, y, side) of the largest square holding only background, or None when it is smaller than
    MIN_NEGATIVE_SIDE of the photo's short side."""
    bg = (trimap == BACKGROUND).astype(np.uint8)
    # chessboard distance to the nearest non-background pixel: a square of side 2d - 1 fits around each pixel
    dist = cv2.distanceTransform(np.pad(bg, 1), cv2.DIST_C, 3)[1:-1, 1:-1]
    y, x = np.unravel_index(int(np.argmax(dist)), dist.shape)
    half = int(dist[y, x]) - 1
    side = 2 * half + 1
    if side < MIN_NEGATIVE_SIDE * min(trimap.shape):
        return None
    return x - half, y - half, side


def to_chw_rgb(image_bgr: np.ndarray, size: tuple[int, int], interpolation: str) -> np.ndarray:
    """A decoded photo as a training sample stores it: resized like the runtime's preprocess, RGB, CHW uint8."""
    return resize(image_bgr, size, interpolation)[:, :, ::-1].transpose(2, 0, 1)


def load(samples: list[Sample], size: tuple[int, int], interpolation: str, negatives: bool = False,
         on_image: Callable[[int, int], None] | None = None) -> TrainSet:
    """Decode and resize once; with ``negatives``, add one background-only crop per photo that has one."""
    images, masks, names, negative = [], [], [], []

    def add(image_bgr: np.ndarray, mask: np.ndarray, name: str, is_negative: bool) -> None:
        images.append(to_chw_rgb(image_bgr, size, interpolation))
        masks.append(resize_mask(mask, size))
        names.append(name)
        negative.append(is_negative)

    for i, s in enumerate(samples):
        image, trimap = read_image(s.image), read_trimap(s.mask)
        # a photo whose trimap holds no animal (a scene written whole by composites --pets) is a "no animal"
        # example: drawn within --negatives' share, never held out for validation
        add(image, trimap, s.name, not np.isin(trimap, (PET, BORDER)).any())
        if negatives and (box := background_square(trimap)) is not None:
            x, y, side = box
            crop = image[y:y + side, x:x + side]
            add(crop, np.full(crop.shape[:2], BACKGROUND, np.uint8), s.name, True)
        if on_image:
            on_image(i + 1, len(samples))
    return _stacked(images, masks, names, negative, size)


def _stacked(images: list[np.ndarray], masks: list[np.ndarray], names: list[str], negative: list[bool],
             size: tuple[int, int]) -> TrainSet:
    h, w = size
    return TrainSet(np.stack(images) if images else np.empty((0, 3, h, w), np.uint8),
                    np.stack(masks) if masks else np.empty((0, h, w), np.uint8), names, np.array(negative, bool))


def yolo_trimap(shapes: Sequence[Shape], animals: set[int], shape: tuple[int, int]) -> np.ndarray:
    """Class ids of a YOLO-labelled photo as an Oxford trimap gives them: the animals' polygons pet, a border
    band straddling their outline (BAND_SHARE of the long side either way, at least MIN_BAND pixels: about
    Oxford's band), every other pixel, people and other classes included, background."""
    pet = rasterize(shapes, animals, shape).astype(np.uint8)
    band = max(MIN_BAND, round(max(shape) * BAND_SHARE))
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * band + 1, 2 * band + 1))
    ids = np.where(pet > 0, PET, BACKGROUND).astype(np.uint8)
    ids[cv2.morphologyEx(pet, cv2.MORPH_GRADIENT, kernel) > 0] = BORDER
    return ids


def load_yolo(data: YoloSet, animals: Sequence[int], size: tuple[int, int], interpolation: str) -> TrainSet:
    """The photos of a YOLO segmentation set as training samples (``yolo_trimap``), named ``yolo:<file>`` so
    that they are never held out (validation keeps scoring the Oxford hold-out); a photo without an animal is
    a "no animal" example, drawn within --negatives' share."""
    images, masks, names, negative = [], [], [], []
    for path, label in data.pairs:
        try:  # resized as read, as --no-animal's photos are
            image = read_image(path)
        except ImageError as e:
            raise EdgesegError(f"{e.message}; remove it from the --yolo-data set", path) from None
        ids = yolo_trimap(read_yolo_labels(label) if label else [], set(animals), image.shape[:2])
        images.append(to_chw_rgb(image, size, interpolation))
        masks.append(resize_mask(ids, size))
        names.append(f"{YOLO}{path.name}")
        negative.append(not np.isin(ids, (PET, BORDER)).any())
    return _stacked(images, masks, names, negative, size)


def load_no_animal(folder: str | Path, size: tuple[int, int], interpolation: str) -> TrainSet:
    """Photos without an animal (for example frames of the empty scene a camera will watch), each whole and
    labelled background: "no animal" examples beside the background crops. Named ``no-animal:<file>``,
    so they are never held out for validation (which scores animals)."""
    paths = images_in(folder, "--no-animal takes a folder of photos without animals")
    images = []
    for p in paths:  # resized as read: a folder of camera frames need not fit in memory at full size
        try:
            images.append(to_chw_rgb(read_image(p), size, interpolation))
        except ImageError as e:
            raise EdgesegError(f"{e.message}; remove it from the --no-animal folder", p) from None
    h, w = size
    return TrainSet(np.stack(images), np.full((len(images), h, w), BACKGROUND, np.uint8),
                    [f"no-animal:{p.name}" for p in paths], np.ones(len(images), bool))


def load_rough(folder: str | Path, size: tuple[int, int], interpolation: str, band: int,
               skip: set[str]) -> tuple[np.ndarray, np.ndarray]:
    """Photos with rough polygon masks (no border class): pet/background, with a band of ``band``
    pixels around the outline ignored, since the true border and the polygon's error both live there."""
    folder = Path(folder)
    mask_dir = folder / "rough-masks"
    if not mask_dir.is_dir():
        raise EdgesegError("no rough-masks/ folder beside the photos (expected <name>.png, 1 pet, 2 background)",
                           folder)
    pairs = [(p, mask_dir / f"{p.stem}.png") for p in sorted(folder.glob("*.jpg")) if p.stem not in skip]
    pairs = [(p, m) for p, m in pairs if m.exists()]
    images = np.empty((len(pairs), 3, *size), dtype=np.uint8)
    masks = np.empty((len(pairs), *size), dtype=np.uint8)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * band + 1, 2 * band + 1))
    for i, (p, m) in enumerate(pairs):
        images[i] = to_chw_rgb(read_image(p), size, interpolation)
        raw = cv2.imread(str(m), cv2.IMREAD_GRAYSCALE)
        ids = np.full(raw.shape, IGNORE, np.uint8)
        ids[raw == 1], ids[raw == 2] = 0, 1
        if band:
            ids[cv2.morphologyEx((raw == 1).astype(np.uint8), cv2.MORPH_GRADIENT, kernel) > 0] = IGNORE
        masks[i] = resize_mask(ids, size)
    return images, masks


def validation_split(ts: TrainSet, fraction: float, seed: int) -> tuple[np.ndarray, set[str]]:
    """Indices of the photos held out for validation and their names (their negatives are held out with them);
    with a single photo there is nothing to hold out: it serves as both (quick runs, tests). Composites and
    YOLO photos are never held out: validation scores the Oxford photos, and adding either leaves the hold-out
    as it was."""
    real = np.array([i for i in np.flatnonzero(~ts.negative) if not ts.names[i].startswith((COMPOSITE, YOLO))],
                    dtype=np.int64)  # photos in their split order; negatives follow their photo
    if len(real) == 1:
        return real, set()
    val_idx = real[_held_out(len(real), fraction, seed)]
    return val_idx, {ts.names[i] for i in val_idx}


def _held_out(n_real: int, fraction: float, seed: int) -> np.ndarray:
    """Which of ``n_real`` photos (in their split order) the hold-out takes: the one rule that train's
    validation and ``holdout_samples`` share."""
    order = np.random.default_rng(seed).permutation(n_real)
    return order[:max(1, round(n_real * fraction))]


def holdout_samples(folders: Sequence[str | Path], fraction: float, seed: int) -> list[Sample]:
    """The photos that ``edgeseg train --data`` with these folders (in this order), ``fraction`` and ``seed``
    holds out for validation, in their split order, found from the split files and trimaps without decoding
    a photo: to score a trained model on them at original resolution (``edgeseg eval --split holdout``)."""
    real = [s for s in trainval_samples(folders)
            if not s.name.startswith(COMPOSITE) and np.isin(read_trimap(s.mask), (PET, BORDER)).any()]
    if len(real) == 1:
        return real
    return [real[i] for i in sorted(_held_out(len(real), fraction, seed))]


def sample_weights(names: Sequence[str], balance: str) -> np.ndarray:
    """Per-sample drawing weights that give each breed (or species) the same share of an epoch."""
    if balance not in BALANCE:
        raise EdgesegError(f"--balance {balance!r}: choose {', '.join(BALANCE)}")
    if balance == "none":
        return np.ones(len(names))
    key = breed if balance == "breed" else species
    counts = Counter(key(n) for n in names)
    return np.array([1.0 / counts[key(n)] for n in names])


def draw_weights(names: Sequence[str], negative: np.ndarray, balance: str, share: float) -> np.ndarray:
    """Weights of each training sample in an epoch's draws: ``balance`` among the photos, and the
    background-only crops together ``share`` of the draws (their photos' balance kept among them)."""
    weights = sample_weights(names, balance)
    if share and negative.any() and (~negative).any():
        weights[negative] *= share / (1 - share) * weights[~negative].sum() / weights[negative].sum()
    return weights


def fingerprint(samples: list[Sample], size: tuple[int, int], interpolation: str, negatives: bool) -> str:
    """What a cache was built from: the photos' names, the input size, the resize, the negatives."""
    text = json.dumps([[s.name for s in samples], list(size), interpolation, negatives, IGNORE])
    return hashlib.sha256(text.encode()).hexdigest()


def save_cache(ts: TrainSet, path: Path, info: dict) -> None:
    """JPEG (quality 95, no chroma subsampling: 1.3 grey levels from the original on average) and PNG bytes
    in one .npz: about 11 KB a 128x128 photo."""
    quality = [cv2.IMWRITE_JPEG_QUALITY, 95, cv2.IMWRITE_JPEG_SAMPLING_FACTOR, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444]
    jpegs = [cv2.imencode(".jpg", np.ascontiguousarray(im.transpose(1, 2, 0)[:, :, ::-1]), quality)[1].ravel()
             for im in ts.images]
    pngs = [cv2.imencode(".png", m)[1].ravel() for m in ts.masks]

    def packed(parts: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        return (np.concatenate(parts) if parts else np.empty(0, np.uint8),
                np.cumsum([0, *(len(p) for p in parts)]).astype(np.int64))

    (ji, jo), (mi, mo) = packed(jpegs), packed(pngs)

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, jpeg=ji, jpeg_offsets=jo, png=mi, png_offsets=mo, names=np.array(ts.names),
                     negative=ts.negative, info=np.array(json.dumps(info)))

    atomic_write(path, write, force=True)


def load_cache(path: Path) -> tuple[TrainSet, dict]:
    try:
        with np.load(path, allow_pickle=False) as z:
            ji, jo, mi, mo = z["jpeg"], z["jpeg_offsets"], z["png"], z["png_offsets"]
            names, negative, info = [str(n) for n in z["names"]], z["negative"], json.loads(str(z["info"]))
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as e:
        raise EdgesegError(f"not a training cache written by edgeseg train --cache ({e})", path) from None
    images = np.stack([cv2.imdecode(ji[a:b], cv2.IMREAD_COLOR)[:, :, ::-1].transpose(2, 0, 1)
                       for a, b in itertools.pairwise(jo)])
    masks = np.stack([cv2.imdecode(mi[a:b], cv2.IMREAD_UNCHANGED) for a, b in itertools.pairwise(mo)])
    return TrainSet(np.ascontiguousarray(images), masks, names, negative.astype(bool)), info
