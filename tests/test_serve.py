"""`edgeseg run --serve`: the MJPEG stream, the page in a real headless Chromium, tokens, slow viewers."""

from __future__ import annotations

import http.client
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time

import cv2
import numpy as np
import pytest
from conftest import REPO

from edgeseg.errors import EdgesegError
from edgeseg.runtime.loop.serve import StreamServer, parse_address

MODEL = REPO / "models" / "segnet_dsc.onnx"


def test_addresses():
    assert parse_address("8080") == ("127.0.0.1", 8080)
    assert parse_address("0.0.0.0:9000") == ("0.0.0.0", 9000)
    assert parse_address("[::1]:81") == ("::1", 81)
    with pytest.raises(EdgesegError, match="expected \\[HOST:\\]PORT"):
        parse_address("camera")


def get(port: int, path: str, headers: dict | None = None) -> tuple[int, bytes, str]:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    c.request("GET", path, headers=headers or {})
    r = c.getresponse()
    body = r.read()
    c.close()
    return r.status, body, r.getheader("Content-Type", "")


def read_parts(port: int, path: str, seconds: float) -> list[bytes]:
    """The JPEGs of an MJPEG stream received within ``seconds``."""
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    c.request("GET", path)
    r = c.getresponse()
    assert r.status == 200 and r.getheader("Content-Type").startswith("multipart/x-mixed-replace")
    parts, end = [], time.monotonic() + seconds
    while time.monotonic() < end:
        line = r.fp.readline()
        if line.startswith(b"Content-Length:"):
            n = int(line.split(b":")[1])
            r.fp.readline()
            parts.append(r.fp.read(n))
    c.close()
    return parts


@pytest.fixture
def server():
    s = StreamServer("127.0.0.1", 0, token="s3cret", fps=30)
    stop = threading.Event()

    def publish() -> None:  # a 640x480 "camera": each frame a different grey
        i = 0
        while not stop.is_set():
            s.publish(np.full((480, 640, 3), i % 256, np.uint8))
            s.set_stats({"fps": 100.0, "frames": i})
            i += 1
            time.sleep(0.01)

    t = threading.Thread(target=publish, daemon=True)
    t.start()
    yield s
    stop.set()
    t.join()
    s.close()


def test_token_stream_snapshot_and_a_stalled_viewer_blocks_nobody(server):
    port = server.port
    assert get(port, "/stats.json")[0] == 401 and get(port, "/?token=wrong")[0] == 401
    status, body, ctype = get(port, "/stats.json", {"Authorization": "Bearer s3cret"})
    assert status == 200 and ctype == "application/json" and json.loads(body)["fps"] == 100.0
    status, page, _ = get(port, "/?token=s3cret")
    assert status == 200 and b'src="/stream.mjpg?token=s3cret"' in page
    # a viewer that asks for the stream and never reads: its socket fills up, its thread blocks
    stalled = socket.create_connection(("127.0.0.1", port))
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stalled.sendall(b"GET /stream.mjpg?token=s3cret HTTP/1.1\r\nHost: x\r\n\r\n")
    got: dict[int, list[bytes]] = {}
    viewers = [threading.Thread(target=lambda k=k: got.__setitem__(k, read_parts(port, "/stream.mjpg?token=s3cret",
                                                                                 2.0))) for k in range(3)]
    for v in viewers:
        v.start()
    for v in viewers:
        v.join()
    for parts in got.values():  # 30 FPS cap: about 60 each; a backlog or a blocked encoder would give few
        assert len(parts) >= 30, len(parts)
        first, last = (cv2.imdecode(np.frombuffer(p, np.uint8), cv2.IMREAD_COLOR) for p in (parts[0], parts[-1]))
        assert first.shape == (480, 640, 3) and int(first[0, 0, 0]) != int(last[0, 0, 0])  # live, not a replay
    status, jpeg, ctype = get(port, "/snapshot.jpg?token=s3cret")
    assert status == 200 and ctype == "image/jpeg" and cv2.imdecode(np.frombuffer(jpeg, np.uint8), 1).shape[1] == 640
    stalled.close()


def test_a_token_with_reserved_characters_is_quoted_in_links():
    s = StreamServer("127.0.0.1", 0, token="a b&c=d")
    try:
        assert s.url.endswith("/?token=a%20b%26c%3Dd")
        status, page, _ = get(s.port, "/?token=a%20b%26c%3Dd")
        assert status == 200 and b'src="/stream.mjpg?token=a%20b%26c%3Dd"' in page
        assert get(s.port, "/stats.json?token=a%20b")[0] == 401
    finally:
        s.close()


def test_nothing_is_encoded_while_nobody_watches(server):
    time.sleep(0.5)
    assert server._jpeg is None  # the loop's frames were only referenced, never encoded
    assert get(server.port, "/snapshot.jpg?token=s3cret")[0] == 200


def chromium() -> str:
    """Debian's chromium, installed here when missing (root and the Debian mirror needed), or a skip."""
    found = shutil.which("chromium")
    if found:
        return found
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        pytest.skip("chromium is not installed and cannot be installed here (needs root and apt-get)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "--no-install-recommends",
                                                "chromium"]):
        r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
        if r.returncode:
            pytest.skip(f"could not install chromium: {(r.stderr or r.stdout).strip()[-300:]}")
    return shutil.which("chromium") or pytest.skip("apt-get installed chromium but it is not on PATH")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_a_headless_chromium_shows_the_live_overlay_and_figures(tmp_path):
    browser = chromium()
    port = free_port()
    run = subprocess.Popen([sys.executable, "-m", "edgeseg", "run", str(MODEL), "--source", str(REPO / "calibration"),
                            "--loop", "--serve", f"127.0.0.1:{port}", "--duration", "60",
                            "--report", str(tmp_path / "report.json")],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if json.loads(get(port, "/stats.json")[1]).get("frames", 0) > 10:
                    break
            except OSError:
                time.sleep(0.2)
        flags = ["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--window-size=1000,600",
                 "--timeout=3000"]  # the stream never ends: stop loading after 3 s, then act
        shots = []
        for k in range(3):  # 37 photos loop: two shots can land on the same one by chance (about 1 in 37)
            shot = tmp_path / f"shot{k}.png"
            subprocess.run([browser, *flags, f"--screenshot={shot}", f"http://127.0.0.1:{port}/"],
                           capture_output=True, timeout=60)
            shots.append(cv2.imread(str(shot)))
        dom = subprocess.run([browser, *flags, "--dump-dom", f"http://127.0.0.1:{port}/"], capture_output=True,
                             text=True, timeout=60).stdout
    finally:
        run.terminate()
        _, err = run.communicate(timeout=60)
    assert run.returncode == 143, err  # SIGTERM: stopped cleanly, report written
    assert json.loads((tmp_path / "report.json").read_text())["stopped_by"] == "SIGTERM"
    image = [s[8:560, 8:610].astype(np.int16) for s in shots]  # the stream's area, left of the figures
    assert all(i.std() > 20 for i in image), "the stream area is blank"
    assert max(np.abs(image[0] - i).mean() for i in image[1:]) > 5, "the stream did not change between screenshots"
    fps = float(dom.split('<span id="fps">')[1].split("<")[0])
    assert fps > 0
    if os.environ.get("EDGESEG_SAVE_SCREENSHOT"):  # docs/run.md's picture: EDGESEG_SAVE_SCREENSHOT=docs/serve.png
        small = cv2.resize(shots[1], (600, 360), interpolation=cv2.INTER_AREA)
        pixels = small.reshape(-1, 3).astype(np.float32)  # 48 colours: a PNG of about 100 KB
        criteria = (cv2.TERM_CRITERIA_MAX_ITER + cv2.TERM_CRITERIA_EPS, 20, 1.0)
        _, labels, centers = cv2.kmeans(pixels, 48, None, criteria, 1, cv2.KMEANS_PP_CENTERS)
        small = centers.astype(np.uint8)[labels.ravel()].reshape(small.shape)
        cv2.imwrite(os.environ["EDGESEG_SAVE_SCREENSHOT"], small, [cv2.IMWRITE_PNG_COMPRESSION, 9])


def test_opening_it_to_the_network_without_a_token_warns_and_loop_repeats_a_video(cli, tmp_path):
    r = cli("run", MODEL, "--source", REPO / "calibration", "--serve", "0.0.0.0:0", "--max-frames", "2")
    assert r.code == 0, r.err
    assert "without authentication" in r.out and "add --serve-token" in r.out
    r = cli("run", MODEL, "--source", REPO / "calibration", "--serve", "127.0.0.1:0", "--serve-token", "t",
            "--max-frames", "2")
    assert r.code == 0 and "without authentication" not in r.out and "?token=t" in r.out
    from edgeseg.runtime.loop.sources import open_source

    video = tmp_path / "v.avi"
    w = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10, (64, 48))
    for i in range(5):
        w.write(np.full((48, 64, 3), 40 * i, np.uint8))
    w.release()
    frames = []
    for f in open_source(str(video), loop=True):
        frames.append(int(f.image[0, 0, 0]))
        if len(frames) == 12:
            break
    assert len(frames) == 12 and frames[5] == frames[0]  # the sixth frame is the first again


def test_the_server_is_not_imported_without_serve(tmp_path):
    code = (f"import sys\nsys.argv = ['edgeseg', 'run', {str(MODEL)!r}, '--source', {str(REPO / 'calibration')!r}, "
            "'--max-frames', '1']\nfrom edgeseg.cli import main\ntry:\n    main()\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in sys.modules if m in ('edgeseg.runtime.loop.serve', 'http.server')))\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == "[]"


@pytest.mark.parametrize(("option", "refused"), [
    (("--serve-token", "t"), "--serve-token applies only with --serve"),
    (("--serve-quality", "50"), "--serve-quality applies only with --serve"),
    (("--serve-width", "320"), "--serve-width applies only with --serve"),
    (("--serve-fps", "5"), "--serve-fps applies only with --serve"),
    (("--width", "640"), "--width applies only to cameras"),  # the source's options: sources.SourceOptions.check
])
def test_an_option_run_would_ignore_is_refused_in_one_line(cli, option, refused):
    r = cli("run", MODEL, "--source", REPO / "calibration", *option, "--max-frames", "1")
    assert r.code == 1 and refused in r.err and len(r.err.strip().splitlines()) == 1 and "Traceback" not in r.err


@pytest.mark.parametrize("token", ["", "   "])
def test_an_empty_token_is_refused_not_taken_for_no_authentication(cli, token):
    """`--serve-token "$TOKEN"` with TOKEN unset: "" == "" would let every request in (review #39 item 1)."""
    with pytest.raises(EdgesegError, match="--serve-token is empty or blank"):
        StreamServer("127.0.0.1", 0, token=token)
    r = cli("run", MODEL, "--source", REPO / "calibration", "--serve", "127.0.0.1:0", "--serve-token", token)
    assert r.code == 1 and "--serve-token is empty or blank" in r.err and len(r.err.strip().splitlines()) == 1


def test_an_ipv6_address_is_served():
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError as e:
        pytest.skip(f"no IPv6 loopback on this machine ({e})")
    s = StreamServer(*parse_address("[::1]:0"))  # bound IPv4-only before: "Address family ... not supported"
    try:
        s.set_stats({"fps": 1.0})
        c = http.client.HTTPConnection("::1", s.port, timeout=10)
        c.request("GET", "/stats.json")
        r = c.getresponse()
        assert r.status == 200 and json.loads(r.read())["fps"] == 1.0
        assert s.url.startswith("http://[::1]:")
    finally:
        s.close()


def test_a_frame_jpeg_cannot_hold_is_not_served_as_an_empty_jpeg():
    s = StreamServer("127.0.0.1", 0)
    try:
        assert s._encode(np.zeros((65_501, 2, 3), np.uint8)) is None  # taller than JPEG's 65,500 px
        s.publish(np.zeros((65_501, 2, 3), np.uint8))
        status, body, ctype = get(s.port, "/snapshot.jpg")
        assert status == 503 and ctype.startswith("text/plain"), (status, ctype, len(body))
        s.publish(np.zeros((48, 64, 3), np.uint8))
        status, body, ctype = get(s.port, "/snapshot.jpg")
        assert status == 200 and ctype == "image/jpeg" and body.startswith(b"\xff\xd8")
    finally:
        s.close()


def test_live_figures_use_the_recent_frames_not_the_whole_reservoir():
    """Computed on the loop's thread twice a second: over full 100,000-value reservoirs the report's percentiles
    took 29 ms a call (review #39 item 11); the live view reads only each stage's last 100 frames."""
    from edgeseg.runtime.loop.latency import StageTimer

    t = StageTimer()
    for i in range(300):
        frame = t.begin()
        frame.add("inference", float(i % 7))
        t.finish(frame)
    for s in (*t.stages.values(), t.total):
        s.values = None  # the reservoir: never read by the live figures
    live = t.live()
    assert live["frames"] == 300 and set(live["stages_ms"]) == {"inference", "end to end"}
    assert live["stages_ms"]["inference"]["p50"] == float(np.median([i % 7 for i in range(200, 300)]))


def test_idle_connections_and_slow_readers_cannot_grow_the_server_or_shut_out_the_page():
    """300 connections that never send a request and 20 stream readers that never read: the page and
    /stats.json still answer within a second, and the server's threads stay under its cap plus a constant
    (it had one thread per connection, 309 of them)."""
    s = StreamServer("127.0.0.1", 0, max_clients=8)
    stop = threading.Event()
    frame = np.random.default_rng(0).integers(0, 255, (480, 640, 3), np.uint8)  # large JPEGs fill buffers fast

    def feed() -> None:
        while not stop.is_set():
            s.publish(frame.copy())
            time.sleep(0.02)

    threads_before = threading.active_count()
    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    socks = []
    try:
        for _ in range(300):
            socks.append(socket.create_connection(("127.0.0.1", s.port)))
        for _ in range(20):  # ask for the stream, then never read it
            c = socket.create_connection(("127.0.0.1", s.port))
            c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            c.sendall(b"GET /stream.mjpg HTTP/1.1\r\nHost: x\r\n\r\n")
            socks.append(c)
        time.sleep(1.0)
        for path in ("/", "/stats.json"):
            t0 = time.monotonic()
            status, _, _ = get(s.port, path)
            assert status == 200 and time.monotonic() - t0 < 1.0, (path, status, time.monotonic() - t0)
        grown = threading.active_count() - threads_before
        assert grown <= 8 + 3, grown  # the cap, the feeder, the door and the encoder
    finally:
        stop.set()
        for c in socks:
            c.close()
        s.close()


def test_every_response_says_what_it_is_and_the_page_shows_values_as_text():
    s = StreamServer("127.0.0.1", 0, token="t", title="edgeseg: <img src=x onerror=alert(1)> on cam")
    try:
        s.set_stats({"fps": 1.0, "info": {"model": "<script>alert(1)</script>"}})
        s.publish(np.zeros((48, 64, 3), np.uint8))
        for path in ("/?token=t", "/stats.json?token=t", "/snapshot.jpg?token=t", "/"):
            c = http.client.HTTPConnection("127.0.0.1", s.port, timeout=10)
            c.request("GET", path)
            r = c.getresponse()
            body = r.read()
            assert r.getheader("X-Content-Type-Options") == "nosniff", path
            assert r.getheader("Referrer-Policy") == "no-referrer", path
            if path == "/?token=t":
                csp = r.getheader("Content-Security-Policy")
                nonce = csp.split("'nonce-")[1].split("'")[0]
                assert "default-src 'none'" in csp and f'<script nonce="{nonce}">' in body.decode()
                page = body.decode()
                assert "<img src=x" not in page and "&lt;img src=x onerror=alert(1)&gt;" in page
                assert "innerHTML" not in page and "textContent" in page
            c.close()
        big = b"GET / HTTP/1.1\r\n" + b"X-Filler: " + b"a" * 9000 + b"\r\n\r\n"
        with socket.create_connection(("127.0.0.1", s.port)) as c:
            c.sendall(big)
            assert c.recv(64).startswith(b"HTTP/1.1 431")
    finally:
        s.close()
