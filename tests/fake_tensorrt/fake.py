"""A fake TensorRT and CUDA runtime held to the real API of the installed bindings.

Every class edgeseg touches is a :class:`Strict` proxy named after the real bindings class: an
attribute the real class lacks raises ``AttributeError``, a read-only property cannot be set, and
every call is checked against the real method's signature as the bindings print it (argument names,
count, keywords, and the types pybind11 would convert: enums, ints, bools, strings, buffers and the
bindings' own classes). ``cuda.bindings.runtime`` is held the same way through
``inspect.signature``. Only after a call passes does the fake do the work, on the CPU:

- ``build_serialized_network`` returns a plan that embeds the parsed ONNX and what was configured;
- ``deserialize_cuda_engine`` reads it back; ``execute_async_v3`` reads the input from the address
  that was set, runs the ONNX with ONNX Runtime and writes the output to the output's address;
- device memory is host memory, so copies are ``memmove`` and results are real.

Everything configured is written as JSON to ``$FAKE_TRT_LOG`` at exit, for the tests to assert on.
``$FAKE_TRT_DLA_CORES`` sets how many DLA cores the fake builder reports (default 0);
``$FAKE_TRT_NO_CONTEXT`` makes ``create_execution_context`` fail as on a GPU out of memory, and a
timing cache starting with ``other-gpu`` is refused as one recorded on another device.

    python tests/fake_tensorrt/fake.py build m.onnx -o m.engine     # edgeseg's CLI on the fake
"""

from __future__ import annotations

import atexit
import ctypes
import inspect
import json
import os
import re
import sys
import types
from pathlib import Path

import numpy as np

LOG: dict = {"calls": [], "sets": [], "builds": [], "executions": 0, "batches": []}
_SIG = re.compile(r"^(?:\d+\. )?(\w+)\((.*)\)(?: -> (.+))?$")


def _split_params(text: str) -> list[str]:
    """Split a pybind11 parameter list on top-level commas (defaults may hold brackets)."""
    parts, depth, cur = [], 0, ""
    for ch in text:
        if ch in "([{<":
            depth += 1
        elif ch in ")]}>":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(cur.strip())
            cur = ""
        else:
            cur += ch
    if cur.strip():
        parts.append(cur.strip())
    return parts


def signatures(doc: str | None, name: str) -> list[list[tuple[str, str, bool]]]:
    """(name, annotation, has_default) per parameter, without ``self``, for each overload in a pybind11
    docstring."""
    out = []
    for line in (doc or "").splitlines():
        m = _SIG.match(line.strip())
        if not m or m.group(1) != name or m.group(2) == "*args, **kwargs":
            continue
        params = []
        for p in _split_params(m.group(2)):
            pname, _, rest = p.partition(":")
            ann, _, default = rest.partition("=")
            params.append((pname.strip(), ann.strip(), bool(default.strip())))
        out.append(params[1:] if params and params[0][0] == "self" else params)
    return out


class Strict:
    """A stand-in for one real bindings class: the real class decides what exists and how it is called."""

    def __init__(self, real_cls: type, impl: object) -> None:
        object.__setattr__(self, "_real", real_cls)
        object.__setattr__(self, "_impl", impl)

    def __getattr__(self, name: str):
        real = object.__getattribute__(self, "_real")
        impl = object.__getattribute__(self, "_impl")
        attr = inspect.getattr_static(real, name, None) if not name.startswith("__") else None
        if attr is None:
            raise AttributeError(f"TensorRT {TRT.__version__}: {real.__name__} has no attribute {name!r}")
        LOG["calls"].append(f"{real.__name__}.{name}")
        if isinstance(attr, property):
            return getattr(impl, name)
        if not hasattr(impl, name):
            raise NotImplementedError(f"the fake has no behaviour for {real.__name__}.{name}")
        return checked(getattr(real, name), name, f"{real.__name__}.{name}", getattr(impl, name))

    def __setattr__(self, name: str, value) -> None:
        real = object.__getattribute__(self, "_real")
        attr = inspect.getattr_static(real, name, None)
        if not isinstance(attr, property):
            raise AttributeError(f"TensorRT {TRT.__version__}: {real.__name__} has no property {name!r}")
        if attr.fset is None:
            raise AttributeError(f"TensorRT {TRT.__version__}: {real.__name__}.{name} is read-only")
        LOG["sets"].append([f"{real.__name__}.{name}", _jsonable(value)])
        setattr(object.__getattribute__(self, "_impl"), name, value)


def _jsonable(v):
    if isinstance(v, (bool, int, float, str)) or v is None:
        return v
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    return str(v)


def _conforms(value, ann: str) -> bool:
    """Whether pybind11 would accept ``value`` for a parameter annotated ``ann``."""
    short = ann.rsplit(".", 1)[-1]
    if ann in ("int", "typing.SupportsInt"):
        return isinstance(value, (int, np.integer)) and not isinstance(value, bool)
    if ann in ("float", "typing.SupportsFloat"):
        return isinstance(value, (int, float))
    if ann == "bool":
        return isinstance(value, (bool, np.bool_))
    if ann == "str":
        return isinstance(value, str)
    if ann in ("buffer", "typing_extensions.Buffer", "collections.abc.Buffer"):
        try:
            memoryview(value)
        except TypeError:
            return False
        return True
    real = getattr(TRT, short, None) if ann.startswith("tensorrt") else None
    if real is None:
        return True
    if short == "Dims" or short.startswith("Dims"):
        return isinstance(value, (tuple, list, TRT.Dims)) and all(isinstance(d, int) for d in value)
    if isinstance(value, Strict):
        return issubclass(object.__getattribute__(value, "_real"), real)
    return isinstance(value, real)


def checked(real_fn, name: str, qualname: str, impl):
    """``impl`` behind the real function's signature(s): refuses what every overload would refuse."""
    overloads = signatures(getattr(real_fn, "__doc__", None), name)
    if not overloads:
        raise AssertionError(f"no signature found for {qualname} in the bindings' docstring")

    def call(*args, **kwargs):
        reasons = []
        for params in overloads:
            why = _bind(params, args, kwargs)
            if why is None:
                return impl(*args, **kwargs)
            reasons.append(why)
        raise TypeError(f"TensorRT {TRT.__version__}: {qualname}{tuple(args)!r} {kwargs!r}: " + "; ".join(reasons))

    return call


def _bind(params: list[tuple[str, str, bool]], args: tuple, kwargs: dict) -> str | None:
    if len(args) > len(params):
        return f"takes {len(params)} arguments, {len(args)} given"
    given = dict(zip([p[0] for p in params], args, strict=False))
    for k, v in kwargs.items():
        if k not in [p[0] for p in params] or k in given or re.fullmatch(r"arg\d+", k):
            return f"no keyword {k!r}"
        given[k] = v
    for pname, ann, has_default in params:
        if pname not in given:
            if not has_default:
                return f"missing {pname!r}"
        elif not _conforms(given[pname], ann):
            return f"{pname}={given[pname]!r} is not {ann}"
    return None


# --- behaviour -------------------------------------------------------------------------------------

_ONNX_TO_TRT = {1: "FLOAT", 10: "HALF", 6: "INT32", 7: "INT64", 3: "INT8", 2: "UINT8", 9: "BOOL"}
_PLAN_MAGIC = b"FAKETRTPLAN\0"


def _dims(shape) -> tuple:
    return tuple(int(d) for d in shape)


def _onnx_shape(value_info) -> tuple:
    return tuple(d.dim_value if d.HasField("dim_value") else -1 for d in value_info.type.tensor_type.shape.dim)


class TensorImpl:
    def __init__(self, name: str, shape: tuple, dtype) -> None:
        self.name, self.shape, self.dtype = name, shape, dtype


class NetworkImpl:
    def __init__(self, flags: int) -> None:
        self.flags = flags
        self.model = None

    @property
    def num_inputs(self) -> int:
        return len(self.model.graph.input)

    @property
    def num_outputs(self) -> int:
        return len(self.model.graph.output)

    def _tensor(self, vi):
        return Strict(TRT.ITensor, TensorImpl(vi.name, _onnx_shape(vi),
                                              getattr(TRT.DataType, _ONNX_TO_TRT[vi.type.tensor_type.elem_type])))

    def get_input(self, index: int):
        return self._tensor(self.model.graph.input[index])

    def get_output(self, index: int):
        return self._tensor(self.model.graph.output[index])


class ParserImpl:
    def __init__(self, network: Strict, logger) -> None:
        self.network = object.__getattribute__(network, "_impl")
        self.num_errors = 0

    def parse_from_file(self, model: str) -> bool:
        import onnx

        m = onnx.load(model)
        self.network.model = m
        self.network.onnx = m.SerializeToString()
        return True


class HostMemory(bytes):
    """IHostMemory: bytes underneath (the buffer protocol), only the real class's names on top."""

    def __getattribute__(self, name: str):
        if not name.startswith("__") and inspect.getattr_static(TRT.IHostMemory, name, None) is None:
            raise AttributeError(f"TensorRT {TRT.__version__}: IHostMemory has no attribute {name!r}")
        return bytes.__getattribute__(self, name)

    @property
    def nbytes(self) -> int:
        return len(self)


class TimingCacheImpl:
    def __init__(self, blob: bytes) -> None:
        self.blob = bytes(blob)

    def serialize(self):
        return HostMemory(self.blob + b"+build")


class ProfileImpl:
    def __init__(self) -> None:
        self.shapes: dict = {}

    def set_shape(self, input: str, min, opt, max) -> None:
        self.shapes[input] = [list(min), list(opt), list(max)]


class ConfigImpl:
    def __init__(self) -> None:
        self.flags: list[str] = []
        self.pools: dict = {}
        self.profiles: list = []
        self.builder_optimization_level = 3
        self.default_device_type = TRT.DeviceType.GPU
        self.DLA_core = -1
        self.cache = None

    def set_flag(self, flag) -> None:
        self.flags.append(flag.name)

    def set_memory_pool_limit(self, pool, pool_size: int) -> None:
        self.pools[pool.name] = pool_size

    def add_optimization_profile(self, profile) -> int:
        self.profiles.append(object.__getattribute__(profile, "_impl").shapes)
        return len(self.profiles) - 1

    def create_timing_cache(self, serialized_timing_cache):
        return Strict(TRT.ITimingCache, TimingCacheImpl(bytes(memoryview(serialized_timing_cache))))

    def set_timing_cache(self, cache, ignore_mismatch: bool) -> bool:
        if object.__getattribute__(cache, "_impl").blob.startswith(b"other-gpu") and not ignore_mismatch:
            return False  # TensorRT: the cache's header names another device
        self.cache = cache
        return True

    def get_timing_cache(self):
        return self.cache


class BuilderImpl:
    def __init__(self, logger) -> None:
        self.num_DLA_cores = int(os.environ.get("FAKE_TRT_DLA_CORES", "0"))

    def create_network(self, flags: int = 0):
        return Strict(TRT.INetworkDefinition, NetworkImpl(flags))

    def create_builder_config(self):
        return Strict(TRT.IBuilderConfig, ConfigImpl())

    def create_optimization_profile(self):
        return Strict(TRT.IOptimizationProfile, ProfileImpl())

    def build_serialized_network(self, network, config):
        net, cfg = object.__getattribute__(network, "_impl"), object.__getattribute__(config, "_impl")
        shape = _onnx_shape(net.model.graph.input[0])
        if -1 in shape and not cfg.profiles:
            return None  # TensorRT: "Network has dynamic or shape inputs, but no optimization profile"
        flag_names = [n for n, m in TRT.NetworkDefinitionCreationFlag.__members__.items() if net.flags & (1 << int(m))]
        record = {"network_flags": flag_names, "builder_flags": cfg.flags, "pools": cfg.pools,
                  "profiles": cfg.profiles, "opt_level": cfg.builder_optimization_level,
                  "device": cfg.default_device_type.name, "dla_core": cfg.DLA_core,
                  "timing_cache": cfg.cache is not None,
                  "initializer_types": sorted({t.data_type for t in net.model.graph.initializer}),
                  "ops": sorted({n.op_type for n in net.model.graph.node})}
        LOG["builds"].append(record)
        header = json.dumps({**record, "shape": shape}).encode()
        return HostMemory(_PLAN_MAGIC + len(header).to_bytes(8, "little") + header + net.onnx)


class EngineImpl:
    def __init__(self, header: dict, onnx_bytes: bytes) -> None:
        import onnx
        import onnxruntime as ort

        self.model = onnx.load_from_string(onnx_bytes)
        self.session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
        self.header = header
        self.io = {vi.name: (TRT.TensorIOMode.INPUT, vi) for vi in self.model.graph.input}
        self.io.update({vi.name: (TRT.TensorIOMode.OUTPUT, vi) for vi in self.model.graph.output})
        self.num_io_tensors = len(self.io)

    def get_tensor_name(self, index: int) -> str:
        return list(self.io)[index]

    def get_tensor_mode(self, name: str):
        return self.io[name][0]

    def get_tensor_shape(self, name: str):
        return TRT.Dims(_onnx_shape(self.io[name][1]))

    def get_tensor_dtype(self, name: str):
        return getattr(TRT.DataType, _ONNX_TO_TRT[self.io[name][1].type.tensor_type.elem_type])

    def get_tensor_profile_shape(self, name: str, profile_index: int):
        return [TRT.Dims(d) for d in self.header["profiles"][profile_index][name]]

    def create_execution_context(self, *args):
        if os.environ.get("FAKE_TRT_NO_CONTEXT"):
            return None  # what TensorRT returns when the GPU has no memory left for the context
        return Strict(TRT.IExecutionContext, ContextImpl(self))


class ContextImpl:
    def __init__(self, engine: EngineImpl) -> None:
        self.engine = engine
        self.shapes = {n: _onnx_shape(vi) for n, (_, vi) in engine.io.items()}
        self.addresses: dict[str, int] = {}

    def set_input_shape(self, name: str, shape) -> bool:
        lo, _, hi = self.engine.header["profiles"][0][name]
        if not all(a <= d <= b for a, d, b in zip(lo, _dims(shape), hi, strict=True)):
            return False  # outside the optimization profile: TensorRT logs an error and returns False
        self.shapes[name] = _dims(shape)
        for n, (mode, vi) in self.engine.io.items():
            if mode == TRT.TensorIOMode.OUTPUT and _onnx_shape(vi)[0] == -1:
                self.shapes[n] = (self.shapes[name][0], *_onnx_shape(vi)[1:])
        return True

    def get_tensor_shape(self, name: str):
        return TRT.Dims(self.shapes[name])

    def set_tensor_address(self, name: str, memory: int) -> bool:
        self.addresses[name] = memory
        return True

    def _array(self, name: str) -> np.ndarray:
        shape = self.shapes[name]
        if min(shape) < 0:
            raise AssertionError(f"{name} still has a dynamic shape {shape}: set_input_shape was not called")
        dtype = np.dtype(TRT.nptype(self.engine.get_tensor_dtype(name)))
        buf = (ctypes.c_char * (int(np.prod(shape)) * dtype.itemsize)).from_address(self.addresses[name])
        return np.frombuffer(buf, dtype).reshape(shape)

    def execute_async_v3(self, stream_handle: int) -> bool:
        missing = [n for n in self.engine.io if n not in self.addresses]
        if missing:
            raise AssertionError(f"no tensor address for {missing}")
        inputs = {n: self._array(n).copy() for n, (m, _) in self.engine.io.items() if m == TRT.TensorIOMode.INPUT}
        outputs = self.engine.session.run(None, inputs)
        names = [o.name for o in self.engine.session.get_outputs()]
        for n, value in zip(names, outputs, strict=True):
            out = self._array(n)
            out.setflags(write=True)
            np.copyto(out, value, casting="same_kind")
        LOG["executions"] += 1
        LOG["batches"].append(next(iter(inputs.values())).shape[0])
        return True


class RuntimeImpl:
    def __init__(self, logger) -> None:
        self.logger = logger

    def deserialize_cuda_engine(self, serialized_engine):
        data = bytes(memoryview(serialized_engine))
        if not data.startswith(_PLAN_MAGIC):
            return None  # TensorRT logs the reason and returns None for a file that is not a plan
        n = int.from_bytes(data[len(_PLAN_MAGIC):len(_PLAN_MAGIC) + 8], "little")
        start = len(_PLAN_MAGIC) + 8
        return Strict(TRT.ICudaEngine, EngineImpl(json.loads(data[start:start + n]), data[start + n:]))


def _factory(real_cls: type, impl_cls):
    init = checked(real_cls.__init__, "__init__", f"{real_cls.__name__}.__init__", lambda *a, **k: None)

    def make(*args, **kwargs):
        init(*args, **kwargs)
        LOG["calls"].append(f"{real_cls.__name__}()")
        return Strict(real_cls, impl_cls(*args, **kwargs))

    return make


# --- the CUDA runtime ------------------------------------------------------------------------------

class CudaRuntime(types.ModuleType):
    """``cuda.bindings.runtime`` with host memory for device memory; names and arguments as the real one."""

    IMPLEMENTED = ("cudaGetDeviceCount", "cudaGetDeviceProperties", "cudaMalloc", "cudaMallocHost", "cudaFree",
                   "cudaFreeHost", "cudaMemcpyAsync", "cudaStreamCreate", "cudaStreamSynchronize",
                   "cudaStreamDestroy", "cudaGetErrorName", "cudaRuntimeGetVersion", "cudaDriverGetVersion")

    def __init__(self, real) -> None:
        super().__init__(real.__name__)
        self._real = real
        self._blocks: dict[int, ctypes.Array] = {}
        self._ok = real.cudaError_t.cudaSuccess

    def __getattr__(self, name: str):
        real = self._real
        attr = getattr(real, name)  # AttributeError for what this cuda-python lacks
        if not callable(attr) or isinstance(attr, type) or name not in self.IMPLEMENTED:
            if callable(attr) and not isinstance(attr, type):
                raise NotImplementedError(f"the fake CUDA runtime has no behaviour for {name}")
            return attr
        sig = inspect.signature(attr)
        impl = getattr(self, "_" + name)

        def call(*args, **kwargs):
            sig.bind(*args, **kwargs)
            return impl(*args, **kwargs)

        return call

    def _alloc(self, size: int) -> tuple:
        block = (ctypes.c_char * max(int(size), 1))()
        self._blocks[ctypes.addressof(block)] = block
        return self._ok, ctypes.addressof(block)

    _cudaMalloc = _cudaMallocHost = _alloc

    def _free(self, ptr) -> tuple:
        self._blocks.pop(int(ptr))
        return (self._ok,)

    _cudaFree = _cudaFreeHost = _free

    def _cudaMemcpyAsync(self, dst, src, count, kind, stream) -> tuple:
        assert isinstance(kind, self._real.cudaMemcpyKind), kind
        for p in (dst, src):
            if not any(a <= int(p) and int(p) + count <= a + len(b) for a, b in self._blocks.items()):
                raise AssertionError(f"copy of {count} bytes at {int(p):#x} runs outside every allocation")
        ctypes.memmove(int(dst), int(src), count)
        return (self._ok,)

    def _cudaStreamCreate(self) -> tuple:
        return self._ok, self._real.cudaStream_t(1)

    def _cudaStreamSynchronize(self, stream) -> tuple:
        return (self._ok,)

    _cudaStreamDestroy = _cudaStreamSynchronize

    def _cudaGetDeviceCount(self) -> tuple:
        return self._ok, 1

    def _cudaGetDeviceProperties(self, device) -> tuple:
        props = types.SimpleNamespace(name=b"Fake Orin (host memory)", major=8, minor=7,
                                      totalGlobalMem=8 << 30, multiProcessorCount=16)
        missing = [k for k in vars(props) if not hasattr(self._real.cudaDeviceProp, k)]
        assert not missing, f"cudaDeviceProp has no {missing}"
        return self._ok, props

    def _cudaGetErrorName(self, error) -> tuple:
        return self._real.cudaGetErrorName(error)

    def _cudaRuntimeGetVersion(self) -> tuple:
        return self._ok, 12060

    _cudaDriverGetVersion = _cudaRuntimeGetVersion


# --- installation ----------------------------------------------------------------------------------

TRT = None  # the real bindings module


def install() -> types.ModuleType:
    """Put the fakes where ``import tensorrt`` and ``from cuda.bindings import runtime`` find them."""
    global TRT
    import cuda.bindings
    import cuda.bindings.runtime as real_rt
    import tensorrt as real

    TRT = real
    fake = types.ModuleType("tensorrt")
    fake.__version__ = real.__version__
    makers = {"Builder": BuilderImpl, "Runtime": RuntimeImpl, "OnnxParser": ParserImpl}

    def module_getattr(name: str):
        if name in makers:
            return _factory(getattr(real, name), makers[name])
        return getattr(real, name)

    fake.__getattr__ = module_getattr
    sys.modules["tensorrt"] = fake
    rt = CudaRuntime(real_rt)
    sys.modules["cuda.bindings.runtime"] = rt
    cuda.bindings.runtime = rt
    if path := os.environ.get("FAKE_TRT_LOG"):
        atexit.register(lambda: Path(path).write_text(json.dumps(LOG, indent=1)))
    return fake


if __name__ == "__main__":
    install()
    from edgeseg.cli import main

    sys.argv = ["edgeseg", *sys.argv[1:]]
    main()
