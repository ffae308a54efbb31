"""The live loop on real photos, a video file, odd images, a failing camera, and Ctrl-C."""

from __future__ import annotations

import itertools
import json
import shutil
import threading
import time

import cv2
import numpy as np
import pytest
from conftest import REPO as REPO_ROOT
from conftest import FakeCamera

from edgeseg.errors import EdgesegError
from edgeseg.loader import load_predictor
from edgeseg.runtime.backends.predictor import Predictor, default_onnx_backend
from edgeseg.runtime.images import read_image
from edgeseg.runtime.loop.live import LiveSource
from edgeseg.runtime.loop.overlay import Renderer
from edgeseg.runtime.loop.runner import RunOptions, run_loop
from edgeseg.runtime.loop.sources import FileSource, open_source


@pytest.fixture(scope="session")
def onnx_model(exported):
    return exported["segnet-dsc"][0]


@pytest.fixture
def odd_folder(tmp_path, pets3):
    """Real photos plus the dataset's GIF and RGBA-PNG-named-.jpg, a grayscale, a 16-bit and a corrupt file."""
    folder = tmp_path / "photos"
    folder.mkdir()
    for name in ("Abyssinian_1", "Bengal_10", "american_bulldog_100", "Abyssinian_34", "Abyssinian_5"):
        shutil.copy(pets3 / "images" / f"{name}.jpg", folder / f"{name}.jpg")
    photo = read_image(pets3 / "images" / "Bengal_10.jpg")
    cv2.imwrite(str(folder / "gray.png"), cv2.cvtColor(photo, cv2.COLOR_BGR2GRAY))
    cv2.imwrite(str(folder / "deep16.png"), photo.astype(np.uint16) * 257)
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (folder / "notes.txt").write_text("not an image")
    return folder


def test_loop_on_real_and_odd_images(onnx_model, odd_folder, tmp_path):
    pred = Predictor.load(onnx_model, threads=1)
    out, masks, report = tmp_path / "overlays", tmp_path / "masks", tmp_path / "report.json"
    # one thread: end to end is then the sum of the stages on it (pipelined, it adds the queue's wait)
    opts = RunOptions(output=out, save_masks=masks, report=report, warmup=1, pipeline=False)
    with pytest.warns(UserWarning, match="broken.jpg"):
        result = run_loop(pred, open_source(str(odd_folder)), Renderer(), opts, warn=lambda m: None)
    names = sorted(p.stem for p in odd_folder.glob("*") if p.suffix != ".txt" and p.stem != "broken")
    assert sorted(p.stem for p in out.glob("*.jpg")) == names
    assert sorted(p.stem for p in masks.glob("*.png")) == names
    for name in names:
        src = next(odd_folder.glob(f"{name}.*"))
        saved = cv2.imread(str(masks / f"{name}.png"), cv2.IMREAD_UNCHANGED)
        assert np.array_equal(saved, pred.predict(read_image(src))), name
        assert cv2.imread(str(out / f"{name}.jpg")).shape == read_image(src).shape
    data = json.loads(report.read_text())
    assert data == json.loads(json.dumps(result))
    assert data["source_stats"]["skipped_unreadable"] == 1
    assert data["latency"]["frames"] == len(names) and data["latency"]["measured_frames"] == len(names) - 1
    assert set(data["latency"]["stages_ms"]) == {"capture", "preprocess (reader thread)", "inference",
                                                  "postprocess", "render", "write"}
    lat = data["latency"]
    main_thread = sum(v["mean"] for k, v in lat["stages_ms"].items() if "reader thread" not in k)
    assert lat["end_to_end_ms"]["mean"] == pytest.approx(main_thread, rel=0.2)  # overlapped work is not added
    assert data["model"]["backend"] == default_onnx_backend() and len(data["model"]["sha256"]) == 64
    assert {"cpu", "onnxruntime", "opencv", "python"} <= set(data["environment"])
    if data["model"]["backend"] == "onnxruntime":  # how the session was set up, for whoever reads the report
        session = data["model"]["session"]
        assert session["denormals_flushed"] and session["int8_unsaturated"] and not session["spinning"]
    else:  # the precision edgeseg chose is the one OpenVINO was told to use, never its silent default
        hint = {"fp32": "f32", "bf16": "bf16", "fp16": "f16"}[data["model"]["compute_precision"]]
        assert data["model"]["config"]["INFERENCE_PRECISION_HINT"] == hint
    assert data["model"]["precision_choice"]["precision"] == data["model"]["compute_precision"]
    assert data["model"]["precision_choice"]["reason"].startswith("auto: ")


def _write_video(path, frames):
    h, w = frames[0].shape[:2]
    vw = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (w, h))
    for f in frames:
        vw.write(f)
    vw.release()


def test_loop_on_a_video_file_keeps_every_frame(onnx_model, tmp_path, pets3):
    photo = cv2.resize(read_image(pets3 / "images" / "Abyssinian_1.jpg"), (160, 112))
    frames = [np.roll(photo, 8 * i, axis=1) for i in range(12)]
    video = tmp_path / "clip.avi"
    _write_video(video, frames)
    out_video = tmp_path / "out.mp4"
    result = run_loop(Predictor.load(onnx_model, threads=1), open_source(str(video)), Renderer(view="side-by-side"),
                      RunOptions(save_video=out_video, warmup=0))
    assert result["latency"]["frames"] == 12 and result["source_stats"]["dropped_stale"] == 0
    assert result["masks"] == {"upsample": "smooth", "region_confidence": 0.0, "smooth": 0.3,  # a video: smoothed
                               "view": "side-by-side"}
    cap = cv2.VideoCapture(str(out_video))
    n = 0
    while True:
        ok, f = cap.read()
        if not ok:
            break
        n += 1
        assert f.shape == (112, 320, 3)  # side by side doubles the width
    assert n == 12
    assert not list(tmp_path.glob(".*partial*"))


def test_smoothing_steadies_a_still_noisy_scene_and_never_mixes_photos(pets3, tmp_path):
    from conftest import REPO

    from edgeseg.runtime.masks import BACKGROUND, Smoother

    p = Predictor.load(REPO / "models" / "segnet_dsc.onnx", backend="onnxruntime", precision="fp32", threads=1)
    photo = cv2.resize(read_image(pets3 / "images" / "Bengal_101.jpg"), (320, 240))
    rng = np.random.default_rng(0)
    clip = [np.clip(photo + rng.normal(0, 6, photo.shape), 0, 255).astype(np.uint8) for _ in range(12)]

    def steadiness(smoother):
        animal = [p.masks(p.scores(p.preprocess(f))[0], f.shape, smoother).ids != BACKGROUND for f in clip]
        return np.mean([(a & b).sum() / (a | b).sum() for a, b in itertools.pairwise(animal)])

    assert 1 - steadiness(Smoother(0.3)) < 0.8 * (1 - steadiness(None))  # flicker down by 20% or more
    smoother = Smoother(0.5)
    scores = [p.scores(p.preprocess(f))[0] for f in clip[:2]]
    first = p.masks(scores[0], clip[0].shape, smoother)
    p.masks(scores[1], clip[1].shape, smoother)  # the next frame moves the smoother's state
    assert np.array_equal(first.ids, p.masks(scores[0], clip[0].shape, Smoother(0.5)).ids)  # the first frame's own
    folder = tmp_path / "photos"
    folder.mkdir()
    cv2.imwrite(str(folder / "a.jpg"), photo)
    report = run_loop(p, open_source(str(folder)), Renderer(), RunOptions(smooth=0.5, warmup=0))
    assert report["masks"]["smooth"] == 0.0


def test_live_source_reconnects_and_counts_the_gap():
    cams = iter([FakeCamera(5), FakeCamera(0, opened=False), FakeCamera(5)])
    src = LiveSource(lambda: next(cams, FakeCamera(0, opened=False)), "fake camera", reconnect=3.0)
    got = 0
    for _ in src:
        got += 1
        time.sleep(0.02)  # slower than the camera
    src.close()
    assert src.stats.reconnects == 1
    assert src.stats.gap_seconds > 0
    assert 2 <= got <= 10
    assert got + src.stats.dropped == 10
    assert "did not come back" in src.error


def test_live_source_drops_stale_frames_instead_of_queueing():
    src = LiveSource(lambda: FakeCamera(400, period=0.001), "fast camera", reconnect=0.1)
    waits = []
    for i, frame in enumerate(src):
        waits.append(frame.wait_ms)
        time.sleep(0.01)  # a model 10x slower than the camera
        if i == 20:
            break
    src.close()
    assert src.stats.dropped > 20  # most frames were replaced, none piled up
    assert np.median(waits) < 5


def test_missing_camera_is_a_clear_error(cli, onnx_model):
    r = cli("run", onnx_model, "--source", "/dev/video97")
    assert r.code == 1
    assert "cannot open /dev/video97" in r.err and len(r.err.strip().splitlines()) == 1


def test_ctrl_c_still_writes_report_and_playable_video(onnx_model, tmp_path, pets3):
    class Interrupting(FileSource):
        def __iter__(self):
            for i, frame in enumerate(super().__iter__()):
                if i == 3:
                    raise KeyboardInterrupt
                yield frame

    paths = sorted((pets3 / "images").glob("Bengal_1*.jpg"))[:6]
    video, report = tmp_path / "v.mp4", tmp_path / "r.json"
    result = run_loop(Predictor.load(onnx_model, threads=1), Interrupting(paths, "photos"), Renderer(),
                      RunOptions(save_video=video, report=report, warmup=0))
    assert result["interrupted"] and json.loads(report.read_text())["latency"]["frames"] == 3
    cap = cv2.VideoCapture(str(video))
    assert cap.isOpened() and cap.read()[0]


def test_existing_outputs_need_force(cli, onnx_model, tmp_path, pets3):
    out = tmp_path / "ov"
    out.mkdir()
    (out / "old.jpg").write_bytes(b"x")
    src = str(pets3 / "images" / "Abyssinian_1.jpg")
    r = cli("run", onnx_model, "--source", src, "--output", out)
    assert r.code == 1 and "--force" in r.err
    report = tmp_path / "r.json"
    report.write_text("{}")
    r = cli("run", onnx_model, "--source", src, "--report", report)
    assert r.code == 1 and "--force" in r.err and report.read_text() == "{}"
    r = cli("run", onnx_model, "--source", src, "--output", out, "--report", report, "--force", "--show")
    assert r.code == 0, r.err
    assert "no display" in r.out
    assert (out / "Abyssinian_1.jpg").exists()


@pytest.mark.parametrize(("args", "message"), [
    ([], "exactly one of --camera N or --source X"),
    (["--source", "nowhere/at/all"], "no such file, folder or device"),
    (["--source", "x", "--view", "fancy"], "view 'fancy'"),
    (["--source", "x", "--pet-color", "bluish"], "is not #rrggbb"),
])
def test_run_bad_options(cli, onnx_model, args, message):
    r = cli("run", onnx_model, *args)
    assert r.code == 1 and message in r.err


def test_a_cutout_video_is_refused_before_the_model_loads(cli, tmp_path):
    # the model file does not exist: the first thing said must be about the view, not the model
    r = cli("run", tmp_path / "not-yet.onnx", "--source", tmp_path, "--view", "cutout",
            "--save-video", tmp_path / "v.mp4")
    assert r.code == 1 and "videos cannot hold" in r.err and "v.mp4" in r.err
    assert not (tmp_path / "v.mp4").exists()


def test_renderer_views(pets3):
    frame = read_image(pets3 / "images" / "Abyssinian_1.jpg")
    mask = np.ones(frame.shape[:2], np.uint8)
    mask[100:200, 100:300] = 0
    mask[100, 100:300] = 2
    outline = Renderer(alpha=1.0, pet_color=(0, 0, 255), border="outline").render(frame, mask)
    assert (outline[150, 150] == (0, 0, 255)).all()  # pet tinted
    assert (outline[100, 150] == 255).all()  # border outline in white
    assert (outline[10, 10] == frame[10, 10]).all()  # background untouched
    whole = Renderer(alpha=1.0, pet_color=(0, 0, 255)).render(frame, mask)  # default: border drawn as the animal
    assert (whole[100, 150] == (0, 0, 255)).all() and (whole[150, 150] == (0, 0, 255)).all()
    assert (whole[10, 10] == frame[10, 10]).all()
    assert Renderer(view="side-by-side").render(frame, mask).shape[1] == 2 * frame.shape[1]
    as_pet = Renderer(view="mask", pet_color=(1, 2, 3)).render(frame, mask)
    assert (as_pet[100, 150] == (1, 2, 3)).all()
    cut = Renderer(view="cutout").render(frame, mask)
    assert cut.shape == (*frame.shape[:2], 4) and (cut[..., :3] == frame).all()
    assert cut[150, 150, 3] == cut[100, 150, 3] == 255 and cut[10, 10, 3] == 0
    noise = np.random.default_rng(0).integers(0, 256, frame.shape, dtype=np.uint8)
    blur = Renderer(view="blur").render(noise, mask)
    assert (blur[110:190, 110:290] == noise[110:190, 110:290]).all()  # the animal sharp
    assert blur[:60].std() < 0.1 * noise[:60].std()  # the background blurred
    assert Renderer(view="cutout").extension == ".png" and Renderer().extension == ".jpg"


def test_smooth_masks_follow_edges_between_the_model_grid(pets3):
    """At 1280x720 the nearest path can change class only at the model grid's columns (160 for the bundled
    model); the smooth path anywhere (done-when of the masks issue: at least 20% of the columns across the edges)."""
    from conftest import REPO

    p = Predictor.load(REPO / "models" / "segnet_dsc.onnx", backend="onnxruntime", precision="fp32", threads=1)
    frames = [cv2.resize(read_image(pets3 / "images" / f"{n}.jpg"), (1280, 720), interpolation=cv2.INTER_CUBIC)
              for n in ("Abyssinian_1", "Bengal_101", "american_bulldog_10")]

    def changing_columns(ids: np.ndarray) -> float:
        cols = np.flatnonzero((ids[:, 1:] != ids[:, :-1]).any(0))
        return len(cols) / (cols[-1] - cols[0] + 1)

    for f in frames:
        scores = p.scores(p.preprocess(f))[0]
        p.upsample = "nearest"
        nearest = p.masks(scores, f.shape).ids
        p.upsample = "smooth"
        masks = p.masks(scores, f.shape)
        grid = p.meta.input_size[1]
        assert changing_columns(nearest) <= grid / 1280 * 1.05 and changing_columns(masks.ids) >= 0.2
        assert (masks.ids == nearest).mean() > 0.95
        soft = masks.animal[(masks.animal > 0) & (masks.animal < 255)]
        assert soft.size > 0.005 * masks.animal.size  # a soft edge, not a hard cut
        assert set(np.unique(masks.ids)) <= {0, 1, 2}


def test_predictor_batch_equals_single_and_matches_pytorch(onnx_model, notebook_ckpt, pets3):
    frames = [read_image(p) for p in sorted((pets3 / "images").glob("american_bulldog_1*.jpg"))[:4]]
    onnx_pred = Predictor.load(onnx_model, threads=1)
    torch_pred = load_predictor(notebook_ckpt["segnet-dsc"], threads=1)
    torch_pred.meta = onnx_pred.meta  # same input size (the ONNX was exported at 64x64)
    batch = onnx_pred.predict_batch(frames)
    for f, m in zip(frames, batch, strict=True):
        assert m.shape == f.shape[:2] and m.dtype == np.uint8
        assert np.array_equal(m, onnx_pred.predict(f))
        assert np.array_equal(m, torch_pred.predict(f))


def test_predictor_rejects_unknown_backend_and_extension(tmp_path, onnx_model):
    with pytest.raises(EdgesegError, match="unknown backend"):
        Predictor.load(onnx_model, backend="openvino-ish")
    other = tmp_path / "model.tflite"
    other.write_bytes(b"x")
    with pytest.raises(EdgesegError, match="cannot tell the backend"):
        Predictor.load(other)


def test_device_runtime_refuses_what_needs_the_build_side(onnx_model, notebook_ckpt):
    """Predictor.load runs deployable files only; the loader adds checkpoints (and engines built on demand)."""
    with pytest.raises(EdgesegError, match=r"is a PyTorch checkpoint.*edgeseg export"):
        Predictor.load(notebook_ckpt["segnet-dsc"])
    with pytest.raises(EdgesegError, match="TensorRT runs engines: build one"):
        Predictor.load(onnx_model, backend="tensorrt")
    assert load_predictor(notebook_ckpt["segnet-dsc"]).info.name == "torch"


def test_reader_thread_stops_when_the_loop_breaks(onnx_model, pets3):
    paths = sorted((pets3 / "images").glob("*.jpg"))[:30]
    before = threading.active_count()
    run_loop(Predictor.load(onnx_model, threads=1), FileSource(paths, "x"), Renderer(), RunOptions(max_frames=2))
    time.sleep(0.5)
    assert threading.active_count() <= before


def test_openvino_backend_agrees_with_onnxruntime(onnx_model, pets3):
    pytest.importorskip("openvino", reason="pip install 'edgeseg[openvino]' (installed by make test)")
    ov, ort = Predictor.load(onnx_model, backend="openvino", threads=1), Predictor.load(onnx_model, threads=1)
    assert ov.info.name == "openvino" and ov.meta == ort.meta
    frames = [read_image(p) for p in sorted((pets3 / "images").glob("Bengal_1*.jpg"))[:4]]
    agree = np.mean([(ov.predict(f) == ort.predict(f)).mean() for f in frames])
    assert agree > 0.995


@pytest.mark.parametrize(("machine", "installed", "expected"), [
    ("x86_64", True, "openvino"), ("x86_64", False, "onnxruntime"), ("aarch64", True, "onnxruntime")])
def test_auto_backend_prefers_openvino_on_x86_only(monkeypatch, machine, installed, expected):
    import importlib.util
    import platform

    monkeypatch.setattr(platform, "machine", lambda: machine)
    real = importlib.util.find_spec

    def find_spec(name, *a):
        if name == "openvino":
            return real("json") if installed else None
        return real(name, *a)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    assert default_onnx_backend() == expected


@pytest.mark.parametrize(("quantization", "flags", "expected"), [
    ({"weight_bits": 8}, {"avx2"}, "onnxruntime"), ({"weight_bits": 8}, {"avx2", "avx512_vnni"}, "openvino"),
    ({"weight_bits": 8}, {"avx2", "avx_vnni"}, "openvino"), ({"weight_bits": 7}, {"avx2"}, "openvino"),
    ({}, {"avx2"}, "onnxruntime")])  # a cpu file from before 7-bit weights
def test_auto_backend_keeps_full_range_int8_weights_off_openvino_without_vnni(monkeypatch, quantization, flags,
                                                                               expected):
    """OpenVINO's int8 kernels add pairs of u8 x s8 products in 16 bits on x86 without VNNI: 8-bit
    weights overflow there, so `auto` runs such a file in ONNX Runtime (whose sessions ask for exact
    kernels); FP32 files and 7-bit weights stay on OpenVINO."""
    import platform

    from edgeseg.runtime.backends import precision

    pytest.importorskip("openvino", reason="pip install 'edgeseg[openvino]' (installed by make test)")
    monkeypatch.setattr(platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset(flags))
    props = {"precision": "int8-tensorrt", "quantization": json.dumps(quantization)}
    assert default_onnx_backend(props) == expected
    assert default_onnx_backend({"precision": "fp32"}) == default_onnx_backend() == "openvino"
    assert precision.int8_pairs_saturate(frozenset(), "aarch64") is False  # ARM kernels widen before adding


@pytest.mark.parametrize("classes", [2, 3, 5])
def test_class_ids_match_argmax_including_ties(classes):
    from edgeseg.runtime.backends.base import class_ids

    logits = np.random.default_rng(classes).standard_normal((2, classes, 16, 16)).astype(np.float32)
    logits[:, -1, :4] = logits[:, 0, :4]  # ties: the first class must win, as with argmax
    logits[:, 1, 4:8] = np.round(logits[:, 1, 4:8])
    logits[:, 0, 4:8] = np.round(logits[:, 0, 4:8])
    ids = class_ids(logits)
    assert ids.dtype == np.uint8
    assert np.array_equal(ids, logits.argmax(1))


def test_openvino_caches_compiled_models_and_runs_without_a_cache(onnx_model, tmp_path, monkeypatch):
    pytest.importorskip("openvino", reason="pip install 'edgeseg[openvino]' (installed by make test)")
    x = np.random.default_rng(0).random((1, 3, *Predictor.load(onnx_model, threads=1).input_size), dtype=np.float32)
    monkeypatch.setenv("EDGESEG_CACHE", str(tmp_path / "cache"))
    first = Predictor.load(onnx_model, backend="openvino", threads=1)
    assert first.info.extra["model_cache"] == str(tmp_path / "cache" / "openvino")
    assert any((tmp_path / "cache" / "openvino").iterdir())
    cached = Predictor.load(onnx_model, backend="openvino", threads=1)
    assert np.array_equal(cached.infer(x), first.infer(x))
    monkeypatch.setenv("EDGESEG_CACHE", str(tmp_path / "not-a-folder" / "x"))
    (tmp_path / "not-a-folder").write_text("")
    uncached = Predictor.load(onnx_model, backend="openvino", threads=1)
    assert uncached.info.extra["model_cache"] == "off"
    assert np.array_equal(uncached.infer(x), first.infer(x))


def test_default_threads_count_physical_cores(tmp_path, monkeypatch):
    import os

    from edgeseg.runtime.backends.onnxruntime import default_threads

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    for cpu, core in enumerate([0, 1, 0, 1]):  # 2 cores with 2 SMT threads each
        topo = tmp_path / f"cpu{cpu}" / "topology"
        topo.mkdir(parents=True)
        (topo / "physical_package_id").write_text("0\n")
        (topo / "core_id").write_text(f"{core}\n")
    assert default_threads(tmp_path) == 2
    (tmp_path / "cpu3" / "topology" / "core_id").unlink()  # unreadable topology: every allowed CPU
    assert default_threads(tmp_path) == 4
    assert default_threads() >= 1


def test_the_latency_table_leaves_out_percentiles_it_cannot_know(cli):
    from conftest import REPO

    r = cli("run", REPO / "models" / "segnet_dsc.onnx", "--backend", "onnxruntime", "--source",
            REPO / "calibration", "--max-frames", "5", "--warmup", "0")
    assert r.code == 0, r.err
    text = " ".join(r.out.split())  # the caption wraps at the table's width
    assert "p90/p99 need 10/100 frames (measured 5)" in text
    assert "reader thread's row overlaps inference: not part of end to end" in text
    end_to_end = next(line for line in r.out.splitlines() if "end to end" in line and "│" in line)
    cells = [c.strip() for c in end_to_end.split("│")[1:-1]]
    assert cells[1] and not cells[2] and not cells[3] and cells[4]  # p50 and max shown, p90 and p99 blank


def test_every_frame_of_a_small_folder_is_measured_by_one_percentile_rule(cli, tmp_path):
    """8 photos: 8 frames measured (the model is warmed up on the first frame, untimed); the report leaves out
    the percentiles the table leaves blank; the output starts with the table's title on one line."""
    from conftest import REPO

    photos = tmp_path / "eight"
    photos.mkdir()
    for p in sorted((REPO / "calibration").glob("*.jpg"))[:8]:
        (photos / p.name).write_bytes(p.read_bytes())
    r = cli("run", REPO / "models" / "segnet_dsc.onnx", "--backend", "onnxruntime", "--source", photos,
            "--report", tmp_path / "r.json")
    assert r.code == 0, r.err
    assert "8 frames measured:" in r.out and "warm-up" not in r.out
    lat = json.loads((tmp_path / "r.json").read_text())["latency"]
    assert (lat["frames"], lat["measured_frames"], lat["warmup_frames"], lat["untimed_warmup_passes"]) == (8, 8, 0, 2)
    e2e = lat["end_to_end_ms"]
    assert e2e["count"] == 8 and e2e["p50"] > 0 and e2e["p90"] is None and e2e["p99"] is None
    first = r.out.splitlines()[0]
    assert first.startswith("edgeseg run: segnet_dsc.onnx on ") and first.rstrip().endswith("threads)")
    r = cli("run", REPO / "models" / "segnet_dsc.onnx", "--backend", "onnxruntime", "--source", photos,
            "--warmup", "3")
    assert r.code == 0 and "5 frames measured (+3 left out as warm-up)" in r.out, r.out


def test_percentiles_need_enough_items():
    from edgeseg.runtime.loop.latency import Samples, summarize

    assert summarize([5.0] * 9)["p90"] is None and summarize([5.0] * 10)["p90"] == 5.0
    assert summarize([1.0] * 99)["p99"] is None and summarize([1.0] * 100)["p99"] == 1.0
    s = Samples()
    for v in range(100):
        s.append(float(v))
    assert summarize(s)["p99"] is not None and summarize(Samples()) == {"count": 0}


def test_the_model_is_warmed_up_on_the_first_frame_and_every_frame_is_timed(onnx_model, tmp_path, monkeypatch):
    from conftest import REPO

    from edgeseg.runtime.loop.runner import WARMUP_PASSES

    photos = tmp_path / "three"
    photos.mkdir()
    for path in sorted((REPO / "calibration").glob("*.jpg"))[:3]:
        (photos / path.name).write_bytes(path.read_bytes())
    p = Predictor.load(onnx_model, backend="onnxruntime", threads=1)
    calls = []
    scores = p.scores
    monkeypatch.setattr(p, "scores", lambda x: calls.append(1) or scores(x))
    report = run_loop(p, open_source(str(photos)), Renderer(), RunOptions(output=tmp_path / "out"))
    assert len(calls) == 3 + WARMUP_PASSES  # the warm-up passes ran, untimed
    assert report["latency"]["measured_frames"] == 3 and report["latency"]["stages_ms"]["inference"]["count"] == 3


class StubLive:
    """A live source of ``frames`` copies of one photo, each captured ``age`` s before the loop gets it."""

    live, sequence, label, fps = True, True, "stub camera", 30.0

    def __init__(self, frames: int, age: float = 0.0, fail_after: int | None = None) -> None:
        from edgeseg.runtime.loop.frames import SourceStats

        self.frames, self.age, self.fail_after, self.closed = frames, age, fail_after, False
        self.stats = SourceStats()

    def __iter__(self):
        from edgeseg.runtime.loop.frames import Frame

        for i in range(self.frames):
            if self.fail_after is not None and i == self.fail_after:
                raise EdgesegError("stub camera: unplugged")
            self.stats.frames += 1
            image = np.full((48, 64, 3), 90, np.uint8)
            yield Frame(image, f"frame_{i:06d}", i, captured=time.perf_counter() - self.age)

    def close(self) -> None:
        self.closed = True


def test_a_live_frames_latency_counts_from_its_capture(onnx_model):
    p = Predictor.load(onnx_model, backend="onnxruntime", threads=1)
    live = run_loop(p, StubLive(4, age=0.5), Renderer(), RunOptions())["latency"]["end_to_end_ms"]
    assert live["p50"] >= 500  # capture to output, not the loop's own period (review #39 item 25)


def test_a_live_recording_plays_at_the_speed_it_was_recorded(onnx_model, tmp_path, monkeypatch):
    """A 30 FPS camera and a model at about 10 FPS: 2 s of camera time must become about 2 s of video, not one
    video frame per processed frame (review #39 item 2)."""
    cams = iter([FakeCamera(60, period=1 / 30)])
    src = LiveSource(lambda: next(cams, FakeCamera(0, opened=False)), "fake camera", reconnect=0.2)
    p = Predictor.load(onnx_model, backend="onnxruntime", threads=1)
    scores = p.scores
    monkeypatch.setattr(p, "scores", lambda x: time.sleep(0.1) or scores(x))
    video = tmp_path / "v.avi"
    report = run_loop(p, src, Renderer(), RunOptions(save_video=video))
    assert "did not come back" in report["error"]  # the camera's end
    processed = report["latency"]["frames"]
    cap = cv2.VideoCapture(str(video))
    written = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    assert cap.get(cv2.CAP_PROP_FPS) == 30 and processed < 35 and 45 <= written <= 66, (processed, written)
    assert report["outputs"]["video"] == str(video)


def test_an_error_mid_run_keeps_the_recording_and_writes_the_report(onnx_model, tmp_path):
    """A camera unplugged after 3 frames: the 3 frames' video is kept, the report says why the run ended, the
    error is raised, the source is closed (review #39 items 3 and 4)."""
    src = StubLive(10, fail_after=3)
    video, report = tmp_path / "v.avi", tmp_path / "r.json"
    with pytest.raises(EdgesegError, match="unplugged"):
        run_loop(Predictor.load(onnx_model, threads=1), src, Renderer(), RunOptions(save_video=video, report=report))
    r = json.loads(report.read_text())
    assert r["error"] == "stub camera: unplugged" and r["latency"]["frames"] == 3 and r["outputs"]["video"]
    assert cv2.VideoCapture(str(video)).read()[0] and src.closed


def test_a_failing_video_close_still_closes_the_source(onnx_model, tmp_path, monkeypatch):
    import edgeseg.runtime.loop.sinks as sinks

    class SilentWriter:  # writes nothing: Sinks.close() raises
        def __init__(self, *a) -> None: ...
        def isOpened(self) -> bool: return True
        def write(self, frame) -> None: ...
        def release(self) -> None: ...

    monkeypatch.setattr(sinks.cv2, "VideoWriter", SilentWriter)
    src = StubLive(3)
    with pytest.raises(EdgesegError, match="could not write the whole video"):
        run_loop(Predictor.load(onnx_model, threads=1), src, Renderer(),
                 RunOptions(save_video=tmp_path / "v.avi", report=tmp_path / "r.json"))
    assert src.closed and "video" not in json.loads((tmp_path / "r.json").read_text())["outputs"]


def test_no_frame_no_video_and_the_report_does_not_name_one(onnx_model, tmp_path):
    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / "a.jpg").write_bytes(b"not a jpeg")
    warnings = []
    with pytest.warns(UserWarning, match="not a decodable image"):
        r = run_loop(Predictor.load(onnx_model, threads=1), open_source(str(folder)), Renderer(),
                     RunOptions(save_video=tmp_path / "v.mp4"), warn=warnings.append)
    assert "video" not in r["outputs"] and not (tmp_path / "v.mp4").exists()
    assert any("no frame was processed, so no video was written" in w for w in warnings)


def test_a_second_ctrl_c_cannot_cut_the_finalisation():
    """Ctrl-C stops the loop once; while the video and report are written, another is ignored (review #39
    item 24). In a child process: signalling pytest's own process can crash the native threads it holds."""
    import subprocess
    import sys
    import textwrap

    code = textwrap.dedent("""
        import os, signal, time
        from edgeseg.runtime.loop.runner import Stopped, stop_on_signals
        try:
            with stop_on_signals() as disarm:
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(5)
        except Stopped as e:
            print("stopped by", e)
        with stop_on_signals() as disarm:
            disarm()  # the loop has ended: the video is being finalized, the report written
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.5)
            print("finished", signal.getsignal(signal.SIGINT) is not signal.default_int_handler)
        print("restored", signal.getsignal(signal.SIGINT) is signal.default_int_handler)
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["stopped", "by", "SIGINT", "finished", "True", "restored", "True"], r.stdout


def test_a_model_with_an_argmax_head_reports_no_smoothing():
    from types import SimpleNamespace

    from edgeseg.runtime.loop.runner import RunOptions as Opts
    from edgeseg.runtime.loop.runner import smoothing

    classes, logits = (SimpleNamespace(info=SimpleNamespace(output=o)) for o in ("classes", "logits"))
    camera = SimpleNamespace(sequence=True)
    assert smoothing(Opts(), camera, classes) == 0.0 and smoothing(Opts(), camera, logits) == 0.3


def test_float16_scores_give_the_same_soft_mask_as_float32():
    """exp() of a float16 margin overflowed: opacity 0 where the pet is certain (review #39 item 17)."""
    from edgeseg.runtime.masks import Masks

    logits = np.zeros((3, 8, 8), np.float32)
    logits[0, 2:6, 2:6] = 40.0  # pet, certain
    soft = [Masks.from_logits(logits.astype(dtype), (16, 16)).animal for dtype in (np.float32, np.float16)]
    assert soft[0][8, 8] == 255 and np.array_equal(soft[0], soft[1])


@pytest.mark.parametrize(("text", "bgr"), [("#ff8000", (0, 128, 255)), ("255,128,0", (0, 128, 255))])
def test_colours_are_hex_with_their_hash_or_three_numbers(text, bgr):
    from edgeseg.runtime.loop.overlay import parse_color

    assert parse_color(text) == bgr
    for bad in ("255255", "ff8000", "#ff80", "1,2", "300,0,0"):  # "255255" was read as #255255 (review #39 item 18)
        with pytest.raises(ValueError, match="is not #rrggbb or r,g,b"):
            parse_color(bad)


def test_the_pipelined_loop_writes_the_same_frames_in_order_as_the_sequential_one(onnx_model, tmp_path):
    """Inference of a frame overlaps rendering and writing of the one before (issue #36); the outputs must be
    those of the one-thread loop, frame for frame, none dropped."""
    frames = [cv2.resize(cv2.imread(str(p)), (160, 120)) for p in sorted((REPO_ROOT / "calibration").glob("*.jpg"))[:9]]
    clip = tmp_path / "clip.avi"
    w = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"MJPG"), 10, (160, 120))
    for f in frames:
        w.write(f)
    w.release()
    p = Predictor.load(onnx_model, backend="onnxruntime", threads=1)
    out = {}
    for pipeline in (False, True):
        folder = tmp_path / f"pipeline-{pipeline}"
        r = run_loop(p, open_source(str(clip)), Renderer(), RunOptions(output=folder / "ov", save_masks=folder / "m",
                                                                       save_video=folder / "v.avi", pipeline=pipeline))
        assert r["pipeline"] is pipeline and r["latency"]["frames"] == 9
        lat = r["latency"]  # end to end holds every stage of the frame, and pipelined the queue's wait too
        assert lat["end_to_end_ms"]["mean"] >= 0.95 * sum(s["mean"] for s in lat["stages_ms"].values())
        cap = cv2.VideoCapture(str(folder / "v.avi"))
        video = [cap.read()[1] for _ in range(9)]
        out[pipeline] = ([cv2.imread(str(f), cv2.IMREAD_UNCHANGED) for f in sorted((folder / "m").iterdir())],
                         [cv2.imread(str(f)) for f in sorted((folder / "ov").iterdir())], video)
    for a, b in zip(out[False], out[True], strict=True):
        assert len(a) == len(b) == 9 and all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))


def test_an_error_on_the_writer_thread_ends_the_run_with_that_error(onnx_model, tmp_path, monkeypatch):
    import edgeseg.runtime.loop.sinks as sinks

    written = []
    real = sinks._imwrite

    def failing(path, image):
        if len(written) == 3:
            raise EdgesegError("could not write this file (disk full or not writable?)", path)
        written.append(path)
        real(path, image)

    monkeypatch.setattr(sinks, "_imwrite", failing)
    p = Predictor.load(onnx_model, backend="onnxruntime", threads=1)
    with pytest.raises(EdgesegError, match="disk full"):
        run_loop(p, open_source(str(REPO_ROOT / "calibration")), Renderer(),
                 RunOptions(output=tmp_path / "ov", report=tmp_path / "r.json"))
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["pipeline"] and "disk full" in report["error"] and report["latency"]["frames"] == 3


def test_the_video_encoder_is_the_hardware_one_where_gstreamer_has_it(monkeypatch, tmp_path):
    """Jetson's nvv4l2h264enc first, then x264enc, both through GStreamer, then OpenCV's own writer (issue #36);
    with a stand-in writer, since the PyPI OpenCV has no GStreamer."""
    from edgeseg.runtime.loop import video

    opened: list[str] = []
    available: list[str] = []  # the GStreamer encoders this stand-in OpenCV has

    class Writer:
        def __init__(self, target, *args) -> None:
            self.target, self.args = target, args
            opened.append(target)

        def isOpened(self) -> bool:
            return any(name in self.target for name in available) or self.target.endswith(".mp4")

        def release(self) -> None: ...

    monkeypatch.setattr(video.cv2, "VideoWriter", Writer)
    monkeypatch.setattr(video, "opencv_has_gstreamer", lambda: True)
    out = tmp_path / "v.mp4"
    cases = ((["nvv4l2h264enc", "x264enc"], "nvv4l2h264enc (GStreamer)"), (["x264enc"], "x264enc (GStreamer)"),
             ([], "mp4v (OpenCV)"))
    for encoders, want in cases:
        available[:] = encoders
        writer, name = video.open_video(out, 30.0, (64, 48))
        assert name == want and writer is not None
        if "GStreamer" in name:
            assert writer.target.startswith("appsrc ! ") and writer.target.endswith(f'filesink location="{out}"')
            assert writer.args[0] == cv2.CAP_GSTREAMER and "qtmux" in writer.target
    monkeypatch.setattr(video, "opencv_has_gstreamer", lambda: False)
    opened.clear()
    available[:] = ["x264enc"]
    assert video.open_video(out, 30.0, (64, 48))[1] == "mp4v (OpenCV)" and opened == [str(out)]


def test_the_report_names_the_video_encoder(onnx_model, tmp_path):
    p = Predictor.load(onnx_model, backend="onnxruntime", threads=1)
    r = run_loop(p, open_source(str(REPO_ROOT / "calibration" / "beagle_10.jpg")), Renderer(),
                 RunOptions(save_video=tmp_path / "v.avi"))
    assert r["video_encoder"] == "MJPG (OpenCV)"
