"""The device-side runtime: numpy, OpenCV and ONNX Runtime, OpenVINO or TensorRT only; never PyTorch
and nothing from the compile side (edgeseg.compile). ``from edgeseg.runtime import Predictor``.

Two rooms over a shared floor: ``backends/`` (the Predictor and one module per inference engine) and
``loop/`` (sources, rendering, latency, the live view and the runner); the floor is the model's
metadata (meta), image decoding and the one preprocessing function (images), masks from scores
(masks) and the machine's facts (device)."""

from __future__ import annotations

__all__ = ["Predictor"]


def __getattr__(name: str):
    # lazy, so that importing one runtime module (metadata, images) does not load the predictor's backends
    if name == "Predictor":
        from edgeseg.runtime.backends.predictor import Predictor

        return Predictor
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
