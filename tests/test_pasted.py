"""Labelled composites (composites --pets): pets cut by their trimaps, pasted small and large into scenes,
written in the Oxford layout that train --data reads; the validation hold-out never pasted nor moved."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from edgeseg.evaluation.datasets import IGNORE, oxford_split, read_trimap
from edgeseg.runtime.masks import BACKGROUND, BORDER, PET
from edgeseg.training import pasted, trainset

SIDE = 32


def pet_cache(path: Path, n: int = 10, val_fraction: float = 0.2) -> set[str]:
    """A cache of ``n`` photos, each a black frame with a square pet, a border ring around it and a background
    crop; the pets of the photos train would hold out (``val_fraction``, seed 0) are blue, the others red.
    Returns the held-out names."""
    names = [f"Breed_{i}" for i in range(n)]
    masks = np.full((n, SIDE, SIDE), BACKGROUND, np.uint8)
    masks[:, 7:25, 7:25] = BORDER
    masks[:, 8:24, 8:24] = PET
    masks[:, 0, :] = BORDER  # a trimap's border along the frame's edge, as Oxford's have: never pasted
    images = np.zeros((n, 3, SIDE, SIDE), np.uint8)
    ts = trainset.TrainSet(images, masks, names, np.zeros(n, bool))
    _, held = trainset.validation_split(ts, val_fraction, 0)
    for i, name in enumerate(names):
        images[i, 2 if name in held else 0, 8:24, 8:24] = 255  # RGB: blue held out, red trained on
    crop = trainset.TrainSet(np.zeros((1, 3, SIDE, SIDE), np.uint8), np.ones((1, SIDE, SIDE), np.uint8),
                             ["Breed_0"], np.ones(1, bool))
    trainset.save_cache(ts + crop, path, {})
    return held


@pytest.fixture
def scenes(tmp_path: Path) -> Path:
    folder = tmp_path / "people"
    folder.mkdir()
    for k in (1, 2, 3, 201):  # 201: outside --numbered 1-3, must never be used
        img = np.zeros((60, 90, 3), np.uint8)
        img[:, :, 1] = 200 if k == 201 else 60 + k  # BGR: the green channel names the scene
        cv2.imwrite(str(folder / f"{k}.png"), img)
    return folder


def test_pets_are_cut_by_their_trimap_without_the_frame_edge_border(tmp_path):
    pet_cache(tmp_path / "c.npz")
    cuts = pasted.pet_cutouts(tmp_path / "c.npz", 0.2, 0)
    image, ids = cuts[0]
    assert ids.shape == (18, 18)  # the pet and its border ring, not the border along the top edge
    # the ring is pasted with the pet but left out of the loss: a pasted edge is not Oxford's border band
    assert (ids[1:-1, 1:-1] == PET).all() and (ids[0] == IGNORE).all() and set(np.unique(ids)) == {PET, IGNORE}
    assert image.shape == (18, 18, 3)


def test_composites_hold_no_validation_photo_and_only_numbered_scenes(tmp_path, scenes):
    pet_cache(tmp_path / "c.npz")
    pets = pasted.pet_cutouts(tmp_path / "c.npz", 0.2, 0)
    assert len(pets) == 8 and all(image[:, :, 0].max() < 60 for image, _ in pets)  # no blue (held-out) pet
    frames = pasted.load_scenes([scenes], (1, 3))
    assert sorted(int(f[0, 0, 1]) for f in frames) == [61, 62, 63]  # 201 is outside 1-3
    scales = []
    for image, labels in pasted.pasted(pets, frames, 200, SIDE, seed=3):
        assert image[:, :, 0].max() < 60 and (image[:, :, 1][labels == BACKGROUND] < 100).all()
        pet = labels == PET
        assert pet.any() and (image[:, :, 2][pet] > 0).mean() > 0.5  # the pet's own pixels where it is labelled
        assert not (labels == BORDER).any()
        ys, xs = np.nonzero(labels != BACKGROUND)
        scales.append(max(np.ptp(ys), np.ptp(xs)) + 1)
    # its long side log-uniform in 10-90% of the frame (less where part of it is outside): small and large
    assert min(scales) <= 0.15 * SIDE and max(scales) >= 0.8 * SIDE and np.median(scales) < 0.5 * SIDE


def test_the_folder_is_the_oxford_layout(tmp_path, scenes):
    pet_cache(tmp_path / "c.npz")
    out = tmp_path / "comp"
    r = pasted.write_pasted(tmp_path / "c.npz", [scenes], out, 5, numbered=(1, 3), size=SIDE, val_fraction=0.2)
    assert r == {"out": str(out), "composites": 5, "scenes": 3, "pets": 8}
    samples = oxford_split(out, "trainval")
    assert [s.name for s in samples] == [f"composite_{i:05d}" for i in range(5)] + [
        f"composite_scene_{j:04d}" for j in range(3)]
    for s in samples:
        tri = read_trimap(s.mask)
        assert cv2.imread(str(s.image)).shape == (SIDE, SIDE, 3) and tri.shape == (SIDE, SIDE)
        assert (tri == PET).any() != s.name.startswith("composite_scene")  # scenes whole: all background
        assert set(np.unique(cv2.imread(str(s.mask), cv2.IMREAD_UNCHANGED))) <= {0, 1, 2}  # 0: ignored ring
    # train reads the scenes whole as "no animal" examples (drawn within --negatives' share), the rest as photos
    ts = trainset.load(samples, (SIDE, SIDE), "area")
    assert [n for n, neg in zip(ts.names, ts.negative, strict=True) if neg] == [
        f"composite_scene_{j:04d}" for j in range(3)]


def test_same_seed_same_composites(tmp_path, scenes):
    pet_cache(tmp_path / "c.npz")
    pets = pasted.pet_cutouts(tmp_path / "c.npz", 0.2, 0)
    frames = pasted.load_scenes([scenes], (1, 3))
    a = list(pasted.pasted(pets, frames, 8, SIDE, seed=1))
    b = list(pasted.pasted(pets, frames, 8, SIDE, seed=1))
    c = list(pasted.pasted(pets, frames, 8, SIDE, seed=2))
    assert all((x[0] == y[0]).all() and (x[1] == y[1]).all() for x, y in zip(a, b, strict=True))
    assert any((x[0] != y[0]).any() for x, y in zip(a, c, strict=True))


def test_adding_composites_leaves_the_validation_hold_out_as_it_was(tmp_path, scenes):
    pet_cache(tmp_path / "c.npz", n=20, val_fraction=0.1)
    ts, _ = trainset.load_cache(tmp_path / "c.npz")
    val_idx, held = trainset.validation_split(ts, 0.1, 0)
    pasted.write_pasted(tmp_path / "c.npz", [scenes], tmp_path / "comp", 30, numbered=(1, 3), size=SIDE)
    more = ts + trainset.load(oxford_split(tmp_path / "comp", "trainval"), (SIDE, SIDE), "area", negatives=True)
    val_more, held_more = trainset.validation_split(more, 0.1, 0)
    assert held_more == held and (val_more == val_idx).all()


def test_cli_writes_an_oxford_folder_train_reads(cli, tmp_path, scenes):
    pet_cache(tmp_path / "c.npz")
    out = tmp_path / "comp"
    r = cli("composites", "--pets", tmp_path / "c.npz", "--scenes", scenes, "--numbered", "1-3", "--count", "6",
            "--size", str(SIDE), "-o", out)
    assert r.code == 0, r.out + r.err
    assert "6 composites (9 pets on 3 scene photos)" in r.out  # 10 photos, one held out at train's 0.1
    assert len(oxford_split(out, "trainval")) == 9 and not list(tmp_path.glob(".comp*"))
    for args, words in ((("--count", "2"), "--force"),
                        (("--count", "2", "--cache", tmp_path / "c.npz"), "--cache and --skip"),
                        ((scenes, "--count", "2"), "not both")):
        r = cli("composites", "--pets", tmp_path / "c.npz", "--scenes", scenes, *args, "-o", out)
        assert r.code == 1 and words in r.err and "Traceback" not in r.err, r.err
    r = cli("composites", "--pets", tmp_path / "c.npz", "-o", tmp_path / "x")
    assert r.code == 1 and "--pets needs --scenes" in r.err
    r = cli("composites", "--pets", tmp_path / "c.npz", "--scenes", scenes, "--numbered", "500-600", "-o",
            tmp_path / "x")
    assert r.code == 1 and "no scene photos numbered 500-600" in r.err and not (tmp_path / "x").exists()
