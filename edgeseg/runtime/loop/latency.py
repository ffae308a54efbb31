"""Per-stage timing, percentiles and the environment a latency figure was measured in.

Shared by ``run`` (per-frame stages) and ``bench``. Warm-up frames are recorded but left out of
the statistics. A loop that runs for days keeps bounded memory: see :class:`Samples`.
"""

from __future__ import annotations

import random
import threading
import time
from array import array
from collections import defaultdict, deque
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np

PERCENTILES = (50, 90, 99)
MIN_COUNT = {50: 1, 90: 10, 99: 100}  # items a percentile needs before it says more than the maximum
RESERVOIR = 100_000  # per stage: every frame of the first ~55 min at 30 FPS, a uniform sample after


class Samples:
    """Per-frame times in bounded memory (8 bytes a value, at most :data:`RESERVOIR` values): every
    value until then, afterwards a uniform random sample of all of them (reservoir sampling, Vitter's
    algorithm R) for the percentiles; count, mean and max stay exact. A list of floats grew by about
    0.25 MB per 1,000 frames over a 10,000-frame soak (benchmarks/soak.py)."""

    def __init__(self, cap: int = RESERVOIR, recent: int = 100) -> None:
        self.cap, self.values, self.recent = cap, array("d"), deque(maxlen=recent)
        self.count, self.sum, self.max = 0, 0.0, float("-inf")
        self._rng = random.Random(0)

    def append(self, v: float) -> None:
        self.count += 1
        self.sum += v
        self.max = max(self.max, v)
        self.recent.append(v)
        if len(self.values) < self.cap:
            self.values.append(v)
        elif (j := self._rng.randrange(self.count)) < self.cap:
            self.values[j] = v

    def __len__(self) -> int:
        return self.count


def summarize(ms: list[float] | np.ndarray | Samples) -> dict:
    """p50/p90/p99/max/mean in milliseconds of per-item times. A percentile from fewer items than
    MIN_COUNT asks is None (null in JSON, blank in tables): p99 of 36 frames would be their maximum, not
    a tail. The one rule for run reports, their tables, the live page and bench."""
    if isinstance(ms, Samples):
        count, values, mean, top = ms.count, np.frombuffer(ms.values), (ms.sum / ms.count if ms.count else 0.0), ms.max
    else:
        values = np.asarray(ms, dtype=np.float64)
        count = int(values.size)
        mean, top = (float(values.mean()), float(values.max())) if count else (0.0, 0.0)
    if not count:
        return {"count": 0}
    out: dict = {f"p{p}": float(np.percentile(values, p)) if count >= MIN_COUNT[p] else None for p in PERCENTILES}
    out.update(mean=mean, max=top, count=count)
    return out


class FrameTimes:
    """One frame's stage times, filled by whichever thread runs each stage (the pipelined loop infers on one
    and renders and writes on another)."""

    def __init__(self) -> None:
        self.start: float | None = None  # where the frame's end-to-end time starts
        self.stages: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        if self.start is None:
            self.start = t0
        try:
            yield
        finally:
            self.stages[name] = self.stages.get(name, 0.0) + (time.perf_counter() - t0) * 1000

    def add(self, name: str, ms: float, overlapped: bool = False, since: float | None = None) -> None:
        """Record a stage measured elsewhere: the consumer's wait for a frame (part of this frame's
        time), or with ``overlapped`` work another thread did in parallel (not part of it). ``since``
        (perf_counter seconds) starts the frame's end-to-end time there: a live frame's capture."""
        if self.start is None and not overlapped:
            self.start = since if since is not None else time.perf_counter() - ms / 1000
        self.stages[name] = self.stages.get(name, 0.0) + ms


class StageTimer:
    """Collects each frame's :class:`FrameTimes` (``begin`` ... ``finish``, thread-safe): per-stage samples,
    end to end, FPS over the measured frames."""

    def __init__(self, warmup: int = 0) -> None:
        self.warmup = warmup
        self.frames = 0
        self.stages: dict[str, Samples] = defaultdict(Samples)
        self.total = Samples()
        self._measured_start: float | None = None
        self._last_end: float | None = None
        self._lock = threading.Lock()

    @staticmethod
    def begin() -> FrameTimes:
        return FrameTimes()

    def finish(self, frame: FrameTimes) -> float:
        """Record a frame whose outputs are written; returns its end-to-end time in milliseconds."""
        now = time.perf_counter()
        total = (now - (frame.start or now)) * 1000
        with self._lock:
            self.frames += 1
            if self.frames > self.warmup:
                if self._measured_start is None:
                    self._measured_start = frame.start if frame.start is not None else now
                for k, v in frame.stages.items():
                    self.stages[k].append(v)
                self.total.append(total)
                self._last_end = now
        return total

    @property
    def measured_frames(self) -> int:
        return max(0, self.frames - self.warmup)

    def fps(self) -> float:
        """Frames per second over the measured (post-warm-up) wall time."""
        if not self.measured_frames or self._measured_start is None or self._last_end is None:
            return 0.0
        wall = self._last_end - self._measured_start
        return self.measured_frames / wall if wall > 0 else 0.0

    def live_p50(self, stage: str = "inference") -> float:
        """Median of the last 100 frames' ``stage``."""
        v = self.stages[stage].recent if stage in self.stages else ()
        return float(np.median(v)) if v else float("nan")

    def live(self) -> dict:
        """What a live view shows, cheap enough to compute twice a second on the loop's thread: FPS so far
        and p50/p90 of each stage over its last 100 frames (the report's percentiles over the whole
        reservoir of up to 100,000 values cost tens of milliseconds)."""
        with self._lock:
            window = {k: list(s.recent) for k, s in (*self.stages.items(), ("end to end", self.total)) if s.recent}
            fps, frames = self.fps(), self.frames
        return {"fps": fps, "frames": frames,
                "stages_ms": {k: {key: v for key, v in summarize(recent).items() if key in ("p50", "p90")}
                              for k, recent in window.items()}}

    def report(self) -> dict:
        with self._lock:
            return self._report()

    def _report(self) -> dict:
        return {
            "frames": self.frames, "warmup_frames": min(self.frames, self.warmup),
            "measured_frames": self.measured_frames, "fps": self.fps(),
            "stages_ms": {k: summarize(v) for k, v in self.stages.items()},
            "end_to_end_ms": summarize(self.total),
        }
