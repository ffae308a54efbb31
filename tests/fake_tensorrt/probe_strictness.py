"""Shows that the fake refuses what the real bindings refuse (run inside a prepared environment).

Prints {case: refused?} as JSON; each case is a mistake that would fail on a Jetson. Control calls
made on the way (correct usage) must pass, or the script exits non-zero.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from fake import install

trt = install()
from cuda.bindings import runtime as rt  # noqa: E402 - the fake, once installed

MODEL = Path(__file__).resolve().parents[2] / "models" / "segnet_dsc.onnx"
logger = trt.Logger(trt.Logger.WARNING)
builder = trt.Builder(logger)
network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
parser = trt.OnnxParser(network, logger)
assert parser.parse_from_file(str(MODEL))
config = builder.create_builder_config()
config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, 1 << 20)
cache = config.create_timing_cache(b"")
assert config.set_timing_cache(cache, ignore_mismatch=False)
engine = trt.Runtime(logger).deserialize_cuda_engine(builder.build_serialized_network(network, config))
context = engine.create_execution_context()
stream = rt.cudaStreamCreate()[1]


def refused(fn) -> bool:
    try:
        fn()
    except (AttributeError, TypeError):
        return True
    return False


cases = {
    "TensorRT 8 workspace property": lambda: setattr(config, "max_workspace_size", 1 << 20),
    "TensorRT 8 build_engine": lambda: builder.build_engine(network, config),
    "an int for a BuilderFlag": lambda: config.set_flag(0),
    "execute_async_v3 with a wrong keyword": lambda: context.execute_async_v3(stream=int(stream)),
    "execute_v2 bindings list (TensorRT 8)": lambda: context.execute_async_v2([0, 0], int(stream)),
    "set_timing_cache without ignore_mismatch": lambda: config.set_timing_cache(cache),
    "writing the read-only num_DLA_cores": lambda: setattr(builder, "num_DLA_cores", 2),
    "a string for a tensor address": lambda: context.set_tensor_address("input", "0x0"),
    "cudaMemcpyAsync without a stream": lambda: rt.cudaMemcpyAsync(0, 0, 0, rt.cudaMemcpyKind.cudaMemcpyHostToDevice),
    "a cuda name that does not exist": lambda: rt.cudaMallocPitchedHostThing(16),
}
if not hasattr(trt.BuilderFlag, "FP16"):  # TensorRT 11
    cases["TensorRT 10 FP16 flag on 11"] = lambda: config.set_flag(trt.BuilderFlag.FP16)
    cases["TensorRT 10 calibrator on 11"] = lambda: setattr(config, "int8_calibrator", None)
else:
    config.set_flag(trt.BuilderFlag.FP16)  # control: valid on 10.x
json.dump({k: refused(v) for k, v in cases.items()}, sys.stdout)
