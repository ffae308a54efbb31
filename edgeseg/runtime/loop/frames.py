"""What every source yields (a Frame) and counts (SourceStats)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np


@dataclass
class Frame:
    image: np.ndarray  # HxWx3 uint8 BGR
    name: str  # base name for per-frame outputs (the file's stem, or frame_000042)
    index: int
    wait_ms: float = 0.0  # how long the consumer waited for this frame
    tensor: np.ndarray | None = None  # the model input, when the source's thread already prepared it
    prepare_ms: float = 0.0  # time that preparation took (on the source's thread)
    captured: float = field(default_factory=time.perf_counter)  # when it was read (perf_counter seconds)


@dataclass
class SourceStats:
    frames: int = 0
    skipped: int = 0  # unreadable files
    dropped: int = 0  # stale live frames replaced by newer ones
    reconnects: int = 0
    gap_seconds: float = 0.0  # time without frames while reconnecting
    skipped_files: list[str] = field(default_factory=list)
