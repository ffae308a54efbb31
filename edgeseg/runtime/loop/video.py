"""The video writer for --save-video: on a Jetson the hardware H.264 encoder through GStreamer, where OpenCV
has GStreamer; else x264 through GStreamer; else OpenCV's own writer (mp4v in .mp4, MJPG in .avi/.mkv).

Untested on a Jetson here (the PyPI OpenCV has no GStreamer): the pipelines follow NVIDIA's Jetson
Accelerated GStreamer guide, and the choice among them is tested with a stand-in writer."""

from __future__ import annotations

from pathlib import Path

import cv2

from edgeseg.runtime.device import opencv_has_gstreamer

# appsrc gets BGR frames; each encoder's part of the pipeline, best first
ENCODERS = {
    "nvv4l2h264enc": "videoconvert ! video/x-raw,format=BGRx ! nvvidconv ! video/x-raw(memory:NVMM),format=NV12 ! "
                     "nvv4l2h264enc insert-sps-pps=true ! h264parse",
    "x264enc": "videoconvert ! video/x-raw,format=I420 ! x264enc speed-preset=ultrafast tune=zerolatency ! h264parse",
}
MUXERS = {".mp4": "qtmux", ".mkv": "matroskamux"}


def gstreamer_pipeline(encoder: str, path: Path) -> str:
    location = str(path).replace("\\", "\\\\").replace('"', '\\"')
    return f'appsrc ! {ENCODERS[encoder]} ! {MUXERS[path.suffix.lower()]} ! filesink location="{location}"'


def open_video(path: Path, fps: float, size: tuple[int, int]) -> tuple[cv2.VideoWriter | None, str]:
    """A writer for ``path`` and the encoder's name; a writer that did not open is (None, name tried last)."""
    if opencv_has_gstreamer() and path.suffix.lower() in MUXERS:
        for encoder in ENCODERS:
            writer = cv2.VideoWriter(gstreamer_pipeline(encoder, path), cv2.CAP_GSTREAMER, 0, fps, size, True)
            if writer.isOpened():
                return writer, f"{encoder} (GStreamer)"
            writer.release()
    codec = "mp4v" if path.suffix.lower() == ".mp4" else "MJPG"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*codec), fps, size)
    return (writer if writer.isOpened() else None), f"{codec} (OpenCV)"
