"""The loop's frames through its stages, one after another or pipelined.

    for frame in source:                  # the source's own thread reads (and for files, preprocesses) ahead
        masks = stages.infer(frame)       # preprocess, inference, postprocess: on the loop's thread
        stages.output(frame, masks)       # render, write, events: on the writer thread when pipelined

Pipelined, a bounded queue of PIPELINE_DEPTH frames sits between the two: inference of the next frame
overlaps rendering and encoding of this one (OpenCV and the inference runtimes release the GIL), frames
stay in order (one writer), a slow writer holds the loop back instead of piling frames up, and a live
source still drops its stale frames at its own one-frame buffer. Files never drop a frame either way."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np

from edgeseg.runtime.backends.predictor import Predictor
from edgeseg.runtime.loop.events import Events
from edgeseg.runtime.loop.frames import Frame
from edgeseg.runtime.loop.latency import FrameTimes, StageTimer
from edgeseg.runtime.loop.overlay import Renderer
from edgeseg.runtime.loop.sinks import Sinks
from edgeseg.runtime.masks import Masks, Smoother

PIPELINE_DEPTH = 2  # frames between inference and output: enough to overlap, little added latency
WARMUP_PASSES = 2  # untimed passes over the first frame: lazy initialisation and first allocations are in the first


@dataclass
class Stages:
    predictor: Predictor
    renderer: Renderer
    sinks: Sinks
    timer: StageTimer
    smoother: Smoother | None
    want_ids: bool  # class-id masks are written
    live: bool  # the source is a camera or stream: latency counts from capture
    events: Events | None = None

    def warm_up(self, image: np.ndarray) -> None:
        """Run ``image`` through preprocess, inference, postprocess (and render) WARMUP_PASSES times, untimed and
        with no state kept (no smoothing, nothing written), so that the first input frame is measured like the
        others instead of being left out: a folder of 8 photos reports 8 frames."""
        p = self.predictor
        for _ in range(WARMUP_PASSES):
            masks = p.masks(p.scores(p.preprocess(image))[0], image.shape)
            if self.sinks.needs_render:
                self.renderer.render(image, masks)

    def infer(self, frame: Frame) -> tuple[FrameTimes, Masks, np.ndarray | None]:
        times = self.timer.begin()
        # a live frame's latency counts from its capture (it may have waited in the buffer), a file's from the read
        times.add("capture", frame.wait_ms, since=frame.captured if self.live else None)
        if frame.tensor is not None:  # prepared on the reader thread, overlapping the last inference
            times.add("preprocess (reader thread)", frame.prepare_ms, overlapped=True)
            x = frame.tensor
        else:
            with times.stage("preprocess"):
                x = self.predictor.preprocess(frame.image)
        with times.stage("inference"):
            scores = self.predictor.scores(x)[0]
        with times.stage("postprocess"):  # upsampled only as far as the outputs need
            masks = self.predictor.masks(scores, frame.image.shape, self.smoother)
            ids = masks.ids if self.want_ids else None
        return times, masks, ids

    def output(self, frame: Frame, times: FrameTimes, masks: Masks, ids: np.ndarray | None) -> None:
        vis = None
        if self.sinks.needs_render:  # nobody sees an overlay when only masks or a report are wanted
            with times.stage("render"):
                vis = self.renderer.render(frame.image, masks)
        with times.stage("write"):
            self.sinks.write(frame.name, vis, ids, frame.captured)
        latency = self.timer.finish(times)
        if self.events is not None:  # after the frame's outputs: its latency is the whole frame's
            self.events.frame(frame.index, frame.name, frame.captured, masks, latency)


def sequential(stages: Stages, frames: Iterable[Frame], after: Callable[[], bool]) -> None:
    """Every stage of a frame before the next frame; ``after()`` is called after each frame (True: stop)."""
    for k, frame in enumerate(frames):
        if not k:
            stages.warm_up(frame.image)
        stages.output(frame, *stages.infer(frame))
        if after():
            return


def pipelined(stages: Stages, frames: Iterable[Frame], after: Callable[[], bool]) -> None:
    """Inference here, outputs on a writer thread, PIPELINE_DEPTH frames apart. Every frame inferred is written
    (also when the loop stops early: a signal, --max-frames); an error on the writer thread is raised here."""
    work: queue.Queue = queue.Queue(maxsize=PIPELINE_DEPTH)
    failed: list[BaseException] = []

    def writer() -> None:
        while (item := work.get()) is not None:
            if not failed:  # after a failure, only drain: the loop must never block on a full queue
                try:
                    stages.output(*item)
                except BaseException as e:
                    failed.append(e)

    thread = threading.Thread(target=writer, name="edgeseg-writer", daemon=True)
    thread.start()
    try:
        for k, frame in enumerate(frames):
            if not k:
                stages.warm_up(frame.image)
            work.put((frame, *stages.infer(frame)))
            if failed or after():
                break
    finally:
        work.put(None)
        while thread.is_alive():  # joined in steps: a signal can still stop the wait
            thread.join(timeout=0.1)
    if failed:
        raise failed[0]

