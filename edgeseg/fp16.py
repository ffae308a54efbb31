"""FP32 -> FP16 ONNX with FP32 inputs and outputs, for TensorRT's strongly typed networks (TensorRT 11
has no FP16 builder flag). A plain graph rewrite, so it runs and is checked on any machine:
float32 initializers become float16 (Resize scales stay float32, as the op requires), a Cast
follows each float input and precedes each float output.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

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
            raise ValueError(f"initializer {t.name} exceeds the FP16 range; build this model in FP32")
        g.initializer[i].CopyFrom(numpy_helper.from_array(a.astype(np.float16), t.name))
    for node in g.node:
        for a in node.attribute:
            if a.name == "to" and node.op_type == "Cast" and a.i == TensorProto.FLOAT:
                a.i = TensorProto.FLOAT16
    casts_in = []
    for inp in g.input:
        if inp.type.tensor_type.elem_type != TensorProto.FLOAT:
            continue
        half = f"{inp.name}_fp16"
        for node in g.node:
            node.input[:] = [half if x == inp.name else x for x in node.input]
        casts_in.append(helper.make_node("Cast", [inp.name], [half], name=f"{inp.name}/to_fp16",
                                         to=TensorProto.FLOAT16))
    for out in g.output:
        if out.type.tensor_type.elem_type != TensorProto.FLOAT:
            continue
        half = f"{out.name}_fp16"
        for node in g.node:
            node.output[:] = [half if x == out.name else x for x in node.output]
            node.input[:] = [half if x == out.name else x for x in node.input]
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
