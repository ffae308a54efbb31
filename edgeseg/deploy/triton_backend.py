"""Triton's Python backend running edgeseg's Predictor: the ``model.py`` of ``edgeseg triton repo
--platform python`` imports :class:`TritonPythonModel` from here, and ``edgeseg triton serve`` serves
through it.

Requests arrive as uint8 pixels (``image``, N x H x W x 3, from :func:`edgeseg.runtime.images.resized`);
dynamic batching hands several requests to one ``execute``, which runs them as one batch. Tensors
cross the backend's boundary by DLPack on the way in: its ``as_numpy`` builds arrays with the NumPy 1
C API and returns empty ones under NumPy 2 (measured with nvidia-pytriton 0.7.0's stub), and its
``Tensor(name, array)`` sends empty ones; both ways go by DLPack here (see :func:`output_tensor`).
"""

from __future__ import annotations

import ctypes
import json
from pathlib import Path

import numpy as np

from edgeseg.deploy.served_onnx import PIXELS_INPUT
from edgeseg.runtime.images import to_tensor

_USED = b"used_dltensor"  # the DLPack standard's name for a consumed capsule; kept alive with the module


def output_tensor(pb_utils, name: str, array: np.ndarray):
    """A backend Tensor holding ``array`` by DLPack. The stub marks the capsule it consumed "used_dlpack"
    where the standard says "used_dltensor", so NumPy's capsule destructor would report an error (the
    tensor itself is whole); the capsule is renamed as the standard says once the stub has it."""
    capsule = np.ascontiguousarray(array).__dlpack__()
    tensor = pb_utils.Tensor.from_dlpack(name, capsule)
    set_name = ctypes.pythonapi.PyCapsule_SetName
    set_name.argtypes = [ctypes.py_object, ctypes.c_char_p]
    set_name(capsule, _USED)
    return tensor


class TritonPythonModel:
    """Triton calls ``initialize`` once per instance, ``execute`` per batch of requests."""

    def initialize(self, args: dict) -> None:
        from edgeseg.runtime.backends.predictor import Predictor

        config = json.loads(args["model_config"])
        params = {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}
        folder = Path(args["model_repository"]) / str(args["model_version"])
        threads = int(params["threads"]) if params.get("threads") else None
        self.predictor = Predictor.load(folder / "model.onnx", backend=params.get("edgeseg_backend", "auto"),
                                        threads=threads)
        self.output = config["output"][0]["name"]

    def execute(self, requests: list) -> list:
        import triton_python_backend_utils as pb_utils

        pixels = [np.from_dlpack(pb_utils.get_input_tensor_by_name(r, PIXELS_INPUT)) for r in requests]
        sizes = [len(p) for p in pixels]
        try:
            batch = to_tensor(np.concatenate(pixels), self.predictor.meta)
            scores = self.predictor.scores(batch)
        except Exception as e:  # one answer per request, never a dead model instance
            error = pb_utils.TritonError(f"edgeseg: {type(e).__name__}: {e}")
            return [pb_utils.InferenceResponse(output_tensors=[], error=error) for _ in requests]
        if self.predictor.info.output == "classes":
            scores = scores.astype(np.uint8, copy=False)
        responses, start = [], 0
        for n in sizes:
            part = output_tensor(pb_utils, self.output, scores[start:start + n])
            responses.append(pb_utils.InferenceResponse(output_tensors=[part]))
            start += n
        return responses
