"""TensorRT engines: build (FP32/FP16/INT8), metadata beside the engine, and a cache that knows staleness.

Written against the TensorRT 10 and 11 Python APIs (see ../shared/notes/tensorrt-api.md):
- TensorRT 10: weakly typed network with the FP16 / INT8 builder flags (INT8 from Q/DQ nodes);
- TensorRT 11: no precision flags and no calibrator: a strongly typed network, FP16 from an
  FP16-converted ONNX (edgeseg.fp16, checked with ONNX Runtime first), INT8 from Q/DQ nodes.
``tensorrt`` and ``cuda-python`` are imported lazily: everything else here runs without a GPU.

No layer precision constraints are set: a weakly typed build may run any layer in FP16 or INT8,
and the exported unpool (a comparison tournament per 2x2 window, see edgeseg.export) keeps
exactly one winner per window whatever precision TensorRT picks for its comparisons.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from edgeseg import __version__
from edgeseg.errors import EdgesegError
from edgeseg.files import atomic_write, cache_root, check_writable, sha256_file

PRECISIONS = ("fp32", "fp16", "int8")


def import_tensorrt():
    """The tensorrt module, or one clear error saying how to get it."""
    try:
        import tensorrt as trt
    except ImportError:
        raise EdgesegError(
            "TensorRT is not installed: on Jetson it comes with JetPack (apt install python3-libnvinfer, or use "
            "docker/Dockerfile.jetson); on x86 with an NVIDIA GPU pip install 'edgeseg[tensorrt]'") from None
    return trt


def cudart():
    try:
        from cuda.bindings import runtime
    except ImportError:
        try:
            from cuda import cudart as runtime  # cuda-python < 12.6.1
        except ImportError:
            raise EdgesegError("cuda-python is not installed: pip install 'cuda-python' matching your CUDA "
                               "major version (JetPack 6: cuda-python>=12.6,<13)") from None
    return runtime


def ck(ret):
    """Unpack a cuda-python (err, *results) tuple, raising on error."""
    rt = cudart()
    err, rest = ret[0], ret[1:]
    if err != rt.cudaError_t.cudaSuccess:
        name = rt.cudaGetErrorName(err)[1]
        raise EdgesegError(f"CUDA error {name.decode() if isinstance(name, bytes) else name}")
    return rest[0] if len(rest) == 1 else (rest or None)


def gpu_info(device: int = 0) -> dict:
    rt = cudart()
    try:
        props = ck(rt.cudaGetDeviceProperties(device))
    except EdgesegError as e:
        raise EdgesegError(f"no usable NVIDIA GPU ({e}); TensorRT engines need one") from None
    name = props.name.decode() if isinstance(props.name, bytes) else str(props.name)
    return {"gpu": name.strip("\x00").strip(), "compute_capability": f"{props.major}.{props.minor}"}


def l4t_release() -> str | None:
    try:
        first = Path("/etc/nv_tegra_release").read_text().splitlines()[0]
    except (OSError, IndexError):
        return None
    m = re.search(r"R(\d+).*REVISION:\s*([\d.]+)", first)
    return f"{m.group(1)}.{m.group(2)}" if m else first.strip()


def jetson_facts(sample_seconds: float = 1.0) -> dict:
    """Power mode, whether jetson_clocks pinned the clocks, one tegrastats line (each when available)."""
    facts: dict = {}
    if l4t_release() is None:
        return facts
    facts["l4t"] = l4t_release()

    def out(cmd: list[str], timeout: float = 5.0) -> str | None:
        if shutil.which(cmd[0]) is None:
            return None
        try:
            return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout).stdout.strip()
        except (subprocess.SubprocessError, OSError):
            return None

    if (q := out(["nvpmodel", "-q"])) is not None:
        facts["power_mode"] = q.splitlines()[0] if q else ""
    if (c := out(["jetson_clocks", "--show"])) is not None:
        facts["jetson_clocks"] = clocks_pinned(c)
    if shutil.which("tegrastats"):
        try:
            p = subprocess.Popen(["tegrastats", "--interval", "200"], stdout=subprocess.PIPE, text=True)
            time.sleep(sample_seconds)
            p.terminate()
            lines = (p.communicate(timeout=5)[0] or "").strip().splitlines()
            facts["tegrastats"] = lines[-1] if lines else ""
        except (subprocess.SubprocessError, OSError):
            pass
    return facts


def clocks_pinned(show: str) -> bool | None:
    """From ``jetson_clocks --show``: True when every CPU's MinFreq equals its MaxFreq (clocks locked)."""
    cpus = re.findall(r"^cpu\d+:.*?MinFreq=(\d+) MaxFreq=(\d+)", show, flags=re.M)
    return all(lo == hi for lo, hi in cpus) if cpus else None


@dataclass
class EngineMeta:
    """Stored beside the engine as ENGINE.json; compared with the running system before loading."""

    tensorrt: str
    gpu: str
    compute_capability: str
    precision: str
    input_shape: list
    onnx_sha256: str
    source_onnx: str
    calibration_sha256: str | None = None
    l4t: str | None = None
    edgeseg: str = __version__
    built_at: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    model_meta: dict = field(default_factory=dict)  # the ONNX's edgeseg_meta (preprocessing, classes)
    # the edgeseg build options that differ from their defaults, replayed by rebuild_command
    build_options: dict = field(default_factory=dict)

    def save(self, engine: Path) -> None:
        text = json.dumps(asdict(self), indent=2)
        atomic_write(meta_path(engine), lambda p: p.write_text(text), force=True)

    @classmethod
    def load(cls, engine: Path) -> EngineMeta:
        p = meta_path(engine)
        if not p.exists():
            raise EdgesegError(f"no {p.name} beside the engine: cannot tell how it was built; rebuild it with "
                               "edgeseg build", engine)
        try:
            data = json.loads(p.read_text())
            known = {f.name for f in fields(cls)}
            return cls(**{k: v for k, v in data.items() if k in known})  # keys of other edgeseg versions
        except (json.JSONDecodeError, TypeError, AttributeError) as e:
            raise EdgesegError(f"{p.name} is unreadable ({e}); rebuild the engine with edgeseg build", engine) from e

    def rebuild_command(self, engine: Path) -> str:
        """The command that builds this engine again, with every option it was built with."""
        args = ["edgeseg", "build", self.source_onnx, "--precision", self.precision]
        for key, value in self.build_options.items():
            args += [f"--{key.replace('_', '-')}", str(value)]
        return shlex.join([*args, "-o", str(engine), "--force"])

    def mismatch(self, system: dict) -> str | None:
        """Why this engine cannot run on ``system`` ({tensorrt, gpu, compute_capability}), or None."""
        for key in ("tensorrt", "gpu", "compute_capability"):
            if system.get(key) != getattr(self, key):
                return f"built for {key.replace('_', ' ')} {getattr(self, key)}, this system has {system.get(key)}"
        return None


def meta_path(engine: Path) -> Path:
    return Path(str(engine) + ".json")


def system_key() -> dict:
    trt = import_tensorrt()
    return {"tensorrt": trt.__version__, **gpu_info()}


def cache_dir() -> Path:
    return cache_root() / "engines"


def cache_key(onnx_sha256: str, precision: str, system: dict) -> str:
    gpu = re.sub(r"[^A-Za-z0-9]+", "-", system["gpu"]).strip("-")
    return f"{onnx_sha256[:16]}_{precision}_trt{system['tensorrt']}_{gpu}_sm{system['compute_capability']}"


def is_stale(engine: Path, onnx_sha256: str, precision: str, system: dict) -> bool:
    """A cache entry is stale when anything it was keyed on differs, or its metadata is missing."""
    if not engine.exists():
        return True
    try:
        meta = EngineMeta.load(engine)
    except EdgesegError:
        return True
    return meta.onnx_sha256 != onnx_sha256 or meta.precision != precision or meta.mismatch(system) is not None


def cached_engine(onnx_path: Path, precision: str, build_kwargs: dict | None = None) -> Path:
    """The engine for (ONNX, precision, TensorRT, GPU): reused when fresh, (re)built otherwise."""
    system = system_key()
    sha = sha256_file(onnx_path)
    engine = cache_dir() / f"{cache_key(sha, precision, system)}.engine"
    if is_stale(engine, sha, precision, system):
        engine.parent.mkdir(parents=True, exist_ok=True)
        build_engine(onnx_path, engine, precision, force=True, **(build_kwargs or {}))
    return engine


def _onnx_props(path: Path) -> dict:
    import onnx

    return {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}


def validate_for_build(onnx_path: Path, precision: str, calib_dir: Path | None) -> None:
    """The check gate and the precision/model pairing, with no TensorRT needed."""
    from edgeseg.check import check

    problems = check(onnx_path, "tensorrt")
    if problems:
        listed = "; ".join(str(p) for p in problems[:5])
        raise EdgesegError(f"edgeseg check --target tensorrt found {len(problems)} problem(s): {listed}", onnx_path)
    quantized = _onnx_props(onnx_path).get("precision", "fp32").startswith("int8")
    if precision == "int8" and not quantized and calib_dir is None:
        raise EdgesegError("INT8 needs a Q/DQ model: run edgeseg quantize --target tensorrt first, or pass "
                           "--calib DIR to quantize on the way", onnx_path)
    if precision != "int8" and quantized:
        raise EdgesegError(f"is a quantized model; build it with --precision int8, or give the FP32 export for "
                           f"{precision}", onnx_path)


def prepare_onnx(onnx_path: Path, precision: str, strongly_typed: bool, workdir: Path,
                 calib_dir: Path | None = None) -> tuple[Path, str | None]:
    """The ONNX the builder parses for ``precision`` (and the calibration set's hash for INT8)."""
    import onnx

    validate_for_build(onnx_path, precision, calib_dir)
    props = _onnx_props(onnx_path)
    quantized = props.get("precision", "fp32").startswith("int8")
    calib_sha = json.loads(props["quantization"]).get("calibration_sha256") if "quantization" in props else None
    if precision == "int8" and not quantized:
        from edgeseg.quantize import QuantizeOptions, quantize

        q = workdir / "int8-tensorrt.onnx"
        rep = quantize(onnx_path, q, QuantizeOptions(target="tensorrt"), calib_dir=calib_dir)
        onnx_path, calib_sha = q, rep.calibration["sha256"]
        validate_for_build(onnx_path, precision, None)
    if precision == "fp16" and strongly_typed:
        from edgeseg.fp16 import to_fp16

        half = workdir / "fp16.onnx"
        onnx.save(to_fp16(onnx.load(str(onnx_path))), str(half))
        onnx_path = half
    return onnx_path, calib_sha


BUILD_DEFAULTS = {"workspace_gb": 1.0, "timing_cache": None, "dla_core": None, "opt_level": 3, "max_batch": 1,
                  "calib": None}


def build_options(**options) -> dict:
    """The options that differ from :data:`BUILD_DEFAULTS`, as CLI option names (``workspace`` for
    ``workspace_gb``) with JSON-able values."""
    out = {}
    for key, value in options.items():
        if value != BUILD_DEFAULTS[key]:
            out["workspace" if key == "workspace_gb" else key] = str(value) if isinstance(value, Path) else value
    return out


def build_engine(onnx_path: str | Path, out: str | Path, precision: str = "fp16", *, workspace_gb: float = 1.0,
                 timing_cache: Path | None = None, dla_core: int | None = None, opt_level: int = 3,
                 max_batch: int = 1, calib_dir: Path | None = None, force: bool = False,
                 verbose: bool = False) -> EngineMeta:
    """Build a serialized engine from an edgeseg ONNX; the check gate runs first."""
    onnx_path, out = Path(onnx_path), Path(out)
    if precision not in PRECISIONS:
        raise EdgesegError(f"--precision {precision!r}: choose fp32, fp16 or int8")
    if not onnx_path.exists():
        raise EdgesegError("no such file; check the path", onnx_path)
    if dla_core is not None and dla_core < 0:
        raise EdgesegError(f"--dla-core {dla_core}: DLA cores are numbered from 0")
    if dla_core is not None and precision == "fp32":
        raise EdgesegError("DLA runs FP16 and INT8 only (every layer would fall back to the GPU): build with "
                           "--precision fp16 or int8, or leave out --dla-core")
    if max_batch < 1:
        raise EdgesegError(f"--max-batch {max_batch} must be at least 1")
    check_writable(out, force)
    validate_for_build(onnx_path, precision, calib_dir)  # before TensorRT: the gate works on any machine
    trt = import_tensorrt()
    system = system_key()
    has_flags = hasattr(trt.BuilderFlag, "FP16")  # TensorRT 10; 11 removed the precision flags
    strongly_typed = not has_flags
    with tempfile.TemporaryDirectory(prefix="edgeseg-trt-") as tmp:
        parse_path, calib_sha = prepare_onnx(onnx_path, precision, strongly_typed, Path(tmp), calib_dir)
        logger = trt.Logger(trt.Logger.VERBOSE if verbose else trt.Logger.WARNING)
        builder = trt.Builder(logger)
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if strongly_typed else 0
        network = builder.create_network(flags)
        parser = trt.OnnxParser(network, logger)
        if not parser.parse_from_file(str(parse_path)):
            errors = [str(parser.get_error(i).desc()) for i in range(parser.num_errors)]
            raise EdgesegError("TensorRT could not parse the model: " + "; ".join(errors[:3]), onnx_path)
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
        config.builder_optimization_level = opt_level
        if has_flags and precision in ("fp16", "int8"):
            config.set_flag(trt.BuilderFlag.FP16)
        if has_flags and precision == "int8":
            config.set_flag(trt.BuilderFlag.INT8)
        if dla_core is not None:
            if builder.num_DLA_cores <= dla_core:
                raise EdgesegError(f"--dla-core {dla_core}: this device has {builder.num_DLA_cores} DLA core(s)")
            config.default_device_type = trt.DeviceType.DLA
            config.DLA_core = dla_core
            config.set_flag(trt.BuilderFlag.GPU_FALLBACK)
        inp = network.get_input(0)
        shape = list(inp.shape)
        if shape[0] == -1:
            profile = builder.create_optimization_profile()
            fixed = shape[1:]
            profile.set_shape(inp.name, (1, *fixed), (max_batch, *fixed), (max_batch, *fixed))
            config.add_optimization_profile(profile)
            shape[0] = max_batch
        cache = None
        if timing_cache is not None:
            blob = timing_cache.read_bytes() if timing_cache.exists() else b""
            cache = config.create_timing_cache(blob)
            if not config.set_timing_cache(cache, ignore_mismatch=False):
                raise EdgesegError("TensorRT refused this timing cache (recorded on another GPU or TensorRT "
                                   "version); give another --timing-cache file or delete this one", timing_cache)
        plan = builder.build_serialized_network(network, config)
        if plan is None:
            raise EdgesegError("TensorRT failed to build the engine (see the log above; --verbose shows more)",
                               onnx_path)
        atomic_write(out, lambda p: p.write_bytes(memoryview(plan)), force=force)
        if cache is not None:
            atomic_write(timing_cache, lambda p: p.write_bytes(memoryview(config.get_timing_cache().serialize())),
                         force=True)
    props = _onnx_props(onnx_path)
    meta = EngineMeta(tensorrt=system["tensorrt"], gpu=system["gpu"], compute_capability=system["compute_capability"],
                      precision=precision, input_shape=shape, onnx_sha256=sha256_file(onnx_path),
                      source_onnx=str(onnx_path), calibration_sha256=calib_sha, l4t=l4t_release(),
                      model_meta=json.loads(props.get("edgeseg_meta", "{}")),
                      build_options=build_options(workspace_gb=workspace_gb, timing_cache=timing_cache,
                                                  dla_core=dla_core, opt_level=opt_level, max_batch=max_batch,
                                                  calib=calib_dir))
    meta.save(out)
    return meta
