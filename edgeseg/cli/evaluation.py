"""eval: accuracy on labelled data (Oxford-layout folders, YOLO segmentation sets, person masks) and the
share of animal-free photos called pet, each set in its own table."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from edgeseg.cli.common import (
    PRECISION_HELP,
    REGION_HELP,
    SEED,
    UPSAMPLE_HELP,
    model_name,
    print_json,
    print_table,
    progress,
    refuse_ignored,
    set_mask_options,
    yolo_classes,
)
from edgeseg.errors import EdgesegError
from edgeseg.training.recipe import TrainConfig

VALIDATION = TrainConfig()  # train's default hold-out (--seed, its fraction), which --split holdout picks again
LABELS_SHOWN = 5  # the eval table names the labels taking most of the pet pixels; --json has them all


def eval_(
    models: Annotated[list[str], typer.Argument(help=(
        "Checkpoints and/or ONNX models, compared side by side; triton://HOST:PORT/NAME for a served one."))],
    data: Annotated[list[Path] | None, typer.Option(help=(
        "Oxford-IIIT Pet layout folder (images/, annotations/); repeat it for several, each scored alone."))] = None,
    no_animal: Annotated[list[Path] | None, typer.Option(help=(
        "Folder of photos without any animal: the share of pixels each model calls pet (all wrong); repeat it "
        "for several, each scored alone."))] = None,
    split: Annotated[str, typer.Option(help=(
        "Split file in annotations/: test, trainval or list; or holdout: the photos `edgeseg train` with the same "
        "--data folders (in the same order) and --seed held out for validation, all folders as one set."))] = "test",
    seed: Annotated[int | None, typer.Option(
        help=f"With --split holdout: train's --seed (default {VALIDATION.seed}).", **SEED)] = None,
    limit: Annotated[int, typer.Option(help="Only the first N images of the split (0: all).")] = 0,
    threads: Annotated[int | None, typer.Option(help="Inference threads (default: physical cores).")] = None,
    backend: Annotated[str, typer.Option(help="auto (from the file), onnxruntime, openvino, tensorrt or torch.")
                       ] = "auto",
    precision: Annotated[str, typer.Option(help=PRECISION_HELP)] = "auto",
    upsample: Annotated[str, typer.Option(help=UPSAMPLE_HELP)] = "smooth",
    region_confidence: Annotated[float, typer.Option(min=0.0, max=1.0, help=REGION_HELP)] = 0.0,
    yolo: Annotated[list[Path] | None, typer.Option(help=(
        "A YOLO segmentation folder (Ultralytics: images/, labels/*.txt polygons) or its dataset YAML: animal "
        "IoU per photo, pet called on photos without an animal, person pixels called pet; repeatable."))] = None,
    yolo_split: Annotated[str | None, typer.Option(help=(
        "With --yolo: the split scored, train, val or test (a dataset YAML: default val; a folder: images/SPLIT/, "
        "default all of images/)."))] = None,
    animal_classes: Annotated[str | None, typer.Option(help=(
        "With --yolo: the classes that are animals, ids or names (default 15,16: COCO-80's cat and dog)."))
    ] = None,
    person_class: Annotated[str | None, typer.Option(help=(
        "With --yolo: the class of people, an id or a name (default: the class named person; in a set without "
        "names, COCO-80's 0), or none."))] = None,
    person_masks: Annotated[Path | None, typer.Option(help=(
        "Photos with person masks (images/N.jpg, masks/N.png; 0 background): the share of person pixels called "
        "pet."))] = None,
    numbered: Annotated[str | None, typer.Option(help=(
        "With --person-masks: only the photos numbered in this range, e.g. 201-300."))] = None,
    by_breed: Annotated[int, typer.Option(min=0, help=(
        "Also score each breed (from the Oxford file names) that has at least this many images (0: off; JSON "
        "holds every breed)."))] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Pixel accuracy, per-class IoU, mIoU and pet IoU at the original image resolution; with --no-animal,
    how much of animal-free photos each model calls pet."""

    from edgeseg.evaluation import scenes
    from edgeseg.evaluation.evaluate import animal_free, evaluate, load_split
    from edgeseg.evaluation.yolo_data import load_yolo_set
    from edgeseg.loader import load_predictor
    from edgeseg.runtime.images import images_in
    from edgeseg.training.trainset import holdout_samples

    if not data and not no_animal and not yolo and person_masks is None:
        raise EdgesegError("give --data (an Oxford-IIIT Pet layout folder), --no-animal (photos without animals), "
                           "--yolo (a YOLO segmentation folder) and/or --person-masks (photos with person masks)")
    refuse_ignored(*((given and not data, option, "--data") for given, option in (
                       (split != "test", "--split"), (limit > 0, "--limit"), (by_breed > 0, "--by-breed"))),
                   (seed is not None and split != "holdout", "--seed", "--split holdout"),
                   (numbered is not None and person_masks is None, "--numbered", "--person-masks"),
                   (yolo_split is not None and not yolo, "--yolo-split", "--yolo"))
    seed = VALIDATION.seed if seed is None else seed
    animals, person = yolo_classes(animal_classes, person_class, "--yolo", bool(yolo))
    people = scenes.person_pairs(person_masks, scenes.parse_range(numbered) if numbered else None) \
        if person_masks is not None else []
    yolo_sets = [(s, s.class_ids(animals, "--animal-classes"), s.person_id(person))
                 for s in (load_yolo_set(path, yolo_split) for path in yolo or ())]
    splits = ([(" + ".join(map(str, data)), holdout_samples(data, VALIDATION.val_fraction, seed)[:limit or None])]
              if split == "holdout" and data else [(folder, load_split(folder, split, limit)) for folder in data or ()])
    free_sets = [(folder, images_in(folder, "--no-animal")) for folder in no_animal or ()]
    predictors = [load_predictor(m, backend=backend, threads=threads, precision=precision) for m in models]
    for p in predictors:
        set_mask_options(p, upsample, region_confidence)
    out: dict = {"upsample": upsample, "region_confidence": region_confidence}
    with progress(quiet=as_json) as bar:
        for folder, samples in splits:
            task = bar.add_task(f"evaluating {len(predictors)} model(s) on {len(samples)} images", total=len(samples))
            results = evaluate(predictors, samples, progress=lambda i, n, t=task: bar.update(t, completed=i),
                               by_breed=by_breed > 0)
            out.setdefault("datasets", []).append(
                {"data": str(folder), "split": split, **({"seed": seed} if split == "holdout" else {}),
                 "images": len(samples), "models": results})
        if splits:  # the first folder's figures at the top too, where scripts reading one --data find them
            out.update(out["datasets"][0])
        for folder, photos in free_sets:
            task = bar.add_task(f"{len(photos)} photos without animals", total=len(photos))
            out.setdefault("no_animal_folders", []).append({"folder": str(folder), "models": animal_free(
                predictors, photos, progress=lambda i, n, t=task: bar.update(t, completed=i))})
        if free_sets:  # the first folder's figures under "no_animal" too, where scripts reading one find them
            out["no_animal"] = out["no_animal_folders"][0]
        for yolo_set, ids, person_id in yolo_sets:
            task = bar.add_task(f"{len(yolo_set.pairs)} YOLO-labelled photos", total=len(yolo_set.pairs))
            scores = scenes.score_yolo(predictors, yolo_set, ids, person_id,
                                       progress=lambda i, n, t=task: bar.update(t, completed=i))
            out.setdefault("yolo", []).append({"folder": str(yolo_set.source), "split": yolo_set.split,
                                               "animal_classes": ids, "person_class": person_id,
                                               "models": scores})
        if people:
            task = bar.add_task(f"{len(people)} photos of people", total=len(people))
            out["people"] = {"folder": str(person_masks), "numbered": numbered, "models": scenes.score_people(
                predictors, people, progress=lambda i, n: bar.update(task, completed=i))}
    if as_json:
        print_json(out)
        return
    for section in out.get("datasets", ()):
        _accuracy_table(section, upsample, predictors)
        if by_breed:
            _breed_table(section, by_breed)
    for section in out.get("no_animal_folders", ()):
        _animal_free_table(section, upsample)
    for section in out.get("yolo", ()):
        _yolo_table(section)
    if people:
        _people_table(out["people"])


def _pct(v: float | None) -> str:
    return "" if v is None else f"{100 * v:.1f}"


def _animal_free_table(section: dict, upsample: str) -> None:
    rows = section["models"]
    table = Table(title=f"{section['folder']}: {rows[0]['images']} photos without animals ({upsample} upsampling)",
                  title_justify="left")
    for col in ("model", "backend", "precision", "pet % (mean)", "pet+border % (mean)", "worst photo pet %"):
        table.add_column(col, justify="left" if col in ("model", "backend", "precision") else "right")
    for r in rows:
        table.add_row(model_name(r["model"]), r["backend"], r["precision"], f"{100 * r['pet_share']:.1f}",
                      f"{100 * r['animal_share']:.1f}",
                      f"{100 * r['worst_pet_share']:.1f} ({Path(r['worst_image']).name})")
    print_table(table)


def _yolo_table(section: dict) -> None:
    """The columns a set has photos for: with an animal (IoU, the lowest photo), without (pet %, the worst)."""
    rows = section["models"]
    split = f" ({section['split']})" if section["split"] else ""
    table = Table(title=f"{section['folder']}{split}: {rows[0]['images']} photos, {rows[0]['with_animal']} with "
                        f"an animal (classes {','.join(map(str, section['animal_classes']))})", title_justify="left")
    columns: dict[str, Callable[[dict], str]] = {"model": lambda r: model_name(r["model"])}
    if rows[0]["with_animal"]:
        columns |= {"animal IoU (mean)": lambda r: f"{r['animal_iou_mean']:.4f}",
                    "animal IoU (pooled)": lambda r: f"{r['animal_iou_pooled']:.4f}",
                    "missed": lambda r: f"{r['missed']}/{r['with_animal']}",
                    "lowest IoU (photo)": lambda r: _extreme(r["per_image_iou"], min, "{:.2f}".format)}
    if rows[0]["without_animal"]:
        columns |= {"pet % without animal": lambda r: _pct(r["pet_share_without_animal"]),
                    "worst photo pet %": lambda r: _extreme(r["per_image_pet_share"], max, _pct)}
    columns["person px called pet %"] = lambda r: _pct(r["person_pixels_called_pet"])
    for col in columns:
        table.add_column(col, justify="left" if col == "model" else "right")
    for r in rows:
        table.add_row(*(cell(r) for cell in columns.values()))
    if any(r["pet_share_by_label"] for r in rows):
        def largest(by_label: dict[str, float]) -> str:
            parts = list(by_label.items())[:LABELS_SHOWN]
            return ", ".join(f"{'class ' + k if k.isdigit() else k} {100 * v:.2f}" for k, v in parts)

        table.caption = "pet % without animal, by the label the pixels fall on: " + "; ".join(
            f"{model_name(r['model'])}: {largest(r['pet_share_by_label'])}" for r in rows)
        table.caption_justify = "left"
    print_table(table)


def _extreme(per_image: dict[str, float], pick: Callable, fmt: Callable[[float], str]) -> str:
    """The photo ``pick`` (min or max) finds by its figure, as 'figure (file name)'."""
    name = pick(per_image, key=per_image.get)
    return f"{fmt(per_image[name])} ({name})"


def _people_table(section: dict) -> None:
    rows = section["models"]
    numbered = f" numbered {section['numbered']}" if section["numbered"] else ""
    table = Table(title=f"{section['folder']}: {rows[0]['images']} photos of people{numbered}", title_justify="left")
    for col in ("model", "person px called pet %", "per photo: mean %", "median %", "photos > 20% painted",
                "all px called pet %", "worst photo %"):
        table.add_column(col, justify="left" if col == "model" else "right")
    for r in rows:
        table.add_row(model_name(r["model"]), _pct(r["person_pixels_called_pet"]), _pct(r["person_share_mean"]),
                      _pct(r["person_share_median"]), f"{r['photos_painted']}/{r['images']}",
                      _pct(r["all_pixels_called_pet"]), f"{_pct(r['worst_share'])} ({r['worst_image']})")
    print_table(table)


def _accuracy_table(out: dict, upsample: str, predictors: list) -> None:
    table = Table(title=f"{out['data']} / {out['split']}: {out['images']} images, scored at original resolution "
                        f"({upsample} upsampling)",
                  title_justify="left")
    names = list(predictors[0].meta.class_names)
    for col in ["model", "backend", "precision", "pixel acc", "mIoU", *[f"IoU {n}" for n in names],
                "IoU animal (pet+border)", "agree w/ 1st", "ms/img"]:
        table.add_column(col, justify="left" if col in ("model", "backend", "precision") else "right")
    for r in out["models"]:
        table.add_row(model_name(r["model"]), r["backend"], r["precision"], f"{r['pixel_accuracy']:.4f}",
                      f"{r['miou']:.4f}", *[f"{r['iou'][n]:.4f}" for n in names], f"{r['pet_iou']:.4f}",
                      f"{r['agreement_with_first']:.4f}", f"{r['ms_per_image']:.1f}")
    print_table(table)


def _breed_table(out: dict, min_images: int) -> None:
    """mIoU and animal IoU per breed with at least ``min_images`` images, one column pair per model."""
    models = out["models"]
    breeds = {b: r["images"] for b, r in models[0]["breeds"].items()}
    shown = sorted((b for b, n in breeds.items() if n >= min_images), key=lambda b: models[0]["breeds"][b]["miou"])
    left = len(breeds) - len(shown)
    table = Table(title=f"per breed, breeds with at least {min_images} images (worst first)"
                        + (f"; {left} breed(s) with fewer not shown" if left else ""), title_justify="left")
    table.add_column("breed")
    table.add_column("images", justify="right")
    for r in models:
        table.add_column(f"mIoU {model_name(r['model'])}", justify="right")
        table.add_column("IoU animal", justify="right")
    for b in shown:
        table.add_row(b, str(breeds[b]), *[f"{r['breeds'][b][k]:.4f}" for r in models for k in ("miou", "pet_iou")])
    print_table(table)
