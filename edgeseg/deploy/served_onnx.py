"""The ONNX a server runs: any edgeseg ONNX with its batch dimension opened (Triton's dynamic batching,
DeepStream's batched streams) and, for servers that take them, uint8 pixels in (a client sends a
quarter of the float tensor's bytes).

The uint8 front (Transpose, Cast, Div by 255) computes exactly :func:`edgeseg.runtime.images.to_tensor`
for the [0, 1] value range (float32 division by 255 rounds as NumPy's scaling does, checked on all 256
values by the tests); the written file is run once at batch 3 against the original at batch 1.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgeseg.errors import EdgesegError
from edgeseg.runtime.backends.base import inspect_onnx, meta_from_props
from edgeseg.runtime.images import to_tensor
from edgeseg.runtime.meta import ModelMeta

PIXELS_INPUT = "image"  # uint8 N x H x W x 3, in the model's colour order


def served_onnx(path: Path, pixels: bool) -> tuple[bytes, ModelMeta]:
    """``path`` with a dynamic batch and, with ``pixels``, the uint8 input :data:`PIXELS_INPUT`;
    checked against ``path`` before it is returned (serialized)."""
    import onnx
    from onnx import TensorProto, helper

    facts = inspect_onnx(path)
    meta = meta_from_props(facts.props, facts.input_shape, path)
    model = onnx.load(str(path))
    graph = model.graph
    for value in (*graph.input, *graph.output):
        dim = value.type.tensor_type.shape.dim[0]
        dim.Clear()
        dim.dim_param = "batch"
    del graph.value_info[:]  # shapes inferred at batch 1 would pin it again
    if pixels:
        lo, hi = meta.value_range
        h, w = meta.input_size
        name = graph.input[0].name
        front = [helper.make_node("Transpose", [PIXELS_INPUT], ["served_nchw"], perm=[0, 3, 1, 2]),
                 helper.make_node("Cast", ["served_nchw"], ["served_float"], to=TensorProto.FLOAT)]
        if (lo, hi) == (0.0, 1.0):
            graph.initializer.append(helper.make_tensor("served_255", TensorProto.FLOAT, [], [255.0]))
            front.append(helper.make_node("Div", ["served_float", "served_255"], [name]))
        else:  # a model of another value range: within a rounding of to_tensor, not bit for bit
            graph.initializer.extend([helper.make_tensor("served_scale", TensorProto.FLOAT, [], [(hi - lo) / 255]),
                                      helper.make_tensor("served_low", TensorProto.FLOAT, [], [lo])])
            front += [helper.make_node("Mul", ["served_float", "served_scale"], ["served_scaled"]),
                      helper.make_node("Add", ["served_scaled", "served_low"], [name])]
        graph.ClearField("input")
        graph.input.append(helper.make_tensor_value_info(PIXELS_INPUT, TensorProto.UINT8, ["batch", h, w, 3]))
        for node in reversed(front):
            graph.node.insert(0, node)
    data = model.SerializeToString()
    _check(path, data, meta, pixels)
    return data, meta


def _check(path: Path, data: bytes, meta: ModelMeta, pixels: bool) -> None:
    """Three images at once through the served model against each alone through the original."""
    from edgeseg.runtime.backends.onnxruntime import create_session

    h, w = meta.input_size
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (3, h, w, 3), dtype=np.uint8)
    x = to_tensor(images, meta)
    original = create_session(path, threads=1)
    try:
        served = create_session(data, threads=1)
        got = served.run(None, {served.get_inputs()[0].name: images if pixels else x})[0]
    except Exception as e:  # ONNX Runtime's own exception types
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise EdgesegError(f"its graph does not take a batch of 3 ({first}); export it again with edgeseg export "
                           "--dynamic-batch", path) from None
    name = original.get_inputs()[0].name
    want = np.concatenate([original.run(None, {name: x[i:i + 1]})[0] for i in range(3)])
    if got.shape != want.shape or not np.allclose(got, want, rtol=1e-4, atol=1e-4):
        raise EdgesegError("with its batch dimension opened it computes other values than at batch 1; export it "
                           "again with edgeseg export --dynamic-batch", path)

