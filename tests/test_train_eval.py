"""Metrics against a hand-computed confusion matrix, eval end to end, and a short real training run."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from edgeseg.compile.checkpoint import load_checkpoint
from edgeseg.evaluation.datasets import IGNORE, oxford_split, read_trimap
from edgeseg.evaluation.evaluate import evaluate
from edgeseg.evaluation.metrics import ConfusionMatrix
from edgeseg.runtime.meta import ModelMeta


def test_metrics_match_a_hand_computed_confusion_matrix():
    truth = np.array([[0, 0, 1], [2, 1, IGNORE]], np.uint8)
    pred = np.array([[0, 1, 1], [2, 2, 0]], np.uint8)
    cm = ConfusionMatrix()
    cm.update(truth, pred)
    # rows = truth, columns = prediction; the IGNORE pixel is not counted
    assert cm.counts.tolist() == [[1, 1, 0], [0, 1, 1], [0, 0, 1]]
    s = cm.summary()
    assert s["pixel_accuracy"] == pytest.approx(3 / 5)
    assert s["iou"] == pytest.approx({"pet": 1 / 2, "background": 1 / 3, "border": 1 / 2})
    assert s["miou"] == pytest.approx((1 / 2 + 1 / 3 + 1 / 2) / 3)
    # animal (pet + border) vs background: TP 2 of truth 3 / predicted 3 -> 2 / 4
    assert s["pet_iou"] == pytest.approx(2 / 4)
    cm.update(np.array([[2, 2]], np.uint8), np.array([[0, 2]], np.uint8))  # pet/border confusions stay animal
    assert cm.summary()["pet_iou"] == pytest.approx(4 / 6)
    assert s["pixels"] == 5


class ConstantPredictor:
    """Predicts one class everywhere, so the expected scores follow from counting trimap pixels."""

    def __init__(self, cls: int) -> None:
        self.cls = cls
        self.meta = ModelMeta()

    def predict(self, frame):
        return np.full(frame.shape[:2], self.cls, np.uint8)

    def describe(self):
        return {"model": f"constant-{self.cls}"}


def test_eval_scores_at_original_resolution(pets3):
    samples = oxford_split(pets3, "test")[:5]
    counts = np.zeros(3)
    for s in samples:
        t = read_trimap(s.mask)
        counts += [(t == c).sum() for c in range(3)]
    results = evaluate([ConstantPredictor(1), ConstantPredictor(0)], samples)
    bg, pet = results
    assert bg["pixel_accuracy"] == pytest.approx(counts[1] / counts.sum())
    assert bg["iou"]["background"] == pytest.approx(counts[1] / counts.sum())
    assert bg["iou"]["pet"] == 0 and bg["pet_iou"] == 0
    assert pet["iou"]["pet"] == pytest.approx(counts[0] / counts.sum())
    assert pet["pet_iou"] == pytest.approx((counts[0] + counts[2]) / counts.sum())
    assert pet["agreement_with_first"] == 0.0 and bg["agreement_with_first"] == 1.0
    assert bg["pixels"] == counts.sum()


def test_eval_scores_each_breed_on_its_own_photos(pets3):
    split = oxford_split(pets3, "test")
    samples = split[:3] + [s for s in split if s.name.startswith("Bengal")][:2]
    (r,) = evaluate([ConstantPredictor(0)], samples, by_breed=True)
    assert {b: v["images"] for b, v in r["breeds"].items()} == {"Abyssinian": 3, "Bengal": 2}
    for b, v in r["breeds"].items():  # each breed scored on its own photos only
        (alone,) = evaluate([ConstantPredictor(0)], [s for s in samples if s.name.startswith(b)])
        assert v["iou"]["pet"] == pytest.approx(alone["iou"]["pet"]) and v["pixels"] == alone["pixels"]
    assert "breeds" not in evaluate([ConstantPredictor(0)], samples)[0]


def test_short_training_run_writes_a_loadable_checkpoint(cli, pets3, tmp_path):
    out = tmp_path / "tiny.pth"
    r = cli("train", "--data", pets3, "-o", out, "--limit", "6", "--epochs", "1", "--batch", "3",
            "--size", "32x32", "--seed", "1", "--dark", "0.5", "--cache", tmp_path / "tiny.npz")
    assert r.code == 0, r.err
    assert "loading 6 photos" in r.out and "epoch 1/1  step 2/3  loss" in r.out  # a log's lines for the bar
    ck = load_checkpoint(out)
    assert ck.meta.arch == "segnet-dsc" and ck.meta.input_size == (32, 32)
    assert json.loads(cli("info", out, "--json").out)["extra"]["recipe"]["dark"] == 0.5
    table = " ".join(cli("info", out).out.replace("│", " ").split())
    assert "blur on 10% of samples, dimmed on 50% of samples" in table  # the record names its augmentations
    assert ck.meta.interpolation == "area"
    assert ck.meta.provenance["train_images"] == 5 and ck.meta.provenance["val_images"] == 1
    assert len(ck.extra["history"]) == 1 and np.isfinite(ck.extra["history"][0]["loss"])
    # resume continues the same run, with the options it was started with (the step schedule's --epochs may grow)
    args = ["train", "--data", pets3, "-o", out, "--limit", "6", "--batch", "3", "--size", "32x32", "--seed", "1",
            "--resume", out.with_name("tiny.last.pth"), "--cache", tmp_path / "tiny.npz"]
    r = cli(*args, "--epochs", "2", "--dark", "0.3")
    assert r.code == 1 and "--dark was 0.5, now 0.3" in r.err and "--init" in r.err
    assert len(load_checkpoint(out).extra["history"]) == 1  # refused before it trained
    r = cli(*args, "--epochs", "2", "--dark", "0.5", "--device", "cpu", "--precision", "fp32")
    assert r.code == 0, r.err
    assert f"reading the training cache {tmp_path / 'tiny.npz'}" in r.out and "loading" not in r.out
    assert [h["epoch"] for h in load_checkpoint(out).extra["history"]] == [1, 2]
    # the training state beside it is not a model (no metadata: its input size would be a guess)
    r = cli("export", out.with_name("tiny.last.pth"), "-o", tmp_path / "x.onnx")
    assert r.code == 1 and "not a model; use tiny.pth" in r.err and not (tmp_path / "x.onnx").exists()
    # but info says how far that run got, as a user of a multi-session CPU stage asks it
    state = json.loads(cli("info", out.with_name("tiny.last.pth"), "--json").out)
    assert state["kind"] == "training_state" and state["kept"] == "tiny.pth" and state["extra"]["epochs_run"] == 2
    table = " ".join(cli("info", out.with_name("tiny.last.pth")).out.replace("│", " ").split())
    assert "train --resume" in table and "epochs run 2 of 2 planned" in table and "dimmed on 50%" in table
    # and the result goes through eval
    r = cli("eval", out, "--data", pets3, "--limit", "3", "--json")
    assert r.code == 0, r.err
    assert json.loads(r.out)["models"][0]["images"] == 3
    # several --data folders, each scored alone, in one run (the card's aims come from one command)
    r = cli("eval", out, "--data", pets3, "--data", pets3.parent / "oxford-pets-extra", "--limit", "2", "--json")
    assert r.code == 0, r.err
    first, extra = json.loads(r.out)["datasets"]
    assert first["data"] == str(pets3) and extra["data"].endswith("oxford-pets-extra")
    assert first["models"][0]["images"] == extra["models"][0]["images"] == 2
    assert first["models"][0]["miou"] != extra["models"][0]["miou"]
    r = cli("eval", out, "--data", pets3, "--data", pets3.parent / "oxford-pets-extra", "--limit", "2")
    assert r.code == 0 and "oxford-pets-3breeds / test" in r.out and "oxford-pets-extra / test" in r.out


def test_a_resumed_run_keeps_its_recipe_but_may_move_machines():
    from edgeseg.training.train import recipe_changes

    started = {"lr": 1e-4, "schedule": "cosine", "epochs": 12, "data": "a, b", "cache": "t.npz", "device": "cpu"}
    assert recipe_changes(started, {**started, "device": "cuda", "data": "", "cache": "u.npz"}) == []
    assert recipe_changes(started, {**started, "epochs": 30}) == ["--epochs was 12, now 30"]  # cosine: its length
    assert recipe_changes({**started, "schedule": "step"}, {**started, "schedule": "step", "epochs": 30}) == []
    assert recipe_changes(started, {**started, "data": "a"}) == ["--data was 'a, b', now 'a'"]
    assert recipe_changes(None, {**started, "lr": 1.0}) == []  # a state saved before recipes were recorded
    # an option an older edgeseg did not record counts as its default; given now, it is a change
    assert recipe_changes(started, {**started, "yolo_data": "", "dark": 0.0}) == []
    assert recipe_changes(started, {**started, "dark": 0.1}) == ["--dark was 0.0, now 0.1"]
    # the animal classes only report, unless a YOLO set trains on them
    assert recipe_changes(started, {**started, "animal_classes": ["cat"]}) == []
    yolo = {**started, "yolo_data": "mine", "animal_classes": [15, 16]}
    assert recipe_changes(yolo, {**yolo, "animal_classes": [15]}) == ["--animal-classes was [15, 16], now [15]"]


def test_lovasz_loss_is_one_minus_the_benchmarks_iou_on_hard_predictions(cli, pets3, tmp_path):
    """On 0/1 probabilities the Lovasz-softmax loss is exactly 1 - IoU, averaged over the classes in the
    labels, with the benchmark's own pixel pooling and ignored pixels; `train --lovasz` adds it and records it."""
    import torch

    from edgeseg.training.losses import lovasz_softmax

    rng = np.random.default_rng(0)
    truth = rng.integers(0, 2, (2, 16, 16))  # pet and background only: border absent from the labels
    truth[0, :3] = IGNORE
    pred = np.where(rng.random(truth.shape) < 0.7, truth, rng.integers(0, 3, truth.shape)).clip(0, 2)
    cm = ConfusionMatrix()
    cm.update(truth, pred)
    iou = cm.summary()["iou"]
    expected = 1 - (iou["pet"] + iou["background"]) / 2
    scores = 50.0 * torch.nn.functional.one_hot(torch.from_numpy(pred), 3).permute(0, 3, 1, 2).float()
    got = lovasz_softmax(scores, torch.from_numpy(truth), IGNORE).item()
    assert got == pytest.approx(expected, abs=1e-6)

    losses = {}
    for weight in ("0", "0.5"):
        out = tmp_path / f"lovasz{weight}.pth"
        r = cli("train", "--data", pets3, "-o", out, "--limit", "4", "--epochs", "1", "--batch", "3",
                "--size", "32x32", "--lovasz", weight)
        assert r.code == 0, r.err
        ck = load_checkpoint(out)
        assert ck.extra["recipe"]["lovasz"] == float(weight)
        losses[weight] = ck.extra["history"][0]["loss"]
    assert losses["0.5"] > losses["0"]  # the same draws and weights at the start: the IoU term adds to the loss


def test_weight_averaging_keeps_the_mean_of_the_last_epochs_when_it_validates_better(cli, pets3, tmp_path):
    """--average 2 over 2 epochs: the mean of epoch 1's and epoch 2's weights, its BatchNorm statistics
    refreshed, scored on the held-out photos and kept (and recorded) when it beats the best epoch."""
    import torch

    small = ("--data", pets3, "--limit", "8", "--batch", "3", "--size", "32x32")
    assert cli("train", *small, "--epochs", "1", "-o", tmp_path / "one.pth").code == 0
    r = cli("train", *small, "--epochs", "2", "--average", "2", "-o", tmp_path / "avg.pth")
    assert r.code == 0, r.err
    w1 = torch.load(tmp_path / "one.last.pth", weights_only=True)["state_dict"]  # the same seed: the same epoch 1
    last = torch.load(tmp_path / "avg.last.pth", weights_only=True)
    w2, mean = last["state_dict"], last["average"]
    name = "dc1.seq.0.pointwise.weight"
    torch.testing.assert_close(mean[f"module.{name}"], (w1[name] + w2[name]) / 2)
    ck = load_checkpoint(tmp_path / "avg.pth")
    assert ck.extra["average"]["epochs"] == [1, 2] and "mean of epochs 1-2  val mIoU" in r.out
    best, history = ck.extra["best"], ck.extra["history"]
    kept = ck.model.state_dict()
    if ck.extra["average"]["val_miou"] > max(h["val_miou"] for h in history):
        assert best["averaged"] == [1, 2] and best["miou"] == ck.extra["average"]["val_miou"]
        torch.testing.assert_close(kept[name], mean[f"module.{name}"])
        # refreshed on the training photos, not the running statistics of either epoch
        assert not torch.equal(kept["bn_input.running_mean"], w2["bn_input.running_mean"])
    else:
        assert "averaged" not in best
    r = cli("info", tmp_path / "avg.pth")
    assert "epochs 1-2: validation mIoU" in r.out
    # --average added when resuming after its first epoch: the record names only the epochs it holds
    r = cli("train", *small, "--epochs", "2", "--average", "2", "-o", tmp_path / "one.pth",
            "--resume", tmp_path / "one.last.pth")
    assert r.code == 0, r.err
    assert load_checkpoint(tmp_path / "one.pth").extra["average"]["epochs"] == [2, 2]


def test_training_computes_in_bf16_where_the_cpu_has_it_and_keeps_fp32_weights(monkeypatch, pets3, tmp_path):
    import torch

    from edgeseg.errors import EdgesegError
    from edgeseg.training import train as tr

    cpu = torch.device("cpu")
    monkeypatch.setattr(tr, "cpu_flags", lambda: frozenset({"avx512f", "avx512_vnni"}))
    assert tr.pick_precision("auto", cpu) == "fp32"
    monkeypatch.setattr(tr, "cpu_flags", lambda: frozenset({"avx512f", "amx_bf16"}))
    assert tr.pick_precision("auto", cpu) == "bf16"
    assert tr.pick_precision("fp32", cpu) == "fp32"
    with pytest.raises(EdgesegError, match="expected auto, fp32 or bf16"):
        tr.pick_precision("fp16", cpu)

    seen = []  # (training?, dtype) of a convolution's output, step by step

    def spied(*args, **kwargs):
        model = build(*args, **kwargs)
        model.dc1.seq[0].pointwise.register_forward_hook(lambda m, i, o: seen.append((m.training, o.dtype)))
        return model

    build = tr.build_model
    monkeypatch.setattr(tr, "build_model", spied)
    out = tmp_path / "bf16.pth"
    tr.train(tr.TrainConfig(data=str(pets3), epochs=1, batch=3, size=(32, 32), limit=6, precision="bf16"), out)
    assert {d for t, d in seen if t} == {torch.bfloat16}  # training steps in bf16
    assert {d for t, d in seen if not t} == {torch.float32}  # validation (which picks the epoch) in FP32
    ck = load_checkpoint(out)
    assert ck.extra["history"][0]["precision"] == "bf16"
    weights = torch.load(out, weights_only=True)["state_dict"]
    assert {w.dtype for w in weights.values()} == {torch.float32, torch.int64}  # FP32 weights, int64 BN counters


def test_training_reports_loading_before_the_first_step_and_defaults_match_the_model_card(pets3, tmp_path):
    from conftest import REPO

    from edgeseg.training.train import TrainConfig, train

    events = []
    train(TrainConfig(data=str(pets3), epochs=1, batch=3, size=(32, 32), limit=6), tmp_path / "t.pth",
          progress=events.append)
    kinds = [e["event"] for e in events]
    first_step = kinds.index("step")
    assert kinds[:first_step] == ["loading"] * 6 and events[first_step - 1] == {"event": "loading", "done": 6,
                                                                                  "total": 6}
    # one truth: the defaults are the recipe the model card says trained the bundled model from scratch
    # (a soup records each ingredient's under soup_of, a stage each parent's under init_from)
    record = load_checkpoint(REPO / "models" / "segnet_dsc.pth").extra
    while "init_from" in record or "soup_of" in record:
        record = record["soup_of"][-1] if "soup_of" in record else record["init_from"]
    recipe = record["recipe"]
    defaults = TrainConfig(data="")
    keys = ("batch", "lr", "step_size", "gamma", "jitter", "size", "epochs", "scale_aug", "negatives",
            "border_weight", "rotate", "blur")
    assert {k: getattr(defaults, k) for k in keys} == {k: recipe[k] if k != "size" else tuple(recipe[k]) for k in keys}


def test_fine_tuning_starts_from_the_checkpoints_weights_and_records_it(cli, pets3, tmp_path):
    import torch

    from edgeseg.compile.checkpoint import save_checkpoint
    from edgeseg.compile.nets import build_model
    from edgeseg.training.train import TrainConfig, train

    small = {"data": str(pets3), "batch": 3, "size": (32, 32), "limit": 6}
    parent = tmp_path / "parent.pth"
    train(TrainConfig(epochs=1, **small), parent)
    # as an older edgeseg recorded it: the folder's whole path
    ck = load_checkpoint(parent)
    old_recipe = {**ck.extra["recipe"], "data": [str(pets3)]}
    save_checkpoint(parent, ck.model, ck.meta, extra={**ck.extra, "recipe": old_recipe}, force=True)
    child = tmp_path / "child.pth"
    # a learning rate too small to move the weights: what comes out is what went in
    train(TrainConfig(epochs=1, lr=1e-12, init=str(parent), **small), child)
    before, after = load_checkpoint(parent), load_checkpoint(child)
    w0, w1 = before.model.dc1.seq[0].pointwise.weight, after.model.dc1.seq[0].pointwise.weight
    assert torch.allclose(w0, w1, atol=1e-6)
    rec = after.extra["init_from"]
    assert rec["file"] == "parent.pth" and rec["sha256"] == before.sha256
    assert rec["history"] == before.extra["history"] and rec["recipe"]["lr"] == 1e-3
    # the record names files, not the trainer's directories
    assert after.extra["recipe"]["init"] == "parent.pth" and after.extra["recipe"]["data"] == pets3.name
    assert rec["recipe"]["data"] == pets3.name
    assert str(tmp_path) not in json.dumps([after.extra, after.meta.provenance])
    assert str(pets3.parent) not in json.dumps([after.extra, after.meta.provenance])
    # cosine: from lr down to lr/100 over the run, one step per epoch
    cos = tmp_path / "cos.pth"
    train(TrainConfig(epochs=2, lr=1e-3, schedule="cosine", init=str(parent), **small), cos)
    assert [h["lr"] for h in load_checkpoint(cos).extra["history"]] == pytest.approx([5.05e-4, 1e-5])
    # a checkpoint of the other architecture, or an unknown schedule, is refused before any photo loads
    torch.save(build_model("segnet").state_dict(), tmp_path / "segnet.pth")
    r = cli("train", "--data", pets3, "-o", tmp_path / "x.pth", "--init", tmp_path / "segnet.pth")
    assert r.code == 1 and "segnet.pth" in r.err and "--arch segnet" in r.err and "Traceback" not in r.err
    r = cli("train", "--data", pets3, "-o", tmp_path / "x.pth", "--schedule", "linear", "--limit", "6", "--epochs", "1",
            "--size", "32x32")  # small: were the check missing, this fails fast instead of training for an hour
    assert r.code == 1 and "expected step or cosine" in r.err
    assert not (tmp_path / "x.pth").exists()


def test_photos_without_animals_train_as_background_and_never_validate(cli, pets3, tmp_path):
    from edgeseg.runtime.masks import BACKGROUND
    from edgeseg.training import trainset

    free = tmp_path / "empty-room"
    free.mkdir()
    for i in range(3):
        cv2.imwrite(str(free / f"frame{i}.jpg"), np.full((90, 160, 3), 40 * i, np.uint8))
    ts = trainset.load_no_animal(free, (32, 32), "area")
    assert ts.images.shape == (3, 3, 32, 32) and (ts.masks == BACKGROUND).all() and ts.negative.all()
    porch = tmp_path / "porch"  # a second folder, repeated --no-animal: both train, none dropped
    porch.mkdir()
    for i in range(2):
        cv2.imwrite(str(porch / f"frame{i}.jpg"), np.full((90, 160, 3), 200 - 40 * i, np.uint8))
    out = tmp_path / "t.pth"
    r = cli("train", "--data", pets3, "-o", out, "--limit", "6", "--epochs", "1", "--batch", "3", "--size", "32x32",
            "--no-animal", free, "--no-animal", porch)
    assert r.code == 0, r.err
    ck = load_checkpoint(out)
    prov = ck.meta.provenance
    assert prov["no_animal_images"] == 5 and prov["train_images"] == 5 and prov["val_images"] == 1
    assert ck.extra["recipe"]["no_animal"] == "empty-room, porch"
    assert "(background crops and folders empty-room, porch)" in cli("info", out).out
    # an empty folder is refused before the photos load, naming the folder
    (tmp_path / "none").mkdir()
    r = cli("train", "--data", pets3, "-o", tmp_path / "x.pth", "--no-animal", tmp_path / "none")
    assert r.code == 1 and "none" in r.err and "no images" in r.err and not (tmp_path / "x.pth").exists()
    # so is a file that does not decode: named once, with the fix, on one line
    (free / "frame9.jpg").write_bytes(b"not a jpeg")
    r = cli("train", "--data", pets3, "-o", tmp_path / "x.pth", "--no-animal", free)
    assert r.code == 1 and r.err.count("frame9.jpg") == 1 and "remove it from the --no-animal folder" in r.err
    assert len(r.err.strip().splitlines()) == 1 and not (tmp_path / "x.pth").exists()


def test_train_refuses_bad_data_and_sizes(cli, tmp_path, pets3):
    r = cli("train", "--data", tmp_path, "-o", tmp_path / "x.pth")
    assert r.code == 1 and "Oxford-IIIT Pet layout" in r.err
    r = cli("train", "--data", pets3, "-o", tmp_path / "x.pth", "--size", "30x30")
    assert r.code == 1 and "multiples of 16" in r.err


def test_rough_masks_add_pet_and_background_with_an_ignored_outline(pets37):
    from edgeseg.training.trainset import load_rough

    images, masks = load_rough(pets37, (64, 64), "area", band=4, skip={"Abyssinian_101"})
    assert len(images) == 369 and images.shape[1:] == (3, 64, 64)
    values = set(np.unique(masks))
    assert values == {0, 1, IGNORE}  # no border class: the outline band is ignored instead
    ignored = (masks == IGNORE).mean()
    assert 0.005 < ignored < 0.3


def test_gray_turns_about_its_share_of_the_batch_grey_and_leaves_the_rest():
    import torch

    from edgeseg.training.augment import random_gray

    x = torch.rand(400, 3, 4, 4)
    y = random_gray(x, 0.25, torch.Generator().manual_seed(0))
    grey = ((y[:, 0] == y[:, 1]) & (y[:, 1] == y[:, 2])).flatten(1).all(1)
    untouched = (y == x).flatten(1).all(1)
    assert (grey | untouched).all() and 70 <= int(grey.sum()) <= 130
    luma = 0.299 * x[grey, 0] + 0.587 * x[grey, 1] + 0.114 * x[grey, 2]
    assert torch.allclose(y[grey, 0], luma)
    assert torch.equal(random_gray(x, 0.0, torch.Generator()), x)


def test_dark_dims_about_its_share_of_the_batch_with_noise_and_leaves_the_rest():
    import torch

    from edgeseg.training.augment import DARK_GAIN, random_dark

    x = torch.rand(400, 3, 16, 16) * 0.5 + 0.5  # bright photos, 0.5-1
    y = random_dark(x, 0.25, torch.Generator().manual_seed(0))
    untouched = (y == x).flatten(1).all(1)
    dimmed = ~untouched
    assert 70 <= int(dimmed.sum()) <= 130 and float(y.min()) >= 0 and float(y.max()) <= 1
    means = y[dimmed].mean(dim=(1, 2, 3))
    assert float(means.max()) < DARK_GAIN[1] + 0.05 and float(means.min()) > 0.02  # dim, not black
    assert float(means.std()) > 0.03  # a range of gains, not one
    flat = random_dark(torch.full((50, 3, 16, 16), 0.8), 1.0, torch.Generator().manual_seed(1))
    assert float(flat.std(dim=(1, 2, 3)).max()) > 0.01  # sensor noise on a flat grey wall
    assert torch.equal(random_dark(x, 0.0, torch.Generator()), x)


def test_random_crop_zooms_in_and_keeps_labels_valid():
    import torch

    from edgeseg.training.augment import random_crop

    g = torch.Generator().manual_seed(0)
    x = torch.rand(4, 3, 32, 32)
    y = torch.randint(0, 3, (4, 32, 32))
    y[:, :4] = IGNORE
    same_x, same_y = random_crop(x, y, 1.0, g)
    assert torch.allclose(same_x, x, atol=1e-5) and torch.equal(same_y, y)  # scale 1: identity
    zx, zy = random_crop(x, y, 0.5, g)
    assert zx.shape == x.shape and zy.dtype == torch.long
    assert set(zy.unique().tolist()) <= {0, 1, 2, IGNORE}  # nearest: no blended label values
    assert not torch.allclose(zx, x, atol=1e-3)


def test_zoom_out_shows_the_whole_photo_smaller_and_ignores_the_border(cli, pets3, tmp_path):
    """--zoom-out: the window is larger than the photo, so the whole photo lands inside the input at
    1/scale of its side (labels with it) and the border around it is ignored by the loss."""
    import torch

    from edgeseg.compile.checkpoint import load_checkpoint
    from edgeseg.training.augment import random_crop

    g = torch.Generator().manual_seed(0)
    y = torch.zeros(16, 64, 64, dtype=torch.long)
    y[:, 16:48, 16:48] = 2  # a square "animal" in the middle
    x = (y.float() / 2)[:, None].repeat(1, 3, 1, 1)
    zx, zy = random_crop(x, y, 1.5, g, max_scale=2.0)  # windows of 1.5..2 sides: zoom-out only
    ignored = (zy == IGNORE).float().mean((1, 2))
    kept = zy != IGNORE
    for i in range(16):  # the photo keeps 1/scale^2 of the input: between 1/4 and 1/2.25
        assert 1 - 1 / 2.25 - 0.05 < ignored[i] < 1 - 1 / 4 + 0.05, ignored[i]
        animal = (zy[i] == 2).float().sum() / kept[i].float().sum()
        assert abs(animal - 0.25) < 0.05, animal  # the square keeps its share of the photo
    agree = (zy[kept] == (zx[:, 0][kept] * 2).round().long()).float().mean()
    assert agree > 0.9, agree  # labels sit on their pixels

    losses = {}
    for zoom in ("1", "1.5"):  # the option reaches the training steps and the recorded recipe
        out = tmp_path / f"zoom{zoom}.pth"
        r = cli("train", "--data", pets3, "-o", out, "--limit", "4", "--epochs", "1", "--batch", "3",
                "--size", "32x32", "--scale-aug", "1", "--zoom-out", zoom)
        assert r.code == 0, r.err
        ck = load_checkpoint(out)
        assert ck.extra["recipe"]["zoom_out"] == float(zoom)
        losses[zoom] = ck.extra["history"][0]["loss"]
    assert losses["1"] != losses["1.5"]


def test_eval_reports_what_share_of_animal_free_photos_is_called_pet(cli, tmp_path):
    from conftest import REPO

    from edgeseg.runtime.backends.predictor import Predictor
    from edgeseg.runtime.images import read_image

    folder = tmp_path / "empty-rooms"
    folder.mkdir()
    rng = np.random.default_rng(0)
    cv2.imwrite(str(folder / "noise.png"), rng.integers(0, 256, (120, 160, 3), dtype=np.uint8))
    cv2.imwrite(str(folder / "beagle.jpg"), read_image(REPO / "calibration" / "beagle_10.jpg"))  # counted as wrong
    model = REPO / "models" / "segnet_dsc.onnx"
    r = cli("eval", model, "--no-animal", folder, "--backend", "onnxruntime", "--precision", "fp32", "--json")
    assert r.code == 0, r.err
    got = json.loads(r.out)["no_animal"]["models"][0]
    p = Predictor.load(model, backend="onnxruntime", precision="fp32")
    masks = {n: p.predict(read_image(folder / n)) for n in ("noise.png", "beagle.jpg")}
    assert got["pet_share"] == pytest.approx(np.mean([(m == 0).mean() for m in masks.values()]))
    assert got["animal_share"] == pytest.approx(np.mean([(m != 1).mean() for m in masks.values()]))
    assert got["worst_image"].endswith("beagle.jpg") and got["worst_pet_share"] > 0.2
    r = cli("eval", model, "--no-animal", folder)
    assert r.code == 0 and "photos without animals" in r.out and "worst photo pet %" in r.out
    assert cli("eval", model).code == 1
    # repeated, each folder is scored alone (none silently dropped); "no_animal" stays the first one's
    other = tmp_path / "porch"
    other.mkdir()
    cv2.imwrite(str(other / "grey.png"), np.full((100, 100, 3), 128, np.uint8))
    r = cli("eval", model, "--no-animal", folder, "--no-animal", other, "--backend", "onnxruntime", "--precision",
            "fp32", "--json")
    assert r.code == 0, r.err
    out = json.loads(r.out)
    assert [(s["folder"], s["models"][0]["images"]) for s in out["no_animal_folders"]] == [(str(folder), 2),
                                                                                          (str(other), 1)]
    assert out["no_animal"] == out["no_animal_folders"][0] and out["no_animal"]["models"][0] == got
    r = cli("eval", model, "--no-animal", folder, "--no-animal", other)
    assert r.code == 0 and "2 photos without animals" in r.out and "porch: 1 photos without animals" in r.out
    (tmp_path / "empty").mkdir()
    r = cli("eval", model, "--no-animal", folder, "--no-animal", tmp_path / "empty")
    assert r.code == 1 and "empty" in r.err and "no images in this folder (--no-animal)" in r.err


def test_rotation_moves_labels_with_the_image_and_ignores_what_came_from_outside():
    import torch

    from edgeseg.training.augment import random_blur, random_crop

    g = torch.Generator().manual_seed(1)
    y = torch.zeros(8, 48, 48, dtype=torch.long)
    y[:, :, 16:32], y[:, :, 32:] = 1, 2  # three vertical stripes
    x = (y.float() / 2)[:, None].repeat(1, 3, 1, 1)  # the image says its own label
    rx, ry = random_crop(x, y, 1.0, g, degrees=30.0)
    inside = ry != IGNORE
    assert (~inside).any() and inside.float().mean() > 0.6  # rotated corners came from outside the photo
    agree = (ry[inside] == (rx[:, 0][inside] * 2).round().long()).float().mean()
    assert agree > 0.9, agree  # a label still describes the pixel it sits on
    assert torch.equal(random_blur(x, 0.0, g), x)
    blurred = random_blur(x, 1.0, g)
    assert not torch.equal(blurred, x) and torch.allclose(blurred.mean(), x.mean(), atol=1e-3)


def test_train_scores_scene_sets_after_every_epoch_as_eval_scores_its_checkpoint(cli, pets3, tmp_path):
    from conftest import REPO

    from edgeseg.runtime.images import read_image

    cal = REPO / "calibration"
    people = tmp_path / "people"  # person masks: numbered photos, 1 left out by --val-numbered
    (people / "images").mkdir(parents=True)
    (people / "masks").mkdir()
    for n, name in ((1, "Bombay_10.jpg"), (2, "beagle_10.jpg"), (3, "Persian_106.jpg")):
        image = read_image(cal / name)
        cv2.imwrite(str(people / "images" / f"{n}.jpg"), image)
        mask = np.zeros(image.shape[:2], np.uint8)
        mask[:, : image.shape[1] // 2] = 255  # "the person": the left half
        cv2.imwrite(str(people / "masks" / f"{n}.png"), mask)
    free = tmp_path / "rooms"
    free.mkdir()
    cv2.imwrite(str(free / "beagle.jpg"), read_image(cal / "beagle_10.jpg"))  # every pet pixel here is wrong
    cv2.imwrite(str(free / "grey.png"), np.full((90, 120, 3), 128, np.uint8))
    yolo = tmp_path / "yolo"
    (yolo / "images").mkdir(parents=True)
    (yolo / "labels").mkdir()
    for name in ("Bengal_107.jpg", "Ragdoll_10.jpg", "Birman_121.jpg"):
        cv2.imwrite(str(yolo / "images" / name), read_image(cal / name))
    (yolo / "labels" / "Bengal_107.txt").write_text("15 0.5 0.5 0.6 0.8\n")  # a box around the middle
    (yolo / "labels" / "Ragdoll_10.txt").write_text("0 0.1 0.1 0.9 0.1 0.9 0.9 0.1 0.9\n")  # "a person": no animal
    (yolo / "data.yaml").write_text("val: images\nnames: {0: person, 15: cat, 16: dog}\n")  # as Ultralytics has it
    out = tmp_path / "t.pth"
    sets = ("--val-people", people, "--val-numbered", "2-3", "--val-no-animal", free, "--val-yolo", yolo / "data.yaml",
            "--animal-classes", "cat")
    r = cli("train", "--data", pets3, "-o", out, "--limit", "6", "--epochs", "2", "--batch", "3", "--size", "96x96",
            "--init", REPO / "models" / "segnet_dsc.pth", "--lr", "1e-5", *sets)
    assert r.code == 0, r.err
    assert "people 2-3: " in r.out and "rooms: " in r.out and "data.yaml (val): animal IoU" in r.out
    ck = load_checkpoint(out)
    rows = [h["scenes"] for h in ck.extra["history"]]
    assert len(rows) == 2 and [s["set"] for s in rows[0]] == ["people", "no_animal", "yolo"]
    assert ck.extra["recipe"]["val_yolo"] == "data.yaml" and ck.extra["recipe"]["val_numbered"] == "2-3"
    assert ck.extra["recipe"]["animal_classes"] == ["cat"] and ck.extra["recipe"]["yolo_split"] is None
    assert ck.extra["recipe"]["person_class"] == "person"
    shown = cli("info", out).out.splitlines()
    scenes = [line for line in shown if "best epoch on scenes" in line]
    assert len(scenes) == 1 and "people 2-3: " in scenes[0] and "rooms: " in scenes[0]
    # fine-tuned from the bundled soup: both ingredients' records pass on, and info names them
    assert [p["file"] for p in ck.extra["init_from"]["soup_of"]] == ["stageZG.pth", "segnet_dsc.pth"]
    assert ck.extra["init_from"]["soup_of"][1]["init_from"]["best"]["epoch"] == 4  # Z's parent, T160
    assert any("a soup of stageZG.pth, segnet_dsc.pth" in line for line in shown if "started from" in line)
    # the kept epoch's figures are eval's figures of the checkpoint written
    people_row, free_row, yolo_row = rows[ck.extra["best"]["epoch"] - 1]
    r = cli("eval", out, "--person-masks", people, "--numbered", "2-3", "--no-animal", free, "--yolo",
            yolo / "data.yaml", "--animal-classes", "cat", "--json")
    assert r.code == 0, r.err
    ev = json.loads(r.out)
    assert (ev["yolo"][0]["split"], ev["yolo"][0]["animal_classes"], ev["yolo"][0]["person_class"]) == ("val", [15], 0)
    r = cli("eval", out, "--yolo", yolo, "--animal-classes", "15", "--person-class", "none", "--json")  # the folder
    assert r.code == 0, r.err
    (no_person,) = json.loads(r.out)["yolo"]
    assert no_person["person_class"] is None and no_person["models"][0]["person_pixels_called_pet"] is None
    assert no_person["split"] is None and no_person["models"][0]["images"] == 3
    r = cli("eval", out, "--yolo", yolo, "--yolo-split", "val")
    assert r.code == 1 and "no images/val/ folder here" in r.err
    r = cli("eval", out, "--yolo", yolo / "data.yaml", "--yolo-split", "test")
    assert r.code == 1 and "no test: split in it (it has: val)" in r.err
    (p,), (f,), (y,) = ev["people"]["models"], ev["no_animal"]["models"], ev["yolo"][0]["models"]
    assert p["images"] == 2 and 0 < p["person_pixels_called_pet"] < 1 and 0.05 < f["pet_share"] < 1
    assert people_row["person_pixels_called_pet"] == pytest.approx(p["person_pixels_called_pet"], abs=2e-3)
    assert people_row["all_pixels_called_pet"] == pytest.approx(p["all_pixels_called_pet"], abs=2e-3)
    assert free_row["pet_share"] == pytest.approx(f["pet_share"], abs=2e-3)
    assert yolo_row["animal_iou_mean"] == pytest.approx(y["animal_iou_mean"], abs=2e-3) and y["with_animal"] == 1
    assert yolo_row["pet_share_without_animal"] == pytest.approx(y["pet_share_without_animal"], abs=2e-3)
    # a folder that is not a scene set is refused before the photos load, naming it (small: were a check
    # missing, these would train for a few seconds, not for an hour)
    quick = ("--data", pets3, "-o", tmp_path / "x.pth", "--limit", "6", "--epochs", "1", "--size", "32x32")
    r = cli("train", *quick, "--val-yolo", tmp_path / "nothing")
    assert r.code == 1 and "nothing" in r.err and not (tmp_path / "x.pth").exists()
    r = cli("train", *quick, "--val-yolo", yolo / "data.yaml", "--animal-classes", "cat,hamster")
    assert r.code == 1 and "no class named 'hamster'" in r.err and not (tmp_path / "x.pth").exists()
    r = cli("train", *quick, "--val-yolo", yolo / "data.yaml", "--yolo-split", "test")
    assert r.code == 1 and "no test: split" in r.err and not (tmp_path / "x.pth").exists()
    r = cli("train", *quick, "--val-numbered", "1-2")
    assert r.code == 1 and "--val-people" in r.err and not (tmp_path / "x.pth").exists()
    r = cli("train", *quick, "--yolo-split", "val")
    assert r.code == 1 and "--yolo-split selects the split of --val-yolo" in r.err and not (tmp_path / "x.pth").exists()
    for option, value in (("--animal-classes", "cat"), ("--person-class", "0")):
        r = cli("train", *quick, option, value)
        assert r.code == 1 and f"{option} applies only with --val-yolo" in r.err and not (tmp_path / "x.pth").exists()
    r = cli("train", *quick, "--val-people", people, "--val-numbered", "3-2")
    assert r.code == 1 and "--val-numbered '3-2'" in r.err and not (tmp_path / "x.pth").exists()
    (tmp_path / "empty").mkdir()
    r = cli("train", *quick, "--val-no-animal", tmp_path / "empty")
    assert r.code == 1 and "no images in this folder (--val-no-animal)" in r.err and not (tmp_path / "x.pth").exists()
