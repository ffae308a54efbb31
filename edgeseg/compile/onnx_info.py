"""What `edgeseg info` shows for an ONNX model: metadata, inputs/outputs, op histogram, quantization.

Works with ONNX Runtime alone (the device side); with the ``onnx`` package it adds the op histogram
and the quantization summary.
"""

from __future__ import annotations

import importlib.util
import json
from collections import Counter
from pathlib import Path

from edgeseg.files import sha256_file

_TYPES = {1: "float32", 2: "uint8", 3: "int8", 6: "int32", 7: "int64", 9: "bool", 10: "float16"}


def _io(values) -> list[dict]:
    out = []
    for v in values:
        t = v.type.tensor_type
        dims = [d.dim_param or d.dim_value for d in t.shape.dim]
        out.append({"name": v.name, "shape": dims, "dtype": _TYPES.get(t.elem_type, str(t.elem_type))})
    return out


def describe_onnx(path: Path) -> dict:
    d: dict = {"path": str(path), "kind": "onnx", "file_bytes": path.stat().st_size, "sha256": sha256_file(path)}
    if importlib.util.find_spec("onnx") is None:  # device side: ONNX Runtime only
        from edgeseg.runtime.backends.onnxruntime import create_session

        sess = create_session(path, threads=1)
        d["metadata"] = dict(sess.get_modelmeta().custom_metadata_map)
        d["inputs"] = [{"name": i.name, "shape": i.shape, "dtype": i.type} for i in sess.get_inputs()]
        d["outputs"] = [{"name": o.name, "shape": o.shape, "dtype": o.type} for o in sess.get_outputs()]
        return d
    from edgeseg.compile.check import load_onnx

    m = load_onnx(path)
    d["metadata"] = {p.key: p.value for p in m.metadata_props}
    d["opset"] = next((o.version for o in m.opset_import if o.domain in ("", "ai.onnx")), 0)
    d["inputs"] = _io(m.graph.input)
    d["outputs"] = _io(m.graph.output)
    d["nodes"] = len(m.graph.node)
    d["op_histogram"] = dict(sorted(Counter(n.op_type for n in m.graph.node).items()))
    d["initializer_values"] = int(sum(_numel(t) for t in m.graph.initializer))
    d["quantization"] = quantization_summary(m)
    return d


def quantization_summary(m) -> dict | None:
    """Which convs run quantized (a DequantizeLinear feeds their input) and with what types/zero points."""
    from onnx import TensorProto, numpy_helper

    nodes = list(m.graph.node)
    if not any(n.op_type == "QuantizeLinear" for n in nodes):
        return None
    inits = {t.name: t for t in m.graph.initializer}
    producer = {o: n for n in nodes for o in n.output}
    act_types, weight_types, zero_points_zero, per_channel = Counter(), Counter(), True, 0
    quantized, float_convs = [], []
    for n in nodes:
        if n.op_type == "DequantizeLinear" and len(n.input) > 2 and n.input[2] in inits:
            zp = inits[n.input[2]]
            zero_points_zero &= not numpy_helper.to_array(zp).any()
            kind = weight_types if n.input[0] in inits else act_types
            kind[TensorProto.DataType.Name(zp.data_type).lower()] += 1
            per_channel += int(len(zp.dims) == 1 and zp.dims[0] > 1)
        if n.op_type == "Conv":  # quantized when its weights are int8 (the input may be dequantized either way)
            src = producer.get(n.input[1])
            (quantized if src is not None and src.op_type == "DequantizeLinear" else float_convs).append(n.name)
    return {"quantized_convs": quantized, "float_convs": float_convs, "activation_types": dict(act_types),
            "weight_types": dict(weight_types), "per_channel_tensors": per_channel,
            "all_zero_points_zero": bool(zero_points_zero),
            "q_nodes": sum(n.op_type == "QuantizeLinear" for n in nodes),
            "dq_nodes": sum(n.op_type == "DequantizeLinear" for n in nodes)}


def _numel(t) -> int:
    n = 1
    for dim in t.dims:
        n *= dim
    return n


def onnx_rows(d: dict) -> list[tuple[str, object]]:
    """Table rows for the CLI."""
    def fmt(io: list[dict]) -> str:
        return "; ".join(f"{v['name']} {v['dtype']}[{'x'.join(map(str, v['shape']))}]" for v in io)

    meta = d.get("metadata", {})
    rows: list[tuple[str, object]] = [("inputs", fmt(d["inputs"])), ("outputs", fmt(d["outputs"]))]
    if "opset" in d:
        rows += [("opset", d["opset"]), ("nodes", d["nodes"]), ("initializer values", f"{d['initializer_values']:,}"),
                 ("ops", ", ".join(f"{k} {v}" for k, v in d["op_histogram"].items()))]
    if "edgeseg_meta" in meta:
        m = json.loads(meta["edgeseg_meta"])
        rows += [("arch", f"{m['arch']} (kernel size {m['kernel_size']})"),
                 ("classes", ", ".join(f"{i} {n}" for i, n in enumerate(m["class_names"]))),
                 ("preprocess", f"{m['color']} {m['layout']}, values {m['value_range'][0]:g}..{m['value_range'][1]:g}, "
                                f"resize {m['interpolation']}")]
        if m.get("flip_average"):
            rows.append(("test time", "logits averaged with the mirror image's, in the graph (edgeseg export "
                                      "--flip-average): twice the compute"))
    q = d.get("quantization")
    if q:
        n_conv = len(q["quantized_convs"]) + len(q["float_convs"])
        rows += [("quantized convs", f"{len(q['quantized_convs'])} of {n_conv} ({q['q_nodes']} Q, {q['dq_nodes']} DQ)"),
                 ("activations", ", ".join(f"{k} x{v}" for k, v in q["activation_types"].items())),
                 ("weights", ", ".join(f"{k} x{v}" for k, v in q["weight_types"].items())
                  + f"; {q['per_channel_tensors']} per-channel"),
                 ("zero points", "all 0 (symmetric)" if q["all_zero_points_zero"] else "non-zero (asymmetric)")]
        if q["float_convs"]:
            rows.append(("float convs", ", ".join(q["float_convs"])))
    rows += [(f"meta.{k}", v) for k, v in meta.items() if k not in ("edgeseg_meta", "class_names", "quantization")]
    if "quantization" in meta:
        rows += [(f"quantization.{k}", v) for k, v in json.loads(meta["quantization"]).items()]
    return rows
