"""The live loop: source -> preprocess -> inference -> postprocess -> render -> outputs, every stage timed.

    for frame in source:                              # (each stage timed in _loop)
        masks = predictor.masks(predictor.scores(predictor.preprocess(frame.image))[0], frame.image.shape)
        sinks.write(frame.name, renderer.render(frame.image, masks), masks.ids)

Ctrl-C ends the loop cleanly: the video is finalised and the report still written.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from edgeseg.errors import EdgesegError
from edgeseg.files import atomic_write, check_folder, check_unclaimed, claim, write_problem
from edgeseg.runtime.backends.predictor import Predictor
from edgeseg.runtime.device import environment
from edgeseg.runtime.loop.latency import StageTimer
from edgeseg.runtime.loop.overlay import Renderer
from edgeseg.runtime.masks import Smoother


@dataclass
class RunOptions:
    output: Path | None = None  # an overlay image per frame, same base name
    save_video: Path | None = None
    save_masks: Path | None = None  # class-id PNGs
    report: Path | None = None
    show: bool = False
    max_frames: int = 0
    duration: float = 0.0
    warmup: int = 0  # frames left out of the statistics (after the untimed warm-up passes; see warm_up)
    force: bool = False
    video_fps: float = 0.0  # 0: the source's rate, else 15
    # weight of the past in the temporal smoothing of videos and cameras (edgeseg.runtime.masks.Smoother);
    # None: SMOOTH_DEFAULT for them, never across the unrelated photos of a folder
    smooth: float | None = None


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


def display_available() -> bool:
    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        return False
    try:
        cv2.namedWindow("edgeseg", cv2.WINDOW_NORMAL)
        return True
    except cv2.error:  # headless OpenCV build
        return False


class Sinks:
    """Everything a processed frame is written to. The video goes to a temp file renamed on close."""

    def __init__(self, opts: RunOptions, source_fps: float, warn: Callable[[str], None],
                 extension: str = ".jpg", server=None) -> None:
        self.opts = opts
        self.extension = extension
        self.server = server
        self.source_fps = source_fps
        self.warn = warn
        self.video: cv2.VideoWriter | None = None
        self.video_tmp: Path | None = None
        self.video_size: tuple[int, int] | None = None
        self.video_frames = 0
        self.show = opts.show and display_available()
        if opts.show and not self.show:
            warn("no display available (no DISPLAY, or a headless OpenCV build): continuing without --show")
        folders = [f for f in (opts.output, opts.save_masks) if f is not None]
        folders += [f.parent for f in (opts.save_video, opts.report) if f is not None]
        for folder in folders:  # found now, not after the last frame
            if (why := write_problem(folder)) is not None:
                raise EdgesegError(f"cannot write here ({why}); choose another output folder", folder)
        self.quit_requested = False
        self.needs_render = (self.show or opts.output is not None or opts.save_video is not None
                             or server is not None)

    def write(self, name: str, vis: np.ndarray | None, mask: np.ndarray | None) -> None:
        if self.opts.output is not None:
            _imwrite(self.opts.output / f"{name}{self.extension}", vis)
        if self.opts.save_masks is not None:
            _imwrite(self.opts.save_masks / f"{name}.png", mask)
        if self.opts.save_video is not None:
            self._video_frame(vis)
        if self.server is not None:
            self.server.publish(vis)
        if self.show:
            cv2.imshow("edgeseg", vis)
            if cv2.waitKey(1) & 0xFF in (ord("q"), 27):
                self.quit_requested = True

    def _video_frame(self, vis: np.ndarray) -> None:
        if self.video is None:
            path = self.opts.save_video
            self.video_tmp = path.with_name(f".{path.stem}.{os.getpid()}.partial{path.suffix}")
            fourcc = cv2.VideoWriter_fourcc(*("mp4v" if path.suffix.lower() == ".mp4" else "MJPG"))
            fps = self.opts.video_fps or self.source_fps or 15.0
            # encoders need even sides of some size: a first frame of 1 x 300 pixels made OpenCV's
            # MJPG writer abort the process and its mp4 writer write nothing
            self.video_size = tuple(max(16, n + n % 2) for n in (vis.shape[1], vis.shape[0]))
            self.video = cv2.VideoWriter(str(self.video_tmp), fourcc, fps, self.video_size)
            if not self.video.isOpened():
                raise EdgesegError("OpenCV cannot write this video format here; try .avi", path)
        if (vis.shape[1], vis.shape[0]) != self.video_size:  # folders of mixed sizes: fit to the first frame
            vis = cv2.resize(vis, self.video_size, interpolation=cv2.INTER_AREA)
        self.video.write(vis)
        self.video_frames += 1
        # OpenCV's writer reports no errors (FFmpeg only logs them): a full disk is seen by its free space
        if self.video_frames % DISK_CHECK_FRAMES == 0 and _disk_full(self.video_tmp.parent):
            self.video.release()
            self.video = None
            self.video_tmp.unlink(missing_ok=True)
            raise EdgesegError("the disk filled up while writing the video; nothing was kept: free space or "
                               "write it elsewhere", self.opts.save_video)

    def close(self) -> None:
        if self.video is not None:
            self.video.release()
            if not self.video_tmp.exists() or self.video_tmp.stat().st_size == 0 or _disk_full(self.video_tmp.parent):
                self.video_tmp.unlink(missing_ok=True)
                raise EdgesegError("OpenCV's video writer could not write the whole video (disk full, or a codec "
                                   "that refuses this frame size); nothing was kept: free space or try .avi",
                                   self.opts.save_video)
            os.replace(self.video_tmp, self.opts.save_video)
        if self.show:
            cv2.destroyAllWindows()


DISK_CHECK_FRAMES = 30
# weight of the past in the temporal smoothing of videos and cameras: see benchmarks/smoothing.py
SMOOTH_DEFAULT = 0.3


def _disk_full(folder: Path) -> bool:
    try:
        return os.statvfs(folder).f_bavail == 0
    except OSError:
        return False


def _imwrite(path: Path, image: np.ndarray) -> None:
    if not cv2.imwrite(str(path), image):
        raise EdgesegError("could not write this file (disk full or not writable?)", path)


class Stopped(Exception):
    """Raised in the loop by SIGTERM (``docker stop``, systemd) or SIGHUP: stop as after Ctrl-C."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@contextlib.contextmanager
def stop_on_signals(signums: tuple[int, ...] = (signal.SIGTERM, signal.SIGHUP)):
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
             warn: Callable[[str], None] = lambda m: print(m, file=sys.stderr), server=None) -> dict:
    """Process ``source`` until it ends, ``max_frames``/``duration`` is reached, Ctrl-C, SIGTERM or
    SIGHUP; return the report. In each of those cases the video is finalized and the report written;
    an error (a full disk, a bad frame source) raises instead and keeps no partial video. ``server``
    (an :class:`edgeseg.runtime.loop.serve.StreamServer`) gets every rendered frame and the live figures,
    and is closed when the loop ends."""
    try:
        with claim(_outputs(opts)):
            check_outputs(opts, renderer.view)
            return _run_claimed(predictor, source, renderer, opts, status, warn, server)
    finally:
        if server is not None:
            server.close()


def _run_claimed(predictor: Predictor, source, renderer: Renderer, opts: RunOptions,
                 status: Callable[[StageTimer], None] | None, warn: Callable[[str], None], server) -> dict:
    timer = StageTimer(warmup=opts.warmup)
    sinks = Sinks(opts, getattr(source, "fps", 0.0), warn, renderer.extension, server)
    if server is not None:
        server.set_stats(live_stats(timer, source, predictor, renderer, {}))
    if hasattr(source, "prepare"):
        source.prepare = predictor.preprocess
    interrupted, stopped_by = False, None
    started = time.perf_counter()
    with stop_on_signals() as disarm:
        try:
            _loop(predictor, source, renderer, opts, timer, sinks, started, status, server)
        except KeyboardInterrupt:
            interrupted, stopped_by = True, "SIGINT"
        except Stopped as e:
            interrupted, stopped_by = True, str(e)
        finally:
            disarm()  # a signal from here on must not cut the video's finalization or the report
            sinks.close()
            source.close()
        stats = source.stats
        report = {
            "source": source.label, "live": source.live, "interrupted": interrupted, "stopped_by": stopped_by,
            "error": getattr(source, "error", None),
            "latency": {**timer.report(), "untimed_warmup_passes": WARMUP_PASSES},
            "source_stats": {"frames": stats.frames, "skipped_unreadable": stats.skipped,
                             "dropped_stale": stats.dropped, "reconnects": stats.reconnects,
                             "gap_seconds": round(stats.gap_seconds, 3),
                             "skipped_files": stats.skipped_files[:20]},
            "model": predictor.describe(),
            "masks": {"upsample": predictor.upsample, "smooth": smoothing(opts, source), "view": renderer.view},
            "outputs": {k: str(v) for k, v in (("overlays", opts.output), ("video", opts.save_video),
                                                ("masks", opts.save_masks)) if v is not None},
            "environment": environment(),
        }
        if opts.report is not None:
            atomic_write(opts.report, lambda tmp: tmp.write_text(json.dumps(report, indent=2)), force=opts.force)
    return report


STATS_PERIOD = 0.5  # seconds between the live figures a --serve page shows


def live_stats(timer: StageTimer, source, predictor: Predictor, renderer: Renderer, facts: dict) -> dict:
    """The figures a --serve page and /stats.json show: the run report's numbers so far."""
    lat = timer.report()
    stats = source.stats
    info = {"model": Path(predictor.path).name, "backend": predictor.info.name, "precision": predictor.info.label,
            "view": renderer.view, "source": source.label, "frames": lat["frames"],
            "dropped (stale)": stats.dropped, "skipped (unreadable)": stats.skipped, "reconnects": stats.reconnects,
            **{k: facts[k] for k in ("cpu", "l4t", "power_mode", "jetson_clocks") if k in facts}}
    return {"fps": lat["fps"], "frames": lat["frames"], "dropped": stats.dropped, "reconnects": stats.reconnects,
            "stages_ms": {k: {"p50": v.get("p50", 0.0), "p90": v.get("p90", 0.0)}
                          for k, v in (*lat["stages_ms"].items(), ("end to end", lat["end_to_end_ms"]))},
            "info": info}


def smoothing(opts: RunOptions, source) -> float:
    """The temporal smoothing this run uses: none across a folder's unrelated photos."""
    if not getattr(source, "sequence", False):
        return 0.0
    return SMOOTH_DEFAULT if opts.smooth is None else opts.smooth


WARMUP_PASSES = 2  # untimed passes over the first frame: lazy initialisation and first allocations are in the first


def warm_up(predictor: Predictor, renderer: Renderer | None, image: np.ndarray) -> None:
    """Run ``image`` through preprocess, inference, postprocess (and render) WARMUP_PASSES times, untimed and
    with no state kept (no smoothing, nothing written), so that the first input frame is measured like the
    others instead of being left out: a folder of 8 photos reports 8 frames."""
    for _ in range(WARMUP_PASSES):
        masks = predictor.masks(predictor.scores(predictor.preprocess(image))[0], image.shape)
        if renderer is not None:
            renderer.render(image, masks)


def _loop(predictor: Predictor, source, renderer: Renderer, opts: RunOptions, timer: StageTimer, sinks: Sinks,
          started: float, status: Callable[[StageTimer], None] | None, server=None) -> None:
    keep = smoothing(opts, source)
    smoother = Smoother(keep) if keep else None
    facts, published = environment() if server is not None else {}, 0.0
    for frame in source:
        if not timer.frames:  # before the first frame's timing starts (its capture wait is its own)
            warm_up(predictor, renderer if sinks.needs_render else None, frame.image)
        timer.add("capture", frame.wait_ms)
        if frame.tensor is not None:  # prepared on the reader thread, overlapping the last inference
            timer.add("preprocess (reader thread)", frame.prepare_ms, overlapped=True)
            x = frame.tensor
        else:
            with timer.stage("preprocess"):
                x = predictor.preprocess(frame.image)
        with timer.stage("inference"):
            scores = predictor.scores(x)[0]
        with timer.stage("postprocess"):  # upsampled only as far as the outputs need
            masks = predictor.masks(scores, frame.image.shape, smoother)
            ids = masks.ids if opts.save_masks is not None else None
        if sinks.needs_render:  # nobody sees an overlay when only masks or a report are wanted
            with timer.stage("render"):
                vis = renderer.render(frame.image, masks)
        with timer.stage("write"):
            sinks.write(frame.name, vis if sinks.needs_render else None, ids)
        timer.end_frame()
        if status:
            status(timer)
        if server is not None and time.perf_counter() - published >= STATS_PERIOD:
            server.set_stats(live_stats(timer, source, predictor, renderer, facts))
            published = time.perf_counter()
        if sinks.quit_requested or (opts.max_frames and timer.frames >= opts.max_frames) or (
                opts.duration and time.perf_counter() - started >= opts.duration):
            break
