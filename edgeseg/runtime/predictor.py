"""``Predictor``: one object that run, bench, eval and quantize's accuracy gate all use.

    p = Predictor.load("model.onnx")          # backend from the file: .onnx -> ONNX Runtime,
    mask = p.predict(frame_bgr)               # .pth/.pt -> PyTorch (reference only)
    masks = p.predict_batch([f1, f2])

``predict`` returns class ids (uint8) at the frame's resolution: the model's input size, resize and
colour conventions come from the model's own metadata, so every command preprocesses identically.
The ONNX Runtime path never imports PyTorch.
"""

from __future__ import annotations

import importlib.util
import json
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from edgeseg.data import preprocess
from edgeseg.errors import EdgesegError
from edgeseg.files import sha256_file
from edgeseg.meta import ModelMeta

BACKENDS = ("auto", "onnxruntime", "openvino", "tensorrt", "torch")
CHECKPOINT_SUFFIXES = (".pth", ".pt", ".ckpt")
ENGINE_SUFFIXES = (".engine", ".plan", ".trt")


@dataclass
class BackendInfo:
    name: str  # onnxruntime | torch
    provider: str  # CPUExecutionProvider, cpu, cuda...
    precision: str  # the file's: fp32, or what edgeseg quantize recorded (int8-cpu, int8-tensorrt)
    threads: int
    output: str  # "logits" or "classes" (the model ends in an ArgMax head)
    static_batch: int | None  # None when the batch dimension is dynamic
    extra: dict = field(default_factory=dict)
    compute: str = "fp32"  # the arithmetic of its float layers: fp32, bf16 or fp16 (TensorRT: the engine's)

    @property
    def label(self) -> str:
        """``fp32``, ``fp32 as bf16``, ``int8-cpu + bf16``: what tables show."""
        if self.compute == "fp32" or self.compute == self.precision:
            return self.precision
        return f"{self.precision} + {self.compute}" if self.precision.startswith("int8") else \
            f"{self.precision} as {self.compute}"


class _OnnxRuntimeBackend:
    """ONNX Runtime's CPU provider. ``precision`` fp16 runs an FP16 conversion of an FP32 file
    (FP32 inputs and outputs); ``auto`` considers it only where the CPU has FP16 arithmetic and
    keeps it only when measured faster and in agreement (edgeseg.runtime.precision)."""

    def __init__(self, path: Path, threads: int | None, lower_unpool: bool = True, precision: str = "auto",
                 facts: OnnxFacts | None = None) -> None:
        import onnxruntime

        from edgeseg.runtime import precision as prec
        from edgeseg.runtime.onnxruntime import create_session, default_threads, session_settings

        candidates = prec.resolve(precision, "ONNX Runtime", ("fp16",))
        threads = threads or default_threads()
        facts = facts or inspect_onnx(path)
        props = facts.props
        self.input_name = facts.input_name
        self.meta = _meta_from_props(props, facts.input_shape, path)
        file_precision = props.get("precision", "fp32")
        if file_precision != "fp32" or importlib.util.find_spec("onnx") is None:
            if precision == "fp16":
                raise EdgesegError("--precision fp16 with ONNX Runtime needs an FP32 file and the onnx package "
                                   "(pip install onnx); use --precision fp32", path)
            candidates = ["fp32"]
        sessions, unpool = {}, {}

        def make(p: str):
            if p == "fp16":
                sessions[p], unpool[p] = create_session(_fp16_bytes(path), threads=threads), "as exported (fp16)"
            else:
                lowered = _lowered_unpools(path) if lower_unpool else None
                sessions[p] = create_session(lowered[0] if lowered else path, threads=threads)
                unpool[p] = f"rewritten for NCHWc ({lowered[1]})" if lowered else "as exported"
            return lambda x: sessions[p].run(None, {self.input_name: x})[0]

        if precision == "auto":
            key = prec.cache_key(sha256_file(path), f"onnxruntime-{onnxruntime.__version__}", threads)
            choice, _ = prec.choose(candidates, make, class_ids if len(facts.output_shape) == 4 else lambda o: o,
                                    tuple(self.meta.input_size), key)
        else:
            choice = prec.PrecisionChoice(candidates[0], "requested")
            make(candidates[0])
        self.session = sessions[choice.precision]
        self.info = BackendInfo(
            name="onnxruntime", provider=self.session.get_providers()[0], precision=file_precision,
            compute=choice.precision, threads=threads,
            output="classes" if len(facts.output_shape) == 3 else "logits",
            static_batch=facts.input_shape[0] if isinstance(facts.input_shape[0], int) else None,
            extra={"onnxruntime": onnxruntime.__version__, "unpool": unpool[choice.precision],
                   "precision_choice": choice.describe(),
                   "session": session_settings(self.session.get_session_options())},
        )

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: x})[0]


def _fp16_bytes(path: Path) -> bytes:
    """The FP16 conversion of an FP32 ONNX file (FP32 inputs and outputs kept)."""
    import onnx

    from edgeseg.fp16 import to_fp16

    return to_fp16(onnx.load(str(path))).SerializeToString()


def _lowered_unpools(path: Path) -> tuple[bytes, int] | None:
    """The model with its unpools rewritten for ONNX Runtime's x86 kernels (see
    edgeseg.runtime.cpu_unpool), or None where that does not apply or the file cannot be parsed
    (ONNX Runtime then reports the problem with the file itself)."""
    from edgeseg.runtime.cpu_unpool import lowered_for_onnxruntime

    try:
        data, n = lowered_for_onnxruntime(path.read_bytes())
    except Exception:  # a damaged file is ONNX Runtime's to report, with its path
        return None
    return (data, n) if n else None


class _TorchBackend:
    """The PyTorch model as trained: a reference for accuracy, not a deployment path."""

    def __init__(self, path: Path, threads: int | None) -> None:
        import torch

        from edgeseg.checkpoint import load_checkpoint

        if threads:
            torch.set_num_threads(threads)
        ckpt = load_checkpoint(path)
        self.torch = torch
        self.model = ckpt.model
        self.meta = ckpt.meta
        self.info = BackendInfo(name="torch", provider="cpu", precision="fp32", threads=torch.get_num_threads(),
                                output="logits", static_batch=None, extra={"torch": torch.__version__})

    def __call__(self, x: np.ndarray) -> np.ndarray:
        with self.torch.inference_mode():
            return self.model(self.torch.from_numpy(x)).numpy()


def default_onnx_backend() -> str:
    """OpenVINO on x86 when it is installed (measured 1.7x faster in FP32 and 2.7x in INT8 than ONNX
    Runtime on this project's dev machine, see README "Benchmarks"), ONNX Runtime everywhere else."""
    import importlib.util
    import platform

    if platform.machine().lower() in ("x86_64", "amd64") and importlib.util.find_spec("openvino") is not None:
        return "openvino"
    return "onnxruntime"


@dataclass
class OnnxFacts:
    """An ONNX file as ONNX Runtime (on every install) reads it: metadata and its one input and output."""

    props: dict[str, str]
    input_name: str
    input_shape: list
    output_shape: list


def inspect_onnx(path: Path) -> OnnxFacts:
    """Read ``path`` and check it is a segmentation model of edgeseg's shape before any runtime compiles
    it: one image input N x 3 x H x W and one output of logits (N x C x H x W) or class ids (N x H x W).
    Anything else is one line naming the file (a runtime would fail later, with a dump or a crash)."""
    from edgeseg.runtime.onnxruntime import create_session

    sess = create_session(path, threads=1)
    ins, outs = sess.get_inputs(), sess.get_outputs()
    fix = "is this an edgeseg model? (edgeseg export writes one)"
    if len(ins) != 1 or len(outs) != 1:
        raise EdgesegError(f"has {len(ins)} input(s) and {len(outs)} output(s), expected one image in and one "
                           f"mask out; {fix}", path)
    shape, out = list(ins[0].shape), list(outs[0].shape)
    if len(shape) != 4 or shape[1] != 3:
        raise EdgesegError(f"input {ins[0].name!r} is {shape}, expected N x 3 x H x W (an RGB image); {fix}", path)
    if len(out) not in (3, 4) or (len(out) == 4 and not isinstance(out[1], int)):
        raise EdgesegError(f"output {outs[0].name!r} is {out}, expected N x classes x H x W (logits) or N x H x W "
                           f"(class ids); {fix}", path)
    return OnnxFacts(dict(sess.get_modelmeta().custom_metadata_map), ins[0].name, shape, out)


def _meta_from_props(props: dict[str, str], input_shape: list, path: Path) -> ModelMeta:
    if "edgeseg_meta" in props:
        return ModelMeta.from_dict(json.loads(props["edgeseg_meta"]))
    h, w = input_shape[2], input_shape[3]
    if not isinstance(h, int) or not isinstance(w, int):
        raise EdgesegError("has no edgeseg metadata and a dynamic input size; re-export it with edgeseg export", path)
    warnings.warn(f"{path}: no edgeseg metadata; assuming RGB in [0,1], nearest resize, pet/background/border",
                  stacklevel=3)
    return ModelMeta(input_size=(h, w))


class Predictor:
    """A loaded model plus the preprocessing and postprocessing its metadata asks for."""

    def __init__(self, backend, path: Path) -> None:
        self._backend = backend
        self.path = path
        self.meta: ModelMeta = backend.meta
        self.info: BackendInfo = backend.info
        self._sha256: str | None = None

    @classmethod
    def load(cls, path: str | Path, backend: str = "auto", threads: int | None = None,
             precision: str = "auto", lower_unpool: bool = True) -> Predictor:
        """``precision``: for ONNX Runtime and OpenVINO the arithmetic of the float layers (fp32,
        bf16, fp16, or auto: the fastest this CPU runs natively that agrees with fp32, see
        edgeseg.runtime.precision); for TensorRT with an ONNX file the engine's (fp32, fp16, int8;
        auto: int8 for a quantized file, else fp16), built once and cached (edgeseg.tensorrt.cached_engine).
        ``lower_unpool=False`` runs an ONNX file in ONNX Runtime exactly as written (for
        comparisons; the results are identical for finite activations that are zero or above 2^-102,
        see edgeseg.runtime.cpu_unpool)."""
        path = Path(path)
        if backend not in BACKENDS:
            raise EdgesegError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
        if not path.exists():
            raise EdgesegError("no such file; check the path", path)
        suffix = path.suffix.lower()
        if backend == "auto":
            if suffix == ".onnx":
                backend = default_onnx_backend()
            elif suffix in ENGINE_SUFFIXES:
                backend = "tensorrt"
            elif suffix in CHECKPOINT_SUFFIXES:
                backend = "torch"
            else:
                raise EdgesegError(f"cannot tell the backend from the extension {suffix!r}; expected .onnx, "
                                   ".engine or a .pth/.pt checkpoint, or pass --backend", path)
        facts = inspect_onnx(path) if suffix == ".onnx" else None
        if backend == "tensorrt":
            from edgeseg.runtime.tensorrt import TensorRTBackend
            from edgeseg.tensorrt import cached_engine

            if suffix == ".onnx" and precision == "auto":
                precision = "int8" if facts.props.get("precision", "fp32").startswith("int8") else "fp16"
            engine = cached_engine(path, precision) if suffix == ".onnx" else path
            return cls(TensorRTBackend(engine), path)
        if backend == "onnxruntime":
            return cls(_OnnxRuntimeBackend(path, threads, lower_unpool, precision, facts), path)
        if backend == "openvino":
            from edgeseg.runtime.openvino import OpenVINOBackend

            return cls(OpenVINOBackend(path, threads, precision, facts), path)
        if precision not in ("auto", "fp32"):
            raise EdgesegError(f"--precision {precision}: the PyTorch reference runs in fp32 only", path)
        return cls(_TorchBackend(path, threads), path)

    @property
    def sha256(self) -> str:
        if self._sha256 is None:
            self._sha256 = sha256_file(self.path)
        return self._sha256

    @property
    def input_size(self) -> tuple[int, int]:
        return tuple(self.meta.input_size)

    def preprocess(self, frames: np.ndarray | Sequence[np.ndarray]) -> np.ndarray:
        return preprocess(frames, self.meta)

    def infer(self, x: np.ndarray) -> np.ndarray:
        """Float32 NCHW batch -> class ids (N, H, W) uint8 at the model's resolution."""
        b = self.info.static_batch
        if b is None or len(x) == b:
            return self._infer(x)
        parts = [x[i:i + b] for i in range(0, len(x), b)]
        return np.concatenate([self._infer(_pad(p, b))[: len(p)] for p in parts])

    def _infer(self, x: np.ndarray) -> np.ndarray:
        out = self._backend(x)
        if self.info.output == "classes":
            return out.astype(np.uint8, copy=False)
        return class_ids(out)

    @staticmethod
    def postprocess(ids: np.ndarray, frame_shape: tuple[int, ...]) -> np.ndarray:
        """Class ids at model resolution -> at the frame's (nearest, so no new classes appear)."""
        h, w = frame_shape[:2]
        if ids.shape == (h, w):
            return ids
        return cv2.resize(ids, (w, h), interpolation=cv2.INTER_NEAREST)

    def predict(self, frame_bgr: np.ndarray) -> np.ndarray:
        """One BGR uint8 frame -> class-id mask (uint8) at the frame's resolution."""
        return self.postprocess(self.infer(self.preprocess(frame_bgr))[0], frame_bgr.shape)

    def predict_batch(self, frames: Sequence[np.ndarray]) -> list[np.ndarray]:
        ids = self.infer(self.preprocess(frames))
        return [self.postprocess(m, f.shape) for m, f in zip(ids, frames, strict=True)]

    def describe(self) -> dict:
        return {"model": str(self.path), "sha256": self.sha256, "backend": self.info.name,
                "provider": self.info.provider, "precision": self.info.label, "file_precision": self.info.precision,
                "compute_precision": self.info.compute, "threads": self.info.threads,
                "output": self.info.output, "input_size": list(self.input_size), **self.info.extra}


def class_ids(logits: np.ndarray) -> np.ndarray:
    """(N, C, H, W) scores -> (N, H, W) uint8 ids, the first maximum winning (as argmax).

    A running compare-and-keep over the few classes is 2x faster than ``argmax(1)`` (which walks
    the strided class axis per pixel): 0.07 vs 0.15 ms at 3x128x128 on the dev machine.
    """
    best = logits[:, 0].copy()
    ids = np.zeros(best.shape, np.uint8)
    for c in range(1, logits.shape[1]):
        better = logits[:, c] > best
        ids[better] = c
        np.maximum(best, logits[:, c], out=best)
    return ids


def _pad(x: np.ndarray, n: int) -> np.ndarray:
    """Repeat the last item up to a static batch size ``n``."""
    if len(x) == n:
        return x
    return np.concatenate([x, np.repeat(x[-1:], n - len(x), axis=0)])
