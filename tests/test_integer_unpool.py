"""INT8 `cpu` target: pools and unpools on the quantized integers keep exactly the float graph's winners."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from test_export import maxunpool_reference, tie_heavy, unpool_model

import edgeseg.compile.quantize as q
from edgeseg.compile.integer_unpool import integer_pools
from edgeseg.runtime.backends.onnxruntime import create_session
from edgeseg.runtime.backends.predictor import Predictor

S_PRE, S_X = 0.05, 0.02  # the two tensors' quantization scales (zero points 0, as after a ReLU)


def quantized_unpool_model(n: int, c: int, h: int, w: int) -> onnx.ModelProto:
    """What ONNX Runtime's quantizer leaves around the export's pool and unpool: integer inputs
    ``pre_q`` and ``x_q`` dequantized, pooled and unpooled in float, requantized and dequantized
    for the next conv; outputs ``pooled`` and ``out``."""
    model = unpool_model(n, c, h, w)
    g = model.graph
    consts = {"s_pre": np.float32(S_PRE), "s_x": np.float32(S_X), "zp": np.uint8(0)}
    g.initializer.extend(numpy_helper.from_array(np.array(v), k) for k, v in consts.items())
    del g.input[:], g.output[:]
    g.input.extend([helper.make_tensor_value_info("pre_q", TensorProto.UINT8, [n, c, h, w]),
                    helper.make_tensor_value_info("x_q", TensorProto.UINT8, [n, c, h // 2, w // 2])])
    g.node.insert(0, helper.make_node("DequantizeLinear", ["pre_q", "s_pre", "zp"], ["pre"], name="pre"))
    g.node.insert(1, helper.make_node("DequantizeLinear", ["x_q", "s_x", "zp"], ["x"], name="x"))
    g.node.insert(2, helper.make_node("MaxPool", ["pre"], ["pool"], name="pool", kernel_shape=[2, 2], strides=[2, 2]))
    g.node.extend([
        helper.make_node("QuantizeLinear", ["pool", "s_pre", "zp"], ["pool_q"], name="pool_q"),
        helper.make_node("DequantizeLinear", ["pool_q", "s_pre", "zp"], ["pooled"], name="pooled"),
        helper.make_node("QuantizeLinear", ["out", "s_x", "zp"], ["out_q"], name="out_q"),
        helper.make_node("DequantizeLinear", ["out_q", "s_x", "zp"], ["out_f"], name="out_f"),
    ])
    g.output.extend([helper.make_tensor_value_info("pooled", TensorProto.FLOAT, None),
                     helper.make_tensor_value_info("out_f", TensorProto.FLOAT, None)])
    return model


@pytest.mark.parametrize(("channels", "seed"), [(16, 0), (9, 1), (32, 2)])
def test_integer_unpool_keeps_exactly_the_float_graphs_winners(channels, seed):
    n, h, w = 2, 16, 24
    float_islands = quantized_unpool_model(n, channels, h, w)
    integer, pools, unpools = integer_pools(quantized_unpool_model(n, channels, h, w))
    assert (pools, unpools) == (1, 1)
    ops = {node.op_type for node in integer.graph.node}
    assert not ops & {"Slice", "GreaterOrEqual", "Where", "DepthToSpace", "QuantizeLinear"}  # no float island
    pre_q = tie_heavy((n, channels, h, w), seed).to(torch.uint8)  # values 0..2: ties everywhere
    pre_q[:, 0] = torch.randint(0, 256, (n, h, w), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)
    x_q = torch.randint(1, 256, (n, channels, h // 2, w // 2), generator=torch.Generator().manual_seed(seed),
                        dtype=torch.uint8)
    feeds = {"pre_q": pre_q.numpy(), "x_q": x_q.numpy()}
    before = create_session(float_islands.SerializeToString(), threads=1).run(None, feeds)
    after = create_session(integer.SerializeToString(), threads=1).run(None, feeds)
    for a, b in zip(before, after, strict=True):
        assert a.dtype == b.dtype and np.array_equal(a, b)
    # and both are PyTorch's MaxUnpool of the dequantized values (the first maximum of a window wins)
    reference = maxunpool_reference(pre_q.float() * S_PRE, x_q.float() * np.float32(S_X))
    assert np.array_equal(after[1], reference.numpy())
    assert ((after[1] != 0).reshape(n, channels, h // 2, 2, w // 2, 2).sum((3, 5)) == 1).all()  # one winner


def test_pools_read_by_anything_else_stay_as_quantized():
    model = quantized_unpool_model(1, 8, 8, 8)
    model.graph.output.append(helper.make_tensor_value_info("pool", TensorProto.FLOAT, None))  # a float reader
    _, pools, unpools = integer_pools(model)
    assert (pools, unpools) == (0, 0)
    model = quantized_unpool_model(1, 8, 8, 8)
    next(t for t in model.graph.initializer if t.name == "zp").CopyFrom(numpy_helper.from_array(np.uint8(3), "zp"))
    _, pools, unpools = integer_pools(model)  # x's zero point 3: an integer 0 would not be a 0
    assert (pools, unpools) == (1, 0)


def test_cpu_int8_of_the_bundled_model_has_no_float_island(tmp_path, pets3):
    """All 4 pools and unpools run on integers, and the gate (which scores the written file) holds."""
    from conftest import REPO

    out = tmp_path / "cpu.onnx"
    r = q.quantize(REPO / "models" / "segnet_dsc.onnx", out, q.QuantizeOptions(),
                   calib_ranges=REPO / "models" / "segnet_dsc.calib.json", val=pets3, val_limit=6)
    assert r.passed and r.gate["drop_points"] <= 1.0
    m = onnx.load(str(out))
    info = json.loads({p.key: p.value for p in m.metadata_props}["quantization"])
    assert (info["integer_pools"], info["integer_unpools"]) == (4, 4)
    producer = {o: node for node in m.graph.node for o in node.output}
    for node in m.graph.node:
        if node.op_type in ("MaxPool", "Equal", "Mul"):
            assert producer[node.input[0]].op_type != "DequantizeLinear", node.name
    assert not {"GreaterOrEqual", "Where", "Slice", "Resize"} & {node.op_type for node in m.graph.node}
    # what makes it fast: ONNX Runtime's optimized graph keeps every layer channels-last, with one
    # Transpose after the input and one before the logits
    so = ort.SessionOptions()
    so.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(out), so, providers=["CPUExecutionProvider"])
    optimized = [node.op_type for node in onnx.load(so.optimized_model_filepath).graph.node]
    assert optimized.count("Transpose") == 2 and optimized.count("QLinearConv") == 40
    assert Predictor.load(out, backend="onnxruntime").info.extra["unpool"] == "on integers (4, in the file)"
    # the TensorRT target keeps the float form (TensorRT has no 8-bit Equal or Resize)
    trt = tmp_path / "trt.onnx"
    q.quantize(REPO / "models" / "segnet_dsc.onnx", trt, q.QuantizeOptions(target="tensorrt"),
               calib_ranges=REPO / "models" / "segnet_dsc.calib.json")
    assert sum(node.op_type == "GreaterOrEqual" for node in onnx.load(str(trt)).graph.node) == 12
