"""What every backend gives the Predictor: its facts (:class:`BackendInfo`), the checked reading of an
ONNX file (:func:`inspect_onnx`), the model metadata, and class ids from scores."""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgeseg.errors import EdgesegError
from edgeseg.runtime.meta import ModelMeta


@dataclass
class BackendInfo:
    name: str  # onnxruntime | torch
    provider: str  # CPUExecutionProvider, cpu, cuda...
    precision: str  # the file's: fp32, or what edgeseg quantize recorded (int8-cpu, int8-tensorrt)
    threads: int
    output: str  # "logits" or "classes" (the model ends in an ArgMax head)
    static_batch: int | None  # None when the batch dimension is dynamic
    extra: dict = field(default_factory=dict)
    compute: str = "fp32"  # the arithmetic of its float layers: fp32, bf16 or fp16 (TensorRT: the engine's)

    @property
    def label(self) -> str:
        """``fp32``, ``fp32 as bf16``, ``int8-cpu + bf16``: what tables show."""
        if self.compute == "fp32" or self.compute == self.precision:
            return self.precision
        return f"{self.precision} + {self.compute}" if self.precision.startswith("int8") else \
            f"{self.precision} as {self.compute}"


@dataclass
class OnnxFacts:
    """An ONNX file as ONNX Runtime (on every install) reads it: metadata and its one input and output."""

    props: dict[str, str]
    input_name: str
    input_shape: list
    output_shape: list


def inspect_onnx(path: Path) -> OnnxFacts:
    """Read ``path`` and check it is a segmentation model of edgeseg's shape before any runtime compiles
    it: one image input N x 3 x H x W and one output of logits (N x C x H x W) or class ids (N x H x W).
    Anything else is one line naming the file (a runtime would fail later, with a dump or a crash)."""
    from edgeseg.runtime.backends.onnxruntime import create_session

    sess = create_session(path, threads=1)
    ins, outs = sess.get_inputs(), sess.get_outputs()
    fix = "is this an edgeseg model? (edgeseg export writes one)"
    if len(ins) != 1 or len(outs) != 1:
        raise EdgesegError(f"has {len(ins)} input(s) and {len(outs)} output(s), expected one image in and one "
                           f"mask out; {fix}", path)
    shape, out = list(ins[0].shape), list(outs[0].shape)
    if len(shape) != 4 or shape[1] != 3:
        raise EdgesegError(f"input {ins[0].name!r} is {shape}, expected N x 3 x H x W (an RGB image); {fix}", path)
    if len(out) not in (3, 4) or (len(out) == 4 and not isinstance(out[1], int)):
        raise EdgesegError(f"output {outs[0].name!r} is {out}, expected N x classes x H x W (logits) or N x H x W "
                           f"(class ids); {fix}", path)
    try:
        props = dict(sess.get_modelmeta().custom_metadata_map)
    except UnicodeDecodeError:  # ONNX Runtime hands metadata over as UTF-8 text
        raise EdgesegError(f"its metadata is not UTF-8 text; {fix}", path) from None
    return OnnxFacts(props, ins[0].name, shape, out)


def full_range_int8(props: dict[str, str]) -> bool:
    """An INT8 file whose weights use all 8 bits: edgeseg's ``tensorrt`` target, and ``cpu`` files
    quantized before that target kept to 7 bits (edgeseg.compile.quantize.WEIGHT_BITS)."""
    if not props.get("precision", "fp32").startswith("int8"):
        return False
    try:
        return json.loads(props.get("quantization", "{}")).get("weight_bits", 8) != 7
    except (ValueError, AttributeError):
        return True


def meta_from_props(props: dict[str, str], input_shape: list, path: Path) -> ModelMeta:
    """The model's own metadata (edgeseg export writes it), checked against the graph's input."""
    h, w = input_shape[2], input_shape[3]
    if "edgeseg_meta" in props:
        try:
            meta = ModelMeta.from_dict(json.loads(props["edgeseg_meta"]))
        except (ValueError, TypeError) as e:  # json's errors are ValueErrors
            raise EdgesegError(f"its edgeseg metadata is unreadable ({e}); export the model again with edgeseg "
                               "export", path) from None
        graph = tuple(n for n in (h, w) if isinstance(n, int))
        if len(graph) == 2 and graph != meta.input_size:
            said = "x".join(map(str, meta.input_size))
            raise EdgesegError(f"its metadata says {said} inputs but the graph takes {h}x{w}; export the model "
                               "again with edgeseg export", path)
        return meta
    if not isinstance(h, int) or not isinstance(w, int):
        raise EdgesegError("has no edgeseg metadata and a dynamic input size; re-export it with edgeseg export", path)
    warnings.warn(f"{path}: no edgeseg metadata; assuming RGB in [0,1], nearest resize, pet/background/border",
                  stacklevel=3)
    return ModelMeta(input_size=(h, w))


def class_ids(logits: np.ndarray) -> np.ndarray:
    """(N, C, H, W) scores -> (N, H, W) uint8 ids, the first maximum winning (as argmax).

    A running compare-and-keep over the few classes is 2x faster than ``argmax(1)`` (which walks
    the strided class axis per pixel): 0.07 vs 0.15 ms at 3x128x128 on the dev machine.
    """
    best = logits[:, 0].copy()
    ids = np.zeros(best.shape, np.uint8)
    for c in range(1, logits.shape[1]):
        better = logits[:, c] > best
        ids[better] = c
        np.maximum(best, logits[:, c], out=best)
    return ids
