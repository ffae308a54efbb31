"""Any model file to a :class:`~edgeseg.runtime.backends.predictor.Predictor`, building what the device runtime
cannot load by itself: a PyTorch checkpoint (the reference, needs PyTorch) or an ONNX file for
TensorRT (an engine built once and cached, see edgeseg.compile.engine.cached_engine).

The CLI and the evaluation tools load through here; code on the device uses ``Predictor.load``.
"""

from __future__ import annotations

from pathlib import Path

from edgeseg.errors import EdgesegError
from edgeseg.runtime.backends.base import inspect_onnx
from edgeseg.runtime.backends.predictor import Predictor, resolve_backend
from edgeseg.runtime.backends.triton import is_triton_url


def load_predictor(path: str | Path, backend: str = "auto", threads: int | None = None, precision: str = "auto",
                   lower_unpool: bool = True, retry_seconds: float = 3.0) -> Predictor:
    """``Predictor.load`` plus checkpoints and on-demand engines. For TensorRT with an ONNX file,
    ``precision`` is the engine's (fp32, fp16, int8; auto: int8 for a quantized file, else fp16).
    A ``triton://`` address is a served model (see ``Predictor.load``)."""
    if is_triton_url(path):
        return Predictor.load(path, backend, threads, precision, retry_seconds=retry_seconds)
    path = Path(path)
    kind = resolve_backend(path, backend)
    if kind == "torch":
        from edgeseg.compile.reference import TorchBackend

        if precision not in ("auto", "fp32"):
            raise EdgesegError(f"--precision {precision}: the PyTorch reference runs in fp32 only", path)
        return Predictor(TorchBackend.load(path, threads), path)
    if kind == "tensorrt" and path.suffix.lower() == ".onnx":
        from edgeseg.compile.engine import cached_engine
        from edgeseg.runtime.backends.tensorrt import TensorRTBackend

        if precision == "auto":
            quantized = inspect_onnx(path).props.get("precision", "fp32").startswith("int8")
            precision = "int8" if quantized else "fp16"
        return Predictor(TensorRTBackend(cached_engine(path, precision)), path)
    return Predictor.load(path, backend, threads, precision, lower_unpool)
