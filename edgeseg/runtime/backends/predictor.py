"""``Predictor``: one object that run, bench, eval and quantize's accuracy gate all use.

    p = Predictor.load("model.onnx")          # backend from the file: .onnx -> OpenVINO (x86) or
    mask = p.predict(frame_bgr)               # ONNX Runtime, .engine -> TensorRT
    masks = p.predict_batch([f1, f2])

``predict`` returns class ids (uint8) at the frame's resolution: the model's input size, resize and
colour conventions come from the model's own metadata, so every command preprocesses identically.
This is the device runtime: it never imports PyTorch or the compile side (edgeseg.compile);
edgeseg.loader adds PyTorch checkpoints and engines built on demand on top of it.
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from edgeseg.errors import EdgesegError
from edgeseg.files import sha256_file
from edgeseg.runtime.backends.base import (
    BackendInfo,
    OnnxFacts,
    class_ids,
    full_range_int8,
    inspect_onnx,
    meta_from_props,
)
from edgeseg.runtime.backends.engine_meta import EngineMeta
from edgeseg.runtime.images import preprocess, resized
from edgeseg.runtime.masks import Masks, Smoother, drop_unsure_regions
from edgeseg.runtime.meta import ModelMeta

BACKENDS = ("auto", "onnxruntime", "openvino", "tensorrt", "torch")
CHECKPOINT_SUFFIXES = (".pth", ".pt", ".ckpt")
ENGINE_SUFFIXES = (".engine", ".plan", ".trt")


class _OnnxRuntimeBackend:
    """ONNX Runtime's CPU provider. ``precision`` fp16 runs an FP16 conversion of an FP32 file
    (FP32 inputs and outputs); ``auto`` considers it only where the CPU has FP16 arithmetic and
    keeps it only when measured faster and in agreement (edgeseg.runtime.backends.precision)."""

    def __init__(self, path: Path, threads: int | None, lower_unpool: bool = True, precision: str = "auto",
                 facts: OnnxFacts | None = None) -> None:
        import onnxruntime

        from edgeseg.runtime.backends import precision as prec
        from edgeseg.runtime.backends.onnxruntime import create_session, default_threads, session_settings

        candidates = prec.resolve(precision, "ONNX Runtime", ("fp16",))
        threads = threads or default_threads()
        facts = facts or inspect_onnx(path)
        props = facts.props
        self.input_name = facts.input_name
        self.meta = meta_from_props(props, facts.input_shape, path)
        file_precision = props.get("precision", "fp32")
        if file_precision != "fp32" or importlib.util.find_spec("onnx") is None:
            if precision == "fp16":
                raise EdgesegError("--precision fp16 with ONNX Runtime needs an FP32 file and the onnx package "
                                   "(pip install onnx); use --precision fp32", path)
            candidates = ["fp32"]
        sessions, unpool = {}, {}
        integer = json.loads(props.get("quantization", "{}")).get("integer_unpools", 0)  # edgeseg quantize --target cpu

        def make(p: str):
            if p == "fp16":
                sessions[p], unpool[p] = create_session(_fp16_bytes(path), threads=threads), "as exported (fp16)"
            else:
                lowered = _lowered_unpools(path) if lower_unpool else None
                sessions[p] = create_session(lowered[0] if lowered else path, threads=threads)
                unpool[p] = (f"rewritten for NCHWc ({lowered[1]})" if lowered else
                             f"on integers ({integer}, in the file)" if integer else "as exported")
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

    from edgeseg.runtime.backends.fp16 import to_fp16

    return to_fp16(onnx.load(str(path))).SerializeToString()


def _lowered_unpools(path: Path) -> tuple[bytes, int] | None:
    """The model with its unpools rewritten for ONNX Runtime's x86 kernels (see
    edgeseg.runtime.backends.cpu_unpool), or None where that does not apply or the file cannot be parsed
    (ONNX Runtime then reports the problem with the file itself)."""
    from edgeseg.runtime.backends.cpu_unpool import lowered_for_onnxruntime

    try:
        data, n = lowered_for_onnxruntime(path.read_bytes())
    except Exception:  # a damaged file is ONNX Runtime's to report, with its path
        return None
    return (data, n) if n else None


def default_onnx_backend(props: dict[str, str] | None = None) -> str:
    """OpenVINO on x86 when it is installed (measured 1.7x faster in FP32 and 2.7x in INT8 than ONNX
    Runtime on this project's dev machine, see README "Benchmarks"), ONNX Runtime everywhere else;
    and ONNX Runtime for a file with full-range int8 weights (``props``: its metadata) on an x86 CPU
    without VNNI, where OpenVINO's int8 kernels overflow (0.4 mIoU points lost on the 3-breed split,
    docs/int8.md) and ONNX Runtime's sessions ask for exact ones."""
    import platform

    from edgeseg.runtime.backends.precision import cpu_flags, int8_pairs_saturate

    if platform.machine().lower() in ("x86_64", "amd64") and importlib.util.find_spec("openvino") is not None:
        if props is not None and full_range_int8(props) and int8_pairs_saturate(cpu_flags()):
            return "onnxruntime"
        return "openvino"
    return "onnxruntime"


def resolve_backend(path: Path, backend: str = "auto") -> str:
    """The backend that runs ``path``: ``backend`` when given, else the file's kind (.onnx: the default
    ONNX backend, engine suffixes: tensorrt, checkpoints: torch)."""
    if backend not in BACKENDS:
        raise EdgesegError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if not path.exists():
        raise EdgesegError("no such file; check the path", path)
    if backend != "auto":
        return backend
    suffix = path.suffix.lower()
    if suffix == ".onnx":
        return default_onnx_backend()
    if suffix in ENGINE_SUFFIXES:
        return "tensorrt"
    if suffix in CHECKPOINT_SUFFIXES:
        return "torch"
    raise EdgesegError(f"cannot tell the backend from the extension {suffix!r}; expected .onnx, .engine or a "
                       ".pth/.pt checkpoint, or pass --backend", path)


class Predictor:
    """A loaded model plus the preprocessing and postprocessing its metadata asks for."""

    def __init__(self, backend, path: Path | str | None) -> None:
        self._backend = backend
        self.path = path  # a file, the triton:// address of a served model, or None: a model in memory
        self.remote = isinstance(path, str)
        self.meta: ModelMeta = backend.meta
        self.info: BackendInfo = backend.info
        self._sha256: str | None = None
        # how masks reach the frame's size: "smooth" (scores upsampled, then decided) or "nearest"
        # (the model's class ids blown up; exactly the ids the model computed)
        self.upsample = "smooth"
        # connected animal regions of a lower mean probability become background (masks.drop_unsure_regions)
        self.region_confidence = 0.0

    @classmethod
    def load(cls, path: str | Path, backend: str = "auto", threads: int | None = None,
             precision: str = "auto", lower_unpool: bool = True, retry_seconds: float = 3.0) -> Predictor:
        """A deployable file: an ONNX model (ONNX Runtime or OpenVINO) or a TensorRT engine; or a model
        served by Triton, ``triton://HOST:PORT/NAME`` (edgeseg.runtime.backends.triton), whose requests
        are retried for ``retry_seconds`` while the server is down.

        ``precision``: for ONNX Runtime and OpenVINO the arithmetic of the float layers (fp32,
        bf16, fp16, or auto: the fastest this CPU runs natively that agrees with fp32, see
        edgeseg.runtime.backends.precision). ``lower_unpool=False`` runs an ONNX file in ONNX Runtime
        exactly as written (for comparisons; the results are identical for finite activations that
        are zero or above 2^-102, see edgeseg.runtime.backends.cpu_unpool).

        PyTorch checkpoints and TensorRT engines built on demand from an ONNX file need the build
        side: :func:`edgeseg.loader.load_predictor` takes those too.
        """
        from edgeseg.runtime.backends.triton import TritonBackend, is_triton_url

        if is_triton_url(path):
            if backend != "auto" or precision != "auto":
                raise EdgesegError(f"{path}: a served model runs as its server runs it; leave out --backend and "
                                   "--precision")
            return cls(TritonBackend(str(path), retry_seconds=retry_seconds), str(path))
        path = Path(path)
        requested, backend = backend, resolve_backend(path, backend)
        if backend == "torch":
            raise EdgesegError("is a PyTorch checkpoint: the device runtime runs ONNX files and engines; export it "
                               "(edgeseg export) or load it with edgeseg.loader.load_predictor", path)
        if backend == "tensorrt":
            if path.suffix.lower() == ".onnx":
                raise EdgesegError("TensorRT runs engines: build one (edgeseg build), or load the ONNX with "
                                   "edgeseg.loader.load_predictor, which builds and caches one", path)
            if precision != "auto" and (built := EngineMeta.load(path).precision) != precision:
                raise EdgesegError(f"--precision {precision}: this engine was built for {built}; build "
                                   f"another with edgeseg build --precision {precision}", path)
            from edgeseg.runtime.backends.tensorrt import TensorRTBackend

            return cls(TensorRTBackend(path), path)
        facts = inspect_onnx(path)
        if requested == "auto":
            backend = default_onnx_backend(facts.props)
        if backend == "onnxruntime":
            return cls(_OnnxRuntimeBackend(path, threads, lower_unpool, precision, facts), path)
        from edgeseg.runtime.backends.openvino import OpenVINOBackend

        return cls(OpenVINOBackend(path, threads, precision, facts), path)

    @property
    def sha256(self) -> str | None:
        """The model file's hash (None for a served model, whose server holds the file, or one in memory)."""
        if self._sha256 is None and not self.remote and self.path is not None:
            self._sha256 = sha256_file(self.path)
        return self._sha256

    @property
    def input_size(self) -> tuple[int, int]:
        return tuple(self.meta.input_size)

    def preprocess(self, frames: np.ndarray | Sequence[np.ndarray]) -> np.ndarray:
        """The batch the backend takes: the float NCHW tensor, or for a served model that takes them the
        uint8 pixels it is made from (the server scales them with the same function)."""
        if getattr(self._backend, "pixels", False):
            return resized(frames, self.meta)
        return preprocess(frames, self.meta)

    def scores(self, x: np.ndarray) -> np.ndarray:
        """Float32 NCHW batch -> the model's output for it: class scores (N, C, H, W), or class ids
        (N, H, W) for a model that ends in an ArgMax head."""
        b = self.info.static_batch
        if b is None or len(x) == b:
            return self._backend(x)
        parts = [x[i:i + b] for i in range(0, len(x), b)]
        return np.concatenate([self._backend(_pad(p, b))[: len(p)] for p in parts])

    def infer(self, x: np.ndarray) -> np.ndarray:
        """Float32 NCHW batch -> class ids (N, H, W) uint8 at the model's resolution."""
        out = self.scores(x)
        return out.astype(np.uint8, copy=False) if self.info.output == "classes" else class_ids(out)

    def masks(self, scores: np.ndarray, frame_shape: tuple[int, ...], smoother: Smoother | None = None) -> Masks:
        """One item of :meth:`scores` -> its :class:`Masks` at the frame's size, upsampled as
        :attr:`upsample` says (``smooth``: scores, then decide; ``nearest``: the model's class ids), after
        :attr:`region_confidence` has dropped the regions the model is unsure of."""
        if self.info.output == "classes":
            return Masks(frame_shape, ids=scores.astype(np.uint8, copy=False), upsample="nearest")
        scores = drop_unsure_regions(scores, self.region_confidence)
        if self.upsample == "nearest" and smoother is None:
            return Masks(frame_shape, ids=class_ids(scores[None])[0], upsample="nearest")
        return Masks.from_logits(scores, frame_shape, self.upsample, smoother)

    def predict(self, frame_bgr: np.ndarray) -> np.ndarray:
        """One BGR uint8 frame -> class-id mask (uint8) at the frame's resolution."""
        return self.masks(self.scores(self.preprocess(frame_bgr))[0], frame_bgr.shape).ids

    def predict_batch(self, frames: Sequence[np.ndarray]) -> list[np.ndarray]:
        out = self.scores(self.preprocess(frames))
        return [self.masks(o, f.shape).ids for o, f in zip(out, frames, strict=True)]

    def close(self) -> None:
        """Release what the backend holds open (a served model's connection)."""
        close = getattr(self._backend, "close", None)
        if close is not None:
            close()

    def describe(self) -> dict:
        return {"model": "(in memory)" if self.path is None else str(self.path), "sha256": self.sha256,
                "backend": self.info.name, "provider": self.info.provider, "precision": self.info.label,
                "file_precision": self.info.precision, "compute_precision": self.info.compute,
                "threads": self.info.threads, "output": self.info.output, "input_size": list(self.input_size),
                **self.info.extra}


def _pad(x: np.ndarray, n: int) -> np.ndarray:
    """Repeat the last item up to a static batch size ``n``."""
    if len(x) == n:
        return x
    return np.concatenate([x, np.repeat(x[-1:], n - len(x), axis=0)])
