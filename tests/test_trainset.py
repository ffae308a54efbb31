"""Training data for the 37-breed model: several folders, background crops, balance, the portable cache."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest

from edgeseg.errors import EdgesegError
from edgeseg.evaluation.datasets import breed, read_trimap
from edgeseg.training import trainset
from edgeseg.training.train import TrainConfig, train


def test_several_folders_give_their_trainval_lines_once(pets3, pets37):
    from edgeseg.evaluation.datasets import oxford_split

    samples = trainset.trainval_samples([pets3, pets37])
    names = [s.name for s in samples]
    both = {s.name for s in oxford_split(pets3, "trainval")} & {s.name for s in oxford_split(pets37, "trainval")}
    assert len(names) == len(set(names)) == 300 + 370 - len(both)
    assert {breed(n) for n in names} >= {"Abyssinian", "pug", "Sphynx"}
    tests = {s.name for s in oxford_split(pets3, "test")}
    assert not tests & set(names)  # never a test line
    assert trainset.trainval_samples([pets3, pets3]) == trainset.trainval_samples([pets3])


def test_a_name_taken_by_another_photo_is_kept_under_its_folder(pets3, tmp_path):
    """Two composites folders both start at composite_00000: the second folder's photo is not dropped."""
    from edgeseg.evaluation.datasets import oxford_split

    photos = oxford_split(pets3, "trainval")[:2]

    def folder(name: str, photo) -> str:
        root = tmp_path / name
        (root / "images").mkdir(parents=True)
        (root / "annotations" / "trimaps").mkdir(parents=True)
        (root / "annotations" / "trainval.txt").write_text("composite_00000\n")
        (root / "images" / "composite_00000.jpg").write_bytes(photo.image.read_bytes())
        (root / "annotations" / "trimaps" / "composite_00000.png").write_bytes(photo.mask.read_bytes())
        return str(root)

    a, b = folder("a", photos[0]), folder("b", photos[1])
    samples = trainset.trainval_samples([a, b, folder("c", photos[0]), folder("d", photos[1])])
    assert [s.name for s in samples] == ["composite_00000", "composite_00000@b"]  # c repeats a's, d b's
    assert samples[1].image == Path(b) / "images" / "composite_00000.jpg"
    assert all(s.name.startswith(trainset.COMPOSITE) and breed(s.name) == "composite" for s in samples)


def test_background_crops_hold_only_background(pets3):
    trimap = np.full((200, 300), 1, np.uint8)
    trimap[:, 200:] = 0  # an animal on the right third
    x, y, side = trainset.background_square(trimap)
    assert side >= 190 and (trimap[y:y + side, x:x + side] == 1).all()
    assert trainset.background_square(np.zeros((100, 100), np.uint8)) is None  # all animal: none
    samples = trainset.trainval_samples([pets3])[:12]
    ts = trainset.load(samples, (64, 64), "area", negatives=True)
    crops = np.flatnonzero(ts.negative)
    assert 0 < len(crops) <= 12 and len(ts) == 12 + len(crops)
    assert (ts.masks[crops] == 1).all()
    for i in crops:  # each crop is background in its photo's trimap
        trimap = read_trimap(samples[[s.name for s in samples].index(ts.names[i])].mask)
        assert trainset.background_square(trimap) is not None


def test_balanced_weights_give_each_breed_the_same_share():
    names = ["pug_1"] * 2 + [f"havanese_{i}" for i in range(190)] + ["Bombay_3"] * 4
    w = trainset.sample_weights(names, "breed")
    share = Counter()
    for n, x in zip(names, w, strict=True):
        share[breed(n)] += x
    assert np.allclose(list(share.values()), 1.0)
    s = trainset.sample_weights(names, "species")
    assert np.isclose(s[: 192].sum(), s[192:].sum())  # dogs (lower case) and cats alike
    with pytest.raises(EdgesegError, match="--balance"):
        trainset.sample_weights(names, "colour")
    negative = np.zeros(len(names), bool)
    negative[::3] = True  # every third sample a background crop
    d = trainset.draw_weights(names, negative, "breed", 0.2)
    assert np.isclose(d[negative].sum() / d.sum(), 0.2)
    assert np.allclose(trainset.draw_weights(names, negative, "none", 0.0), 1.0)


def test_cache_travels_without_the_photos_and_trains(pets3, tmp_path):
    cache = tmp_path / "train.npz"
    cfg = TrainConfig(data=str(pets3), epochs=1, batch=4, size=(32, 32), limit=8, negatives=0.2, cache=str(cache),
                      balance="breed", border_weight=3.0)
    first = train(cfg, tmp_path / "a.pth")
    size = cache.stat().st_size
    assert cache.exists() and size < 8 * 2 * 4000, size  # 8 photos and their crops at 32x32: a few KB each
    ts, info = trainset.load_cache(cache)
    assert info["negatives"] is True and info["size"] == [32, 32] and info["folders"] == [str(pets3)]
    direct = trainset.load(trainset.trainval_samples([pets3])[:8], (32, 32), "area", negatives=True)
    assert ts.names == direct.names and (ts.masks == direct.masks).all() and (ts.negative == direct.negative).all()
    assert np.abs(ts.images.astype(int) - direct.images).mean() < 3  # JPEG quality 95
    # on a machine without the photos: the cache alone
    events: list[dict] = []
    again = train(TrainConfig(data=(), epochs=1, batch=4, size=(32, 32), negatives=0.2, cache=str(cache)),
                  tmp_path / "b.pth", progress=events.append)
    assert events[0] == {"event": "cache", "path": str(cache)}  # a log's first line, before the cache decodes
    assert again["history"][0]["loss"] > 0 and first["history"][0]["loss"] > 0
    four = train(TrainConfig(data=(), epochs=1, batch=4, size=(32, 32), negatives=0.2, cache=str(cache), limit=4),
                 tmp_path / "e.pth")
    from edgeseg.compile.checkpoint import load_checkpoint

    prov = load_checkpoint(tmp_path / "e.pth").meta.provenance
    assert four["history"] and prov["train_images"] + prov["val_images"] == 4  # --limit on the cache alone
    with pytest.raises(EdgesegError, match="built from other photos"):
        train(TrainConfig(data=str(pets3), epochs=1, size=(32, 32), limit=6, negatives=0.2, cache=str(cache)),
              tmp_path / "c.pth")
    with pytest.raises(EdgesegError, match="give --data"):
        train(TrainConfig(data=(), epochs=1, size=(32, 32), cache=str(tmp_path / "missing.npz")), tmp_path / "d.pth")


def test_a_recorded_recipe_keeps_file_names_only_and_a_comma_in_one_name():
    from edgeseg.training.train import portable

    rec = portable({"data": ("/d/oxford-pets-3breeds", "/d/extra"), "cache": "/x/pets,v2.npz", "init": "/m/a.pth",
                    "no_animal": None, "lr": 1e-4, "size": (128, 128)})
    assert rec == {"data": "oxford-pets-3breeds, extra", "cache": "pets,v2.npz", "init": "a.pth", "no_animal": None,
                   "lr": 1e-4, "size": [128, 128]}
    assert portable(rec) == rec  # a parent's record, already portable, stays as it is


def test_eval_holdout_scores_the_photos_train_validates_on(cli, exported, pets3, tmp_path):
    """eval --split holdout finds train's hold-out from the split files and trimaps alone: a repeated photo,
    a scene whose trimap holds no animal and a composites folder are left out of it as train leaves them."""
    photos = trainset.trainval_samples([pets3])[:16]

    def folder(name: str, picked, prefix: str = "") -> str:
        root = tmp_path / name
        (root / "images").mkdir(parents=True)
        (root / "annotations" / "trimaps").mkdir(parents=True)
        lines = []
        for p in picked:
            lines.append(prefix + p.name)
            (root / "images" / f"{lines[-1]}.jpg").write_bytes(p.image.read_bytes())
            (root / "annotations" / "trimaps" / f"{lines[-1]}.png").write_bytes(p.mask.read_bytes())
        (root / "annotations" / "trainval.txt").write_text("\n".join(lines) + "\n")
        return str(root)

    a = folder("a", photos[:7])
    empty = Path(a) / "annotations" / "trimaps" / f"{photos[1].name}.png"
    cv2.imwrite(str(empty), np.full((20, 30), 2, np.uint8))  # trimap value 2: all background, a scene
    folders = [a, folder("comp", photos[7:10], trainset.COMPOSITE), folder("b", photos[5:16])]  # b repeats 2
    ts = trainset.load(trainset.trainval_samples(folders), (32, 32), "area", negatives=True)
    for seed in range(4):
        _, held = trainset.validation_split(ts, 0.3, seed)
        assert [s.name for s in trainset.holdout_samples(folders, 0.3, seed)] == sorted(
            held, key=[s.name for s in photos].index)
    onnx_path = exported["segnet-dsc"][0]
    args = ["eval", onnx_path, "--data", folders[0], "--data", folders[1], "--data", folders[2], "--split", "holdout"]
    r = cli(*args, "--seed", "3", "--json")
    assert r.code == 0, r.err
    out = json.loads(r.out)
    _, held = trainset.validation_split(ts, 0.1, 3)
    assert out["split"] == "holdout" and out["seed"] == 3 and out["data"] == " + ".join(folders)
    assert out["models"][0]["images"] == len(held) == 2
    assert held != trainset.validation_split(ts, 0.1, 0)[1]  # so the default seed scores other photos
    assert json.loads(cli(*args, "--json").out)["models"][0]["miou"] != out["models"][0]["miou"]
    r = cli(*args)
    assert r.code == 0 and "holdout: 2 images" in r.out
    for given, needs in ((["--data", a, "--seed", "3"], "--split holdout"),  # else silently the test split
                         (["--data", a, "--numbered", "1-3"], "--person-masks"),
                         (["--data", a, "--yolo-split", "val"], "--yolo"),
                         (["--data", a, "--animal-classes", "cat"], "--yolo"),
                         (["--data", a, "--person-class", "none"], "--yolo"),
                         (["--no-animal", f"{a}/images", "--limit", "3"], "--data"),
                         (["--no-animal", f"{a}/images", "--by-breed", "2"], "--data"),
                         (["--no-animal", f"{a}/images", "--split", "trainval"], "--data")):
        r = cli("eval", onnx_path, *given)
        assert r.code == 1 and f"{given[2]} applies only with {needs}" in r.err and "Traceback" not in r.err


def test_shuffle_seed_draws_anew_on_the_same_hold_out(cli, pets3, tmp_path, monkeypatch):
    """--shuffle-seed: other draws (a fresh network's weights, shuffling, augmentation) validated on the photos
    --seed holds out, so that runs meant as one soup's ingredients are scored alike."""
    import torch

    from edgeseg.compile.checkpoint import load_checkpoint

    seeds = []
    split = trainset.validation_split
    monkeypatch.setattr(trainset, "validation_split", lambda ts, f, seed: seeds.append(seed) or split(ts, f, seed))
    small = ("--data", pets3, "--limit", "6", "--epochs", "1", "--batch", "3", "--size", "32x32")
    for name, more in (("a", ()), ("b", ("--shuffle-seed", "7"))):
        r = cli("train", *small, *more, "-o", tmp_path / f"{name}.pth")
        assert r.code == 0, r.err
    assert seeds == [0, 0]
    a, b = load_checkpoint(tmp_path / "a.pth"), load_checkpoint(tmp_path / "b.pth")
    assert not torch.equal(a.model.dc1.seq[0].pointwise.weight, b.model.dc1.seq[0].pointwise.weight)
    assert a.extra["recipe"]["shuffle_seed"] is None and b.extra["recipe"]["shuffle_seed"] == 7
    assert "seed 0, shuffle seed 7" in " ".join(cli("info", tmp_path / "b.pth").out.replace("│", " ").split())
    # outside NumPy's seeds: a usage error naming the option, not an internal one
    out = ("-o", tmp_path / "c")
    for args, option in ((("train", *small, *out, "--shuffle-seed", "-1"), "--shuffle-seed"),
                         (("train", *small, *out, "--seed", str(2**32)), "--seed"),
                         (("composites", "--scenes", pets3, *out, "--seed", "-1"), "--seed"),
                         (("eval", tmp_path / "a.pth", "--data", pets3, "--split", "holdout", "--seed", "-1"),
                          "--seed")):
        r = cli(*args)
        assert r.code == 2 and f"'{option}'" in r.err and "internal error" not in r.err, r.err
        assert not (tmp_path / "c").exists()


def test_yolo_photos_train_as_trimaps_and_never_validate(cli, pets3, tmp_path):
    """--yolo-data: a user's own YOLO-labelled scenes train as Oxford trimaps would (the animal pet, a border
    band across its outline, people and the rest background), its train split only, none held out."""
    from edgeseg.compile.checkpoint import load_checkpoint
    from edgeseg.evaluation.yolo_data import Shape, load_yolo_set, training_split
    from edgeseg.runtime.masks import BACKGROUND, BORDER, PET

    square = Shape(15, np.array([[0.25, 0.25], [0.75, 0.25], [0.75, 0.75], [0.25, 0.75]]))
    person = Shape(0, np.array([[0.0, 0.0], [0.2, 0.0], [0.2, 1.0], [0.0, 1.0]]))
    ids = trainset.yolo_trimap([square, person], {15}, (400, 600))  # band: 1% of 600 px either way
    row = ids[200]  # the square fills columns 150-450; 6 px of border either side of each edge
    assert (row[:144] == BACKGROUND).all() and (row[457:] == BACKGROUND).all()  # the person is background
    assert (row[144:156] == BORDER).all() and (row[156:445] == PET).all() and (row[445:457] == BORDER).all()
    assert (trainset.yolo_trimap([square], {16}, (400, 600)) == BACKGROUND).all()  # not an animal class here
    small = trainset.yolo_trimap([square], {15}, (64, 64))
    assert (small[32, 13:19] == BORDER).all()  # at least 3 px either way on a small photo

    root = tmp_path / "mine"
    for split in ("train", "val"):
        (root / "images" / split).mkdir(parents=True)
        (root / "labels" / split).mkdir(parents=True)
    photo = cv2.imread(str(trainset.trainval_samples([pets3])[0].image))
    cv2.imwrite(str(root / "images" / "train" / "cat.jpg"), photo)
    (root / "labels" / "train" / "cat.txt").write_text("15 0.25 0.25 0.75 0.25 0.75 0.75 0.25 0.75\n"
                                                      "0 0 0 0.2 0 0.2 1 0 1\n")
    cv2.imwrite(str(root / "images" / "train" / "room.jpg"), photo[:60, :60])  # no label file: no animal
    cv2.imwrite(str(root / "images" / "val" / "held.jpg"), photo)
    assert training_split(root) == "train" and training_split(root / "data.yaml") == "train"
    ts = trainset.load_yolo(load_yolo_set(root, "train"), [15], (32, 32), "area")
    assert ts.names == ["yolo:cat.jpg", "yolo:room.jpg"] and ts.negative.tolist() == [False, True]
    assert (ts.masks[0] == PET).sum() > 50 and (ts.masks[1] == BACKGROUND).all()
    oxford = trainset.load(trainset.trainval_samples([pets3])[:12], (32, 32), "area")
    assert trainset.validation_split(oxford + ts, 0.1, 0)[1] == trainset.validation_split(oxford, 0.1, 0)[1]

    out = tmp_path / "t.pth"
    r = cli("train", "--data", pets3, "-o", out, "--limit", "6", "--epochs", "1", "--batch", "3", "--size", "32x32",
            "--yolo-data", root, "--animal-classes", "15")
    assert r.code == 0, r.err
    ck = load_checkpoint(out)
    prov = ck.meta.provenance
    assert (prov["yolo_images"], prov["train_images"], prov["val_images"], prov["no_animal_images"]) == (2, 5, 1, 0)
    assert ck.extra["recipe"]["yolo_data"] == "mine" and ck.extra["recipe"]["animal_classes"] == [15]
    assert "YOLO sets mine (animal classes 15)" in cli("info", out).out
    # --person-class only scores --val-yolo sets: refused with --yolo-data alone, before anything loads
    r = cli("train", "--data", pets3, "-o", tmp_path / "x.pth", "--yolo-data", root, "--person-class", "0")
    assert r.code == 1 and "--person-class applies only with --val-yolo" in r.err
    (root / "images" / "train" / "room.jpg").write_bytes(b"not a jpeg")  # named, with the fix, on one line
    r = cli("train", "--data", pets3, "-o", tmp_path / "x.pth", "--yolo-data", root)
    assert r.code == 1 and r.err.count("room.jpg") == 1 and "remove it from the --yolo-data set" in r.err
    assert len(r.err.strip().splitlines()) == 1 and not (tmp_path / "x.pth").exists()
