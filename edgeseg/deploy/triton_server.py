"""``edgeseg triton serve``: a real Triton Inference Server on this machine, serving a model through
edgeseg's Python-backend model (the repository ``triton repo --platform python`` writes).

The server is the ``tritonserver`` binary that the ``nvidia-pytriton`` wheel ships with its Python
backend. PyTriton's own Python API is not used: it pins NumPy below 2 and, run under NumPy 2, returns
empty tensors (measured with 0.7.0); edgeseg installs the wheel with ``--no-deps`` (see the README).
Two facts of these machines are handled here, not in the user's shell: the backend stub loads the
first ``libpython3.X.so`` the loader finds (a system 3.11.2 under a 3.11.7 interpreter breaks its
standard library), so this interpreter's LIBDIR leads ``LD_LIBRARY_PATH``; it finds its Python home from
the first ``python3`` on PATH, so this interpreter's folder leads PATH; and the stub must import edgeseg
and its packages, so this interpreter's ``sys.path`` is its ``PYTHONPATH``.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from edgeseg.deploy.triton_repo import RepoOptions, write_repo
from edgeseg.errors import EdgesegError

NOISE = ("NVML", "DCGM", "CudaDriverHelper", "pinned memory", "CUDA driver")  # a server without a GPU prints these
INSTALL = "pip install --no-deps nvidia-pytriton (the Triton server binary; see the README's Triton section)"


@dataclass
class ServerFiles:
    binary: Path
    backend: Path  # libtriton_python.so and triton_python_backend_utils.py
    stub: Path  # the Python backend stub for this Python version
    libs: Path  # the wheel's bundled shared libraries


def server_files() -> ServerFiles:
    """Where the nvidia-pytriton wheel put the server, found without importing PyTriton."""
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise EdgesegError(f"no Triton server installed: {INSTALL}")
    root = Path(next(iter(spec.submodule_search_locations)))
    dist = root / "tritonserver"
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    files = ServerFiles(dist / "bin" / "tritonserver", dist / "backends" / "python",
                        dist / "python_backend_stubs" / version / "triton_python_backend_stub",
                        root.parent / "nvidia_pytriton.libs")
    if not files.binary.exists():
        raise EdgesegError(f"the nvidia-pytriton install has no tritonserver binary (only its Linux x86-64 and "
                           f"arm64 wheels have one): {INSTALL}", files.binary)
    if not files.stub.exists():
        raise EdgesegError(f"nvidia-pytriton has no Python-backend stub for Python {version}", files.stub.parent)
    return files


def server_env(files: ServerFiles) -> dict[str, str]:
    env = dict(os.environ)
    libdir = sysconfig.get_config_var("LIBDIR") or ""
    env["LD_LIBRARY_PATH"] = ":".join(p for p in (libdir, str(files.libs), env.get("LD_LIBRARY_PATH", "")) if p)
    env["PYTHONPATH"] = ":".join(p for p in sys.path if p)
    # the stub's embedded Python finds its home from the first python3 on PATH (a system one, when this
    # interpreter's folder is not on PATH, brings its own standard library: "No module named '_struct'")
    env["PATH"] = ":".join(p for p in (str(Path(sys.prefix) / "bin"), env.get("PATH", "")) if p)
    return env


def backend_folder(files: ServerFiles, where: Path) -> Path:
    """A --backend-directory holding the Python backend with this Python's stub beside it."""
    python = where / "python"
    python.mkdir(parents=True)
    for f in files.backend.iterdir():
        if f.is_file():
            (python / f.name).symlink_to(f)
    shutil.copy2(files.stub, python / "triton_python_backend_stub")
    return where


@dataclass
class Ports:
    http: int = 8000
    grpc: int = 8001
    metrics: int = 8002


class TritonServer:
    """A running tritonserver on 127.0.0.1-reachable ports; ``with TritonServer(...) as s:`` stops it."""

    def __init__(self, model: Path, ports: Ports, opts: RepoOptions, host: str = "0.0.0.0",
                 log: Path | None = None, start_timeout: float = 60.0) -> None:
        self.model, self.ports, self.opts, self.host = Path(model), ports, opts, host
        self.log_path, self.start_timeout = log, start_timeout
        self.process: subprocess.Popen | None = None
        self._tmp: tempfile.TemporaryDirectory | None = None

    def start(self) -> TritonServer:
        files = server_files()
        self._tmp = tempfile.TemporaryDirectory(prefix="edgeseg-triton-")
        tmp = Path(self._tmp.name)
        write_repo(self.model, tmp / "models", self.opts)
        backends = backend_folder(files, tmp / "backends")
        log = open(self.log_path or tmp / "server.log", "wb")  # noqa: SIM115 (the server writes it until stopped)
        self._log_file = log
        cmd = [str(files.binary), f"--model-repository={tmp / 'models'}", f"--backend-directory={backends}",
               f"--http-port={self.ports.http}", f"--grpc-port={self.ports.grpc}",
               f"--metrics-port={self.ports.metrics}", f"--http-address={self.host}",
               f"--grpc-address={self.host}", "--allow-cpu-metrics=true", "--exit-timeout-secs=5",
               "--strict-readiness=true"]
        self.process = subprocess.Popen(cmd, env=server_env(files), stdout=log, stderr=subprocess.STDOUT,
                                        start_new_session=True)
        self._wait_ready()
        return self

    @property
    def url(self) -> str:
        return f"triton://127.0.0.1:{self.ports.grpc}/{self.opts.name}"

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        ready = f"http://127.0.0.1:{self.ports.http}/v2/models/{self.opts.name}/ready"
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                tail = self.log_tail()
                self.stop()
                raise EdgesegError(f"tritonserver exited with status {self.process.returncode} while starting: "
                                   f"{tail}")
            try:
                with urllib.request.urlopen(ready, timeout=1) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.2)
        tail = self.log_tail()
        self.stop()
        raise EdgesegError(f"tritonserver did not get ready within {self.start_timeout:.0f} s: {tail}")

    def log_tail(self, lines: int = 3) -> str:
        """The log's lines that say why the server stopped: a model that failed to load first, else its last
        errors (without the GPU-less machine's CUDA/NVML/DCGM notices, which every start prints)."""
        path = Path(self._log_file.name) if getattr(self, "_log_file", None) else None
        if path is None or not path.exists():
            return ""
        text = [t.strip() for t in path.read_text(errors="replace").splitlines() if t.strip()]
        quiet = [t for t in text if not any(n in t for n in NOISE)]
        failed = [t for t in quiet if any(w in t for w in ("failed to load", "Exception", "Error:"))]
        errors = failed or [t for t in quiet if t.startswith("E") or "error" in t.lower()] or text
        return " | ".join(errors[-lines:])

    def wait(self) -> int:
        return self.process.wait() if self.process else 0

    def stop(self, timeout: float = 15.0) -> None:
        """Triton's graceful shutdown (SIGINT), then whatever is left of its process group: the Python
        backend's stubs outlive a server that crashed or was killed."""
        if self.process is not None:
            if self.process.poll() is None:
                self.process.send_signal(signal.SIGINT)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.process.wait(timeout)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        if getattr(self, "_log_file", None):
            self._log_file.close()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> TritonServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
