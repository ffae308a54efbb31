"""INT8 for both targets: valid models, TensorRT's symmetric rules, bad calibration folders, the gate."""

from __future__ import annotations

import importlib.util
import json
import platform
import shutil
import warnings

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import edgeseg.compile.quantize as q
from edgeseg.compile.check import check
from edgeseg.runtime.backends import precision
from edgeseg.runtime.backends.predictor import Predictor
from edgeseg.runtime.images import read_image


@pytest.fixture(scope="session")
def fp32(exported):
    return exported["segnet-dsc"][0]


@pytest.fixture(scope="session")
def calib_ranges(fp32, tmp_path_factory):
    """Activation ranges from 16 real photos of the 37-breed set, computed once."""
    from conftest import PETS37

    if not PETS37.is_dir():
        pytest.skip(f"dataset not found at {PETS37}")
    out = tmp_path_factory.mktemp("q") / "ranges.json"
    q.quantize(fp32, out.with_suffix(".onnx"), q.QuantizeOptions(num_images=16), calib_dir=PETS37, save_ranges=out)
    return out


@pytest.mark.parametrize("target", ["cpu", "tensorrt"])
def test_both_targets_give_runnable_int8_models_that_pass_the_gate(target, tmp_path, pets3, monkeypatch):
    """The bundled model with its stored ranges: each target's INT8 file loses at most 1 mIoU point
    (the default gate) on 6 test photos with every conv quantized, and runs."""
    from conftest import REPO

    out = tmp_path / f"{target}.onnx"
    r = q.quantize(REPO / "models" / "segnet_dsc.onnx", out, q.QuantizeOptions(target=target),
                   calib_ranges=REPO / "models" / "segnet_dsc.calib.json", val=pets3, val_limit=6)
    assert r.passed and out.exists() and r.float_nodes == []
    assert r.gate["drop_points"] <= 1.0 and 0.9 < r.gate["agreement"] < 1.0, r.gate
    m = onnx.load(str(out))
    props = {p.key: p.value for p in m.metadata_props}
    assert props["precision"] == f"int8-{target}"
    assert json.loads(props["quantization"])["target"] == target
    zps = [numpy_helper.to_array(t) for t in m.graph.initializer if t.name.endswith("_zero_point")]
    assert zps
    if target == "tensorrt":
        assert all(z.dtype == np.int8 and not z.any() for z in zps)
        assert check(out, "tensorrt") == []
    else:
        assert any(z.dtype == np.uint8 for z in zps)
    # cpu: 7-bit weights, whose pairs of u8 x s8 products fit the 16 bits x86 kernels without VNNI add them in
    bits = json.loads(props["quantization"])["weight_bits"]
    weights = [numpy_helper.to_array(t) for t in m.graph.initializer if t.data_type == onnx.TensorProto.INT8
               and len(t.dims) == 4]
    assert bits == {"cpu": 7, "tensorrt": 8}[target]
    assert max(int(np.abs(w.astype(np.int32)).max()) for w in weights) == {7: 64, 8: 127}[bits]
    pred = Predictor.load(out, threads=1)
    assert pred.info.precision == f"int8-{target}"
    frame = read_image(pets3 / "images" / "Abyssinian_1.jpg")
    assert pred.predict(frame).shape == frame.shape[:2]
    if importlib.util.find_spec("openvino") is not None and platform.machine().lower() in ("x86_64", "amd64"):
        # on a CPU without VNNI, `auto` keeps full-range weights off OpenVINO, and asking for it warns
        monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset({"avx2"}))
        assert Predictor.load(out, threads=1).info.name == {"cpu": "openvino", "tensorrt": "onnxruntime"}[target]
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            ov = Predictor.load(out, backend="openvino", threads=1)
        assert ov.info.extra["int8_overflow"] == (target == "tensorrt")
        assert any("overflow OpenVINO" in str(w.message) for w in caught) == (target == "tensorrt")


def test_tensorrt_unpool_stays_exact_under_quantization(fp32, calib_ranges, tmp_path):
    """TensorRT target: every unpool compares float values sliced from one tensor, no Q/DQ between them
    (the `cpu` target moves them onto integers instead: tests/test_integer_unpool.py)."""
    out = tmp_path / "trt.onnx"
    q.quantize(fp32, out, q.QuantizeOptions(target="tensorrt"), calib_ranges=calib_ranges)
    m = onnx.load(str(out))
    producer = {o: n for n in m.graph.node for o in n.output}
    compares = [n for n in m.graph.node if n.op_type == "GreaterOrEqual"]
    assert len(compares) == 12
    for ge in compares:
        assert {producer[i].op_type for i in ge.input} <= {"Slice", "Max"}
    for i in range(1, 5):
        windows = {producer[f"uc{i}.mup/{k}"].input[0] for k in "abcd"}
        assert len(windows) == 1


def test_info_describes_quantization(cli, fp32, calib_ranges, tmp_path):
    out = tmp_path / "t.onnx"
    q.quantize(fp32, out, q.QuantizeOptions(target="tensorrt"), calib_ranges=calib_ranges)
    d = json.loads(cli("info", out, "--json").out)
    assert d["quantization"]["all_zero_points_zero"] is True
    assert len(d["quantization"]["quantized_convs"]) == 40 and d["quantization"]["float_convs"] == []


def test_gate_fails_writes_nothing_and_names_the_float_convs(monkeypatch, cli, fp32, calib_ranges, tmp_path, pets3):
    monkeypatch.setattr(q, "conv_nodes", lambda path: ["dc1.seq.0.depthwise", "uc1.seq.3.pointwise"])
    out = tmp_path / "never.onnx"
    r = cli("quantize", fp32, "--calib-ranges", calib_ranges, "-o", out, "--val", pets3, "--val-limit", "2",
            "--max-drop", "-1000")
    assert r.code == 1
    assert "even with 2 conv(s) in float" in r.err and "nothing was written" in r.err
    assert not out.exists()


def test_the_gate_scores_the_model_it_writes(cli, tmp_path, pets3):
    """The gate's figures are those of the written INT8 file, scored again independently."""
    from conftest import REPO

    from edgeseg.evaluation.evaluate import evaluate, load_split

    fp32, out = REPO / "models" / "segnet_dsc.onnx", tmp_path / "ok.onnx"
    r = cli("quantize", fp32, "--calib-ranges", REPO / "models" / "segnet_dsc.calib.json", "-o", out,
            "--val", pets3, "--val-limit", "20", "--json")  # within a point: the gate holds, no fallback
    assert r.code == 0, r.err
    g = json.loads(r.out)["gate"]
    table = cli("quantize", fp32, "--calib-ranges", REPO / "models" / "segnet_dsc.calib.json", "-o", out,
                "--val", pets3, "--val-limit", "20", "--force").out  # the table says which way mIoU moved
    change = "lost" if g["drop_points"] > 0 else "gained"
    assert f"{abs(g['drop_points']):.2f} points {change}, gate 1" in table, table
    again = evaluate([Predictor.load(p, backend="onnxruntime", precision="fp32") for p in (fp32, out)],
                     load_split(pets3, "test", 20))
    assert (g["fp32"]["miou"], g["int8"]["miou"]) == (again[0]["miou"], again[1]["miou"])
    assert g["agreement"] == again[1]["agreement_with_first"] < 1.0
    assert json.loads(r.out)["float_nodes"] == []


def test_a_damaged_conv_fails_the_photo_gate_and_the_fallback_keeps_it_in_float(tmp_path, monkeypatch):
    """Ranges that clip the last conv's output to +-0.02 (its real range reaches 6.2) ruin the masks;
    the sensitivity fallback must find that conv among the candidates and keep only it in float."""
    from conftest import REPO

    fp32 = REPO / "models" / "segnet_dsc.onnx"
    ranges = json.loads((REPO / "models" / "segnet_dsc.calib.json").read_text())
    ranges["data"]["logits"].update(lowest=-0.02, highest=0.02)  # the ReLU after uc1.seq.3.pointwise
    # four candidates instead of all 40 convs keep the test fast; the ranking still has to find it
    monkeypatch.setattr(q, "conv_nodes", lambda path: ["dc1.seq.0.depthwise", "uc1.seq.3.pointwise",
                                                       "dc4.seq.3.pointwise", "uc2.seq.0.pointwise"])
    damaged = tmp_path / "damaged.json"
    damaged.write_text(json.dumps(ranges))
    photos = REPO / "calibration"
    r = q.quantize(fp32, tmp_path / "q.onnx", q.QuantizeOptions(), calib_ranges=damaged, val=photos,
                   val_limit=8, sensitivity_limit=4)
    assert r.passed and r.float_nodes == ["uc1.seq.3.pointwise"]
    assert r.sensitivity[0][0] == "uc1.seq.3.pointwise" and r.gate["agreement"] >= 0.95
    assert r.gate["drop_points"] is None  # photos without masks: gated on agreement
    from edgeseg.info import describe

    assert describe(tmp_path / "q.onnx")["quantization"]["float_convs"] == ["uc1.seq.3.pointwise"]
    # without the fallback's room (every image must keep 99.9% of its pixels) nothing is written
    r = q.quantize(fp32, tmp_path / "never.onnx", q.QuantizeOptions(), calib_ranges=damaged, val=photos,
                   val_limit=8, sensitivity_limit=4, min_agreement=0.999)
    assert not r.passed and not (tmp_path / "never.onnx").exists()
def test_bad_calibration_folders_fail_cleanly(cli, fp32, tmp_path, pets37):
    empty = tmp_path / "empty"
    empty.mkdir()
    r = cli("quantize", fp32, "--calib", empty, "-o", tmp_path / "a.onnx")
    assert r.code == 1 and "only 0 usable image(s)" in r.err
    few = tmp_path / "few"
    (few / "sub").mkdir(parents=True)
    for p in sorted(pets37.glob("*.jpg"))[:5]:
        shutil.copy(p, few / "sub" / p.name)
    (few / "corrupt.jpg").write_bytes(b"\xff\xd8 nope")
    (few / "readme.txt").write_text("not an image")
    r = cli("quantize", fp32, "--calib", few, "-o", tmp_path / "b.onnx")
    assert r.code == 1 and "only 5 usable image(s)" in r.err
    r = cli("quantize", fp32, "--calib", tmp_path / "missing", "-o", tmp_path / "c.onnx")
    assert r.code == 1 and "not a folder of images" in r.err
    assert not list(tmp_path.glob("*.onnx"))


def test_quantize_refuses_bad_inputs(cli, fp32, calib_ranges, tmp_path):
    r = cli("quantize", fp32, "-o", tmp_path / "x.onnx")
    assert r.code == 1 and "--calib DIR" in r.err
    r = cli("quantize", fp32, "--calib-ranges", calib_ranges, "--target", "tflite", "-o", tmp_path / "x.onnx")
    assert r.code == 1 and "choose cpu or tensorrt" in r.err
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"CLS": "TensorsData", "data": {"not.a.tensor": {}}}))
    r = cli("quantize", fp32, "--calib-ranges", other, "-o", tmp_path / "x.onnx")
    assert r.code == 1 and "computed for another model" in r.err
    r = cli("quantize", fp32, "--calib-ranges", calib_ranges, "--method", "entropy", "-o", tmp_path / "x.onnx")
    assert r.code == 1 and "computed with --method minmax" in r.err


def _weights(path) -> dict:
    return {t.name: numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer}


def test_tensorrt_calibrates_with_percentile_by_default_and_keeps_json_output_clean(cli, fp32, tmp_path, pets37):
    """--method auto: percentile for the symmetric `tensorrt` target (MinMax lost more than 0.5 points on the
    bundled model), the stored method with --calib-ranges. ONNX Runtime's percentile calibrator prints
    progress: --json output must stay parseable."""
    ranges = tmp_path / "p.json"
    r = cli("quantize", fp32, "--calib", pets37, "--num-images", "16", "--target", "tensorrt",
            "-o", tmp_path / "p.onnx", "--save-ranges", ranges, "--json")
    assert r.code == 0, r.err
    report = json.loads(r.out)
    assert (report["target"], report["method"]) == ("tensorrt", "percentile") and "Collecting tensor data" in r.err
    r = cli("quantize", fp32, "--calib-ranges", ranges, "-o", tmp_path / "cpu.onnx")  # for either target
    assert r.code == 0, r.err
    assert "cpu (percentile calibration: the stored ranges' method)" in " ".join(r.out.split())
    r = cli("quantize", fp32, "--calib-ranges", ranges, "--method", "minmax", "-o", tmp_path / "x.onnx")
    assert r.code == 1 and "computed with --method percentile" in r.err


def test_onnxruntime_before_1_24_quantizes_the_same_from_the_same_ranges(monkeypatch, fp32, calib_ranges, tmp_path):
    """Python 3.10 (JetPack 6) gets ONNX Runtime 1.23 at most, without calibration caching: edgeseg
    feeds the stored ranges to its quantizer itself and writes ranges in the same file layout."""
    from conftest import PETS37, REPO

    import edgeseg.compile.calibration_cache as cc

    # MinMax ranges, and the bundled percentile ones (which ONNX Runtime writes partly as bare numbers)
    for stored in (calib_ranges, REPO / "models" / "segnet_dsc.calib.json"):
        native, legacy = tmp_path / "native.onnx", tmp_path / "legacy.onnx"
        q.quantize(fp32, native, q.QuantizeOptions(), calib_ranges=stored, force=True)
        monkeypatch.setattr(cc, "native_cache", lambda: False)
        q.quantize(fp32, legacy, q.QuantizeOptions(), calib_ranges=stored, force=True)
        monkeypatch.undo()
        a, b = _weights(native), _weights(legacy)
        assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    # Ranges computed on the legacy path, then used on the native one: same model again.
    monkeypatch.setattr(cc, "native_cache", lambda: False)
    ranges = tmp_path / "legacy-ranges.json"
    q.quantize(fp32, tmp_path / "l2.onnx", q.QuantizeOptions(num_images=16), calib_dir=PETS37, save_ranges=ranges)
    monkeypatch.undo()
    q.quantize(fp32, tmp_path / "n2.onnx", q.QuantizeOptions(), calib_ranges=ranges)
    a, b = _weights(tmp_path / "l2.onnx"), _weights(tmp_path / "n2.onnx")
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert json.loads(ranges.read_text()).keys() == json.loads(calib_ranges.read_text()).keys()


def test_ranges_without_the_relu_outputs_are_refused_by_name(cli, fp32, calib_ranges, tmp_path):
    """Ranges from an edgeseg that quantized convs only lack the ReLU outputs `cpu` now quantizes."""
    m = onnx.load(str(fp32))
    relu_outputs = {n.output[0] for n in m.graph.node if n.op_type == "Relu"}
    old = json.loads(calib_ranges.read_text())
    old["data"] = {k: v for k, v in old["data"].items() if k not in relu_outputs or k in
                   {i for n in m.graph.node if n.op_type == "Conv" for i in n.input}}
    path = tmp_path / "old.json"
    path.write_text(json.dumps(old))
    r = cli("quantize", fp32, "--calib-ranges", path, "-o", tmp_path / "x.onnx")
    assert r.code == 1 and f"{path}: these ranges lack" in r.err and "--calib DIR" in r.err
    assert cli("quantize", fp32, "--calib-ranges", path, "--target", "tensorrt", "-o", tmp_path / "t.onnx").code == 0


def test_the_accuracy_gate_reports_progress(tmp_path):
    """The gate was a silent pause of 15-20 s after calibration: it now has its own progress line."""
    from conftest import REPO

    seen: list[tuple[str, int, int]] = []
    q.quantize(REPO / "models" / "segnet_dsc.onnx", tmp_path / "q.onnx", q.QuantizeOptions(),
               calib_ranges=REPO / "models" / "segnet_dsc.calib.json", val=REPO / "calibration", val_limit=3,
               progress=lambda stage, i, n: seen.append((stage, i, n)))
    assert seen == [("accuracy gate", 1, 3), ("accuracy gate", 2, 3), ("accuracy gate", 3, 3)]


def test_calibration_hands_photos_to_onnx_runtime_a_chunk_at_a_time(fp32, tmp_path, monkeypatch):
    """ONNX Runtime's histogram calibrators keep every activation of the photos given in one call: 200 photos
    of the bundled model took 21 GB (percentile), 24 GB at 160x160 input was killed. edgeseg hands them over
    CHUNK at a time; MinMax ranges come out identical to one call, percentile ones within binning noise."""
    from conftest import REPO
    from onnxruntime.quantization import calibrate as ort_calibrate

    from edgeseg.compile import calibration_cache

    photos = REPO / "calibration"
    calls: dict[str, list[int]] = {"minmax": [], "percentile": []}
    for cls, method in ((ort_calibrate.MinMaxCalibrater, "minmax"), (ort_calibrate.HistogramCalibrater, "percentile")):
        real = cls.collect_data

        def counting(self, reader, real=real, seen=calls[method]):
            class Counted:
                def get_next(self):
                    item = reader.get_next()
                    seen[-1] += item is not None
                    return item
            seen.append(0)
            return real(self, Counted())
        monkeypatch.setattr(cls, "collect_data", counting)

    ranges = {}
    for chunk in (6, 1000):
        monkeypatch.setattr(calibration_cache, "CHUNK", chunk)
        for method in calls:
            calls[method].clear()
            out = tmp_path / f"{method}{chunk}.json"
            q.quantize(fp32, out.with_suffix(".onnx"), q.QuantizeOptions(method=method, num_images=16),
                       calib_dir=photos, save_ranges=out)
            ranges[method, chunk] = {k: (np.asarray(v.range_value[0]), np.asarray(v.range_value[1]))
                                     for k, v in calibration_cache.read_ranges(out).data.items()}
            assert calls[method] == ([6, 6, 4] if chunk == 6 else [16]), (method, calls[method])
    for k, (lo, hi) in ranges["minmax", 1000].items():
        assert np.array_equal(ranges["minmax", 6][k][0], lo) and np.array_equal(ranges["minmax", 6][k][1], hi), k
    for k, (_lo, hi) in ranges["percentile", 1000].items():
        np.testing.assert_allclose(ranges["percentile", 6][k][1], hi, rtol=0.02, atol=1e-3, err_msg=k)


def test_the_table_says_why_this_method_and_when_accuracy_was_not_checked(cli, fp32, calib_ranges, tmp_path):
    r = cli("quantize", fp32, "--calib-ranges", calib_ranges, "-o", tmp_path / "q.onnx")
    assert r.code == 0, r.err
    text = " ".join(r.out.split())
    assert "calibration: the stored ranges' method)" in text
    assert "│ accuracy" in text and "not checked: add --val DIR" in text
    r = cli("quantize", fp32, "--calib-ranges", calib_ranges, "--method", "minmax", "-o", tmp_path / "m.onnx")
    assert r.code == 0 and "(minmax calibration)" in " ".join(r.out.split()), r.out


def test_the_sensitivity_search_keeps_to_val_limit(monkeypatch, fp32, calib_ranges, tmp_path, pets3):
    """--val-limit 2 bounded the gate but not the search, which scored 48 photos per conv (review #39 item 14)."""
    monkeypatch.setattr(q, "conv_nodes", lambda path: ["dc1.seq.0.depthwise", "uc1.seq.3.pointwise"])
    limits = []
    gate = q.gate
    monkeypatch.setattr(q, "gate", lambda *a, **k: limits.append(a[3]) or gate(*a, **k))
    r = q.quantize(fp32, tmp_path / "q.onnx", q.QuantizeOptions(target="cpu"), calib_ranges=calib_ranges, val=pets3,
                   val_limit=2, max_drop=-1000)
    assert not r.passed and len(limits) > 3 and set(limits) == {2}


def test_a_val_folder_of_undecodable_photos_is_an_error_not_a_failed_gate(cli, fp32, calib_ranges, tmp_path):
    """It gave agreement 0, searched 40 convs and reported 0.00% (review #39 item 15)."""
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "a.jpg").write_bytes(b"not a jpeg")
    r = cli("quantize", fp32, "--calib-ranges", calib_ranges, "-o", tmp_path / "q.onnx", "--val", bad)
    assert r.code == 1 and "none of these photos could be decoded" in r.err and not (tmp_path / "q.onnx").exists()


def test_a_flip_averaging_export_needs_its_own_ranges_and_then_quantizes_for_both_targets(cli, notebook_ckpt,
                                                                                           calib_ranges, tmp_path):
    """The plain export's ranges lack the mirror-averaging export's last conv (the plain graph names it
    "logits"): refused by name. Calibrated on its own, each target quantizes every conv and keeps the average."""
    from conftest import PETS37

    from edgeseg.compile.checkpoint import load_checkpoint
    from edgeseg.compile.export import ExportOptions, export
    from edgeseg.runtime.backends.onnxruntime import create_session

    flip = tmp_path / "flip.onnx"
    export(load_checkpoint(notebook_ckpt["segnet-dsc"]), flip, ExportOptions(size=(64, 64), flip_average=True))
    r = cli("quantize", flip, "--calib-ranges", calib_ranges, "-o", tmp_path / "x.onnx")
    assert r.code == 1 and "lack 1 tensor(s)" in r.err and "(uc1.seq." in r.err and "--flip-average" in r.err
    ranges = tmp_path / "flip.json"
    q.quantize(flip, tmp_path / "calibrated.onnx", q.QuantizeOptions(num_images=16), calib_dir=PETS37,
               save_ranges=ranges)
    x = np.random.default_rng(0).random((1, 3, 64, 64), dtype=np.float32)
    fp32_ids = create_session(flip, threads=1).run(None, {"input": x})[0].argmax(1)
    for target in ("cpu", "tensorrt"):
        out = tmp_path / f"{target}.onnx"
        r = q.quantize(flip, out, q.QuantizeOptions(target=target), calib_ranges=ranges)
        assert r.float_nodes == []
        m = onnx.load(str(out))
        assert {"flip/input", "flip/batch", "flip/unmirrored", "logits"} <= {o for n in m.graph.node for o in n.output}
        props = {p.key: p.value for p in m.metadata_props}
        assert json.loads(props["edgeseg_meta"])["flip_average"] is True
        if target == "cpu":
            assert json.loads(props["quantization"])["integer_unpools"] == 4
        else:
            assert check(out, "tensorrt") == []
        ids = create_session(out, threads=1).run(None, {"input": x})[0].argmax(1)
        assert (ids == fp32_ids).mean() > 0.9
