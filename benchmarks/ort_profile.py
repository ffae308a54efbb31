"""Where ONNX Runtime's time goes, per op type, for the files edgeseg runs (after its load-time unpool
rewrite on x86), from ONNX Runtime's own profiler.

    python benchmarks/ort_profile.py models/segnet_dsc.onnx out/demo/segnet_dsc.int8.onnx

Same session settings as edgeseg's (edgeseg.runtime.backends.onnxruntime.session_options); 20 warm-up and
100 timed runs of one random input of the model's size; prints p50 and the ten op types with the largest share
of kernel time.
"""

from __future__ import annotations

import argparse
import collections
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from edgeseg.runtime.backends.cpu_unpool import lowered_for_onnxruntime
from edgeseg.runtime.backends.onnxruntime import default_threads, session_options


def profile(path: Path, threads: int, runs: int = 100) -> tuple[float, dict[str, float]]:
    data, _ = lowered_for_onnxruntime(path.read_bytes())
    so = session_options(threads)
    so.enable_profiling = True
    so.profile_file_prefix = str(Path(tempfile.mkdtemp()) / "ort")
    session = ort.InferenceSession(data, so, providers=["CPUExecutionProvider"])
    image = session.get_inputs()[0]
    shape = [d if isinstance(d, int) else 1 for d in image.shape]
    feed = {image.name: np.random.default_rng(0).random(shape, dtype=np.float32)}
    for _ in range(20):
        session.run(None, feed)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        session.run(None, feed)
        times.append(time.perf_counter() - t0)
    by_op: collections.Counter = collections.Counter()
    for event in json.loads(Path(session.end_profiling()).read_text()):
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            by_op[event["args"]["op_name"]] += event["dur"]
    total = sum(by_op.values())
    return 1000 * float(np.median(times)), {k: v / total for k, v in by_op.most_common(10)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", type=Path, nargs="+")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    for model in args.models:
        p50, shares = profile(model, args.threads or default_threads())
        print(f"{model.name}: p50 {p50:.2f} ms; " + ", ".join(f"{k} {100 * v:.0f}%" for k, v in shares.items()))


if __name__ == "__main__":
    main()
