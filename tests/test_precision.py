"""Precision: the unpool keeps one winner per window at every precision a runtime may pick, bf16
and fp16 stay within 0.5 mIoU points of FP32, and ``auto`` is measured, verified and cached."""

from __future__ import annotations

import importlib.util
import json
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from test_export import unpool_model

import edgeseg.compile.quantize as q
from edgeseg.errors import EdgesegError
from edgeseg.evaluation.evaluate import evaluate, load_split
from edgeseg.runtime.backends import precision as prec
from edgeseg.runtime.backends.fp16 import to_fp16
from edgeseg.runtime.backends.onnxruntime import create_session
from edgeseg.runtime.backends.predictor import Predictor

MODELS = Path(__file__).resolve().parent.parent / "models"
HAS_OPENVINO = importlib.util.find_spec("openvino") is not None
NATIVE = prec.native_precisions(prec.cpu_flags())
# (backend, precision) pairs a runtime may compute in; OpenVINO's need the CPU's own arithmetic
LOW_PRECISIONS = [
    pytest.param("openvino", p, marks=pytest.mark.skipif(
        not HAS_OPENVINO or p not in NATIVE,
        reason=f"needs OpenVINO and a CPU with native {p} (this one: {', '.join(NATIVE) or 'neither bf16 nor fp16'})"))
    for p in ("bf16", "fp16")
] + [pytest.param("onnxruntime", "fp16")]


def test_feature_flags_decide_native_precisions(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu avx512f avx512_bf16 amx_tile\n")
    assert prec.native_precisions(prec.cpu_flags(info), "x86_64") == ["bf16"]
    assert prec.native_precisions(frozenset({"avx512_fp16", "amx_bf16"}), "x86_64") == ["bf16", "fp16"]
    assert prec.native_precisions(frozenset({"avx2", "fma", "f16c"}), "x86_64") == []  # conversions only
    info.write_text("processor\t: 0\nFeatures\t: fp asimd asimdhp\n")
    assert prec.native_precisions(prec.cpu_flags(info), "aarch64") == ["fp16"]
    assert prec.cpu_flags(tmp_path / "absent") == frozenset()


def test_explicit_precisions_the_cpu_or_backend_lacks_are_refused():
    with pytest.raises(EdgesegError, match="no native bf16"):
        prec.resolve("bf16", "OpenVINO", ("bf16", "fp16"), flags=frozenset({"avx2"}))
    with pytest.raises(EdgesegError, match="ONNX Runtime cannot compute in bf16"):
        prec.resolve("bf16", "ONNX Runtime", ("fp16",), flags=frozenset({"amx_bf16", "bf16"}))
    with pytest.raises(EdgesegError, match="choose auto, fp32, bf16, fp16"):
        prec.resolve("int4", "OpenVINO", ("bf16", "fp16"))
    both = frozenset({"amx_bf16", "avx512_fp16", "bf16", "asimdhp"})  # x86 and ARM names: any machine
    assert prec.resolve("auto", "OpenVINO", ("bf16", "fp16"), flags=both) == ["fp32", "bf16", "fp16"]
    assert prec.resolve("auto", "ONNX Runtime", ("fp16",), flags=frozenset()) == ["fp32"]


def _fake(delay_s: float, wrong: bool = False):
    def run(x: np.ndarray) -> np.ndarray:
        time.sleep(delay_s)
        return 1 - x if wrong else x
    return run


def _ids(out: np.ndarray) -> np.ndarray:
    return (out[:, 0] > 0.5).astype(np.uint8)


def test_auto_picks_the_fastest_precision_that_agrees_and_caches_it(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGESEG_CACHE", str(tmp_path))
    runners = {"fp32": _fake(0.006), "bf16": _fake(0.001, wrong=True), "fp16": _fake(0.002)}
    made = []

    def make(p):
        made.append(p)
        return runners[p]

    choice, run = prec.choose(["fp32", "bf16", "fp16"], make, _ids, (16, 16), "key", runs=5)
    assert choice.precision == "fp16" and run is runners["fp16"]  # bf16 is faster but disagrees
    assert choice.measured["bf16"]["agreement"] < prec.MIN_AGREEMENT <= choice.measured["fp16"]["agreement"]
    assert choice.reason.startswith("auto: fp16")
    made.clear()
    again, _ = prec.choose(["fp32", "bf16", "fp16"], make, _ids, (16, 16), "key", runs=5)
    assert (again.precision, made) == ("fp16", ["fp16"]) and again.reason.endswith("(cached)")
    slow_only = {"fp32": _fake(0.002), "bf16": _fake(0.002)}  # agrees but gains nothing: stay exact
    choice, _ = prec.choose(["fp32", "bf16"], slow_only.__getitem__, _ids, (16, 16), None, runs=5)
    assert choice.precision == "fp32" and "needs >=" in choice.reason


def _one_winner_per_window(out: np.ndarray) -> bool:
    n, c, h, w = out.shape
    winners = (out != 0).reshape(n, c, h // 2, 2, w // 2, 2).sum(axis=(3, 5))
    return bool((winners == 1).all())


@pytest.mark.parametrize(("backend", "precision"), LOW_PRECISIONS)
def test_unpool_keeps_exactly_one_winner_per_window(backend, precision, tmp_path):
    """Window values that differ in FP32 but round to ties (or swap) in bf16/fp16."""
    n, c, h, w = 1, 32, 16, 16
    model = unpool_model(n, c, h, w)
    rng = np.random.default_rng(0)
    pre = (1 + rng.integers(0, 4, (n, c, h, w)) * 2.0**-12).astype(np.float32)  # ties in bf16, not in fp16
    pre[:, ::2] = (1000 + rng.integers(0, 4, (n, c // 2, h, w)) * 2.0**-9).astype(np.float32)  # ties in fp16 too
    x = (1 + rng.random((n, c, h // 2, w // 2))).astype(np.float32)
    if backend == "onnxruntime":
        out = create_session(to_fp16(model).SerializeToString(), threads=1).run(None, {"pre": pre, "x": x})[0]
    else:
        import openvino as ov

        onnx.save(model, tmp_path / "unpool.onnx")
        core = ov.Core()
        compiled = core.compile_model(core.read_model(str(tmp_path / "unpool.onnx")), "CPU",
                                      {"INFERENCE_PRECISION_HINT": {"bf16": "bf16", "fp16": "f16"}[precision]})
        out = compiled.create_infer_request().infer([pre, x])[0]
    assert _one_winner_per_window(np.asarray(out, np.float32))


@pytest.fixture(scope="module")
def bundled_pair(tmp_path_factory):
    """The bundled FP32 ONNX and its INT8 (`cpu` target, stored ranges)."""
    int8 = tmp_path_factory.mktemp("precision") / "int8.onnx"
    q.quantize(MODELS / "segnet_dsc.onnx", int8, q.QuantizeOptions(), calib_ranges=MODELS / "segnet_dsc.calib.json")
    return {"fp32": MODELS / "segnet_dsc.onnx", "int8": int8}


@pytest.mark.parametrize("model", ["fp32", "int8"])
@pytest.mark.parametrize(("backend", "precision"), LOW_PRECISIONS)
def test_low_precision_stays_within_half_a_point_of_fp32(model, backend, precision, bundled_pair, pets3):
    """Against the FP32 file in ONNX Runtime at fp32: 0.5 mIoU points at most, on 60 test photos for the
    FP32 file and on the whole test split for INT8 (which itself costs 0.38 points there, more on small
    subsets). The earlier Equal-based unpool lost 21 points with INT8 under OpenVINO's bf16 (0.6121 ->
    0.4046 on the full split)."""
    if backend == "onnxruntime" and model == "int8":
        pytest.skip("FP16 conversion applies to FP32 files (ONNX Runtime refuses it for Q/DQ models)")
    if precision not in NATIVE:  # edgeseg refuses a precision the CPU would emulate (tested below)
        pytest.skip(f"needs a CPU with native {precision} (this one: {', '.join(NATIVE) or 'neither bf16 nor fp16'})")
    samples = load_split(pets3, "test", 60 if model == "fp32" else 0)
    reference = Predictor.load(bundled_pair["fp32"], backend="onnxruntime", precision="fp32", threads=2)
    low = Predictor.load(bundled_pair[model], backend=backend, precision=precision, threads=2)
    assert low.info.compute == precision
    fp32, result = evaluate([reference, low], samples)
    assert abs(fp32["miou"] - result["miou"]) <= 0.005
    assert result["agreement_with_first"] >= 0.95


def test_reports_say_which_precision_ran_and_why(bundled_pair, monkeypatch):
    p = Predictor.load(bundled_pair["fp32"], backend="onnxruntime", precision="fp32", threads=1)
    d = p.describe()
    assert (d["precision"], d["compute_precision"], d["precision_choice"]["reason"]) == ("fp32", "fp32", "requested")
    auto = Predictor.load(bundled_pair["int8"], backend="onnxruntime", threads=1).describe()
    assert auto["file_precision"] == "int8-cpu" and auto["precision_choice"]["reason"].startswith("auto: ")
    monkeypatch.setattr(prec, "cpu_flags", lambda: frozenset({"avx512_fp16", "asimdhp"}))  # any CPU: fp16 native
    with pytest.raises(EdgesegError, match="needs an FP32 file"):
        Predictor.load(bundled_pair["int8"], backend="onnxruntime", precision="fp16")


def test_a_cache_entry_without_a_reason_is_measured_again(tmp_path, monkeypatch):
    """A hand-edited or corrupt precision cache raised KeyError: 'reason' (review #39 item 16)."""
    monkeypatch.setenv("EDGESEG_CACHE", str(tmp_path))
    runners = {"fp32": _fake(0.004), "bf16": _fake(0.001)}
    prec._store("key", prec.PrecisionChoice("bf16", "x"))
    data = json.loads(prec._cache_file().read_text())
    del data["key"]["reason"]
    prec._cache_file().write_text(json.dumps(data))
    made = []
    choice, _ = prec.choose(["fp32", "bf16"], lambda p: made.append(p) or runners[p], _ids, (16, 16), "key", runs=3)
    assert sorted(made) == ["bf16", "fp32"] and not choice.reason.endswith("(cached)")
    assert json.loads(prec._cache_file().read_text())["key"]["reason"] == choice.reason  # rebuilt
