"""INT8 Q/DQ models for CPU/ARM (ONNX Runtime) and TensorRT, with a measured accuracy gate.

Targets (ONNX Runtime static quantization, QDQ format, per-channel weights):

- ``cpu``: convolutions and their ReLUs, uint8 activations (asymmetric) and int8 weights (U8S8),
  the combination ONNX Runtime's x86/ARM kernels are built for; see README "INT8" for the
  measurements behind it. The weights use 7 bits (-64..64): x86 CPUs without VNNI add pairs of
  u8 x s8 products in 16 bits, which full-range weights overflow (2 * 255 * 127 > 32767) in
  OpenVINO, and in ONNX Runtime unless a session asks for its slower exact kernels; with 7 bits
  every runtime computes exact products on every CPU (measured on the bundled model: no loss,
  models/README.md "INT8").
- ``tensorrt``: convolutions only, symmetric int8 activations and weights, every zero point 0,
  biases left in float (TensorRT dequantizes only 8-bit types); passes ``edgeseg check --target
  tensorrt``.

The unpool (see export.py) compares values sliced from one tensor. For ``cpu`` the pools and
unpools are then moved onto the quantized integers (edgeseg.compile.integer_unpool: the same winners,
no float island left); for ``tensorrt`` MaxPool and the unpool stay in float, and every window keeps
exactly one winner whatever precision TensorRT runs them in.

Calibration ranges can be cached to a JSON file and reused (``--calib-ranges``), which is how the
bundled model is quantized without any photos, and how the sensitivity search re-quantizes
without re-calibrating.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import onnx

from edgeseg.compile.calibration_cache import list_reader, load_ranges_file, quantize_static_cached
from edgeseg.compile.check import load_onnx
from edgeseg.compile.integer_unpool import integer_pools
from edgeseg.errors import EdgesegError
from edgeseg.evaluation.datasets import is_oxford_layout, oxford_split
from edgeseg.files import atomic_write, check_writable, sha256_file
from edgeseg.runtime.images import ImageError, list_images, preprocess, read_image
from edgeseg.runtime.meta import ModelMeta

TARGETS = ("cpu", "tensorrt")
# What each target quantizes. For `cpu` the ReLUs fold into the quantization range (ONNX Runtime
# drops them and keeps [0, max]): on the bundled model 0.91-0.93x the time of convs-only in ONNX
# Runtime and 0.89-0.90x in OpenVINO, same mIoU (README "INT8"). `tensorrt` keeps convs only: a
# symmetric int8 range cannot stand in for a ReLU.
QUANTIZED_OPS = {"cpu": ("Conv", "Relu"), "tensorrt": ("Conv",)}
CALIBRATED_OPS = ("Conv", "Relu")  # ranges for both targets from one calibration
METHODS = ("minmax", "entropy", "percentile")
# --method auto with photos. `tensorrt` is symmetric int8: one outlier sets the scale of the whole signed range,
# so clipping at a percentile keeps more resolution for the rest (TensorRT's own calibrators clip too: entropy);
# on the bundled model MinMax lost 0.57 / 0.29 mIoU points (3-breed / extra test) and percentile 0.12 / -0.07.
# `cpu` (asymmetric uint8, ReLUs folded in): MinMax 0.20 / 0.05 points, percentile 0.15 / 0.06 (models/README.md).
# With --calib-ranges, auto is the method the ranges were computed with.
DEFAULT_METHODS = {"cpu": "minmax", "tensorrt": "percentile"}
# Weight bits per target (see the module's docstring): TensorRT's GPU kernels accumulate in 32 bits.
WEIGHT_BITS = {"cpu": 7, "tensorrt": 8}
MIN_CALIBRATION_IMAGES = 16


@dataclass
class QuantizeOptions:
    target: str = "cpu"
    method: str = "auto"  # minmax, entropy, percentile, or auto (DEFAULT_METHODS, or the stored ranges' method)
    percentile: float = 99.999
    num_images: int = 200
    seed: int = 0
    exclude: list[str] = field(default_factory=list)  # node names kept in float


@dataclass
class Calibration:
    """Where the activation ranges come from: photos (and the cache they were written to) or a cache."""

    ranges: Path  # ORT TensorsData JSON
    images: int
    skipped: int
    sha256: str  # of the calibration set (its files' hashes in the order used), or of the ranges file
    seconds: float
    source: str
    masks_left_out: int = 0  # files under mask folders (annotations/, trimaps/, masks/...)
    duplicates_left_out: int = 0


def _meta_of(model: onnx.ModelProto, path: Path) -> ModelMeta:
    props = {p.key: p.value for p in model.metadata_props}
    if "edgeseg_meta" not in props:
        raise EdgesegError("has no edgeseg metadata; quantize an ONNX written by edgeseg export", path)
    if props.get("precision", "fp32") != "fp32":
        raise EdgesegError(f"is already quantized ({props['precision']}); quantize the FP32 export", path)
    return ModelMeta.from_dict(json.loads(props["edgeseg_meta"]))


# folders that hold label masks, not photos (Oxford-IIIT Pet's annotations/trimaps, Pascal VOC's
# SegmentationClass, ...): a mask PNG decodes as an image but would calibrate INT8 on grey levels 1..3
MASK_FOLDERS = frozenset({"annotations", "trimaps", "masks", "rough-masks", "labels", "segmentationclass",
                          "segmentationobject", "gt", "groundtruth"})


@dataclass
class Selection:
    paths: list[Path]
    masks: int = 0  # files under mask folders, left out
    duplicates: int = 0  # byte-identical copies, left out


def select_images(folder: Path, num_images: int, seed: int) -> Selection:
    """The calibration photos under ``folder``: photos only (mask folders left out), each file once
    (by content), then a random subset of ``num_images`` (0: all)."""
    found = list_images(folder, recursive=True)
    photos = [p for p in found if not MASK_FOLDERS & {d.lower() for d in p.relative_to(folder).parent.parts}]
    unique: dict[str, Path] = {}
    for p in photos:
        unique.setdefault(sha256_file(p), p)
    paths = sorted(unique.values())
    if num_images and len(paths) > num_images:
        paths = sorted(random.Random(seed).sample(paths, num_images))
    return Selection(paths, masks=len(found) - len(photos), duplicates=len(photos) - len(unique))


def calibrate(model_path: Path, folder: Path, opts: QuantizeOptions, ranges_out: Path,
              progress: Callable[[int, int], None] | None = None) -> Calibration:
    """Run the FP32 model over the calibration photos and write the activation ranges."""
    meta = _meta_of(onnx.load(str(model_path), load_external_data=False), model_path)
    selection = select_images(folder, opts.num_images, opts.seed)
    paths = selection.paths
    batches: list[np.ndarray] = []
    skipped: list[Path] = []
    digest = hashlib.sha256()
    for i, p in enumerate(paths):
        try:
            batches.append(preprocess(read_image(p), meta))
            digest.update(sha256_file(p).encode())
        except ImageError:
            skipped.append(p)
        if progress:
            progress(i + 1, len(paths))
    if skipped:
        logging.getLogger("edgeseg").warning("skipped %d unreadable file(s) in %s, e.g. %s", len(skipped), folder,
                                             skipped[0])
    if len(batches) < MIN_CALIBRATION_IMAGES:
        raise EdgesegError(f"only {len(batches)} usable image(s) (at least {MIN_CALIBRATION_IMAGES} needed for "
                           "calibration); add photos like the ones the camera will see", folder)

    t0 = time.perf_counter()
    _quantize(model_path, ranges_out.with_suffix(".probe.onnx"), opts, ranges_out,
              list_reader({"input": x} for x in batches), ops=CALIBRATED_OPS)
    ranges_out.with_suffix(".probe.onnx").unlink(missing_ok=True)
    return Calibration(ranges=ranges_out, images=len(batches), skipped=len(skipped), sha256=digest.hexdigest(),
                       seconds=time.perf_counter() - t0, source=str(folder), masks_left_out=selection.masks,
                       duplicates_left_out=selection.duplicates)


def _ort_method(opts: QuantizeOptions):
    from onnxruntime.quantization import CalibrationMethod

    return {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
            "percentile": CalibrationMethod.Percentile}[opts.method]


def _quantize(model_path: Path, out: Path, opts: QuantizeOptions, ranges: Path, reader=None,
              ops: tuple[str, ...] | None = None) -> None:
    from onnxruntime.quantization import QuantFormat, QuantType

    extra: dict = {"CalibPercentile": opts.percentile} if opts.method == "percentile" else {}
    if opts.target == "tensorrt":
        act, extra = QuantType.QInt8, {**extra, "ActivationSymmetric": True, "WeightSymmetric": True,
                                       "QuantizeBias": False}
    else:
        act = QuantType.QUInt8
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # the quantizer logs pre-processing advice on every call
    try:
        quantize_static_cached(
            ranges, reader, model_input=str(model_path), model_output=str(out), quant_format=QuantFormat.QDQ,
            op_types_to_quantize=list(ops or QUANTIZED_OPS[opts.target]), per_channel=True,
            reduce_range=WEIGHT_BITS[opts.target] == 7,
            activation_type=act, weight_type=QuantType.QInt8, nodes_to_exclude=list(opts.exclude),
            calibrate_method=_ort_method(opts), extra_options=extra,
        )
    finally:
        root.setLevel(level)


def check_ranges(ranges: Path, model_path: Path, opts: QuantizeOptions) -> None:
    """A stored ranges file must come from this model, hold every tensor the target quantizes and
    match --method."""
    src = onnx.load(str(model_path), load_external_data=False)
    names = {o for n in src.graph.node for o in n.output} | {i.name for i in src.graph.input}
    try:
        json.loads(ranges.read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        raise EdgesegError("not a calibration ranges file (not JSON); edgeseg quantize --save-ranges writes one",
                           ranges) from None
    try:
        method, data = load_ranges_file(ranges)
    except EdgesegError:  # any other JSON: most likely ranges of another model or tool
        method, data = None, {}
    cached = set(data)
    if not cached or not cached <= names:
        raise EdgesegError("these calibration ranges were computed for another model; calibrate with --calib DIR",
                           ranges)
    needed = {n.output[0] for n in src.graph.node if n.op_type in QUANTIZED_OPS[opts.target]}
    if not needed <= cached:
        missing = sorted(needed - cached)
        raise EdgesegError(f"these ranges lack {len(missing)} tensor(s) --target {opts.target} quantizes "
                           f"({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''}): they were computed for "
                           "another export of the model (an older edgeseg, or other export options such as "
                           "--flip-average); calibrate this file with --calib DIR", ranges)
    if opts.method != "auto" and method != opts.method:
        raise EdgesegError(f"these ranges were computed with --method {method}; pass that, or "
                           "calibrate again with --calib DIR", ranges)


def quantize_with_ranges(model_path: Path, ranges: Path, opts: QuantizeOptions, calib: Calibration) -> bytes:
    """The quantized model (bytes) with edgeseg metadata; ``ranges`` must fit this model (check_ranges)."""
    src = onnx.load(str(model_path))
    with tempfile.TemporaryDirectory(prefix="edgeseg-q-") as tmp:
        out = Path(tmp) / "q.onnx"
        _quantize(model_path, out, opts, ranges)
        m = onnx.load(str(out))
    integer = {}
    if opts.target == "cpu":  # TensorRT has no 8-bit Equal/Resize/MaxPool: its target keeps the float form
        m, pools, unpools = integer_pools(m)
        integer = {"integer_pools": pools, "integer_unpools": unpools}
    props = {p.key: p.value for p in src.metadata_props}
    props.update({
        "precision": f"int8-{opts.target}",
        "quantization": json.dumps({"target": opts.target, "method": opts.method, "format": "QDQ",
                                    "per_channel": True, "weight_bits": WEIGHT_BITS[opts.target],
                                    "ops": list(QUANTIZED_OPS[opts.target]),
                                    "float_nodes": sorted(opts.exclude),
                                    "calibration_images": calib.images, "calibration_source": calib.source,
                                    "calibration_sha256": calib.sha256, **integer}),
        "source_onnx_sha256": sha256_file(model_path),
    })
    del m.metadata_props[:]
    for k, v in props.items():
        m.metadata_props.add(key=k, value=v)
    return m.SerializeToString()


@dataclass
class GateResult:
    fp32: dict
    int8: dict
    drop_points: float | None  # mIoU points lost (None without masks)
    agreement: float

    @property
    def loss(self) -> float:
        """What the gate bounds: mIoU points lost with masks, else points of pixels that changed class."""
        return self.drop_points if self.drop_points is not None else 100 * (1 - self.agreement)


@dataclass(frozen=True)
class GateSpec:
    """The accuracy gate: on an Oxford-layout folder (masks) INT8 may lose at most ``max_drop`` mIoU
    points; on plain photos its masks must agree with FP32's on at least ``min_agreement`` of the
    pixels (INT8 moves about 3% of this model's pixels legitimately, README "INT8")."""

    val: Path
    limit: int = 0
    max_drop: float = 1.0
    min_agreement: float = 0.95
    threads: int | None = None

    def holds(self, r: GateResult) -> bool:
        return r.drop_points <= self.max_drop if r.drop_points is not None else r.agreement >= self.min_agreement

    def run(self, fp32_path: Path, int8: bytes, limit: int | None = None,
            progress: Callable[[int, int], None] | None = None) -> GateResult:
        return gate(fp32_path, int8, self.val, self.limit if limit is None else limit, self.threads, progress)


def gate(fp32_path: Path, int8: bytes, val: Path, limit: int = 0, threads: int | None = None,
         progress: Callable[[int, int], None] | None = None) -> GateResult:
    """FP32 vs INT8 side by side on ``val``: an Oxford-layout folder (scores) or plain photos (agreement)."""
    from edgeseg.evaluation.evaluate import evaluate
    from edgeseg.runtime.backends.predictor import Predictor

    with tempfile.TemporaryDirectory(prefix="edgeseg-gate-") as tmp:
        q = Path(tmp) / "int8.onnx"
        q.write_bytes(int8)
        # ONNX Runtime as the reference for both targets (OpenVINO's INT8 scored within 0.05 points of it)
        preds = [Predictor.load(fp32_path, backend="onnxruntime", threads=threads, precision="fp32"),
                 Predictor.load(q, backend="onnxruntime", threads=threads, precision="fp32")]
        if is_oxford_layout(val):
            split = "test" if (val / "annotations" / "test.txt").exists() else "list"
            samples = oxford_split(val, split)
            samples = samples[:limit] if limit else samples
            r = evaluate(preds, samples, progress=progress)
            return GateResult(r[0], r[1], 100 * (r[0]["miou"] - r[1]["miou"]), r[1]["agreement_with_first"])
        paths = list_images(val)
        paths = paths[:limit] if limit else paths
        if not paths:
            raise EdgesegError("no images to validate on", val)
        same = total = 0
        for i, p in enumerate(paths):
            if progress:
                progress(i + 1, len(paths))
            try:
                img = read_image(p)
            except ImageError:
                continue
            a, b = (pr.predict(img) for pr in preds)
            same += int((a == b).sum())
            total += a.size
        if not total:
            raise EdgesegError("none of these photos could be decoded, so INT8 cannot be checked on them; pass "
                               "--val a folder of JPEG/PNG photos (or an Oxford-layout folder)", val)
        return GateResult({}, {}, None, same / total)


def conv_nodes(model_path: Path) -> list[str]:
    return [n.name for n in onnx.load(str(model_path), load_external_data=False).graph.node if n.op_type == "Conv"]


@dataclass
class QuantizeReport:
    path: str | None
    target: str
    method: str  # the calibration method used (what --method auto chose)
    calibration: dict
    gate: dict | None
    float_nodes: list[str]
    sensitivity: list[tuple[str, float]]
    seconds: float
    passed: bool


def quantize(model_path: str | Path, out: str | Path, opts: QuantizeOptions, calib_dir: Path | None = None,
             calib_ranges: Path | None = None, val: Path | None = None, max_drop: float = 1.0,
             val_limit: int = 0, sensitivity_limit: int = 48, save_ranges: Path | None = None,
             min_agreement: float = 0.95,
             force: bool = False, threads: int | None = None,
             progress: Callable[[str, int, int], None] | None = None) -> QuantizeReport:
    """Calibrate, quantize, gate; on a failed gate keep the most sensitive convs in float until it holds."""
    model_path, out = Path(model_path), Path(out)
    if opts.target not in TARGETS:
        raise EdgesegError(f"--target {opts.target!r}: choose cpu or tensorrt")
    if opts.method not in (*METHODS, "auto"):
        raise EdgesegError(f"--method {opts.method!r}: choose {', '.join(METHODS)} or auto")
    if (calib_dir is None) == (calib_ranges is None):
        raise EdgesegError("give --calib DIR (photos) or --calib-ranges FILE (stored ranges), not both or neither")
    if not model_path.exists():
        raise EdgesegError("no such file; check the path", model_path)
    check_writable(out, force)
    if save_ranges is not None:
        check_writable(save_ranges, force)
    _meta_of(load_onnx(model_path), model_path)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="edgeseg-calib-") as tmp:
        if calib_dir is not None:
            if opts.method == "auto":
                opts = replace(opts, method=DEFAULT_METHODS[opts.target])
            ranges = Path(tmp) / "ranges.json"
            calib = calibrate(model_path, calib_dir, opts, ranges,
                              progress=(lambda i, n: progress("calibrating", i, n)) if progress else None)
        else:
            if not calib_ranges.is_file():
                raise EdgesegError("no such calibration ranges file", calib_ranges)
            check_ranges(calib_ranges, model_path, opts)
            if opts.method == "auto":
                opts = replace(opts, method=load_ranges_file(calib_ranges)[0])
            ranges = Path(tmp) / "ranges.json"
            ranges.write_bytes(calib_ranges.read_bytes())
            calib = Calibration(ranges=ranges, images=0, skipped=0, sha256=sha256_file(calib_ranges), seconds=0.0,
                                source=str(calib_ranges))
        data = quantize_with_ranges(model_path, ranges, opts, calib)
        spec = GateSpec(val, val_limit, max_drop, min_agreement, threads) if val is not None else None
        result = spec.run(model_path, data, progress=(lambda i, n: progress("accuracy gate", i, n))
                          if progress else None) if spec is not None else None
        sensitivity: list[tuple[str, float]] = []
        if result is not None and not spec.holds(result):
            data, result, sensitivity, opts = _recover(model_path, ranges, opts, calib, spec, sensitivity_limit,
                                                       progress)
        passed = result is None or spec.holds(result)
        if passed:
            atomic_write(out, lambda p: p.write_bytes(data), force=force)
        if save_ranges is not None and passed:
            atomic_write(save_ranges, lambda p: p.write_bytes(ranges.read_bytes()), force=force)
    return QuantizeReport(
        path=str(out) if passed else None, target=opts.target, method=opts.method,
        calibration={"images": calib.images, "skipped": calib.skipped, "seconds": calib.seconds,
                     "source": calib.source, "sha256": calib.sha256, "masks_left_out": calib.masks_left_out,
                     "duplicates_left_out": calib.duplicates_left_out},
        gate=None if result is None else {"fp32": result.fp32, "int8": result.int8, "drop_points": result.drop_points,
                                          "agreement": result.agreement, "max_drop": max_drop,
                                          "min_agreement": min_agreement},
        float_nodes=list(opts.exclude), sensitivity=sensitivity, seconds=time.perf_counter() - t0, passed=passed)


def _recover(model_path: Path, ranges: Path, opts: QuantizeOptions, calib: Calibration, spec: GateSpec,
             sensitivity_limit: int, progress: Callable[[str, int, int], None] | None
             ) -> tuple[bytes, GateResult, list[tuple[str, float]], QuantizeOptions]:
    """Rank convs by how much of the gate's loss keeping each one alone in float recovers (on the
    first ``sensitivity_limit`` validation images), then keep the top 1, 2, 4, ... in float until the
    full gate holds. Returns the model, its gate result, the ranking and the options tried last."""
    base = list(opts.exclude)
    if spec.limit:  # --val-limit bounds the search too
        sensitivity_limit = min(sensitivity_limit, spec.limit)
    reference = spec.run(model_path, quantize_with_ranges(model_path, ranges, opts, calib), sensitivity_limit).loss
    candidates = [n for n in conv_nodes(model_path) if n not in base]
    scores = []
    for i, node in enumerate(candidates):
        trial = replace(opts, exclude=[*base, node])
        r = spec.run(model_path, quantize_with_ranges(model_path, ranges, trial, calib), sensitivity_limit)
        scores.append((node, reference - r.loss))
        if progress:
            progress("sensitivity", i + 1, len(candidates))
    scores.sort(key=lambda s: -s[1])
    sizes = sorted({min(2**i, len(scores)) for i in range(len(scores).bit_length() + 1)})
    for k in sizes:
        trial = replace(opts, exclude=[*base, *(n for n, _ in scores[:k])])
        data = quantize_with_ranges(model_path, ranges, trial, calib)
        result = spec.run(model_path, data)
        if spec.holds(result):
            break
    return data, result, scores, trial
