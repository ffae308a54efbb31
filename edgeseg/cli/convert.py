"""The model-file commands: export (checkpoint to ONNX), check, quantize (INT8) and build (TensorRT)."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Annotated

import typer

from edgeseg.cli.common import console, kv_table, parse_size, print_json, print_table, progress, refuse_ignored
from edgeseg.errors import EdgesegError

VERIFY_LIMIT = 64  # --verify-images: the photos verified unless --verify-limit says otherwise


def _load_verify_images(folder: Path, meta, size: tuple[int, int], limit: int):
    """Real photos for export verification, preprocessed exactly as the runtime will."""
    from edgeseg.runtime.images import list_images, preprocess, read_images

    paths = list_images(folder)[:limit] if limit else list_images(folder)
    if not paths:
        raise EdgesegError("no images found; pass a folder of photos to --verify-images", folder)
    decoded, _ = read_images(paths)
    return preprocess([img for _, img in decoded], meta.with_(input_size=list(size)))


def export(
    checkpoint: Annotated[Path, typer.Argument(help="SegNet / SegNet-DSC checkpoint (.pth).")],
    output: Annotated[Path | None, typer.Option("-o", "--output", help="ONNX path (default: next to it).")] = None,
    size: Annotated[str | None, typer.Option(help="Input HxW, multiples of 16 (default: the checkpoint's).")] = None,
    opset: Annotated[int, typer.Option(help="ONNX opset (13..21; TensorRT 10 takes up to 20).")] = 17,
    batch: Annotated[int | None, typer.Option(help="Static batch size (default 1).")] = None,
    dynamic_batch: Annotated[bool, typer.Option("--dynamic-batch", help="Leave the batch dimension dynamic.")] = False,
    simplify: Annotated[bool, typer.Option("--simplify/--no-simplify", help="Run onnxsim.")] = True,
    with_argmax: Annotated[str | None, typer.Option(
        "--with-argmax", help="Append an ArgMax head that outputs class ids as uint8 or int32.")] = None,
    flip_average: Annotated[bool, typer.Option(
        "--flip-average", help="Average each frame's logits with its mirror image's, in the graph (twice the "
        "compute; see the model card for what it buys).")] = False,
    verify_images: Annotated[Path | None, typer.Option(help="Also verify on these photos (a folder).")] = None,
    verify_limit: Annotated[int | None, typer.Option(help=(
        f"At most this many --verify-images (0: all; default {VERIFY_LIMIT})."))] = None,
    force: Annotated[bool, typer.Option(help="Overwrite an existing output.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Export to ONNX for TensorRT and ONNX Runtime: unpooling without MaxUnpool, verified against PyTorch."""
    from dataclasses import asdict

    from edgeseg.compile.checkpoint import load_checkpoint
    from edgeseg.compile.export import ExportOptions, validate_options
    from edgeseg.compile.export import export as run_export
    from edgeseg.files import check_writable

    refuse_ignored((verify_limit is not None and verify_images is None, "--verify-limit", "--verify-images"))
    if batch is not None and dynamic_batch:
        raise EdgesegError("--batch fixes the batch size and --dynamic-batch leaves it open: give one of them")
    opts = ExportOptions(size=parse_size(size) if size else None, opset=opset,
                         batch=None if dynamic_batch else batch or 1, simplify=simplify, with_argmax=with_argmax,
                         flip_average=flip_average)
    validate_options(opts)
    output = output or checkpoint.with_suffix(".onnx")
    check_writable(output, force)
    ckpt = load_checkpoint(checkpoint)
    size_hw = opts.size or ckpt.meta.input_size
    images = _load_verify_images(verify_images, ckpt.meta, size_hw, VERIFY_LIMIT if verify_limit is None
                                 else verify_limit) if verify_images else None
    with console.status("exporting and verifying..."):
        r = run_export(ckpt, output, opts, verify_images=images, force=force)
    if as_json:
        print_json(asdict(r))
        return
    v = r.verification
    print_table(kv_table(f"edgeseg export: {output}", [
        ("model", f"{ckpt.meta.arch} {size_hw[0]}x{size_hw[1]}, batch {opts.batch or 'dynamic'}, opset {opset}"
                  + (", logits averaged with the mirror image's" if opts.flip_average else "")),
        ("nodes", f"{r.nodes_before} -> {r.nodes_after}" + (" (onnxsim)" if r.simplified else " (not simplified)")),
        ("ops", ", ".join(f"{k} {n}" for k, n in r.op_histogram.items())),
        ("unpool", f"bit-exact: identical to MaxPool indices + MaxUnpool in ONNX Runtime ({v.unpool_flips} flips, "
                   f"max abs difference {v.unpool_max_abs_diff:g})"),
        ("vs PyTorch", f"{v.inputs} inputs ({v.real_images} real photos), {v.pixels:,} pixels: {v.agreement:.4%} "
                       f"argmax agreement ({v.synthetic_flips} near-tie flips on synthetic inputs, {v.real_flips} on "
                       f"photos); logits differ by at most {v.max_abs_error:.2e} (ONNX Runtime's convolutions sum "
                       "in another order than PyTorch's: float rounding, not the unpool)"),
        ("file", f"{r.file_bytes / 1e6:.2f} MB, written in {r.seconds:.1f} s"),
    ]))


def check(
    model: Annotated[Path, typer.Argument(help="ONNX model.")],
    target: Annotated[str, typer.Option(help="tensorrt or onnxruntime.")] = "tensorrt",
    show_all: Annotated[bool, typer.Option("--all", help="One line per node instead of one per kind of problem.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Static compatibility check: every problem with its nodes; exit 1 when there is any."""
    from collections import defaultdict

    from edgeseg.compile.check import check as run_check
    from edgeseg.compile.check import load_onnx

    problems = run_check(model, target)
    if as_json:
        print_json({"model": str(model), "target": target, "ok": not problems,
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

def quantize(
    model: Annotated[Path, typer.Argument(help="FP32 ONNX from edgeseg export.")],
    calib: Annotated[Path | None, typer.Option(help="Folder of calibration photos (recursive).")] = None,
    calib_ranges: Annotated[Path | None, typer.Option(help="Stored activation ranges instead of photos.")] = None,
    output: Annotated[Path | None, typer.Option("-o", "--output", help="INT8 ONNX (default: MODEL.int8.onnx).")] = None,
    target: Annotated[str, typer.Option(help="cpu (ONNX Runtime on x86/ARM) or tensorrt (symmetric int8).")] = "cpu",
    method: Annotated[str, typer.Option(help=(
        "Calibration: minmax, entropy, percentile, or auto: minmax for cpu, percentile for tensorrt (measured on "
        "the bundled model: models/README.md), the stored ranges' own method with --calib-ranges."))] = "auto",
    percentile: Annotated[float | None, typer.Option(help="Percentile for --method percentile (default 99.999).")
                          ] = None,
    num_images: Annotated[int | None, typer.Option(help=(
        "Random subset of the calibration photos (0: all; default 200)."))] = None,
    seed: Annotated[int | None, typer.Option(help="Seed of that subset (default 0).")] = None,
    val: Annotated[Path | None, typer.Option(
        help="Accuracy gate data: Oxford-layout folder (mIoU) or photos (agreement with FP32).")] = None,
    val_limit: Annotated[int | None, typer.Option(help="Only the first N validation images (0: all, the default).")
                         ] = None,
    max_drop: Annotated[float | None, typer.Option(help=(
        "Largest mIoU drop in points the gate accepts (--val with masks; default 1.0)."))] = None,
    min_agreement: Annotated[float | None, typer.Option(help=(
        "Smallest share of pixels whose class INT8 keeps (--val with photos only; default 0.95)."), min=0.0, max=1.0)
    ] = None,
    save_ranges: Annotated[Path | None, typer.Option(help="Also write the activation ranges here.")] = None,
    threads: Annotated[int | None, typer.Option(help="Threads for the gate's inference.")] = None,
    force: Annotated[bool, typer.Option(help="Overwrite existing outputs.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """INT8 Q/DQ for ONNX Runtime (cpu) or TensorRT, with a measured accuracy gate (--val)."""
    from dataclasses import asdict

    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn

    from edgeseg.compile.quantize import DEFAULT_METHODS, QuantizeOptions
    from edgeseg.compile.quantize import quantize as run_quantize

    given = {k: v for k, v in (("percentile", percentile), ("num_images", num_images), ("seed", seed)) if v is not None}
    gate = {k: v for k, v in (("val_limit", val_limit), ("max_drop", max_drop), ("min_agreement", min_agreement),
                              ("threads", threads)) if v is not None}
    _refuse_unused_quantize_options(given, gate, calib, calib_ranges, val,
                                    DEFAULT_METHODS.get(target, method) if method == "auto" else method)
    output = output or model.with_name(model.stem + (".int8.onnx" if target == "cpu" else f".int8-{target}.onnx"))
    opts = QuantizeOptions(target=target, method=method, **given)
    with progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), quiet=as_json) as bar:
        tasks: dict[str, int] = {}

        def stage_done(stage: str, i: int, n: int) -> None:
            if stage not in tasks:
                tasks[stage] = bar.add_task(stage, total=n)
            bar.update(tasks[stage], completed=i)

        r = run_quantize(model, output, opts, calib_dir=calib, calib_ranges=calib_ranges, val=val,
                         save_ranges=save_ranges, force=force, progress=stage_done, **gate)
    if as_json:
        print_json(asdict(r))
    else:
        c = r.calibration
        why = ("" if method != "auto" else
               ": the stored ranges' method" if calib_ranges else f": --method auto's choice for {r.target}")
        rows: list[tuple[str, object]] = [
            ("target", f"{r.target} ({r.method} calibration{why})"),
            ("calibration", f"{c['images']} images from {c['source']} ({c['skipped']} unreadable skipped, "
                            f"{c.get('masks_left_out', 0)} in mask folders and {c.get('duplicates_left_out', 0)} "
                            f"duplicates left out) in {c['seconds']:.1f} s"
             if c["images"] else f"stored ranges {c['source']}"),
        ]
        if r.gate:
            g = r.gate
            if g["drop_points"] is not None:
                change = (f"{g['drop_points']:.2f} points lost" if g["drop_points"] > 0
                          else f"{-g['drop_points']:.2f} points gained")
                rows += [("mIoU fp32 -> int8", f"{g['fp32']['miou']:.4f} -> {g['int8']['miou']:.4f} "
                                               f"({change}, gate {g['max_drop']:g})"),
                         ("pixel acc fp32 -> int8",
                          f"{g['fp32']['pixel_accuracy']:.4f} -> {g['int8']['pixel_accuracy']:.4f}")]
            rows.append(("agreement with fp32", f"{g['agreement']:.4f}" + (
                f" (gate {g['min_agreement']:g})" if g["drop_points"] is None else "")))
        else:
            rows.append(("accuracy", "not checked: add --val DIR (an Oxford-layout folder: mIoU against FP32 with a "
                                     "gate; a folder of photos: agreement with FP32)"))
        if r.float_nodes:
            rows.append(("kept in float", ", ".join(r.float_nodes)))
        rows.append(("result", f"{r.path} in {r.seconds:.1f} s" if r.passed else "gate failed: nothing written"))
        print_table(kv_table(f"edgeseg quantize: {model.name}", rows))
    if not r.passed:
        g = r.gate
        lost = (f"loses {g['drop_points']:.2f} mIoU points" if g["drop_points"] is not None else
                f"keeps the class of only {g['agreement']:.2%} of the pixels")
        limit = f"--max-drop {max_drop:g}" if g["drop_points"] is not None else f"--min-agreement {min_agreement:g}"
        raise EdgesegError(f"INT8 {lost} even with {len(r.float_nodes)} conv(s) in float (gate {limit}); nothing "
                           "was written. Try more or better calibration photos, or --method entropy", model)

def _refuse_unused_quantize_options(from_photos: dict, gate: dict, calib: Path | None, calib_ranges: Path | None,
                                    val: Path | None, method: str) -> None:
    """quantize's options that would do nothing, refused: calibration options without photos to calibrate on
    (or beside ranges already made), --percentile for another method, the gate's without --val or of the
    other kind of --val (``method``: what calibrating from photos would run)."""
    flag = {name: "--" + name.replace("_", "-") for name in (*from_photos, *gate)}
    for name in from_photos:
        if calib_ranges is not None:  # not refuse_ignored's "add --calib": both together are refused
            raise EdgesegError(f"{flag[name]} shapes calibration on --calib photos, and --calib-ranges brings ranges "
                               f"already made: leave {flag[name]} out")
    refuse_ignored(*((calib is None, flag[name], "--calib") for name in from_photos),
                   ("percentile" in from_photos and method != "percentile", "--percentile", "--method percentile"),
                   *((val is None, flag[name], "--val") for name in gate))
    if val is not None and {"max_drop", "min_agreement"} & gate.keys():
        from edgeseg.evaluation.datasets import is_oxford_layout

        masks = is_oxford_layout(val)
        if ("min_agreement" if masks else "max_drop") in gate:  # the gate of the other kind of --val
            raise EdgesegError("--min-agreement gates plain photos, and this folder has masks (gated by --max-drop): "
                               "leave --min-agreement out" if masks else "--max-drop gates mIoU on masks, and "
                               "these are plain photos (gated by --min-agreement): leave --max-drop out", val)


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
    from edgeseg.compile.engine import PRECISIONS, build_engine

    if precision not in PRECISIONS:
        raise EdgesegError(f"--precision {precision!r}: choose fp32, fp16 or int8")
    output = output or model.with_name(f"{model.stem}.{precision}.engine")
    t0 = time.perf_counter()
    with console.status(f"building a {precision} engine (minutes on a Jetson)..."):
        meta = build_engine(model, output, precision, workspace_gb=workspace, timing_cache=timing_cache,
                            dla_core=dla_core, opt_level=opt_level, max_batch=max_batch, calib_dir=calib,
                            force=force, verbose=verbose)
    print_table(kv_table(f"edgeseg build: {output}", [
        ("precision", meta.precision), ("TensorRT", meta.tensorrt),
        ("GPU", f"{meta.gpu} (compute {meta.compute_capability})" + (f", L4T {meta.l4t}" if meta.l4t else "")),
        ("input", "x".join(map(str, meta.input_shape))), ("metadata", f"{output}.json"),
        ("time", f"{time.perf_counter() - t0:.0f} s"),
    ]))

