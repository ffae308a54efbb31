"""Where the loop's frames go: overlays and masks (one file each), the video (a temporary file renamed on
close), the browser view and the window."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

from edgeseg.errors import EdgesegError
from edgeseg.files import write_problem
from edgeseg.runtime.loop.options import RunOptions
from edgeseg.runtime.loop.video import open_video


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
                 extension: str = ".jpg", server=None, live: bool = False) -> None:
        self.opts = opts
        # A live source drops stale frames: its video is written at a constant rate (the camera's), each
        # frame held until the next one was captured, so that it plays at the speed it was recorded.
        self.live = live
        self._video_start: float | None = None
        self._last_vis: np.ndarray | None = None
        self.extension = extension
        self.server = server
        self.source_fps = source_fps
        self.warn = warn
        self.video: cv2.VideoWriter | None = None
        self.video_tmp: Path | None = None
        self.video_size: tuple[int, int] | None = None
        self.video_frames = 0
        self.video_kept = False  # renamed into place by close()
        self.video_encoder: str | None = None
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

    def write(self, name: str, vis: np.ndarray | None, mask: np.ndarray | None, captured: float = 0.0) -> None:
        """One processed frame; ``captured`` is when the source captured it (perf_counter seconds)."""
        if self.opts.output is not None:
            _imwrite(self.opts.output / f"{name}{self.extension}", vis)
        if self.opts.save_masks is not None:
            _imwrite(self.opts.save_masks / f"{name}.png", mask)
        if self.opts.save_video is not None:
            if self.live:
                self._hold_until(captured)
            self._video_frame(vis)
            self._last_vis = vis
        if self.server is not None:
            self.server.publish(vis)
        if self.show:
            cv2.imshow("edgeseg", vis)
            if cv2.waitKey(1) & 0xFF in (ord("q"), 27):
                self.quit_requested = True

    def _hold_until(self, captured: float) -> None:
        """Repeat the last frame written until the video's clock reaches ``captured`` (frames the model
        had no time for, and reconnect gaps, become a held picture instead of lost time)."""
        if self._video_start is None:
            self._video_start = captured
        due = int((captured - self._video_start) * self.video_rate)  # frames before this one at the video's rate
        while self._last_vis is not None and self.video_frames < due:
            self._video_frame(self._last_vis)

    @property
    def video_rate(self) -> float:
        return self.opts.video_fps or self.source_fps or 15.0

    def _video_frame(self, vis: np.ndarray) -> None:
        if self.video is None:
            path = self.opts.save_video
            self.video_tmp = path.with_name(f".{path.stem}.{os.getpid()}.partial{path.suffix}")
            # encoders need even sides of some size: a first frame of 1 x 300 pixels made OpenCV's
            # MJPG writer abort the process and its mp4 writer write nothing
            self.video_size = tuple(max(16, n + n % 2) for n in (vis.shape[1], vis.shape[0]))
            self.video, self.video_encoder = open_video(self.video_tmp, self.video_rate, self.video_size)
            if self.video is None:
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
        if self.opts.save_video is not None and self.video is None and not self.video_frames:
            self.warn(f"{self.opts.save_video}: no frame was processed, so no video was written")
        if self.video is not None:
            self.video.release()
            if not self.video_tmp.exists() or self.video_tmp.stat().st_size == 0 or _disk_full(self.video_tmp.parent):
                self.video_tmp.unlink(missing_ok=True)
                raise EdgesegError("OpenCV's video writer could not write the whole video (disk full, or a codec "
                                   "that refuses this frame size); nothing was kept: free space or try .avi",
                                   self.opts.save_video)
            os.replace(self.video_tmp, self.opts.save_video)
            self.video_kept = True
        if self.show:
            cv2.destroyAllWindows()


DISK_CHECK_FRAMES = 30


def _disk_full(folder: Path) -> bool:
    try:
        return os.statvfs(folder).f_bavail == 0
    except OSError:
        return False


def _imwrite(path: Path, image: np.ndarray) -> None:
    """One overlay or mask, written beside its name and renamed onto it: a process killed mid-write (the OOM
    killer, a power switch) leaves the whole picture or none under that name, never half of one. Not fsynced:
    a frame a second is worth more than surviving a power cut."""
    ok, data = cv2.imencode(path.suffix, image)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        if not ok:
            raise OSError
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)
        raise EdgesegError("could not write this file (disk full or not writable?)", path) from None


