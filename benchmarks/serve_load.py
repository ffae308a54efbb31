"""What watching costs: the live loop's FPS with N browsers on its --serve stream against none.

    python benchmarks/serve_load.py [--model models/segnet_dsc.onnx] [--viewers 8] [--seconds 20] [--pairs 2]

Loopback only. A 1280x720 clip is made from the bundled photos (each held for 10 frames) and run with
``edgeseg run --loop --serve`` for ``--seconds``; runs without and with viewers alternate
(``--pairs`` of each). A viewer is a thread here that reads the MJPEG stream as fast as it comes.
Printed per run: loop FPS, inference p50, the run's RSS at 25% and at the end of the run, and the
JPEGs each viewer received; then the median FPS ratio with viewers / without.
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


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


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


def one_run(model: Path, clip: Path, seconds: float, viewers: int, workdir: Path, extra: list[str]) -> dict:
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
    rss, start = [], time.monotonic()
    while run.poll() is None:
        time.sleep(0.5)
        if run.poll() is None:
            rss.append((time.monotonic() - start, rss_mb(run.pid)))
    stop.set()
    for t in threads:
        t.join(timeout=5)
    if run.returncode:
        raise SystemExit(f"edgeseg run failed: {run.stderr.read()[-500:]}")
    lat = json.loads(report.read_text())["latency"]
    quarter = [m for t, m in rss if t >= 0.25 * seconds][:1] or [float("nan")]
    return {"viewers": viewers, "fps": lat["fps"], "inference_p50": lat["stages_ms"]["inference"]["p50"],
            "rss_quarter": quarter[0], "rss_end": rss[-1][1] if rss else float("nan"), "jpegs": counts}


def main() -> None:
    repo = Path(__file__).resolve().parents[1]
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=repo / "models" / "segnet_dsc.onnx")
    ap.add_argument("--photos", type=Path, default=repo / "calibration")
    ap.add_argument("--viewers", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--pairs", type=int, default=2)
    ap.add_argument("--run-args", default="", help="more edgeseg run options, e.g. '--serve-width 640'")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        clip = Path(tmp) / "clip.avi"
        make_clip(args.photos, clip)
        runs = []
        for _ in range(args.pairs):
            for n in (0, args.viewers):
                r = one_run(args.model, clip, args.seconds, n, Path(tmp), args.run_args.split())
                runs.append(r)
                print(f"viewers {n}: {r['fps']:.1f} FPS, inference p50 {r['inference_p50']:.2f} ms, RSS "
                      f"{r['rss_quarter']:.1f} MB at 25% -> {r['rss_end']:.1f} MB at the end, JPEGs per viewer "
                      f"{r['jpegs']}", flush=True)
    without = np.median([r["fps"] for r in runs if r["viewers"] == 0])
    with_ = np.median([r["fps"] for r in runs if r["viewers"]])
    print(f"median FPS: {without:.1f} without viewers, {with_:.1f} with {args.viewers}: ratio {with_ / without:.3f}")


if __name__ == "__main__":
    main()
