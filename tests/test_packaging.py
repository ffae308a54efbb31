"""The device side runs without PyTorch; the package installs and answers --version."""

from __future__ import annotations

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


def test_runtime_modules_do_not_import_torch():
    r = run_python(
        "import sys\n"
        "import edgeseg.cli, edgeseg.runtime, edgeseg.runtime.onnxruntime, edgeseg.data, edgeseg.metrics, "
        "edgeseg.onnx_info, edgeseg.meta\n"
        "loaded = sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.'))\n"
        "assert not loaded, loaded\n"
    )
    assert r.returncode == 0, r.stderr


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
