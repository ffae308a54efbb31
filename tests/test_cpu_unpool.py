"""ONNX Runtime's load-time unpool rewrite: still bit-exact with MaxUnpool, applied where it should be."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from onnx import TensorProto, helper
from test_export import maxunpool_reference, tie_heavy, unpool_model

import edgeseg.compile.quantize as q
from edgeseg.runtime.backends.cpu_unpool import lower_unpools, nchwc_platform
from edgeseg.runtime.backends.onnxruntime import create_session
from edgeseg.runtime.backends.predictor import Predictor

needs_x86 = pytest.mark.skipif(not nchwc_platform(), reason="the rewrite only applies on x86 (NCHWc kernels)")


# 32 channels run in ONNX Runtime's NCHWc kernels on x86; 9 do not (not a multiple of the block).
@pytest.mark.parametrize(("channels", "seed"), [(32, 0), (32, 1), (9, 2), (9, 3)])
def test_rewritten_unpool_is_bit_exact_on_ties(channels, seed):
    n, h, w = 2, 16, 24
    model = unpool_model(n, channels, h, w)
    assert lower_unpools(model) == 1
    assert not {"GreaterOrEqual", "Where", "DepthToSpace"} & {node.op_type for node in model.graph.node}
    sess = create_session(model.SerializeToString(), threads=1)
    pre = tie_heavy((n, channels, h, w), seed)
    pre[:, 1, :4] = 1e-30  # tiny but normal values: their differences must not read as ties
    pre[:, 1, :4, 1::2] = 2e-30  # each window maximum sits after a value 1e-30 below it
    x = torch.rand(n, channels, h // 2, w // 2, generator=torch.Generator().manual_seed(seed)) + 0.1
    out = sess.run(None, {"pre": pre.numpy(), "x": x.numpy()})[0]
    assert np.array_equal(out, maxunpool_reference(pre, x).numpy())


@pytest.mark.parametrize("scale", [2.0**-101, 2.0**-60, 1e-30])
def test_rewrite_is_exact_down_to_its_stated_bound(scale):
    """Exact for values down to 2^-102 (module docstring): there, neighbours one ulp apart still
    differ by a normal float, so the flushed difference never fakes a tie."""
    n, c, h, w = 1, 16, 8, 8
    model = unpool_model(n, c, h, w)
    assert lower_unpools(model) == 1
    base = np.float32(scale)
    pre = np.full((n, c, h, w), base, np.float32)
    pre[..., 1::2, 1::2] = np.nextafter(base, np.float32(1))  # the last position is one ulp higher
    x = np.ones((n, c, h // 2, w // 2), np.float32)
    out = create_session(model.SerializeToString(), threads=1).run(None, {"pre": pre, "x": x})[0]
    assert np.array_equal(out, maxunpool_reference(torch.from_numpy(pre), torch.from_numpy(x)).numpy())


def test_graphs_of_another_shape_are_left_alone():
    model = unpool_model(1, 16, 8, 8)
    # Another consumer of an intermediate: rewriting would change what it sees.
    model.graph.output.append(helper.make_tensor_value_info("out/top", TensorProto.BOOL, [1, 16, 4, 4]))
    assert lower_unpools(model) == 0
    model = unpool_model(1, 16, 8, 8)  # windows compared in another order than the scan order
    b, c = (next(n for n in model.graph.node if n.name == f"out/{k}") for k in "bc")
    b.input[1], c.input[1] = c.input[1], b.input[1]
    assert lower_unpools(model) == 0
    assert lower_unpools(unpool_model(1, 16, 8, 8)) == 1


@needs_x86
@pytest.mark.parametrize("arch", ["segnet-dsc", "segnet"])
def test_onnxruntime_runs_the_rewrite_with_identical_logits(arch, exported):
    path = exported[arch][0]
    fast = Predictor.load(path, backend="onnxruntime", threads=1)
    plain = Predictor.load(path, backend="onnxruntime", threads=1, lower_unpool=False)
    assert fast.info.extra["unpool"] == "rewritten for NCHWc (4)"
    assert plain.info.extra["unpool"] == "as exported"
    x = np.concatenate([np.random.default_rng(0).random((1, 3, 64, 64), dtype=np.float32),
                        tie_heavy((1, 3, 64, 64), 0).numpy() / 2])
    for i in range(len(x)):
        assert np.array_equal(fast._backend(x[i:i + 1]), plain._backend(x[i:i + 1]))


@needs_x86
def test_int8_models_are_rewritten_too(exported, tmp_path):
    """The unpool stays float in TensorRT-target INT8 models (ONNX Runtime runs them in `edgeseg doctor`),
    so the rewrite applies there and changes no logit; the `cpu` target has no float unpool left."""
    from conftest import PETS37

    if not PETS37.is_dir():
        pytest.skip(f"dataset not found at {PETS37}")
    out = tmp_path / "int8.onnx"
    q.quantize(exported["segnet-dsc"][0], out, q.QuantizeOptions(num_images=16, target="tensorrt"), calib_dir=PETS37)
    fast = Predictor.load(out, backend="onnxruntime", threads=1)
    plain = Predictor.load(out, backend="onnxruntime", threads=1, lower_unpool=False)
    assert fast.info.extra["unpool"] == "rewritten for NCHWc (4)"
    x = np.random.default_rng(1).random((1, 3, 64, 64), dtype=np.float32)
    assert np.array_equal(fast._backend(x), plain._backend(x))
