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
from edgeseg.runtime.backends.triton import is_triton_url
from edgeseg.runtime.device import environment
from edgeseg.runtime.images import list_images, read_image
from edgeseg.runtime.loop.latency import summarize


def _matmul_session(b: np.ndarray, threads: int | None):
    """A session computing ``a @ b`` with ``b`` stored as a weight, as a model's convolution weights are:
    ONNX Runtime picks its int8 kernel by the weight (exact u8 x u8 for full-range weights on x86
    without VNNI, see :func:`session_options`), so the peak times the kernel the models get."""
    from onnx import TensorProto, helper, numpy_helper

    from edgeseg.runtime.backends.onnxruntime import create_session

    n = b.shape[0]
    if b.dtype == np.int8:
        a, out, op = TensorProto.UINT8, TensorProto.INT32, "MatMulInteger"
    else:
        a, out, op = TensorProto.FLOAT, TensorProto.FLOAT, "MatMul"
    graph = helper.make_graph([helper.make_node(op, ["a", "b"], ["y"])], "peak",
                              [helper.make_tensor_value_info("a", a, [n, n])],
                              [helper.make_tensor_value_info("y", out, [n, n])],
                              initializer=[numpy_helper.from_array(b, "b")])
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
    """Best-of-``repeats`` GMAC/s of an n x n x n matrix product (FP32 and int8) in ONNX Runtime. The
    int8 weights keep to 7 bits, as edgeseg's ``cpu`` INT8 files do: on x86 without VNNI ONNX Runtime
    runs full-range ones in slower exact kernels (measured 1.6x slower on an AVX2-only EPYC)."""
    rng = np.random.default_rng(0)
    operands = {
        "fp32": (rng.random((n, n), dtype=np.float32), rng.random((n, n), dtype=np.float32)),
        "int8": (rng.integers(0, 255, (n, n), dtype=np.uint8), rng.integers(-64, 65, (n, n), dtype=np.int8)),
    }
    peak = {}
    for kind, (a, b) in operands.items():
        try:
            sess = _matmul_session(b, threads)
        except EdgesegError:
            continue
        sess.run(None, {"a": a})
        best = min(_timed(lambda s=sess, a=a: s.run(None, {"a": a})) for _ in range(repeats))
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
        elif is_triton_url(m):
            preds.append(load_predictor(m, retry_seconds=0.0))
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
    # Each model gets random pixels at its own input size (a larger-input export beside the default:
    # the latency column then says what it costs), as its backend takes them (a served model: uint8)
    inputs = [p.preprocess(list(random_pixels(batch, p.input_size))) for p in preds]
    sizes = {tuple(p.input_size) for p in preds}
    shared_size = list(next(iter(sizes))) if len(sizes) == 1 else None  # None: see each row's input_size

    def once(j: int, i: int) -> None:
        if end_to_end:
            group = [frames[(i * batch + k) % len(frames)] for k in range(batch)]
            preds[j].predict_batch(group)
        else:
            preds[j].infer(inputs[j])

    for i in range(warmup):
        for j in range(len(preds)):
            once(j, i)
    times: list[list[float]] = [[] for _ in preds]
    for i in range(runs):
        for j in range(len(preds)):
            times[j].append(1000 * _timed(lambda j=j, i=i: once(j, i)))
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
        macs = p.meta.frame_macs() * batch
        row = {**p.describe(), "file_mb": None if p.remote else Path(p.path).stat().st_size / 1e6, "batch": batch,
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


def random_pixels(n: int, size: tuple[int, int], seed: int = 0) -> np.ndarray:
    """``n`` random BGR frames at the model's input size (resizing them is a no-op)."""
    return np.random.default_rng(seed).integers(0, 256, (n, *size, 3), dtype=np.uint8)


def concurrency(url: str, levels: Sequence[int], runs: int = 100, warmup: int = 5, local: Sequence[Predictor] = (),
                progress: Callable[[int, int], None] | None = None) -> list[dict]:
    """perf_analyzer's measure: at each level N, N clients (one connection each) send batch-1 requests
    back to back until ``runs`` have completed in all; throughput is completed requests per second
    of wall time, latency each request's round trip. A request that fails is counted, not retried.
    At level 1 the ``local`` predictors run interleaved with the requests (local, remote, local, ...),
    so the served model's overhead is measured under the same load: their rows come first."""
    if not levels or min(levels) < 1:
        raise EdgesegError("--concurrency takes levels of at least 1, e.g. 1,2,4,8")
    rows = []
    for level in levels:
        clients = [load_predictor(url, retry_seconds=0.0) for _ in range(level)]
        x = clients[0].preprocess(list(random_pixels(1, clients[0].input_size)))
        for c in clients:
            for _ in range(warmup):
                c.infer(x)
        if level == 1 and local:
            rows += _interleaved(local, clients[0], x, runs, warmup)
        else:
            times, errors, wall = _drive(clients, x, runs)
            rows.append(_row(url, level, runs, times, errors, wall))
        for c in clients:
            c.close()
        if progress:
            progress(len(rows), len(levels))
    return rows


def _row(model: str, level: int, runs: int, times: list[float], errors: list[str], wall: float) -> dict:
    return {"model": model, "concurrency": level, "requests": runs, "errors": len(errors),
            "first_error": errors[0] if errors else None, "throughput_fps": len(times) / wall,
            "latency_ms": summarize(times)}


def _interleaved(local: Sequence[Predictor], remote: Predictor, x_remote: np.ndarray, runs: int,
                 warmup: int) -> list[dict]:
    """Level 1: each local model and the served one in turn, ``runs`` times; a one-client throughput is
    requests over the time spent in them."""
    xs = [p.preprocess(list(random_pixels(1, p.input_size))) for p in local]
    for p, x in zip(local, xs, strict=True):
        for _ in range(warmup):
            p.infer(x)
    times: list[list[float]] = [[] for _ in (*local, remote)]
    errors: list[str] = []
    for _ in range(runs):
        for j, (p, x) in enumerate(zip((*local, remote), (*xs, x_remote), strict=True)):
            t0 = time.perf_counter()
            try:
                p.infer(x)
            except EdgesegError as e:
                errors.append(str(e))
                continue
            times[j].append(1000 * (time.perf_counter() - t0))
    rows = []
    for j, p in enumerate((*local, remote)):
        mine = errors if p is remote else []
        row = _row(str(p.path), 1, runs, times[j], mine, sum(times[j]) / 1000 or 1.0)
        if p is not remote:
            row["where"] = f"local ({p.info.name} {p.info.label})"
        rows.append(row)
    return rows


def _drive(clients: list[Predictor], x: np.ndarray, runs: int) -> tuple[list[float], list[str], float]:
    """Each client on its own thread sends ``x`` back to back until ``runs`` requests have been sent in
    all: (round trips in ms, the failed requests' errors, wall seconds)."""
    import threading

    lock = threading.Lock()
    left, times, errors = [runs], [], []

    def client(p: Predictor) -> None:
        while True:
            with lock:
                if left[0] <= 0:
                    return
                left[0] -= 1
            t0 = time.perf_counter()
            try:
                p.infer(x)
            except EdgesegError as e:
                with lock:
                    errors.append(str(e))
                continue
            with lock:
                times.append(1000 * (time.perf_counter() - t0))

    threads = [threading.Thread(target=client, args=(c,), daemon=True) for c in clients]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return times, errors, time.perf_counter() - t0
