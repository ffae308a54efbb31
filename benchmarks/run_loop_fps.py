"""Does `edgeseg run` add at most 10% over the model? End-to-end FPS of the loop vs 1 / inference p50.

Runs the real loop (file source with prefetch, preprocess, inference, postprocess, overlay render)
over the Oxford-IIIT Pet test split, headless and without writing outputs, and compares the loop's
FPS with what the model alone would allow, both from the same run:

    python benchmarks/run_loop_fps.py out/demo/segnet_dsc.onnx --data ../shared/datasets/oxford-pets-3breeds
"""

from __future__ import annotations

import argparse
import json

from edgeseg.data import oxford_split
from edgeseg.overlay import Renderer
from edgeseg.run import RunOptions, run_loop
from edgeseg.runtime.predictor import Predictor
from edgeseg.sources import FileSource


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("--data", required=True, help="Oxford-IIIT Pet layout folder")
    ap.add_argument("--split", default="test")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    predictor = Predictor.load(args.model, threads=args.threads)
    paths = [s.image for s in oxford_split(args.data, args.split)]
    report = run_loop(predictor, FileSource(paths, f"{args.split} split"), Renderer(), RunOptions(warmup=args.warmup))
    lat = report["latency"]
    inf_p50 = lat["stages_ms"]["inference"]["p50"]
    model_fps = 1000.0 / inf_p50
    ratio = lat["fps"] / model_fps
    result = {"images": len(paths), "measured_frames": lat["measured_frames"], "loop_fps": lat["fps"],
              "inference_p50_ms": inf_p50, "model_only_fps": model_fps, "ratio": ratio, "target": 0.9,
              "stages_p50_ms": {k: v["p50"] for k, v in lat["stages_ms"].items()},
              "model": report["model"], "cpu": report["environment"]["cpu"]}
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"{result['measured_frames']} frames of {len(paths)}: loop {lat['fps']:.1f} FPS, model alone "
          f"{model_fps:.1f} FPS (inference p50 {inf_p50:.2f} ms) -> ratio {ratio:.3f} (target >= 0.9)")
    print("stage p50 ms: " + ", ".join(f"{k} {v:.2f}" for k, v in result["stages_p50_ms"].items()))


if __name__ == "__main__":
    main()
