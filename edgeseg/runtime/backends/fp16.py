"""FP32 -> FP16 ONNX with FP32 inputs and outputs, for TensorRT's strongly typed networks (TensorRT 11
has no FP16 builder flag). A plain graph rewrite, so it runs and is checked on any machine:
float32 initializers become float16 (Resize scales stay float32, as the op requires), a Cast
follows each float input and precedes each float output.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edgeseg.errors import EdgesegError

FP16_MAX = 65504.0


def to_fp16(model: onnx.ModelProto) -> onnx.ModelProto:
    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = m.graph
    keep_fp32 = {n.input[2] for n in g.node if n.op_type == "Resize" and len(n.input) > 2 and n.input[2]}
    for i, t in enumerate(g.initializer):
        if t.data_type != TensorProto.FLOAT or t.name in keep_fp32:
            continue
        a = numpy_helper.to_array(t)
        if np.abs(a).max(initial=0.0) > FP16_MAX:
            raise EdgesegError(f"initializer {t.name} exceeds the FP16 range; build this model with --precision fp32")
        g.initializer[i].CopyFrom(numpy_helper.from_array(a.astype(np.float16), t.name))
    for node in g.node:
        for a in node.attribute:
            if a.name == "to" and node.op_type == "Cast" and a.i == TensorProto.FLOAT:
                a.i = TensorProto.FLOAT16
    casts_in = []
    for inp in (v for v in g.input if v.type.tensor_type.elem_type == TensorProto.FLOAT):
        half = _rename(g, inp.name)
        casts_in.append(helper.make_node("Cast", [inp.name], [half], name=f"{inp.name}/to_fp16",
                                         to=TensorProto.FLOAT16))
    for out in (v for v in g.output if v.type.tensor_type.elem_type == TensorProto.FLOAT):
        half = _rename(g, out.name)
        g.node.append(helper.make_node("Cast", [half], [out.name], name=f"{out.name}/to_fp32", to=TensorProto.FLOAT))
    nodes = casts_in + list(g.node)
    del g.node[:]
    g.node.extend(nodes)
    del g.value_info[:]
    for p in m.metadata_props:
        if p.key == "precision":
            p.value = "fp16"
    onnx.checker.check_model(m)
    return m


def _rename(g: onnx.GraphProto, name: str) -> str:
    """Point every node's use of tensor ``name`` (as input or output) at ``name_fp16``; return that name."""
    half = f"{name}_fp16"
    for node in g.node:
        node.input[:] = [half if x == name else x for x in node.input]
        node.output[:] = [half if x == name else x for x in node.output]
    return half
