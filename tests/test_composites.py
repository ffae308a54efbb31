"""Animal-free composites: cut-outs pasted on backgrounds, reproducible, written whole, held-out crops left out."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from edgeseg.errors import EdgesegError
from edgeseg.training import composites, trainset


def cutout(side: int = 40, colour: tuple[int, int, int] = (0, 0, 255)) -> np.ndarray:
    """A BGRA square of ``colour``, opaque on its left half, transparent on its right half."""
    img = np.zeros((side, side, 4), np.uint8)
    img[:, :, :3] = colour
    img[:, : side // 2, 3] = 255
    return img


def write_cutouts(folder: Path) -> Path:
    folder.mkdir()
    cv2.imwrite(str(folder / "cup.png"), cutout())
    cv2.imwrite(str(folder / "cat.png"), cutout(colour=(0, 255, 0)))  # to be skipped by name
    cv2.imwrite(str(folder / "flat.png"), np.full((20, 20, 3), 99, np.uint8))  # no alpha: not a cut-out
    return folder


def test_a_pasted_cutout_shows_its_opaque_part_only():
    canvas = np.zeros((64, 64, 3), np.uint8)
    trimmed = composites.trim(cutout())
    assert trimmed.shape == (40, 20, 4) and (trimmed[:, :, 3] == 255).all()  # the transparent half cut away
    composites.paste(canvas, trimmed, np.random.default_rng(0))
    red = (canvas[:, :, 2] > 100) & (canvas[:, :, 1] < 20)
    # its long side 35-100% of the canvas, at most a quarter of it outside
    ys, xs = np.nonzero(red)
    assert red.any() and 0.75 * 0.35 * 64 - 2 <= max(np.ptp(ys), np.ptp(xs)) + 1 <= 64
    assert (canvas[~red] < 100).all()  # nothing else painted


def test_composites_are_reproducible_and_hold_the_objects(tmp_path):
    cuts = composites.load_cutouts([write_cutouts(tmp_path / "objects")], skip=["cat"])
    assert len(cuts) == 1 and cuts[0].shape == (40, 20, 4)  # trimmed to its opaque box; cat and flat left out
    scene = np.full((90, 120, 3), 30, np.uint8)
    a = list(composites.composites(cuts, [], [scene], 12, 32, seed=5))
    b = list(composites.composites(cuts, [], [scene], 12, 32, seed=5))
    c = list(composites.composites(cuts, [], [scene], 12, 32, seed=6))
    assert all(x.shape == (32, 32, 3) and x.dtype == np.uint8 for x in a)
    assert all((x == y).all() for x, y in zip(a, b, strict=True))
    assert any((x != y).any() for x, y in zip(a, c, strict=True))
    assert all((x[:, :, 2] > 150).any() for x in a)  # every picture holds a red object


def test_training_crops_leave_out_the_validation_photos(pets3, tmp_path):
    ts = trainset.load(trainset.trainval_samples([pets3])[:30], (32, 32), "area", negatives=True)
    cache = tmp_path / "t.npz"
    trainset.save_cache(ts, cache, {})
    ts, _ = trainset.load_cache(cache)  # JPEG in the cache: compare with what it holds
    _, held = trainset.validation_split(ts, 0.2, 0)
    crops = composites.training_crops(cache, 0.2, 0)
    expected = [i for i in np.flatnonzero(ts.negative) if ts.names[i] not in held]
    assert held and len(crops) == len(expected) < ts.negative.sum()
    assert all((c == ts.images[i].transpose(1, 2, 0)[:, :, ::-1]).all() for c, i in zip(crops, expected, strict=True))


def test_cli_writes_a_folder_train_reads_and_refuses_to_overwrite(cli, tmp_path):
    objects, scenes = write_cutouts(tmp_path / "objects"), tmp_path / "scenes"
    scenes.mkdir()
    cv2.imwrite(str(scenes / "room.jpg"), np.full((60, 80, 3), 120, np.uint8))
    out = tmp_path / "neg"
    r = cli("composites", objects, "--scenes", scenes, "--skip", "cat", "--count", "5", "--size", "32", "-o", out)
    assert r.code == 0, r.out + r.err
    assert sorted(p.name for p in out.iterdir()) == [f"c{i:04d}.png" for i in range(5)] + ["s00.png"]
    assert not list(tmp_path.glob(".neg*"))  # no temporary folder left
    free = trainset.load_no_animal(out, (32, 32), "area")
    assert len(free) == 6 and free.negative.all() and (free.masks == 1).all()
    r = cli("composites", objects, "--count", "2", "-o", out)
    assert r.code != 0 and "--force" in r.out + r.err and len(list(out.iterdir())) == 6
    r = cli("composites", objects, "--count", "2", "-o", out, "--force")
    assert r.code == 0 and len(list(out.iterdir())) == 2
    r = cli("composites", scenes, "-o", tmp_path / "none")
    assert r.code != 0 and "alpha channel" in r.out + r.err and "Traceback" not in r.out + r.err
    assert not (tmp_path / "none").exists()
    r = cli("composites", objects, "--cache", tmp_path / "train.npz", "-o", tmp_path / "none")
    assert r.code != 0 and "train.npz: no such training cache" in r.err and "Traceback" not in r.err
    r = cli("composites", objects, "--numbered", "1-5", "--count", "2", "-o", tmp_path / "none")  # selects --scenes
    assert r.code == 1 and "--numbered applies only with --scenes" in r.err and not (tmp_path / "none").exists()


def test_an_interrupted_run_leaves_no_folder_behind(tmp_path, monkeypatch):
    objects = write_cutouts(tmp_path / "objects")

    def stop(done: int, total: int) -> None:
        if done == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        composites.write_composites([objects], tmp_path / "neg", 5, size=32, progress=stop)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["objects"]


def test_a_failed_write_is_an_error_not_a_missing_picture(tmp_path, monkeypatch):
    objects = write_cutouts(tmp_path / "objects")
    monkeypatch.setattr(composites.cv2, "imwrite", lambda *a: False)  # what OpenCV does on a full disk
    with pytest.raises(EdgesegError, match="could not be written"):
        composites.write_composites([objects], tmp_path / "neg", 3, size=32)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["objects"]


def test_a_corrupt_cutout_is_named_not_skipped(tmp_path):
    objects = write_cutouts(tmp_path / "objects")
    (objects / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    with pytest.raises(EdgesegError, match=r"not a decodable image.*remove it from the objects folder") as e:
        composites.write_composites([objects], tmp_path / "neg", 3, size=32)
    assert e.value.path.name == "broken.png"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["objects"]


def write_people(root: Path) -> Path:
    """Photo 1: a red person (an L) with a blue one inside its box, not touching, and a speck; its mask half the
    photo's size. Photo 2: one person, the whole frame."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    red, blue = np.zeros((40, 60), bool), np.zeros((40, 60), bool)
    red[5:35, 5:10] = red[30:35, 5:30] = True
    blue[10:25, 15:25] = True
    photo = np.full((80, 120, 3), 200, np.uint8)
    photo[np.kron(red, np.ones((2, 2), bool))] = (0, 0, 255)
    photo[np.kron(blue, np.ones((2, 2), bool))] = (255, 0, 0)
    mask = (red | blue).astype(np.uint8) * 255
    mask[0, 59] = 255  # a speck: under 1% of the photo, not a person to cut out
    cv2.imwrite(str(root / "images" / "1.png"), photo)
    cv2.imwrite(str(root / "masks" / "1.png"), mask)
    cv2.imwrite(str(root / "images" / "2.png"), photo)
    cv2.imwrite(str(root / "masks" / "2.png"), np.full((40, 60), 255, np.uint8))
    return root


def test_people_are_cut_out_by_their_masks_one_per_region(tmp_path):
    cuts = composites.person_cutouts(write_people(tmp_path / "people"), (1, 1))
    assert [c.shape for c in cuts] == [(60, 50, 4), (30, 20, 4)]  # the mask resized to the photo; no speck
    opaque = cuts[0][:, :, 3] == 255
    assert opaque.sum() == 4 * 250 and (cuts[0][opaque][:, :3] == (0, 0, 255)).all()
    assert (cuts[0][10:40, 20:40, 3] == 0).all()  # the blue person in the red one's box is not part of it
    assert (cuts[1][:, :, 3] == 255).all() and (cuts[1][:, :, :3] == (255, 0, 0)).all()
    assert len(composites.person_cutouts(tmp_path / "people")) == 3  # photo 2: one person, the whole frame
    with pytest.raises(EdgesegError, match="no cut-outs: give folders of objects, person masks, or both"):
        composites.write_composites([], tmp_path / "neg", 3, size=32)
    (tmp_path / "people" / "images" / "3.png").write_bytes((tmp_path / "people" / "images" / "1.png").read_bytes())
    cv2.imwrite(str(tmp_path / "people" / "masks" / "3.png"), np.zeros((40, 60), np.uint8))
    with pytest.raises(EdgesegError, match="no person region of at least 1% of its photo"):
        composites.person_cutouts(tmp_path / "people", (3, 3))  # a photo whose mask holds no one
    (tmp_path / "people" / "masks" / "2.png").write_bytes(b"not a png")
    with pytest.raises(EdgesegError, match="not a readable mask PNG") as e:
        composites.person_cutouts(tmp_path / "people")
    assert e.value.path.name == "2.png"


def test_cli_pastes_people_from_person_masks(cli, tmp_path):
    people, out = write_people(tmp_path / "people"), tmp_path / "neg"
    r = cli("composites", "--person-masks", people, "--person-numbered", "1-1", "--count", "4", "--size", "32",
            "-o", out)
    assert r.code == 0 and "2 cut-outs" in r.out, r.out + r.err
    pictures = [cv2.imread(str(out / f"c{i:04d}.png")) for i in range(4)]
    assert all((p[:, :, 2] > 150).any() or (p[:, :, 0] > 150).any() for p in pictures)  # a person in each
    objects = write_cutouts(tmp_path / "objects")
    r = cli("composites", objects, "--person-masks", people, "--count", "2", "--size", "32", "-o", tmp_path / "both")
    assert r.code == 0 and "5 cut-outs" in r.out, r.out + r.err  # cup, cat and the three people
    r = cli("composites", objects, "--person-numbered", "1-1", "-o", tmp_path / "none")
    assert r.code == 1 and "--person-numbered applies only with --person-masks" in r.err
    r = cli("composites", "--person-masks", tmp_path, "-o", tmp_path / "none")
    assert r.code == 1 and "expected images/ and masks/" in r.err and "Traceback" not in r.err
    assert not (tmp_path / "none").exists()
