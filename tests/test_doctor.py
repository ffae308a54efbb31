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
    assert d["ok"] and d["photos"] == {"source": str(REPO / "calibration"), "count": 37, "skipped": [],
                                       "trimaps": False}
    checks = {c["name"]: c for c in d["checks"]}
    assert [c["status"] for c in d["checks"]] == ["PASS", "PASS", "PASS", "SKIP"]
    assert checks["cpu default (backend and precision auto)"]["agreement"] >= 0.97
    assert 0.95 <= checks["cpu int8"]["agreement"] < 1.0  # quantized for real, not the FP32 model again
    assert checks["tensorrt"]["detail"].startswith("TensorRT is not installed")
    assert d["facts"]["tensorrt"] is None and d["facts"]["cache_problem"] is None
    table = cli("doctor").out
    assert "TensorRT     │ not installed" in table and "Something failed" not in table
    assert ("no VNNI" in table) == d["facts"]["cpu_int8_pairs_saturate"]


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

    monkeypatch.setattr(doc, "candidates",
                        lambda *a: [("cpu default (backend and precision auto)", broken), ("cpu int8", "why")])
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


def test_an_unreadable_photo_is_counted_and_too_few_photos_for_int8_is_an_input_problem(cli, monkeypatch, tmp_path):
    """One undecodable photo aborted the whole doctor; two photos and no stored ranges made the int8 check a device
    FAIL (review #39 items 12 and 13)."""
    real = doc._version
    monkeypatch.setattr(doc, "_version", lambda m: None if m == "tensorrt" else real(m))
    model = tmp_path / "m.onnx"  # no m.calib.json beside it: INT8 would calibrate on the photos
    model.write_bytes((REPO / "models" / "segnet_dsc.onnx").read_bytes())
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("beagle_10.jpg", "pug_112.jpg"):
        (photos / name).write_bytes((REPO / "calibration" / name).read_bytes())
    (photos / "broken.jpg").write_bytes(b"not a jpeg")
    r = cli("doctor", model, "--images", photos, "--json")
    assert r.code == 0, r.err
    d = json.loads(r.out)
    assert d["ok"] and d["photos"]["count"] == 2 and d["photos"]["skipped"] == [str(photos / "broken.jpg")]
    int8 = next(c for c in d["checks"] if c["name"] == "cpu int8")
    assert int8["status"] == "SKIP" and "needs 16 photos" in int8["detail"] and "has 3 image file(s)" in int8["detail"]
