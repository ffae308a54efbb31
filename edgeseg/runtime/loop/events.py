"""What the loop sees, for other programs: one JSON line per frame (or per change) with whether a pet is in
view, how much of the frame it covers, where (bounding box and centroid in frame pixels) and how much of each
named zone it covers; written to a file or stdout and, with --mqtt, published to a broker (loop.mqtt).

Figures come from the model's own grid (128x128 for the bundled model), scaled to the frame: cheap enough
for every frame, and as fine as the model's answer is."""

from __future__ import annotations

import json
import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TextIO

import numpy as np

from edgeseg.errors import EdgesegError
from edgeseg.runtime.masks import Masks

PRESENT_SHARE = 0.005  # a pet is in view when it covers at least this share of the frame (0.5%)
OCCUPIED_SHARE = 0.05  # a zone is occupied when a pet covers at least this share of it
EVENTS_ON = ("every", "change")


@dataclass(frozen=True)
class Zone:
    """A named polygon in 0..1 frame coordinates (x right, y down)."""

    name: str
    points: tuple[tuple[float, float], ...]

    @classmethod
    def parse(cls, text: str) -> Zone:
        """``sofa:0.1,0.5,0.6,0.5,0.6,0.9,0.1,0.9`` (``--zone``)."""
        name, _, coords = text.partition(":")
        try:
            values = [float(v) for v in coords.split(",")]
        except ValueError:
            values = []
        if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", name) or len(values) < 6 or len(values) % 2 \
                or not all(0.0 <= v <= 1.0 for v in values):
            raise EdgesegError(f"--zone {text!r}: expected NAME:x1,y1,x2,y2,x3,y3,... (a name of letters, digits, _ "
                               "or -; at least three points, each coordinate from 0 to 1 of the frame)")
        return cls(name, tuple(zip(values[::2], values[1::2], strict=True)))

    def raster(self, shape: tuple[int, int]) -> np.ndarray:
        """The cells of an h x w grid whose centres lie inside the polygon (even-odd rule)."""
        h, w = shape
        py, px = ((np.mgrid[0:h, 0:w] + 0.5) / np.array([h, w])[:, None, None])
        inside = np.zeros((h, w), bool)
        for (x1, y1), (x2, y2) in zip(self.points, self.points[1:] + self.points[:1], strict=True):
            if y1 == y2:  # a horizontal edge crosses no horizontal ray
                continue
            crosses = (y1 > py) != (y2 > py)
            inside ^= crosses & (px < x1 + (py - y1) * (x2 - x1) / (y2 - y1))
        return inside


@dataclass
class Debounce:
    """A yes/no that changes only after ``frames`` frames in a row say so."""

    frames: int
    state: bool = False
    _run: int = 0

    def update(self, now: bool) -> bool:
        """True when the state changed with this frame."""
        self._run = self._run + 1 if now != self.state else 0
        if self._run >= self.frames:
            self.state, self._run = now, 0
            return True
        return False


@dataclass
class Events:
    """Turns each processed frame into its event and hands the ones asked for to ``outputs``."""

    source: str
    zones: list[Zone] = field(default_factory=list)
    on: str = "every"  # every frame, or only when a pet appears or leaves (debounced over min_frames)
    min_frames: int = 3
    outputs: list[Callable[[dict, dict], None]] = field(default_factory=list)  # (event, states) -> None
    written: int = 0
    last_zones: dict[str, float] = field(default_factory=dict)  # the latest frame's occupancy, for the live page

    def __post_init__(self) -> None:
        if self.on not in EVENTS_ON:
            raise EdgesegError(f"--events-on {self.on!r}: choose {' or '.join(EVENTS_ON)}")
        if self.min_frames < 1:
            raise EdgesegError(f"--min-frames {self.min_frames}: must be 1 or more")
        names = [z.name for z in self.zones]
        if len(set(names)) != len(names):
            raise EdgesegError(f"--zone: two zones share a name ({', '.join(names)})")
        self.present = Debounce(self.min_frames)
        self.occupied = {z.name: Debounce(self.min_frames) for z in self.zones}
        self._rasters: dict[tuple[int, int], list[np.ndarray]] = {}

    def frame(self, index: int, name: str, captured: float, masks: Masks, latency_ms: float) -> dict | None:
        """The event of one frame (``captured``: perf_counter seconds); None when ``on`` leaves it out."""
        animal = masks.animal_grid()
        event = {"frame": index, "name": name, "source": self.source, "time": _wall_clock(captured),
                 **describe(animal, masks.shape), "latency_ms": round(latency_ms, 2)}
        pet_changed = self.present.update(event["pet"])
        zones_changed = []
        if self.zones:
            if animal.shape not in self._rasters:  # once per grid size
                self._rasters[animal.shape] = [z.raster(animal.shape) for z in self.zones]
            event["zones"] = {z.name: round(float(animal[r].mean()) if r.any() else 0.0, 4)
                              for z, r in zip(self.zones, self._rasters[animal.shape], strict=True)}
            zones_changed = [z.name for z in self.zones
                             if self.occupied[z.name].update(event["zones"][z.name] >= OCCUPIED_SHARE)]
            self.last_zones = event["zones"]
        if self.on == "change":
            if not (pet_changed or zones_changed):
                return None
            kind = ("appeared" if self.present.state else "left") if pet_changed else "zone"
            event = {"event": kind, **({"changed_zones": zones_changed} if zones_changed else {}), **event}
        states = {"pet": self.present.state, "zones": {k: d.state for k, d in self.occupied.items()}}
        for output in self.outputs:
            output(event, states)
        self.written += 1
        return event


    def summary(self) -> dict:
        """For the run report: how many events went out, and where."""
        out = {"on": self.on, "written": self.written, "zones": [z.name for z in self.zones],
               "outputs": [getattr(o, "label", type(o).__name__) for o in self.outputs]}
        for o in self.outputs:
            if hasattr(o, "reconnects"):  # an MQTT publisher
                out["mqtt_reconnects"] = o.reconnects
        return out


def describe(animal: np.ndarray, frame_shape: tuple[int, int]) -> dict:
    """Share of the frame, bounding box and centroid (frame pixels) of the animal on the model's grid."""
    share = float(animal.mean())
    out: dict = {"pet": share >= PRESENT_SHARE, "share": round(share, 5), "bbox": None, "centroid": None}
    if share > 0:
        h, w = animal.shape
        sy, sx = frame_shape[0] / h, frame_shape[1] / w
        ys, xs = np.nonzero(animal)
        out["bbox"] = [round(xs.min() * sx), round(ys.min() * sy), round((xs.max() + 1) * sx),
                       round((ys.max() + 1) * sy)]
        out["centroid"] = [round((xs.mean() + 0.5) * sx, 1), round((ys.mean() + 0.5) * sy, 1)]
    return out


def _wall_clock(captured: float) -> str:
    """A perf_counter instant as UTC wall-clock time, ISO 8601 to the millisecond."""
    at = time.time() - (time.perf_counter() - captured)
    return datetime.fromtimestamp(at, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class JsonLines:
    """Events as JSON Lines to a file (appended line by line, flushed, so `tail -f` sees each frame; a kill can
    cut only the last line) or to stdout (``-``)."""

    def __init__(self, where: str | Path, force: bool = False) -> None:
        self.label = "stdout" if str(where) == "-" else str(where)
        if str(where) == "-":
            self.file: TextIO = sys.stdout
        else:
            path = Path(where)
            if path.exists() and not force:
                raise EdgesegError("already exists; pass --force to overwrite it", path)
            try:
                self.file = path.open("w", buffering=1, encoding="utf-8")
            except OSError as e:
                raise EdgesegError(f"cannot write events here ({e.strerror})", path) from None

    def __call__(self, event: dict, states: dict) -> None:
        self.file.write(json.dumps(event, separators=(",", ":")) + "\n")
        if self.file is sys.stdout:
            self.file.flush()

    def close(self) -> None:
        if self.file is not sys.stdout:
            self.file.close()
