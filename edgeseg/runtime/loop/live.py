"""Live sources: cameras, streams, Jetson CSI cameras and GStreamer pipelines, read on their own thread into a
one-frame buffer (a slow model gets the newest frame; stale ones are dropped and counted) and reopened when
they drop or stall."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import cv2
import numpy as np

from edgeseg.errors import EdgesegError
from edgeseg.runtime.images import check_pixels, to_bgr8
from edgeseg.runtime.loop.frames import Frame, SourceStats


def csi_pipeline(sensor_id: int = 0, width: int = 1280, height: int = 720, fps: int = 30, flip: int = 0) -> str:
    """Jetson CSI camera through nvarguscamerasrc, delivering BGR to OpenCV's appsink."""
    return (f"nvarguscamerasrc sensor-id={sensor_id} ! "
            f"video/x-raw(memory:NVMM), width={width}, height={height}, format=NV12, framerate={fps}/1 ! "
            f"nvvidconv flip-method={flip} ! video/x-raw, width={width}, height={height}, format=BGRx ! "
            "videoconvert ! video/x-raw, format=BGR ! appsink drop=1 max-buffers=1")


@dataclass
class CaptureSpec:
    """How to open a live source with OpenCV: a device index, URL, device path or GStreamer pipeline."""

    target: int | str
    api: int = cv2.CAP_ANY
    label: str = ""
    width: int | None = None
    height: int | None = None
    fps: int | None = None

    def open(self) -> cv2.VideoCapture:
        cap = cv2.VideoCapture(self.target, self.api)
        if cap.isOpened() and self.api != cv2.CAP_GSTREAMER:
            if self.width:
                cap.set(cv2.CAP_PROP_FRAME_WIDTH, self.width)
            if self.height:
                cap.set(cv2.CAP_PROP_FRAME_HEIGHT, self.height)
            if self.fps:
                cap.set(cv2.CAP_PROP_FPS, self.fps)
            cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)
        return cap


class LiveSource:
    """A camera or stream read on its own thread into a one-frame buffer, reopened when it drops.

    The source counts as lost when a read fails, or when no frame has come for ``stall`` seconds (FFmpeg can
    block about 30 s in one RTSP read, V4L2 about 10 s): a new reader then reopens it with backoff, and the
    blocked one is abandoned (it releases its capture when its read returns). Only a delivered frame ends a
    loss: a camera that opens but never delivers is given up ``reconnect`` seconds after its last frame
    (``first_frame_timeout`` for the first one), with the reason in :attr:`error`."""

    live = True
    sequence = True  # one scene in time: masks may be smoothed across frames

    def __init__(self, opener: Callable[[], cv2.VideoCapture], label: str, reconnect: float = 10.0,
                 first_frame_timeout: float = 10.0, stall: float = 3.0, max_pixels: int | None = None) -> None:
        self.opener, self.label, self.reconnect = opener, label, reconnect
        self.first_frame_timeout, self.stall = first_frame_timeout, stall
        self.stats = SourceStats()
        self.fps = 0.0
        self._cond = threading.Condition()
        self._latest: tuple[np.ndarray, float] | None = None  # the newest frame and when it was read
        self._delivered = False
        self._last_frame = time.perf_counter()  # the last frame's arrival (or the first open)
        self._lost_at: float | None = None  # the last frame before the current loss, for the gap statistics
        self._generation = 0  # the reader allowed to deliver; older ones are abandoned
        self._done = False
        self._error: str | None = None
        self._stop = threading.Event()
        cap = opener()
        if not cap.isOpened():
            cap.release()
            raise EdgesegError(f"cannot open {label}: no such camera or stream, or it is busy; check the device, "
                               "URL or pipeline (on Jetson: is nvargus-daemon running?)")
        self.fps = cap.get(cv2.CAP_PROP_FPS) or 0.0
        try:  # the frame size the stream declares, before a frame is decoded
            check_pixels(int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)), label,
                         max_pixels)
        except EdgesegError:
            cap.release()
            raise
        self._start_reader(cap)

    def _start_reader(self, cap: cv2.VideoCapture | None) -> None:
        """A reader of generation ``_generation`` (call with ``_cond`` held after the first)."""
        self._reader = threading.Thread(target=self._read, args=(cap, self._generation), name="edgeseg-capture",
                                        daemon=True)
        self._reader.start()

    def _window(self) -> float:
        """Seconds after the last frame (or the open) before the source is given up."""
        return self.reconnect if self._delivered else max(self.reconnect, self.first_frame_timeout)

    def _current(self, generation: int) -> bool:
        return generation == self._generation and not self._stop.is_set() and not self._done

    def _read(self, cap: cv2.VideoCapture | None, generation: int) -> None:
        try:
            while self._current(generation):
                ok, image = cap.read() if cap is not None else (False, None)
                if ok and image is not None and self._current(generation):
                    self._deliver(image)
                    continue
                if cap is not None:  # a failed read (or a superseded reader): the capture is done with
                    cap.release()
                    cap = None
                if self._current(generation):
                    self._mark_lost()
                    cap = self._reopen(generation)
        finally:
            if cap is not None:
                cap.release()

    def _deliver(self, image: np.ndarray) -> None:
        now = time.perf_counter()
        with self._cond:
            if self._latest is not None:
                self.stats.dropped += 1  # the consumer never saw the previous frame
            self._latest = (image, now)
            self._delivered, self._last_frame = True, now
            if self._lost_at is not None:
                self.stats.gap_seconds += now - self._lost_at
                self._lost_at = None
            self._cond.notify_all()

    def _mark_lost(self) -> None:
        with self._cond:
            if self._lost_at is None:
                self._lost_at = self._last_frame  # the gap is the time without frames

    def _reopen(self, generation: int) -> cv2.VideoCapture | None:
        """Reopen with backoff until the window after the last frame closes; None when given up or superseded."""
        backoff = 0.25
        while self._current(generation):
            if time.perf_counter() - self._last_frame > self._window():
                self._give_up()
                return None
            self._stop.wait(backoff)
            backoff = min(backoff * 2, 2.0)
            candidate = self.opener()
            if candidate.isOpened() and self._current(generation):
                self.stats.reconnects += 1
                return candidate
            candidate.release()
        return None

    def _give_up(self) -> None:
        with self._cond:
            if self._done:
                return
            what = "stopped delivering frames" if self._delivered else "delivered no frame"
            self._error = f"{self.label} {what} and did not come back within --reconnect {self.reconnect:g} s"
            if self._lost_at is not None:
                self.stats.gap_seconds += time.perf_counter() - self._lost_at
                self._lost_at = None
            self._done = True
            self._cond.notify_all()

    @property
    def error(self) -> str | None:
        return self._error

    def __iter__(self) -> Iterator[Frame]:
        index = 0
        while True:
            t0 = time.perf_counter()
            with self._cond:
                while self._latest is None and not self._done:
                    silent = time.perf_counter() - self._last_frame
                    stall = self.stall if self._delivered else self.first_frame_timeout
                    if silent > self._window() + stall + 1.0:  # readers stuck in an open: no more waiting
                        self._give_up()  # (the condition's lock is re-entrant)
                    elif silent > stall and self._lost_at is None:  # a read that blocks: reopen beside it
                        self._lost_at = self._last_frame
                        self._generation += 1
                        self._start_reader(None)
                    self._cond.wait(timeout=0.25)  # bounded: --reconnect inf must not overflow the wait
                if self._latest is None:
                    return
                (image, captured), self._latest = self._latest, None
            self.stats.frames += 1
            yield Frame(to_bgr8(image), f"frame_{index:06d}", index, (time.perf_counter() - t0) * 1000,
                        captured=captured)
            index += 1

    def close(self) -> None:
        """Stop the reader and wait for it a while; a reader blocked in a read (an abandoned one, or this one
        on a frozen stream) releases its capture when the read returns, on its own daemon thread."""
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        self._reader.join(timeout=5)
