"""Rewrite the exported unpool into ops that ONNX Runtime's x86 NCHWc kernels run (load-time only).

The exported unpool (see :mod:`edgeseg.compile.export`) slices each 2x2 window, compares with
GreaterOrEqual/Max, selects with Where and interleaves with DepthToSpace: a form whose every window
keeps exactly one winner whatever precision a runtime picks, which TensorRT and OpenVINO run as
is. ONNX Runtime's x86 CPU path keeps convolutions, pools, nearest Resize, Add, Mul and Relu in its
blocked NCHWc layout, but none of those ops: every unpool then costs layout reorders of
full-resolution tensors around them (28.7 vs 16.4 ms for the whole FP32 model). ONNX Runtime's CPU
kernels compute FP32 as written, so at session creation this module swaps each unpool for the
same selection written in NCHWc ops; the file on disk stays the portable one::

    d      = Resize2x(MaxPool(pre)) - pre          # depthwise 1x1 conv (-1) + Add: exact, d >= 0
    is_max = Relu(1 - 2^127 * d)                   # 1 where d == 0, else 0 (any normal d > 0 gives <= -1)
    score  = is_max * priority                     # priority tile 4 3 / 2 1: the scan order
    ds     = Resize2x(MaxPool(score)) - score      # small integers, exact
    winner = Relu(1 - 2 * ds)                      # 1 for the window's first maximum, else 0
    out    = winner * Resize2x(x)

Exact conditions: ``d`` is a correctly rounded difference of two ordered floats, so it is 0 only
when they are equal, except when it is below the smallest normal float 2^-126 (possible only
when both values lie below 2^-102, about 2e-31) and ONNX Runtime's flushed denormals turn it into
a tie, and except for infinite or NaN activations. Finite activations of a trained network are never that
close to zero without being zero (denormals are flushed everywhere in the session), so for them the
result is bit-identical to the exported graph and to MaxUnpool; tests check ties, 1e-30-scale
values, and the flush boundary itself.

Not applied off x86 (no NCHWc there; ARM runs the exported graph), to graphs whose unpool does not
have the exported structure, or where the spatial size is not known at load time.
"""

from __future__ import annotations

import platform
from dataclasses import dataclass

import numpy as np

_BIG = np.float32(2.0**127)
WINDOW_OFFSETS = ([0, 0], [0, 1], [1, 0], [1, 1])  # a, b, c, d of a 2x2 window, as edgeseg.compile.export writes them


@dataclass
class Unpool:
    pre: str
    x: str
    out: str
    nodes: list  # exported nodes this replaces


def nchwc_platform() -> bool:
    """ONNX Runtime's NCHWc layout transformer only runs on x86 (AVX2/AVX-512 MLAS kernels)."""
    return platform.machine().lower() in ("x86_64", "amd64")


def find_unpools(graph) -> list[Unpool]:
    """Every unpool written by edgeseg.compile.export (matched by structure, not by name) whose
    intermediates nothing else reads."""
    from onnx import numpy_helper

    producer = {o: n for n in graph.node for o in n.output}
    inits = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    uses: dict[str, int] = {}
    for n in graph.node:
        for i in n.input:
            uses[i] = uses.get(i, 0) + 1
    for o in graph.output:
        uses[o.name] = uses.get(o.name, 0) + 1

    def node(name: str, op: str):
        n = producer.get(name)
        return n if n is not None and n.op_type == op else None

    def zero(name: str) -> bool:
        v = inits.get(name)
        return v is not None and v.size == 1 and v.dtype == np.float32 and float(v.reshape(())) == 0.0

    def ints(name: str) -> list | None:
        v = inits.get(name)
        return v.tolist() if v is not None and v.dtype.kind == "i" else None

    def window_slice(name: str):
        """Slice(pre)[..., i::2, j::2] -> (node, pre, [i, j]), else None."""
        n = node(name, "Slice")
        if n is None or len(n.input) != 5 or ints(n.input[3]) != [2, 3] or ints(n.input[4]) != [2, 2]:
            return None
        ends = ints(n.input[2])
        return (n, n.input[0], ints(n.input[1])) if ends and min(ends) >= 2**31 - 1 else None

    def select(name: str, first: bool):
        """Where(cond, v, 0) (``first``) or Where(cond, 0, v) -> (node, cond, v), else None."""
        n = node(name, "Where")
        if n is None or not zero(n.input[2 if first else 1]):
            return None
        return n, n.input[0], n.input[1 if first else 2]

    found = []
    for d2s in graph.node:
        attrs = {a.name: (a.s.decode() if a.type == a.STRING else a.i) for a in d2s.attribute}
        if d2s.op_type != "DepthToSpace" or attrs.get("blocksize") != 2 or attrs.get("mode", "DCR") != "DCR":
            continue
        cat = node(d2s.input[0], "Concat")
        if cat is None or len(cat.input) != 4 or [a.i for a in cat.attribute if a.name == "axis"] != [1]:
            continue
        parts = [select(i, k % 2 == 0) for k, i in enumerate(cat.input)]
        if None in parts or parts[0][1:] != parts[1][1:] or parts[2][1:] != parts[3][1:]:
            continue
        (_, top, x_up), (_, bottom, x_low) = parts[0][:3], parts[2][:3]
        up, low = select(x_up, True), select(x_low, False)
        ge_top, ge_bottom = node(top, "GreaterOrEqual"), node(bottom, "GreaterOrEqual")
        if not (up and low and ge_top and ge_bottom) or up[1:] != low[1:]:
            continue
        ge_upper = node(up[1], "GreaterOrEqual")
        max_top = ge_upper and node(ge_upper.input[0], "Max")
        max_bottom = ge_upper and node(ge_upper.input[1], "Max")
        if not (max_top and max_bottom) or list(max_top.input) != list(ge_top.input) \
                or list(max_bottom.input) != list(ge_bottom.input):
            continue
        slices = [window_slice(t) for t in [*ge_top.input, *ge_bottom.input]]
        if None in slices or len({s[1] for s in slices}) != 1 or [s[2] for s in slices] != list(WINDOW_OFFSETS):
            continue
        nodes = [*(s[0] for s in slices), ge_top, ge_bottom, max_top, max_bottom, ge_upper, up[0], low[0],
                 *(p[0] for p in parts), cat, d2s]
        inner: dict[str, int] = {}
        for n in nodes:
            for i in n.input:
                inner[i] = inner.get(i, 0) + 1
        # Every intermediate must be private to the pattern (used only inside it).
        if any(uses.get(o, 0) != inner.get(o, 0) for n in nodes[:-1] for o in n.output):
            continue
        found.append(Unpool(pre=slices[0][1], x=up[2], out=d2s.output[0], nodes=nodes))
    return found


def lower_unpools(model) -> int:
    """Rewrite every exported unpool of ``model`` (an onnx.ModelProto, in place); returns how many."""
    import onnx
    from onnx import helper, numpy_helper

    graph = model.graph
    unpools = find_unpools(graph)
    if not unpools:
        return 0
    inferred = onnx.shape_inference.infer_shapes(model)
    shapes = {}
    for vi in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]:
        dims = vi.type.tensor_type.shape.dim
        if len(dims) == 4 and all(d.HasField("dim_value") for d in dims[1:]):
            shapes[vi.name] = tuple(d.dim_value for d in dims[1:])
    if any(u.pre not in shapes for u in unpools):
        return 0
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
            new_nodes.extend(_arith_unpool(u, shapes[u.pre], const, helper))
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


def _arith_unpool(u: Unpool, shape: tuple[int, int, int], const, helper) -> list:
    p = u.out
    c, h, w = shape
    scales = const("cpu_unpool/scales_2x", np.array([1, 1, 2, 2], np.float32))
    priority = const(f"cpu_unpool/priority_{h}x{w}",
                     np.tile(np.array([[4, 3], [2, 1]], np.float32), (h // 2, w // 2))[None, None])

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
        helper.make_node("Mul", [f"{p}/is_max", priority], [f"{p}/score"], name=f"{p}/score"),
        *pool2x(f"{p}/score", f"{p}/best"),
        dw(f"{p}/score", -1.0, 0.0, f"{p}/neg_score"),
        helper.make_node("Add", [f"{p}/neg_score", f"{p}/best_2x"], [f"{p}/ds"], name=f"{p}/ds"),
        dw(f"{p}/ds", -2.0, 1.0, f"{p}/winner_lin"),
        helper.make_node("Relu", [f"{p}/winner_lin"], [f"{p}/winner"], name=f"{p}/winner"),
        helper.make_node("Resize", [u.x, "", scales], [f"{p}/x_2x"], name=f"{p}/x_2x", mode="nearest",
                         coordinate_transformation_mode="asymmetric", nearest_mode="floor"),
        helper.make_node("Mul", [f"{p}/winner", f"{p}/x_2x"], [p], name=p),
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
