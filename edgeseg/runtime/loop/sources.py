"""Frame sources: folders, globs, video files, cameras, streams and Jetson CSI cameras.

- Files (images, videos) are read frame by frame with no drops; a small prefetch thread decodes
  the next image while the current one is processed.
- Live sources (cameras, rtsp/http streams, csi://N, GStreamer pipelines) are read on their own
  thread into a one-frame buffer: a slow model gets the newest frame, stale ones are dropped and
  counted, so latency does not grow. A source that stops delivering is reopened with backoff for
  up to ``reconnect`` seconds; the gaps are counted.
"""

from __future__ import annotations

import glob
import queue
import re
import sys
import threading
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from edgeseg.errors import EdgesegError
from edgeseg.runtime.images import IMAGE_SUFFIXES, ImageError, list_images, read_image, to_bgr8

VIDEO_SUFFIXES = (".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv")


@dataclass
class Frame:
    image: np.ndarray  # HxWx3 uint8 BGR
    name: str  # base name for per-frame outputs (the file's stem, or frame_000042)
    index: int
    wait_ms: float = 0.0  # how long the consumer waited for this frame
    tensor: np.ndarray | None = None  # the model input, when the source's thread already prepared it
    prepare_ms: float = 0.0  # time that preparation took (on the source's thread)


@dataclass
class SourceStats:
    frames: int = 0
    skipped: int = 0  # unreadable files
    dropped: int = 0  # stale live frames replaced by newer ones
    reconnects: int = 0
    gap_seconds: float = 0.0  # time without frames while reconnecting
    skipped_files: list[str] = field(default_factory=list)


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


@dataclass
class _ReaderFailed:
    error: BaseException


def output_names(paths: list[Path], root: Path | None = None) -> list[str]:
    """Per-frame output names, unique: the stem (``cat``), with subfolders under ``root`` joined by
    ``__`` (``sub__cat``), and the extension added where two files would share a name (``cat_jpg``,
    ``cat_png``): otherwise their masks and overlays would overwrite each other."""
    def base(p: Path) -> str:
        rel = p.relative_to(root) if root is not None and p.is_relative_to(root) else Path(p.name)
        return "__".join([*rel.parent.parts, rel.stem])

    bases = [base(p) for p in paths]
    counts = Counter(bases)
    names = [f"{b}_{p.suffix.lstrip('.').lower()}" if counts[b] > 1 else b for b, p in zip(bases, paths, strict=True)]
    seen: Counter = Counter()
    for i, n in enumerate(names):  # CAT.JPG beside cat.jpg, on a case-sensitive disk
        seen[n] += 1
        if seen[n] > 1:
            names[i] = f"{n}_{seen[n]}"
    return names


class FileSource:
    """Images (a folder, a glob or one file), read in order with a one-image prefetch, none dropped."""

    live = False
    sequence = False  # unrelated photos: nothing carries over between frames

    def __init__(self, paths: list[Path], label: str, root: Path | None = None, loop: bool = False) -> None:
        self.paths, self.label, self.loop = paths, label, loop
        self.names = output_names(paths, root)
        self.stats = SourceStats()
        # Set by the loop: frame -> model input, run on the reader thread so that resizing the next
        # photo overlaps the current inference (live sources prepare nothing: frames may be dropped).
        self.prepare: Callable[[np.ndarray], np.ndarray] | None = None

    def __iter__(self) -> Iterator[Frame]:
        q: queue.Queue = queue.Queue(maxsize=2)
        stop = threading.Event()

        def offer(item) -> bool:
            while not stop.is_set():
                try:
                    q.put(item, timeout=0.1)
                    return True
                except queue.Full:
                    continue
            return False

        def reader() -> None:
            try:
                while True:
                    decoded = 0
                    for p, name in zip(self.paths, self.names, strict=True):
                        try:
                            image = read_image(p)
                        except ImageError:
                            item = (p, name, None, None, 0.0)
                        else:
                            t0 = time.perf_counter()
                            tensor = self.prepare(image) if self.prepare else None
                            item = (p, name, image, tensor, (time.perf_counter() - t0) * 1000)
                            decoded += 1
                        if not offer(item):
                            return
                    if not (self.loop and decoded):  # --loop: again from the first photo
                        break
            except BaseException as e:  # handed to the loop's thread, which would otherwise wait forever
                offer(_ReaderFailed(e))
                return
            offer(None)

        t = threading.Thread(target=reader, name="edgeseg-file-reader", daemon=True)
        t.start()
        try:
            index = 0
            while True:
                t0 = time.perf_counter()
                item = q.get()
                wait = (time.perf_counter() - t0) * 1000
                if item is None:
                    return
                if isinstance(item, _ReaderFailed):
                    raise item.error
                path, name, image, tensor, prepare_ms = item
                if image is None:
                    self.stats.skipped += 1
                    self.stats.skipped_files.append(str(path))
                    warnings.warn(f"{path}: not a decodable image; skipped", stacklevel=2)
                    continue
                self.stats.frames += 1
                yield Frame(image, name, index, wait, tensor, prepare_ms)
                index += 1
        finally:
            stop.set()

    def close(self) -> None:
        pass


class VideoFileSource:
    """A video file, every frame in order."""

    live = False
    sequence = True  # one scene in time: masks may be smoothed across frames

    def __init__(self, path: Path, loop: bool = False) -> None:
        self.path, self.label, self.loop = path, str(path), loop
        self.stats = SourceStats()
        self.cap = cv2.VideoCapture(str(path))
        if not self.cap.isOpened():
            raise EdgesegError("cannot open this video (unsupported codec or not a video)", path)
        self.fps = self.cap.get(cv2.CAP_PROP_FPS) or 0.0

    def __iter__(self) -> Iterator[Frame]:
        index = 0
        while True:
            t0 = time.perf_counter()
            ok, image = self.cap.read()
            if not ok and self.loop and index:  # --loop: rewind and go on
                self.cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
                ok, image = self.cap.read()
            if not ok:
                return
            self.stats.frames += 1
            yield Frame(to_bgr8(image), f"frame_{index:06d}", index, (time.perf_counter() - t0) * 1000)
            index += 1

    def close(self) -> None:
        self.cap.release()


class LiveSource:
    """A camera or stream read on its own thread into a one-frame buffer, reopened when it drops."""

    live = True
    sequence = True  # one scene in time: masks may be smoothed across frames

    def __init__(self, opener: Callable[[], cv2.VideoCapture], label: str, reconnect: float = 10.0,
                 first_frame_timeout: float = 10.0) -> None:
        self.opener, self.label, self.reconnect = opener, label, reconnect
        self.first_frame_timeout = first_frame_timeout
        self.stats = SourceStats()
        self.fps = 0.0
        self._cond = threading.Condition()
        self._latest: np.ndarray | None = None
        self._seq = 0
        self._done = False
        self._error: str | None = None
        self._stop = threading.Event()
        cap = opener()
        if not cap.isOpened():
            cap.release()
            raise EdgesegError(f"cannot open {label}: no such camera or stream, or it is busy; check the device, "
                               "URL or pipeline (on Jetson: is nvargus-daemon running?)")
        self.fps = cap.get(cv2.CAP_PROP_FPS) or 0.0
        self._thread = threading.Thread(target=self._read, args=(cap,), name="edgeseg-capture", daemon=True)
        self._thread.start()

    def _read(self, cap: cv2.VideoCapture) -> None:
        backoff = 0.25
        while not self._stop.is_set():
            ok, image = cap.read() if cap is not None else (False, None)
            if ok and image is not None:
                with self._cond:
                    if self._latest is not None:
                        self.stats.dropped += 1  # the consumer never saw the previous frame
                    self._latest = image
                    self._seq += 1
                    self._cond.notify_all()
                backoff = 0.25
                continue
            # The source stopped delivering: reopen with backoff until `reconnect` seconds have passed.
            if cap is not None:
                cap.release()
                cap = None
            lost = time.monotonic()
            while not self._stop.is_set():
                if time.monotonic() - lost > self.reconnect:
                    with self._cond:
                        self._error = f"{self.label} stopped delivering frames and did not come back within " \
                                      f"--reconnect {self.reconnect:g} s"
                        self._done = True
                        self._cond.notify_all()
                    self.stats.gap_seconds += time.monotonic() - lost
                    return
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 2.0)
                candidate = self.opener()
                if candidate.isOpened():
                    cap = candidate
                    self.stats.reconnects += 1
                    self.stats.gap_seconds += time.monotonic() - lost
                    break
                candidate.release()
        if cap is not None:
            cap.release()

    @property
    def error(self) -> str | None:
        return self._error

    def __iter__(self) -> Iterator[Frame]:
        index = 0
        timeout = self.first_frame_timeout
        while True:
            t0 = time.perf_counter()
            with self._cond:
                while self._latest is None and not self._done:
                    # While reconnecting, wait as long as the reconnect window allows.
                    if not self._cond.wait(timeout=max(timeout, self.reconnect) + 1.0):
                        self._error = f"{self.label} delivered no frame within {max(timeout, self.reconnect):g} s"
                        return
                if self._latest is None:
                    return
                image, self._latest = self._latest, None
            self.stats.frames += 1
            yield Frame(to_bgr8(image), f"frame_{index:06d}", index, (time.perf_counter() - t0) * 1000)
            index += 1

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def open_source(spec: str | int, *, recursive: bool = False, reconnect: float = 10.0, width: int | None = None,
                height: int | None = None, fps: int | None = None, flip: int = 0, loop: bool = False):
    """A source for ``--camera N`` (an int) or ``--source X`` (folder, glob, file, device, URL, csi://N, pipeline);
    ``loop`` starts a folder, image or video file again when it ends."""
    if isinstance(spec, int) or (isinstance(spec, str) and spec.isdigit()):
        index = int(spec)
        cap = CaptureSpec(index, cv2.CAP_V4L2 if sys.platform.startswith("linux") else cv2.CAP_ANY, f"camera {index}",
                          width, height, fps)
        return LiveSource(cap.open, cap.label, reconnect)
    text = str(spec)
    m = re.fullmatch(r"csi://(\d+)", text)
    if m:
        pipeline = csi_pipeline(int(m.group(1)), width or 1280, height or 720, fps or 30, flip)
        return LiveSource(CaptureSpec(pipeline, cv2.CAP_GSTREAMER).open, f"CSI camera {m.group(1)}", reconnect)
    if re.match(r"^(rtsp|rtsps|http|https|rtmp|udp|tcp)://", text):
        return LiveSource(CaptureSpec(text, cv2.CAP_FFMPEG).open, text, reconnect)
    if text.startswith("/dev/video"):
        return LiveSource(CaptureSpec(text, cv2.CAP_V4L2, text, width, height, fps).open, text, reconnect)
    if "!" in text:  # a GStreamer pipeline
        return LiveSource(CaptureSpec(text, cv2.CAP_GSTREAMER).open, "GStreamer pipeline", reconnect)
    path = Path(text)
    if path.is_dir():
        paths = list_images(path, recursive=recursive)
        if not paths:
            raise EdgesegError("no images in this folder" + ("" if recursive else " (try --recursive)"), path)
        return FileSource(paths, text, root=path, loop=loop)
    if any(ch in text for ch in "*?["):
        paths = sorted(Path(p) for p in glob.glob(text, recursive=True) if Path(p).suffix.lower() in IMAGE_SUFFIXES)
        if not paths:
            raise EdgesegError(f"no images match the pattern {text!r}")
        return FileSource(paths, text, loop=loop)
    if not path.exists():
        raise EdgesegError("no such file, folder or device; check --source", path)
    if path.suffix.lower() in VIDEO_SUFFIXES:
        return VideoFileSource(path, loop=loop)
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return FileSource([path], text, loop=loop)
    raise EdgesegError("unknown source type: expected a folder, image, video (" + ", ".join(VIDEO_SUFFIXES[:4])
                       + "...), /dev/videoN, rtsp:// or http:// URL, csi://N or a GStreamer pipeline", path)
