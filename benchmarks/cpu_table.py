"""Every CPU configuration of the bundled model side by side, interleaved, in one run.

PyTorch eager (the trained checkpoint), ONNX Runtime FP32 and INT8 (with the exported unpool and
with edgeseg's load-time NCHWc rewrite, which is what edgeseg runs), OpenVINO FP32 and INT8 on the
same ONNX files at FP32, with OpenVINO's own default configuration (its precision choice, bf16 on
CPUs with AMX) and with edgeseg's default (``--precision auto``), and the machine's measured
dense-matrix peak for scale. The INT8 model is made here from the stored calibration ranges
(``edgeseg quantize --calib-ranges``), target ``cpu``. Ends with the checks of the precision issue:
the default path against OpenVINO's default configuration (<= 1x, mIoU within 0.1 points),
default INT8 against default FP32 (<= 0.6x), ONNX Runtime INT8 against its FP32 (<= 0.8x).

    python benchmarks/cpu_table.py --data ../shared/datasets/oxford-pets-3breeds
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import tempfile
from pathlib import Path

from edgeseg.bench import bench
from edgeseg.compile.quantize import QuantizeOptions, quantize
from edgeseg.loader import load_predictor
from edgeseg.runtime.backends.precision import cpu_flags, native_precisions
from edgeseg.runtime.backends.predictor import Predictor, default_onnx_backend

# CPU features that decide which precisions run natively (reported with the table; never the CPU's name)
FEATURES = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_int8", "amx_fp16",
            "asimddp", "asimdhp", "bf16", "i8mm")


def openvino_own_default(path: Path, threads: int | None) -> Predictor:
    """OpenVINO as a user gets it without edgeseg: no precision hint, so its own choice."""
    import openvino as ov

    p = Predictor.load(path, backend="openvino", threads=threads, precision="fp32")
    compiled = ov.Core().compile_model(str(path), "CPU", {"PERFORMANCE_HINT": "LATENCY",
                                                          "INFERENCE_NUM_THREADS": p.info.threads})
    p._backend.request = compiled.create_infer_request()
    hint = compiled.get_property("INFERENCE_PRECISION_HINT").to_string()
    p.info.compute = {"f32": "fp32", "bf16": "bf16", "f16": "fp16"}.get(hint, hint)
    p.info.extra["config"] = {"INFERENCE_PRECISION_HINT": f"{hint} (OpenVINO's default)"}
    return p

MODELS = Path(__file__).resolve().parent.parent / "models"


def configurations(ckpt: Path, fp32: Path, int8: Path, threads: int | None) -> list[tuple[str, Predictor]]:
    def load(path: Path, backend: str, **kw) -> Predictor:
        return load_predictor(path, backend=backend, threads=threads, **kw)

    rows = [("PyTorch eager FP32", load(ckpt, "torch"))]
    for name, path in (("FP32", fp32), ("INT8", int8)):
        rows += [(f"ONNX Runtime {name}, unpool as exported", load(path, "onnxruntime", lower_unpool=False,
                                                                     precision="fp32")),
                 (f"ONNX Runtime {name}", load(path, "onnxruntime", precision="fp32"))]
    if importlib.util.find_spec("openvino") is not None:
        for name, path in (("FP32", fp32), ("INT8", int8)):
            rows += [(f"OpenVINO {name} at fp32", load(path, "openvino", precision="fp32")),
                     (f"OpenVINO {name}, OpenVINO's default config", openvino_own_default(path, threads)),
                     (f"OpenVINO {name}", load(path, "openvino"))]
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
    flags = cpu_flags()
    print(f"{result['environment']['cpu']}, {rows[0][1].info.threads} threads, {args.runs} interleaved runs; "
          f"machine peak FP32 {peak.get('fp32_gmacs', 0):.1f}, int8 {peak.get('int8_gmacs', 0):.1f} GMAC/s")
    print(f"CPU features: {' '.join(f for f in FEATURES if f in flags) or 'none of ' + ', '.join(FEATURES)}; "
          f"native low precisions: {', '.join(native_precisions(flags)) or 'none'}")
    head = f"{'configuration':46s} {'precision':>16s} {'p50 ms':>7s} {'p90 ms':>7s} {'GMAC/s':>7s}"
    print(head + (f" {'mIoU':>7s}" if args.data else ""))
    for row in result["models"]:
        p90 = row["latency_ms"]["p90"]  # None under 10 runs
        line = (f"{row['configuration']:46s} {row['precision']:>16s} {row['latency_ms']['p50']:7.2f} "
                f"{'-' if p90 is None else format(p90, '.2f'):>7s} {row['gmacs']:7.1f}")
        print(line + (f" {row['miou']:7.4f}" if args.data else ""))

    by = {row["configuration"]: row for row in result["models"]}
    default = {"openvino": "OpenVINO", "onnxruntime": "ONNX Runtime"}[default_onnx_backend()]
    fp32, q = by[f"{default} FP32"], by[f"{default} INT8"]
    print(f"\nedgeseg's default CPU backend here: {default} (--precision auto)")
    if "OpenVINO FP32, OpenVINO's default config" in by:
        own = by["OpenVINO FP32, OpenVINO's default config"]
        print(f"default FP32 p50 / OpenVINO's default config FP32 p50 = "
              f"{fp32['latency_ms']['p50'] / own['latency_ms']['p50']:.3f} (target <= 1)"
              + (f"; mIoU {fp32['miou']:.4f} vs {own['miou']:.4f}" if args.data else ""))
    print(f"default INT8 p50 / default FP32 p50 = {q['latency_ms']['p50'] / fp32['latency_ms']['p50']:.3f} "
          f"(target <= 0.6); ONNX Runtime INT8 / ONNX Runtime FP32: "
          f"{by['ONNX Runtime INT8']['latency_ms']['p50'] / by['ONNX Runtime FP32']['latency_ms']['p50']:.3f} "
          "(target <= 0.8)")
    if args.data:
        print(f"INT8 mIoU drop: {100 * (fp32['miou'] - q['miou']):.2f} points (target <= 0.5)")


if __name__ == "__main__":
    main()
