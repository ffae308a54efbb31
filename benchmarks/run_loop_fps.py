"""Does `edgeseg run` add at most 10% over the model? End-to-end FPS of the loop vs 1 / inference p50,
and what preprocessing + postprocessing cost per frame as a share of the inference p50.

Runs the real loop (file source whose reader thread decodes and preprocesses the next photo,
inference, postprocess) over the Oxford-IIIT Pet test split, headless and writing nothing (so no
overlay is rendered; rendering one costs 0.3 ms more per 600x400 frame), and compares the loop's
FPS with what the model alone would allow, both from the same run:

    python benchmarks/run_loop_fps.py out/demo/segnet_dsc.onnx --data ../shared/datasets/oxford-pets-3breeds
"""

from __future__ import annotations

import argparse
import json

from edgeseg.evaluation.datasets import oxford_split
from edgeseg.loader import load_predictor
from edgeseg.runtime.loop.overlay import Renderer
from edgeseg.runtime.loop.runner import RunOptions, run_loop
from edgeseg.runtime.loop.sources import FileSource


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("--data", required=True, help="Oxford-IIIT Pet layout folder")
    ap.add_argument("--split", default="test")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=3, help="passes over the split; the median ratio is reported")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    predictor = load_predictor(args.model, backend=args.backend, threads=args.threads)
    paths = [s.image for s in oxford_split(args.data, args.split)]
    passes = []
    for _ in range(args.repeats):
        report = run_loop(predictor, FileSource(paths, f"{args.split} split"), Renderer(),
                          RunOptions(warmup=args.warmup))
        lat = report["latency"]
        inf_p50 = lat["stages_ms"]["inference"]["p50"]
        stages = {k: v["p50"] for k, v in lat["stages_ms"].items()}
        pre_post = sum(v for k, v in stages.items() if k.startswith(("preprocess", "postprocess")))
        passes.append({"loop_fps": lat["fps"], "inference_p50_ms": inf_p50, "model_only_fps": 1000.0 / inf_p50,
                       "ratio": lat["fps"] * inf_p50 / 1000.0, "pre_post_share": pre_post / inf_p50,
                       "stages_p50_ms": stages})
    ratios = sorted(p["ratio"] for p in passes)
    shares = sorted(p["pre_post_share"] for p in passes)
    result = {"images": len(paths), "measured_frames_per_pass": lat["measured_frames"], "passes": passes,
              "median_ratio": ratios[len(ratios) // 2], "target": 0.9,
              "median_pre_post_share": shares[len(shares) // 2], "pre_post_target": 0.1,
              "model": report["model"], "cpu": report["environment"]["cpu"]}
    if args.json:
        print(json.dumps(result, indent=2))
        return
    for p in passes:
        print(f"loop {p['loop_fps']:.1f} FPS, model alone {p['model_only_fps']:.1f} FPS (inference p50 "
              f"{p['inference_p50_ms']:.2f} ms) -> ratio {p['ratio']:.3f}, pre+post {100 * p['pre_post_share']:.1f}% "
              "of inference; stage p50 ms: "
              + ", ".join(f"{k} {v:.2f}" for k, v in p["stages_p50_ms"].items()))
    print(f"{result['measured_frames_per_pass']} frames per pass, {report['model']['backend']}: median ratio "
          f"{result['median_ratio']:.3f} (target >= 0.9), pre+post {100 * result['median_pre_post_share']:.1f}% of "
          "inference p50 (target <= 10%)")

if __name__ == "__main__":
    main()
