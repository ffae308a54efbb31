"""Every CPU configuration of the bundled model side by side, interleaved, in one run.

PyTorch eager (the trained checkpoint), ONNX Runtime FP32 and INT8 (with the exported unpool and
with edgeseg's load-time NCHWc rewrite, which is what edgeseg runs), OpenVINO FP32 and INT8 on the
same ONNX files, and the machine's measured dense-matrix peak for scale. The INT8 model is made
here from the stored calibration ranges (``edgeseg quantize --calib-ranges``), target ``cpu``.
Ends with the checks of issue #10: the default CPU path against OpenVINO FP32, INT8 against FP32
(<= 0.6x) and, with --data, INT8's mIoU drop (<= 0.5 points).

    python benchmarks/cpu_table.py --data ../shared/datasets/oxford-pets-3breeds
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import tempfile
from pathlib import Path

from edgeseg.bench import bench
from edgeseg.quantize import QuantizeOptions, quantize
from edgeseg.runtime.predictor import Predictor, default_onnx_backend

MODELS = Path(__file__).resolve().parent.parent / "models"


def configurations(ckpt: Path, fp32: Path, int8: Path, threads: int | None) -> list[tuple[str, Predictor]]:
    def load(path: Path, backend: str, **kw) -> Predictor:
        return Predictor.load(path, backend=backend, threads=threads, **kw)

    rows = [("PyTorch eager FP32", load(ckpt, "torch"))]
    for name, path in (("FP32", fp32), ("INT8", int8)):
        rows += [(f"ONNX Runtime {name}, unpool as exported", load(path, "onnxruntime", lower_unpool=False)),
                 (f"ONNX Runtime {name}", load(path, "onnxruntime"))]
    if importlib.util.find_spec("openvino") is not None:
        rows += [("OpenVINO FP32", load(fp32, "openvino")), ("OpenVINO INT8", load(int8, "openvino"))]
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", type=Path, default=MODELS / "segnet_dsc.pth")
    ap.add_argument("--onnx", type=Path, default=MODELS / "segnet_dsc.onnx")
    ap.add_argument("--ranges", type=Path, default=MODELS / "segnet_dsc.calib.json")
    ap.add_argument("--data", type=Path, default=None, help="Oxford-IIIT Pet layout: adds test-split mIoU")
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", type=Path, default=None, help="also write the full result here")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="edgeseg-cpu-table-") as tmp:
        int8 = Path(tmp) / "segnet_dsc.int8.onnx"
        quantize(args.onnx, int8, QuantizeOptions(target="cpu"), calib_ranges=args.ranges)
        rows = configurations(args.checkpoint, args.onnx, int8, args.threads)
        result = bench([p for _, p in rows], runs=args.runs, warmup=args.warmup, data=args.data,
                       threads=args.threads)
    for (label, _), row in zip(rows, result["models"], strict=True):
        row["configuration"] = label
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))

    peak = result["machine_peak"]
    print(f"{result['environment']['cpu']}, {rows[0][1].info.threads} threads, {args.runs} interleaved runs; "
          f"machine peak FP32 {peak.get('fp32_gmacs', 0):.1f}, int8 {peak.get('int8_gmacs', 0):.1f} GMAC/s")
    head = f"{'configuration':42s} {'p50 ms':>7s} {'p90 ms':>7s} {'GMAC/s':>7s} {'% peak':>7s}"
    print(head + (f" {'mIoU':>7s}" if args.data else ""))
    for row in result["models"]:
        share = row.get("share_of_int8_peak" if "INT8" in row["configuration"] else "share_of_fp32_peak", 0)
        line = (f"{row['configuration']:42s} {row['latency_ms']['p50']:7.2f} {row['latency_ms']['p90']:7.2f} "
                f"{row['gmacs']:7.1f} {100 * share:6.1f}%")
        print(line + (f" {row['miou']:7.4f}" if args.data else ""))

    by = {row["configuration"]: row for row in result["models"]}
    default = {"openvino": "OpenVINO", "onnxruntime": "ONNX Runtime"}[default_onnx_backend()]
    fp32, q = by[f"{default} FP32"], by[f"{default} INT8"]
    print(f"\nedgeseg's default CPU backend here: {default}")
    if "OpenVINO FP32" in by:
        ov = by["OpenVINO FP32"]["latency_ms"]["p50"]
        print(f"default FP32 p50 / OpenVINO FP32 p50 = {fp32['latency_ms']['p50'] / ov:.3f} (target <= 1); "
              f"ONNX Runtime FP32: {by['ONNX Runtime FP32']['latency_ms']['p50'] / ov:.3f}")
    print(f"default INT8 p50 / default FP32 p50 = {q['latency_ms']['p50'] / fp32['latency_ms']['p50']:.3f} "
          f"(target <= 0.6); ONNX Runtime: "
          f"{by['ONNX Runtime INT8']['latency_ms']['p50'] / by['ONNX Runtime FP32']['latency_ms']['p50']:.3f}")
    if args.data:
        print(f"INT8 mIoU drop: {100 * (fp32['miou'] - q['miou']):.2f} points (target <= 0.5)")


if __name__ == "__main__":
    main()
