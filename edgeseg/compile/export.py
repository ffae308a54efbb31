"""Checkpoint -> deploy ONNX that TensorRT and ONNX Runtime both accept, simplified and verified.

The graph is written directly with ``onnx.helper`` from the loaded PyTorch modules rather than
traced: the network is a fixed stack of (conv, BN, ReLU), max-pool and unpool, and writing it
gives exact control over the unpool subgraph, readable node names (``dc1.seq.0.pointwise``) that
``check``/``quantize`` reports use, and independence from the exporter PyTorch ships this year.

BatchNorms after convs are folded into the convs (in float64); the input BatchNorm stays a
BatchNormalization node because folding it into a zero-padded conv would change the borders.

Unpooling (TensorRT has no MaxUnpool and rejects MaxPool's indices) is written as in
:func:`edgeseg.compile.nets.exact_unpool`: a tournament of comparisons inside each 2x2 window of the
pooled activation, with ops TensorRT, ONNX Runtime and OpenVINO all support::

    a, b, c, d = pre[..., 0::2, 0::2], pre[..., 0::2, 1::2], pre[..., 1::2, 0::2], pre[..., 1::2, 1::2]
    top    = a >= b                        # first maximum of the upper pair (a wins ties)
    bottom = c >= d
    upper  = Max(a, b) >= Max(c, d)        # the upper pair wins ties: it comes first in scan order
    out    = DepthToSpace(Concat(x if upper & top, x if upper & !top,
                                 x if !upper & bottom, x if !upper & !bottom; else 0))

Every comparison reads values sliced from one tensor and every window ends with exactly one
winner, whatever precision a runtime computes the comparisons in (FP32, FP16, BF16, INT8 with
float islands): a runtime that rounds differently may pick another position of a near-tie, never
none or two. In FP32 it is MaxPool2d(return_indices)+MaxUnpool2d bit for bit, ties included
(PyTorch keeps the first maximum in row-major order). The earlier form,
``Equal(pre, Resize2x(MaxPool(pre)))``, needed both sides of Equal at one precision and lost 21
mIoU points under OpenVINO's bf16 with INT8 islands (README "Precision").
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

from edgeseg import __version__
from edgeseg.compile.checkpoint import LoadedCheckpoint
from edgeseg.compile.nets import DepthwiseSeparableConv2d
from edgeseg.errors import EdgesegError
from edgeseg.files import atomic_write, check_writable
from edgeseg.runtime.meta import ModelMeta

OPSETS = range(13, 22)  # Resize with scales input and BatchNormalization-15 semantics; ORT runs all of them
DEFAULT_OPSET = 17
INPUT_NAME = "input"
ARGMAX_DTYPES = {"uint8": TensorProto.UINT8, "int32": TensorProto.INT32}
# (row, column) of a, b, c, d in a 2x2 window: the scan order MaxPool2d uses to break ties
WINDOW_OFFSETS = ((0, 0), (0, 1), (1, 0), (1, 1))


@dataclass
class ExportOptions:
    size: tuple[int, int] | None = None  # (H, W); default: the checkpoint's input size
    opset: int = DEFAULT_OPSET
    batch: int | None = 1  # None = dynamic batch dimension
    simplify: bool = True
    with_argmax: str | None = None  # None, "uint8" or "int32"
    flip_average: bool = False  # logits = mean of the frame's and its mirror image's (see _mirror_batch)


@dataclass
class ExportReport:
    path: str
    nodes_before: int
    nodes_after: int
    simplified: bool
    seconds: float
    file_bytes: int
    verification: VerifyReport
    op_histogram: dict[str, int] = field(default_factory=dict)


def validate_options(opts: ExportOptions) -> None:
    h, w = opts.size or (16, 16)
    if h <= 0 or w <= 0 or h % 16 or w % 16:
        raise EdgesegError(
            f"--size {h}x{w} is not a multiple of 16 in both dimensions: the four 2x2 poolings need it "
            "(try 128x128, 224x224 or 256x320)"
        )
    if opts.opset not in OPSETS:
        raise EdgesegError(f"--opset {opts.opset} is not supported; choose {OPSETS.start}..{OPSETS.stop - 1} "
                           "(TensorRT 10 parses 9..20)")
    if opts.batch is not None and opts.batch < 1:
        raise EdgesegError(f"--batch {opts.batch} must be at least 1")
    if opts.with_argmax not in (None, *ARGMAX_DTYPES):
        raise EdgesegError(f"--with-argmax {opts.with_argmax!r}: choose uint8 or int32")


class _Graph:
    """Accumulates nodes and initializers with unique names."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self._consts: dict[tuple, str] = {}

    def const(self, name: str, value: np.ndarray) -> str:
        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
        return name

    def shared_const(self, name: str, value: np.ndarray) -> str:
        key = (value.dtype.str, value.shape, value.tobytes())
        if key not in self._consts:
            self._consts[key] = self.const(name, value)
        return self._consts[key]

    def op(self, op_type: str, inputs: list[str], name: str, **attrs) -> str:
        out = name
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=name, **attrs))
        return out


def _fold(conv: torch.nn.Conv2d, bn: torch.nn.BatchNorm2d) -> tuple[np.ndarray, np.ndarray]:
    """Weights and bias of ``bn(conv(x))`` as one conv, computed in float64."""
    w = conv.weight.detach().double()
    scale = bn.weight.detach().double() / torch.sqrt(bn.running_var.double() + bn.eps)
    shift = bn.bias.detach().double() - bn.running_mean.double() * scale
    bias = shift if conv.bias is None else shift + conv.bias.detach().double() * scale
    return (w * scale[:, None, None, None]).float().numpy(), bias.float().numpy()


def _conv(g: _Graph, x: str, conv: torch.nn.Conv2d, name: str, bn: torch.nn.BatchNorm2d | None) -> str:
    k = conv.kernel_size[0]
    p = conv.padding[0]
    if bn is None:
        inputs = [x, g.const(f"{name}.weight", conv.weight.detach().float().numpy())]
    else:
        w, b = _fold(conv, bn)
        inputs = [x, g.const(f"{name}.weight", w), g.const(f"{name}.bias", b)]
    return g.op("Conv", inputs, name, kernel_shape=[k, k], pads=[p, p, p, p], group=conv.groups,
                strides=[1, 1], dilations=[1, 1])


def _conv_bn_relu_stack(g: _Graph, x: str, seq: torch.nn.Sequential, prefix: str) -> str:
    mods = list(seq)
    for i in range(0, len(mods), 3):
        conv, bn = mods[i], mods[i + 1]
        if isinstance(conv, DepthwiseSeparableConv2d):
            x = _conv(g, x, conv.depthwise, f"{prefix}.{i}.depthwise", None)
            x = _conv(g, x, conv.pointwise, f"{prefix}.{i}.pointwise", bn)
        else:
            x = _conv(g, x, conv, f"{prefix}.{i}", bn)
        x = g.op("Relu", [x], f"{prefix}.{i + 2}")
    return x


def _unpool(g: _Graph, pre: str, x: str, name: str) -> str:
    """MaxUnpool2d(2) of ``x`` at the positions of ``pre``'s 2x2 window maxima (see module docstring)."""
    zero = g.shared_const("zero", np.zeros((), dtype=np.float32))
    axes = g.shared_const("hw_axes", np.array([2, 3], dtype=np.int64))
    steps = g.shared_const("hw_steps", np.array([2, 2], dtype=np.int64))
    ends = g.shared_const("hw_ends", np.array([2**62, 2**62], dtype=np.int64))
    a, b, c, d = (g.op("Slice", [pre, g.shared_const(f"offset_{i}{j}", np.array([i, j], dtype=np.int64)), ends, axes,
                                 steps], f"{name}/{label}")
                  for (i, j), label in zip(WINDOW_OFFSETS, "abcd", strict=True))
    top = g.op("GreaterOrEqual", [a, b], f"{name}/top")
    bottom = g.op("GreaterOrEqual", [c, d], f"{name}/bottom")
    upper = g.op("GreaterOrEqual", [g.op("Max", [a, b], f"{name}/max_ab"), g.op("Max", [c, d], f"{name}/max_cd")],
                 f"{name}/upper")
    x_up = g.op("Where", [upper, x, zero], f"{name}/x_upper")
    x_low = g.op("Where", [upper, zero, x], f"{name}/x_lower")
    parts = [g.op("Where", [top, x_up, zero], f"{name}/x_a"), g.op("Where", [top, zero, x_up], f"{name}/x_b"),
             g.op("Where", [bottom, x_low, zero], f"{name}/x_c"), g.op("Where", [bottom, zero, x_low], f"{name}/x_d")]
    return g.op("DepthToSpace", [g.op("Concat", parts, f"{name}/windows", axis=1)], name, blocksize=2, mode="DCR")


def _mirror(g: _Graph, x: str, axis: int, name: str) -> str:
    """``x`` reversed along ``axis`` (a Slice with step -1, which TensorRT, ONNX Runtime and OpenVINO take)."""
    return g.op("Slice", [x, g.shared_const("last", np.array([-1], dtype=np.int64)),
                          g.shared_const("before_first", np.array([-2**62], dtype=np.int64)),
                          g.shared_const(f"axis_{axis}", np.array([axis], dtype=np.int64)),
                          g.shared_const("step_back", np.array([-1], dtype=np.int64))], name)


def _mirror_batch(g: _Graph, x: str) -> str:
    """The batch followed by its mirror images: one network pass serves both halves of the average."""
    return g.op("Concat", [x, _mirror(g, x, 3, "flip/input")], "flip/batch", axis=0)


def _mirror_average(g: _Graph, y: str, c: int, h: int, w: int) -> str:
    """Logits of the doubled batch (2N, C, H, W) -> the mean of each frame's and its mirror's, (N, C, H, W)."""
    halves = g.op("Reshape", [y, g.const("flip/halves_shape", np.array([2, -1, c, h, w], dtype=np.int64))],
                  "flip/halves")
    plain = g.op("Slice", [halves, g.shared_const("zero_i", np.array([0], dtype=np.int64)),
                           g.shared_const("one_i", np.array([1], dtype=np.int64)),
                           g.shared_const("axis_0", np.array([0], dtype=np.int64))], "flip/plain")
    mirrored = g.op("Slice", [halves, g.shared_const("one_i", np.array([1], dtype=np.int64)),
                              g.shared_const("two_i", np.array([2], dtype=np.int64)),
                              g.shared_const("axis_0", np.array([0], dtype=np.int64))], "flip/mirrored")
    total = g.op("Add", [plain, _mirror(g, mirrored, 4, "flip/unmirrored")], "flip/sum")
    mean = g.op("Mul", [total, g.const("flip/half", np.array(0.5, dtype=np.float32))], "flip/mean")
    return g.op("Squeeze", [mean, g.shared_const("axis_0", np.array([0], dtype=np.int64))], "logits")


def build_graph(ckpt: LoadedCheckpoint, opts: ExportOptions, maxunpool: bool = False) -> onnx.ModelProto:
    """The deploy graph of a loaded checkpoint, before simplification and without metadata.

    ``maxunpool=True`` writes the same network with MaxPool indices and MaxUnpool instead: not
    deployable (TensorRT refuses it), but ONNX Runtime runs it, which makes it the reference that
    :func:`verify` holds the unpool rewrite to, bit for bit, with the same kernels everywhere else."""
    validate_options(opts)
    model, meta = ckpt.model, ckpt.meta
    h, w = opts.size or meta.input_size
    g = _Graph()
    bn = model.bn_input
    x = g.op("BatchNormalization", [
        _mirror_batch(g, INPUT_NAME) if opts.flip_average else INPUT_NAME,
        g.const("bn_input.weight", bn.weight.detach().float().numpy()),
        g.const("bn_input.bias", bn.bias.detach().float().numpy()),
        g.const("bn_input.running_mean", bn.running_mean.float().numpy()),
        g.const("bn_input.running_var", bn.running_var.float().numpy()),
    ], "bn_input", epsilon=bn.eps)
    skips = []
    for i in range(1, 5):
        pre = _conv_bn_relu_stack(g, x, getattr(model, f"dc{i}").seq, f"dc{i}.seq")
        x = g.op("MaxPool", [pre], f"dc{i}.mp", kernel_shape=[2, 2], strides=[2, 2])
        if maxunpool:
            g.nodes[-1].output.append(f"dc{i}.mp/indices")
        skips.append(pre)
    for i in range(4, 0, -1):
        if maxunpool:
            x = g.op("MaxUnpool", [x, f"dc{i}.mp/indices"], f"uc{i}.mup", kernel_shape=[2, 2], strides=[2, 2])
        else:
            x = _unpool(g, skips[i - 1], x, f"uc{i}.mup")
        x = _conv_bn_relu_stack(g, x, getattr(model, f"uc{i}").seq, f"uc{i}.seq")
    batch: int | str = opts.batch if opts.batch is not None else "batch"
    if opts.flip_average:
        _mirror_average(g, x, model.out_channels, h, w)
    else:
        g.nodes[-1].output[0] = "logits"
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, 3, h, w])]
    if opts.with_argmax:
        ids = g.op("ArgMax", ["logits"], "argmax", axis=1, keepdims=0, select_last_index=0)
        g.nodes.append(helper.make_node("Cast", [ids], ["classes"], name="classes",
                                        to=ARGMAX_DTYPES[opts.with_argmax]))
        outputs = [helper.make_tensor_value_info("classes", ARGMAX_DTYPES[opts.with_argmax], [batch, h, w])]
    graph = helper.make_graph(
        g.nodes, f"{meta.arch}-deploy",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, [batch, 3, h, w])],
        outputs, initializer=g.inits,
    )
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opts.opset)],
                          producer_name="edgeseg", producer_version=__version__)
    m.ir_version = min(m.ir_version, 8)  # readable by older ONNX Runtime and TensorRT 8.6+ parsers
    onnx.checker.check_model(m)
    return m


def attach_metadata(m: onnx.ModelProto, ckpt: LoadedCheckpoint, opts: ExportOptions) -> None:
    meta: ModelMeta = ckpt.meta.with_(input_size=list(opts.size or ckpt.meta.input_size),
                                      flip_average=opts.flip_average)
    shape = m.graph.input[0].type.tensor_type.shape.dim
    props = {
        "edgeseg_version": __version__,
        "edgeseg_meta": meta.to_json(),
        "arch": meta.arch,
        "input_name": INPUT_NAME,
        "input_shape": "x".join(d.dim_param or str(d.dim_value) for d in shape),
        "input_layout": meta.layout,
        "input_color": meta.color,
        "input_value_range": json.dumps(list(meta.value_range)),
        "resize_interpolation": meta.interpolation,
        "class_names": json.dumps(list(meta.class_names)),
        "output": m.graph.output[0].name,
        "precision": "fp32",
        "source_sha256": ckpt.sha256,
        "source_file": ckpt.path.name,
    }
    del m.metadata_props[:]
    for k, v in props.items():
        m.metadata_props.add(key=k, value=v)


def simplify(m: onnx.ModelProto) -> tuple[onnx.ModelProto, bool]:
    import onnxsim

    simplified, ok = onnxsim.simplify(m)
    return (simplified, True) if ok else (m, False)


# PyTorch and ONNX Runtime sum convolutions in different orders, so where a 2x2 pooling window's two
# largest values differ by less than that rounding, the two pick different positions and a few
# output pixels flip. Such near-ties are rare on photos (2 of 1,048,576 pixels on 64 test photos
# with the bundled model) and common on the tie-heavy synthetic inputs (3 of 196,608 when PyTorch
# runs on one thread, 0 on two), so PyTorch is held to a flip rate; the unpool rewrite itself is
# held to the MaxUnpool graph in ONNX Runtime, where the convolutions are identical: no flip at all.
MAX_REAL_FLIPS_PER_MILLION = 10
MAX_SYNTHETIC_FLIPS_PER_MILLION = 100


@dataclass
class VerifyReport:
    inputs: int
    pixels: int
    max_abs_error: float
    agreement: float
    real_images: int = 0
    synthetic_flips: int = 0  # PyTorch vs ONNX Runtime on the synthetic inputs
    real_flips: int = 0
    real_pixels: int = 0
    unpool_flips: int = 0  # the rewrite vs MaxPool indices + MaxUnpool, both in ONNX Runtime
    unpool_max_abs_diff: float = 0.0
    non_finite: int = 0  # NaN/inf logits (PyTorch's or ONNX Runtime's): NaN == NaN must not count as agreement

    @property
    def passed(self) -> bool:
        synthetic_pixels = self.pixels - self.real_pixels
        return (self.non_finite == 0 and self.unpool_flips == 0 and self.unpool_max_abs_diff == 0.0
                and self.synthetic_flips * 1e6 <= MAX_SYNTHETIC_FLIPS_PER_MILLION * synthetic_pixels
                and self.real_flips * 1e6 <= MAX_REAL_FLIPS_PER_MILLION * self.real_pixels)


def verification_inputs(size: tuple[int, int], seed: int = 0) -> np.ndarray:
    """Random and tie-heavy inputs: uniform noise, 4-level quantized noise, flat blocks, black."""
    h, w = size
    rng = np.random.default_rng(seed)
    uniform = rng.random((2, 3, h, w), dtype=np.float32)
    levels = (rng.integers(0, 4, (2, 3, h, w)) / 3).astype(np.float32)
    blocks = np.kron(rng.integers(0, 3, (1, 3, h // 8, w // 8)) / 2, np.ones((8, 8))).astype(np.float32)
    black = np.zeros((1, 3, h, w), dtype=np.float32)
    return np.concatenate([uniform, levels, blocks, black])


def verify(onnx_bytes: bytes, ckpt: LoadedCheckpoint, size: tuple[int, int], images: np.ndarray | None = None,
           threads: int | None = None, reference_bytes: bytes | None = None,
           flip_average: bool = False) -> VerifyReport:
    """Compare ONNX Runtime with PyTorch (notebook model, MaxUnpool path) on synthetic and real inputs,
    and, given ``reference_bytes`` (the same network with MaxUnpool, see :func:`build_graph`), the
    unpool rewrite with MaxUnpool in ONNX Runtime, which must match exactly."""
    from edgeseg.runtime.backends.onnxruntime import create_session

    sess = create_session(onnx_bytes, threads=threads)
    ref_sess = create_session(reference_bytes, threads=threads) if reference_bytes is not None else None
    inp = sess.get_inputs()[0]
    static_batch = inp.shape[0] if isinstance(inp.shape[0], int) else None
    x_all = verification_inputs(size)
    n_synthetic = len(x_all)
    n_real = 0 if images is None else len(images)
    if n_real:
        x_all = np.concatenate([x_all, images.astype(np.float32)])
    max_err, unpool_diff, unpool_flips, non_finite = 0.0, 0.0, 0, 0
    flips = np.zeros(len(x_all), dtype=np.int64)
    step = static_batch or 4
    for i in range(0, len(x_all), step):
        x = x_all[i:i + step]
        pad = step - len(x) if static_batch else 0
        xb = np.concatenate([x, np.repeat(x[-1:], pad, axis=0)]) if pad else x
        out = sess.run(None, {inp.name: xb})[0][: len(x)]
        with torch.no_grad():
            t = torch.from_numpy(x)
            ref = ckpt.model(t)
            if flip_average:
                ref = (ref + ckpt.model(t.flip(3)).flip(3)) / 2
            ref = ref.numpy()
        ref_ids = ref.argmax(1)
        non_finite += int((~np.isfinite(ref)).sum()) + (int((~np.isfinite(out)).sum()) if out.ndim == 4 else 0)
        if out.ndim == 4:
            max_err = max(max_err, float(np.abs(out - ref).max()))
            ids = out.argmax(1)
        else:
            ids = out.astype(np.int64)
        flips[i:i + len(x)] = (ids != ref_ids).reshape(len(x), -1).sum(1)
        if ref_sess is not None:
            same_net = ref_sess.run(None, {inp.name: xb})[0][: len(x)]
            unpool_diff = max(unpool_diff, float(np.abs(out.astype(np.float64) - same_net).max()))
            unpool_flips += int(((out.argmax(1) if out.ndim == 4 else out) !=
                                 (same_net.argmax(1) if same_net.ndim == 4 else same_net)).sum())
    per_image = size[0] * size[1]
    pixels = per_image * len(x_all)
    return VerifyReport(inputs=len(x_all), pixels=pixels, max_abs_error=max_err,
                        agreement=1 - flips.sum() / pixels, real_images=n_real,
                        synthetic_flips=int(flips[:n_synthetic].sum()), real_flips=int(flips[n_synthetic:].sum()),
                        real_pixels=per_image * n_real, unpool_flips=unpool_flips, unpool_max_abs_diff=unpool_diff,
                        non_finite=non_finite)


def export(ckpt: LoadedCheckpoint, out: str | Path, opts: ExportOptions, verify_images: np.ndarray | None = None,
           force: bool = False) -> ExportReport:
    """Build, simplify, verify and write the deploy ONNX; nothing is written when verification fails."""
    validate_options(opts)
    out = check_writable(out, force)
    t0 = time.perf_counter()
    m = build_graph(ckpt, opts)
    nodes_before = len(m.graph.node)
    simplified = False
    if opts.simplify:
        m, simplified = simplify(m)
    attach_metadata(m, ckpt, opts)
    data = m.SerializeToString()
    reference = build_graph(ckpt, opts, maxunpool=True)
    if opts.simplify:
        reference, _ = simplify(reference)
    report = verify(data, ckpt, opts.size or ckpt.meta.input_size, verify_images,
                    reference_bytes=reference.SerializeToString(), flip_average=opts.flip_average)
    if not report.passed:
        if report.non_finite:
            raise EdgesegError(f"verification failed: the model computes {report.non_finite} NaN/inf output "
                               "value(s) (non-finite weights or statistics); nothing was written", out)
        raise EdgesegError(
            f"verification failed: the unpool rewrite differs from MaxUnpool on {report.unpool_flips} pixel(s) "
            f"(max abs difference {report.unpool_max_abs_diff:.3g}); ONNX Runtime and PyTorch disagree on "
            f"{report.synthetic_flips} pixel(s) of the synthetic inputs and {report.real_flips} of "
            f"{report.real_pixels} on photos (max abs error {report.max_abs_error:.3g}); nothing was written. "
            "Rerun with --debug and report it",
            out,
        )
    atomic_write(out, lambda tmp: tmp.write_bytes(data), force=force)
    hist: dict[str, int] = {}
    for n in m.graph.node:
        hist[n.op_type] = hist.get(n.op_type, 0) + 1
    return ExportReport(path=str(out), nodes_before=nodes_before, nodes_after=len(m.graph.node),
                        simplified=simplified, seconds=time.perf_counter() - t0, file_bytes=len(data),
                        verification=report, op_histogram=dict(sorted(hist.items())))
