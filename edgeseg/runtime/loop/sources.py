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
import hashlib
import queue
import re
import sys
import threading
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from edgeseg.errors import EdgesegError
from edgeseg.redact import redact
from edgeseg.runtime.images import (
    IMAGE_SUFFIXES,
    ImageError,
    check_declared,
    check_pixels,
    list_images,
    read_image,
    to_bgr8,
)
from edgeseg.runtime.loop.frames import Frame, SourceStats
from edgeseg.runtime.loop.live import CaptureSpec, LiveSource, csi_pipeline

VIDEO_SUFFIXES = (".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv")


@dataclass
class _ReaderFailed:
    error: BaseException


MAX_NAME_BYTES = 200  # an output name's stem: room for "_2", ".png" and a file system's 255-byte limit


def output_names(paths: list[Path], root: Path | None = None) -> list[str]:
    """Per-frame output names, unique: the stem (``cat``), with subfolders under ``root`` joined by
    ``__`` (``sub__cat``), and the extension added where two files would share a name (``cat_jpg``,
    ``cat_png``): otherwise their masks and overlays would overwrite each other. Unique without regard
    to case (FAT and macOS disks), a counter added where a name is still taken (``cat.jpg``, ``cat.JPG`` and
    ``cat_jpg_2.jpg``), and a name too long for a file system cut, with a hash of the whole name kept."""
    def base(p: Path) -> str:
        rel = p.relative_to(root) if root is not None and p.is_relative_to(root) else Path(p.name)
        return "__".join([*rel.parent.parts, rel.stem])

    def fit(name: str) -> str:
        if len(name.encode()) <= MAX_NAME_BYTES:
            return name
        digest = hashlib.sha1(name.encode()).hexdigest()[:10]
        return name.encode()[:MAX_NAME_BYTES - 11].decode(errors="ignore") + "_" + digest

    bases = [base(p) for p in paths]
    counts = Counter(b.lower() for b in bases)
    names = [fit(f"{b}_{p.suffix.lstrip('.').lower()}" if counts[b.lower()] > 1 else b)
             for b, p in zip(bases, paths, strict=True)]
    taken: set[str] = set()
    for i, name in enumerate(names):
        candidate, k = name, 1
        while candidate.lower() in taken:
            k += 1
            candidate = f"{name}_{k}"
        taken.add(candidate.lower())
        names[i] = candidate
    return names


class FileSource:
    """Images (a folder, a glob or one file), read in order with a one-image prefetch, none dropped."""

    live = False
    sequence = False  # unrelated photos: nothing carries over between frames

    def __init__(self, paths: list[Path], label: str, root: Path | None = None, loop: bool = False,
                 max_pixels: int | None = None) -> None:
        self.paths, self.label, self.loop, self.max_pixels = paths, label, loop, max_pixels
        self.names = output_names(paths, root)
        self.stats = SourceStats()
        # Set by the loop: frame -> model input, run on the reader thread so that resizing the next
        # photo overlaps the current inference (live sources prepare nothing: frames may be dropped).
        self.prepare: Callable[[np.ndarray], np.ndarray] | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __iter__(self) -> Iterator[Frame]:
        q: queue.Queue = queue.Queue(maxsize=2)
        stop = self._stop = threading.Event()
        unreadable: set[Path] = set()  # tried once: --loop does not count (or decode) them again every pass

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
                        if p in unreadable:
                            continue
                        t0 = time.perf_counter()
                        try:
                            image = read_image(p, self.max_pixels)
                        except ImageError as e:
                            unreadable.add(p)
                            item = (p, name, e.message, None, 0.0, t0)
                        else:
                            t1 = time.perf_counter()
                            tensor = self.prepare(image) if self.prepare else None
                            item = (p, name, image, tensor, (time.perf_counter() - t1) * 1000, t0)
                            decoded += 1
                        if not offer(item):
                            return
                    if not (self.loop and decoded):  # --loop: again from the first photo
                        break
            except BaseException as e:  # handed to the loop's thread, which would otherwise wait forever
                offer(_ReaderFailed(e))
                return
            offer(None)

        self._thread = threading.Thread(target=reader, name="edgeseg-file-reader", daemon=True)
        self._thread.start()
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
                path, name, image, tensor, prepare_ms, read_at = item
                if isinstance(image, str):  # why it could not be read
                    self.stats.skipped += 1
                    self.stats.skipped_files.append(str(path))
                    warnings.warn(f"{path}: {image}; skipped", stacklevel=2)
                    continue
                self.stats.frames += 1
                yield Frame(image, name, index, wait, tensor, prepare_ms, captured=read_at)
                index += 1
        finally:
            stop.set()

    def close(self) -> None:
        """Stop the reader thread and wait for it (it stops within one decode)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)


class VideoFileSource:
    """A video file, every frame in order."""

    live = False
    sequence = True  # one scene in time: masks may be smoothed across frames

    def __init__(self, path: Path, loop: bool = False, max_pixels: int | None = None) -> None:
        self.path, self.label, self.loop = path, str(path), loop
        self.stats = SourceStats()
        self.cap = cv2.VideoCapture(str(path))
        if not self.cap.isOpened():
            raise EdgesegError("cannot open this video (unsupported codec or not a video)", path)
        try:  # the frame size the container declares, before a frame is decoded
            check_pixels(int(self.cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(self.cap.get(cv2.CAP_PROP_FRAME_HEIGHT)),
                         path, max_pixels)
        except ImageError:
            self.cap.release()
            raise
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
            yield Frame(to_bgr8(image), f"frame_{index:06d}", index, (time.perf_counter() - t0) * 1000,
                        captured=t0)
            index += 1

    def close(self) -> None:
        self.cap.release()


# The options each kind of source uses; one given to a source that would ignore it is refused instead (a
# --width on a video file or a --loop on a camera would otherwise silently do nothing).
USES = {"camera": {"width", "height", "fps"}, "CSI camera": {"width", "height", "fps", "flip"},
        "folder": {"loop", "recursive"}, "video file": {"loop"}, "image": {"loop"}, "glob pattern": {"loop"},
        "stream URL": set(), "GStreamer pipeline": set()}
CAMERAS = "cameras (--camera N, /dev/videoN, csi://N)"
APPLIES_TO = {"width": CAMERAS, "height": CAMERAS, "fps": CAMERAS, "flip": "csi://N cameras",
              "loop": "folders, globs, images and video files", "recursive": "folders"}


@dataclass(frozen=True)
class SourceOptions:
    """The options of ``--camera``/``--source`` that only some kinds of source use (USES)."""

    width: int | None = None
    height: int | None = None
    fps: int | None = None
    flip: int = 0
    loop: bool = False
    recursive: bool = False

    def check(self, kind: str, label: str) -> None:
        """Refuse, naming the option, any one set (not None, False or 0) that a ``kind`` source ignores."""
        for name, value in vars(self).items():
            if value and name not in USES[kind]:
                article = "an" if kind[0] in "aeiou" else "a"
                raise EdgesegError(f"--{name} applies only to {APPLIES_TO[name]}, and this source is {article} "
                                   f"{kind}: leave --{name} out", label)


def open_source(spec: str | int, *, recursive: bool = False, reconnect: float = 10.0, width: int | None = None,
                height: int | None = None, fps: int | None = None, flip: int = 0, loop: bool = False,
                max_pixels: int | None = None):
    """A source for ``--camera N`` (an int) or ``--source X`` (folder, glob, file, device, URL, csi://N, pipeline);
    ``loop`` starts a folder, image or video file again when it ends. A path that exists is read as what it is
    (a folder ``2024``, a folder ``wow!``, a file ``cat [1].jpg``) before any pattern rule: camera numbers, URLs,
    pipelines and globs name things that are not files. Options the source would ignore are refused."""
    text = str(spec)
    path = Path(text)
    opts = SourceOptions(width, height, fps, flip, loop, recursive)
    if not isinstance(spec, int) and path.exists():
        return _existing(path, text, opts, reconnect, max_pixels)
    if isinstance(spec, int) or text.isdigit():
        index = int(text)
        opts.check("camera", f"camera {index}")
        cap = CaptureSpec(index, cv2.CAP_V4L2 if sys.platform.startswith("linux") else cv2.CAP_ANY, f"camera {index}",
                          opts.width, opts.height, opts.fps)
        return LiveSource(cap.open, cap.label, reconnect, max_pixels=max_pixels)
    m = re.fullmatch(r"csi://(\d+)", text)
    if m:
        opts.check("CSI camera", text)
        pipeline = csi_pipeline(int(m.group(1)), opts.width or 1280, opts.height or 720, opts.fps or 30, opts.flip)
        return LiveSource(CaptureSpec(pipeline, cv2.CAP_GSTREAMER).open, f"CSI camera {m.group(1)}", reconnect,
                          max_pixels=max_pixels)
    if re.match(r"^(rtsp|rtsps|http|https|rtmp|udp|tcp)://", text):  # shown without its password
        opts.check("stream URL", redact(text))
        return LiveSource(CaptureSpec(text, cv2.CAP_FFMPEG).open, redact(text), reconnect, max_pixels=max_pixels)
    if text.startswith("/dev/video"):
        return _device(text, opts, reconnect, max_pixels)
    if "!" in text:  # a GStreamer pipeline: its caps set size and rate
        opts.check("GStreamer pipeline", "GStreamer pipeline")
        return LiveSource(CaptureSpec(text, cv2.CAP_GSTREAMER).open, "GStreamer pipeline", reconnect,
                          max_pixels=max_pixels)
    if any(ch in text for ch in "*?["):
        opts.check("glob pattern", text)
        paths = sorted(Path(p) for p in glob.glob(text, recursive=True) if Path(p).suffix.lower() in IMAGE_SUFFIXES)
        if not paths:
            raise EdgesegError(f"no images match the pattern {text!r}")
        return FileSource(paths, text, loop=opts.loop, max_pixels=max_pixels)
    raise EdgesegError("no such file, folder or device; check --source", path)


def _device(text: str, opts: SourceOptions, reconnect: float, max_pixels: int | None) -> LiveSource:
    """/dev/videoN (present now, or not yet: the reconnect loop waits for it)."""
    opts.check("camera", text)
    return LiveSource(CaptureSpec(text, cv2.CAP_V4L2, text, opts.width, opts.height, opts.fps).open, text, reconnect,
                      max_pixels=max_pixels)


def _existing(path: Path, text: str, opts: SourceOptions, reconnect: float, max_pixels: int | None):
    if path.is_char_device():  # /dev/video0
        return _device(text, opts, reconnect, max_pixels)
    if path.is_dir():
        opts.check("folder", text)
        paths = list_images(path, recursive=opts.recursive)
        if not paths:
            raise EdgesegError("no images in this folder" + ("" if opts.recursive else " (try --recursive)"), path)
        return FileSource(paths, text, root=path, loop=opts.loop, max_pixels=max_pixels)
    if path.suffix.lower() in VIDEO_SUFFIXES:
        opts.check("video file", text)
        return VideoFileSource(path, loop=opts.loop, max_pixels=max_pixels)
    if path.suffix.lower() in IMAGE_SUFFIXES:  # one image: too large is an error now, not a skipped frame
        opts.check("image", text)
        check_declared(np.fromfile(path, dtype=np.uint8), path, max_pixels)
        return FileSource([path], text, loop=opts.loop, max_pixels=max_pixels)
    raise EdgesegError("unknown source type: expected a folder, image, video (" + ", ".join(VIDEO_SUFFIXES[:4])
                       + "...), /dev/videoN, rtsp:// or http:// URL, csi://N or a GStreamer pipeline", path)
