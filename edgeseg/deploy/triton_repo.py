"""``edgeseg triton repo``: a Triton Inference Server model repository from any edgeseg model.

    OUTDIR/NAME/config.pbtxt       inputs, outputs, dynamic batching, instances; the model's
                                   preprocessing in ``parameters`` (edgeseg_meta), where clients read it
    OUTDIR/NAME/1/model.onnx       onnxruntime: batch dimension open, uint8 pixels in (N x H x W x 3)
    OUTDIR/NAME/1/model.py + .onnx python: edgeseg's own Predictor in Triton's Python backend
    OUTDIR/NAME/model.onnx         tensorrt: the file to build NAME/1/model.plan from, on the GPU that
                                   serves it (an engine given as MODEL is copied there instead)

The text follows Triton's model_config.proto; the tests parse every platform's config with the
protobuf that tritonclient ships.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from edgeseg.deploy.served_onnx import PIXELS_INPUT, served_onnx
from edgeseg.errors import EdgesegError
from edgeseg.files import atomic_write
from edgeseg.runtime.meta import ModelMeta

PLATFORMS = ("onnxruntime", "tensorrt", "python")
KINDS = ("cpu", "gpu")
MODEL_PY = '''"""Triton Python backend entry: edgeseg's Predictor on model.onnx (pip install edgeseg in the
server's Python; its version must read this file's metadata)."""
from edgeseg.deploy.triton_backend import TritonPythonModel  # noqa: F401
'''


@dataclass
class RepoOptions:
    name: str = "edgeseg"
    max_batch: int = 8
    platform: str = "onnxruntime"
    instances: int = 1
    kind: str | None = None  # None: gpu for tensorrt, cpu otherwise
    queue_delay_us: int = 0  # no wait: a CPU gains nothing from batches (README, Triton), requests queue anyway
    backend: str = "auto"  # python platform: the Predictor's backend inside the server
    threads: int | None = None  # python platform: its inference threads (None: physical cores)

    def check(self) -> None:
        if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", self.name) or self.name in (".", ".."):
            raise EdgesegError(f"--name {self.name!r}: use letters, digits, '_', '-' or '.' (it is a folder name)")
        if self.platform not in PLATFORMS:
            raise EdgesegError(f"--platform {self.platform!r}: choose {', '.join(PLATFORMS)}")
        if self.kind is not None and self.kind not in KINDS:
            raise EdgesegError(f"--kind {self.kind!r}: choose cpu or gpu")
        if self.platform == "tensorrt" and self.kind == "cpu":
            raise EdgesegError("--kind cpu: TensorRT engines run on a GPU; use --platform onnxruntime for CPUs")
        if self.max_batch < 1 or self.instances < 1:
            raise EdgesegError("--max-batch and --instances must be at least 1")


@dataclass
class Tensor:
    name: str
    dtype: str  # Triton's: UINT8, FP32
    dims: list[int]
    layout: str | None = None  # FORMAT_NHWC / FORMAT_NCHW for image inputs


@dataclass
class ModelConfig:
    name: str
    platform: str
    max_batch: int
    inputs: list[Tensor]
    outputs: list[Tensor]
    kind: str
    instances: int
    queue_delay_us: int
    parameters: dict[str, str] = field(default_factory=dict)

    def text(self) -> str:
        """config.pbtxt (protobuf text format)."""
        engine = 'backend: "python"' if self.platform == "python" else \
            f'platform: "{ {"onnxruntime": "onnxruntime_onnx", "tensorrt": "tensorrt_plan"}[self.platform]}"'
        lines = [f"name: {_quote(self.name)}", engine, f"max_batch_size: {self.max_batch}"]
        for key, tensors in (("input", self.inputs), ("output", self.outputs)):
            for t in tensors:
                fmt = f" format: {t.layout}" if t.layout else ""
                lines.append(f"{key} [ {{ name: {_quote(t.name)} data_type: TYPE_{t.dtype}{fmt} "
                             f"dims: [ {', '.join(map(str, t.dims))} ] }} ]")
        lines.append(f"instance_group [ {{ count: {self.instances} kind: KIND_{self.kind.upper()} }} ]")
        lines.append(f"dynamic_batching {{ max_queue_delay_microseconds: {self.queue_delay_us} }}")
        for key, value in self.parameters.items():
            lines.append(f"parameters {{ key: {_quote(key)} value: {{ string_value: {_quote(value)} }} }}")
        return "\n".join(lines) + "\n"


def _quote(s: str) -> str:
    """A protobuf text-format string literal."""
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def model_config(meta: ModelMeta, opts: RepoOptions, output: str, classes: bool) -> ModelConfig:
    """The config of a model with ``meta``: uint8 pixels in for onnxruntime and python, the exported
    float tensor for TensorRT (its ONNX is built on the serving GPU as edgeseg build builds it)."""
    h, w = meta.input_size
    if opts.platform == "tensorrt":
        inputs = [Tensor("input", "FP32", [3, h, w], "FORMAT_NCHW")]
    else:
        inputs = [Tensor(PIXELS_INPUT, "UINT8", [h, w, 3], "FORMAT_NHWC")]
    out = Tensor(output, "UINT8", [h, w]) if classes else Tensor(output, "FP32", [len(meta.class_names), h, w])
    kind = opts.kind or ("gpu" if opts.platform == "tensorrt" else "cpu")
    params = {"edgeseg_meta": meta.with_(provenance={}).to_json(),
              "preprocess": f"resize to {h}x{w} ({meta.interpolation}), {meta.color} uint8 N x H x W x 3; the "
                            f"server scales to {list(meta.value_range)}" if inputs[0].dtype == "UINT8" else
                            f"resize to {h}x{w} ({meta.interpolation}), {meta.color}, float32 NCHW in "
                            f"{list(meta.value_range)}"}
    if opts.platform == "python":
        params["edgeseg_backend"] = opts.backend
        if opts.threads:
            params["threads"] = str(opts.threads)
    return ModelConfig(opts.name, opts.platform, opts.max_batch, inputs, [out], kind, opts.instances,
                       opts.queue_delay_us, params)


@dataclass
class RepoReport:
    folder: str
    config: str
    files: list[str]
    next_step: str | None


def write_repo(model: Path, outdir: Path, opts: RepoOptions, force: bool = False) -> RepoReport:
    """Write ``outdir/NAME`` for ``model`` (a checkpoint, an ONNX file, or for tensorrt an engine)."""
    opts.check()
    model = Path(model)
    if not model.exists():
        raise EdgesegError("no such file; check the path", model)
    folder = outdir / opts.name
    if folder.exists() and not force:
        raise EdgesegError("already exists; pass --force to replace it", folder)
    if not outdir.is_dir():
        outdir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{opts.name}.", dir=outdir) as tmp:
        stage = Path(tmp) / opts.name
        (stage / "1").mkdir(parents=True)
        next_step = _stage_files(model, stage, opts, folder)
        if folder.exists():
            shutil.rmtree(folder)
        stage.rename(folder)  # the whole folder or none of it
    files = sorted(str(p.relative_to(outdir)) for p in folder.rglob("*") if p.is_file())
    return RepoReport(str(folder), str(folder / "config.pbtxt"), files, next_step)


def _stage_files(model: Path, stage: Path, opts: RepoOptions, folder: Path) -> str | None:
    from edgeseg.runtime.backends.predictor import CHECKPOINT_SUFFIXES, ENGINE_SUFFIXES

    suffix = model.suffix.lower()
    if suffix in ENGINE_SUFFIXES:
        if opts.platform != "tensorrt":
            raise EdgesegError(f"is a TensorRT engine: use --platform tensorrt, or give the ONNX for "
                               f"{opts.platform}", model)
        return _engine_files(model, stage, opts)
    onnx_path = _exported(model, stage.parent) if suffix in CHECKPOINT_SUFFIXES else model
    # uint8 pixels in for ONNX Runtime; the python platform's Predictor scales them itself (to_tensor)
    data, meta = served_onnx(onnx_path, pixels=opts.platform == "onnxruntime")
    target = stage / ("model.onnx" if opts.platform == "tensorrt" else "1/model.onnx")
    target.write_bytes(data)
    if opts.platform == "python":
        (stage / "1" / "model.py").write_text(MODEL_PY)
    graph = _graph(data)
    props = {p.key: p.value for p in graph.metadata_props}
    output = graph.graph.output[0]
    classes = len(output.type.tensor_type.shape.dim) == 3  # an ArgMax head: class ids, not scores
    config = model_config(meta, opts, output.name, classes)
    atomic_write(stage / "config.pbtxt", lambda p: p.write_text(config.text()))
    if opts.platform == "tensorrt":
        precision = "int8" if props.get("precision", "fp32").startswith("int8") else "fp16"
        return (f"on the GPU that serves it: edgeseg build {folder}/model.onnx --precision {precision} "
                f"--max-batch {opts.max_batch} -o {folder}/1/model.plan")
    return None


def _engine_files(engine: Path, stage: Path, opts: RepoOptions) -> None:
    from edgeseg.runtime.backends.engine_meta import EngineMeta

    meta_file = EngineMeta.load(engine)
    shape = list(meta_file.input_shape)
    if not meta_file.model_meta:
        raise EdgesegError("has no edgeseg metadata beside it (ENGINE.json); build it with edgeseg build", engine)
    if shape[0] < opts.max_batch:
        raise EdgesegError(f"was built for batches up to {shape[0]}, less than --max-batch {opts.max_batch}; build "
                           f"it again with edgeseg build --max-batch {opts.max_batch} from a dynamic-batch ONNX "
                           "(edgeseg triton repo --platform tensorrt writes one)", engine)
    shutil.copyfile(engine, stage / "1" / "model.plan")
    meta = ModelMeta.from_dict(meta_file.model_meta)
    config = model_config(meta, opts, "logits", classes=False)
    (stage / "config.pbtxt").write_text(config.text())
    return None


def _exported(checkpoint: Path, workdir: Path) -> Path:
    """A checkpoint exported with an open batch dimension (PyTorch needed)."""
    from edgeseg.compile.checkpoint import load_checkpoint
    from edgeseg.compile.export import ExportOptions, export

    out = workdir / "exported.onnx"
    export(load_checkpoint(checkpoint), out, ExportOptions(batch=None))
    return out


def _graph(data: bytes):
    import onnx

    return onnx.load_from_string(data)
