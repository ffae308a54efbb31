"""Labelled composites: pets cut out by their trimaps and pasted into photos of people and rooms, written as
an Oxford-IIIT Pet layout folder that `edgeseg train --data` takes unchanged.

A model trained on pet portraits learns "the large thing in the middle is the pet": it paints people, and it
misses an animal that fills a tenth of the frame. Copy-paste augmentation (Ghiasi et al., 2021) answers both
at once: the same pets, cut by their own trimaps, at 10-90% of the frame on scenes where people are labelled
background. The pets come from a training cache, less the validation hold-out's photos (the photos that
choose the epochs are never pasted); the scenes are the user's (people photos, empty rooms), each also
written whole as a photo without an animal.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import cv2
import numpy as np

from edgeseg.errors import EdgesegError
from edgeseg.evaluation.datasets import IGNORE
from edgeseg.evaluation.scenes import in_range
from edgeseg.files import check_folder
from edgeseg.runtime.images import ImageError, list_images, read_image
from edgeseg.runtime.masks import BACKGROUND, BORDER, PET
from edgeseg.training import trainset
from edgeseg.training.composites import random_crop, write_image

SMALLEST, LARGEST = 0.1, 0.9  # the pasted pet's long side, as a share of the frame's side (log-uniform)
TWO_PETS = 0.2  # share of composites with a second pet
WHOLE_FRAME = 0.5  # share of backgrounds that are the whole scene squeezed to the square, as the runtime does
RING = 3  # pixels of the trimap's border class pasted around the pet, left out of the loss
SCENE_SIDE = 512  # scenes are kept at most this long a side: 200 photos in about 120 MB


def pet_cutouts(cache: str | Path, val_fraction: float, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(BGR image, class ids) cut to the pet-and-border box of each photo of a training cache, less the
    validation hold-out's that `edgeseg train` with the same ``val_fraction`` and ``seed`` makes."""
    ts, _ = trainset.load_cache(Path(cache))
    _, held_out = trainset.validation_split(ts, val_fraction, seed)
    cutouts = []
    for i in np.flatnonzero(~ts.negative):
        if ts.names[i] in held_out or ts.names[i].startswith(trainset.COMPOSITE):
            continue
        mask = ts.masks[i]
        pet = mask == PET
        if pet.sum() < 16:  # a photo whose trimap holds (almost) no animal
            continue
        # the pet and the trimap's border within RING pixels of it, as wide as Oxford's border band at 128x128
        # (the band holds the photo's own background, as it does in the trimaps); not the border drawn along
        # the frame's edge where the animal leaves the photo, which would paste a line
        ring = (mask == BORDER) & (cv2.dilate(pet.view(np.uint8), np.ones((2 * RING + 1,) * 2, np.uint8)) > 0)
        ids = np.where(pet, PET, np.where(ring, IGNORE, BACKGROUND)).astype(np.uint8)
        ys, xs = np.nonzero(pet | ring)
        box = slice(ys.min(), ys.max() + 1), slice(xs.min(), xs.max() + 1)
        cutouts.append((np.ascontiguousarray(ts.images[i].transpose(1, 2, 0)[:, :, ::-1][box]), ids[box]))
    if not cutouts:
        raise EdgesegError("no pet photo outside the validation hold-out in this training cache", cache)
    return cutouts


def load_scenes(folders: Sequence[str | Path], numbered: tuple[int, int] | None) -> list[np.ndarray]:
    """The photos of ``folders`` (those numbered in range, when given), at most SCENE_SIDE a side."""
    scenes = []
    for folder in folders:
        for p in list_images(folder):
            if not in_range(p, numbered):
                continue
            try:
                img = read_image(p)
            except ImageError as e:
                raise EdgesegError(f"{e.message}; remove it from the --scenes folder", p) from None
            f = SCENE_SIDE / max(img.shape[:2])
            scenes.append(cv2.resize(img, None, fx=f, fy=f, interpolation=cv2.INTER_AREA) if f < 1 else img)
    if not scenes:
        raise EdgesegError("no scene photos" + (f" numbered {numbered[0]}-{numbered[1]}" if numbered else ""),
                           folders[0] if folders else None)
    return scenes


def backdrop(scene: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """The whole scene squeezed to the square (how every frame reaches the model) or a square crop of it."""
    if rng.random() < WHOLE_FRAME:
        return cv2.resize(scene, (size, size), interpolation=cv2.INTER_AREA)
    return random_crop(scene, size, rng)


def paste_pet(canvas: np.ndarray, labels: np.ndarray, pet: tuple[np.ndarray, np.ndarray],
              rng: np.random.Generator) -> None:
    """Paste a pet cut-out in place: long side SMALLEST-LARGEST of the frame, aspect 0.8-1.25, mirrored half
    the time, brightness 0.4-1.2x (dark animals), anywhere with at most a fifth of it outside the frame;
    its labels (pet, IGNORE on the ring) overwrite ``labels`` where it lands."""
    image, mask = pet
    size = canvas.shape[0]
    side = size * np.exp(rng.uniform(np.log(SMALLEST), np.log(LARGEST)))
    stretch = np.exp(rng.uniform(np.log(0.8), np.log(1.25)))
    h, w = mask.shape
    f = side / max(h * stretch, w)
    nw, nh = max(2, round(w * f)), max(2, round(h * f * stretch))
    interp = cv2.INTER_AREA if nw < w else cv2.INTER_LINEAR
    image, mask = cv2.resize(image, (nw, nh), interpolation=interp), cv2.resize(mask, (nw, nh),
                                                                                 interpolation=cv2.INTER_NEAREST)
    if rng.random() < 0.5:
        image, mask = image[:, ::-1], mask[:, ::-1]
    y, x = rng.integers(-nh // 5, size - 4 * nh // 5 + 1), rng.integers(-nw // 5, size - 4 * nw // 5 + 1)
    y0, x0, y1, x1 = max(y, 0), max(x, 0), min(y + nh, size), min(x + nw, size)
    part, ids = image[y0 - y:y1 - y, x0 - x:x1 - x], mask[y0 - y:y1 - y, x0 - x:x1 - x]
    inside = ids != BACKGROUND
    gain = rng.uniform(0.4, 1.2)
    region = canvas[y0:y1, x0:x1]
    region[inside] = np.clip(part[inside].astype(np.float32) * gain, 0, 255).astype(np.uint8)
    labels[y0:y1, x0:x1][inside] = ids[inside]


def pasted(pets: Sequence[tuple[np.ndarray, np.ndarray]], scenes: Sequence[np.ndarray], count: int, size: int,
           seed: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """``count`` (BGR picture, class ids) pairs of one or two pets on a scene; the same seed, the same pairs."""
    rng = np.random.default_rng(seed)
    for _ in range(count):
        canvas = backdrop(scenes[rng.integers(len(scenes))], size, rng)
        labels = np.full((size, size), BACKGROUND, np.uint8)
        for _ in range(2 if rng.random() < TWO_PETS else 1):
            paste_pet(canvas, labels, pets[rng.integers(len(pets))], rng)
        yield canvas, labels


def write_pasted(pets_cache: str | Path, scenes: Sequence[str | Path], out: str | Path, count: int,
                 numbered: tuple[int, int] | None = None, size: int = 128, seed: int = 1, val_fraction: float = 0.1,
                 val_seed: int = 0, force: bool = False, progress: Callable[[int, int], None] | None = None) -> dict:
    """Write ``count`` composites and every scene whole (no animal) as an Oxford-layout folder: images/NAME.jpg,
    annotations/trimaps/NAME.png (1 pet, 2 background, 0 the pasted ring: ignored) and annotations/trainval.txt;
    filled beside ``out`` and renamed, never half-written."""
    out = Path(out)
    check_folder(out, force)
    if not Path(pets_cache).is_file():
        raise EdgesegError("no such training cache; give the file edgeseg train --cache wrote", pets_cache)
    if not out.parent.is_dir():
        raise EdgesegError(f"output folder {out.parent} does not exist; create it first", out)
    pets = pet_cutouts(pets_cache, val_fraction, val_seed)
    scene_images = load_scenes(scenes, numbered)
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)  # a run killed before its rename
    (tmp / "images").mkdir(parents=True)
    (tmp / "annotations" / "trimaps").mkdir(parents=True)
    names = []
    quality = [cv2.IMWRITE_JPEG_QUALITY, 95]

    def add(name: str, image: np.ndarray, labels: np.ndarray) -> None:
        write_image(tmp / "images" / f"{name}.jpg", image, quality)
        write_image(tmp / "annotations" / "trimaps" / f"{name}.png", np.where(labels == IGNORE, 0, labels + 1))
        names.append(name)

    try:
        for i, (image, labels) in enumerate(pasted(pets, scene_images, count, size, seed)):
            add(f"{trainset.COMPOSITE}{i:05d}", image, labels)
            if progress:
                progress(i + 1, count)
        for j, scene in enumerate(scene_images):
            add(f"{trainset.COMPOSITE}scene_{j:04d}", cv2.resize(scene, (size, size), interpolation=cv2.INTER_AREA),
                np.full((size, size), BACKGROUND, np.uint8))
        (tmp / "annotations" / "trainval.txt").write_text(
            f"# edgeseg composites --pets: {count} pets pasted on scenes, then {len(scene_images)} scenes whole\n"
            + "".join(f"{n}\n" for n in names))
    except BaseException:  # interrupted or failed: nothing half-written stays behind
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return {"out": str(out), "composites": count, "scenes": len(scene_images), "pets": len(pets)}
