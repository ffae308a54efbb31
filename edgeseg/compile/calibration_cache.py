"""Calibration ranges stored as a JSON file, on every ONNX Runtime edgeseg supports.

ONNX Runtime 1.24 added ``quantize_static(calibration_cache_path=...)``: compute the activation
ranges once, reuse them for every later quantization. Its wheels need Python 3.11+, so JetPack 6
(Python 3.10) gets ONNX Runtime 1.23 at most, whose ``quantize_static`` always calibrates. There,
:func:`quantize_static_cached` hands the stored ranges to ONNX Runtime's own quantizer through its
calibrator hook (or captures the ranges it computes) and reads/writes the same JSON layout, so a
ranges file moves freely between the two (``models/segnet_dsc.calib.json`` is one).
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import itertools
import json
import sys
from collections.abc import Callable, Iterable
from enum import Enum
from pathlib import Path

import numpy as np

from edgeseg.errors import EdgesegError
from edgeseg.files import atomic_write


def native_cache() -> bool:
    from onnxruntime.quantization import quantize_static

    return "calibration_cache_path" in inspect.signature(quantize_static).parameters


def _encode(obj):
    if isinstance(obj, np.ndarray):
        return {"data": obj.tolist(), "dtype": str(obj.dtype), "CLS": "numpy.array"}
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Enum):
        return {"CLS": type(obj).__name__, "value": str(obj)}
    if hasattr(obj, "_attrs"):  # TensorData
        return {**{k: getattr(obj, k) for k in obj._attrs}, "CLS": type(obj).__name__}
    raise TypeError(f"cannot store {type(obj).__name__} in a calibration cache")


def write_ranges(tensors, path: Path) -> None:
    """``tensors`` (ONNX Runtime TensorsData) -> ``path`` in ONNX Runtime 1.24's cache layout."""
    payload = {"CLS": "TensorsData", "data": tensors.data, "calibration_method": tensors.calibration_method,
               "smooth_quant": False}
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(payload, default=_encode)), force=True)


def load_ranges_file(path: Path) -> tuple[str, dict]:
    """A ranges file -> (calibration method: minmax, entropy or percentile; {tensor: stored range})."""
    try:
        payload = json.loads(path.read_text())
        method = payload["calibration_method"]
        name = (method["value"] if isinstance(method, dict) else str(method)).split(".")[-1].lower()
        return name, dict(payload["data"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        raise EdgesegError("not a calibration ranges file (edgeseg quantize --save-ranges writes one)", path) from None


def read_ranges(path: Path):
    """``path`` -> ONNX Runtime TensorsData (any ONNX Runtime edgeseg supports)."""
    from onnxruntime.quantization.calibrate import CalibrationMethod, TensorData, TensorsData

    method_name, data = load_ranges_file(path)
    methods = {m.name.lower(): m for m in CalibrationMethod}
    if method_name not in methods:
        raise EdgesegError(f"calibration method {method_name!r} is not one of {', '.join(methods)}; is this a ranges "
                           "file written by edgeseg quantize --save-ranges?", path)

    def value(k: str, v):
        if isinstance(v, dict) and v.get("CLS") == "numpy.array":
            return np.array(v["data"], dtype=v["dtype"])
        # ONNX Runtime writes some ranges as bare numbers (percentile: a lowest of 0.0 after a ReLU); its own
        # reader takes them, but TensorData wants float arrays for these
        return np.array(v, dtype=np.float32) if k in ("lowest", "highest", "avg", "std") else v

    try:  # a hand-edited or damaged file: wrong types, unknown fields, numbers that are not numbers
        return TensorsData(methods[method_name], {
            str(name): TensorData(**{k: value(k, v) for k, v in attrs.items() if k != "CLS"})
            for name, attrs in data.items()})
    except (TypeError, ValueError, KeyError, AttributeError, OverflowError) as e:
        raise EdgesegError(f"its ranges do not read as ONNX Runtime's ({type(e).__name__}: {e}); write them again "
                           "with edgeseg quantize --save-ranges", path) from None


def quantize_static_cached(ranges: Path, reader, **kwargs) -> None:
    """``onnxruntime.quantization.quantize_static(**kwargs)`` with the ranges in ``ranges``: read from
    it when it exists, else computed from ``reader`` and written to it."""
    from onnxruntime.quantization import quantize_static

    # ONNX Runtime's histogram calibrators print their progress to stdout, which belongs to --json
    with contextlib.redirect_stdout(sys.stderr):
        _quantize_static_cached(quantize_static, ranges, reader, **kwargs)


# Photos handed to ONNX Runtime's calibrator at a time. Its histogram calibrators (percentile, entropy)
# keep every activation of every photo they are given before binning them: 200 photos of the bundled
# model took 21 GB, at 160x160 input they were killed at 24 GB. Given a few at a time, they bin each
# group into the histograms they keep (MinMax merges its ranges the same way), so memory stays that of
# CHUNK photos.
CHUNK = 16


def list_reader(items: Iterable[dict]):
    """An ONNX Runtime calibration data reader over ``items`` (input name -> array, one per call)."""
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter(items)

        def get_next(self):
            return next(self.items, None)

    return Reader()


def _chunked(calibrator, chunk: int):
    """Make ``calibrator.collect_data`` hand ONNX Runtime's own ``chunk`` photos per call."""
    collect = calibrator.collect_data

    def collect_data(reader) -> None:
        items = iter(reader.get_next, None)
        while part := list(itertools.islice(items, chunk)):
            collect(list_reader(part))

    calibrator.collect_data = collect_data
    return calibrator


@contextlib.contextmanager
def _calibrators(make: Callable):
    """Within the block, ONNX Runtime's quantizer gets its calibrator from ``make(real_factory, *args, **kw)``."""
    # the module, not the ``quantize`` function the package re-exports under the same name
    ort_quantize = importlib.import_module("onnxruntime.quantization.quantize")
    real = ort_quantize.create_calibrator
    ort_quantize.create_calibrator = lambda *args, **kw: make(real, *args, **kw)
    try:
        yield
    finally:
        ort_quantize.create_calibrator = real


def _quantize_static_cached(quantize_static: Callable, ranges: Path, reader, **kwargs) -> None:
    if native_cache():
        with _calibrators(lambda real, *args, **kw: _chunked(real(*args, **kw), CHUNK)):
            quantize_static(calibration_data_reader=reader, calibration_cache_path=str(ranges), **kwargs)
        return
    computed = []
    if ranges.is_file():
        stored = read_ranges(ranges)

        class Stored:
            def collect_data(self, _reader) -> None:
                pass

            def compute_data(self):
                return stored

        def calibrator(_real, *_args, **_kwargs):
            return Stored()

        reader = reader or iter(())
    else:
        def calibrator(real, *args, **kw):
            c = _chunked(real(*args, **kw), CHUNK)
            compute = c.compute_data
            c.compute_data = lambda: computed.append(compute()) or computed[-1]
            return c

    with _calibrators(calibrator):
        quantize_static(calibration_data_reader=reader, **kwargs)
    if computed:
        write_ranges(computed[-1], ranges)
