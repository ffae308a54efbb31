"""edgeseg's TensorRT code against the real Python APIs of TensorRT 10.3 (JetPack 6) and 11.4.

No GPU and no TensorRT libraries are needed: tests/fake_tensorrt/prepare.py installs each version's
real bindings with stub native libraries, and tests/fake_tensorrt/fake.py runs edgeseg's own CLI
(build, run, doctor) on a fake that accepts only what that version's bindings define, with the
arguments they take, and executes engines with ONNX Runtime. What was configured (flags, network
creation flags, profiles, DLA, timing cache) is read back from the fake's log.

Skipped, with the reason, only when the bindings cannot be installed (no PyPI, no gcc).
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
from conftest import PETS3, REPO

from edgeseg.runtime.loop.runner import WARMUP_PASSES

sys.path.insert(0, str(REPO / "tests" / "fake_tensorrt"))
from prepare import PrepareError, prepare

pytestmark = [pytest.mark.tensorrt_api, pytest.mark.slow]
MODEL = REPO / "models" / "segnet_dsc.onnx"
FLOAT, FLOAT16 = onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16


@pytest.fixture(scope="module", params=["10.3", "11.4"])
def trt(request):
    try:
        return prepare(request.param)
    except PrepareError as e:
        pytest.skip(f"could not install the TensorRT {request.param} bindings: {e}")


def fake(env, *args, tmp_path, dla_cores: int = 0, **extra: str) -> tuple[subprocess.CompletedProcess, dict]:
    """``edgeseg ARGS`` on the fake TensorRT of ``env``; (process, the fake's log)."""
    log = tmp_path / f"fake-log-{len(list(tmp_path.glob('fake-log-*')))}.json"
    r = subprocess.run([env.python, str(REPO / "tests" / "fake_tensorrt" / "fake.py"), *map(str, args)],
                       capture_output=True, text=True, timeout=600,
                       env=env.environ(FAKE_TRT_LOG=str(log), FAKE_TRT_DLA_CORES=str(dla_cores),
                                       EDGESEG_CACHE=str(tmp_path / "cache"), COLUMNS="200", **extra))
    return r, (json.loads(log.read_text()) if log.exists() else {})


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    if not PETS3.is_dir():
        pytest.skip(f"dataset not found at {PETS3}")
    folder = tmp_path_factory.mktemp("photos")
    for name in ("Abyssinian_1", "Bengal_10", "american_bulldog_100", "Bengal_101"):
        (folder / f"{name}.jpg").write_bytes((PETS3 / "images" / f"{name}.jpg").read_bytes())
    return folder


@pytest.fixture(scope="module")
def calib(tmp_path_factory):
    """The fewest photos quantize calibrates on, from calibration/: these tests check what build (--calib) and
    doctor (--images) do with a photo folder, not the ranges, and calibration time grows with the photos."""
    from edgeseg.compile.quantize import MIN_CALIBRATION_IMAGES

    folder = tmp_path_factory.mktemp("calib")
    for p in sorted((REPO / "calibration").glob("*.jpg"))[:MIN_CALIBRATION_IMAGES]:
        (folder / p.name).write_bytes(p.read_bytes())
    return folder


def ort_masks(model, photos, tmp_path, upsample: str = "smooth") -> dict[str, np.ndarray]:
    """Masks of the same photos from ONNX Runtime on the CPU, through the same run loop."""
    from edgeseg.runtime.backends.predictor import Predictor
    from edgeseg.runtime.loop.overlay import Renderer
    from edgeseg.runtime.loop.runner import RunOptions, run_loop
    from edgeseg.runtime.loop.sources import open_source

    out = tmp_path / f"ort-masks-{upsample}"
    predictor = Predictor.load(model, backend="onnxruntime", precision="fp32")
    predictor.upsample = upsample
    run_loop(predictor, open_source(str(photos)), Renderer(), RunOptions(warmup=0, save_masks=out))
    return read_masks(out)


def read_masks(folder) -> dict[str, np.ndarray]:
    return {p.stem: cv2.imread(str(p), cv2.IMREAD_UNCHANGED) for p in sorted(folder.glob("*.png"))}


def agreement(a: dict, b: dict) -> float:
    assert a.keys() == b.keys() and a
    return float(np.mean([(a[k] == b[k]).mean() for k in a]))


# --- the names edgeseg uses exist in each version ---------------------------------------------------

SOURCES = ["edgeseg/compile/engine.py", "edgeseg/runtime/backends/cuda.py", "edgeseg/runtime/backends/tensorrt.py"]


def _chains(roots: set[str]) -> set[str]:
    """Every ``root.A.B`` attribute chain in edgeseg's TensorRT sources (``trt.X``, ``rt.X``, ``self.rt.X``)."""
    found = set()
    for src in SOURCES:
        for node in ast.walk(ast.parse((REPO / src).read_text())):
            if not isinstance(node, ast.Attribute):
                continue
            parts, cur = [], node
            while isinstance(cur, ast.Attribute):
                parts.append(cur.attr)
                cur = cur.value
            if isinstance(cur, ast.Name) and parts[-1:] == ["rt"] and cur.id == "self":
                parts, cur = parts[:-1], ast.Name(id="rt")
            if isinstance(cur, ast.Name) and cur.id in roots:
                found.add(".".join([cur.id, *reversed(parts)]))
    return {c for c in found if not any(o != c and o.startswith(c + ".") for o in found)}


def test_every_tensorrt_and_cuda_name_edgeseg_uses_exists(trt):
    chains = sorted(_chains({"trt", "rt"}))
    assert "trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED" in chains and "rt.cudaMemcpyAsync" in chains
    script = ("import json, sys, tensorrt as trt\nfrom cuda.bindings import runtime as rt\nmissing = []\n"
              "for chain in json.loads(sys.argv[1]):\n    obj = {'trt': trt, 'rt': rt}[chain.split('.')[0]]\n"
              "    for part in chain.split('.')[1:]:\n        if not hasattr(obj, part):\n"
              "            missing.append(chain); break\n        obj = getattr(obj, part)\nprint(json.dumps(missing))")
    r = subprocess.run([trt.python, "-c", script, json.dumps(chains)], capture_output=True, text=True,
                       env=trt.environ(), timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    # TensorRT 11 removed the precision flags; edgeseg reads them only behind hasattr(trt.BuilderFlag, "FP16")
    expected = [] if trt.version == "10.3" else ["trt.BuilderFlag.FP16", "trt.BuilderFlag.INT8"]
    assert json.loads(r.stdout) == expected


def test_the_fake_refuses_what_the_version_lacks(trt, tmp_path):
    """The fake is as strict as promised: a wrong name, keyword or argument type fails."""
    probe = REPO / "tests" / "fake_tensorrt" / "probe_strictness.py"
    r = subprocess.run([trt.python, str(probe)], capture_output=True, text=True, env=trt.environ(), timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr[-2000:]
    refused = json.loads(r.stdout)
    assert all(refused.values()), refused


# --- edgeseg build ----------------------------------------------------------------------------------

def test_build_sets_the_right_flags_per_version(trt, tmp_path):
    builds = {}
    for precision in ("fp32", "fp16"):
        r, log = fake(trt, "build", MODEL, "--precision", precision, "-o", tmp_path / f"m.{precision}.engine",
                      tmp_path=tmp_path)
        assert r.returncode == 0, r.stderr
        builds[precision] = log["builds"][0]
        meta = json.loads((tmp_path / f"m.{precision}.engine.json").read_text())
        assert meta["precision"] == precision and meta["tensorrt"].startswith(trt.version)
        assert log["builds"][0]["pools"] == {"WORKSPACE": 1 << 30} and log["builds"][0]["opt_level"] == 3
    if trt.version == "10.3":  # weakly typed: FP16 is a builder flag on the FP32 graph
        assert [b["network_flags"] for b in builds.values()] == [[], []]
        assert builds["fp32"]["builder_flags"] == [] and builds["fp16"]["builder_flags"] == ["FP16"]
        assert FLOAT16 not in builds["fp16"]["initializer_types"]
    else:  # strongly typed: FP16 comes from an FP16 graph, no precision flags exist
        assert [b["network_flags"] for b in builds.values()] == [["STRONGLY_TYPED"]] * 2
        assert [b["builder_flags"] for b in builds.values()] == [[], []]
        assert FLOAT16 in builds["fp16"]["initializer_types"] and FLOAT not in builds["fp16"]["initializer_types"]
    assert "MaxUnpool" not in builds["fp16"]["ops"]


@pytest.fixture(scope="module")
def int8_model(tmp_path_factory):
    from edgeseg.compile.quantize import QuantizeOptions, quantize

    out = tmp_path_factory.mktemp("q") / "segnet_dsc.int8-trt.onnx"
    quantize(MODEL, out, QuantizeOptions(target="tensorrt"), calib_ranges=REPO / "models" / "segnet_dsc.calib.json")
    return out


def test_int8_from_qdq_and_from_calib(trt, tmp_path, int8_model, calib):
    r, log = fake(trt, "build", int8_model, "--precision", "int8", "-o", tmp_path / "q.engine", tmp_path=tmp_path)
    assert r.returncode == 0, r.stderr
    b = log["builds"][0]
    assert "QuantizeLinear" in b["ops"] and "DequantizeLinear" in b["ops"]
    assert b["builder_flags"] == (["FP16", "INT8"] if trt.version == "10.3" else [])
    r, log = fake(trt, "build", MODEL, "--precision", "int8", "--calib", calib, "-o", tmp_path / "c.engine",
                  tmp_path=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "QuantizeLinear" in log["builds"][0]["ops"]
    assert json.loads((tmp_path / "c.engine.json").read_text())["calibration_sha256"]
    r, _ = fake(trt, "build", int8_model, "--precision", "int8", "--calib", calib, "-o", tmp_path / "x.engine",
                tmp_path=tmp_path)  # its ranges would win: --calib refused, not ignored
    assert r.returncode == 1 and "quantized already" in r.stderr and not (tmp_path / "x.engine").exists()


def test_dla_with_gpu_fallback_and_a_clear_error_without_dla(trt, tmp_path):
    r, log = fake(trt, "build", MODEL, "--dla-core", "1", "-o", tmp_path / "d.engine", tmp_path=tmp_path,
                  dla_cores=2)
    assert r.returncode == 0, r.stderr
    b = log["builds"][0]
    assert (b["device"], b["dla_core"]) == ("DLA", 1) and "GPU_FALLBACK" in b["builder_flags"]
    r, _ = fake(trt, "build", MODEL, "--dla-core", "0", "-o", tmp_path / "n.engine", tmp_path=tmp_path)
    assert r.returncode == 1 and "--dla-core 0: this device has 0 DLA core(s)" in r.stderr
    assert not (tmp_path / "n.engine").exists()


def test_a_timing_cache_from_another_gpu_is_refused_by_name(trt, tmp_path):
    cache = tmp_path / "timing.cache"
    cache.write_bytes(b"other-gpu timing cache")
    r, _ = fake(trt, "build", MODEL, "--timing-cache", cache, "-o", tmp_path / "t.engine", tmp_path=tmp_path)
    assert r.returncode == 1 and r.stderr.startswith(f"error: {cache}: TensorRT refused this timing cache")
    assert not (tmp_path / "t.engine").exists() and cache.read_bytes() == b"other-gpu timing cache"


def test_the_rebuild_command_replays_every_build_option(trt, tmp_path, calib):
    import shlex

    engine = tmp_path / "c.engine"
    r, _ = fake(trt, "build", MODEL, "--precision", "int8", "--calib", calib, "--opt-level", "4",
                "--workspace", "0.5", "-o", engine, tmp_path=tmp_path)
    assert r.returncode == 0, r.stderr
    meta = json.loads((tmp_path / "c.engine.json").read_text())
    assert meta["build_options"] == {"workspace": 0.5, "opt_level": 4, "calib": str(calib)}
    meta["gpu"] = "NVIDIA Jetson AGX Orin"  # as if the engine had been copied from another device
    (tmp_path / "c.engine.json").write_text(json.dumps(meta))
    r, _ = fake(trt, "run", engine, "--source", REPO / "calibration", "--max-frames", "1", tmp_path=tmp_path)
    assert r.returncode == 1 and "rebuild it here: edgeseg build" in r.stderr
    command = shlex.split(r.stderr.split("rebuild it here: ", 1)[1].strip())
    r, log = fake(trt, *command[1:], tmp_path=tmp_path)
    assert r.returncode == 0, r.stderr
    assert log["builds"][0]["opt_level"] == 4 and log["builds"][0]["pools"] == {"WORKSPACE": 1 << 29}
    assert "QuantizeLinear" in log["builds"][0]["ops"]
    assert json.loads((tmp_path / "c.engine.json").read_text())["build_options"] == meta["build_options"]


def test_no_execution_context_is_one_clear_line(trt, tmp_path):
    r, _ = fake(trt, "build", MODEL, "-o", tmp_path / "m.engine", tmp_path=tmp_path)
    assert r.returncode == 0, r.stderr
    r, _ = fake(trt, "run", tmp_path / "m.engine", "--source", REPO / "calibration", tmp_path=tmp_path,
                FAKE_TRT_NO_CONTEXT="1")
    assert r.returncode == 1 and "could not create an execution context" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_timing_cache_is_read_and_written_back(trt, tmp_path):
    cache = tmp_path / "timing.cache"
    for i in (1, 2):
        r, log = fake(trt, "build", MODEL, "--timing-cache", cache, "-o", tmp_path / "t.engine", "--force",
                      tmp_path=tmp_path)
        assert r.returncode == 0, r.stderr and log["builds"][0]["timing_cache"]
        # the fake's cache serializes as what it was created from + "+build": a round trip grows it
        assert cache.read_bytes() == b"+build" * i


# --- the TensorRT runtime backend -------------------------------------------------------------------

def test_engines_run_end_to_end_beside_onnxruntime(trt, tmp_path, photos):
    reference = ort_masks(MODEL, photos, tmp_path)
    for precision in ("fp32", "fp16"):
        engine = tmp_path / f"m.{precision}.engine"
        r, _ = fake(trt, "build", MODEL, "--precision", precision, "-o", engine, tmp_path=tmp_path)
        assert r.returncode == 0, r.stderr
        masks, report = tmp_path / f"masks-{precision}", tmp_path / f"{precision}.json"
        r, log = fake(trt, "run", engine, "--source", photos, "--warmup", "0", "--save-masks", masks,
                      "--report", report, tmp_path=tmp_path)
        assert r.returncode == 0, r.stderr
        assert log["executions"] == 4 + WARMUP_PASSES  # each photo, and the untimed warm-up on the first
        model = json.loads(report.read_text())["model"]
        assert (model["backend"], model["precision"]) == ("tensorrt", precision)
        got = read_masks(masks)
        if precision == "fp32" or trt.version == "10.3":  # the fake runs the FP32 graph: identical masks
            assert agreement(got, reference) == 1.0
        else:  # 11.x parses the FP16 graph
            assert agreement(got, reference) > 0.98


def test_dynamic_batch_profile_and_argmax_head(trt, tmp_path, photos, tmp_path_factory):
    from edgeseg.compile.checkpoint import load_checkpoint
    from edgeseg.compile.export import ExportOptions, export

    model = tmp_path_factory.getbasetemp() / "dyn-argmax.onnx"
    if not model.exists():
        export(load_checkpoint(REPO / "models" / "segnet_dsc.pth"), model,
               ExportOptions(batch=None, with_argmax="uint8"))
    engine = tmp_path / "dyn.engine"
    r, log = fake(trt, "build", model, "--precision", "fp32", "--max-batch", "4", "-o", engine, tmp_path=tmp_path)
    assert r.returncode == 0, r.stderr
    assert log["builds"][0]["profiles"] == [{"input": [[1, 3, 160, 160], [4, 3, 160, 160], [4, 3, 160, 160]]}]
    r, log = fake(trt, "run", engine, "--source", photos, "--warmup", "0", "--save-masks", tmp_path / "masks",
                  "--report", tmp_path / "r.json", tmp_path=tmp_path)
    assert r.returncode == 0, r.stderr
    assert log["batches"] == [1] * (4 + WARMUP_PASSES)  # one frame at a time, not padded to the profile's 4
    assert json.loads((tmp_path / "r.json").read_text())["model"]["output"] == "classes"
    # class ids out of the engine: blown up with nearest neighbour, as ONNX Runtime's --upsample nearest
    assert agreement(read_masks(tmp_path / "masks"), ort_masks(MODEL, photos, tmp_path, "nearest")) == 1.0


def test_fp16_inputs_and_outputs(trt, tmp_path, photos):
    """An engine whose I/O tensors are FP16: buffers are sized and filled by the engine's dtypes."""
    from edgeseg.runtime.backends.fp16 import to_fp16

    half = to_fp16(onnx.load(str(MODEL)))
    g = half.graph
    cast_in, cast_out = g.node[0], g.node[-1]
    for n in g.node:
        n.input[:] = [g.input[0].name if x == cast_in.output[0] else x for x in n.input]
        n.output[:] = [g.output[0].name if x == cast_out.input[0] else x for x in n.output]
    g.node.remove(cast_in)
    g.node.remove(cast_out)
    g.input[0].type.tensor_type.elem_type = g.output[0].type.tensor_type.elem_type = FLOAT16
    onnx.checker.check_model(half)
    model = tmp_path / "fp16-io.onnx"
    onnx.save(half, str(model))
    engine = tmp_path / "h.engine"
    r, _ = fake(trt, "build", model, "--precision", "fp16", "-o", engine, tmp_path=tmp_path)
    assert r.returncode == 0, r.stderr
    r, _ = fake(trt, "run", engine, "--source", photos, "--warmup", "0", "--save-masks", tmp_path / "masks",
                tmp_path=tmp_path)
    assert r.returncode == 0, r.stderr
    assert agreement(read_masks(tmp_path / "masks"), ort_masks(MODEL, photos, tmp_path)) > 0.98


# --- edgeseg doctor ---------------------------------------------------------------------------------

def test_doctor_builds_and_checks_fp16_and_int8_engines(trt, tmp_path, calib):
    r, log = fake(trt, "doctor", "--json", "--images", calib, tmp_path=tmp_path)
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["facts"]["tensorrt"].startswith(trt.version) and d["facts"]["compute_capability"] == "8.7"
    assert d["facts"]["cuda_python"].split(".")[0] == ("12" if trt.version == "10.3" else "13")
    checks = {c["name"]: c for c in d["checks"]}
    assert checks["tensorrt fp16"]["status"] == "PASS" and checks["tensorrt fp16"]["agreement"] > 0.98
    assert checks["tensorrt int8"]["status"] == "PASS" and 0.95 < checks["tensorrt int8"]["agreement"] < 1.0
    assert [b["builder_flags"] for b in log["builds"]] == (
        [["FP16"], ["FP16", "INT8"]] if trt.version == "10.3" else [[], []])
    assert log["executions"] == 2 * len(list(calib.iterdir()))  # each engine on each photo


def test_a_killed_engine_build_leaves_a_whole_engine_and_metadata_or_none(trt, tmp_path):
    """SIGKILL at fixed points of `edgeseg build` (issue #37): the engine and its .json are whole or absent."""
    import os
    import signal
    import time

    from edgeseg.runtime.backends.engine_meta import EngineMeta

    r, _ = fake(trt, "build", MODEL, "--precision", "fp16", "-o", tmp_path / "whole.engine", tmp_path=tmp_path)
    assert r.returncode == 0, r.stderr
    whole = (tmp_path / "whole.engine").read_bytes()
    for k, after in enumerate((0.5, 1.5, 3.0)):  # a fake build takes about 2 s here: before, during, after
        engine = tmp_path / f"killed{k}.engine"
        p = subprocess.Popen([trt.python, str(REPO / "tests" / "fake_tensorrt" / "fake.py"), "build", str(MODEL),
                              "--precision", "fp16", "-o", str(engine)], stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, env=trt.environ(EDGESEG_CACHE=str(tmp_path / "cache")))
        time.sleep(after)
        if p.poll() is None:
            os.kill(p.pid, signal.SIGKILL)
        p.wait(timeout=60)
        if engine.exists():
            assert engine.read_bytes() == whole
        if Path(f"{engine}.json").exists():
            assert EngineMeta.load(engine).precision == "fp16"
