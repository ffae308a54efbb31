"""The device-side runtime: numpy, OpenCV and ONNX Runtime, OpenVINO or TensorRT only; never PyTorch
and nothing from the build side (edgeseg.build). ``from edgeseg.runtime import Predictor``."""

from __future__ import annotations

__all__ = ["Predictor"]


def __getattr__(name: str):
    # lazy, so that importing one runtime module (metadata, images) does not load the predictor's backends
    if name == "Predictor":
        from edgeseg.runtime.predictor import Predictor

        return Predictor
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
