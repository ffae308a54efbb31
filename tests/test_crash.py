"""Nothing half-written after a hard kill (issue #37): each writer is killed with SIGKILL at fixed points of its
run; every file under its final name is then whole (it parses to its end) or absent, and `train --resume` after
a kill records the same epochs as a run that was never stopped."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import pytest
from conftest import REPO

MODEL = REPO / "models" / "segnet_dsc.onnx"
KILL_AFTER = (0.6, 1.5, 2.5, 4.0)  # seconds after the start; the commands take 2-10 s here


def killed(args: list, after: float) -> None:
    """``edgeseg ARGS`` killed with SIGKILL ``after`` seconds in (or finished before)."""
    p = subprocess.Popen([sys.executable, "-m", "edgeseg", *map(str, args)], stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
    time.sleep(after)
    if p.poll() is None:
        os.kill(p.pid, signal.SIGKILL)
    p.wait(timeout=60)


def whole_picture(path: Path) -> bool:
    data = path.read_bytes()
    ends = {".jpg": b"\xff\xd9", ".png": b"IEND\xaeB`\x82"}[path.suffix]
    return data.endswith(ends) and cv2.imread(str(path)) is not None


def final_files(folder: Path) -> list[Path]:
    """Files under their final names (temporary files are hidden: a leading dot)."""
    return [p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".")]


@pytest.mark.parametrize("after", KILL_AFTER)
def test_the_live_loop_leaves_whole_frames_masks_video_and_report(tmp_path, after):
    out = tmp_path / "o"
    killed(["run", MODEL, "--source", REPO / "calibration", "--loop", "--max-frames", "200", "--output", out / "ov",
            "--save-masks", out / "masks", "--save-video", out / "v.avi", "--report", out / "r.json"], after)
    files = final_files(out)
    if after == KILL_AFTER[-1]:  # killed while frames were being written, not before the first
        assert len([f for f in files if f.suffix == ".jpg"]) > 5
    for f in files:
        if f.suffix in (".jpg", ".png"):
            assert whole_picture(f), f
        elif f.suffix == ".avi":
            assert cv2.VideoCapture(str(f)).read()[0], f
        else:
            json.loads(f.read_text())


@pytest.mark.parametrize("after", KILL_AFTER)
def test_quantize_leaves_a_whole_model_and_ranges_or_none(tmp_path, after):
    from edgeseg.compile.calibration_cache import load_ranges_file
    from edgeseg.runtime.backends.predictor import Predictor

    q, ranges = tmp_path / "q.onnx", tmp_path / "r.json"
    killed(["quantize", MODEL, "--calib", REPO / "calibration", "--num-images", "16", "-o", q, "--save-ranges",
            ranges], after)
    if q.exists():
        Predictor.load(q, backend="onnxruntime", threads=1)
    if ranges.exists():
        load_ranges_file(ranges)


@pytest.mark.parametrize("after", KILL_AFTER[:2])
def test_export_and_bench_leave_whole_files_or_none(tmp_path, after):
    import onnx

    killed(["export", REPO / "models" / "segnet_dsc.pth", "-o", tmp_path / "m.onnx"], after * 3)
    if (tmp_path / "m.onnx").exists():
        onnx.checker.check_model(onnx.load(str(tmp_path / "m.onnx")))
    killed(["bench", MODEL, "--runs", "200", "--json", tmp_path / "b.json"], after * 3)
    if (tmp_path / "b.json").exists():
        assert json.loads((tmp_path / "b.json").read_text())["models"]


TRAIN = ["train", "--limit", "6", "--epochs", "4", "--batch", "3", "--size", "32x32", "--seed", "1"]


def test_train_resumed_after_sigkill_records_the_epochs_of_an_uninterrupted_run(pets3, tmp_path):
    import torch

    from edgeseg.compile.checkpoint import load_checkpoint

    whole = tmp_path / "whole.pth"
    subprocess.run([sys.executable, "-m", "edgeseg", *TRAIN, "--data", pets3, "-o", whole], check=True,
                   capture_output=True, timeout=300)
    out = tmp_path / "cut.pth"
    last = out.with_name("cut.last.pth")
    p = subprocess.Popen([sys.executable, "-m", "edgeseg", *TRAIN, "--data", str(pets3), "-o", str(out)],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not last.exists() and time.monotonic() < deadline:  # killed once an epoch's state is written
        time.sleep(0.05)
    os.kill(p.pid, signal.SIGKILL)
    p.wait(timeout=60)
    state = torch.load(last, weights_only=True)  # whole: it loads
    assert 1 <= state["epoch"] < 4
    r = subprocess.run([sys.executable, "-m", "edgeseg", *TRAIN, "--data", pets3, "-o", out, "--resume", last],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    epochs = [[h["epoch"] for h in load_checkpoint(f).extra["history"]] for f in (whole, out)]
    assert epochs[0] == epochs[1] == [1, 2, 3, 4]


def test_a_frame_is_renamed_into_place_whole(tmp_path, monkeypatch):
    """The per-frame writer goes through a temporary name: stopped before the rename, nothing is under the final
    name (it wrote the final name directly: a kill mid-write left half a JPEG there)."""
    import numpy as np

    from edgeseg.errors import EdgesegError
    from edgeseg.runtime.loop import sinks

    def interrupted(src, dst):
        raise OSError("killed before the rename")

    monkeypatch.setattr(sinks.os, "replace", interrupted)
    with pytest.raises(EdgesegError):
        sinks._imwrite(tmp_path / "f.jpg", np.zeros((8, 8, 3), np.uint8))
    assert list(tmp_path.iterdir()) == []
