"""What every command group shares: the console, help texts, value parsers, progress displays and the ways
a result is printed (tables, JSON)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from rich.console import Console
from rich.progress import Progress, ProgressColumn
from rich.table import Table
from rich.text import Text

from edgeseg.errors import EdgesegError

UPSAMPLE_HELP = ("How masks reach the frame's size: smooth (class scores upsampled, then decided: edges on "
                 "any pixel) or nearest (the model's class ids blown up: exactly the ids it computed).")
REGION_HELP = ("Make background each connected animal region whose mean animal probability is under this (0: off). "
               "Removes the model's unsure blobs on people and food; models/README.md measures 0.65.")
PRECISION_HELP = ("auto (CPU: the fastest precision this CPU runs natively that agrees with fp32, measured "
                  "once per model and cached; TensorRT: fp16, or int8 for a quantized file), fp32, bf16 or "
                  "fp16; TensorRT with an ONNX also int8 (the engine is built once, then cached).")
SEED = {"min": 0, "max": 2**32 - 1}  # NumPy's seeds: a usage error outside them, not an internal one
# Tables stay readable when piped to a file or CI log (rich would otherwise wrap at 80 columns).
console = Console(highlight=False, width=None if sys.stdout.isatty() else 160)


def set_mask_options(predictor, upsample: str, region_confidence: float) -> None:
    """``--upsample`` and ``--region-confidence`` onto a loaded predictor; a model that outputs class ids
    (an ArgMax head) has no probabilities to judge regions by."""
    from edgeseg.runtime.masks import UPSAMPLING

    if upsample not in UPSAMPLING:
        raise EdgesegError(f"--upsample {upsample!r}: choose {' or '.join(UPSAMPLING)}")
    if region_confidence > 0 and predictor.info.output == "classes":
        raise EdgesegError("--region-confidence needs class scores, and this model outputs class ids (an ArgMax "
                           "head): export it without --with-argmax", predictor.path)
    predictor.upsample, predictor.region_confidence = upsample, region_confidence


def parse_classes(text: str, option: str = "--animal-classes") -> list[int | str]:
    """``"15,16"`` -> [15, 16]; ``"cat,dog"`` -> ["cat", "dog"]: YOLO class ids, or names that each set's
    class names (classes.txt, a dataset YAML's names:) turn into ids."""
    classes: list[int | str] = [int(v) if v.strip().isdigit() else v.strip() for v in text.split(",") if v.strip()]
    if not classes:
        raise EdgesegError(f"{option} {text!r}: write class ids or names, e.g. 15,16 or cat,dog")
    return classes


def parse_person_class(text: str) -> int | str | None:
    """``--person-class``: ``"0"`` -> 0, ``"person"`` -> "person", ``"none"`` -> None (no people scored)."""
    text = text.strip()
    if not text or "," in text:
        raise EdgesegError(f"--person-class {text!r}: write one class id or name, or none")
    return None if text.lower() == "none" else int(text) if text.isdigit() else text


def refuse_ignored(*rules: tuple[bool, str, str]) -> None:
    """Options given where they would do nothing are refused, not ignored: the user who set one expects it to
    count. Each rule is (the option would be ignored, the option, what it applies with)."""
    for ignored, option, needs in rules:
        if ignored:
            raise EdgesegError(f"{option} applies only with {needs}: add {needs} or leave {option} out")


def yolo_classes(animal_classes: str | None, person_class: str | None, sets_option: str, sets_given: bool
                 ) -> tuple[list[int | str], int | str | None]:
    """``--animal-classes`` and ``--person-class`` parsed, or the recipe's defaults (COCO-80's cat and dog, the
    class named person) where not given; either given without a YOLO set (``sets_option``: ``--yolo`` or
    ``--val-yolo``) is refused."""
    from edgeseg.training.recipe import TrainConfig  # the dataclass alone: no PyTorch

    refuse_ignored((animal_classes is not None and not sets_given, "--animal-classes", sets_option),
                   (person_class is not None and not sets_given, "--person-class", sets_option))
    default = TrainConfig()
    return (parse_classes(animal_classes) if animal_classes is not None else list(default.animal_classes),
            parse_person_class(person_class) if person_class is not None else default.person_class)


def parse_size(text: str) -> tuple[int, int]:
    """``"128x160"`` or ``"128"`` -> (height, width)."""
    parts = text.lower().replace(" ", "").split("x")
    try:
        if len(parts) == 1:
            h = w = int(parts[0])
        elif len(parts) == 2:
            h, w = int(parts[0]), int(parts[1])
        else:
            raise ValueError
    except ValueError:
        raise EdgesegError(f"--size {text!r} is not HxW (for example 128x128)") from None
    if h <= 0 or w <= 0:
        raise EdgesegError(f"--size {text!r} must be positive")
    return h, w


def model_name(model: str) -> str:
    """A file's name, or a served model's whole address: how the tables name a model."""
    return model if "://" in model else Path(model).name


def print_json(data: dict) -> None:
    print(json.dumps(data, indent=2, sort_keys=False, default=str))


def kv_table(title: str, rows: list[tuple[str, object]]) -> Table:
    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    for k, v in rows:
        table.add_row(k, str(v))
    return table



def print_table(table: Table, out: Console = console) -> None:
    """Print ``table`` with its title on a line of its own: rich wraps a title to the table's width, which
    cuts it mid-phrase when the table is narrower than the title."""
    title, table.title = table.title, None
    if title:
        out.print(Text(str(title), style="bold"))
    out.print(table)


def progress(*columns: str | ProgressColumn, quiet: bool = False) -> Progress:
    """A transient progress display; off with ``quiet`` (JSON on stdout) and when stdout is not a terminal,
    where it would leave a blank line before the result in a log or a pipe."""
    return Progress(*columns, console=console, transient=True, disable=quiet or not console.is_terminal)
