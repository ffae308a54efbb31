"""YOLO segmentation data as Ultralytics users keep it, read as a labelled set.

Two ways in, as ``yolo val data=...`` takes them:

- a folder with ``images/`` and ``labels/``: every image under ``images/``, or under ``images/SPLIT/`` when a
  split is named (a folder whose ``images/`` holds ``train/``, ``val/`` or ``test/`` needs one named: scoring
  its training photos beside its validation photos would flatter the model); class names from a
  ``classes.txt`` (one per line, beside ``images/`` or in ``labels/``) or a ``data.yaml`` beside them
  (a folder with a ``data.yaml`` and no ``images/``, as Roboflow exports, is read through its YAML);
- a dataset YAML (``path:``, ``train:``/``val:``/``test:``, ``names:``): one split of it, each split a
  folder of images, a ``.txt`` list of image paths, or a list of these, resolved as Ultralytics resolves
  them (``path:`` the root, else the YAML's folder; a split that starts ``../`` and is missing is
  retried without it; in a list file, ``./`` means the list's own folder).

Each image's label file is its path with the last ``images`` folder named ``labels`` and the suffix
``.txt`` (Ultralytics' rule); an image without one has no object. A label line is a class id and a
polygon of x y pairs in 0..1 (several lines per file), or a class id and a box.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgeseg.errors import EdgesegError
from edgeseg.runtime.images import IMAGE_SUFFIXES, list_images

MAX_CLASS_ID = 2**31 - 1  # scenes.label_map paints class ids into an int32 image
MAX_YAML_BYTES = 1 << 20  # a dataset YAML is a few KB; anything this large is not one
YAML_SUFFIXES = (".yaml", ".yml")
NAMES_SHOWN = 12  # an unknown class's error lists this many of the set's names
SPLIT_FOLDERS = ("train", "val", "valid", "test")  # images/ subfolders that are splits, as Ultralytics names them
COCO_PERSON = 0
PERSON = "person"  # --person-class's default: the class of that name, else (a set without names) COCO's 0


@dataclass(frozen=True)
class Shape:
    cls: int
    points: np.ndarray  # (N, 2) x, y in 0..1


@dataclass(frozen=True)
class YoloSet:
    """The photos of one YOLO set, each with its label file (None: no object), and its class names."""

    source: Path  # the folder or the dataset YAML
    split: str | None  # the YAML's split; None for a folder
    pairs: list[tuple[Path, Path | None]]
    names: dict[int, str]

    def class_ids(self, classes: Sequence[int | str], option: str) -> list[int]:
        """Class ids from ids and/or names (``cat``), names looked up in this set's ``names``. Where the set
        names its classes, an id it does not name is refused: COCO's 15 and 16 (the default) in a set whose
        cats are class 0 would score every photo as one without an animal."""
        by_name = {n.lower(): i for i, n in self.names.items()}
        shown = [f"{i} {n}" for i, n in self.names.items()]
        known = ", ".join(shown[:NAMES_SHOWN]) + (f", ... ({len(shown)} in all)" if len(shown) > NAMES_SHOWN else "") \
            if shown else "none: give class ids"
        ids = []
        for c in classes:
            if isinstance(c, int) and (c in self.names or not self.names):
                ids.append(c)
            elif isinstance(c, str) and c.lower() in by_name:
                ids.append(by_name[c.lower()])
            else:
                what = f"no class {c}" if isinstance(c, int) else f"no class named {c!r}"
                raise EdgesegError(f"{option}: {what} here (names: {known})", self.source)
        return ids

    def person_id(self, person: int | str | None) -> int | None:
        """``--person-class``: an id or a name, looked up as ``class_ids`` does; None: no people scored. The
        default, ``person``, is COCO-80's id 0 in a set without class names and nothing in a set whose names
        have no person (its class 0 may be a cat)."""
        if person == PERSON and PERSON not in {n.lower() for n in self.names.values()}:
            return None if self.names else COCO_PERSON
        return None if person is None else self.class_ids([person], "--person-class")[0]


def read_yolo_labels(path: Path) -> list[Shape]:
    """One label file. A line of a class and 4 numbers is a YOLO box (centre x, y, width, height) and is
    taken as its rectangle; otherwise a polygon of at least 3 points. Anything else names the line."""
    shapes = []
    for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        try:
            cls, values = int(parts[0]), np.array([float(v) for v in parts[1:]], dtype=np.float64)
        except ValueError:
            raise EdgesegError(f"line {n} is not a class id and numbers (YOLO segmentation format)", path) from None
        if not np.isfinite(values).all() or cls < 0:
            raise EdgesegError(f"line {n} has a negative class or a value that is not a number", path)
        if cls > MAX_CLASS_ID:
            raise EdgesegError(f"line {n} has class id {cls}; class ids run from 0 to at most {MAX_CLASS_ID}", path)
        if len(values) == 4:
            cx, cy, w, h = values
            values = np.array([cx - w / 2, cy - h / 2, cx + w / 2, cy - h / 2, cx + w / 2, cy + h / 2,
                               cx - w / 2, cy + h / 2])
        if len(values) < 6 or len(values) % 2:
            raise EdgesegError(f"line {n} has {len(values)} coordinates; a polygon needs x y pairs, at least 3",
                               path)
        shapes.append(Shape(cls, np.clip(values.reshape(-1, 2), 0.0, 1.0)))
    return shapes


def label_path(image: Path) -> Path:
    """Ultralytics' pairing: the last ``images`` folder of the path named ``labels``, suffix ``.txt``."""
    parts = list(image.parts)
    folders = [i for i, p in enumerate(parts[:-1]) if p == "images"]
    if folders:
        parts[folders[-1]] = "labels"
    return Path(*parts).with_suffix(".txt")


def load_yolo_set(path: Path, split: str | None = None) -> YoloSet:
    """One split of a dataset YAML (default ``val``) or a YOLO folder (``images/SPLIT/`` where a split is
    named, else all its images); a folder without ``images/`` but with a ``data.yaml`` (a Roboflow export)
    is read through that YAML."""
    if path.is_dir() and not (path / "images").is_dir() and (path / "data.yaml").is_file():
        path = path / "data.yaml"
    if path.is_file() and path.suffix.lower() in YAML_SUFFIXES:
        data = _read_yaml(path)
        split = split or "val"
        images = _split_images(data, split, path)
        names = _names(data.get("names"), path)
    elif (path / "images").is_dir():
        images = list_images(_split_folder(path / "images", split), recursive=True)
        names = _folder_names(path)
    else:
        raise EdgesegError("expected a YOLO segmentation folder (images/ and labels/, Ultralytics layout) or its "
                           "dataset YAML (data.yaml)", path)
    if not images:
        raise EdgesegError("no images in " + (f"its {split} split" if split else "images/"), path)
    pairs = [(image, label if (label := label_path(image)).is_file() else None) for image in images]
    return YoloSet(path, split, pairs, names)


def training_split(path: Path) -> str | None:
    """The split ``train --yolo-data`` learns from: a dataset YAML's (or a Roboflow folder's) ``train``, a
    folder's ``images/train/`` where ``images/`` holds splits, else every image of ``images/``."""
    if not (path / "images").is_dir():
        return "train"
    return "train" if any((path / "images" / s).is_dir() for s in SPLIT_FOLDERS) else None


def _split_folder(images: Path, split: str | None) -> Path:
    """``images/SPLIT`` for a named split; ``images/`` itself where it holds no split folders."""
    splits = [s for s in SPLIT_FOLDERS if (images / s).is_dir()]
    if split is None and splits:
        raise EdgesegError(f"images/ holds the splits {', '.join(splits)}: choose one with --yolo-split",
                           images.parent)
    if split is not None and not (images / split).is_dir():
        have = ", ".join(sorted(d.name for d in images.iterdir() if d.is_dir())) or "none"
        raise EdgesegError(f"no images/{split}/ folder here (images/ has the folders: {have}); choose one with "
                           "--yolo-split, or leave it out to score every image", images.parent)
    return images / split if split else images


def _read_yaml(path: Path) -> dict:
    try:
        import yaml
    except ImportError:
        raise EdgesegError("reading a dataset YAML needs PyYAML: pip install pyyaml", path) from None
    if path.stat().st_size > MAX_YAML_BYTES:
        raise EdgesegError(f"over {MAX_YAML_BYTES >> 20} MiB: not a dataset YAML", path)
    try:
        data = yaml.safe_load(path.read_text(errors="replace"))
    except yaml.YAMLError as e:
        raise EdgesegError(f"not valid YAML ({str(e).splitlines()[0]})", path) from None
    if not isinstance(data, dict):
        raise EdgesegError("not a dataset YAML: expected keys such as path:, val: and names:", path)
    return data


def _names(value: object, path: Path) -> dict[int, str]:
    """``names:`` as a list in id order or a mapping of ids (or digit strings) to names."""
    bad = EdgesegError("names: should list the class names in id order, or map class ids to names", path)
    if value is None:
        return {}
    if isinstance(value, list):
        value = dict(enumerate(value))
    if not isinstance(value, dict):
        raise bad
    out = {}
    for key, name in value.items():
        cls = int(key) if isinstance(key, str) and key.isdigit() else key
        if not isinstance(cls, int) or isinstance(cls, bool) or not 0 <= cls <= MAX_CLASS_ID \
                or not isinstance(name, str | int | float):
            raise bad
        out[cls] = str(name)
    return out


def _folder_names(root: Path) -> dict[int, str]:
    for path in (root / "classes.txt", root / "labels" / "classes.txt"):
        if path.is_file():
            return {i: n.strip() for i, n in enumerate(path.read_text(errors="replace").splitlines()) if n.strip()}
    data_yaml = root / "data.yaml"
    return _names(_read_yaml(data_yaml).get("names"), data_yaml) if data_yaml.is_file() else {}


def _split_images(data: dict, split: str, path: Path) -> list[Path]:
    spec = data.get(split) or (data.get("validation") if split == "val" else None)  # Ultralytics' old key
    if not spec:
        have = ", ".join(k for k in ("train", "val", "test") if data.get(k)) or "none"
        raise EdgesegError(f"no {split}: split in it (it has: {have}); choose one with --yolo-split", path)
    root = _root(data.get("path"), path)
    images: list[Path] = []
    for entry in spec if isinstance(spec, list) else [spec]:
        if not isinstance(entry, str):
            raise EdgesegError(f"{split}: should be a folder, a .txt list of images, or a list of these", path)
        where = (root / entry).resolve()
        if not where.exists() and entry.startswith("../"):
            where = (root / entry[3:]).resolve()
        if where.is_dir():
            images += list_images(where, recursive=True)
        elif where.is_file() and where.suffix.lower() == ".txt":
            images += _listed(where)
        else:
            raise EdgesegError(f"{split}: {entry!r} is neither a folder nor a .txt list of images (looked for "
                               f"{where}); fix the entry or path:", path)
    return images


def _root(value: object, path: Path) -> Path:
    """``path:``: absolute, or relative to the working directory as Ultralytics tries first, or to the YAML's
    folder (standing in for Ultralytics' datasets folder setting); absent, the YAML's folder."""
    if not value:
        return path.parent.resolve()
    root = Path(str(value)).expanduser()
    for candidate in ([root] if root.is_absolute() else [Path.cwd() / root, path.parent / root]):
        if candidate.is_dir():
            return candidate.resolve()
    raise EdgesegError(f"path: {value!r} is not a folder here (relative paths are tried from the working "
                       "directory and from the YAML's folder); set path: to the dataset's root", path)


def _listed(listing: Path) -> list[Path]:
    """The images a split's .txt names, one per line; ``./`` is the list's own folder, as Ultralytics reads it."""
    images = []
    for n, line in enumerate(listing.read_text(errors="replace").splitlines(), 1):
        if not (entry := line.strip()):
            continue
        image = (listing.parent / entry[2:] if entry.startswith("./") else Path(entry)).resolve()
        if not image.is_file() or image.suffix.lower() not in IMAGE_SUFFIXES:
            raise EdgesegError(f"line {n}: {entry} is not an image file", listing)
        images.append(image)
    return images
