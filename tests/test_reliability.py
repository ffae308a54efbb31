"""What a device deployment meets: a stop signal, tiny images, bad weights... Nothing lost, nothing half-written."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import cv2
import numpy as np
import pytest
from conftest import REPO

MODEL = REPO / "models" / "segnet_dsc.onnx"


@pytest.fixture(scope="module")
def long_video(tmp_path_factory):
    """600 frames (160x120) of a bundled photo drifting sideways: about 10 s of work."""
    path = tmp_path_factory.mktemp("video") / "long.avi"
    photo = cv2.resize(cv2.imread(str(REPO / "calibration" / "Abyssinian_101.jpg")), (240, 120))
    out = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 30.0, (160, 120))
    for i in range(600):
        out.write(np.ascontiguousarray(photo[:, (i % 80):(i % 80) + 160]))
    out.release()
    return path


@pytest.mark.slow
@pytest.mark.parametrize(("signum", "code"), [(signal.SIGTERM, 143), (signal.SIGHUP, 129)])
def test_a_stop_signal_finishes_the_video_and_the_report(long_video, tmp_path, signum, code):
    """``docker stop`` and systemd send SIGTERM; a closed terminal SIGHUP: handled like Ctrl-C."""
    video, report = tmp_path / "out.mp4", tmp_path / "r.json"
    p = subprocess.Popen([sys.executable, "-m", "edgeseg", "run", str(MODEL), "--backend", "onnxruntime",
                          "--source", str(long_video), "--save-video", str(video), "--report", str(report)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    partial = tmp_path / f".out.{p.pid}.partial.mp4"
    deadline = time.monotonic() + 60
    while not partial.exists() and p.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)  # some frames into the video
    assert p.poll() is None, p.communicate()
    p.send_signal(signum)
    _, err = p.communicate(timeout=60)
    assert p.returncode == code, err
    r = json.loads(report.read_text())
    assert r["interrupted"] and r["stopped_by"] == signal.Signals(signum).name
    done = r["latency"]["measured_frames"] + r["latency"]["warmup_frames"]
    assert 0 < done < 600
    cap = cv2.VideoCapture(str(video))
    # the frame in flight when the signal came may or may not have been written
    assert cap.isOpened() and int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) in (done, done + 1)
    ok, first = cap.read()
    assert ok and first.shape == (120, 160, 3)
    assert sorted(f.name for f in tmp_path.iterdir()) == ["out.mp4", "r.json"]  # no partial file left


def test_signal_handlers_are_restored_after_the_loop_and_ignored_while_finishing():
    """In a child process: signalling pytest's own process can crash the native threads it holds."""
    code = textwrap.dedent("""
        import os, signal, time
        from edgeseg.runtime.loop.runner import Stopped, stop_on_signals
        before = signal.getsignal(signal.SIGTERM)
        with stop_on_signals() as disarm:
            disarm()  # the loop has ended: the video is being finalized, the report written
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.5)
            print("finished")
        try:
            with stop_on_signals():
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(5)
        except Stopped as e:
            print(e, signal.getsignal(signal.SIGTERM) is before)
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.stdout.split() == ["finished", "SIGTERM", "True"], r.stderr


@pytest.mark.parametrize("view", ["overlay", "side-by-side", "mask"])
def test_tiny_and_degenerate_images_are_processed(cli, tmp_path, view):
    src = tmp_path / "in"
    src.mkdir()
    sizes = {"one_pixel": (1, 1), "two_by_three": (2, 3), "one_row": (1, 500), "one_column": (300, 1)}
    for name, (h, w) in sizes.items():
        cv2.imwrite(str(src / f"{name}.png"), np.full((h, w, 3), 90, np.uint8))
    cv2.imwrite(str(src / "photo.jpg"), cv2.imread(str(REPO / "calibration" / "Bengal_107.jpg")))
    out = tmp_path / "out"
    r = cli("run", MODEL, "--backend", "onnxruntime", "--source", src, "--view", view, "--warmup", "0",
            "--output", out / "overlays", "--save-masks", out / "masks", "--save-video", out / "v.avi",
            "--report", out / "r.json")
    assert r.code == 0, r.err
    for name, (h, w) in sizes.items():
        assert cv2.imread(str(out / "masks" / f"{name}.png"), cv2.IMREAD_UNCHANGED).shape == (h, w)
        assert cv2.imread(str(out / "overlays" / f"{name}.jpg")).shape[0] == h
    assert json.loads((out / "r.json").read_text())["source_stats"]["frames"] == 5
    assert cv2.VideoCapture(str(out / "v.avi")).get(cv2.CAP_PROP_FRAME_COUNT) == 5


def test_a_video_writer_that_writes_nothing_is_an_error_not_an_empty_file(cli, tmp_path, monkeypatch):
    import edgeseg.runtime.loop.sinks as run

    class SilentWriter:  # what OpenCV's writer does on a full disk or with a codec that refuses the size
        def __init__(self, *a) -> None: ...
        def isOpened(self) -> bool: return True
        def write(self, frame) -> None: ...
        def release(self) -> None: ...

    monkeypatch.setattr(run.cv2, "VideoWriter", SilentWriter)
    r = cli("run", MODEL, "--backend", "onnxruntime", "--source", REPO / "calibration", "--max-frames", "3",
            "--save-video", tmp_path / "v.mp4")
    assert r.code == 1 and r.err.startswith(f"error: {tmp_path / 'v.mp4'}: OpenCV's video writer could not write")
    assert list(tmp_path.iterdir()) == []


def test_non_finite_weights_are_refused_by_name(cli, tmp_path):
    import torch

    sd = torch.load(REPO / "models" / "segnet_dsc.pth", weights_only=True)["state_dict"]
    sd["uc2.seq.1.weight"][3] = float("nan")
    torch.save(sd, tmp_path / "nan.pth")
    r = cli("export", tmp_path / "nan.pth", "-o", tmp_path / "m.onnx")
    assert r.code == 1 and "1 NaN/inf value(s) in 1 tensor(s), first uc2.seq.1.weight" in r.err
    sd["uc2.seq.1.weight"][3] = 1.0
    sd["bn_input.running_var"][0] = -1.0  # finite, but the model computes NaN
    torch.save(sd, tmp_path / "negvar.pth")
    r = cli("export", tmp_path / "negvar.pth", "-o", tmp_path / "m.onnx")
    assert r.code == 1 and "verification failed: the model computes" in r.err and "NaN/inf output" in r.err
    assert not (tmp_path / "m.onnx").exists()


def test_foreign_and_empty_files_are_named_for_what_they_are(cli, tmp_path):
    (tmp_path / "random.pth").write_bytes(np.random.default_rng(0).bytes(5000))
    r = cli("export", tmp_path / "random.pth", "-o", tmp_path / "m.onnx")
    assert r.code == 1 and "not a PyTorch checkpoint (neither torch.save's zip format nor a pickle)" in r.err
    (tmp_path / "empty.onnx").write_bytes(b"")
    (tmp_path / "text.onnx").write_text("hello")
    for name in ("empty.onnx", "text.onnx"):
        r = cli("info", tmp_path / name)
        assert r.code == 1 and "not an ONNX model" in r.err, (name, r.out, r.err)


def test_force_overwrites_regular_files_only(cli, tmp_path):
    fifo = tmp_path / "pipe.onnx"
    os.mkfifo(fifo)
    (tmp_path / "folder.onnx").mkdir()
    for target in (fifo, tmp_path / "folder.onnx"):
        r = cli("export", REPO / "models" / "segnet_dsc.pth", "-o", target, "--force")
        assert r.code == 1 and "exists and is not a regular file" in r.err
    assert not fifo.is_file() and fifo.exists() and (tmp_path / "folder.onnx").is_dir()


def test_calibration_takes_photos_only_and_each_once(pets37, tmp_path):
    """Oxford-IIIT Pet layout: trimap PNGs decode as images too; the 37-breed folder also keeps its
    photos twice (root and images/) and rough masks."""
    from edgeseg.compile.quantize import select_images

    sel = select_images(pets37, 0, 0)
    assert (len(sel.paths), sel.masks, sel.duplicates) == (370, 740, 370)
    assert all(p.suffix == ".jpg" for p in sel.paths)
    sub = select_images(pets37, 200, 0)
    assert len(sub.paths) == 200 and set(sub.paths) <= set(sel.paths)
    # a folder of your own: masks/ and labels/ subfolders are left out the same way
    for folder in ("photos", "masks", "Labels"):
        (tmp_path / folder).mkdir()
        cv2.imwrite(str(tmp_path / folder / "x.png"), np.full((8, 8), ord(folder[0]), np.uint8))
    sel = select_images(tmp_path, 0, 0)
    assert [p.relative_to(tmp_path).as_posix() for p in sel.paths] == ["photos/x.png"] and sel.masks == 2


@pytest.fixture
def small_fs(tmp_path):
    """mount(folder, size, read_only): a real tmpfs, unmounted afterwards (needs root)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mounted = []

    def mount(name: str, size: str = "1m", read_only: bool = False):
        folder = tmp_path / name
        folder.mkdir()
        opts = f"size={size}" + (",ro" if read_only else "")
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(folder)], capture_output=True, text=True)
        if r.returncode:
            pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
        mounted.append(folder)
        return folder

    yield mount
    for folder in mounted:
        subprocess.run(["umount", str(folder)], check=False)


def test_full_disks_and_read_only_folders_are_one_line_errors(cli, small_fs, long_video, tmp_path):
    full, ro = small_fs("full", "256k"), small_fs("ro", read_only=True)
    r = cli("export", REPO / "models" / "segnet_dsc.pth", "-o", full / "m.onnx")
    assert r.code == 1 and "could not write it (No space left on device); nothing was written" in r.err
    assert list(full.iterdir()) == []
    r = cli("run", MODEL, "--backend", "onnxruntime", "--source", long_video, "--save-video", full / "v.mp4")
    assert r.code == 1 and "the disk filled up while writing the video; nothing was kept" in r.err
    assert list(full.iterdir()) == []
    for option, target in (("--output", ro / "overlays"), ("--report", ro / "r.json"), ("--save-masks", ro / "m")):
        r = cli("run", MODEL, "--backend", "onnxruntime", "--source", long_video, option, target)
        assert r.code == 1 and "cannot write here (Read-only file system)" in r.err and "frames" not in r.out
    r = cli("export", REPO / "models" / "segnet_dsc.pth", "-o", "/proc/m.onnx")
    assert r.code == 1 and r.err.startswith("error: /proc/m.onnx: cannot create a file here")


@pytest.mark.parametrize("backend", ["auto", "onnxruntime", "openvino"])
def test_files_that_are_not_edgeseg_models_are_named_on_every_backend(cli, tmp_path, backend):
    import onnx
    from onnx import TensorProto, helper

    if backend == "openvino":
        pytest.importorskip("openvino", reason="OpenVINO is x86 only")

    def model(shape):
        g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)])
        return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])

    onnx.save(model([1, 1, 32, 32]), str(tmp_path / "gray.onnx"))
    onnx.save(model([1, 3]), str(tmp_path / "rank2.onnx"))
    (tmp_path / "cut.onnx").write_bytes(MODEL.read_bytes()[:100_000])
    (tmp_path / "text.onnx").write_text("not a model")
    expected = {"gray.onnx": "input 'x' is [1, 1, 32, 32], expected N x 3 x H x W",
                "rank2.onnx": "input 'x' is [1, 3], expected N x 3 x H x W",
                "cut.onnx": "ONNX Runtime cannot load this model", "text.onnx": "ONNX Runtime cannot load this model"}
    for name, message in expected.items():
        r = cli("run", tmp_path / name, "--backend", backend, "--source", REPO / "calibration", "--max-frames", "1")
        assert r.code == 1 and message in r.err and len(r.err.strip().splitlines()) == 1, (name, r.err)


def test_quantize_names_what_is_wrong_with_its_inputs(cli, tmp_path):
    (tmp_path / "text.onnx").write_text("not a model")
    r = cli("quantize", tmp_path / "text.onnx", "--calib", REPO / "calibration", "-o", tmp_path / "q.onnx")
    assert r.code == 1 and "not an ONNX model" in r.err
    (tmp_path / "ranges.json").write_text("not json")
    r = cli("quantize", MODEL, "--calib-ranges", tmp_path / "ranges.json", "-o", tmp_path / "q.onnx")
    assert r.code == 1 and "not a calibration ranges file (not JSON)" in r.err
    assert not (tmp_path / "q.onnx").exists()


def test_two_runs_never_write_into_the_same_outputs(cli, long_video, tmp_path):
    masks, report = tmp_path / "masks", tmp_path / "r.json"
    p = subprocess.Popen([sys.executable, "-m", "edgeseg", "run", str(MODEL), "--backend", "onnxruntime",
                          "--source", str(long_video), "--save-masks", str(masks), "--report", str(report)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not (masks.is_dir() and any(masks.iterdir())) and time.monotonic() < deadline:
            time.sleep(0.05)
        for args in (("--save-masks", masks, "--force"), ("--report", report, "--force")):
            r = cli("run", MODEL, "--backend", "onnxruntime", "--source", REPO / "calibration", *args)
            assert r.code == 1 and f"is being written by another edgeseg process (pid {p.pid})" in r.err
    finally:
        p.send_signal(signal.SIGTERM)
        p.communicate(timeout=60)
    assert p.returncode == 143
    assert json.loads(report.read_text())["source"].endswith("long.avi")  # the first run's, untouched
    assert sorted(f.name for f in tmp_path.iterdir()) == ["masks", "r.json"]  # locks gone with their run
    # a lock left by a process that no longer exists is taken over
    (tmp_path / ".r.json.edgeseg-lock").write_text("999999999")
    r = cli("run", MODEL, "--backend", "onnxruntime", "--source", REPO / "calibration", "--max-frames", "1",
            "--report", report, "--force")
    assert r.code == 0, r.err
    assert not (tmp_path / ".r.json.edgeseg-lock").exists()


def test_latency_samples_keep_bounded_memory_and_representative_percentiles():
    from edgeseg.runtime.loop.latency import Samples, summarize

    s = Samples(cap=1_000)
    for v in range(10_000):  # a slow drift: keeping only the first or the last values would show
        s.append(float(v))
    st = summarize(s)
    assert len(s.values) == 1_000 and st["count"] == 10_000
    assert st["max"] == 9_999 and st["mean"] == 4_999.5
    assert 4_500 < st["p50"] < 5_500 and 8_500 < st["p90"] < 9_500
    assert list(s.recent)[-1] == 9_999 and len(s.recent) == 100


def test_warnings_are_one_readable_line(tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    (photos / "cat.jpg").write_bytes((REPO / "calibration" / "Bengal_107.jpg").read_bytes())
    r = subprocess.run([sys.executable, "-m", "edgeseg", "export", str(REPO / "models" / "segnet_dsc.pth"),
                        "-o", str(tmp_path / "m.onnx"), "--verify-images", str(photos)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "warning: skipped 1 unreadable image(s)" in r.stderr and "UserWarning" not in r.stderr


def test_files_sharing_a_name_keep_their_own_outputs(cli, tmp_path):
    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    photo = cv2.imread(str(REPO / "calibration" / "Bengal_107.jpg"))
    for rel in ("cat.jpg", "cat.png", "sub/cat.jpg", "dog.jpg"):
        cv2.imwrite(str(src / rel), photo)
    r = cli("run", MODEL, "--backend", "onnxruntime", "--source", src, "--recursive", "--warmup", "0",
            "--save-masks", tmp_path / "masks")
    assert r.code == 0, r.err
    assert sorted(p.name for p in (tmp_path / "masks").iterdir()) == [
        "cat_jpg.png", "cat_png.png", "dog.png", "sub__cat.png"]


def test_an_error_on_the_reader_thread_ends_the_loop_instead_of_hanging(tmp_path):
    from edgeseg.runtime.backends.predictor import Predictor
    from edgeseg.runtime.loop.overlay import Renderer
    from edgeseg.runtime.loop.runner import RunOptions, run_loop
    from edgeseg.runtime.loop.sources import open_source

    predictor = Predictor.load(MODEL, backend="onnxruntime")
    calls = []

    def failing_prepare(image):  # what a bug in preprocessing, or MemoryError, looks like
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("preprocessing failed")
        return predictor.preprocess(image)

    source = open_source(str(REPO / "calibration"))
    predictor.preprocess = failing_prepare  # run_loop hands it to the source's reader thread
    raised: list[BaseException] = []

    def loop() -> None:
        try:
            run_loop(predictor, source, Renderer(), RunOptions(warmup=0, report=tmp_path / "r.json"))
        except BaseException as e:
            raised.append(e)

    t = threading.Thread(target=loop, daemon=True)  # a regression must fail the test, not hang CI
    t.start()
    t.join(timeout=60)
    assert not t.is_alive(), "the loop still waits for a frame the reader thread will never send"
    assert len(raised) == 1 and str(raised[0]) == "preprocessing failed"


def test_atomic_writes_reach_the_disk_before_the_rename(tmp_path, monkeypatch):
    """The file's data is fsynced before the rename and the folder after it: a power cut on a
    device leaves the old file or the whole new one, never an empty one under the final name."""
    import edgeseg.files as files

    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(files.os, "fsync", lambda fd: events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
                        or real_fsync(fd))
    monkeypatch.setattr(files.os, "replace", lambda a, b: events.append(("rename", str(b))) or real_replace(a, b))
    out = tmp_path / "model.onnx"
    files.atomic_write(out, lambda p: p.write_bytes(b"model"))
    assert out.read_bytes() == b"model"
    assert [e[0] for e in events] == ["fsync", "rename", "fsync"]
    assert events[0][1].startswith(str(tmp_path / ".model.onnx.")) and events[2][1] == str(tmp_path)
