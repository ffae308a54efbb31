"""A real Triton Inference Server (nvidia-pytriton's tritonserver, Python backend), started by
``edgeseg triton serve`` on free 127.0.0.1 ports and stopped at the end: remote runs agree with local
ones, bench --concurrency measures it, and a server killed mid-run ends the run in one line."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import cv2
import numpy as np
import pytest
from conftest import REPO

BUNDLED = REPO / "models" / "segnet_dsc.onnx"
PHOTOS = REPO / "calibration"


def _server_missing() -> str | None:
    from edgeseg.deploy.triton_server import server_files
    from edgeseg.errors import EdgesegError

    try:
        server_files()
        import tritonclient.grpc  # noqa: F401
    except (EdgesegError, ImportError) as e:
        return str(e)
    return None


pytestmark = pytest.mark.skipif(_server_missing() is not None, reason=f"{_server_missing()}")


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


class Served:
    """``edgeseg triton serve`` as a user starts it, in its own process."""

    def __init__(self, tmp) -> None:
        self.http, self.grpc, self.metrics = _free_ports(3)
        self.log = tmp / "serve.log"
        cmd = [sys.executable, "-m", "edgeseg", "triton", "serve", str(BUNDLED), "--http-port", str(self.http),
               "--grpc-port", str(self.grpc), "--metrics-port", str(self.metrics), "--host", "127.0.0.1"]
        self.process = subprocess.Popen(cmd, stdout=open(self.log, "wb"), stderr=subprocess.STDOUT)  # noqa: SIM115
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.log.read_text()
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.http}/v2/models/edgeseg/ready", timeout=1):
                    return
            except OSError:
                time.sleep(0.3)
        raise AssertionError(f"no server: {self.log.read_text()}")

    @property
    def url(self) -> str:
        return f"triton://127.0.0.1:{self.grpc}/edgeseg"

    def kill_server(self) -> None:
        """SIGKILL tritonserver itself (a crash), not the edgeseg process that started it."""
        out = subprocess.run(["pgrep", "-f", "--", f"--grpc-port={self.grpc}"], capture_output=True, text=True).stdout
        for pid in out.split():
            os.kill(int(pid), signal.SIGKILL)

    def stop(self) -> int:
        self.process.send_signal(signal.SIGINT)
        return self.process.wait(30)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    s = Served(tmp_path_factory.mktemp("triton"))
    yield s
    assert s.stop() == 0
    assert "tritonserver stopped" in s.log.read_text()


def _masks(folder):
    return {p.name: cv2.imread(str(p), cv2.IMREAD_UNCHANGED) for p in sorted(folder.glob("*.png"))}


def test_remote_run_gives_the_local_masks(served, tmp_path, cli):
    remote = cli("run", served.url, "--source", PHOTOS, "--save-masks", tmp_path / "remote",
                 "--report", tmp_path / "r.json")
    assert remote.code == 0, remote.err
    assert cli("run", BUNDLED, "--source", PHOTOS, "--save-masks", tmp_path / "local").code == 0
    a, b = _masks(tmp_path / "remote"), _masks(tmp_path / "local")
    assert len(a) == 37 and a.keys() == b.keys()
    equal = sum(int((a[k] == b[k]).sum()) for k in a) / sum(a[k].size for k in a)
    assert equal >= 0.99, equal
    model = json.loads((tmp_path / "r.json").read_text())["model"]
    assert model["backend"] == "triton" and model["wire"] == "uint8 pixels"
    assert model["remote"]["failures"] == 0 and model["remote"]["requests"] >= 37


def test_http_and_grpc_clients_agree(served):
    from edgeseg.loader import load_predictor
    from edgeseg.runtime.images import list_images, read_image

    frames = [read_image(p) for p in list_images(PHOTOS)[:4]]
    grpc = load_predictor(served.url)
    http = load_predictor(f"triton+http://127.0.0.1:{served.http}/edgeseg")
    a, b = grpc.scores(grpc.preprocess(frames)), http.scores(http.preprocess(frames))
    assert a.shape == (4, 3, 160, 160) and np.array_equal(a, b)


def test_bench_concurrency_like_perf_analyzer(served, tmp_path, cli):
    out = tmp_path / "c.json"
    r = cli("bench", served.url, BUNDLED, "--concurrency", "1,8", "--runs", "200", "--json", out)
    assert r.code == 0, r.err
    rows = json.loads(out.read_text())["rows"]
    local = next(x for x in rows if x["where"].startswith("local"))
    remote = {x["concurrency"]: x for x in rows if x["where"] == "served"}
    assert set(remote) == {1, 8}
    for row in (*remote.values(), local):
        assert {"concurrency", "throughput_fps", "latency_ms", "errors"} <= row.keys()
        assert row["errors"] == 0 and row["throughput_fps"] > 0
        assert row["latency_ms"]["count"] == 200 and row["latency_ms"]["p99"] is not None
    # the speeds themselves are a benchmark's to report (docs/serving.md), not a unit test's to time


def test_doctor_checks_the_served_model_against_the_local_file(served, cli):
    r = cli("doctor", served.url, "--json")
    assert r.code == 0, r.err
    report = json.loads(r.out)
    served_check = next(c for c in report["checks"] if c["name"].startswith("served"))
    assert served_check["status"] == "PASS" and served_check["agreement"] >= 0.99


def test_killing_the_server_ends_the_run_in_one_line(tmp_path):
    server = Served(tmp_path)
    report = tmp_path / "kill.json"
    cmd = [sys.executable, "-m", "edgeseg", "run", server.url, "--source", str(PHOTOS), "--loop",
           "--max-frames", "1000000", "--report", str(report)]
    run = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(3)
        assert run.poll() is None
        server.kill_server()
        killed = time.monotonic()
        _, err = run.communicate(timeout=30)
        took = time.monotonic() - killed
    finally:
        run.kill()
        server.stop()
    assert run.returncode == 1 and took < 10, (took, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and f"127.0.0.1:{server.grpc}" in lines[0] and "Traceback" not in err
    data = json.loads(report.read_text())
    assert data["error"] and data["latency"]["measured_frames"] > 10
    assert data["model"]["remote"]["retries"] >= 1 and data["model"]["remote"]["failures"] == 1
