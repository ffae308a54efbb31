"""``edgeseg doctor``: what a new device has, and whether each precision it can run gives the right masks.

Run first on a new Jetson or CPU box. Two parts:

1. facts: Python and package versions, CPU features and native precisions, GPU and compute
   capability, L4T release, power mode and clocks, GStreamer in OpenCV, the cameras that open, and
   whether the cache folder (engines, compiled models) is writable;
2. checks: the model runs on each path the machine offers (the default CPU backend in FP32, INT8 for
   the CPU where ``onnx`` is installed, then TensorRT FP16 and INT8 engines built into a temporary
   folder where TensorRT and a GPU are present), each beside ONNX Runtime FP32 on the CPU over the
   same photos. A check passes when its masks agree with the reference on at least
   :data:`MIN_AGREEMENT` of the pixels (97% for float paths, 95% for INT8, which legitimately moves
   about 3% of the pixels of this model: 97.0% agreement, 0.12 mIoU points below FP32 over the 298
   test photos, where a broken unpool moved 35%). With ``--data`` (an Oxford-layout folder with
   trimaps) each also gets its mIoU, and fails when that drops more than :data:`MAX_MIOU_DROP`
   below the reference's (the quantize gate's default); without it, the mIoU of its masks scored
   against the reference's masks is shown.

Needs no PyTorch: it is meant for the device.
"""

from __future__ import annotations

import glob
import importlib
import importlib.util
import os
import platform
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from edgeseg import __version__
from edgeseg.errors import EdgesegError
from edgeseg.evaluation.datasets import is_oxford_layout, oxford_split, read_trimap
from edgeseg.evaluation.metrics import ConfusionMatrix
from edgeseg.files import cache_root, write_problem
from edgeseg.loader import load_predictor
from edgeseg.runtime.backends.precision import cpu_flags, int8_pairs_saturate, native_precisions
from edgeseg.runtime.backends.predictor import Predictor
from edgeseg.runtime.backends.triton import is_triton_url
from edgeseg.runtime.images import ImageError, list_images, read_image

CHECKOUT = Path(__file__).resolve().parents[1]  # a git checkout holds models/ and calibration/ here
DEFAULT_MODEL = CHECKOUT / "models" / "segnet_dsc.onnx"
DEFAULT_IMAGES = CHECKOUT / "calibration"
MAX_IMAGES = 37
MIN_AGREEMENT = {"float": 0.97, "int8": 0.95}
MAX_MIOU_DROP = 0.01


@dataclass
class Check:
    name: str
    status: str  # PASS, FAIL or SKIP
    detail: str = ""
    agreement: float | None = None
    miou_vs_reference: float | None = None
    miou: float | None = None
    miou_delta: float | None = None
    ms_per_image: float | None = None
    backend: dict = field(default_factory=dict)


def _version(module: str) -> str | None:
    try:
        return getattr(importlib.import_module(module), "__version__", "installed")
    except Exception:  # a broken install (ImportError, a DLL error...) is reported, not raised
        return None


def _cuda_python() -> str | None:
    for name in ("cuda.bindings", "cuda"):
        if importlib.util.find_spec(name.split(".")[0]) is not None and (v := _version(name)):
            return v
    return None


def opencv_facts() -> dict:
    import cv2

    from edgeseg.runtime.device import opencv_has_gstreamer

    return {"opencv": cv2.__version__, "gstreamer": opencv_has_gstreamer()}


def cameras(max_index: int = 8) -> list[dict]:
    """The V4L2 devices present and whether each opens and gives a frame."""
    import cv2

    found = []
    for dev in sorted(glob.glob("/dev/video*"), key=lambda p: (len(p), p))[:max_index]:
        cap = cv2.VideoCapture(dev, cv2.CAP_V4L2)
        ok, frame = cap.read() if cap.isOpened() else (False, None)
        found.append({"device": dev, "opens": bool(cap.isOpened()), "frame": f"{frame.shape[1]}x{frame.shape[0]}"
                      if ok else None})
        cap.release()
    return found


def facts() -> dict:
    """Versions and hardware, each entry present whether or not the thing is installed."""
    from edgeseg.runtime.device import cpu_model, jetson_facts

    flags = cpu_flags()
    out = {
        "python": platform.python_version(), "machine": platform.machine(), "edgeseg": __version__,
        "numpy": np.__version__, **opencv_facts(), "onnxruntime": _version("onnxruntime"),
        "openvino": _version("openvino"), "onnx": _version("onnx"), "tensorrt": _version("tensorrt"),
        "cuda_python": _cuda_python(), "cpu": cpu_model(), "cpu_count": os.cpu_count(),
        "cpu_native_precisions": ["fp32", *native_precisions(flags)],
        "cpu_int8_pairs_saturate": int8_pairs_saturate(flags),
    }
    if out["tensorrt"]:
        from edgeseg.runtime.backends.cuda import gpu_info

        try:
            out.update(gpu_info())
        except EdgesegError as e:
            out["gpu"] = None
            out["gpu_problem"] = str(e)
    out.update(jetson_facts(sample_seconds=0.5))
    out["cameras"] = cameras()
    cache = cache_root()
    out["cache"] = str(cache)
    out["cache_problem"] = write_problem(cache)
    return out


@dataclass
class Photos:
    images: list[np.ndarray]
    truths: list[np.ndarray | None]
    source: str
    skipped: list[str] = field(default_factory=list)  # files that would not decode, left out and counted


def load_photos(images: Path | None, data: Path | None, limit: int = MAX_IMAGES) -> Photos:
    """Test split photos with trimaps from ``data``, else the photos of ``images`` (default: calibration/)."""
    if data is not None:
        if not is_oxford_layout(data):
            raise EdgesegError("is not an Oxford-IIIT Pet layout folder (images/, annotations/trimaps/, "
                               "annotations/test.txt); pass --images DIR for photos without trimaps", data)
        pairs = [(s.image, s.mask) for s in oxford_split(data, "test")[:limit]]
        source = data
    else:
        source = images or DEFAULT_IMAGES
        pairs = [(p, None) for p in (list_images(source)[:limit] if source.is_dir() else [])]
    photos = Photos([], [], str(source))
    for image, mask in pairs:  # one unreadable photo is counted, not the end of the doctor
        try:
            photos.images.append(read_image(image))
        except ImageError:
            photos.skipped.append(str(image))
            continue
        photos.truths.append(read_trimap(mask) if mask is not None else None)
    if not photos.images:
        raise EdgesegError("no photos to check with" + (f" ({len(photos.skipped)} would not decode)"
                           if photos.skipped else "") + "; pass --images DIR (a few photos like your camera's)",
                           source)
    return photos


def compare(name: str, make: Callable[[], Predictor], photos: Photos, reference: list[np.ndarray],
            reference_miou: float | None) -> Check:
    """Run one candidate over the photos beside the reference masks."""
    try:
        pred = make()
        t0 = time.perf_counter()
        masks = [pred.predict(img) for img in photos.images]
        ms = 1000 * (time.perf_counter() - t0) / len(masks)
    except EdgesegError as e:
        return Check(name, "FAIL", str(e))
    except Exception as e:  # a failure on one path is the finding; the other paths are still checked
        if os.environ.get("EDGESEG_DEBUG") == "1":
            raise
        return Check(name, "FAIL", f"internal error {type(e).__name__}: {e}")
    classes = len(pred.meta.class_names)
    vs_ref, truth_cm = ConfusionMatrix(classes), ConfusionMatrix(classes)
    agree = 0
    for mask, ref, truth in zip(masks, reference, photos.truths, strict=True):
        agree += int((mask == ref).sum())
        vs_ref.update(ref, mask)
        if truth is not None:
            truth_cm.update(truth, mask)
    agreement = agree / sum(r.size for r in reference)
    need = MIN_AGREEMENT["int8" if "int8" in name else "float"]
    check = Check(name, "PASS" if agreement >= need else "FAIL", f"{pred.info.name} {pred.info.label}",
                  agreement=agreement,
                  miou_vs_reference=vs_ref.summary(pred.meta.class_names)["miou"], ms_per_image=ms,
                  backend=pred.describe())
    if reference_miou is not None:
        check.miou = truth_cm.summary(pred.meta.class_names)["miou"]
        check.miou_delta = check.miou - reference_miou
        if check.miou_delta < -MAX_MIOU_DROP:
            check.status = "FAIL"
            check.detail += f"; mIoU {100 * check.miou_delta:+.2f} points (at most -{100 * MAX_MIOU_DROP:g} allowed)"
    if agreement < need:
        check.detail += f"; {agreement:.1%} of pixels agree with ONNX Runtime FP32 (needs {need:.0%})"
    return check


Loader = Callable[[], Predictor]


def candidates(model: Path, images: Path, workdir: Path, tensorrt: bool) -> list[tuple[str, Loader | str]]:
    """(name, loader) for every path this machine offers, or (name, why it is skipped)."""
    # what `edgeseg run MODEL` would use: the default backend at precision auto
    out: list[tuple[str, Loader | str]] = [("cpu default (backend and precision auto)", lambda: Predictor.load(model))]
    ranges = model.with_suffix(".calib.json")
    usable = len(list_images(images)) if images.is_dir() else 0

    def int8_cpu() -> Predictor:
        from edgeseg.compile.quantize import QuantizeOptions, quantize

        q = workdir / "int8-cpu.onnx"
        quantize(model, q, QuantizeOptions(target="cpu"), calib_ranges=ranges if ranges.exists() else None,
                 calib_dir=None if ranges.exists() else images)
        return Predictor.load(q)

    # an INT8 path that cannot be checked here says why: a missing package or too few photos to calibrate on
    # (input problems, not the device's)
    few: str | None = "INT8 is quantized here with onnx: pip install onnx"
    if importlib.util.find_spec("onnx") is not None:
        from edgeseg.compile.quantize import MIN_CALIBRATION_IMAGES

        few = (f"calibrating INT8 needs {MIN_CALIBRATION_IMAGES} photos and {images} has {usable} image file(s): "
               "pass --images DIR with more" if usable < MIN_CALIBRATION_IMAGES else None)
        if ranges.exists() or few is None:
            out.append(("cpu int8", int8_cpu))
        else:
            out.append(("cpu int8", f"{few}, or put {ranges.name} beside the model"))
    else:
        out.append(("cpu int8", few))
    if tensorrt:
        from edgeseg.compile.engine import build_engine

        def engine(precision: str) -> Loader:
            def make() -> Predictor:
                path = workdir / f"{precision}.engine"
                build_engine(model, path, precision, calib_dir=images if precision == "int8" else None)
                return Predictor.load(path)
            return make

        out += [("tensorrt fp16", engine("fp16")), ("tensorrt int8", few or engine("int8"))]
    return out


def run_checks(model: Path, photos: Photos, images: Path, tensorrt: bool,
               progress: Callable[[str], None] | None = None, served: str | None = None) -> list[Check]:
    """The reference (``model`` in ONNX Runtime FP32), then every path this machine offers, or with
    ``served`` (a triton:// address) that served model alone."""
    ref = Predictor.load(model, backend="onnxruntime", precision="fp32")
    t0 = time.perf_counter()
    reference = [ref.predict(img) for img in photos.images]
    ms = 1000 * (time.perf_counter() - t0) / len(reference)
    reference_miou = None
    if photos.truths[0] is not None:
        cm = ConfusionMatrix(len(ref.meta.class_names))
        for truth, mask in zip(photos.truths, reference, strict=True):
            cm.update(truth, mask)
        reference_miou = cm.summary(ref.meta.class_names)["miou"]
    checks = [Check("reference: onnxruntime fp32", "PASS", "CPU, as exported", agreement=1.0, miou_vs_reference=1.0,
                    miou=reference_miou, miou_delta=0.0 if reference_miou is not None else None,
                    ms_per_image=ms, backend=ref.describe())]
    with tempfile.TemporaryDirectory(prefix="edgeseg-doctor-") as tmp:
        todo = [(f"served: {served}", lambda: load_predictor(served))] if served else \
            candidates(model, images, Path(tmp), tensorrt)
        for name, make in todo:
            if isinstance(make, str):
                checks.append(Check(name, "SKIP", make))
                continue
            if progress:
                progress(name)
            checks.append(compare(name, make, photos, reference, reference_miou))
    return checks


def doctor(model: str | Path | None = None, images: Path | None = None, data: Path | None = None,
           progress: Callable[[str], None] | None = None, reference: Path | None = None) -> dict:
    served = str(model) if is_triton_url(model) else None
    if reference is not None and served is None:
        raise EdgesegError("--reference is the local twin of a served model: give MODEL as triton://HOST:PORT/NAME")
    model = Path(reference or DEFAULT_MODEL) if served else Path(model or DEFAULT_MODEL)
    if not model.exists():
        raise EdgesegError("no such model; pass the ONNX to check (edgeseg doctor MODEL.onnx)", model)
    env = facts()
    photos = load_photos(images, data)
    tensorrt = bool(env["tensorrt"]) and env.get("gpu") is not None
    checks = run_checks(model, photos, images or DEFAULT_IMAGES, tensorrt, progress, served)
    if not env["tensorrt"]:
        checks.append(Check("tensorrt", "SKIP", "TensorRT is not installed (JetPack provides it on a Jetson)"))
    elif not tensorrt:
        checks.append(Check("tensorrt", "SKIP", env.get("gpu_problem", "no GPU")))
    named = {"model": served, "reference": str(model)} if served else {"model": str(model)}
    return {"facts": env, **named, "photos": {"source": photos.source, "count": len(photos.images),
                                                          "skipped": photos.skipped,
                                                          "trimaps": photos.truths[0] is not None},
            "checks": [asdict(c) for c in checks], "ok": all(c.status != "FAIL" for c in checks)}
