"""edgeseg train and edgeseg composites."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from edgeseg.cli.common import SEED, console, parse_size, progress, refuse_ignored, yolo_classes
from edgeseg.cli.info import best_epoch, scene_summary
from edgeseg.errors import EdgesegError
from edgeseg.training.recipe import TrainConfig

RECIPE = TrainConfig()  # train's defaults: the recipe of the bundled model's first stage


def train(
    data: Annotated[list[Path] | None, typer.Option(help=(
        "Oxford-IIIT Pet layout folder (images/, annotations/); repeat it to train on several: their trainval "
        "lines only."))] = None,
    output: Annotated[Path, typer.Option("-o", "--output", help=(
        "The best epoch's checkpoint is written here; the latest epoch's training state beside it as "
        "NAME.last.pth, for --resume."))] = Path("segnet_dsc.pth"),
    arch: Annotated[str, typer.Option(help="segnet-dsc or segnet.")] = RECIPE.arch,
    epochs: Annotated[int, typer.Option(min=1, help="Epochs to run (the best one by validation mIoU is kept).")
                      ] = RECIPE.epochs,
    batch: Annotated[int, typer.Option(min=1, help="Images per training step.")] = RECIPE.batch,
    size: Annotated[str, typer.Option(help="Input HxW (multiples of 16).")] = "x".join(map(str, RECIPE.size)),
    lr: Annotated[float, typer.Option(help="Adam learning rate.")] = RECIPE.lr,
    schedule: Annotated[str, typer.Option(help=(
        "Learning-rate schedule: step (halve every --step-size epochs by --gamma) or cosine (from --lr down to "
        "--lr/100 over --epochs)."))] = RECIPE.schedule,
    step_size: Annotated[int | None, typer.Option(help=(
        f"With --schedule step: its period in epochs (0: constant lr; default {RECIPE.step_size})."))] = None,
    gamma: Annotated[float | None, typer.Option(help=f"With --schedule step: its factor (default {RECIPE.gamma}).")
                     ] = None,
    seed: Annotated[int, typer.Option(help=(
        "Seed of the validation hold-out, and of the draws (shuffling, augmentation) unless --shuffle-seed."), **SEED)
    ] = RECIPE.seed,
    shuffle_seed: Annotated[int | None, typer.Option(help=(
        "Seed of the draws alone (a fresh network's weights, shuffling, augmentation; default: --seed): runs "
        "that differ only here validate on the same photos, e.g. the ingredients of a soup."), **SEED)] = None,
    scale_aug: Annotated[float, typer.Option(
        help="Random zoom-in crops down to this fraction of the side (1.0: off, the notebook's recipe).",
        min=0.1, max=1.0)] = RECIPE.scale_aug,
    zoom_out: Annotated[float, typer.Option(
        help="Random zoom-outs up to this window side (1.25: the photo at 0.8 of the input, in a reflected border "
             "the loss ignores), drawn with --scale-aug's zoom-ins (1.0: off).", min=1.0, max=2.0)
    ] = RECIPE.zoom_out,
    limit: Annotated[int, typer.Option(help="Use only the first N trainval images (0: all).")] = RECIPE.limit,
    extra_data: Annotated[Path | None, typer.Option(
        help="Photos with rough-masks/ (1 pet, 2 background) added to training, e.g. oxford-pets-37breeds-photos.")
    ] = None,
    resume: Annotated[Path | None, typer.Option(help=(
        "Continue from a *.last.pth training state, with the options the run was started with."))] = None,
    init: Annotated[Path | None, typer.Option(help=(
        "Start from this checkpoint's weights (fine-tune: an edgeseg or notebook checkpoint) instead of a "
        "random init; a fresh optimizer and schedule."))] = None,
    device: Annotated[str, typer.Option(help="auto (GPU when present), cpu or cuda.")] = RECIPE.device,
    balance: Annotated[str, typer.Option(help=(
        "Draw each epoch so every breed (or species) gets the same share: none, breed or species."))
    ] = RECIPE.balance,
    negatives: Annotated[float, typer.Option(min=0.0, max=0.9, help=(
        "Share of each epoch drawn from 'no animal' examples, labelled background: background-only crops of "
        "the training photos, and the --no-animal photos (0: no crops)."))] = RECIPE.negatives,
    no_animal: Annotated[list[Path] | None, typer.Option(help=(
        "A folder of photos without animals (the empty scene your camera will watch, say), labelled "
        "background and drawn among --negatives' share; repeatable; score on other ones with eval --no-animal."))
    ] = None,
    yolo_data: Annotated[list[Path] | None, typer.Option(help=(
        "A YOLO segmentation folder or dataset YAML (its train split) added to training, your own labelled "
        "scenes say: --animal-classes' polygons are pet with a thin border, everything else background (a "
        "photo without an animal is a 'no animal' example); repeatable; never held out for validation."))
    ] = None,
    border_weight: Annotated[float, typer.Option(min=0.0, help="Loss weight of the thin border class.")
                             ] = RECIPE.border_weight,
    average: Annotated[int, typer.Option(min=0, help=(
        "Also try the mean of the last N epochs' weights (stochastic weight averaging; BatchNorm statistics "
        "refreshed on one more epoch) and keep it when its validation mIoU beats the best epoch (0: off)."))
    ] = RECIPE.average,
    lovasz: Annotated[float, typer.Option(min=0.0, help=(
        "Weight of the Lovasz-softmax loss (a smooth 1 - IoU per class, the benchmark's own measure) added to "
        "cross-entropy; its authors fine-tune with it (one such stage did not help the bundled model: "
        "models/README.md) (0: off)."))] = RECIPE.lovasz,
    rotate: Annotated[float, typer.Option(min=0.0, max=45.0, help="Random rotation within +-DEG (0: off).")
                      ] = RECIPE.rotate,
    blur: Annotated[float, typer.Option(min=0.0, max=1.0, help="Share of samples blurred at random (0: off).")
                    ] = RECIPE.blur,
    gray: Annotated[float, typer.Option(min=0.0, max=1.0, help=(
        "Share of samples turned grey at random, for monochrome and night-vision cameras (0: off)."))
    ] = RECIPE.gray,
    dark: Annotated[float, typer.Option(min=0.0, max=1.0, help=(
        "Share of samples dimmed at random as in a dim room at night (gamma, low gain, sensor noise) (0: off)."))
    ] = RECIPE.dark,
    cache: Annotated[Path | None, typer.Option(help=(
        "Training-set cache (.npz, about 8 KB a photo): written from --data when missing, read when present; "
        "with no --data it trains from the cache alone (a GPU machine without the photos)."))] = None,
    precision: Annotated[str, typer.Option(help=(
        "Training compute: auto (bf16 autocast where the CPU or GPU has bf16 arithmetic, else fp32), fp32 or "
        "bf16. Weights stay FP32 and validation runs in FP32."))] = RECIPE.precision,
    val_people: Annotated[Path | None, typer.Option(help=(
        "Photos with person masks (as eval --person-masks), scored after every epoch: the share of person "
        "pixels called pet, beside validation mIoU, which cannot see a model that paints people."))] = None,
    val_numbered: Annotated[str | None, typer.Option(help=(
        "With --val-people: only the photos numbered in this range, e.g. 181-200 (keep training's and your "
        "report's photos out of it)."))] = None,
    val_no_animal: Annotated[list[Path] | None, typer.Option(help=(
        "Photos without animals scored after every epoch: the share called pet (as eval --no-animal); "
        "repeatable."))] = None,
    val_yolo: Annotated[list[Path] | None, typer.Option(help=(
        "A YOLO segmentation folder or dataset YAML scored after every epoch (as eval --yolo): animal IoU, pet "
        "called without an animal; repeatable. The best epoch is still chosen by validation mIoU; all are "
        "recorded."))] = None,
    yolo_split: Annotated[str | None, typer.Option(help=(
        "With --val-yolo: the split scored, train, val or test (a dataset YAML: default val; a folder: "
        "images/SPLIT/, default all of images/)."))] = RECIPE.yolo_split,
    animal_classes: Annotated[str | None, typer.Option(help=(
        "With --val-yolo or --yolo-data: the classes that are animals, ids or names (default 15,16: COCO-80's "
        "cat and dog)."))
    ] = None,
    person_class: Annotated[str | None, typer.Option(help=(
        "With --val-yolo: the class of people, an id or a name (default: the class named person; in a set "
        "without names, COCO-80's 0), or none."))] = None,
    force: Annotated[bool, typer.Option(help="Overwrite an existing output.")] = False,
) -> None:
    """Train SegNet-DSC (or SegNet) on Oxford-IIIT Pet; the defaults are the recipe of the bundled model's first
    stage, which --init then fine-tuned twice (models/README.md). Keeps the best epoch by validation mIoU."""
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn

    from edgeseg.training.train import train as run_training

    h, w = parse_size(size)
    if h % 16 or w % 16:
        raise EdgesegError(f"--size {size}: height and width must be multiples of 16 (four 2x2 poolings)")
    if arch not in ("segnet-dsc", "segnet"):
        raise EdgesegError(f"--arch {arch!r}: expected segnet-dsc or segnet")
    refuse_ignored((person_class is not None and not val_yolo, "--person-class", "--val-yolo"),
                   (step_size is not None and schedule != "step", "--step-size", "--schedule step"),
                   (gamma is not None and schedule != "step", "--gamma", "--schedule step"))
    animals, person = yolo_classes(animal_classes, person_class, "--val-yolo or --yolo-data",
                                   bool(val_yolo or yolo_data))
    cfg = TrainConfig(data=tuple(str(d) for d in data or ()), arch=arch, balance=balance, negatives=negatives,
                      border_weight=border_weight, lovasz=lovasz, average=average, rotate=rotate, blur=blur, gray=gray,
                      dark=dark, cache=str(cache) if cache else None,
                      epochs=epochs, batch=batch, precision=precision, schedule=schedule,
                      init=str(init) if init else None,
                      no_animal=tuple(str(f) for f in no_animal) if no_animal else None,
                      yolo_data=tuple(str(f) for f in yolo_data or ()),
                      size=(h, w), lr=lr, step_size=RECIPE.step_size if step_size is None else step_size,
                      gamma=RECIPE.gamma if gamma is None else gamma, seed=seed, shuffle_seed=shuffle_seed,
                      limit=limit, device=device,
                      scale_aug=scale_aug, zoom_out=zoom_out, extra_data=str(extra_data) if extra_data else None,
                      val_people=str(val_people) if val_people else None, val_numbered=val_numbered,
                      val_no_animal=tuple(str(f) for f in val_no_animal or ()),
                      val_yolo=tuple(str(f) for f in val_yolo or ()), yolo_split=yolo_split,
                      animal_classes=tuple(animals), person_class=person)
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[status]}"), TimeRemainingColumn())
    log = not console.is_terminal  # a log file or a pipe gets plain lines where a terminal gets the bar
    epoch_start = [time.monotonic()]
    with progress(*columns) as bar:
        task = bar.add_task("reading the split", total=None, status="")

        def report(ev: dict) -> None:
            if ev["event"] == "cache":
                bar.update(task, description=f"reading {Path(ev['path']).name}")
                if log:
                    console.print(f"reading the training cache {ev['path']}")
            elif ev["event"] == "loading":
                bar.update(task, description=f"loading {ev['total']} photos", completed=ev["done"], total=ev["total"])
                if log and ev["done"] == 1:
                    console.print(f"loading {ev['total']} photos")
            elif ev["event"] == "step":
                bar.update(task, description=f"epoch {ev['epoch']}/{epochs}", completed=ev["step"], total=ev["steps"],
                           status=f"loss {ev['loss']:.4f}")
                if ev["step"] == 1:
                    epoch_start[0] = time.monotonic()
                tenth = ev["step"] * 10 // ev["steps"]  # a line each tenth of an epoch; its end has its own
                if log and tenth > (ev["step"] - 1) * 10 // ev["steps"] and ev["step"] < ev["steps"]:
                    console.print(f"epoch {ev['epoch']}/{epochs}  step {ev['step']}/{ev['steps']}  loss "
                                  f"{ev['loss']:.4f}  {time.monotonic() - epoch_start[0]:.0f}s")
            elif ev["event"] == "average":
                mark = " *best" if ev["improved"] else ""
                bar.console.print(f"mean of epochs {ev['epochs'][0]}-{ev['epochs'][1]}  val mIoU {ev['val_miou']:.4f}  "
                                  f"val acc {ev['val_pixel_accuracy']:.4f}{mark}")
            else:
                mark = " *best" if ev["improved"] else ""
                bar.console.print(
                    f"epoch {ev['epoch']:3d}  loss {ev['loss']:.4f}  val mIoU {ev['val_miou']:.4f}  "
                    f"val acc {ev['val_pixel_accuracy']:.4f}  {ev['seconds']:.0f}s {ev['precision']}{mark}")
                if ev.get("scenes"):
                    bar.console.print(f"          {scene_summary(ev['scenes'])}")

        result = run_training(cfg, output, resume=resume, force=force, progress=report)
    b = result["best"]
    console.print(f"best epoch {best_epoch(b)}: val mIoU {b['miou']:.4f}; checkpoint written to {result['out']}")


def composites(
    output: Annotated[Path, typer.Option("-o", "--output", help=(
        "Folder to write: animal-free pictures for train --no-animal, or with --pets an Oxford-layout folder "
        "for train --data."))],
    objects: Annotated[list[Path] | None, typer.Argument(help=(
        "Folders of cut-out objects: PNGs with an alpha channel, none of an animal (e.g. tuxpaint-stamps-default's "
        "food/, household/, vehicles/). Not with --pets."), show_default=False)] = None,
    pets: Annotated[Path | None, typer.Option(help=(
        "A train --cache: its pets, cut out by their trimaps, are pasted at 10-90% of the frame on the --scenes "
        "photos (people are background), labelled; the validation hold-out's photos (train's default --seed) are "
        "never used."))] = None,
    count: Annotated[int, typer.Option(min=1, help="Composites to write.")] = 600,
    scenes: Annotated[list[Path] | None, typer.Option(help=(
        "Folder of scene photos without animals (repeatable): crops of them are backgrounds, and each is also "
        "written whole."))] = None,
    numbered: Annotated[str | None, typer.Option(help=(
        "Only the --scenes photos whose name is a number in this range, e.g. 1-200 (a training split)."))] = None,
    cache: Annotated[Path | None, typer.Option(help=(
        "A train --cache: its photos' background-only crops are backgrounds too (not the validation hold-out's "
        "of train's default --seed). Not with --pets."))] = None,
    skip: Annotated[str, typer.Option(help="Comma-separated words: cut-outs whose file name has one are left out.")
                    ] = "",
    person_masks: Annotated[Path | None, typer.Option(help=(
        "A folder of photos with person masks (images/ + masks/, as eval --person-masks reads): its people, cut "
        "out by their masks, are cut-outs too (with or without object folders). Not with --pets."))] = None,
    person_numbered: Annotated[str | None, typer.Option(help=(
        "Only the --person-masks photos whose name is a number in this range, e.g. 1-180 (a training split)."))
                               ] = None,
    size: Annotated[int, typer.Option(min=16, help="Side of the square pictures (train's input side).")] = 128,
    seed: Annotated[int, typer.Option(help="Seed of the draws: the same seed, the same pictures.", **SEED)] = 1,
    force: Annotated[bool, typer.Option(help="Replace an existing output folder.")] = False,
) -> None:
    """Training pictures made by pasting: objects on backgrounds, so that a model learns that an object in the
    middle of the frame is not necessarily a pet (train --no-animal takes the folder); or with --pets, pets
    pasted small and large into photos of people and rooms, with their trimaps (train --data takes the folder)."""
    from edgeseg.evaluation.scenes import parse_range

    if bool(objects or person_masks) == bool(pets):
        raise EdgesegError("give folders of cut-out objects or --person-masks, or --pets CACHE with --scenes, not "
                           "both")
    if pets and (cache or skip):
        raise EdgesegError("--cache and --skip are for object cut-outs; --pets takes its pets from its own cache")
    if pets and not scenes:
        raise EdgesegError("--pets needs --scenes: the photos (of people, of rooms) to paste the pets into")
    refuse_ignored((numbered is not None and not scenes, "--numbered", "--scenes"),
                   (person_numbered is not None and not person_masks, "--person-numbered", "--person-masks"))
    span = parse_range(numbered) if numbered else None
    person_span = parse_range(person_numbered, "--person-numbered") if person_numbered else None
    common = {"size": size, "seed": seed, "val_seed": RECIPE.seed, "val_fraction": RECIPE.val_fraction,
              "force": force}
    with progress() as bar:
        task = bar.add_task("composites", total=count)

        def done(n: int, _: int) -> None:
            bar.update(task, completed=n)

        if pets:
            from edgeseg.training.pasted import write_pasted

            r = write_pasted(pets, scenes, output, count, numbered=span, progress=done, **common)
        else:
            from edgeseg.training.composites import write_composites

            r = write_composites(objects or (), output, count, scenes=scenes or (), numbered=span, cache=cache,
                                 skip=[w for w in skip.split(",") if w], person_masks=person_masks,
                                 person_numbered=person_span, progress=done, **common)
    if pets:
        console.print(f"{r['composites']} composites ({r['pets']} pets on {r['scenes']} scene photos) and the scene "
                      f"photos whole, in the Oxford layout (train --data takes it): {r['out']}")
    else:
        console.print(f"{r['composites']} composites ({r['cutouts']} cut-outs on {r['training_crops']} "
                      f"training-photo crops, {r['scenes']} scene photos and gradients) and the scene photos whole: "
                      f"{r['out']}")


def soup(
    checkpoints: Annotated[list[Path], typer.Argument(help=(
        "Checkpoints fine-tuned from one parent (two or more), e.g. stages of train --init."), show_default=False)],
    output: Annotated[Path, typer.Option("-o", "--output", help="Checkpoint to write.")],
    weights: Annotated[str | None, typer.Option(help=(
        "One positive number per checkpoint, in their order (e.g. 3,1): a weighted mean, scaled to sum to 1 "
        "(default: the uniform mean)."))] = None,
    force: Annotated[bool, typer.Option(help="Overwrite an existing output.")] = False,
) -> None:
    """Average the weights of checkpoints (a model soup): free at run time, sometimes better than each
    ingredient, not always; check it with edgeseg eval before you keep it."""
    from edgeseg.training.soup import soup as make_soup

    result = make_soup(checkpoints, output, force=force, weights=parse_weights(weights) if weights else None)
    mix = ", ".join(f"{name} {w:.3g}" for name, w in zip(result["ingredients"], result["weights"], strict=True))
    console.print(f"soup of {mix} written to {result['out']}")


def parse_weights(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",")]
    except ValueError:
        raise EdgesegError(f"--weights {text!r}: give numbers separated by commas, one per checkpoint") from None
