"""What watching costs: the live loop's FPS with N browsers on its --serve stream against none, and with
hostile clients: connections that never send a request, stream readers that never read.

    python benchmarks/serve_load.py [--model models/segnet_dsc.onnx] [--viewers 8] [--seconds 20] [--pairs 2]
    python benchmarks/serve_load.py --viewers 0 --idle 300 --slow 20 --seconds 10

Loopback only. A 1280x720 clip is made from the bundled photos (each held for 10 frames) and run with
``edgeseg run --loop --serve`` for ``--seconds``; runs without and with viewers alternate
(``--pairs`` of each). A viewer is a thread here that reads the MJPEG stream as fast as it comes; the
idle and slow connections are opened once the server listens and held to the end. Printed per run: loop
FPS, inference p50, the run's RSS at 25% and at the end of the run, its most threads, and the JPEGs each
viewer received; then the median FPS ratio with the load / without.
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import cv2
import numpy as np

from edgeseg.runtime.images import list_images, read_image


def make_clip(folder: Path, out: Path) -> None:
    writer = cv2.VideoWriter(str(out), cv2.VideoWriter_fourcc(*"MJPG"), 30.0, (1280, 720))
    for path in list_images(folder):
        frame = cv2.resize(read_image(path), (1280, 720), interpolation=cv2.INTER_CUBIC)
        for _ in range(10):
            writer.write(frame)
    writer.release()


def status(pid: int, key: str) -> float:
    """A /proc/PID/status figure: VmRSS in MB, Threads as a count."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            value = int(line.split()[1])
            return value / 1024 if key == "VmRSS" else value
    return float("nan")


def hostile(port: int, idle: int, slow: int, socks: list[socket.socket]) -> None:
    """``idle`` connections that never send a request and ``slow`` that ask for the stream and never read."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.2)
    for k in range(idle + slow):
        try:
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
        except OSError:
            continue
        if k >= idle:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            s.sendall(b"GET /stream.mjpg HTTP/1.1\r\nHost: localhost\r\n\r\n")
        socks.append(s)


def viewer(port: int, stop: threading.Event, counts: list[int], k: int) -> None:
    """Reads the stream as a browser would, as cheaply as possible (raw socket, boundaries counted), so
    that the viewers themselves take little of the machine the loop runs on."""
    marker = b"--edgeseg-frame"
    while not stop.is_set():
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                s.sendall(b"GET /stream.mjpg HTTP/1.1\r\nHost: localhost\r\n\r\n")
                tail = b""
                while not stop.is_set():
                    chunk = s.recv(1 << 18)
                    if not chunk:
                        break
                    data = tail + chunk
                    counts[k] += data.count(marker)
                    tail = data[-len(marker) + 1:]
        except OSError:
            time.sleep(0.1)  # not listening yet


def one_run(model: Path, clip: Path, seconds: float, viewers: int, workdir: Path, extra: list[str],
            idle: int = 0, slow: int = 0) -> dict:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    report = workdir / f"r{time.monotonic_ns()}.json"
    run = subprocess.Popen([sys.executable, "-m", "edgeseg", "run", str(model), "--source", str(clip), "--loop",
                            "--serve", f"127.0.0.1:{port}", "--duration", str(seconds), "--report", str(report),
                            "--warmup", "20", *extra], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    stop, counts = threading.Event(), [0] * viewers
    threads = [threading.Thread(target=viewer, args=(port, stop, counts, k), daemon=True) for k in range(viewers)]
    for t in threads:
        t.start()
    socks: list[socket.socket] = []
    if idle or slow:
        threading.Thread(target=hostile, args=(port, idle, slow, socks), daemon=True).start()
    rss, most_threads, start = [], 0, time.monotonic()
    while run.poll() is None:
        time.sleep(0.5)
        if run.poll() is None:
            rss.append((time.monotonic() - start, status(run.pid, "VmRSS")))
            most_threads = max(most_threads, status(run.pid, "Threads"))
    stop.set()
    for t in threads:
        t.join(timeout=5)
    for s in socks:
        s.close()
    if run.returncode:
        raise SystemExit(f"edgeseg run failed: {run.stderr.read()[-500:]}")
    lat = json.loads(report.read_text())["latency"]
    quarter = [m for t, m in rss if t >= 0.25 * seconds][:1] or [float("nan")]
    return {"loaded": bool(viewers or idle or slow), "fps": lat["fps"], "threads": most_threads,
            "inference_p50": lat["stages_ms"]["inference"]["p50"], "rss_quarter": quarter[0],
            "rss_end": rss[-1][1] if rss else float("nan"), "jpegs": counts, "hostile": len(socks)}


def main() -> None:
    repo = Path(__file__).resolve().parents[1]
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=repo / "models" / "segnet_dsc.onnx")
    ap.add_argument("--photos", type=Path, default=repo / "calibration")
    ap.add_argument("--viewers", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--pairs", type=int, default=2)
    ap.add_argument("--idle", type=int, default=0, help="connections that never send a request")
    ap.add_argument("--slow", type=int, default=0, help="stream readers that never read")
    ap.add_argument("--run-args", default="", help="more edgeseg run options, e.g. '--serve-width 640'")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        clip = Path(tmp) / "clip.avi"
        make_clip(args.photos, clip)
        runs = []
        for _ in range(args.pairs):
            for load in (False, True):
                n, idle, slow = (args.viewers, args.idle, args.slow) if load else (0, 0, 0)
                r = one_run(args.model, clip, args.seconds, n, Path(tmp), args.run_args.split(), idle, slow)
                runs.append(r)
                print(f"viewers {n}, idle {idle}, slow {slow} ({r['hostile']} held): {r['fps']:.1f} FPS, inference "
                      f"p50 {r['inference_p50']:.2f} ms, RSS {r['rss_quarter']:.1f} MB at 25% -> {r['rss_end']:.1f} MB "
                      f"at the end, at most {r['threads']} threads, JPEGs per viewer {r['jpegs']}", flush=True)
    without = np.median([r["fps"] for r in runs if not r["loaded"]])
    with_ = np.median([r["fps"] for r in runs if r["loaded"]])
    print(f"median FPS: {without:.1f} without the load, {with_:.1f} with it: ratio {with_ / without:.3f}")


if __name__ == "__main__":
    main()
