"""Side-by-side latency (and accuracy) of several models, measured interleaved in one process.

Models run in turn (A B C A B C ...) after a warm-up, so drift and a noisy neighbour hit them
equally; ONNX Runtime sessions have spinning off so they do not steal each other's cores. The
same run measures what this machine sustains on dense matrix work (FP32 MatMul and, where ONNX
Runtime has it, uint8 x int8 MatMulInteger) so each model's effective GMAC/s has a scale.
"""

from __future__ import annotations

import importlib.util
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from edgeseg.errors import EdgesegError
from edgeseg.loader import load_predictor
from edgeseg.runtime.backends.predictor import Predictor
from edgeseg.runtime.device import environment
from edgeseg.runtime.images import list_images, read_image
from edgeseg.runtime.loop.latency import summarize
from edgeseg.runtime.meta import conv_macs


def _matmul_session(integer: bool, n: int, threads: int | None):
    from onnx import TensorProto, helper

    from edgeseg.runtime.backends.onnxruntime import create_session

    if integer:
        a, b, out = TensorProto.UINT8, TensorProto.INT8, TensorProto.INT32
        node = helper.make_node("MatMulInteger", ["a", "b"], ["y"])
    else:
        a = b = out = TensorProto.FLOAT
        node = helper.make_node("MatMul", ["a", "b"], ["y"])
    graph = helper.make_graph([node], "peak", [helper.make_tensor_value_info("a", a, [n, n]),
                                                helper.make_tensor_value_info("b", b, [n, n])],
                              [helper.make_tensor_value_info("y", out, [n, n])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return create_session(model.SerializeToString(), threads=threads)


def peak_kind(row: dict) -> str:
    """The arithmetic a benchmarked model's convolutions ran in: int8 for a quantized file, else the
    precision the backend computed in (fp32, or bf16/fp16 where it lowered the FP32 file)."""
    if str(row.get("file_precision", row["precision"])).startswith("int8"):
        return "int8"
    return str(row.get("compute_precision") or "fp32")


def machine_peak(threads: int | None = None, n: int = 1024, repeats: int = 10) -> dict:
    """Best-of-``repeats`` GMAC/s of an n x n x n matrix product (FP32 and int8) in ONNX Runtime."""
    rng = np.random.default_rng(0)
    feeds = {
        "fp32": {"a": rng.random((n, n), dtype=np.float32), "b": rng.random((n, n), dtype=np.float32)},
        "int8": {"a": rng.integers(0, 255, (n, n), dtype=np.uint8), "b": rng.integers(-127, 127, (n, n),
                                                                                          dtype=np.int8)},
    }
    peak = {}
    for kind, feed in feeds.items():
        try:
            sess = _matmul_session(kind == "int8", n, threads)
        except EdgesegError:
            continue
        sess.run(None, feed)
        best = min(_timed(lambda s=sess, f=feed: s.run(None, f)) for _ in range(repeats))
        peak[f"{kind}_gmacs"] = n**3 / best / 1e9
    return peak


def _timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def split_spec(spec: str | Path, default_backend: str, default_precision: str = "auto") -> tuple[Path, str, str]:
    """``model.onnx@openvino:bf16`` -> (model.onnx, "openvino", "bf16"): a backend (and precision)
    per model on one command line."""
    from edgeseg.runtime.backends.predictor import BACKENDS

    text = str(spec)
    path, _, tail = text.rpartition("@")
    backend, _, precision = tail.partition(":")
    if path and backend in BACKENDS:
        return Path(path), backend, precision or default_precision
    return Path(text), default_backend, default_precision


def bench(models: Sequence[str | Path | Predictor], backend: str = "auto", threads: int | None = None, runs: int = 100,
          warmup: int = 10, batch: int = 1, data: Path | None = None, data_limit: int = 0,
          end_to_end: bool = False, images: Path | None = None, peak: bool = True,
          progress: Callable[[int, int], None] | None = None, precision: str = "auto") -> dict:
    """Interleaved latency of ``models`` (paths, ``path@backend[:precision]`` specs or loaded
    Predictors); with ``data`` (Oxford layout) also mIoU and agreement."""
    if not models:
        raise EdgesegError("give at least one model")
    if runs < 1 or warmup < 0 or batch < 1:
        raise EdgesegError("--runs and --batch must be at least 1 and --warmup at least 0")
    preds = []
    for m in models:
        if isinstance(m, Predictor):
            preds.append(m)
        else:
            path, b, p = split_spec(m, backend, precision)
            preds.append(load_predictor(path, backend=b, precision=p, threads=threads))
    frames: list[np.ndarray] = []
    if end_to_end:
        folder = images or (data / "images" if data else None)
        if folder is None:
            raise EdgesegError("--end-to-end needs photos: pass --images DIR or --data DIR")
        frames = [read_image(p) for p in list_images(folder)[:64]]
        if not frames:
            raise EdgesegError("no images found for --end-to-end", folder)
    # Models of different input sizes (a larger-input export beside the default) each get their own
    # random input; the latency column then says what the larger input costs.
    inputs = {size: np.random.default_rng(0).random((batch, 3, *size), dtype=np.float32)
              for size in {tuple(p.input_size) for p in preds}}
    shared_size = list(next(iter(inputs))) if len(inputs) == 1 else None  # None: see each row's input_size

    def once(p: Predictor, i: int) -> None:
        if end_to_end:
            group = [frames[(i * batch + j) % len(frames)] for j in range(batch)]
            p.predict_batch(group)
        else:
            p.infer(inputs[tuple(p.input_size)])

    for i in range(warmup):
        for p in preds:
            once(p, i)
    times: list[list[float]] = [[] for _ in preds]
    for i in range(runs):
        for j, p in enumerate(preds):
            times[j].append(1000 * _timed(lambda p=p, i=i: once(p, i)))
        if progress:
            progress(i + 1, runs)
    accuracy = None
    if data is not None:
        from edgeseg.evaluation.evaluate import evaluate, load_split

        accuracy = evaluate(preds, load_split(data, "test", data_limit))
    rows = []
    base = float(np.median(times[0]))
    for j, p in enumerate(preds):
        st = summarize(times[j])
        macs = conv_macs(p.meta.arch, p.meta.kernel_size, *p.input_size) * batch
        row = {**p.describe(), "file_mb": Path(p.path).stat().st_size / 1e6, "batch": batch,
               "latency_ms": st, "fps": 1000.0 * batch / st["p50"], "ratio_to_first": st["p50"] / base,
               "gmacs": macs / (st["p50"] / 1000) / 1e9}
        if accuracy is not None:
            a = accuracy[j]
            row.update(miou=a["miou"], pixel_accuracy=a["pixel_accuracy"],
                       agreement_with_first=a["agreement_with_first"])
        rows.append(row)
    result = {"mode": "end-to-end" if end_to_end else "inference", "runs": runs, "warmup": warmup,
              "input_size": shared_size, "models": rows, "environment": environment()}
    if peak and importlib.util.find_spec("onnx") is None:
        result["machine_peak_skipped"] = "the matmul model is built with onnx: pip install onnx"
    elif peak:
        result["machine_peak"] = machine_peak(threads)
        for row in rows:
            for kind in ("fp32", "int8"):
                if f"{kind}_gmacs" in result["machine_peak"]:
                    row[f"share_of_{kind}_peak"] = row["gmacs"] / result["machine_peak"][f"{kind}_gmacs"]
            # measured against the units that ran: an INT8 file's convs on the int8 ones, an FP32 file's on the
            # fp32 ones unless the backend computed it in bf16/fp16 (AMX, AVX512-FP16), whose peak is not measured
            # here: its share of the fp32 peak would pass 100% and mean nothing
            own = peak_kind(row)
            if f"share_of_{own}_peak" in row:
                row["peak_kind"], row["share_of_own_peak"] = own, row[f"share_of_{own}_peak"]
            else:
                row["peak_kind_missing"] = own  # ran in bf16/fp16, whose peak is not measured
    return result
