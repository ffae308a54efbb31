"""Environments holding the real TensorRT Python bindings of one version, loadable without TensorRT.

For each version: the bindings wheel from PyPI (``tensorrt-cuNN-bindings``; the ``-libs`` wheels
with the native libraries need NVIDIA's index and are not used), the matching ``cuda-bindings``,
and stub ``libnvinfer``/``libnvonnxparser``/``libnvinfer_plugin`` built from ``stubs.c`` so that
``import tensorrt`` loads. TensorRT 10.3 (JetPack 6) runs on Python 3.10 in its own venv with the
device runtime's dependencies when a 3.10 interpreter is found, else on this interpreter; 11.x runs
on this interpreter. Prepared once and cached (``$EDGESEG_TRT_API_CACHE``, default
``~/.cache/edgeseg/tensorrt-api``).

    python tests/fake_tensorrt/prepare.py 10.3     # prints the environment as JSON
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]


@dataclass(frozen=True)
class Version:
    bindings: str
    cuda: str
    soname: int
    python: str | None  # the interpreter version to prefer (JetPack's), None for this one


VERSIONS = {
    "10.3": Version("tensorrt-cu12-bindings==10.3.0", "cuda-bindings>=12.6,<13", 10, "3.10"),
    "11.4": Version("tensorrt-cu13-bindings==11.4.0.106", "cuda-bindings>=13,<14", 11, None),
}
# what edgeseg needs at run time besides TensorRT (pyproject's dependencies), for a separate venv
RUNTIME_DEPS = ["numpy>=1.24", "opencv-python-headless>=4.8", "onnxruntime>=1.17", "onnx>=1.15", "typer>=0.12",
                "rich>=13"]


@dataclass(frozen=True)
class Env:
    version: str
    python: str
    python_version: str
    pythonpath: list[str]
    lib: str

    def environ(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONHOME",)}
        env["PYTHONPATH"] = os.pathsep.join([*self.pythonpath, str(HERE.parent), str(REPO)])
        env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (self.lib, env.get("LD_LIBRARY_PATH", "")) if p)
        env["PYTHONNOUSERSITE"] = "1"
        return {**env, **extra}


class PrepareError(RuntimeError):
    pass


def _cache_root() -> Path:
    return Path(os.environ.get("EDGESEG_TRT_API_CACHE", Path.home() / ".cache" / "edgeseg" / "tensorrt-api"))


def _find_python(version: str) -> str | None:
    """An interpreter of ``version`` that really runs (pyenv shims refuse versions that are not selected)."""
    candidates = [shutil.which(f"python{version}"), *sorted(glob.glob(
        str(Path.home() / ".pyenv" / "versions" / f"{version}*" / "bin" / f"python{version}"))),
        f"/usr/bin/python{version}"]
    for c in candidates:
        if not c or not Path(c).exists():
            continue
        r = subprocess.run([c, "-c", "import sys, venv; print('%d.%d' % sys.version_info[:2])"],
                           capture_output=True, text=True)
        if r.returncode == 0 and r.stdout.strip() == version:
            return c
    return None


def _run(cmd: list[str], log: Path) -> None:
    with log.open("a") as f:
        f.write("$ " + " ".join(cmd) + "\n")
        f.flush()
        r = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT)
    if r.returncode != 0:
        tail = log.read_text().strip().splitlines()[-3:]
        raise PrepareError(f"{' '.join(cmd[:4])} ... failed: {' | '.join(tail)}")


def _stub_libs(lib: Path, soname: int, log: Path) -> None:
    lib.mkdir(parents=True, exist_ok=True)
    for name in ("libnvinfer", "libnvonnxparser", "libnvinfer_plugin"):
        _run(["gcc", "-shared", "-fPIC", "-o", str(lib / f"{name}.so.{soname}"), str(HERE / "stubs.c"),
              f"-Wl,-soname,{name}.so.{soname}"], log)


def prepare(version: str) -> Env:
    spec = VERSIONS[version]
    python = _find_python(spec.python) if spec.python else None
    separate = python is not None
    python = python or sys.executable
    pyver = subprocess.run([python, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                           capture_output=True, text=True, check=True).stdout.strip()
    folder = _cache_root() / f"trt{version}-py{pyver}"
    site, lib, log = folder / "site", folder / "lib", folder / "prepare.log"
    if not (folder / ".complete").exists():
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        if shutil.which("gcc") is None:
            raise PrepareError("gcc is needed to build the stub TensorRT libraries")
        _stub_libs(lib, spec.soname, log)
        pip = [python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--target", str(site),
               "--only-binary=:all:", spec.bindings, spec.cuda]
        _run(pip + (RUNTIME_DEPS if separate else []), log)
        # the bindings wheel installs `tensorrt_bindings`; JetPack and the full wheels install `tensorrt`
        (site / "tensorrt.py").write_text("import sys\n\nimport tensorrt_bindings\n\n"
                                          "sys.modules[__name__] = tensorrt_bindings\n")
        (folder / ".complete").write_text("")
    return Env(version=version, python=python, python_version=pyver, pythonpath=[str(site)], lib=str(lib))


if __name__ == "__main__":
    print(json.dumps(asdict(prepare(sys.argv[1])), indent=1))
