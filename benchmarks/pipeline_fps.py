"""The pipelined loop against the one-thread loop: 1280x720 video in, an overlay video out.

    python benchmarks/pipeline_fps.py [--model models/segnet_dsc.onnx] [--frames 300] [--pairs 3]

A clip is made from the bundled photos at 1280x720 (each held for 8 frames); `edgeseg run`'s loop runs it
with --save-video, --no-pipeline and pipelined in turn (``--pairs`` of each, the default backend and
precision, one predictor for all), and prints each run's end-to-end FPS and stage medians, the median
ratio pipelined / one-thread, and whether the two wrote the same frames in the same order.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import cv2
import numpy as np

from edgeseg.runtime.backends.predictor import Predictor
from edgeseg.runtime.device import cpu_model
from edgeseg.runtime.images import list_images, read_image
from edgeseg.runtime.loop.overlay import Renderer
from edgeseg.runtime.loop.runner import RunOptions, run_loop
from edgeseg.runtime.loop.sources import open_source


def make_clip(photos: Path, out: Path, frames: int) -> None:
    pictures = [cv2.resize(read_image(p), (1280, 720), interpolation=cv2.INTER_CUBIC) for p in list_images(photos)]
    writer = cv2.VideoWriter(str(out), cv2.VideoWriter_fourcc(*"MJPG"), 30.0, (1280, 720))
    for k in range(frames):
        writer.write(pictures[(k // 8) % len(pictures)])
    writer.release()


def frames_of(video: Path) -> list[np.ndarray]:
    cap, out = cv2.VideoCapture(str(video)), []
    while (got := cap.read())[0]:
        out.append(got[1])
    return out


def main() -> None:
    repo = Path(__file__).resolve().parents[1]
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=repo / "models" / "segnet_dsc.onnx")
    ap.add_argument("--photos", type=Path, default=repo / "calibration")
    ap.add_argument("--frames", type=int, default=300)
    ap.add_argument("--pairs", type=int, default=3)
    args = ap.parse_args()
    predictor = Predictor.load(args.model)
    print(f"{cpu_model()}; {predictor.info.name} {predictor.info.label}, {predictor.info.threads} threads")
    fps: dict[bool, list[float]] = {False: [], True: []}
    with tempfile.TemporaryDirectory() as tmp:
        clip = Path(tmp) / "clip.avi"
        make_clip(args.photos, clip, args.frames)
        written = {}
        for k in range(args.pairs):
            for pipeline in (False, True):
                out = Path(tmp) / f"out-{k}-{pipeline}.avi"
                r = run_loop(predictor, open_source(str(clip)), Renderer(), RunOptions(save_video=out,
                                                                                       pipeline=pipeline))
                lat = r["latency"]
                fps[pipeline].append(lat["fps"])
                stages = ", ".join(f"{name} {s['p50']:.2f}" for name, s in lat["stages_ms"].items())
                print(f"{'pipelined ' if pipeline else 'one thread'}: {lat['fps']:6.1f} FPS, {lat['frames']} frames; "
                      f"p50 ms: {stages}; end to end {lat['end_to_end_ms']['p50']:.2f}", flush=True)
                written[pipeline] = out
        same = [np.array_equal(a, b) for a, b in zip(frames_of(written[False]), frames_of(written[True]),
                                                     strict=True)]
        print(f"last pair: {len(same)} frames each, identical and in order: {all(same)}")
    ratio = statistics.median(fps[True]) / statistics.median(fps[False])
    print(f"median FPS: {statistics.median(fps[False]):.1f} one thread, {statistics.median(fps[True]):.1f} "
          f"pipelined: ratio {ratio:.2f}")


if __name__ == "__main__":
    main()
