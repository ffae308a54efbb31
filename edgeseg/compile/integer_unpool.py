"""INT8 ``cpu`` target: the pools and unpools computed on the quantized integers (a quantize-time rewrite).

ONNX Runtime's QDQ quantization leaves every MaxPool and exported unpool reading the DequantizeLinear
of a quantized ReLU output: float islands between integer convolutions, each costing layout changes
and Q/DQ pairs (a third of the INT8 graph's time in ONNX Runtime, docs/benchmarks.md), and each one a
place where a runtime that picks its own float precision can move the unpool's comparisons
(OpenVINO bf16 beside INT8 layers once scored 0.40 mIoU). Dequantization is monotonic and one-to-one
(scale > 0), so comparing the integers is comparing their dequantized values: the rewrite keeps
exactly the winners of the float graph, with nothing left for a runtime to round::

    pooled = MaxPool(q)                                        # the encoder's pool, on the integers
    score  = Cast(Equal(q, pooled per window)) * priority      # priority 4 3 / 2 1: PyTorch's scan order
    winner = Cast(Equal(score, MaxPool(score) per window))     # only the first maximum of each window
    out    = winner * x_q per window                           # x's integers; zero point 0 keeps 0 exact

A pool's output keeps its input's scale and zero point, and so does an unpool's output that of the
``x`` it places: the convolution after each reads those integers directly instead of a re-quantized
copy. "Per window" is a broadcast over a channels-last (N, H/2, 2, W/2, 2, C) view (see
:func:`_unpool_nodes`), which ONNX Runtime runs without a single layout change: ONNX Runtime INT8 took
0.50x its FP32 time with this form, against 0.82x with nearest-Resize upsampling (its NHWC Resize is a
slow generic loop), 1.37x with the exported Slice/Where/DepthToSpace form on integers, and 1.15x with
the float islands (one interleaved run each, docs/benchmarks.md).

Only applied where it is exact by construction: per-tensor quantization, an ``x`` with zero point 0
(every ReLU output), static spatial sizes, and every consumer of a pooled or unpooled value a
QuantizeLinear feeding DequantizeLinears only. Anything else stays as quantized.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from edgeseg.runtime.backends.cpu_unpool import find_unpools

_ONNX_TYPE = {np.dtype(np.uint8): onnx.TensorProto.UINT8, np.dtype(np.int8): onnx.TensorProto.INT8}


@dataclass(frozen=True)
class _Quantized:
    q: str  # the integer tensor
    scale: str
    zero_point: str


def integer_pools(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int, int]:
    """Rewrite ``model`` (a QDQ model, in place): returns it with the counts of pools and unpools moved
    onto integers."""
    g = model.graph
    producer = {o: n for n in g.node for o in n.output}
    consumers: dict[str, list] = {}
    for n in g.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    graph_outputs = {o.name for o in g.output}
    inits = {t.name: numpy_helper.to_array(t) for t in g.initializer}

    def scalar(name: str) -> np.ndarray | None:
        v = inits.get(name)
        return v if v is not None and v.size == 1 else None

    def dequantized(name: str) -> _Quantized | None:
        """``name`` = DequantizeLinear(q) with a per-tensor 8-bit scale and zero point -> q and its params."""
        d = producer.get(name)
        if d is None or d.op_type != "DequantizeLinear" or len(d.input) != 3:
            return None
        s, zp = scalar(d.input[1]), scalar(d.input[2])
        if s is None or zp is None or zp.dtype not in _ONNX_TYPE or float(s.reshape(())) <= 0:
            return None
        return _Quantized(d.input[0], d.input[1], d.input[2])

    def requantization(node) -> bool:
        """A QuantizeLinear whose every reader is a DequantizeLinear."""
        readers = consumers.get(node.output[0], [])
        return (node.op_type == "QuantizeLinear" and node.output[0] not in graph_outputs and bool(readers)
                and all(d.op_type == "DequantizeLinear" for d in readers))

    shapes = _static_shapes(model)
    pools = {n.output[0]: n for n in g.node if n.op_type == "MaxPool" and len(n.output) == 1 and _is_2x2_pool(n)
             and dequantized(n.input[0]) is not None}
    candidates = []
    for u in find_unpools(g):
        pre = dequantized(u.pre)
        pool = next((p for p in pools.values() if p.input[0] == u.pre), None)
        x = dequantized(u.x) or (dequantized(pools[u.x].input[0]) if u.x in pools else None)
        readers = consumers.get(u.out, [])
        if (pre is not None and pool is not None and x is not None and u.pre in shapes and readers
                and u.out not in graph_outputs and all(requantization(r) for r in readers)
                and int(inits[x.zero_point].reshape(())) == 0):
            candidates.append((u, pre, x, pool))
    # A pool moves when each reader of its output is a requantization or a moving unpool; an unpool
    # moves when the pool of its ``pre`` moves, and so does its ``x`` where that is a pool's output.
    unpools, moved = candidates, {}
    while True:
        inside = {n.output[0]: u.x for u, *_ in unpools for n in u.nodes}
        moved = {out: dequantized(p.input[0]) for out, p in pools.items() if out not in graph_outputs and all(
            requantization(r) or inside.get(r.output[0]) == out for r in consumers.get(out, []))}
        kept = [t for t in unpools if t[3].output[0] in moved and (t[0].x not in pools or t[0].x in moved)]
        if len(kept) == len(unpools):
            break
        unpools = kept
    if not moved:
        return model, 0, 0

    drop: set[str] = set()  # first outputs of nodes removed

    def rewire_requantization(value: str, ints: _Quantized) -> None:
        """Readers of Q(value) read ``ints`` with its own scale and zero point; the Q goes."""
        for q in consumers.get(value, []):
            if q.op_type != "QuantizeLinear":
                continue
            for d in consumers[q.output[0]]:
                d.input[0], d.input[1], d.input[2] = ints.q, ints.scale, ints.zero_point
            drop.add(q.output[0])

    for out, src in moved.items():
        pools[out].input[0] = src.q
        rewire_requantization(out, _Quantized(out, src.scale, src.zero_point))

    new_inits: dict[str, onnx.TensorProto] = {}

    def const(name: str, value: np.ndarray) -> str:
        new_inits.setdefault(name, numpy_helper.from_array(value, name))
        return name

    replacement = {}
    for u, pre, x, pool in unpools:
        x_ints = x if u.x not in moved else _Quantized(u.x, x.scale, x.zero_point)
        x_type = _ONNX_TYPE[inits[x_ints.zero_point].dtype]
        nodes = _unpool_nodes(u.out, pre.q, pool.output[0], x_ints.q, x_type, shapes[u.pre], const)
        replacement[u.out] = nodes
        drop.update(n.output[0] for n in u.nodes)
        rewire_requantization(u.out, _Quantized(u.out, x_ints.scale, x_ints.zero_point))

    out_nodes = []
    for n in g.node:
        if n.output[0] in replacement:
            out_nodes.extend(replacement[n.output[0]])
        elif n.output[0] not in drop:
            out_nodes.append(n)
    out_nodes = _without_dead_nodes(out_nodes, graph_outputs)
    del g.node[:]
    g.node.extend(out_nodes)
    del g.value_info[:]  # types changed (float -> integers); runtimes re-infer them
    g.initializer.extend(new_inits.values())
    used = {i for n in g.node for i in n.input}
    keep = [t for t in g.initializer if t.name in used]
    del g.initializer[:]
    g.initializer.extend(keep)
    return model, len(moved), len(unpools)


def _is_2x2_pool(n) -> bool:
    attrs = {a.name: list(a.ints) if a.ints else a.i for a in n.attribute}
    return (attrs.get("kernel_shape") == [2, 2] and attrs.get("strides") == [2, 2]
            and not any(attrs.get("pads", [0])) and not attrs.get("ceil_mode", 0)
            and attrs.get("dilations", [1, 1]) == [1, 1] and not attrs.get("storage_order", 0))


def _static_shapes(model: onnx.ModelProto) -> dict[str, tuple[int, int, int]]:
    """Static (C, H, W) of each 4-D tensor with even H and W (the batch may be dynamic)."""
    inferred = onnx.shape_inference.infer_shapes(model)
    shapes = {}
    for vi in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]:
        dims = vi.type.tensor_type.shape.dim
        if len(dims) == 4 and all(d.HasField("dim_value") for d in dims[1:]):
            c, h, w = (d.dim_value for d in dims[1:])
            if h % 2 == 0 and w % 2 == 0:
                shapes[vi.name] = (c, h, w)
    return shapes


def _unpool_nodes(p: str, pre: str, pooled: str, x: str, x_type: int, chw: tuple[int, int, int], const) -> list:
    """The unpool on integers, written channels-last: each tensor is transposed to NHWC and viewed as
    (N, H/2, 2, W/2, 2, C), so every comparison and product broadcasts over the window with whole rows
    of C contiguous bytes, and ONNX Runtime cancels the Transposes against those around its NHWC
    integer convolutions and pools."""
    c, h, w = chw
    priority = const("int_unpool/priority", np.array([[4, 3], [2, 1]], np.uint8).reshape(1, 1, 2, 1, 2, 1))

    def node(op: str, inputs: list[str], name: str, **attrs):
        return helper.make_node(op, inputs, [name], name=name, **attrs)

    def shape(dims: list[int]) -> str:
        return const("int_unpool/shape_" + "x".join(map(str, dims)), np.array(dims, np.int64))

    def windows(src: str, name: str, whole: bool) -> list:
        """NCHW ``src`` as NHWC (N, H/2, 2, W/2, 2, C), or with ``whole=False`` a half-size tensor as
        (N, H/2, 1, W/2, 1, C), one value per window."""
        k = 2 if whole else 1
        return [node("Transpose", [src], f"{name}_nhwc", perm=[0, 2, 3, 1]),
                node("Reshape", [f"{name}_nhwc", shape([0, h // 2, k, w // 2, k, c])], name)]

    def back(src: str, name: str, nchw: bool) -> list:
        nhwc = [node("Reshape", [src, shape([0, h, w, c])], f"{name}_nhwc" if nchw else name)]
        return nhwc + ([node("Transpose", [f"{name}_nhwc"], name, perm=[0, 3, 1, 2])] if nchw else [])

    return [
        *windows(pre, f"{p}/pre", True),
        *windows(pooled, f"{p}/max", False),
        node("Equal", [f"{p}/pre", f"{p}/max"], f"{p}/is_max"),
        node("Cast", [f"{p}/is_max"], f"{p}/is_max_u8", to=onnx.TensorProto.UINT8),
        node("Mul", [f"{p}/is_max_u8", priority], f"{p}/score"),
        *back(f"{p}/score", f"{p}/score_nchw", True),
        node("MaxPool", [f"{p}/score_nchw"], f"{p}/best_nchw", kernel_shape=[2, 2], strides=[2, 2]),
        *windows(f"{p}/best_nchw", f"{p}/best", False),
        node("Equal", [f"{p}/score", f"{p}/best"], f"{p}/winner"),
        node("Cast", [f"{p}/winner"], f"{p}/winner_x", to=x_type),
        *([] if x == pooled else windows(x, f"{p}/x", False)),  # the deepest unpool places the pool itself
        node("Mul", [f"{p}/winner_x", f"{p}/max" if x == pooled else f"{p}/x"], f"{p}/placed"),
        *back(f"{p}/placed", p, True),
    ]


def _without_dead_nodes(nodes: list, graph_outputs: set[str]) -> list:
    while True:
        used = {i for n in nodes for i in n.input} | graph_outputs
        alive = [n for n in nodes if any(o in used for o in n.output)]
        if len(alive) == len(nodes):
            return alive
        nodes = alive
