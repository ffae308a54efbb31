"""Animal-free training pictures: cut-out objects pasted on backgrounds, for `edgeseg train --no-animal`.

A model that has only seen pet photos and their background crops learns "the object in the middle is the
animal" and paints a cup, a motorbike or a person as pet. Photos of objects alone, labelled background, teach
it otherwise; cut-outs with an alpha channel (Debian's tuxpaint-stamps-default has hundreds: food, tools,
vehicles, instruments) pasted on backgrounds give as many of those as wanted; so do people, cut out of photos by
their person masks, pasted into rooms and scenes. The backgrounds are crops of
scene photos (wallpapers, say), plain gradients and, from a training cache, the background-only crops of the
training photos (of the photos training uses: the validation hold-out's are left out).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import cv2
import numpy as np

from edgeseg.errors import EdgesegError
from edgeseg.evaluation.datasets import resize_mask
from edgeseg.evaluation.scenes import in_range, person_pairs
from edgeseg.files import check_folder
from edgeseg.runtime.images import ImageError, decode_image, list_images, read_image

ALPHA_MIN = 20  # a cut-out's pixels with less alpha than this are outside its box
PERSON_MIN = 0.01  # a person region smaller than this share of its photo is too small to cut out
SECOND_OBJECT = 0.3  # share of pictures with two objects, not one


def trim(img: np.ndarray | None) -> np.ndarray | None:
    """An 8-bit BGRA image cut to the box of its opaque pixels; None for anything else (no alpha, all clear)."""
    if img is None or img.ndim < 3 or img.shape[2] != 4 or img.dtype != np.uint8:
        return None
    ys, xs = np.nonzero(img[:, :, 3] > ALPHA_MIN)
    return img[ys.min():ys.max() + 1, xs.min():xs.max() + 1] if len(ys) else None


def load_cutouts(folders: Sequence[str | Path], skip: Sequence[str] = ()) -> list[np.ndarray]:
    """The BGRA images with an alpha channel in ``folders`` (in order, each sorted), trimmed to their opaque
    box; files whose name contains a ``skip`` word are left out (animal stamps among objects, say)."""
    cutouts = []
    for folder in folders:
        for path in list_images(folder):
            if any(word in path.name for word in skip):
                continue
            try:
                img = trim(decode_image(path))
            except ImageError as e:
                raise EdgesegError(f"{e.message}; remove it from the objects folder", path) from None
            if img is not None:
                cutouts.append(img)
    if not cutouts:
        raise EdgesegError("no 8-bit PNG with an alpha channel in these folders: cut-outs need one", folders[0])
    return cutouts


def person_cutouts(root: str | Path, numbered: tuple[int, int] | None = None) -> list[np.ndarray]:
    """People cut out of photos by their person masks (``root/images`` and ``root/masks``, the layout `edgeseg
    eval --person-masks` reads): one BGRA cut-out, trimmed to its box, per connected person region of at least
    :data:`PERSON_MIN` of its photo and 24 rows tall, so that a group photo gives each of its people (people whose
    masks touch stay one). Sorted by the name ``PHOTO_REGION.png``, the order ``load_cutouts`` gives such files."""
    found = []
    for image_path, mask_path in person_pairs(Path(root), numbered):
        try:
            image = read_image(image_path)
        except ImageError as e:
            raise EdgesegError(f"{e.message}; remove it from the --person-masks folder", image_path) from None
        raw = cv2.imread(str(mask_path), cv2.IMREAD_GRAYSCALE)
        if raw is None:
            raise EdgesegError("not a readable mask PNG; replace it or remove its photo", mask_path)
        person = (resize_mask(raw, image.shape[:2]) > 0).astype(np.uint8)
        n, regions, stats, _ = cv2.connectedComponentsWithStats(person, connectivity=8)
        for r in range(1, n):
            x, y, w, h, area = stats[r]
            if area >= PERSON_MIN * person.size and h >= 24:
                alpha = (regions[y:y + h, x:x + w] == r).astype(np.uint8) * 255
                found.append((f"{image_path.stem}_{r}.png", np.dstack([image[y:y + h, x:x + w], alpha])))
    if not found:
        raise EdgesegError(f"no person region of at least {PERSON_MIN:.0%} of its photo to cut out", root)
    return [img for _, img in sorted(found, key=lambda f: f[0])]


def random_crop(img: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """A random square of 40-100% of the short side, resized to ``size``."""
    h, w = img.shape[:2]
    s = int(min(h, w) * rng.uniform(0.4, 1.0))
    y, x = rng.integers(0, h - s + 1), rng.integers(0, w - s + 1)
    return cv2.resize(img[y:y + s, x:x + s], (size, size), interpolation=cv2.INTER_AREA)


def gradient(size: int, rng: np.random.Generator) -> np.ndarray:
    """A plain surface: a vertical or horizontal blend of two random colours with a little noise."""
    c0, c1 = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    t = np.linspace(0, 1, size)[:, None, None] if rng.random() < 0.5 else np.linspace(0, 1, size)[None, :, None]
    g = (c0 * (1 - t) + c1 * t) * np.ones((size, size, 1))
    return np.clip(g + rng.normal(0, 4, (size, size, 3)), 0, 255).astype(np.uint8)


def background(crops: Sequence[np.ndarray], scenes: Sequence[np.ndarray], size: int,
               rng: np.random.Generator) -> np.ndarray:
    """Half training-photo background crops, 30% scene crops, 20% gradients (of what is given)."""
    k = rng.random()
    if k < 0.5 and crops:
        return crops[rng.integers(len(crops))].copy()
    if k < 0.8 and scenes:
        return random_crop(scenes[rng.integers(len(scenes))], size, rng)
    return gradient(size, rng)


def paste(canvas: np.ndarray, cutout: np.ndarray, rng: np.random.Generator) -> None:
    """Paste ``cutout`` (BGRA) on ``canvas`` in place: its long side 35-100% of the canvas, mirrored half the
    time, anywhere up to a quarter of it outside, edges softened, brightness 0.7-1.2x."""
    size = canvas.shape[0]
    side = rng.uniform(0.35, 1.0) * size
    h, w = cutout.shape[:2]
    f = side / max(h, w)
    cutout = cv2.resize(cutout, (max(1, int(w * f)), max(1, int(h * f))), interpolation=cv2.INTER_AREA)
    if rng.random() < 0.5:
        cutout = cutout[:, ::-1]
    h, w = cutout.shape[:2]
    y, x = rng.integers(-h // 4, size - 3 * h // 4 + 1), rng.integers(-w // 4, size - 3 * w // 4 + 1)
    y0, x0, y1, x1 = max(y, 0), max(x, 0), min(y + h, size), min(x + w, size)
    part = cutout[y0 - y:y1 - y, x0 - x:x1 - x].astype(np.float32)
    alpha = cv2.GaussianBlur(part[:, :, 3], (3, 3), 0)[:, :, None] / 255
    gain = rng.uniform(0.7, 1.2)
    canvas[y0:y1, x0:x1] = (np.clip(part[:, :, :3] * gain, 0, 255) * alpha
                            + canvas[y0:y1, x0:x1] * (1 - alpha)).astype(np.uint8)


def composites(cutouts: Sequence[np.ndarray], crops: Sequence[np.ndarray], scenes: Sequence[np.ndarray],
               count: int, size: int, seed: int) -> Iterator[np.ndarray]:
    """``count`` square BGR pictures of one or two cut-outs on a background; the same seed, the same pictures."""
    rng = np.random.default_rng(seed)
    for _ in range(count):
        canvas = background(crops, scenes, size, rng)
        for _ in range(1 if rng.random() < 1 - SECOND_OBJECT else 2):
            paste(canvas, cutouts[rng.integers(len(cutouts))], rng)
        yield canvas


def training_crops(cache: str | Path, val_fraction: float, seed: int) -> list[np.ndarray]:
    """The background-only crops (BGR) of a training cache's photos, less the validation hold-out's that
    `edgeseg train` with the same ``val_fraction`` and ``seed`` makes."""
    from edgeseg.training import trainset

    ts, _ = trainset.load_cache(Path(cache))
    _, held_out = trainset.validation_split(ts, val_fraction, seed)
    return [np.ascontiguousarray(ts.images[i].transpose(1, 2, 0)[:, :, ::-1])
            for i in np.flatnonzero(ts.negative) if ts.names[i] not in held_out]


def write_image(path: Path, img: np.ndarray, params: Sequence[int] = ()) -> None:
    """cv2.imwrite (the format its suffix names) that fails loudly: OpenCV reports a full disk or a lost folder
    only by returning False."""
    if not cv2.imwrite(str(path), img, list(params)):
        raise EdgesegError("could not be written (disk full or folder removed?); free space and run again", path)


def write_composites(objects: Sequence[str | Path], out: str | Path, count: int, scenes: Sequence[str | Path] = (),
                     numbered: tuple[int, int] | None = None, cache: str | Path | None = None,
                     skip: Sequence[str] = (), person_masks: str | Path | None = None,
                     person_numbered: tuple[int, int] | None = None, size: int = 128, seed: int = 1,
                     val_fraction: float = 0.1, val_seed: int = 0, force: bool = False,
                     progress: Callable[[int, int], None] | None = None) -> dict:
    """Write ``count`` composites as ``cNNNN.png`` and every scene photo whole as ``sNN.png`` to the folder
    ``out`` (filled beside it, then renamed: never half-written). The cut-outs: those in the ``objects`` folders,
    then the people of ``person_masks`` (its photos numbered ``person_numbered``)."""
    out = Path(out)
    check_folder(out, force)
    if cache is not None and not Path(cache).is_file():
        raise EdgesegError("no such training cache; give the file edgeseg train --cache wrote, or leave --cache "
                           "out", cache)
    if not out.parent.is_dir():
        raise EdgesegError(f"output folder {out.parent} does not exist; create it first", out)
    if not objects and person_masks is None:
        raise EdgesegError("no cut-outs: give folders of objects, person masks, or both", out)
    cutouts = load_cutouts(objects, skip) if objects else []
    if person_masks is not None:
        cutouts += person_cutouts(person_masks, person_numbered)
    scene_images = []
    for p in [p for folder in scenes for p in list_images(folder) if in_range(p, numbered)]:
        try:
            scene_images.append(read_image(p))
        except ImageError as e:
            raise EdgesegError(f"{e.message}; remove it from the --scenes folder", p) from None
    crops = training_crops(cache, val_fraction, val_seed) if cache else []
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)  # a run killed before its rename
    tmp.mkdir()
    try:
        for i, img in enumerate(composites(cutouts, crops, scene_images, count, size, seed)):
            write_image(tmp / f"c{i:04d}.png", img)
            if progress:
                progress(i + 1, count)
        for j, img in enumerate(scene_images):
            write_image(tmp / f"s{j:02d}.png", cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA))
    except BaseException:  # interrupted or failed: nothing half-written stays behind
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return {"out": str(out), "composites": count, "scenes": len(scene_images), "cutouts": len(cutouts),
            "training_crops": len(crops)}
