"""What a run of the loop writes and when it stops (``edgeseg run``'s output options)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass
class RunOptions:
    output: Path | None = None  # an overlay image per frame, same base name
    save_video: Path | None = None
    save_masks: Path | None = None  # class-id PNGs
    report: Path | None = None
    show: bool = False
    max_frames: int = 0
    duration: float = 0.0
    warmup: int = 0  # frames left out of the statistics (after the untimed warm-up: pipeline.Stages.warm_up)
    force: bool = False
    video_fps: float = 0.0  # 0: the source's rate, else 15
    # weight of the past in the temporal smoothing of videos and cameras (edgeseg.runtime.masks.Smoother);
    # None: SMOOTH_DEFAULT for them, never across the unrelated photos of a folder
    smooth: float | None = None
    # inference on the loop's thread, rendering and writing on another, overlapped (False: one after another)
    pipeline: bool = True
