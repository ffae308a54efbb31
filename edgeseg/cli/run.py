"""edgeseg run: the live loop from the command line, and its latency table."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from edgeseg.cli.common import (
    PRECISION_HELP,
    REGION_HELP,
    UPSAMPLE_HELP,
    console,
    print_json,
    print_table,
    progress,
    refuse_ignored,
    set_mask_options,
)
from edgeseg.errors import EdgesegError
from edgeseg.runtime.images import MAX_PIXELS
from edgeseg.runtime.loop.latency import MIN_COUNT


def latency_table(report: dict, title: str) -> Table:
    """Per-stage p50/p90/p99/max table from a run report; a percentile the report leaves out (too few
    frames for it: edgeseg.runtime.loop.latency.MIN_COUNT) is blank here too."""
    lat = report["latency"]
    table = Table(title=title, title_justify="left")
    for col in ("stage", "p50 ms", "p90 ms", "p99 ms", "max ms", "mean ms"):
        table.add_column(col, justify="left" if col == "stage" else "right")
    rows = [*lat["stages_ms"].items(), ("end to end", lat["end_to_end_ms"])]
    notes = []
    for name, st in rows:
        if st.get("count"):
            cells = ["" if st[k] is None else f"{st[k]:.2f}" for k in ("p50", "p90", "p99")]
            table.add_row(name, *cells, f"{st['max']:.2f}", f"{st['mean']:.2f}")
    frames = lat["end_to_end_ms"].get("count", 0)
    if frames < MIN_COUNT[99]:
        notes.append(f"p90/p99 need {MIN_COUNT[90]}/{MIN_COUNT[99]} frames (measured {frames})")
    if any("(reader thread)" in name for name, _ in rows):
        notes.append("the reader thread's row overlaps inference: not part of end to end")
    table.caption = "; ".join(notes) or None
    return table


def run(
    model: Annotated[str, typer.Argument(help=(
        "ONNX model (or a checkpoint, run with PyTorch as a reference), an engine, or a model served by Triton: "
        "triton://HOST:PORT/NAME (gRPC) or triton+http://HOST:PORT/NAME."))],
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
    region_confidence: Annotated[float, typer.Option(min=0.0, max=1.0, help=REGION_HELP)] = 0.0,
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
    warmup: Annotated[int, typer.Option(min=0, help=(
        "Frames left out of the latency statistics (0: every frame measured; the model is warmed up on the first "
        "frame, untimed, either way). For long camera runs whose first frames carry the camera's start-up."))] = 0,
    report: Annotated[Path | None, typer.Option(help="Write the latency report (JSON) here.")] = None,
    reconnect: Annotated[float | None, typer.Option(help=(
        "Seconds after a live source's last frame to keep reopening it when it drops or stalls (inf: for ever), "
        "and to keep retrying a triton:// model's server (default: 10 for a source, 3 for a server)."))
    ] = None,
    max_pixels: Annotated[float, typer.Option(min=0.001, help=(
        "Megapixels a photo or video frame may have; larger ones are refused from their header, unread (a folder "
        "skips and counts them). Default 50, or EDGESEG_MAX_PIXELS."))] = MAX_PIXELS / 1e6,
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
    serve_quality: Annotated[int | None, typer.Option(help="JPEG quality of the stream (10..100; default 80).")
                             ] = None,
    serve_width: Annotated[int | None, typer.Option(min=16, help=(
        "Streamed frames are scaled down to this width (default 640)."))] = None,
    serve_fps: Annotated[float | None, typer.Option(help="Most frames per second encoded for viewers (default 15).")
                         ] = None,
    events: Annotated[str | None, typer.Option(help=(
        "Write one JSON line per frame to this file (- for stdout): pet in view, share of the frame, bounding "
        "box and centroid in frame pixels, zones, latency."))] = None,
    events_on: Annotated[str, typer.Option(help=(
        "every (each frame) or change (only when a pet appears or leaves, or a zone fills or empties)."))
    ] = "every",
    min_frames: Annotated[int | None, typer.Option(min=1, help=(
        "Frames in a row a change must last before --events-on change reports it (debouncing; default 3)."))
    ] = None,
    zone: Annotated[list[str] | None, typer.Option(help=(
        "NAME:x1,y1,x2,y2,... a polygon in 0..1 frame coordinates; repeat it for several. Events and the live "
        "page give the share of each zone a pet covers."))] = None,
    mqtt: Annotated[str | None, typer.Option(help=(
        "mqtt://[USER:PASSWORD@]HOST[:PORT]/TOPIC: publish the events (TOPIC/events) and the retained state "
        "(TOPIC/state, TOPIC/zone/NAME); needs pip install 'edgeseg[mqtt]'."))] = None,
    pipeline: Annotated[bool, typer.Option("--pipeline/--no-pipeline", help=(
        "Infer the next frame while this one is rendered and written (on two threads, in order, none dropped "
        "from files); --no-pipeline runs every stage one after another (for comparison and debugging)."))
    ] = True,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Segment pets live from a camera, stream, video or folder; per-stage latency report."""
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn

    from edgeseg.loader import load_predictor
    from edgeseg.runtime.loop.overlay import Renderer, parse_color
    from edgeseg.runtime.loop.runner import RunOptions, check_outputs, run_loop
    from edgeseg.runtime.loop.sources import open_source

    # with --events -, stdout carries the events alone: messages and the table go to stderr
    out = Console(stderr=True, highlight=False, width=console.width) if events == "-" else console
    say = out.print
    if (camera is None) == (source is None):
        raise EdgesegError("give exactly one of --camera N or --source X")
    try:
        renderer = Renderer(view=view, alpha=alpha, pet_color=parse_color(pet_color), border=border)
    except ValueError as e:
        raise EdgesegError(str(e)) from None
    opts = RunOptions(output=output, save_video=save_video, save_masks=save_masks, report=report, show=show,
                      max_frames=max_frames, duration=duration, warmup=warmup, force=force, smooth=smooth,
                      pipeline=pipeline)
    check_outputs(opts, renderer.view)
    stream_options = (("--serve-token", "token", serve_token), ("--serve-quality", "quality", serve_quality),
                      ("--serve-width", "max_width", serve_width), ("--serve-fps", "fps", serve_fps))
    refuse_ignored(*((value is not None and serve is None, option, "--serve") for option, _, value in stream_options))
    stream = {kwarg: value for _, kwarg, value in stream_options if value is not None}
    predictor = load_predictor(model, backend=backend, threads=threads, precision=precision,
                               retry_seconds=3.0 if reconnect is None else reconnect)
    set_mask_options(predictor, upsample, region_confidence)
    src = open_source(camera if camera is not None else source, recursive=recursive,
                      reconnect=10.0 if reconnect is None else reconnect,
                      width=width, height=height, fps=fps, flip=flip, loop=loop, max_pixels=round(max_pixels * 1e6))
    watcher = _events(src.label, events, events_on, min_frames, zone or [], mqtt, force)
    server = None
    if serve is not None:  # the server module is imported only when it is used
        from edgeseg.runtime.loop.serve import LOOPBACK, StreamServer, parse_address

        host, port = parse_address(serve)
        server = StreamServer(host, port, **stream, title=f"edgeseg: {Path(model).name} on {src.label}")
        if host not in LOOPBACK and serve_token is None:
            say(f"[yellow]warning:[/] serving on {host}:{server.port} without authentication: anyone who "
                          "can reach this port sees the camera; add --serve-token")
        say(f"serving on {server.url} (Ctrl-C stops it)")
    total = len(src.paths) if hasattr(src, "paths") else None
    if loop:
        total = max_frames or None
    elif max_frames and total:
        total = min(total, max_frames)
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[fps]:.1f} FPS, inference p50 {task.fields[p50]:.1f} ms"))
    with progress(*columns, quiet=as_json or events == "-") as bar, _closing(watcher):
        task = bar.add_task(src.label if len(src.label) < 40 else "..." + src.label[-37:], total=total,
                            fps=0.0, p50=float("nan"))
        last = [0.0]

        def status(timer) -> None:
            now = time.monotonic()
            if now - last[0] > 0.25:
                last[0] = now
                bar.update(task, completed=timer.frames, fps=timer.fps(), p50=timer.live_p50())

        result = run_loop(predictor, src, renderer, opts, status=status,
                          warn=lambda m: say(f"[yellow]warning:[/] {m}"), server=server, events=watcher)
    if as_json:
        print_json(result)
    else:
        lat, st = result["latency"], result["source_stats"]
        info = result["model"]
        print_table(latency_table(result, f"edgeseg run: {Path(info['model']).name} on {src.label} "
                                  f"({info['backend']} {info['precision']}, {info['threads']} threads)"), out)
        left_out = f" (+{lat['warmup_frames']} left out as warm-up)" if lat["warmup_frames"] else ""
        say(f"{lat['measured_frames']} frames measured{left_out}: "
                      f"{lat['fps']:.1f} FPS end to end; skipped {st['skipped_unreadable']} unreadable, "
                      f"dropped {st['dropped_stale']} stale, {st['reconnects']} reconnects "
                      f"({st['gap_seconds']:.1f} s without frames)")
        for kind, where in result["outputs"].items():
            say(f"{kind}: {where}")
        if report:
            say(f"report: {report}")
    if result.get("error"):
        raise EdgesegError(result["error"])
    if result["interrupted"]:  # outputs and report are complete; the code says what stopped the loop
        raise typer.Exit(128 + {"SIGINT": 2, "SIGHUP": 1, "SIGTERM": 15}[result["stopped_by"]])



def _events(label: str, where: str | None, on: str, min_frames: int | None, zones: list[str], mqtt: str | None,
            force: bool):
    """The run's Events, with its outputs (a JSON Lines file or stdout, an MQTT broker); None without them."""
    if where is None and mqtt is None:
        if zones or on != "every" or min_frames is not None:
            raise EdgesegError("--zone, --events-on and --min-frames describe events: add --events FILE (or -) or "
                               "--mqtt URL")
        return None
    refuse_ignored((min_frames is not None and on != "change", "--min-frames", "--events-on change"))
    from edgeseg.runtime.loop.events import Events, JsonLines, Zone

    events = Events(label, [Zone.parse(z) for z in zones], on,  # checks before anything opens
                    Events.min_frames if min_frames is None else min_frames)
    if where is not None:
        events.outputs.append(JsonLines(where, force))
    if mqtt is not None:
        from edgeseg.runtime.loop.mqtt import Publisher

        events.outputs.append(Publisher(mqtt))
    return events


@contextlib.contextmanager
def _closing(events):
    try:
        yield
    finally:
        for output in events.outputs if events is not None else ():
            output.close()
