"""Soak: the live loop for many frames. Memory at start and end, FPS per window, what was written.

Loops over a folder of photos (repeated until --frames) through the real `edgeseg run` loop (reader
thread, inference, overlay rendering, masks and overlays written, a video) and reports resident
memory after warm-up and at the end, FPS in each window of --window frames, and the files in the
output folders, so a leak, a slowdown or a lost file shows up:

    python benchmarks/soak.py models/segnet_dsc.onnx --source calibration --frames 10000
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from edgeseg.loader import load_predictor
from edgeseg.runtime.images import list_images
from edgeseg.runtime.loop.overlay import Renderer
from edgeseg.runtime.loop.runner import RunOptions, run_loop
from edgeseg.runtime.loop.sources import FileSource


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * 4096 / 2**20


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("--source", type=Path, required=True, help="folder of photos, looped until --frames")
    ap.add_argument("--frames", type=int, default=10_000)
    ap.add_argument("--window", type=int, default=1_000)
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--no-pipeline", action="store_true", help="the one-thread loop (the default is pipelined)")
    args = ap.parse_args()

    predictor = load_predictor(args.model, backend=args.backend)
    photos = list_images(args.source)
    paths = (photos * (args.frames // len(photos) + 1))[: args.frames]
    windows: list[dict] = []
    mark = {"frames": 0, "t": time.perf_counter(), "rss": None}

    taken = [0]

    def status(timer) -> None:  # after each frame the loop takes (pipelined, the writer may be a frame behind)
        taken[0] += 1
        frames = taken[0]
        if frames == 1:  # the clock starts after the first frame (compilation, first allocations)
            mark.update(frames=1, t=time.perf_counter(), rss=rss_mb())
        elif frames % args.window == 0 or frames == args.frames:
            now = time.perf_counter()
            windows.append({"first": mark["frames"] + 1, "last": frames,
                            "fps": round((frames - mark["frames"]) / (now - mark["t"]), 1),
                            "rss_mb": round(rss_mb(), 1)})
            mark.update(frames=frames, t=now)

    with tempfile.TemporaryDirectory(prefix="edgeseg-soak-") as tmp:
        out = Path(tmp)
        opts = RunOptions(output=out / "overlays", save_masks=out / "masks", save_video=out / "soak.avi",
                          report=out / "report.json", warmup=0, pipeline=not args.no_pipeline)
        report = run_loop(predictor, FileSource(paths, f"{args.source} x{len(paths) // len(photos)}"), Renderer(),
                          opts, status=status)
        files = {name: len(list((out / name).iterdir())) for name in ("overlays", "masks")}
        video_bytes = (out / "soak.avi").stat().st_size
    result = {
        "model": report["model"]["model"], "backend": report["model"]["backend"],
        "precision": report["model"]["precision"], "frames": report["source_stats"]["frames"],
        "unique_photos": len(photos), "skipped": report["source_stats"]["skipped_unreadable"],
        "rss_mb_after_first_frame": round(mark["rss"], 1), "rss_mb_end": round(rss_mb(), 1),
        "windows": windows, "files": files, "video_bytes": video_bytes,
        "fps_end_to_end": report["latency"]["fps"], "cpu": report["environment"]["cpu"],
        "pipeline": report["pipeline"],
    }
    print(f"{result['frames']} frames of {len(photos)} photos on {result['backend']} {result['precision']}, "
          f"{'pipelined' if result['pipeline'] else 'one thread'} "
          f"({result['cpu']}): RSS {result['rss_mb_after_first_frame']} MB after the first frame, "
          f"{result['rss_mb_end']} MB at the end; files: {files}, video {video_bytes / 2**20:.1f} MB")
    for w in windows:
        print(f"  frames {w['first']:>6}-{w['last']:<6} {w['fps']:>7.1f} FPS  RSS {w['rss_mb']} MB")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
