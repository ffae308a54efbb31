"""Rewrite the exported unpool into ops that ONNX Runtime's x86 NCHWc kernels run (load-time only).

The exported unpool (see :mod:`edgeseg.export`) compares with Equal and selects with Where, which
TensorRT fuses into one cheap kernel. ONNX Runtime's x86 CPU path keeps convolutions, pools,
nearest Resize, Add, Mul and Relu in its blocked NCHWc layout, but not Equal/Where: every unpool
then costs layout reorders of full-resolution tensors around them (the unpool was 32% of the FP32
run time). At session creation this module swaps each unpool for the same selection written in
NCHWc ops; the file on disk stays the portable one::

    d      = Resize2x(MaxPool(pre)) - pre          # depthwise 1x1 conv (-1) + Add: exact, d >= 0
    is_max = Relu(1 - 2^127 * d)                   # 1 where d == 0, else 0 (any normal d > 0 gives <= -1)
    score  = is_max * priority                     # priority tile 4 3 / 2 1, as exported
    ds     = Resize2x(MaxPool(score)) - score      # small integers, exact
    winner = Relu(1 - 2 * ds)                      # 1 for the window's first maximum, else 0
    out    = winner * Resize2x(x)

Exactness: ``d`` is a correctly rounded difference of two equal-or-ordered floats, so it is 0 only
when they are equal, unless the difference is below the smallest normal float (both values under
~2e-31), which ONNX Runtime's flushed denormals would turn into a tie; the exported Equal is
subject to the same flushing. Tests check bit-equality with MaxUnpool on tie-heavy inputs.

Measured on the 2-core x86 dev machine (bundled model, ONNX Runtime 1.31, interleaved, 200 runs):
FP32 p50 21.2 ms exported graph -> 17.2 ms rewritten. Not applied off x86 (no NCHWc there; ARM
runs the exported graph) or to graphs whose unpool does not have the exported structure.
"""

from __future__ import annotations

import platform
from dataclasses import dataclass

import numpy as np

_BIG = np.float32(2.0**127)
EXACT_2X_MODES = {("asymmetric", "floor"), ("half_pixel", "round_prefer_floor")}


@dataclass
class _Unpool:
    pre: str
    x_2x: str
    priority: str
    out: str
    nodes: list  # exported nodes this replaces (x_2x's Resize stays)


def nchwc_platform() -> bool:
    """ONNX Runtime's NCHWc layout transformer only runs on x86 (AVX2/AVX-512 MLAS kernels)."""
    return platform.machine().lower() in ("x86_64", "amd64")


def _find_unpools(graph) -> list[_Unpool]:
    from onnx import numpy_helper

    producer = {o: n for n in graph.node for o in n.output}
    inits = {t.name: t for t in graph.initializer}

    def resize2x(n) -> bool:
        """Nearest 2x spatial replication: what the exporter writes (asymmetric, floor) or ONNX's
        defaults (half_pixel, round_prefer_floor), which pick the same source pixels at 2x."""
        attrs = {a.name: a.s.decode() for a in n.attribute if a.type == a.STRING}
        modes = (attrs.get("coordinate_transformation_mode", "half_pixel"), attrs.get("nearest_mode",
                                                                                     "round_prefer_floor"))
        if (attrs.get("mode", "nearest") != "nearest" or modes not in EXACT_2X_MODES or len(n.input) != 3
                or n.input[2] not in inits):
            return False
        return numpy_helper.to_array(inits[n.input[2]]).tolist() == [1.0, 1.0, 2.0, 2.0]

    uses: dict[str, int] = {}
    for n in graph.node:
        for i in n.input:
            uses[i] = uses.get(i, 0) + 1
    for o in graph.output:
        uses[o.name] = uses.get(o.name, 0) + 1

    def node(name: str, op: str):
        n = producer.get(name)
        return n if n is not None and n.op_type == op else None

    def pool_resize(name: str, source: str):
        """Resize2x(MaxPool2x2(source)) -> its two nodes, else None."""
        resize = node(name, "Resize")
        pool = resize and resize2x(resize) and node(resize.input[0], "MaxPool")
        if not pool or pool.input[0] != source:
            return None
        attrs = {a.name: list(a.ints) for a in pool.attribute}
        return (pool, resize) if attrs.get("kernel_shape") == [2, 2] and attrs.get("strides") == [2, 2] else None

    found = []
    for where in graph.node:
        if where.op_type != "Where":
            continue
        winner = node(where.input[0], "Equal")
        x_2x = node(where.input[1], "Resize")
        if not winner or not x_2x or not resize2x(x_2x):
            continue
        score_name, best_2x_name = winner.input
        score = node(score_name, "Where")
        best = pool_resize(best_2x_name, score_name)
        is_max = score and node(score.input[0], "Equal")
        if not (best and is_max):
            continue
        pre, pooled_2x_name = is_max.input
        pooled = pool_resize(pooled_2x_name, pre)
        if not pooled:
            continue
        nodes = [*pooled, is_max, score, *best, winner, where]
        inner = [o for n in nodes[:-1] for o in n.output]
        # Every intermediate must be private to the pattern (used only inside it).
        expected = {pooled[0].output[0]: 1, pooled[1].output[0]: 1, is_max.output[0]: 1,
                    score.output[0]: 2, best[0].output[0]: 1, best[1].output[0]: 1, winner.output[0]: 1}
        if any(uses.get(o, 0) != expected[o] for o in inner):
            continue
        found.append(_Unpool(pre=pre, x_2x=where.input[1], priority=score.input[1], out=where.output[0],
                             nodes=nodes))
    return found


def lower_unpools(model) -> int:
    """Rewrite every exported unpool of ``model`` (an onnx.ModelProto, in place); returns how many."""
    import onnx
    from onnx import helper, numpy_helper

    graph = model.graph
    unpools = _find_unpools(graph)
    if not unpools:
        return 0
    inferred = onnx.shape_inference.infer_shapes(model)
    channels = {}
    for vi in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]:
        dims = vi.type.tensor_type.shape.dim
        if len(dims) == 4 and dims[1].HasField("dim_value"):
            channels[vi.name] = dims[1].dim_value
    if any(u.pre not in channels for u in unpools):
        return 0
    scales = next(n.input[2] for n in graph.node if n.op_type == "Resize" and n.output[0] == unpools[0].x_2x)
    inits: dict[str, object] = {}

    def const(name: str, value: np.ndarray) -> str:
        if name not in inits:
            inits[name] = numpy_helper.from_array(value, name)
        return name

    # nodes are identified by their first output (unique in a valid graph), not by Python identity
    replaced = {n.output[0] for u in unpools for n in u.nodes}
    position = {u.out: u for u in unpools}
    new_nodes = []
    for n in graph.node:
        if n.output[0] in position:
            u = position[n.output[0]]
            new_nodes.extend(_arith_unpool(u, channels[u.pre], scales, const, helper))
        elif n.output[0] not in replaced:
            new_nodes.append(n)
    del graph.node[:]
    graph.node.extend(new_nodes)
    produced = {o for n in new_nodes for o in n.output}
    stale = {o for u in unpools for n in u.nodes for o in n.output} | produced
    infos = [vi for vi in graph.value_info if vi.name not in stale]
    del graph.value_info[:]
    graph.value_info.extend(infos)
    graph.initializer.extend(inits.values())
    used = {i for n in graph.node for i in n.input}
    keep = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep)
    return len(unpools)


def _arith_unpool(u: _Unpool, c: int, scales: str, const, helper) -> list:
    p = u.out

    def dw(x: str, w: float, b: float, name: str) -> object:
        """Depthwise 1x1 conv y = w*x + b per channel: ONNX Runtime runs it in NCHWc and fuses the
        Add or Relu that follows."""
        return helper.make_node("Conv", [x, const(f"cpu_unpool/w{w:g}_c{c}", np.full((c, 1, 1, 1), w, np.float32)),
                                         const(f"cpu_unpool/b{b:g}_c{c}", np.full((c,), b, np.float32))],
                                [name], name=name, kernel_shape=[1, 1], group=c, strides=[1, 1], pads=[0, 0, 0, 0])

    def pool2x(x: str, name: str) -> list:
        return [helper.make_node("MaxPool", [x], [f"{name}_pool"], name=f"{name}_pool", kernel_shape=[2, 2],
                                 strides=[2, 2]),
                helper.make_node("Resize", [f"{name}_pool", "", scales], [f"{name}_2x"], name=f"{name}_2x",
                                 mode="nearest", coordinate_transformation_mode="asymmetric", nearest_mode="floor")]

    return [
        *pool2x(u.pre, f"{p}/max"),
        dw(u.pre, -1.0, 0.0, f"{p}/neg_pre"),
        helper.make_node("Add", [f"{p}/neg_pre", f"{p}/max_2x"], [f"{p}/d"], name=f"{p}/d"),
        dw(f"{p}/d", -float(_BIG), 1.0, f"{p}/is_max_lin"),
        helper.make_node("Relu", [f"{p}/is_max_lin"], [f"{p}/is_max"], name=f"{p}/is_max"),
        helper.make_node("Mul", [f"{p}/is_max", u.priority], [f"{p}/score"], name=f"{p}/score"),
        *pool2x(f"{p}/score", f"{p}/best"),
        dw(f"{p}/score", -1.0, 0.0, f"{p}/neg_score"),
        helper.make_node("Add", [f"{p}/neg_score", f"{p}/best_2x"], [f"{p}/ds"], name=f"{p}/ds"),
        dw(f"{p}/ds", -2.0, 1.0, f"{p}/winner_lin"),
        helper.make_node("Relu", [f"{p}/winner_lin"], [f"{p}/winner"], name=f"{p}/winner"),
        helper.make_node("Mul", [f"{p}/winner", u.x_2x], [p], name=p),
    ]


def lowered_for_onnxruntime(model_bytes: bytes) -> tuple[bytes, int]:
    """``model_bytes`` with its unpools rewritten when that helps here (x86 with ``onnx`` installed);
    otherwise unchanged. Returns the bytes and the number of unpools rewritten."""
    import importlib.util

    if not nchwc_platform() or importlib.util.find_spec("onnx") is None:
        return model_bytes, 0
    import onnx

    model = onnx.load_from_string(model_bytes)
    n = lower_unpools(model)
    return (model.SerializeToString(), n) if n else (model_bytes, 0)
