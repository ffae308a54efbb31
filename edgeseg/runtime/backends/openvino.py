"""OpenVINO backend for Predictor (optional extra ``openvino``): the same ONNX file, Intel/AMD x86 CPUs.

``auto`` picks it for .onnx files on x86 when it is installed (see predictor.default_onnx_backend);
ONNX Runtime stays the portable default elsewhere, ARM included, and ``--backend onnxruntime``
forces it. The arithmetic precision is edgeseg's choice, never OpenVINO's silent default (bf16 on
CPUs with AMX): ``precision`` fp32/bf16/fp16 sets INFERENCE_PRECISION_HINT, and ``auto`` measures
and verifies the candidates once per model and CPU (see edgeseg.runtime.backends.precision).
The model's edgeseg metadata is read with ONNX Runtime's light model-meta API, so preprocessing is
identical whichever backend runs the graph.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np

from edgeseg.errors import EdgesegError
from edgeseg.files import cache_root, sha256_file


def _model_cache() -> str | None:
    """OpenVINO's compiled-model cache folder (it keys entries by model, device and settings), or
    None when it cannot be created: caching is an optimisation, never a reason to fail."""
    folder = cache_root() / "openvino"
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    return str(folder) if os.access(folder, os.W_OK) else None


HINTS = {"fp32": "f32", "bf16": "bf16", "fp16": "f16"}


class OpenVINOBackend:
    def __init__(self, path: Path, threads: int | None, precision: str = "auto", facts=None) -> None:
        from edgeseg.runtime.backends import precision as prec
        from edgeseg.runtime.backends.base import BackendInfo, class_ids, full_range_int8, inspect_onnx, meta_from_props
        from edgeseg.runtime.backends.onnxruntime import default_threads

        try:
            import openvino as ov
        except ImportError:
            raise EdgesegError("OpenVINO is not installed: pip install 'edgeseg[openvino]' (x86 CPUs)") from None
        core = ov.Core()
        cache = _model_cache()
        if cache:  # compiled blobs: an INT8 model starts in ~0.2 s instead of ~0.5 s (README, start-up)
            core.set_property({"CACHE_DIR": cache})
        candidates = prec.resolve(precision, "OpenVINO", ("bf16", "fp16"))
        model = core.read_model(str(path))
        threads = threads or default_threads()
        facts = facts or inspect_onnx(path)
        props, shape = facts.props, facts.input_shape
        self.meta = meta_from_props(props, shape, path)
        overflow = full_range_int8(props) and prec.int8_pairs_saturate(prec.cpu_flags())
        if overflow:  # `auto` runs such a file in ONNX Runtime (predictor.default_onnx_backend)
            warnings.warn(f"{path}: its 8-bit INT8 weights overflow OpenVINO's int8 kernels on this CPU (no VNNI), "
                          "so its masks differ from those the accuracy gate measured; use --backend onnxruntime, "
                          "or re-quantize with edgeseg quantize --target cpu (7-bit weights)", stacklevel=2)
        configs = {p: {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": threads,
                       "INFERENCE_PRECISION_HINT": HINTS[p]} for p in candidates}
        requests = {}

        def make(p: str):
            requests[p] = core.compile_model(model, "CPU", configs[p]).create_infer_request()
            return lambda x: requests[p].infer([x])[0]

        if precision == "auto":
            logits = len(model.outputs[0].get_partial_shape()) == 4
            choice, _ = prec.choose(candidates, make, class_ids if logits else lambda o: o,
                                    tuple(self.meta.input_size),
                                    prec.cache_key(sha256_file(path), f"openvino-{ov.get_version()}", threads))
        else:
            choice = prec.PrecisionChoice(precision, "requested")
            make(precision)
        self.request = requests[choice.precision]
        out = self.request.get_compiled_model().outputs[0]
        self.info = BackendInfo(name="openvino", provider="CPU", precision=props.get("precision", "fp32"),
                                compute=choice.precision, threads=threads,
                                output="classes" if len(out.get_partial_shape()) == 3 else "logits",
                                static_batch=shape[0] if isinstance(shape[0], int) else None,
                                extra={"openvino": ov.get_version(), "model_cache": cache or "off",
                                       "int8_overflow": overflow,
                                       "precision_choice": choice.describe(),
                                       "config": {k: str(v) for k, v in configs[choice.precision].items()}})

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.request.infer([x])[0]
