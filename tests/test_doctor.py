"""edgeseg doctor on a machine without TensorRT: facts, CPU checks against ONNX Runtime FP32, failures.

Its TensorRT branch runs against the fake TensorRT 10.3 and 11.4 in test_tensorrt_api.py.
"""

from __future__ import annotations

import json

import numpy as np
from conftest import REPO

import edgeseg.doctor as doc
from edgeseg.runtime.backends.predictor import Predictor


def test_doctor_checks_the_cpu_paths_and_says_tensorrt_is_missing(cli, monkeypatch):
    real = doc._version  # as on a machine without TensorRT, even where it is installed
    monkeypatch.setattr(doc, "_version", lambda m: None if m == "tensorrt" else real(m))
    r = cli("doctor", "--json")
    assert r.code == 0, r.err
    d = json.loads(r.out)
    assert d["ok"] and d["photos"] == {"source": str(REPO / "calibration"), "count": 37, "trimaps": False}
    checks = {c["name"]: c for c in d["checks"]}
    assert [c["status"] for c in d["checks"]] == ["PASS", "PASS", "PASS", "SKIP"]
    assert checks["cpu fp32 (default backend)"]["agreement"] >= 0.97
    assert 0.95 <= checks["cpu int8"]["agreement"] < 1.0  # quantized for real, not the FP32 model again
    assert checks["tensorrt"]["detail"].startswith("TensorRT is not installed")
    assert d["facts"]["tensorrt"] is None and d["facts"]["cache_problem"] is None
    table = cli("doctor").out
    assert "TensorRT     │ not installed" in table and "Something failed" not in table


def test_doctor_scores_miou_on_trimaps_and_fails_a_broken_path(cli, monkeypatch, pets3, tmp_path):
    model = REPO / "models" / "segnet_dsc.onnx"

    def broken() -> Predictor:  # a runtime that loses the pet in a corner of every image
        p = Predictor.load(model, backend="onnxruntime")
        predict = p.predict

        def wrong(img: np.ndarray) -> np.ndarray:
            mask = predict(img).copy()
            mask[: mask.shape[0] // 2, : mask.shape[1] // 2] = 1
            return mask

        p.predict = wrong
        return p

    monkeypatch.setattr(doc, "candidates", lambda *a: [("cpu fp32 (default backend)", broken), ("cpu int8", "why")])
    r = cli("doctor", "--data", pets3, "--json")
    assert r.code == 1
    d = json.loads(r.out)
    assert not d["ok"] and d["photos"]["trimaps"] and d["photos"]["count"] == doc.MAX_IMAGES
    ref, bad, skipped = d["checks"][:3]
    assert ref["miou"] > 0.4 and ref["miou_delta"] == 0.0
    assert bad["status"] == "FAIL" and bad["miou_delta"] < -0.01 and "pixels agree" in bad["detail"]
    assert skipped == {**skipped, "status": "SKIP", "detail": "why"}
    r = cli("doctor", "--data", pets3)
    assert r.code == 1 and "Something failed" in r.out and "edgeseg doctor --json" in r.out
    r = cli("doctor", "--images", tmp_path)
    assert r.code == 1 and r.err.startswith(f"error: {tmp_path}: no photos to check with")
