"""Static compatibility check of an ONNX model against a deployment target, before any build.

``tensorrt``: rules of the onnx-tensorrt parser shipped with TensorRT 10 (docs/operators.md and the
Q/DQ importer): supported ops only, MaxPool without an indices output, symmetric int8 Q/DQ (zero
point 0, no uint8), no op but DequantizeLinear on 8-bit integers, opset 9..20, static non-batch dimensions.
``onnxruntime``: the ONNX checker with shape inference, then a CPU session is created.
Every problem is listed with its node name.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import onnx
from onnx import TensorProto, numpy_helper

from edgeseg.errors import EdgesegError

TARGETS = ("tensorrt", "onnxruntime")
TENSORRT_OPSETS = range(9, 21)

# Ops the TensorRT 10 ONNX parser imports (onnx-tensorrt docs/operators.md, 10.x). An allowlist:
# an op missing here is reported rather than assumed to work.
TENSORRT_OPS = frozenset({
    "Abs", "Acos", "Acosh", "Add", "And", "ArgMax", "ArgMin", "Asin", "Asinh", "Atan", "Atanh", "AveragePool",
    "BatchNormalization", "Bernoulli", "BlackmanWindow", "Cast", "CastLike", "Ceil", "Celu", "Clip", "Concat",
    "Constant", "ConstantOfShape", "Conv", "ConvTranspose", "Cos", "Cosh", "CumSum", "DeformConv",
    "DepthToSpace", "DequantizeLinear", "Div", "Dropout", "DynamicQuantizeLinear", "Einsum", "Elu", "Equal",
    "Erf", "Exp", "Expand", "EyeLike", "Flatten", "Floor", "Gather", "GatherElements", "GatherND", "Gelu",
    "Gemm", "GlobalAveragePool", "GlobalLpPool", "GlobalMaxPool", "Greater", "GreaterOrEqual", "GridSample",
    "GroupNormalization", "GRU", "HammingWindow", "HannWindow", "HardSigmoid", "HardSwish", "Hardmax",
    "Identity", "If", "ImageScaler", "InstanceNormalization", "IsInf", "IsNaN", "LayerNormalization",
    "LeakyRelu", "Less", "LessOrEqual", "Log", "LogSoftmax", "Loop", "LpNormalization", "LpPool", "LRN",
    "LSTM", "MatMul", "Max", "MaxPool", "Mean", "MeanVarianceNormalization", "Min", "Mish", "Mod", "Mul",
    "Neg", "NonMaxSuppression", "NonZero", "Not", "OneHot", "Or", "Pad", "ParametricSoftplus", "Pow", "PRelu",
    "QuantizeLinear", "RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Range",
    "Reciprocal", "ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceMax", "ReduceMean",
    "ReduceMin", "ReduceProd", "ReduceSum", "ReduceSumSquare", "Relu", "Reshape", "Resize", "ReverseSequence",
    "RNN", "RoiAlign", "Round", "ScaledTanh", "Scan", "Scatter", "ScatterElements", "ScatterND", "Selu",
    "Shape", "Shrink", "Sigmoid", "Sign", "Sin", "Sinh", "Size", "Slice", "Softmax", "Softplus", "Softsign",
    "SpaceToDepth", "Split", "Sqrt", "Squeeze", "STFT", "Sub", "Sum", "Tan", "Tanh", "ThresholdedRelu",
    "Tile", "TopK", "Transpose", "Trilu", "Unique", "Unsqueeze", "Upsample", "Where", "Xor",
})
TENSORRT_QUANT_TYPES = {TensorProto.INT8, TensorProto.FLOAT8E4M3FN, TensorProto.INT4}


@dataclass(frozen=True)
class Problem:
    node: str  # node (or tensor) name; "" for model-wide problems
    op: str
    message: str

    def __str__(self) -> str:
        where = f"{self.node} ({self.op})" if self.node else "model"
        return f"{where}: {self.message}"


def load_onnx(path: str | Path) -> onnx.ModelProto:
    path = Path(path)
    if not path.exists():
        raise EdgesegError("no such file; check the path", path)
    try:
        m = onnx.load(str(path))
    except Exception as e:
        raise EdgesegError(f"not an ONNX model (unreadable: {type(e).__name__}); re-export it", path) from e
    if not m.graph.node or not m.graph.input:  # protobuf parses an empty or foreign file as an empty model
        raise EdgesegError("not an ONNX model (no graph inside: empty, truncated or another kind of file); "
                           "re-export it", path)
    return m


def _opset(m: onnx.ModelProto) -> int:
    return next((o.version for o in m.opset_import if o.domain in ("", "ai.onnx")), 0)


def check_tensorrt(m: onnx.ModelProto) -> list[Problem]:
    problems: list[Problem] = []
    opset = _opset(m)
    if opset not in TENSORRT_OPSETS:
        span = f"{TENSORRT_OPSETS.start}..{TENSORRT_OPSETS.stop - 1}"
        problems.append(Problem("", "", f"opset {opset} is outside TensorRT 10's range {span}; "
                                        "re-export with --opset 17"))
    inits = {t.name: t for t in m.graph.initializer}
    for n in m.graph.node:
        name = n.name or (n.output[0] if n.output else "?")
        if n.domain not in ("", "ai.onnx"):
            problems.append(Problem(name, n.op_type, f"custom domain {n.domain!r} needs a TensorRT plugin"))
            continue
        if n.op_type not in TENSORRT_OPS:
            problems.append(Problem(name, n.op_type, f"{n.op_type} is not supported by TensorRT's ONNX parser"))
        if n.op_type == "MaxPool" and len([o for o in n.output if o]) > 1:
            problems.append(Problem(name, n.op_type, "MaxPool with an Indices output is not supported by TensorRT"))
        if n.op_type in ("QuantizeLinear", "DequantizeLinear"):
            if len(n.input) < 3 or not n.input[2]:
                if n.op_type == "QuantizeLinear":
                    problems.append(Problem(name, n.op_type, "no zero point: ONNX then quantizes to uint8, which "
                                                             "TensorRT rejects; give an int8 zero point of 0"))
                continue
            zp = inits.get(n.input[2])
            if zp is None:
                problems.append(Problem(name, n.op_type, "zero point is not a constant initializer"))
                continue
            if zp.data_type not in TENSORRT_QUANT_TYPES:
                problems.append(Problem(name, n.op_type, f"{TensorProto.DataType.Name(zp.data_type)} quantization; "
                                                         "TensorRT takes int8 (symmetric) only"))
            elif numpy_helper.to_array(zp).any():
                problems.append(Problem(name, n.op_type, "non-zero zero point; TensorRT supports symmetric "
                                                         "quantization only (quantize with --target tensorrt)"))
    problems += _integer_compute(m)
    for v in m.graph.input:
        dims = v.type.tensor_type.shape.dim
        for i, d in enumerate(dims):
            if i > 0 and not d.HasField("dim_value"):
                problems.append(Problem(v.name, "input", f"dimension {i} is dynamic ({d.dim_param or '?'}); only the "
                                                         "batch dimension may be; re-export with a fixed --size"))
    return problems


def _integer_compute(m: onnx.ModelProto) -> list[Problem]:
    """Nodes other than DequantizeLinear that read 8-bit integer tensors (the integer pools and unpools
    of an INT8 ``cpu`` file): TensorRT computes on int8 only inside the layers it fuses from Q/DQ."""
    inferred = onnx.shape_inference.infer_shapes(m)
    types = {v.name: v.type.tensor_type.elem_type for v in (*inferred.graph.value_info, *inferred.graph.input)}
    eight_bit = {TensorProto.INT8, TensorProto.UINT8}
    problems = []
    for n in m.graph.node:
        if n.op_type != "DequantizeLinear" and any(types.get(i) in eight_bit for i in n.input):
            problems.append(Problem(n.name or n.output[0], n.op_type, "computes on 8-bit integers, which TensorRT "
                                    "does only inside Q/DQ-fused layers (quantize with --target tensorrt)"))
    return problems


def check_onnxruntime(m: onnx.ModelProto) -> list[Problem]:
    try:
        onnx.checker.check_model(m, full_check=True)
    except Exception as e:
        return [Problem("", "", f"ONNX checker: {str(e).strip().splitlines()[0]}")]
    from edgeseg.runtime.backends.onnxruntime import create_session

    try:
        create_session(m.SerializeToString(), threads=1)
    except EdgesegError as e:
        return [Problem("", "", str(e))]
    return []


def check(path: str | Path, target: str) -> list[Problem]:
    """All problems that keep ``path`` from running on ``target`` (empty when it is fine)."""
    if target not in TARGETS:
        raise EdgesegError(f"--target {target!r}: choose {' or '.join(TARGETS)}")
    m = load_onnx(path)
    return check_tensorrt(m) if target == "tensorrt" else check_onnxruntime(m)
