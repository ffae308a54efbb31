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
        from edgeseg.runtime.onnxruntime import create_session

        sess = create_session(path, threads=1)
        d["metadata"] = dict(sess.get_modelmeta().custom_metadata_map)
        d["inputs"] = [{"name": i.name, "shape": i.shape, "dtype": i.type} for i in sess.get_inputs()]
        d["outputs"] = [{"name": o.name, "shape": o.shape, "dtype": o.type} for o in sess.get_outputs()]
        return d
    from edgeseg.check import load_onnx

    m = load_onnx(path)
    d["metadata"] = {p.key: p.value for p in m.metadata_props}
    d["opset"] = next((o.version for o in m.opset_import if o.domain in ("", "ai.onnx")), 0)
    d["inputs"] = _io(m.graph.input)
    d["outputs"] = _io(m.graph.output)
    d["nodes"] = len(m.graph.node)
    d["op_histogram"] = dict(sorted(Counter(n.op_type for n in m.graph.node).items()))
    d["initializer_values"] = int(sum(_numel(t) for t in m.graph.initializer))
    return d


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
    rows += [(f"meta.{k}", v) for k, v in meta.items() if k not in ("edgeseg_meta", "class_names")]
    return rows
