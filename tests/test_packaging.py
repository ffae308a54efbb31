"""The device side runs without PyTorch; the package installs and answers --version."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import REPO

# Makes `import torch` fail in the child, as on a device where PyTorch is not installed.
BLOCK_TORCH = """
import sys
class _NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("PyTorch is not installed on this device")
sys.meta_path.insert(0, _NoTorch())
"""


def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)


# Every device-side module. Left out: edgeseg.runtime.backends.fp16, an ONNX graph rewrite that needs onnx and
# runs only for --precision fp16 on ONNX Runtime.
DEVICE_MODULES = sorted(
    ".".join(p.relative_to(REPO).with_suffix("").parts) for folder in ("runtime", "evaluation")
    for p in (REPO / "edgeseg" / folder).rglob("*.py") if p.stem not in ("__init__", "fp16"))
# As on an ARM device: no PyTorch, no onnx, no onnxsim (`import x` fails, find_spec says absent).
BLOCK_BUILD_PACKAGES = "import sys\nfor _m in ('torch', 'onnx', 'onnxsim'):\n    sys.modules[_m] = None\n"


def test_device_modules_import_nothing_from_the_build_side():
    assert {"edgeseg.runtime.backends.predictor", "edgeseg.runtime.loop.runner", "edgeseg.runtime.images",
            "edgeseg.evaluation.evaluate"} <= set(DEVICE_MODULES)
    r = run_python(
        BLOCK_BUILD_PACKAGES + "".join(f"import {m}\n" for m in DEVICE_MODULES) +
        "loaded = sorted(m for m in sys.modules if m.startswith('edgeseg.compile'))\n"
        "assert not loaded, loaded\n"
    )
    assert r.returncode == 0, r.stderr


def test_run_and_bench_work_without_torch_onnx_and_onnxsim(exported, tmp_path):
    """The device runtime's commands on an ONNX file where only numpy, OpenCV and ONNX Runtime exist."""
    path, _ = exported["segnet-dsc"]
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in sorted(os.listdir(REPO / "calibration"))[:3]:
        if name.endswith(".jpg"):
            (photos / name).write_bytes((REPO / "calibration" / name).read_bytes())
    for args in (["run", str(path), "--source", str(photos), "--backend", "onnxruntime", "--output",
                  str(tmp_path / "out"), "--report", str(tmp_path / "report.json")],
                 ["bench", str(path), "--backend", "onnxruntime", "--runs", "3", "--json",
                  str(tmp_path / "bench.json")]):
        code = BLOCK_BUILD_PACKAGES + f"sys.argv = ['edgeseg', *{args!r}]\nfrom edgeseg.cli import main\nmain()\n"
        r = run_python(code)
        assert r.returncode == 0, (args[0], r.stderr)
    assert len(list((tmp_path / "out").iterdir())) == 3
    assert json.loads((tmp_path / "report.json").read_text())["model"]["backend"] == "onnxruntime"
    bench = json.loads((tmp_path / "bench.json").read_text())
    assert bench["models"][0]["backend"] == "onnxruntime" and "pip install onnx" in bench["machine_peak_skipped"]


def test_info_on_onnx_works_without_torch(exported):
    path, _ = exported["segnet-dsc"]
    code = BLOCK_TORCH + f"sys.argv = ['edgeseg', 'info', {str(path)!r}, '--json']\n"
    code += "from edgeseg.cli import main\nmain()\n"
    r = run_python(code)
    assert r.returncode == 0, r.stderr
    assert '"arch": "segnet-dsc"' in r.stdout


def test_version_from_module_and_console_script():
    from edgeseg import __version__

    r = subprocess.run([sys.executable, "-m", "edgeseg", "--version"], capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0 and r.stdout.strip() == f"edgeseg {__version__}"



@pytest.mark.parametrize(("module", "args", "fix"), [
    ("onnx", ["quantize", "m.onnx", "--calib-ranges", "r.json", "-o", "q.onnx"], "pip install 'edgeseg[export]'"),
    ("torch", ["export", "m.pth", "-o", "m.onnx"], "pip install torch"),
])
def test_missing_workstation_extras_give_one_line_with_the_fix(tmp_path, module, args, fix):
    """A device-side install (no torch/onnx) running export or quantize: one line naming the fix."""
    for name, data in (("m.onnx", b"x"), ("r.json", b"{}"), ("m.pth", b"x")):
        (tmp_path / name).write_bytes(data)
    code = (f"import sys; sys.modules[{module!r}] = None; sys.argv = ['edgeseg', *{args!r}]; "
            "from edgeseg.cli import main; main()")
    env = {k: v for k, v in os.environ.items() if k != "EDGESEG_DEBUG"}
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 1 and fix in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
