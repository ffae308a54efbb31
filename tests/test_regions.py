"""--region-confidence: connected animal regions the model is unsure of, on average, become background."""

from __future__ import annotations

import json
import shutil
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
from conftest import REPO

from edgeseg.cli.common import set_mask_options
from edgeseg.errors import EdgesegError
from edgeseg.runtime.masks import BACKGROUND, PET, Masks, drop_unsure_regions

BUNDLED = REPO / "models" / "segnet_dsc.onnx"


def two_regions() -> np.ndarray:
    """Background scores 0; a sure pet square (probability 0.99) and, apart from it, an unsure one (0.57)."""
    logits = np.zeros((3, 16, 16), np.float32)
    logits[2] = -5.0  # no border anywhere
    logits[PET] = -5.0
    logits[PET, 2:6, 2:6] = 5.0
    logits[PET, 10:14, 9:15] = 0.3
    return logits


def test_an_unsure_region_becomes_background_and_a_sure_one_stays():
    logits = two_regions()
    assert drop_unsure_regions(logits, 0.0) is logits  # off: the scores as they came
    before = Masks.from_logits(logits, (32, 32))
    after = Masks.from_logits(drop_unsure_regions(logits, 0.65), (32, 32))
    assert (before.ids[22:26, 20:28] == PET).all()  # the unsure square is an animal without the rule
    assert (after.ids[20:28, 18:30] == BACKGROUND).all() and after.animal[20:28, 18:30].max() == 0
    assert np.array_equal(after.ids[:16], before.ids[:16]) and (after.ids[4:12, 4:12] == PET).all()
    # under the unsure region's own mean (0.57) nothing changes
    assert np.array_equal(Masks.from_logits(drop_unsure_regions(logits, 0.5), (32, 32)).ids, before.ids)


def test_a_model_that_outputs_class_ids_refuses_region_confidence():
    classes = SimpleNamespace(info=SimpleNamespace(output="classes"), path="argmax.onnx")
    set_mask_options(classes, "smooth", 0.0)
    with pytest.raises(EdgesegError, match="--region-confidence needs class scores"):
        set_mask_options(classes, "smooth", 0.65)


def test_eval_and_run_apply_it(cli, pets3, tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    shutil.copy(pets3 / "images" / "Abyssinian_1.jpg", photos)  # a cat the model is sure of
    shares = {}
    for t in ("0", "0.65", "1"):
        r = cli("eval", BUNDLED, "--no-animal", photos, "--region-confidence", t, "--json", "--backend",
                "onnxruntime", "--threads", "1")
        assert r.code == 0, r.err
        out = json.loads(r.out)
        assert out["region_confidence"] == float(t)
        shares[t] = out["no_animal"]["models"][0]["pet_share"]
    assert shares["0"] > 0.05 and shares["0.65"] == shares["0"] and shares["1"] == 0.0
    r = cli("run", BUNDLED, "--source", photos, "--region-confidence", "1", "--save-masks", tmp_path / "masks",
            "--report", tmp_path / "r.json", "--threads", "1")
    assert r.code == 0, r.err
    assert json.loads((tmp_path / "r.json").read_text())["masks"]["region_confidence"] == 1.0
    mask = cv2.imread(str(tmp_path / "masks" / "Abyssinian_1.png"), cv2.IMREAD_UNCHANGED)
    assert (mask == BACKGROUND).all()
