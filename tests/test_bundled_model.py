"""The bundled model: its model card's numbers are reproduced, and its ONNX is the export of its checkpoint."""

from __future__ import annotations

import re

import onnx
import pytest
from conftest import REPO

from edgeseg.compile.checkpoint import load_checkpoint
from edgeseg.evaluation.evaluate import evaluate, load_split
from edgeseg.files import sha256_file
from edgeseg.loader import load_predictor

MODELS = REPO / "models"


def card_value(name: str, column: int) -> float:
    """Value ``column`` (0: smooth upsampling, 1: nearest) of the card's ``| name | ... |`` row."""
    m = re.search(rf"^\| {re.escape(name)} \| ([0-9.]+) \| ([0-9.]+) \|", (MODELS / "README.md").read_text(),
                  flags=re.M)
    assert m, f"models/README.md has no '| {name} | smooth | nearest |' row"
    return float(m.group(1 + column))


@pytest.mark.slow
@pytest.mark.parametrize(("upsample", "column"), [("smooth", 0), ("nearest", 1)])
def test_model_card_test_split_metrics_are_reproduced(pets3, upsample, column):
    predictor = load_predictor(MODELS / "segnet_dsc.pth", threads=2)
    predictor.upsample = upsample
    r = evaluate([predictor], load_split(pets3, "test"))[0]
    assert r["images"] == 298
    assert abs(100 * r["miou"] - 100 * card_value("mIoU", column)) <= 0.1
    assert abs(100 * r["pixel_accuracy"] - 100 * card_value("pixel accuracy", column)) <= 0.1


def test_bundled_onnx_is_the_export_of_the_bundled_checkpoint():
    ckpt = load_checkpoint(MODELS / "segnet_dsc.pth")
    assert ckpt.meta.arch == "segnet-dsc" and ckpt.meta.input_size == (160, 160)
    model = onnx.load(str(MODELS / "segnet_dsc.onnx"))
    props = {p.key: p.value for p in model.metadata_props}
    assert props["source_sha256"] == sha256_file(MODELS / "segnet_dsc.pth")
    assert [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim] == [1, 3, 160, 160]
    assert (MODELS / "segnet_dsc.calib.json").stat().st_size > 1000
