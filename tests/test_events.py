"""Per-frame events, zones and MQTT (issue #36): JSON lines a script can read, changes debounced, and a real
mosquitto broker (started here on 127.0.0.1, stopped at the end) that receives them, loses the loop for a
while and gets the retained state again."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import REPO

from edgeseg.errors import EdgesegError
from edgeseg.runtime.loop.events import Debounce, Events, Zone, describe
from edgeseg.runtime.masks import BACKGROUND, PET, Masks

MODEL = REPO / "models" / "segnet_dsc.onnx"
KEYS = {"frame", "name", "source", "time", "pet", "share", "bbox", "centroid", "latency_ms"}


def test_figures_are_in_frame_pixels():
    animal = np.zeros((8, 8), bool)
    animal[2:4, 4:8] = True  # a quarter of the rows' width, two rows
    d = describe(animal, (80, 160))  # the frame is 10x taller and 20x wider than the grid
    assert d == {"pet": True, "share": 0.125, "bbox": [80, 20, 160, 40], "centroid": [120.0, 30.0]}
    assert describe(np.zeros((8, 8), bool), (80, 160)) == {"pet": False, "share": 0.0, "bbox": None,
                                                           "centroid": None}


def test_zones_parse_and_refuse_nonsense():
    z = Zone.parse("sofa:0,0,0.5,0,0.5,1,0,1")
    assert z.name == "sofa" and z.raster((4, 4)).sum() == 8  # the left half of a 4x4 grid
    for bad in ("sofa", "sofa:0,0,1,1", "so fa:0,0,1,0,1,1", "sofa:0,0,1,0,2,1", ":0,0,1,0,1,1"):
        with pytest.raises(EdgesegError, match="--zone"):
            Zone.parse(bad)


def test_changes_are_debounced():
    d = Debounce(2)
    assert [d.update(v) for v in (True, False, True, True, True, False, True, False, False)] == \
        [False, False, False, True, False, False, False, False, True]


def masks_with(animal_rows: int) -> Masks:
    ids = np.full((8, 8), BACKGROUND, np.uint8)
    ids[:animal_rows] = PET
    return Masks((80, 80), ids=ids)


def bottom_only() -> Masks:
    ids = np.full((8, 8), BACKGROUND, np.uint8)
    ids[4:] = PET
    return Masks((80, 80), ids=ids)


def test_change_mode_says_appeared_and_left_once_each():
    seen = []
    ev = Events("cam", [Zone.parse("top:0,0,1,0,1,0.5,0,0.5")], "change", 2, outputs=[lambda e, s: seen.append((e, s))])
    for k, rows in enumerate([0, 4, 4, 4, 0, 0, 0]):
        ev.frame(k, f"f{k}", time.perf_counter(), masks_with(rows), 5.0)
    assert [(e["event"], e["frame"]) for e, _ in seen] == [("appeared", 2), ("left", 5)]
    assert seen[0][1] == {"pet": True, "zones": {"top": True}} and seen[0][0]["zones"] == {"top": 1.0}
    assert seen[0][0]["changed_zones"] == ["top"] and ev.last_zones == {"top": 0.0}
    seen.clear()  # a zone that empties while the pet stays in view: a "zone" event, not "appeared" again
    for k, rows in enumerate([4, 4, 8, 8, 8]):
        ev.frame(10 + k, "g", time.perf_counter(), masks_with(rows) if rows < 8 else bottom_only(), 5.0)
    assert [(e["event"], e["changed_zones"]) for e, _ in seen] == [("appeared", ["top"]), ("zone", ["top"])]


def test_every_frame_is_one_json_line_on_a_video(cli, tmp_path):
    video = tmp_path / "v.avi"
    photo = cv2.resize(cv2.imread(str(REPO / "calibration" / "beagle_10.jpg")), (320, 240))
    w = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10, (320, 240))
    for k in range(12):  # a pet for 6 frames, then an empty grey room for 6
        w.write(photo if k < 6 else np.full_like(photo, 128))
    w.release()
    events = tmp_path / "e.jsonl"
    r = cli("run", MODEL, "--source", video, "--events", events, "--zone", "left:0,0,0.5,0,0.5,1,0,1",
            "--report", tmp_path / "r.json")
    assert r.code == 0, r.err
    lines = [json.loads(line) for line in events.read_text().splitlines()]
    assert len(lines) == 12 and [e["frame"] for e in lines] == list(range(12))
    assert all(KEYS | {"zones"} <= set(e) for e in lines)
    assert [e["pet"] for e in lines] == [True] * 6 + [False] * 6
    assert lines[0]["bbox"][2] <= 320 and lines[0]["zones"]["left"] > 0
    assert json.loads((tmp_path / "r.json").read_text())["events"]["written"] == 12
    r = cli("run", MODEL, "--source", video, "--events", "-", "--events-on", "change", "--min-frames", "2")
    assert r.code == 0, r.err
    changes = [json.loads(line) for line in r.out.splitlines()]  # stdout holds the events alone
    assert [(e["event"], e["frame"]) for e in changes] == [("appeared", 1), ("left", 7)]
    r = cli("run", MODEL, "--source", video, "--zone", "left:0,0,1,0,1,1")
    assert r.code == 1 and "add --events FILE (or -) or --mqtt URL" in r.err
    r = cli("run", MODEL, "--source", video, "--min-frames", "2")
    assert r.code == 1 and "--min-frames describe events: add --events FILE (or -) or --mqtt URL" in r.err
    r = cli("run", MODEL, "--source", video, "--events", "-", "--min-frames", "2")  # every frame: nothing to debounce
    assert r.code == 1 and "--min-frames applies only with --events-on change" in r.err and not r.out


MOSQUITTO = shutil.which("mosquitto") or shutil.which("mosquitto", path="/usr/sbin")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def broker(port: int, folder: Path) -> subprocess.Popen:
    conf = folder / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
    p = subprocess.Popen([MOSQUITTO, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return p
        except OSError:
            time.sleep(0.1)
    p.kill()
    raise RuntimeError("mosquitto did not start")


@pytest.mark.skipif(MOSQUITTO is None, reason="needs Debian's mosquitto (.ci/run installs it)")
def test_a_real_broker_gets_events_and_retained_state_and_survives_a_restart(tmp_path):
    import paho.mqtt.client as mqtt

    from edgeseg.runtime.backends.predictor import Predictor
    from edgeseg.runtime.loop.mqtt import Publisher
    from edgeseg.runtime.loop.overlay import Renderer
    from edgeseg.runtime.loop.runner import RunOptions, run_loop
    from edgeseg.runtime.loop.sources import open_source

    port = free_port()
    server = broker(port, tmp_path)
    got: list[tuple[str, bool, dict]] = []
    sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    sub.on_connect = lambda c, u, f, rc, p: c.subscribe("home/cat/#")
    sub.on_message = lambda c, u, m: got.append((m.topic, bool(m.retain), json.loads(m.payload)))
    sub.reconnect_delay_set(1, 2)
    sub.connect("127.0.0.1", port)
    sub.loop_start()
    publisher = Publisher(f"mqtt://127.0.0.1:{port}/home/cat")
    events = Events("bundled photos", [Zone.parse("left:0,0,0.5,0,0.5,1,0,1")], "every", 1, outputs=[publisher])
    frames_at: dict[str, int] = {}
    result: dict = {}

    def loop() -> None:
        p = Predictor.load(MODEL, backend="onnxruntime", threads=1)
        result.update(run_loop(p, open_source(str(REPO / "calibration"), loop=True), Renderer(),
                               RunOptions(duration=9.0), events=events))

    runner = threading.Thread(target=loop)
    runner.start()
    try:
        time.sleep(3.0)
        assert any(t == "home/cat/events" for t, _, _ in got), got[:3]
        assert ("home/cat/state", False, {"pet": True, "since": next(p["since"] for t, _, p in got
                                                                      if t == "home/cat/state")}) in got
        server.kill()  # the broker goes away mid-run
        server.wait()
        frames_at["down"] = events.written
        time.sleep(2.0)
        frames_at["later"] = events.written  # the loop went on without it
        got.clear()
        server = broker(port, tmp_path)  # back, empty: nothing retained in it
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not any(t == "home/cat/state" for t, _, _ in got):
            time.sleep(0.2)
    finally:
        runner.join(timeout=30)
        publisher.close()
        sub.loop_stop()
        server.kill()
    assert frames_at["later"] > frames_at["down"] + 10
    states = [(t, p) for t, _, p in got if t in ("home/cat/state", "home/cat/zone/left")]
    assert {t for t, _ in states} == {"home/cat/state", "home/cat/zone/left"}  # republished after the restart
    assert result["events"]["mqtt_reconnects"] >= 1 and result["events"]["written"] == result["latency"]["frames"]
