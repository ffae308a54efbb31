"""TensorRT engines: build (FP32/FP16/INT8) with the metadata beside the engine, and a cache that knows
staleness. Loading and running an engine is the device runtime's (edgeseg.runtime.backends.tensorrt).

Written against the TensorRT 10 and 11 Python APIs (see ../shared/notes/tensorrt-api.md):
- TensorRT 10: weakly typed network with the FP16 / INT8 builder flags (INT8 from Q/DQ nodes);
- TensorRT 11: no precision flags and no calibrator: a strongly typed network, FP16 from an
  FP16-converted ONNX (edgeseg.runtime.backends.fp16, checked with ONNX Runtime first), INT8 from Q/DQ nodes.
``tensorrt`` and ``cuda-python`` are imported lazily: everything else here runs without a GPU.

No layer precision constraints are set: a weakly typed build may run any layer in FP16 or INT8,
and the exported unpool (a comparison tournament per 2x2 window, see edgeseg.compile.export) keeps
exactly one winner per window whatever precision TensorRT picks for its comparisons.
"""

from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path

from edgeseg.errors import EdgesegError
from edgeseg.files import atomic_write, cache_root, check_writable, sha256_file
from edgeseg.runtime.backends.cuda import import_tensorrt, system_key
from edgeseg.runtime.backends.engine_meta import EngineMeta
from edgeseg.runtime.device import l4t_release

PRECISIONS = ("fp32", "fp16", "int8")


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
    from edgeseg.compile.check import check

    problems = check(onnx_path, "tensorrt")
    if problems:
        listed = "; ".join(str(p) for p in problems[:5])
        raise EdgesegError(f"edgeseg check --target tensorrt found {len(problems)} problem(s): {listed}", onnx_path)
    quantized = _onnx_props(onnx_path).get("precision", "fp32").startswith("int8")
    if calib_dir is not None and (precision != "int8" or quantized):  # refused, not ignored
        raise EdgesegError("--calib quantizes an FP32 model on the way to --precision int8" + (
            ": this one is quantized already (its ranges are in it); leave --calib out" if quantized else
            f", and this build is {precision}: add --precision int8 or leave --calib out"), onnx_path)
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
        from edgeseg.compile.quantize import QuantizeOptions, quantize

        q = workdir / "int8-tensorrt.onnx"
        rep = quantize(onnx_path, q, QuantizeOptions(target="tensorrt"), calib_dir=calib_dir)
        onnx_path, calib_sha = q, rep.calibration["sha256"]
        validate_for_build(onnx_path, precision, None)
    if precision == "fp16" and strongly_typed:
        from edgeseg.runtime.backends.fp16 import to_fp16

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
