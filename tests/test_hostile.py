"""Hostile and broken inputs (issue #37): camera passwords never shown, images and videos over the pixel cap
refused from their headers."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import threading
import time
import urllib.request
import zlib

import cv2
import numpy as np
import pytest
from conftest import REPO

from edgeseg.redact import redact
from edgeseg.runtime.images import ImageError, declared_size, read_image
from edgeseg.runtime.loop.serve import StreamServer

MODEL = REPO / "models" / "segnet_dsc.onnx"
SECRET = "hunter2SECRET"


def test_redact_hides_every_password_and_nothing_else():
    assert redact("cannot open rtsp://admin:hunter2@10.0.0.5:554/stream1 now") == \
        "cannot open rtsp://admin:***@10.0.0.5:554/stream1 now"
    assert redact("a http://u:p@h/x and mqtt://bob:s3cret@broker:1883/t") == "a http://u:***@h/x and mqtt://bob:***@broker:1883/t"
    assert redact("rtsp://:only-password@cam/x") == "rtsp://:***@cam/x"
    for kept in ("rtsp://cam.local:554/stream", "rtsp://admin@cam/x", "user:pass is not a URL", "/data/a:b@c.jpg"):
        assert redact(kept) == kept


def test_a_camera_that_is_down_does_not_print_its_password(cli, tmp_path):
    r = cli("run", MODEL, "--source", f"rtsp://user:{SECRET}@127.0.0.1:1/x", "--report", tmp_path / "r.json",
            "--reconnect", "0")
    assert r.code == 1 and "rtsp://user:***@127.0.0.1:1/x" in r.err, r.err
    assert SECRET not in r.out + r.err


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_served_stream_with_a_password_in_its_url_shows_it_nowhere(tmp_path):
    """The source's label reaches the terminal, the report, the live page and /stats.json."""
    camera = StreamServer("127.0.0.1", 0, fps=30)  # an MJPEG camera on loopback (it ignores the credentials)
    stop = threading.Event()
    frame = cv2.resize(read_image(REPO / "calibration" / "beagle_10.jpg"), (320, 240))

    def feed() -> None:
        while not stop.is_set():
            camera.publish(frame.copy())
            time.sleep(0.03)

    threading.Thread(target=feed, daemon=True).start()
    port = free_port()
    url = f"http://viewer:{SECRET}@127.0.0.1:{camera.port}/stream.mjpg"
    run = subprocess.Popen([sys.executable, "-m", "edgeseg", "run", str(MODEL), "--source", url, "--duration", "6",
                            "--serve", f"127.0.0.1:{port}", "--report", str(tmp_path / "r.json")],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        seen = ""
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and "stream.mjpg" not in seen:
            try:
                seen = "".join(urllib.request.urlopen(f"http://127.0.0.1:{port}{p}", timeout=2).read().decode()
                               for p in ("/", "/stats.json"))
            except OSError:
                time.sleep(0.3)
        out, err = run.communicate(timeout=60)
    finally:
        stop.set()
        camera.close()
        if run.poll() is None:
            run.kill()
    report = (tmp_path / "r.json").read_text()
    assert run.returncode == 0, err
    assert "viewer:***@127.0.0.1" in seen and "viewer:***@127.0.0.1" in report
    for text in (out, err, seen, report):
        assert SECRET not in text


def png_header(width: int, height: int) -> bytes:
    """A PNG that declares its size and holds one row: enough for a header check, and for a decoder to try."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\x00" * (width + 1))) + chunk(b"IEND", b""))


@pytest.mark.parametrize("ext", [".png", ".jpg", ".bmp", ".webp", ".tiff", ".ppm"])
def test_sizes_are_read_from_headers(ext):
    _, data = cv2.imencode(ext, np.zeros((37, 53, 3), np.uint8))
    assert declared_size(data.tobytes()) == (53, 37)


def test_a_decompression_bomb_is_refused_unread_in_a_folder_and_alone(tmp_path):
    bomb = tmp_path / "photos" / "bomb.png"
    bomb.parent.mkdir()
    bomb.write_bytes(png_header(20000, 20000))
    for name in ("beagle_10.jpg", "pug_112.jpg"):
        (bomb.parent / name).write_bytes((REPO / "calibration" / name).read_bytes())
    with pytest.raises(ImageError, match="20000x20000 is 400 megapixels, over the 50-megapixel cap"):
        read_image(bomb)
    # VmHWM, the peak of this process's own memory (ru_maxrss would include the forked pytest's, over 1 GB late in
    # a full run)
    peak = ("import sys\nfrom edgeseg.cli import main\ntry:\n    main()\nfinally:\n    hwm = [l for l in "
            "open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1]\n"
            "    print('peak-kb', hwm, file=sys.stderr)\n")
    r = subprocess.run([sys.executable, "-c", peak, "run", str(MODEL), "--source", str(bomb.parent), "--report",
                        str(tmp_path / "r.json")], capture_output=True, text=True, timeout=120,
                       env={**__import__("os").environ, "PYTHONPATH": str(REPO)})
    assert r.returncode == 0, r.stderr
    assert int(r.stderr.split("peak-kb ")[1].split()[0]) < 600_000  # KB
    stats = json.loads((tmp_path / "r.json").read_text())["source_stats"]
    assert stats["frames"] == 2 and stats["skipped_unreadable"] == 1 and stats["skipped_files"] == [str(bomb)]
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "edgeseg", "run", str(MODEL), "--source", str(bomb)], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 1 and time.monotonic() - t0 < 10
    assert r.stderr.strip().splitlines() == [f"error: {bomb}: 20000x20000 is 400 megapixels, over the 50-megapixel "
                                             "cap; refused unread (--max-pixels raises the cap)"]


def test_a_video_over_the_cap_is_refused_from_its_declared_frame_size(cli, tmp_path):
    video = tmp_path / "v.avi"
    w = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10, (64, 48))
    for _ in range(3):
        w.write(np.zeros((48, 64, 3), np.uint8))
    w.release()
    r = cli("run", MODEL, "--source", video, "--max-pixels", "0.001")
    assert r.code == 1 and "64x48 is 0.00307 megapixels, over the 0.001-megapixel cap" in r.err, r.err
    assert cli("run", MODEL, "--source", video).code == 0


def test_a_jpeg_whose_size_follows_a_large_exif_block_is_refused_alone(tmp_path):
    """The frame header of a camera JPEG can sit past 64 KB of EXIF data: the single-image check read only
    the first 64 KB and let a 400-megapixel one through to a run of zero frames."""
    app1 = b"\xff\xe1" + struct.pack(">H", 65000) + b"\x00" * 64998  # two EXIF-sized blocks: past 128 KB
    sof = b"\xff\xc0" + struct.pack(">HBHHB", 11, 8, 20000, 20000, 1) + b"\x01\x11\x00"
    big = tmp_path / "big.jpg"
    big.write_bytes(b"\xff\xd8" + app1 + app1 + sof + b"\xff\xd9")
    assert declared_size(big.read_bytes()) == (20000, 20000)
    r = subprocess.run([sys.executable, "-m", "edgeseg", "run", str(MODEL), "--source", str(big)], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 1 and "20000x20000 is 400 megapixels" in r.stderr, r.stderr
