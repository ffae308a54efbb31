"""The ``edgeseg`` command line: option parsing and messages only; the work lives in the modules.

Heavy packages (PyTorch, onnx) are imported inside the commands that need them, so the device
side (``run``, ``bench`` on ONNX) starts without PyTorch installed.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
import warnings
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from edgeseg import __version__
from edgeseg.errors import EdgesegError
from edgeseg.recipe import TrainConfig

UPSAMPLE_HELP = ("How masks reach the frame's size: smooth (class scores upsampled, then decided: edges on "
                 "any pixel) or nearest (the model's class ids blown up: exactly the ids it computed).")
PRECISION_HELP = ("auto (CPU: the fastest precision this CPU runs natively that agrees with fp32, measured "
                  "once per model and cached; TensorRT: fp16, or int8 for a quantized file), fp32, bf16 or "
                  "fp16; TensorRT with an ONNX also int8 (the engine is built once, then cached).")
app = typer.Typer(
    name="edgeseg",
    help="SegNet-DSC pet segmentation from a PyTorch checkpoint to an edge device.",
    rich_markup_mode="rich",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
# Tables stay readable when piped to a file or CI log (rich would otherwise wrap at 80 columns).
console = Console(highlight=False, width=None if sys.stdout.isatty() else 160)


def _version(value: bool) -> None:
    if value:
        print(f"edgeseg {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks on errors.")] = False,
) -> None:
    if debug:
        os.environ["EDGESEG_DEBUG"] = "1"


def _upsample(text: str) -> str:
    from edgeseg.runtime.masks import UPSAMPLING

    if text not in UPSAMPLING:
        raise EdgesegError(f"--upsample {text!r}: choose {' or '.join(UPSAMPLING)}")
    return text


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


def _print_json(data: dict) -> None:
    print(json.dumps(data, indent=2, sort_keys=False, default=str))


def _kv_table(title: str, rows: list[tuple[str, object]]) -> Table:
    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    for k, v in rows:
        table.add_row(k, str(v))
    return table


@app.command()
def info(
    path: Annotated[Path, typer.Argument(help="Checkpoint (.pth/.pt) or ONNX model.")],
    size: Annotated[str | None, typer.Option(help="Input HxW for the MAC count (default: the model's).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Describe a model: architecture, parameters, MACs, classes, preprocessing, provenance."""
    from edgeseg.info import describe

    d = describe(path, parse_size(size) if size else None)
    if as_json:
        _print_json(d)
        return
    rows: list[tuple[str, object]] = [
        ("file", f"{d['path']} ({d['file_bytes'] / 1e6:.2f} MB)"),
        ("sha256", d["sha256"]),
    ]
    if d["kind"] == "checkpoint":
        meta = d["meta"]
        rows += [
            ("stored as", d["stored_as"]),
            ("arch", f"{d['arch']} (kernel size {d['kernel_size']})"),
            ("parameters", f"{d['parameters']:,}"),
            ("conv MACs", f"{d['macs']:,} at {d['macs_at'][0]}x{d['macs_at'][1]} ({d['macs'] / 1e9:.3f} GMAC)"),
            ("classes", ", ".join(f"{i} {n}" for i, n in enumerate(d["classes"]))),
            ("input", f"{meta['color']} {meta['layout']} {meta['input_size'][0]}x{meta['input_size'][1]}, "
                      f"values {meta['value_range'][0]:g}..{meta['value_range'][1]:g}, "
                      f"resize {meta['interpolation']}"),
        ]
        rows += [(f"provenance.{k}", v) for k, v in meta.get("provenance", {}).items()]
        rows += _training_rows(d["extra"])
    elif d["kind"] == "engine":
        rows += [(k, v) for k, v in d.items() if k not in ("path", "kind", "file_bytes", "sha256", "model_meta")]
    else:
        from edgeseg.build.onnx_info import onnx_rows

        rows += onnx_rows(d)
    console.print(_kv_table(f"edgeseg info: {path.name}", rows))


def _best_epoch(best: dict) -> str:
    """"26", or "mean of epochs 21-30" when weight averaging won."""
    span = best.get("averaged")
    return f"mean of epochs {span[0]}-{span[1]}" if span else str(best.get("epoch"))


def _recipe_rows(recipe: dict) -> list[tuple[str, object]]:
    """Augmentation and the loss's data in a line each (keys an older record lacks are left out)."""
    g = recipe.get
    aug = ["flip"]
    if g("jitter"):
        aug.append(f"colour jitter {g('jitter')}")
    if g("scale_aug") is not None:
        zoom = "whole frames" if g("scale_aug") >= 1 else f"zoom-in crops to {g('scale_aug')} of the side"
        aug.append(zoom + (f", zoom-out to 1/{g('zoom_out')}" if (g("zoom_out") or 1) > 1 else ""))
    if g("rotate"):
        aug.append(f"rotation within {g('rotate'):g} degrees")
    aug += [f"{label} on {g(k):.0%} of samples" for k, label in (("blur", "blur"), ("gray", "grey")) if g(k)]
    data = [f"cross-entropy, border class x{g('border_weight', 1)}"]
    if g("lovasz"):
        data.append(f"Lovasz x{g('lovasz')}")
    if g("negatives"):
        extra = f" and folder {g('no_animal')}" if g("no_animal") else ""
        data.append(f"'no animal' {g('negatives'):.0%} of draws (background crops{extra})")
    if g("balance") not in (None, "none"):
        data.append(f"balanced by {g('balance')}")
    return [("augmentation", ", ".join(aug)), ("loss and data", "; ".join(data))]


def _training_rows(extra: dict) -> list[tuple[str, object]]:
    """A training record in a few lines (the recipe, how far it ran, the best epoch); other keys as
    they are when short. The whole record is in ``info --json``."""
    rows: list[tuple[str, object]] = []
    recipe, history, best = extra.get("recipe") or {}, extra.get("history") or [], extra.get("best") or {}
    if recipe:
        if recipe.get("schedule") == "cosine":
            schedule = ", cosine down to lr/100"
        else:
            schedule = (f", StepLR every {recipe['step_size']} epochs x{recipe['gamma']}"
                        if recipe.get("step_size") else ", constant LR")
        rows.append(("training", f"batch {recipe.get('batch')}, lr {recipe.get('lr')}{schedule}, "
                                 f"{recipe.get('size', ['?'])[0]}px, seed {recipe.get('seed')}"))
        rows += _recipe_rows(recipe)
    if history or "epochs_run" in extra:
        planned = f" of {recipe['epochs']} planned" if recipe.get("epochs") else ""
        rows.append(("epochs run", f"{extra.get('epochs_run', len(history))}{planned} "
                                   f"({len(history)} in the history; info --json for every epoch)"))
    if best:
        rows.append(("best epoch", f"{_best_epoch(best)}: validation mIoU {best.get('miou', float('nan')):.4f}, "
                                   f"pixel accuracy {best.get('pixel_accuracy', float('nan')):.4f}"))
    avg = extra.get("average")
    if avg:
        kept = "kept" if best.get("averaged") else "not kept: the best epoch validated higher"
        rows.append(("weight average", f"epochs {avg['epochs'][0]}-{avg['epochs'][1]}: validation mIoU "
                                       f"{avg['val_miou']:.4f} ({kept})"))
    parent = extra.get("init_from")
    if parent:
        was = parent.get("best") or {}
        rows.append(("started from", f"{parent.get('file')} (sha256 {str(parent.get('sha256'))[:12]}, "
                                     f"{parent.get('epochs_run', '?')} epochs, best validation mIoU "
                                     f"{was.get('miou', float('nan')):.4f}; info --json for its record)"))
    for k, v in extra.items():
        if k not in ("recipe", "history", "best", "epochs_run", "init_from", "average"):
            rows.append((k, v if not isinstance(v, (list, dict)) or len(str(v)) < 100 else
                         f"{type(v).__name__} of {len(v)} (info --json)"))
    return rows


def _load_verify_images(folder: Path, meta, size: tuple[int, int], limit: int):
    """Real photos for export verification, preprocessed exactly as the runtime will."""
    from edgeseg.runtime.images import list_images, preprocess, read_images

    paths = list_images(folder)[:limit] if limit else list_images(folder)
    if not paths:
        raise EdgesegError("no images found; pass a folder of photos to --verify-images", folder)
    decoded, _ = read_images(paths)
    return preprocess([img for _, img in decoded], meta.with_(input_size=list(size)))


@app.command()
def export(
    checkpoint: Annotated[Path, typer.Argument(help="SegNet / SegNet-DSC checkpoint (.pth).")],
    output: Annotated[Path | None, typer.Option("-o", "--output", help="ONNX path (default: next to it).")] = None,
    size: Annotated[str | None, typer.Option(help="Input HxW, multiples of 16 (default: the checkpoint's).")] = None,
    opset: Annotated[int, typer.Option(help="ONNX opset (13..21; TensorRT 10 takes up to 20).")] = 17,
    batch: Annotated[int, typer.Option(help="Static batch size.")] = 1,
    dynamic_batch: Annotated[bool, typer.Option("--dynamic-batch", help="Leave the batch dimension dynamic.")] = False,
    simplify: Annotated[bool, typer.Option("--simplify/--no-simplify", help="Run onnxsim.")] = True,
    with_argmax: Annotated[str | None, typer.Option(
        "--with-argmax", help="Append an ArgMax head that outputs class ids as uint8 or int32.")] = None,
    verify_images: Annotated[Path | None, typer.Option(help="Also verify on these photos (a folder).")] = None,
    verify_limit: Annotated[int, typer.Option(help="At most this many --verify-images (0: all).")] = 64,
    force: Annotated[bool, typer.Option(help="Overwrite an existing output.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Export to ONNX for TensorRT and ONNX Runtime: unpooling without MaxUnpool, verified against PyTorch."""
    from dataclasses import asdict

    from edgeseg.build.checkpoint import load_checkpoint
    from edgeseg.build.export import ExportOptions, validate_options
    from edgeseg.build.export import export as run_export
    from edgeseg.files import check_writable

    opts = ExportOptions(size=parse_size(size) if size else None, opset=opset,
                         batch=None if dynamic_batch else batch, simplify=simplify, with_argmax=with_argmax)
    validate_options(opts)
    output = output or checkpoint.with_suffix(".onnx")
    check_writable(output, force)
    ckpt = load_checkpoint(checkpoint)
    size_hw = opts.size or ckpt.meta.input_size
    images = _load_verify_images(verify_images, ckpt.meta, size_hw, verify_limit) if verify_images else None
    with console.status("exporting and verifying..."):
        r = run_export(ckpt, output, opts, verify_images=images, force=force)
    if as_json:
        _print_json(asdict(r))
        return
    v = r.verification
    console.print(_kv_table(f"edgeseg export: {output}", [
        ("model", f"{ckpt.meta.arch} {size_hw[0]}x{size_hw[1]}, batch {opts.batch or 'dynamic'}, opset {opset}"),
        ("nodes", f"{r.nodes_before} -> {r.nodes_after}" + (" (onnxsim)" if r.simplified else " (not simplified)")),
        ("ops", ", ".join(f"{k} {n}" for k, n in r.op_histogram.items())),
        ("verified", f"{v.inputs} inputs ({v.real_images} real photos), {v.pixels:,} pixels: "
                     f"{v.agreement:.4%} argmax agreement with PyTorch ({v.synthetic_flips} near-tie flips on "
                     f"synthetic inputs, {v.real_flips} on photos), max abs error {v.max_abs_error:.2e}"),
        ("unpool", f"identical to MaxPool indices + MaxUnpool in ONNX Runtime ({v.unpool_flips} flips, max abs "
                   f"difference {v.unpool_max_abs_diff:g})"),
        ("file", f"{r.file_bytes / 1e6:.2f} MB, written in {r.seconds:.1f} s"),
    ]))


@app.command()
def check(
    model: Annotated[Path, typer.Argument(help="ONNX model.")],
    target: Annotated[str, typer.Option(help="tensorrt or onnxruntime.")] = "tensorrt",
    show_all: Annotated[bool, typer.Option("--all", help="One line per node instead of one per kind of problem.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Static compatibility check: every problem with its nodes; exit 1 when there is any."""
    from collections import defaultdict

    from edgeseg.build.check import check as run_check
    from edgeseg.build.check import load_onnx

    problems = run_check(model, target)
    if as_json:
        _print_json({"model": str(model), "target": target, "ok": not problems,
                     "problems": [{"node": p.node, "op": p.op, "message": p.message} for p in problems]})
    elif problems and show_all:
        for p in problems:
            print(f"{model}: {p}")
    elif problems:  # the same problem on 40 convs is one line, with the first nodes named
        groups: dict[tuple[str, str], list[str]] = defaultdict(list)
        for p in problems:
            groups[(p.op, p.message)].append(p.node)
        for (op, message), nodes in groups.items():
            named = ", ".join(n for n in nodes[:3] if n) + (f" and {len(nodes) - 3} more" if len(nodes) > 3 else "")
            print(f"{model}: {len(nodes)} {op or 'model'} node(s) ({named or 'the model'}): {message}")
    if problems and not as_json:
        precision = {p.key: p.value for p in load_onnx(model).metadata_props}.get("precision", "")
        if target == "tensorrt" and precision == "int8-cpu":
            print(f"{model}: this is INT8 for the CPU (edgeseg quantize --target cpu); for TensorRT quantize the "
                  "FP32 model with --target tensorrt, or build the FP32 model with --calib DIR", file=sys.stderr)
        print(f"{model}: {len(problems)} problem(s) for {target}" + ("" if show_all else " (--all lists every node)"),
              file=sys.stderr)
    elif not problems:
        console.print(f"{model}: OK for {target}")
    if problems:
        raise typer.Exit(1)


@app.command("eval")
def eval_(
    models: Annotated[list[Path], typer.Argument(help="Checkpoints and/or ONNX models, compared side by side.")],
    data: Annotated[Path | None, typer.Option(help="Oxford-IIIT Pet layout folder (images/, annotations/).")] = None,
    no_animal: Annotated[Path | None, typer.Option(help=(
        "Folder of photos without any animal: the share of pixels each model calls pet (all wrong)."))] = None,
    split: Annotated[str, typer.Option(help="Split file in annotations/: test, trainval or list.")] = "test",
    limit: Annotated[int, typer.Option(help="Only the first N images of the split (0: all).")] = 0,
    threads: Annotated[int | None, typer.Option(help="Inference threads (default: physical cores).")] = None,
    backend: Annotated[str, typer.Option(help="auto (from the file), onnxruntime, openvino, tensorrt or torch.")
                       ] = "auto",
    precision: Annotated[str, typer.Option(help=PRECISION_HELP)] = "auto",
    upsample: Annotated[str, typer.Option(help=UPSAMPLE_HELP)] = "smooth",
    by_breed: Annotated[int, typer.Option(min=0, help=(
        "Also score each breed (from the Oxford file names) that has at least this many images (0: off; JSON "
        "holds every breed)."))] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Pixel accuracy, per-class IoU, mIoU and pet IoU at the original image resolution; with --no-animal,
    how much of animal-free photos each model calls pet."""
    from rich.progress import Progress

    from edgeseg.evaluation.evaluate import animal_free, evaluate, load_split
    from edgeseg.loader import load_predictor
    from edgeseg.runtime.images import list_images

    if data is None and no_animal is None:
        raise EdgesegError("give --data (an Oxford-IIIT Pet layout folder) and/or --no-animal (photos without animals)")
    samples = load_split(data, split, limit) if data is not None else []
    free = list_images(no_animal) if no_animal is not None else []
    if no_animal is not None and not free:
        raise EdgesegError("no images in this folder", no_animal)
    predictors = [load_predictor(m, backend=backend, threads=threads, precision=precision) for m in models]
    for p in predictors:
        p.upsample = _upsample(upsample)
    out: dict = {"upsample": upsample}
    with Progress(console=console, transient=True, disable=as_json) as bar:
        if samples:
            task = bar.add_task(f"evaluating {len(predictors)} model(s) on {len(samples)} images", total=len(samples))
            results = evaluate(predictors, samples, progress=lambda i, n: bar.update(task, completed=i),
                               by_breed=by_breed > 0)
            out.update(data=str(data), split=split, images=len(samples), models=results)
        if free:
            task = bar.add_task(f"{len(free)} photos without animals", total=len(free))
            out["no_animal"] = {"folder": str(no_animal), "models": animal_free(
                predictors, free, progress=lambda i, n: bar.update(task, completed=i))}
    if as_json:
        _print_json(out)
        return
    if samples:
        _accuracy_table(out, predictors)
        if by_breed:
            _breed_table(out, by_breed)
    if free:
        table = Table(title=f"{no_animal}: {len(free)} photos without animals ({upsample} upsampling)",
                      title_justify="left")
        for col in ("model", "backend", "precision", "pet % (mean)", "pet+border % (mean)", "worst photo pet %"):
            table.add_column(col, justify="left" if col in ("model", "backend", "precision") else "right")
        for r in out["no_animal"]["models"]:
            table.add_row(Path(r["model"]).name, r["backend"], r["precision"], f"{100 * r['pet_share']:.1f}",
                          f"{100 * r['animal_share']:.1f}",
                          f"{100 * r['worst_pet_share']:.1f} ({Path(r['worst_image']).name})")
        console.print(table)


def _accuracy_table(out: dict, predictors: list) -> None:
    table = Table(title=f"{out['data']} / {out['split']}: {out['images']} images, scored at original resolution "
                        f"({out['upsample']} upsampling)",
                  title_justify="left")
    names = list(predictors[0].meta.class_names)
    for col in ["model", "backend", "precision", "pixel acc", "mIoU", *[f"IoU {n}" for n in names],
                "IoU animal (pet+border)", "agree w/ 1st", "ms/img"]:
        table.add_column(col, justify="left" if col in ("model", "backend", "precision") else "right")
    for r in out["models"]:
        table.add_row(Path(r["model"]).name, r["backend"], r["precision"], f"{r['pixel_accuracy']:.4f}",
                      f"{r['miou']:.4f}", *[f"{r['iou'][n]:.4f}" for n in names], f"{r['pet_iou']:.4f}",
                      f"{r['agreement_with_first']:.4f}", f"{r['ms_per_image']:.1f}")
    console.print(table)


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
        table.add_column(f"mIoU {Path(r['model']).name}", justify="right")
        table.add_column("IoU animal", justify="right")
    for b in shown:
        table.add_row(b, str(breeds[b]), *[f"{r['breeds'][b][k]:.4f}" for r in models for k in ("miou", "pet_iou")])
    console.print(table)


PERCENTILE_MIN_FRAMES = {"p50": 1, "p90": 10, "p99": 100}


def latency_table(report: dict, title: str) -> Table:
    """Per-stage p50/p90/p99/max table from a run report."""
    lat = report["latency"]
    table = Table(title=title, title_justify="left")
    for col in ("stage", "p50 ms", "p90 ms", "p99 ms", "max ms", "mean ms"):
        table.add_column(col, justify="left" if col == "stage" else "right")
    rows = [*lat["stages_ms"].items(), ("end to end", lat["end_to_end_ms"])]
    notes = []
    for name, st in rows:
        if st.get("count"):
            # a percentile from fewer frames than it needs is the maximum, not a tail: left blank
            cells = [f"{st[k]:.2f}" if st["count"] >= PERCENTILE_MIN_FRAMES[k] else "" for k in ("p50", "p90", "p99")]
            table.add_row(name, *cells, f"{st['max']:.2f}", f"{st['mean']:.2f}")
    frames = lat["end_to_end_ms"].get("count", 0)
    if frames < PERCENTILE_MIN_FRAMES["p99"]:
        notes.append(f"p90/p99 need {PERCENTILE_MIN_FRAMES['p90']}/{PERCENTILE_MIN_FRAMES['p99']} frames "
                     f"(measured {frames})")
    if any("(reader thread)" in name for name, _ in rows):
        notes.append("the reader thread's row overlaps inference: not part of end to end")
    table.caption = "; ".join(notes) or None
    return table


@app.command()
def run(
    model: Annotated[Path, typer.Argument(help="ONNX model (or a checkpoint, run with PyTorch as a reference).")],
    camera: Annotated[int | None, typer.Option(help="Camera index (V4L2 /dev/videoN on Linux).")] = None,
    source: Annotated[str | None, typer.Option(
        help="Folder, glob, image, video file, /dev/videoN, rtsp:// or http:// URL, csi://N, GStreamer pipeline.")
    ] = None,
    recursive: Annotated[bool, typer.Option(help="Include images in subfolders of a folder source.")] = False,
    backend: Annotated[str, typer.Option(help="auto, onnxruntime, openvino, tensorrt or torch.")] = "auto",
    precision: Annotated[str, typer.Option(help=PRECISION_HELP)] = "auto",
    threads: Annotated[int | None, typer.Option(help="Inference threads (default: physical cores).")] = None,
    view: Annotated[str, typer.Option(help=(
        "overlay, mask, side-by-side, cutout (BGRA PNGs, the background transparent) or blur (the "
        "background blurred, the animal sharp)."))] = "overlay",
    alpha: Annotated[float, typer.Option(help="Overlay opacity 0..1.")] = 0.5,
    pet_color: Annotated[str, typer.Option(help="Pet colour, #rrggbb or r,g,b.")] = "#ffc800",
    border: Annotated[str, typer.Option(help=(
        "pet: the border class drawn as part of the animal, with a soft edge; outline: the pet class "
        "tinted and the border class painted as an outline."))] = "pet",
    upsample: Annotated[str, typer.Option(help=UPSAMPLE_HELP)] = "smooth",
    smooth: Annotated[float | None, typer.Option(min=0.0, max=0.95, help=(
        "Temporal smoothing of videos and cameras: the weight of the past frames (0: off; default 0.3). "
        "Never applied across the photos of a folder."))] = None,
    show: Annotated[bool, typer.Option(help="Show a window (continues headless when there is no display).")] = False,
    output: Annotated[Path | None, typer.Option(help=(
        "Folder: one rendered frame per input, same base name (JPEG; PNG for --view cutout)."))] = None,
    save_video: Annotated[Path | None, typer.Option(help="Write the rendered frames to a video (.mp4/.avi).")] = None,
    save_masks: Annotated[Path | None, typer.Option(help="Folder: class-id PNG masks (0 pet, 1 bg, 2 border).")] = None,
    max_frames: Annotated[int, typer.Option(help="Stop after N frames (0: no limit).")] = 0,
    duration: Annotated[float, typer.Option(help="Stop after S seconds (0: no limit).")] = 0.0,
    warmup: Annotated[int, typer.Option(help="Frames left out of the latency statistics.")] = 5,
    report: Annotated[Path | None, typer.Option(help="Write the latency report (JSON) here.")] = None,
    reconnect: Annotated[float, typer.Option(help="Seconds to keep reopening a live source that dropped.")] = 10.0,
    width: Annotated[int | None, typer.Option(help="Camera capture width (csi:// default 1280).")] = None,
    height: Annotated[int | None, typer.Option(help="Camera capture height (csi:// default 720).")] = None,
    fps: Annotated[int | None, typer.Option(help="Camera frame rate (csi:// default 30).")] = None,
    flip: Annotated[int, typer.Option(help="csi:// flip-method (0..7).")] = 0,
    force: Annotated[bool, typer.Option(help="Overwrite existing outputs.")] = False,
    loop: Annotated[bool, typer.Option(help=(
        "Start a folder, image or video again when it ends (demos, --serve); stop with Ctrl-C, --max-frames "
        "or --duration."))] = False,
    serve: Annotated[str | None, typer.Option(help=(
        "[HOST:]PORT: stream the rendered frames and live figures to browsers (MJPEG). Host 127.0.0.1 "
        "unless given; 0.0.0.0 opens it to the network."))] = None,
    serve_token: Annotated[str | None, typer.Option(help=(
        "A token the page and stream require (?token=... or Authorization: Bearer)."))] = None,
    serve_quality: Annotated[int, typer.Option(help="JPEG quality of the stream (10..100).")] = 80,
    serve_width: Annotated[int, typer.Option(min=16, help="Streamed frames are scaled down to this width.")] = 640,
    serve_fps: Annotated[float, typer.Option(help="Most frames per second encoded for viewers.")] = 15.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Segment pets live from a camera, stream, video or folder; per-stage latency report."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from edgeseg.loader import load_predictor
    from edgeseg.runtime.loop import RunOptions, check_outputs, run_loop
    from edgeseg.runtime.overlay import Renderer, parse_color
    from edgeseg.runtime.sources import open_source

    if (camera is None) == (source is None):
        raise EdgesegError("give exactly one of --camera N or --source X")
    try:
        renderer = Renderer(view=view, alpha=alpha, pet_color=parse_color(pet_color), border=border)
    except ValueError as e:
        raise EdgesegError(str(e)) from None
    opts = RunOptions(output=output, save_video=save_video, save_masks=save_masks, report=report, show=show,
                      max_frames=max_frames, duration=duration, warmup=warmup, force=force, smooth=smooth)
    check_outputs(opts, renderer.view)
    predictor = load_predictor(model, backend=backend, threads=threads, precision=precision)
    predictor.upsample = _upsample(upsample)
    src = open_source(camera if camera is not None else source, recursive=recursive, reconnect=reconnect,
                      width=width, height=height, fps=fps, flip=flip, loop=loop)
    server = None
    if serve is not None:  # the server module is imported only when it is used
        from edgeseg.runtime.serve import LOOPBACK, StreamServer, parse_address

        host, port = parse_address(serve)
        server = StreamServer(host, port, token=serve_token, quality=serve_quality, max_width=serve_width,
                              fps=serve_fps, title=f"edgeseg: {Path(model).name} on {src.label}")
        if host not in LOOPBACK and serve_token is None:
            console.print(f"[yellow]warning:[/] serving on {host}:{server.port} without authentication: anyone who "
                          "can reach this port sees the camera; add --serve-token")
        console.print(f"serving on {server.url}")
    total = len(src.paths) if hasattr(src, "paths") else None
    if loop:
        total = max_frames or None
    elif max_frames and total:
        total = min(total, max_frames)
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[fps]:.1f} FPS, inference p50 {task.fields[p50]:.1f} ms"))
    with Progress(*columns, console=console, transient=True, disable=as_json) as bar:
        task = bar.add_task(src.label if len(src.label) < 40 else "..." + src.label[-37:], total=total,
                            fps=0.0, p50=float("nan"))
        last = [0.0]

        def status(timer) -> None:
            now = time.monotonic()
            if now - last[0] > 0.25:
                last[0] = now
                bar.update(task, completed=timer.frames, fps=timer.fps(), p50=timer.live_p50())

        result = run_loop(predictor, src, renderer, opts, status=status,
                          warn=lambda m: console.print(f"[yellow]warning:[/] {m}"), server=server)
    if as_json:
        _print_json(result)
    else:
        lat, st = result["latency"], result["source_stats"]
        info = result["model"]
        console.print(latency_table(result, f"edgeseg run: {Path(info['model']).name} on {src.label} "
                                            f"({info['backend']} {info['precision']}, {info['threads']} threads)"))
        console.print(f"{lat['measured_frames']} frames measured (+{lat['warmup_frames']} warm-up): "
                      f"{lat['fps']:.1f} FPS end to end; skipped {st['skipped_unreadable']} unreadable, "
                      f"dropped {st['dropped_stale']} stale, {st['reconnects']} reconnects "
                      f"({st['gap_seconds']:.1f} s without frames)")
        for kind, where in result["outputs"].items():
            console.print(f"{kind}: {where}")
        if report:
            console.print(f"report: {report}")
    if result.get("error"):
        raise EdgesegError(result["error"])
    if result["interrupted"]:  # outputs and report are complete; the code says what stopped the loop
        raise typer.Exit(128 + {"SIGINT": 2, "SIGHUP": 1, "SIGTERM": 15}[result["stopped_by"]])


@app.command()
def quantize(
    model: Annotated[Path, typer.Argument(help="FP32 ONNX from edgeseg export.")],
    calib: Annotated[Path | None, typer.Option(help="Folder of calibration photos (recursive).")] = None,
    calib_ranges: Annotated[Path | None, typer.Option(help="Stored activation ranges instead of photos.")] = None,
    output: Annotated[Path | None, typer.Option("-o", "--output", help="INT8 ONNX (default: MODEL.int8.onnx).")] = None,
    target: Annotated[str, typer.Option(help="cpu (ONNX Runtime on x86/ARM) or tensorrt (symmetric int8).")] = "cpu",
    method: Annotated[str, typer.Option(help=(
        "Calibration: minmax, entropy, percentile, or auto: minmax for cpu, percentile for tensorrt (measured on "
        "the bundled model: models/README.md), the stored ranges' own method with --calib-ranges."))] = "auto",
    percentile: Annotated[float, typer.Option(help="Percentile for --method percentile.")] = 99.999,
    num_images: Annotated[int, typer.Option(help="Random subset of the calibration photos (0: all).")] = 200,
    seed: Annotated[int, typer.Option(help="Seed of that subset.")] = 0,
    val: Annotated[Path | None, typer.Option(
        help="Accuracy gate data: Oxford-layout folder (mIoU) or photos (agreement with FP32).")] = None,
    val_limit: Annotated[int, typer.Option(help="Only the first N validation images (0: all).")] = 0,
    max_drop: Annotated[float, typer.Option(help="Largest mIoU drop in points the gate accepts (--val with masks).")
    ] = 1.0,
    min_agreement: Annotated[float, typer.Option(
        help="Smallest share of pixels whose class INT8 keeps (--val with photos only).", min=0.0, max=1.0)] = 0.95,
    save_ranges: Annotated[Path | None, typer.Option(help="Also write the activation ranges here.")] = None,
    threads: Annotated[int | None, typer.Option(help="Threads for the gate's inference.")] = None,
    force: Annotated[bool, typer.Option(help="Overwrite existing outputs.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """INT8 Q/DQ for ONNX Runtime (cpu) or TensorRT, with a measured accuracy gate (--val)."""
    from dataclasses import asdict

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from edgeseg.build.quantize import QuantizeOptions
    from edgeseg.build.quantize import quantize as run_quantize

    output = output or model.with_name(model.stem + (".int8.onnx" if target == "cpu" else f".int8-{target}.onnx"))
    opts = QuantizeOptions(target=target, method=method, percentile=percentile, num_images=num_images, seed=seed)
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), console=console,
                  transient=True, disable=as_json) as bar:
        tasks: dict[str, int] = {}

        def progress(stage: str, i: int, n: int) -> None:
            if stage not in tasks:
                tasks[stage] = bar.add_task(stage, total=n)
            bar.update(tasks[stage], completed=i)

        r = run_quantize(model, output, opts, calib_dir=calib, calib_ranges=calib_ranges, val=val,
                         max_drop=max_drop, val_limit=val_limit, save_ranges=save_ranges, force=force,
                         threads=threads, progress=progress, min_agreement=min_agreement)
    if as_json:
        _print_json(asdict(r))
    else:
        c = r.calibration
        rows: list[tuple[str, object]] = [
            ("target", f"{r.target} ({r.method} calibration)"),
            ("calibration", f"{c['images']} images from {c['source']} ({c['skipped']} unreadable skipped, "
                            f"{c.get('masks_left_out', 0)} in mask folders and {c.get('duplicates_left_out', 0)} "
                            f"duplicates left out) in {c['seconds']:.1f} s"
             if c["images"] else f"stored ranges {c['source']}"),
        ]
        if r.gate:
            g = r.gate
            if g["drop_points"] is not None:
                rows += [("mIoU fp32 -> int8", f"{g['fp32']['miou']:.4f} -> {g['int8']['miou']:.4f} "
                                               f"({g['drop_points']:+.2f} points lost, gate {g['max_drop']:g})"),
                         ("pixel acc fp32 -> int8",
                          f"{g['fp32']['pixel_accuracy']:.4f} -> {g['int8']['pixel_accuracy']:.4f}")]
            rows.append(("agreement with fp32", f"{g['agreement']:.4f}" + (
                f" (gate {g['min_agreement']:g})" if g["drop_points"] is None else "")))
        if r.float_nodes:
            rows.append(("kept in float", ", ".join(r.float_nodes)))
        rows.append(("result", f"{r.path} in {r.seconds:.1f} s" if r.passed else "gate failed: nothing written"))
        console.print(_kv_table(f"edgeseg quantize: {model.name}", rows))
    if not r.passed:
        g = r.gate
        lost = (f"loses {g['drop_points']:.2f} mIoU points" if g["drop_points"] is not None else
                f"keeps the class of only {g['agreement']:.2%} of the pixels")
        limit = f"--max-drop {max_drop:g}" if g["drop_points"] is not None else f"--min-agreement {min_agreement:g}"
        raise EdgesegError(f"INT8 {lost} even with {len(r.float_nodes)} conv(s) in float (gate {limit}); nothing "
                           "was written. Try more or better calibration photos, or --method entropy", model)


@app.command()
def bench(
    models: Annotated[list[str], typer.Argument(
        help="Checkpoints (PyTorch reference), FP32/INT8 ONNX, engines; MODEL@BACKEND or MODEL@BACKEND:PRECISION "
             "sets them per model (m.onnx@openvino:bf16).")],
    backend: Annotated[str, typer.Option(help="Default backend: auto (from each file), onnxruntime, openvino, "
                                              "tensorrt or torch.")] = "auto",
    precision: Annotated[str, typer.Option(help="Default precision. " + PRECISION_HELP)] = "auto",
    threads: Annotated[int | None, typer.Option(help="Inference threads (default: physical cores).")] = None,
    runs: Annotated[int, typer.Option(help="Timed runs per model.")] = 100,
    warmup: Annotated[int, typer.Option(help="Untimed runs per model first.")] = 10,
    batch: Annotated[int, typer.Option(help="Images per inference.")] = 1,
    data: Annotated[Path | None, typer.Option(help="Oxford-layout folder: add mIoU and agreement.")] = None,
    data_limit: Annotated[int, typer.Option(help="Only the first N test images for accuracy (0: all).")] = 0,
    end_to_end: Annotated[bool, typer.Option(help="Time preprocess + inference + postprocess on photos.")] = False,
    images: Annotated[Path | None, typer.Option(help="Photos for --end-to-end (default: DATA/images).")] = None,
    peak: Annotated[bool, typer.Option("--peak/--no-peak", help="Measure the machine's matmul peak.")] = True,
    json_file: Annotated[Path | None, typer.Option("--json", help="Also write the results as JSON here.")] = None,
    force: Annotated[bool, typer.Option(help="Overwrite an existing --json file.")] = False,
) -> None:
    """Latency table across models, backends and precisions, interleaved, with the machine's own limit."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from edgeseg.bench import bench as run_bench
    from edgeseg.files import atomic_write, check_writable

    if json_file is not None:
        check_writable(json_file, force)
    with Progress(TextColumn("timing {task.total} interleaved runs"), BarColumn(), MofNCompleteColumn(),
                  console=console, transient=True) as bar:
        task = bar.add_task("bench", total=runs)
        r = run_bench(models, backend=backend, precision=precision, threads=threads, runs=runs, warmup=warmup,
                      batch=batch, data=data, data_limit=data_limit, end_to_end=end_to_end, images=images, peak=peak,
                      progress=lambda i, n: bar.update(task, completed=i))
    env = r["environment"]
    sizes = [f"{m['input_size'][0]}x{m['input_size'][1]}" for m in r["models"]]
    mixed = len(set(sizes)) > 1  # a larger-input export beside the default: a column says which is which
    title = (f"edgeseg bench ({r['mode']}, batch {batch}, {'' if mixed else sizes[0] + ', '}{runs} runs "
             f"interleaved) on {env['cpu']}")
    table = Table(title=title, title_justify="left")
    cols = ["model", *(["input"] if mixed else []), "backend", "precision", "thr", "MB", "p50 ms", "p90 ms",
            "p99 ms", "FPS", "x first", "GMAC/s"]
    if "machine_peak" in r and "fp32_gmacs" in r["machine_peak"]:
        cols.append("% of peak")
    if data is not None:
        cols += ["mIoU", "agree"]
    for c in cols:
        table.add_column(c, justify="left" if c in ("model", "backend", "precision") else "right")
    for m, size in zip(r["models"], sizes, strict=True):
        lat = m["latency_ms"]
        row = [Path(m["model"]).name, *([size] if mixed else []), m["backend"], m["precision"], str(m["threads"]),
               f"{m['file_mb']:.1f}",
               f"{lat['p50']:.2f}", f"{lat['p90']:.2f}", f"{lat['p99']:.2f}", f"{m['fps']:.1f}",
               f"{m['ratio_to_first']:.2f}", f"{m['gmacs']:.1f}"]
        if "% of peak" in cols:
            row.append(f"{100 * m['share_of_own_peak']:.0f}% {m['peak_kind']}" if "peak_kind" in m else "")
        if data is not None:
            row += [f"{m['miou']:.4f}", f"{m['agreement_with_first']:.4f}"]
        table.add_row(*row)
    console.print(table)
    if "machine_peak" in r:
        console.print("machine peak (ONNX Runtime 1024^3 matmul): " + ", ".join(
            f"{k.replace('_gmacs', '')} {v:.1f} GMAC/s" for k, v in r["machine_peak"].items()))
    if "machine_peak_skipped" in r:
        console.print(f"machine peak: skipped ({r['machine_peak_skipped']})")
    if json_file is not None:
        atomic_write(json_file, lambda p: p.write_text(json.dumps(r, indent=2)), force=force)
        console.print(f"results: {json_file}")


@app.command()
def build(
    model: Annotated[Path, typer.Argument(help="ONNX from edgeseg export (FP32) or quantize --target tensorrt.")],
    precision: Annotated[str, typer.Option(help="fp32, fp16 or int8 (int8 needs a Q/DQ model or --calib).")] = "fp16",
    output: Annotated[Path | None, typer.Option("-o", "--output", help="Engine (default: MODEL.PRECISION.engine).")
    ] = None,
    calib: Annotated[Path | None, typer.Option(help="INT8 from an FP32 model: quantize on the way with these.")
    ] = None,
    workspace: Annotated[float, typer.Option(help="Builder workspace in GiB.")] = 1.0,
    timing_cache: Annotated[Path | None, typer.Option(help="Reuse/extend this timing cache file.")] = None,
    dla_core: Annotated[int | None, typer.Option(help="Build for this DLA core (GPU fallback on).")] = None,
    opt_level: Annotated[int, typer.Option(help="Builder optimization level 0..5.", min=0, max=5)] = 3,
    max_batch: Annotated[int, typer.Option(help="Largest batch of a dynamic-batch model's profile.")] = 1,
    verbose: Annotated[bool, typer.Option(help="TensorRT's verbose log.")] = False,
    force: Annotated[bool, typer.Option(help="Overwrite an existing engine.")] = False,
) -> None:
    """Build a TensorRT engine (FP32/FP16/INT8) for this GPU; `check --target tensorrt` runs first."""
    from edgeseg.build.engine import PRECISIONS, build_engine

    if precision not in PRECISIONS:
        raise EdgesegError(f"--precision {precision!r}: choose fp32, fp16 or int8")
    output = output or model.with_name(f"{model.stem}.{precision}.engine")
    t0 = time.perf_counter()
    with console.status(f"building a {precision} engine (minutes on a Jetson)..."):
        meta = build_engine(model, output, precision, workspace_gb=workspace, timing_cache=timing_cache,
                            dla_core=dla_core, opt_level=opt_level, max_batch=max_batch, calib_dir=calib,
                            force=force, verbose=verbose)
    console.print(_kv_table(f"edgeseg build: {output}", [
        ("precision", meta.precision), ("TensorRT", meta.tensorrt),
        ("GPU", f"{meta.gpu} (compute {meta.compute_capability})" + (f", L4T {meta.l4t}" if meta.l4t else "")),
        ("input", "x".join(map(str, meta.input_shape))), ("metadata", f"{output}.json"),
        ("time", f"{time.perf_counter() - t0:.0f} s"),
    ]))


@app.command()
def doctor(
    model: Annotated[Path | None, typer.Argument(help="ONNX to check (default: the bundled models/segnet_dsc.onnx).")
    ] = None,
    images: Annotated[Path | None, typer.Option(help="Photos to compare masks on (default: calibration/).")] = None,
    data: Annotated[Path | None, typer.Option(
        help="Oxford-layout folder with trimaps: also score mIoU on its test split (first 37 images).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON (what to attach to a bug report).")] = False,
) -> None:
    """First run on a new device: versions, GPU, L4T, cameras, and every precision checked against the CPU."""
    from edgeseg.doctor import doctor as run_doctor

    if as_json:
        report = run_doctor(model, images, data)
        _print_json(report)
    else:
        with console.status("checking...") as status:
            report = run_doctor(model, images, data, progress=lambda name: status.update(f"checking {name}..."))
        f = report["facts"]

        def have(key: str) -> str:
            return f[key] or "not installed"

        gpu = (f"{f['gpu']} (compute {f['compute_capability']})" if f.get("gpu")
               else f.get("gpu_problem", "none (no TensorRT)"))
        cams = ", ".join(f"{c['device']} {c['frame'] or 'opens, no frame' if c['opens'] else 'does not open'}"
                         for c in f["cameras"]) or "none found (/dev/video*)"
        rows: list[tuple[str, object]] = [
            ("edgeseg", f"{f['edgeseg']} on Python {f['python']} ({f['machine']})"),
            ("CPU", f"{f['cpu']}, {f['cpu_count']} cores, native {'/'.join(f['cpu_native_precisions'])}"),
            ("ONNX Runtime", have("onnxruntime")), ("OpenVINO", have("openvino")), ("onnx", have("onnx")),
            ("TensorRT", have("tensorrt")), ("cuda-python", have("cuda_python")), ("GPU", gpu),
            ("OpenCV", f"{f['opencv']}, GStreamer {'yes' if f['gstreamer'] else 'no'}"), ("cameras", cams),
            ("cache", f"{f['cache']} ({f['cache_problem'] or 'writable'})"),
        ]
        rows += [(k, f[k]) for k in ("l4t", "power_mode", "jetson_clocks", "tegrastats") if k in f]
        console.print(_kv_table("edgeseg doctor", rows))
        scored = report["photos"]["trimaps"]
        table = Table(title=f"masks on {report['photos']['count']} photos of {report['photos']['source']} beside "
                            "ONNX Runtime FP32 (CPU)", title_justify="left")
        for col in ("check", "result", "agree %", "mIoU vs ref", *(("mIoU", "Δ mIoU") if scored else ()),
                    "ms/image", "detail"):
            table.add_column(col, justify="left" if col in ("check", "result", "detail") else "right")

        def num(v: float | None, fmt: str) -> str:
            return "" if v is None else format(v, fmt)

        for c in report["checks"]:
            style = {"PASS": "green", "FAIL": "bold red", "SKIP": "yellow"}[c["status"]]
            table.add_row(c["name"], f"[{style}]{c['status']}[/]", num(c["agreement"] and 100 * c["agreement"], ".2f"),
                          num(c["miou_vs_reference"], ".4f"),
                          *((num(c["miou"], ".4f"), num(c["miou_delta"], "+.4f")) if scored else ()),
                          num(c["ms_per_image"], ".1f"), c["detail"])
        console.print(table)
        if not report["ok"]:
            console.print("[bold red]Something failed.[/] Send back the output of [bold]edgeseg doctor --json[/] "
                          "(and of [bold]edgeseg --debug doctor[/] if a check shows an internal error) with your "
                          "bug report.")
    if not report["ok"]:
        raise typer.Exit(1)


RECIPE = TrainConfig()  # train's defaults: the recipe of the bundled model's first stage


@app.command()
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
    step_size: Annotated[int, typer.Option(help="StepLR period in epochs (0: constant lr).")] = RECIPE.step_size,
    gamma: Annotated[float, typer.Option(help="StepLR factor.")] = RECIPE.gamma,
    seed: Annotated[int, typer.Option(help="Seed of the validation hold-out, shuffling and augmentation.")
                    ] = RECIPE.seed,
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
    resume: Annotated[Path | None, typer.Option(help="Continue from a *.last.pth training state.")] = None,
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
    no_animal: Annotated[Path | None, typer.Option(help=(
        "A folder of photos without animals (the empty scene your camera will watch, say), labelled "
        "background and drawn among --negatives' share; score on other ones with eval --no-animal."))] = None,
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
    cache: Annotated[Path | None, typer.Option(help=(
        "Training-set cache (.npz, about 8 KB a photo): written from --data when missing, read when present; "
        "with no --data it trains from the cache alone (a GPU machine without the photos)."))] = None,
    precision: Annotated[str, typer.Option(help=(
        "Training compute: auto (bf16 autocast where the CPU or GPU has bf16 arithmetic, else fp32), fp32 or "
        "bf16. Weights stay FP32 and validation runs in FP32."))] = RECIPE.precision,
    force: Annotated[bool, typer.Option(help="Overwrite an existing output.")] = False,
) -> None:
    """Train SegNet-DSC (or SegNet) on Oxford-IIIT Pet; the defaults are the recipe of the bundled model's first
    stage, which --init then fine-tuned twice (models/README.md). Keeps the best epoch by validation mIoU."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from edgeseg.train import train as run_training

    h, w = parse_size(size)
    if h % 16 or w % 16:
        raise EdgesegError(f"--size {size}: height and width must be multiples of 16 (four 2x2 poolings)")
    if arch not in ("segnet-dsc", "segnet"):
        raise EdgesegError(f"--arch {arch!r}: expected segnet-dsc or segnet")
    cfg = TrainConfig(data=tuple(str(d) for d in data or ()), arch=arch, balance=balance, negatives=negatives,
                      border_weight=border_weight, lovasz=lovasz, average=average, rotate=rotate, blur=blur, gray=gray,
                      cache=str(cache) if cache else None,
                      epochs=epochs, batch=batch, precision=precision, schedule=schedule,
                      init=str(init) if init else None, no_animal=str(no_animal) if no_animal else None,
                      size=(h, w), lr=lr, step_size=step_size, gamma=gamma, seed=seed, limit=limit, device=device,
                      scale_aug=scale_aug, zoom_out=zoom_out, extra_data=str(extra_data) if extra_data else None)
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[status]}"), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task("reading the split", total=None, status="")

        def report(ev: dict) -> None:
            if ev["event"] == "loading":
                bar.update(task, description=f"loading {ev['total']} photos", completed=ev["done"], total=ev["total"])
            elif ev["event"] == "step":
                bar.update(task, description=f"epoch {ev['epoch']}/{epochs}", completed=ev["step"], total=ev["steps"],
                           status=f"loss {ev['loss']:.4f}")
            elif ev["event"] == "average":
                mark = " *best" if ev["improved"] else ""
                bar.console.print(f"mean of epochs {ev['epochs'][0]}-{ev['epochs'][1]}  val mIoU {ev['val_miou']:.4f}  "
                                  f"val acc {ev['val_pixel_accuracy']:.4f}{mark}")
            else:
                mark = " *best" if ev["improved"] else ""
                bar.console.print(
                    f"epoch {ev['epoch']:3d}  loss {ev['loss']:.4f}  val mIoU {ev['val_miou']:.4f}  "
                    f"val acc {ev['val_pixel_accuracy']:.4f}  {ev['seconds']:.0f}s {ev['precision']}{mark}")

        result = run_training(cfg, output, resume=resume, force=force, progress=report)
    b = result["best"]
    console.print(f"best epoch {_best_epoch(b)}: val mIoU {b['miou']:.4f}; checkpoint written to {result['out']}")


@app.command()
def composites(
    objects: Annotated[list[Path], typer.Argument(help=(
        "Folders of cut-out objects: PNGs with an alpha channel, none of an animal (e.g. tuxpaint-stamps-default's "
        "food/, household/, vehicles/)."))],
    output: Annotated[Path, typer.Option("-o", "--output", help="Folder to write (then train --no-animal it).")],
    count: Annotated[int, typer.Option(min=1, help="Composites to write.")] = 600,
    scenes: Annotated[Path | None, typer.Option(help=(
        "Folder of animal-free scene photos: crops of them are backgrounds, and each is also written whole."))
    ] = None,
    cache: Annotated[Path | None, typer.Option(help=(
        "A train --cache: its photos' background-only crops are backgrounds too (not the validation hold-out's "
        "of train's default --seed)."))] = None,
    skip: Annotated[str, typer.Option(help="Comma-separated words: cut-outs whose file name has one are left out.")
                    ] = "",
    size: Annotated[int, typer.Option(min=16, help="Side of the square pictures (train's input side).")] = 128,
    seed: Annotated[int, typer.Option(help="Seed of the draws: the same seed, the same pictures.")] = 1,
    force: Annotated[bool, typer.Option(help="Replace an existing output folder.")] = False,
) -> None:
    """Animal-free training pictures: cut-out objects pasted on backgrounds, so that a model learns that an
    object in the middle of the frame is not necessarily a pet (train --no-animal takes the folder)."""
    from rich.progress import Progress

    from edgeseg.composites import write_composites

    with Progress(console=console, transient=True) as bar:
        task = bar.add_task("composites", total=count)
        result = write_composites(objects, output, count, scenes=scenes, cache=cache,
                                  skip=[w for w in skip.split(",") if w], size=size, seed=seed,
                                  val_seed=RECIPE.seed, val_fraction=RECIPE.val_fraction, force=force,
                                  progress=lambda done, _: bar.update(task, completed=done))
    console.print(f"{result['composites']} composites ({result['cutouts']} cut-outs on {result['training_crops']} "
                  f"training-photo crops, {result['scenes']} scene photos and gradients) and the scene photos whole: "
                  f"{result['out']}")


# What the device-side install (pip install .) leaves out, and how to add it.
OPTIONAL_MODULES = {
    "torch": "PyTorch (export, train, checkpoints): pip install torch --index-url https://download.pytorch.org/whl/cpu",
    "onnx": "onnx (export, quantize): pip install 'edgeseg[export]', or pip install onnx on a device",
    "onnxsim": "onnxsim (export): pip install 'edgeseg[export]'",
}


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
    return f"warning: {message}\n"


def _exit_code_and_message(e: BaseException) -> tuple[int, str]:
    """1 for bad input and missing extras (a one-line fix), 3 only for a bug in edgeseg."""
    if isinstance(e, EdgesegError):
        return 1, str(e)
    if isinstance(e, ModuleNotFoundError) and (fix := OPTIONAL_MODULES.get((e.name or "").split(".")[0])):
        return 1, f"this command needs {fix}"
    return 3, f"internal error {type(e).__name__}: {e} (rerun with --debug for the traceback)"


def command():
    """The click command behind ``app``, with help that names values as people write them (MODELS...,
    PATH, INTEGER, nothing beside a flag) where typer would print Python types (``{models}``,
    ``<list[str]>``, ``<bool>``). Duck-typed: typer vendors its own copy of click."""
    root = typer.main.get_command(app)
    for sub in getattr(root, "commands", {}).values():
        sub.get_help_option = _flag_help(sub.get_help_option)
        for param in sub.params:
            if param.metavar is not None:
                continue
            if param.param_type_name == "argument":
                param.metavar = param.name.upper()
                param.display_type_rich = lambda ctx: None  # the name column already says it
            elif getattr(param, "is_flag", False):
                param.metavar = ""
            else:
                param.metavar = _value_name(param)
    return root


def _flag_help(make):
    """--help is made per context; shown like the other flags, with no value name."""
    def get_help_option(ctx):
        option = make(ctx)
        if option is not None:
            option.metavar = ""
        return option
    return get_help_option


def _value_name(param) -> str:
    """INTEGER, NUMBER, PATH or TEXT for an option: from typer's type descriptor (typer 0.29+, Python
    3.11+) or from click's param type (older typer, which Python 3.10 gets)."""
    desc = getattr(param, "type_descriptor", None)
    if desc is not None:
        if desc.is_path:
            return "PATH"
        return {int: "INTEGER", float: "NUMBER"}.get(desc.annotation, "TEXT")
    return {"integer": "INTEGER", "float": "NUMBER", "path": "PATH"}.get(param.type.name, "TEXT")


def main() -> None:
    """Entry point: user errors become one line on stderr and exit code 1, bugs exit code 3; --debug
    prints the traceback before that line and keeps the exit code."""
    debug = "--debug" in sys.argv[1:] or os.environ.get("EDGESEG_DEBUG") == "1"
    if not debug:  # OpenCV's own [ WARN ] lines (FFmpeg, V4L2) would precede edgeseg's one-line errors
        os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")
        warnings.formatwarning = _one_line_warning  # not "file.py:123: UserWarning: ..."
    try:
        command()(prog_name="edgeseg")
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except Exception as e:
        code, message = _exit_code_and_message(e)
        if debug:
            traceback.print_exc()
        print(f"error: {message}", file=sys.stderr)
        sys.exit(code)
