"""What users measure on a device: bench (latency) and doctor (a new device); eval is in ``evaluation``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from edgeseg.cli.common import (
    PRECISION_HELP,
    console,
    kv_table,
    model_name,
    print_json,
    print_table,
    progress,
    refuse_ignored,
)
from edgeseg.errors import EdgesegError


def bench(
    models: Annotated[list[str], typer.Argument(
        help="Checkpoints (PyTorch reference), FP32/INT8 ONNX, engines, triton://HOST:PORT/NAME (a served model); "
             "MODEL@BACKEND or MODEL@BACKEND:PRECISION sets them per model (m.onnx@openvino:bf16).")],
    backend: Annotated[str, typer.Option(help="Default backend: auto (from each file), onnxruntime, openvino, "
                                              "tensorrt or torch.")] = "auto",
    precision: Annotated[str, typer.Option(help="Default precision. " + PRECISION_HELP)] = "auto",
    threads: Annotated[int | None, typer.Option(help="Inference threads (default: physical cores).")] = None,
    runs: Annotated[int, typer.Option(help="Timed runs per model.")] = 100,
    warmup: Annotated[int, typer.Option(help="Untimed runs per model first.")] = 10,
    batch: Annotated[int, typer.Option(help="Images per inference.")] = 1,
    data: Annotated[Path | None, typer.Option(help="Oxford-layout folder: add mIoU and agreement.")] = None,
    data_limit: Annotated[int | None, typer.Option(help=(
        "Only the first N test images of --data for accuracy (0: all, the default)."))] = None,
    end_to_end: Annotated[bool, typer.Option(help="Time preprocess + inference + postprocess on photos.")] = False,
    images: Annotated[Path | None, typer.Option(help="Photos for --end-to-end (default: DATA/images).")] = None,
    peak: Annotated[bool, typer.Option("--peak/--no-peak", help="Measure the machine's matmul peak.")] = True,
    concurrency: Annotated[str | None, typer.Option(help=(
        "Load levels for triton:// models, e.g. 1,2,4,8: that many clients send requests at once (as "
        "perf_analyzer); throughput and latency per level, beside the local models measured one at a time."))
    ] = None,
    json_file: Annotated[Path | None, typer.Option("--json", help="Also write the results as JSON here.")] = None,
    force: Annotated[bool, typer.Option(help="Overwrite an existing --json file.")] = False,
) -> None:
    """Latency table across models, backends and precisions, interleaved, with the machine's own limit."""
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn

    from edgeseg.bench import bench as run_bench
    from edgeseg.files import atomic_write, check_writable

    refuse_ignored((data_limit is not None and data is None, "--data-limit", "--data"),
                   (images is not None and not end_to_end, "--images", "--end-to-end"))
    if json_file is not None:
        check_writable(json_file, force)
    if concurrency is not None:
        local_only = next((o for o, given in (("--data", data is not None), ("--end-to-end", end_to_end),
                                              ("--batch", batch != 1), ("--no-peak", not peak)) if given), None)
        if local_only:  # the load mode sends batch-1 requests at each level; it has no accuracy pass or peak
            raise EdgesegError(f"{local_only} applies to the latency table, not to --concurrency's load levels: "
                               f"leave {local_only} out, or bench without --concurrency")
        _bench_concurrency(models, concurrency, runs, warmup, backend, precision, threads, json_file, force)
        return
    with progress(TextColumn("timing {task.total} interleaved runs"), BarColumn(), MofNCompleteColumn()) as bar:
        task = bar.add_task("bench", total=runs)
        r = run_bench(models, backend=backend, precision=precision, threads=threads, runs=runs, warmup=warmup,
                      batch=batch, data=data, data_limit=data_limit or 0, end_to_end=end_to_end, images=images,
                      peak=peak, progress=lambda i, n: bar.update(task, completed=i))
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
        row = [model_name(m["model"]), *([size] if mixed else []), m["backend"], m["precision"], str(m["threads"]),
               "" if m["file_mb"] is None else f"{m['file_mb']:.1f}",
               *("" if lat[k] is None else f"{lat[k]:.2f}" for k in ("p50", "p90", "p99")), f"{m['fps']:.1f}",
               f"{m['ratio_to_first']:.2f}", f"{m['gmacs']:.1f}"]
        if "% of peak" in cols:
            row.append(f"{100 * m['share_of_own_peak']:.0f}% {m['peak_kind']}" if "peak_kind" in m else
                       f"n/a ({m['peak_kind_missing']})" if "peak_kind_missing" in m else "")
        if data is not None:
            row += [f"{m['miou']:.4f}", f"{m['agreement_with_first']:.4f}"]
        table.add_row(*row)
    print_table(table)
    if "machine_peak" in r:
        console.print("machine peak (ONNX Runtime 1024^3 matmul): " + ", ".join(
            f"{k.replace('_gmacs', '')} {v:.1f} GMAC/s" for k, v in r["machine_peak"].items()))
    if "machine_peak_skipped" in r:
        console.print(f"machine peak: skipped ({r['machine_peak_skipped']})")
    if json_file is not None:
        atomic_write(json_file, lambda p: p.write_text(json.dumps(r, indent=2)), force=force)
        console.print(f"results: {json_file}")

def _bench_concurrency(models: list[str], levels_text: str, runs: int, warmup: int, backend: str, precision: str,
                       threads: int | None, json_file: Path | None, force: bool) -> None:
    """bench --concurrency: each triton:// model at each level, the local ones at 1 (in process)."""
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn

    from edgeseg.bench import concurrency, split_spec
    from edgeseg.files import atomic_write
    from edgeseg.runtime.backends.triton import is_triton_url

    try:
        levels = [int(v) for v in levels_text.split(",") if v.strip()]
    except ValueError:
        raise EdgesegError(f"--concurrency {levels_text!r}: write levels as 1,2,4,8") from None
    remote = [m for m in models if is_triton_url(m)]
    local = [m for m in models if not is_triton_url(m)]
    if not remote:
        raise EdgesegError("--concurrency measures served models: give a triton://HOST:PORT/NAME")
    from edgeseg.loader import load_predictor
    from edgeseg.runtime.device import environment

    here = []
    for m in local:
        path, b, p = split_spec(m, backend, precision)
        here.append(load_predictor(path, backend=b, precision=p, threads=threads))
    rows: list[dict] = []
    with progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn()) as bar:
        for url in remote:
            task = bar.add_task(f"{url} at {levels_text}", total=len(levels))
            got = concurrency(url, levels, runs, warmup, local=here if url == remote[0] else (),
                              progress=lambda i, n, t=task: bar.update(t, completed=min(i, n)))
            rows += [{"where": "served", **row} for row in got]
    env = environment()
    result = {"mode": "concurrency", "runs_per_level": runs, "rows": rows, "environment": env}
    table = Table(title=f"edgeseg bench --concurrency ({runs} requests per level, batch 1) on {env['cpu']}",
                  title_justify="left")
    for col in ("model", "where", "concurrency", "throughput FPS", "p50 ms", "p99 ms", "errors"):
        table.add_column(col, justify="left" if col in ("model", "where") else "right")
    for row in rows:
        lat = row["latency_ms"]
        table.add_row(model_name(row["model"]), row["where"], str(row["concurrency"]), f"{row['throughput_fps']:.1f}",
                      *("" if lat.get(k) is None else f"{lat[k]:.2f}" for k in ("p50", "p99")), str(row["errors"]))
    print_table(table)
    if json_file is not None:
        atomic_write(json_file, lambda p: p.write_text(json.dumps(result, indent=2)), force=force)
        console.print(f"results: {json_file}")


def doctor(
    model: Annotated[str | None, typer.Argument(help=(
        "ONNX to check (default: the bundled models/segnet_dsc.onnx), or triton://HOST:PORT/NAME: a served model "
        "checked against --reference run here."))] = None,
    reference: Annotated[Path | None, typer.Option(help=(
        "With a triton:// model: the ONNX it serves, run here as the reference (default: the bundled model)."))
    ] = None,
    images: Annotated[Path | None, typer.Option(help="Photos to compare masks on (default: calibration/).")] = None,
    data: Annotated[Path | None, typer.Option(
        help="Oxford-layout folder with trimaps: also score mIoU on its test split (first 37 images).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON (what to attach to a bug report).")] = False,
) -> None:
    """First run on a new device: versions, GPU, L4T, cameras, and every precision checked against the CPU."""
    from edgeseg.doctor import doctor as run_doctor

    if as_json:
        report = run_doctor(model, images, data, reference=reference)
        print_json(report)
    else:
        with console.status("checking...") as status:
            report = run_doctor(model, images, data, progress=lambda name: status.update(f"checking {name}..."),
                                reference=reference)
        f = report["facts"]

        def have(key: str) -> str:
            return f[key] or "not installed"

        gpu = (f"{f['gpu']} (compute {f['compute_capability']})" if f.get("gpu")
               else f.get("gpu_problem", "none (no TensorRT)"))
        cams = ", ".join(f"{c['device']} {c['frame'] or 'opens, no frame' if c['opens'] else 'does not open'}"
                         for c in f["cameras"]) or "none found (/dev/video*)"
        rows: list[tuple[str, object]] = [
            ("edgeseg", f"{f['edgeseg']} on Python {f['python']} ({f['machine']})"),
            ("CPU", f"{f['cpu']}, {f['cpu_count']} cores, native {'/'.join(f['cpu_native_precisions'])}"
                    + (", no VNNI: INT8 needs 7-bit weights (docs/int8.md)"
                       if f["cpu_int8_pairs_saturate"] else "")),
            ("ONNX Runtime", have("onnxruntime")), ("OpenVINO", have("openvino")), ("onnx", have("onnx")),
            ("TensorRT", have("tensorrt")), ("cuda-python", have("cuda_python")), ("GPU", gpu),
            ("OpenCV", f"{f['opencv']}, GStreamer {'yes' if f['gstreamer'] else 'no'}"), ("cameras", cams),
            ("cache", f"{f['cache']} ({f['cache_problem'] or 'writable'})"),
        ]
        rows += [(k, f[k]) for k in ("l4t", "power_mode", "jetson_clocks", "tegrastats") if k in f]
        print_table(kv_table("edgeseg doctor", rows))
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
        print_table(table)
        if not report["ok"]:
            console.print("[bold red]Something failed.[/] Send back the output of [bold]edgeseg doctor --json[/] "
                          "(and of [bold]edgeseg --debug doctor[/] if a check shows an internal error) with your "
                          "bug report.")
    if not report["ok"]:
        raise typer.Exit(1)

