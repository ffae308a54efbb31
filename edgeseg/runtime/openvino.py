"""OpenVINO backend for Predictor (optional extra ``openvino``): the same ONNX file, Intel/AMD x86 CPUs.

``auto`` picks it for .onnx files on x86 when it is installed (see predictor.default_onnx_backend);
ONNX Runtime stays the portable default elsewhere, ARM included, and ``--backend onnxruntime``
forces it. FP32 stays FP32 (no bf16/fp16 inference hint), so accuracy matches ONNX Runtime's.
The model's edgeseg metadata is read with ONNX Runtime's light model-meta API, so preprocessing is
identical whichever backend runs the graph.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from edgeseg.errors import EdgesegError
from edgeseg.files import cache_root


def _model_cache() -> str | None:
    """OpenVINO's compiled-model cache folder (it keys entries by model, device and settings), or
    None when it cannot be created: caching is an optimisation, never a reason to fail."""
    folder = cache_root() / "openvino"
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    return str(folder) if os.access(folder, os.W_OK) else None


class OpenVINOBackend:
    def __init__(self, path: Path, threads: int | None) -> None:
        from edgeseg.runtime.onnxruntime import default_threads
        from edgeseg.runtime.predictor import BackendInfo, _meta_from_props

        try:
            import openvino as ov
        except ImportError:
            raise EdgesegError("OpenVINO is not installed: pip install 'edgeseg[openvino]' (x86 CPUs)") from None
        core = ov.Core()
        cache = _model_cache()
        if cache:  # compiled blobs: an INT8 model starts in ~0.2 s instead of ~0.5 s (README, start-up)
            core.set_property({"CACHE_DIR": cache})
        model = core.read_model(str(path))
        config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": threads or default_threads(),
                  "INFERENCE_PRECISION_HINT": "f32"}
        self.compiled = core.compile_model(model, "CPU", config)
        self.request = self.compiled.create_infer_request()
        inp, out = self.compiled.inputs[0], self.compiled.outputs[0]
        props = {}
        if model.has_rt_info(["framework"]):
            framework = model.get_rt_info()["framework"]
            props = {k: framework[k].astype(str) for k in framework}
        shape = [d.get_length() if d.is_static else "batch" for d in inp.get_partial_shape()]
        self.meta = _meta_from_props(props, shape, path)
        precision = props.get("precision", "fp32")
        self.info = BackendInfo(name="openvino", provider="CPU", precision=precision,
                                threads=threads or default_threads(),
                                output="classes" if len(out.get_partial_shape()) == 3 else "logits",
                                static_batch=shape[0] if isinstance(shape[0], int) else None,
                                extra={"openvino": ov.get_version(), "model_cache": cache or "off",
                                       "config": {k: str(v) for k, v in config.items()}})

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.request.infer([x])[0]
