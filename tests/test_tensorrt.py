"""TensorRT path: everything that needs no GPU runs everywhere; GPU tests skip with the reason."""

from __future__ import annotations

import importlib.util
import json

import cv2
import numpy as np
import onnx
import pytest

import edgeseg.compile.engine as et
import edgeseg.runtime.backends.cuda as cuda
import edgeseg.runtime.device as device
from edgeseg.errors import EdgesegError
from edgeseg.files import sha256_file
from edgeseg.runtime.backends.engine_meta import EngineMeta
from edgeseg.runtime.backends.fp16 import to_fp16
from edgeseg.runtime.backends.onnxruntime import create_session
from edgeseg.runtime.backends.predictor import Predictor
from edgeseg.runtime.images import list_images, preprocess, read_image

HAS_TRT = importlib.util.find_spec("tensorrt") is not None


def _gpu_reason() -> str | None:
    if not HAS_TRT:
        return "TensorRT is not installed (it comes with JetPack, or pip install 'edgeseg[tensorrt]' on a GPU box)"
    try:
        cuda.gpu_info()
    except EdgesegError as e:
        return str(e)
    return None


def gpu(test):
    """``pytest -m gpu`` selects these; without TensorRT and a GPU they skip with the reason."""
    return pytest.mark.gpu(pytest.mark.skipif(_gpu_reason() is not None, reason=_gpu_reason() or "")(test))


@pytest.mark.skipif(HAS_TRT, reason="TensorRT is installed here")
def test_build_without_tensorrt_is_one_clear_line(cli, exported, tmp_path):
    r = cli("build", exported["segnet-dsc"][0], "-o", tmp_path / "m.engine")
    assert r.code == 1
    assert r.err.startswith("error: TensorRT is not installed") and len(r.err.strip().splitlines()) == 1
    assert not (tmp_path / "m.engine").exists()


def test_build_runs_the_check_gate_first(cli, tmp_path):
    from test_export import _naive_model

    naive = tmp_path / "naive.onnx"
    onnx.save(_naive_model(), str(naive))
    r = cli("build", naive, "-o", tmp_path / "n.engine")
    assert r.code == 1 and "check --target tensorrt found" in r.err and "MaxUnpool" in r.err


def test_dla_options_are_checked_before_building(cli, exported, tmp_path):
    model = exported["segnet-dsc"][0]
    r = cli("build", model, "--precision", "fp32", "--dla-core", "0", "-o", tmp_path / "m.engine")
    assert r.code == 1 and "DLA runs FP16 and INT8 only" in r.err
    r = cli("build", model, "--dla-core", "-1", "-o", tmp_path / "m.engine")
    assert r.code == 1 and "--dla-core -1: DLA cores are numbered from 0" in r.err
    assert not (tmp_path / "m.engine").exists()


def test_cuda_errors_are_named_in_words(monkeypatch):
    from types import SimpleNamespace

    rt = SimpleNamespace(cudaError_t=SimpleNamespace(cudaSuccess=0),
                         cudaGetErrorName=lambda err: (0, b"cudaErrorInsufficientDriver"))
    monkeypatch.setattr(cuda, "cudart", lambda: rt)
    assert cuda.ck((0, 42)) == 42
    with pytest.raises(EdgesegError, match=r"^CUDA error cudaErrorInsufficientDriver$"):
        cuda.ck((35,))


def test_int8_needs_qdq_or_calibration(cli, exported, tmp_path):
    r = cli("build", exported["segnet-dsc"][0], "--precision", "int8", "-o", tmp_path / "m.engine")
    assert r.code == 1 and "INT8 needs a Q/DQ model" in r.err


def test_fp16_conversion_keeps_fp32_io_and_accuracy(exported, pets3):
    """Checks the graph rewrite and FP16 weight rounding. ONNX Runtime's CPU provider computes most
    FP16 ops by casting back to FP32, so this is not FP16 arithmetic: that is what the GPU tests and
    `edgeseg doctor` on a device measure."""
    path = exported["segnet-dsc"][0]
    fp32 = onnx.load(str(path))
    half = to_fp16(fp32)
    assert half.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert half.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert {p.key: p.value for p in half.metadata_props}["precision"] == "fp16"
    assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in half.graph.initializer)
    a, b = create_session(fp32.SerializeToString(), 1), create_session(half.SerializeToString(), 1)
    meta = Predictor.load(path).meta
    agree = []
    for p in list_images(pets3 / "images")[:8]:
        x = preprocess(read_image(p), meta)
        agree.append((a.run(None, {"input": x})[0].argmax(1) == b.run(None, {"input": x})[0].argmax(1)).mean())
    assert np.mean(agree) > 0.98


SYSTEM = {"tensorrt": "10.3.0", "gpu": "Orin", "compute_capability": "8.7"}


def _engine(tmp_path, **over) -> EngineMeta:
    fields = dict(tensorrt="10.3.0", gpu="Orin", compute_capability="8.7", precision="fp16",
                  input_shape=[1, 3, 128, 128], onnx_sha256="ab" * 32, source_onnx="model.onnx")
    meta = EngineMeta(**{**fields, **over})
    (tmp_path / "m.engine").write_bytes(b"plan")
    meta.save(tmp_path / "m.engine")
    return meta


def test_engine_metadata_round_trip_and_mismatch(tmp_path):
    meta = _engine(tmp_path, calibration_sha256="cd" * 32, l4t="36.4.3")
    assert EngineMeta.load(tmp_path / "m.engine") == meta
    assert meta.mismatch(SYSTEM) is None
    why = meta.mismatch({**SYSTEM, "tensorrt": "10.7.0"})
    assert "tensorrt 10.3.0" in why and "10.7.0" in why
    assert meta.rebuild_command(tmp_path / "m.engine") == (
        f"edgeseg build model.onnx --precision fp16 -o {tmp_path / 'm.engine'} --force")
    meta.build_options = et.build_options(workspace_gb=2.0, timing_cache=None, dla_core=0, opt_level=3,
                                          max_batch=8, calib=tmp_path / "my photos")
    assert meta.rebuild_command(tmp_path / "m.engine") == (
        f"edgeseg build model.onnx --precision fp16 --workspace 2.0 --dla-core 0 --max-batch 8 --calib "
        f"'{tmp_path / 'my photos'}' -o {tmp_path / 'm.engine'} --force")


def test_loading_an_engine_from_another_system_names_the_rebuild_command(monkeypatch, tmp_path):
    import edgeseg.runtime.backends.tensorrt as rt

    _engine(tmp_path)
    monkeypatch.setattr(rt, "import_tensorrt", lambda: object())
    monkeypatch.setattr(rt, "system_key", lambda: {**SYSTEM, "gpu": "NVIDIA GeForce RTX 4090",
                                                    "compute_capability": "8.9"})
    with pytest.raises(EdgesegError, match=r"rebuild it here: edgeseg build model\.onnx --precision fp16") as e:
        Predictor.load(tmp_path / "m.engine")
    assert "gpu Orin" in str(e.value)
    (tmp_path / "m.engine.json").unlink()
    with pytest.raises(EdgesegError, match="cannot tell how it was built"):
        Predictor.load(tmp_path / "m.engine")


def test_cache_key_and_staleness(tmp_path):
    key = et.cache_key("ab" * 32, "fp16", SYSTEM)
    assert key == "abababababababab_fp16_trt10.3.0_Orin_sm8.7"
    assert et.cache_key("ab" * 32, "int8", SYSTEM) != key
    assert et.cache_key("ab" * 32, "fp16", {**SYSTEM, "tensorrt": "11.4.1"}) != key
    engine = tmp_path / "m.engine"
    assert et.is_stale(engine, "ab" * 32, "fp16", SYSTEM)  # nothing built yet
    _engine(tmp_path)
    assert not et.is_stale(engine, "ab" * 32, "fp16", SYSTEM)
    assert et.is_stale(engine, "cd" * 32, "fp16", SYSTEM)  # the ONNX changed
    assert et.is_stale(engine, "ab" * 32, "int8", SYSTEM)
    assert et.is_stale(engine, "ab" * 32, "fp16", {**SYSTEM, "tensorrt": "10.7.0"})  # JetPack upgrade
    (tmp_path / "m.engine.json").write_text("{not json")
    assert et.is_stale(engine, "ab" * 32, "fp16", SYSTEM)


def test_cached_engine_builds_once_and_rebuilds_when_stale(monkeypatch, tmp_path, exported):
    builds = []

    def fake_build(onnx_path, out, precision, force=False, **kw):
        builds.append(precision)
        out.write_bytes(b"plan")
        EngineMeta(**SYSTEM, precision=precision, input_shape=[1, 3, 64, 64],
                      onnx_sha256=sha256_file(onnx_path), source_onnx=str(onnx_path)).save(out)

    monkeypatch.setenv("EDGESEG_CACHE", str(tmp_path))
    monkeypatch.setattr(et, "system_key", lambda: dict(SYSTEM))
    monkeypatch.setattr(et, "build_engine", fake_build)
    model = exported["segnet-dsc"][0]
    first = et.cached_engine(model, "fp16")
    assert et.cached_engine(model, "fp16") == first and builds == ["fp16"]
    monkeypatch.setattr(et, "system_key", lambda: {**SYSTEM, "tensorrt": "10.7.0"})
    assert et.cached_engine(model, "fp16") != first and builds == ["fp16", "fp16"]


def test_jetson_clock_parsing():
    show = ("cpu0: Online=1 Governor=schedutil MinFreq=729600 MaxFreq=2201600 CurrentFreq=729600\n"
            "cpu1: Online=1 Governor=schedutil MinFreq=2201600 MaxFreq=2201600 CurrentFreq=2201600")
    assert device.clocks_pinned(show) is False
    assert device.clocks_pinned(show.replace("MinFreq=729600", "MinFreq=2201600")) is True
    assert device.clocks_pinned("no cpu lines") is None


# --- on a machine with TensorRT and an NVIDIA GPU ---------------------------------------------------

@gpu
@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_engine_matches_onnxruntime(precision, tmp_path, pets3, pets37):
    from conftest import REPO

    from edgeseg.compile.quantize import QuantizeOptions, quantize

    fp32 = REPO / "models" / "segnet_dsc.onnx"
    src = fp32
    if precision == "int8":
        src = tmp_path / "t.onnx"
        quantize(fp32, src, QuantizeOptions(target="tensorrt", num_images=64), calib_dir=pets37)
    engine = tmp_path / f"m.{precision}.engine"
    meta = et.build_engine(src, engine, precision)
    assert json.loads((tmp_path / f"m.{precision}.engine.json").read_text())["precision"] == precision
    # the reference is ONNX Runtime in FP32 on the CPU (Predictor.load's default would be OpenVINO on x86)
    trt_pred, ort_pred = Predictor.load(engine), Predictor.load(src, backend="onnxruntime", precision="fp32")
    assert trt_pred.info.name == "tensorrt"
    agree = [(trt_pred.predict(f) == ort_pred.predict(f)).mean()
             for f in (read_image(p) for p in list_images(pets3 / "images")[:16])]
    assert np.mean(agree) > 0.98, (meta, np.mean(agree))


@gpu
def test_run_loop_on_tensorrt(cli, tmp_path, pets3):
    from conftest import REPO

    model = REPO / "models" / "segnet_dsc.onnx"
    r = cli("run", model, "--backend", "tensorrt", "--precision", "fp16", "--source", pets3 / "images",
            "--max-frames", "20", "--warmup", "0", "--report", tmp_path / "r.json", "--save-masks", tmp_path / "trt")
    assert r.code == 0, r.err
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["model"]["backend"] == "tensorrt" and report["latency"]["measured_frames"] == 20
    r = cli("run", model, "--backend", "onnxruntime", "--precision", "fp32", "--source", pets3 / "images",
            "--max-frames", "20", "--warmup", "0", "--save-masks", tmp_path / "ort")
    assert r.code == 0, r.err
    masks = sorted((tmp_path / "trt").iterdir())
    assert len(masks) == 20
    agree = [(cv2.imread(str(m), cv2.IMREAD_UNCHANGED) == cv2.imread(str(tmp_path / "ort" / m.name),
                                                                     cv2.IMREAD_UNCHANGED)).mean() for m in masks]
    assert np.mean(agree) > 0.98


def test_info_reads_engine_metadata_without_tensorrt(cli, tmp_path):
    _engine(tmp_path, l4t="36.4.3")
    d = json.loads(cli("info", tmp_path / "m.engine", "--json").out)
    assert (d["kind"], d["precision"], d["gpu"], d["l4t"]) == ("engine", "fp16", "Orin", "36.4.3")
    assert "10.3.0" in cli("info", tmp_path / "m.engine").out


def test_run_reports_carry_jetson_facts_on_a_jetson(monkeypatch):
    from edgeseg.runtime.device import environment

    monkeypatch.setattr(device, "l4t_release", lambda: "36.4.3")
    monkeypatch.setattr(device.shutil, "which", lambda name: None)  # no nvpmodel/jetson_clocks/tegrastats here
    assert environment()["l4t"] == "36.4.3"
    monkeypatch.setattr(device, "l4t_release", lambda: None)
    assert "l4t" not in environment()
