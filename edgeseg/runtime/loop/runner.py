"""The live loop: source -> preprocess -> inference -> postprocess -> render -> outputs, every stage timed
(the stages themselves, pipelined or one after another: edgeseg.runtime.loop.pipeline).

    report = run_loop(predictor, open_source("calibration"), Renderer(), RunOptions(output=Path("overlays")))

Ctrl-C, SIGTERM, SIGHUP and errors end the loop cleanly: the video is finalised and the report still written.
"""

from __future__ import annotations

import contextlib
import json
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from edgeseg.errors import EdgesegError
from edgeseg.files import atomic_write, check_folder, check_unclaimed, claim
from edgeseg.runtime.backends.predictor import Predictor
from edgeseg.runtime.device import environment
from edgeseg.runtime.loop.events import Events
from edgeseg.runtime.loop.latency import StageTimer
from edgeseg.runtime.loop.options import RunOptions
from edgeseg.runtime.loop.overlay import Renderer
from edgeseg.runtime.loop.pipeline import WARMUP_PASSES, Stages, pipelined, sequential
from edgeseg.runtime.loop.sinks import Sinks
from edgeseg.runtime.masks import Smoother


def _outputs(opts: RunOptions) -> list[Path]:
    return [p for p in (opts.output, opts.save_masks, opts.save_video, opts.report) if p is not None]


def check_outputs(opts: RunOptions, view: str = "overlay") -> None:
    """Refuse existing outputs (without --force), outputs another run is writing, and a video of a view it
    cannot hold, before any frame (and before the model loads)."""
    if view == "cutout" and opts.save_video is not None:
        raise EdgesegError("--view cutout has a transparent background, which videos cannot hold: write BGRA PNGs "
                           "with --output DIR, or choose --view blur or overlay for the video", opts.save_video)
    for path in _outputs(opts):
        check_unclaimed(path)
    check_folder(opts.output, opts.force)
    check_folder(opts.save_masks, opts.force)
    for f in (opts.save_video, opts.report):
        if f is not None and f.exists() and not opts.force:
            raise EdgesegError("already exists; pass --force to overwrite it", f)
    if opts.save_video is not None and opts.save_video.suffix.lower() not in (".mp4", ".avi", ".mkv"):
        raise EdgesegError("video output must end in .mp4, .avi or .mkv", opts.save_video)


# weight of the past in the temporal smoothing of videos and cameras: see benchmarks/smoothing.py
SMOOTH_DEFAULT = 0.3


class Stopped(Exception):
    """Raised in the loop by Ctrl-C (SIGINT), SIGTERM (``docker stop``, systemd) or SIGHUP."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@contextlib.contextmanager
def stop_on_signals(signums: tuple[int, ...] = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)):
    """Turn the first of ``signums`` into :class:`Stopped` until the yielded ``disarm()`` is called;
    after the first signal or ``disarm()`` they are ignored, so finalizing the video and writing the
    report cannot be cut short. The previous handlers come back afterwards. Outside the main thread,
    a no-op."""
    done: list[bool] = []

    def disarm() -> None:
        done.append(True)

    if threading.current_thread() is not threading.main_thread():
        yield disarm
        return

    def handler(signum, frame) -> None:
        if not done:
            done.append(True)
            raise Stopped(signum)

    previous = {s: signal.signal(s, handler) for s in signums}
    try:
        yield disarm
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def run_loop(predictor: Predictor, source, renderer: Renderer, opts: RunOptions,
             status: Callable[[StageTimer], None] | None = None,
             warn: Callable[[str], None] = lambda m: print(m, file=sys.stderr), server=None,
             events: Events | None = None) -> dict:
    """Process ``source`` until it ends, ``max_frames``/``duration`` is reached, Ctrl-C, SIGTERM or
    SIGHUP; return the report. In each of those cases the video is finalized and the report written.
    An error (a camera unplugged, a full disk) ends the run the same way, keeping the frames recorded
    until then, with the error in the report, and then raises. ``server`` (an
    :class:`edgeseg.runtime.loop.serve.StreamServer`) gets every rendered frame and the live figures,
    and is closed when the loop ends. ``events`` (:class:`edgeseg.runtime.loop.events.Events`) gets every
    processed frame."""
    try:
        with claim(_outputs(opts)):
            check_outputs(opts, renderer.view)
            return _run_claimed(predictor, source, renderer, opts, status, warn, server, events)
    finally:
        if server is not None:
            server.close()


def _run_claimed(predictor: Predictor, source, renderer: Renderer, opts: RunOptions,
                 status: Callable[[StageTimer], None] | None, warn: Callable[[str], None], server,
                 events: Events | None) -> dict:
    timer = StageTimer(warmup=opts.warmup)
    sinks = Sinks(opts, getattr(source, "fps", 0.0), warn, renderer.extension, server, live=source.live)
    if server is not None:
        server.set_stats(live_stats(timer, source, predictor, renderer, {}, events))
    if hasattr(source, "prepare"):
        source.prepare = predictor.preprocess
    interrupted, stopped_by, error = False, None, None
    started = time.perf_counter()
    with stop_on_signals() as disarm:
        try:
            _loop(predictor, source, renderer, opts, timer, sinks, started, status, server, events)
        except KeyboardInterrupt:  # SIGINT outside the main thread's handler (run_loop called from a thread)
            interrupted, stopped_by = True, "SIGINT"
        except Stopped as e:
            interrupted, stopped_by = True, str(e)
        except Exception as e:  # reported, then raised again below
            error = e
        finally:
            disarm()  # a signal from here on must not cut the video's finalization or the report
            try:
                sinks.close()
            except Exception as e:  # the first error is the one raised
                error = error or e
            finally:
                source.close()
        report = _report(predictor, source, renderer, opts, timer, sinks, interrupted, stopped_by, error, events)
        if opts.report is not None:
            atomic_write(opts.report, lambda tmp: tmp.write_text(json.dumps(report, indent=2)), force=opts.force)
    if error is not None:
        raise error
    return report


def _report(predictor: Predictor, source, renderer: Renderer, opts: RunOptions, timer: StageTimer, sinks: Sinks,
            interrupted: bool, stopped_by: str | None, error: BaseException | None, events: Events | None) -> dict:
    stats = source.stats
    written = (("overlays", opts.output), ("video", opts.save_video if sinks.video_kept else None),
               ("masks", opts.save_masks))
    return {
        "source": source.label, "live": source.live, "interrupted": interrupted, "stopped_by": stopped_by,
        "error": str(error) if error is not None else getattr(source, "error", None),
        "latency": {**timer.report(), "untimed_warmup_passes": WARMUP_PASSES},
        "source_stats": {"frames": stats.frames, "skipped_unreadable": stats.skipped,
                         "dropped_stale": stats.dropped, "reconnects": stats.reconnects,
                         "gap_seconds": round(stats.gap_seconds, 3),
                         "skipped_files": stats.skipped_files[:20]},
        "model": predictor.describe(),
        "masks": {"upsample": predictor.upsample, "region_confidence": predictor.region_confidence,
                  "smooth": smoothing(opts, source, predictor),
                  "view": renderer.view},
        "pipeline": bool(opts.pipeline and not sinks.show),
        "outputs": {k: str(v) for k, v in written if v is not None},
        **({"video_encoder": sinks.video_encoder} if sinks.video_encoder else {}),
        **({"events": events.summary()} if events is not None else {}),
        "environment": environment(),
    }


STATS_PERIOD = 0.5  # seconds between the live figures a --serve page shows


def live_stats(timer: StageTimer, source, predictor: Predictor, renderer: Renderer, facts: dict,
               events: Events | None = None) -> dict:
    """The figures a --serve page and /stats.json show: FPS and frames so far, each stage's p50/p90 over
    its last 100 frames, each zone's occupancy, and what is running."""
    live = timer.live()
    stats = source.stats
    zones = events.last_zones if events is not None else {}
    name = predictor.path if predictor.remote else Path(predictor.path).name
    info = {"model": name, "backend": predictor.info.name, "precision": predictor.info.label,
            "view": renderer.view, "source": source.label, "frames": live["frames"],
            "dropped (stale)": stats.dropped, "skipped (unreadable)": stats.skipped, "reconnects": stats.reconnects,
            **{f"zone {k}": f"{v:.0%} covered" for k, v in zones.items()},
            **{k: facts[k] for k in ("cpu", "l4t", "power_mode", "jetson_clocks") if k in facts}}
    return {**live, "dropped": stats.dropped, "reconnects": stats.reconnects, "zones": zones, "info": info}


def smoothing(opts: RunOptions, source, predictor: Predictor) -> float:
    """The temporal smoothing this run uses: none across a folder's unrelated photos, none for a model that
    outputs class ids (an ArgMax head: no scores to smooth)."""
    if not getattr(source, "sequence", False) or predictor.info.output == "classes":
        return 0.0
    return SMOOTH_DEFAULT if opts.smooth is None else opts.smooth


def _loop(predictor: Predictor, source, renderer: Renderer, opts: RunOptions, timer: StageTimer, sinks: Sinks,
          started: float, status: Callable[[StageTimer], None] | None, server=None, events: Events | None = None
          ) -> None:
    keep = smoothing(opts, source, predictor)
    stages = Stages(predictor, renderer, sinks, timer, Smoother(keep) if keep else None, opts.save_masks is not None,
                    source.live, events)
    facts, published, taken = environment() if server is not None else {}, 0.0, 0

    def after() -> bool:
        """Between frames, on the loop's thread: progress, the live page's figures, and whether to stop."""
        nonlocal published, taken
        taken += 1
        if status:
            status(timer)
        if server is not None and time.perf_counter() - published >= STATS_PERIOD:
            server.set_stats(live_stats(timer, source, predictor, renderer, facts, events))
            published = time.perf_counter()
        return bool(sinks.quit_requested or (opts.max_frames and taken >= opts.max_frames) or (
            opts.duration and time.perf_counter() - started >= opts.duration))

    # a window (--show) is drawn on the loop's own thread, as OpenCV's GUI needs
    (pipelined if opts.pipeline and not sinks.show else sequential)(stages, source, after)
