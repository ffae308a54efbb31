"""bench: order, the ratio column, JSON schema, accuracy columns and bad inputs."""

from __future__ import annotations

import json

import numpy as np
import pytest

from edgeseg.bench import bench, machine_peak
from edgeseg.compile.checkpoint import load_checkpoint
from edgeseg.compile.export import ExportOptions, export
from edgeseg.errors import EdgesegError


@pytest.fixture(scope="session")
def two_models(exported):
    return [exported["segnet-dsc"][0], exported["segnet"][0]]


def test_rows_keep_the_given_order_and_ratio_is_to_the_first(two_models):
    for order in (two_models, two_models[::-1]):
        r = bench(order, runs=4, warmup=1, threads=1, peak=False)
        assert [m["model"] for m in r["models"]] == [str(p) for p in order]
        first = r["models"][0]["latency_ms"]["p50"]
        assert r["models"][0]["ratio_to_first"] == 1.0
        for m in r["models"]:
            assert m["ratio_to_first"] == pytest.approx(m["latency_ms"]["p50"] / first)
            assert m["fps"] == pytest.approx(1000 / m["latency_ms"]["p50"])
    macs = {m["model"]: m["gmacs"] * m["latency_ms"]["p50"] / 1000 for m in r["models"]}
    assert macs[str(two_models[1])] / macs[str(two_models[0])] == pytest.approx(9116319744 / 1077657600)


def test_json_schema_and_accuracy_columns(cli, two_models, tmp_path, pets3):
    out = tmp_path / "bench.json"
    r = cli("bench", *two_models, "--runs", "3", "--warmup", "1", "--threads", "1", "--data", pets3,
            "--data-limit", "2", "--end-to-end", "--no-peak", "--json", out)
    assert r.code == 0, r.err
    d = json.loads(out.read_text())
    assert d["mode"] == "end-to-end" and d["runs"] == 3 and d["input_size"] == [64, 64]
    assert {"cpu", "onnxruntime", "python"} <= set(d["environment"])
    for m in d["models"]:
        assert {"p50", "p90", "p99", "max", "mean"} <= set(m["latency_ms"])
        assert {"model", "sha256", "backend", "precision", "threads", "file_mb", "fps", "ratio_to_first", "gmacs",
                "miou", "pixel_accuracy", "agreement_with_first"} <= set(m)
    assert d["models"][0]["agreement_with_first"] == 1.0
    assert "p50 ms" in r.out and "x first" in r.out
    r = cli("bench", *two_models, "--runs", "1", "--no-peak", "--json", out)
    assert r.code == 1 and "--force" in r.err


def test_machine_peak_times_a_real_matrix_product_in_gmacs():
    """The peak's sessions compute a @ b (checked against numpy: exact in int8, also with products
    whose pairs overflow 16 bits, as x86 u8 x s8 kernels without VNNI do), and the figure is in
    GMAC/s: between 0.1 and 1000 per thread on any CPU, a range that a slip of units or of the n^3
    count leaves."""
    from edgeseg.bench import _matmul_session

    rng = np.random.default_rng(1)
    a8, b8 = rng.integers(0, 255, (64, 64), dtype=np.uint8), rng.integers(-127, 127, (64, 64), dtype=np.int8)
    a8[:, :2], b8[:2] = 255, 127  # 2 * 255 * 127 > 32767
    y = _matmul_session(b8, 1).run(None, {"a": a8})[0]
    assert np.array_equal(y, a8.astype(np.int32) @ b8.astype(np.int32))
    af, bf = rng.random((64, 64), dtype=np.float32), rng.random((64, 64), dtype=np.float32)
    np.testing.assert_allclose(_matmul_session(bf, 1).run(None, {"a": af})[0], af @ bf, rtol=1e-5)
    peak = machine_peak(threads=1, n=256, repeats=3)
    assert set(peak) == {"fp32_gmacs", "int8_gmacs"}
    assert all(0.1 < v < 1000 for v in peak.values()), peak


def test_bad_inputs(cli, two_models, notebook_ckpt, tmp_path):
    r = cli("bench", two_models[0], "--backend", "openvino-ish", "--runs", "1")
    assert r.code == 1 and "unknown backend" in r.err
    r = cli("bench", two_models[0], tmp_path / "missing.onnx", "--runs", "1")
    assert r.code == 1 and "missing.onnx: no such file" in r.err
    with pytest.raises(EdgesegError, match="--end-to-end needs photos"):
        bench([two_models[0]], runs=1, end_to_end=True, peak=False)


def test_a_larger_input_export_is_timed_beside_the_default(cli, two_models, notebook_ckpt, tmp_path):
    """`edgeseg export --size` makes a larger-input variant of one checkpoint; bench times both, each on
    an input of its own size, and says which is which; a mirror-averaging export does twice the work."""
    small, mirrored = tmp_path / "small.onnx", tmp_path / "mirrored.onnx"
    export(load_checkpoint(notebook_ckpt["segnet-dsc"]), small, ExportOptions(size=(32, 32)))
    export(load_checkpoint(notebook_ckpt["segnet-dsc"]), mirrored, ExportOptions(size=(32, 32), flip_average=True))
    out = tmp_path / "sizes.json"
    r = cli("bench", two_models[0], small, mirrored, "--runs", "2", "--warmup", "0", "--threads", "1", "--no-peak",
            "--json", out)
    assert r.code == 0, r.err
    d = json.loads(out.read_text())
    rows = d["models"]
    assert d["input_size"] is None and [m["input_size"] for m in rows] == [[64, 64], [32, 32], [32, 32]]
    macs = [m["gmacs"] * m["latency_ms"]["p50"] / 1000 for m in rows]
    assert macs[0] / macs[1] == pytest.approx(4.0)  # each row's work at its own size
    assert macs[2] / macs[1] == pytest.approx(2.0)
    assert "input" in r.out and "64x64" in r.out and "32x32" in r.out


def test_model_at_backend_spec():
    from pathlib import Path

    from edgeseg.bench import split_spec

    assert split_spec("m.onnx@openvino", "auto") == (Path("m.onnx"), "openvino", "auto")
    assert split_spec("m.onnx@openvino:bf16", "auto") == (Path("m.onnx"), "openvino", "bf16")
    assert split_spec("m.onnx", "onnxruntime", "fp32") == (Path("m.onnx"), "onnxruntime", "fp32")
    assert split_spec("odd@name.onnx", "auto") == (Path("odd@name.onnx"), "auto", "auto")


def test_cpu_table_benchmark_lists_every_configuration(tmp_path):
    """benchmarks/cpu_table.py (the README's CPU table) still runs end to end on the bundled model."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    out = tmp_path / "table.json"
    r = subprocess.run([sys.executable, str(root / "benchmarks" / "cpu_table.py"), "--runs", "2", "--warmup", "0",
                        "--threads", "1", "--json", str(out)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    rows = json.loads(out.read_text())["models"]
    labels = [row["configuration"] for row in rows]
    assert labels[:5] == ["PyTorch eager FP32", "ONNX Runtime FP32, unpool as exported", "ONNX Runtime FP32",
                          "ONNX Runtime INT8, unpool as exported", "ONNX Runtime INT8"]
    assert all(label in r.stdout for label in labels)
    assert "default INT8 p50 / default FP32 p50" in r.stdout
    assert {row["precision"] for row in rows[3:5]} == {"int8-cpu"}


def test_each_row_is_a_share_of_its_own_precisions_peak(tmp_path):
    from conftest import REPO

    from edgeseg.compile.quantize import QuantizeOptions, quantize

    fp32 = REPO / "models" / "segnet_dsc.onnx"
    int8 = tmp_path / "int8.onnx"
    quantize(fp32, int8, QuantizeOptions(target="cpu"), calib_ranges=REPO / "models" / "segnet_dsc.calib.json")
    r = bench([f"{fp32}@onnxruntime", f"{int8}@onnxruntime"], runs=3, warmup=1, threads=1)
    a, b = r["models"]
    peak = r["machine_peak"]
    assert (a["peak_kind"], b["peak_kind"]) == ("fp32", "int8")
    assert a["share_of_own_peak"] == pytest.approx(a["gmacs"] / peak["fp32_gmacs"])
    assert b["share_of_own_peak"] == pytest.approx(b["gmacs"] / peak["int8_gmacs"])


def test_a_model_computed_in_bf16_or_fp16_is_not_a_share_of_the_fp32_peak():
    from edgeseg.bench import peak_kind

    assert peak_kind({"precision": "fp32", "file_precision": "fp32", "compute_precision": "fp32"}) == "fp32"
    assert peak_kind({"precision": "fp32 as bf16", "file_precision": "fp32", "compute_precision": "bf16"}) == "bf16"
    assert peak_kind({"precision": "int8-cpu + bf16", "file_precision": "int8-cpu", "compute_precision": "bf16"}) \
        == "int8"
