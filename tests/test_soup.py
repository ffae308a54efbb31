"""edgeseg soup: the mean of checkpoints' weights, their records kept, bad ingredients refused."""

from __future__ import annotations

import dataclasses
import json

import torch
from conftest import REPO

from edgeseg.compile.checkpoint import load_checkpoint, save_checkpoint

BUNDLED = REPO / "models" / "segnet_dsc.pth"


def test_a_soup_is_the_mean_of_its_ingredients_and_records_them(cli, tmp_path, stage_z):
    parent = load_checkpoint(stage_z)
    twin = load_checkpoint(stage_z).model
    with torch.no_grad():
        for v in twin.state_dict().values():
            if v.is_floating_point():
                v.add_(torch.linspace(-0.1, 0.3, v.numel()).reshape(v.shape))  # another "fine-tuned" child
    child = save_checkpoint(tmp_path / "child.pth", twin, parent.meta, {"best": {"miou": 0.5, "epoch": 2}})
    out = tmp_path / "soup.pth"
    r = cli("soup", stage_z, child, "-o", out)
    assert r.code == 0, r.err
    made = load_checkpoint(out)
    a, b, m = parent.model.state_dict(), twin.state_dict(), made.model.state_dict()
    for k in a:
        want = (a[k] + b[k]) / 2 if a[k].is_floating_point() else a[k]
        assert torch.allclose(m[k], want, atol=1e-6), k
    assert made.meta == parent.meta and made.meta.provenance["ingredients"] == ["segnet_dsc.pth", "child.pth"]
    recorded = made.extra["soup_of"]
    assert [(i["file"], i["sha256"]) for i in recorded] == [("segnet_dsc.pth", parent.sha256),
                                                            ("child.pth", load_checkpoint(child).sha256)]
    assert recorded[0]["best"] == parent.extra["best"] and recorded[0]["recipe"]["epochs"] == 30
    assert recorded[0]["provenance"]["data"] == "trainP6.npz"  # where each ingredient was trained
    shown = [line for line in cli("info", out).out.splitlines() if "soup of" in line]
    assert len(shown) == 2 and "child.pth" in shown[1] and "0.5000" in shown[1]
    assert json.loads(cli("info", out, "--json").out)["extra"]["soup_of"][1]["best"]["epoch"] == 2
    assert "weights" not in made.meta.provenance and "weight" not in recorded[0]  # uniform: nothing to record
    # weighted: three parts of the parent to one of the child, recorded with each ingredient
    r = cli("soup", stage_z, child, "-o", out, "--weights", "3,1", "--force")
    assert r.code == 0 and "segnet_dsc.pth 0.75, child.pth 0.25" in r.out, r.err
    made = load_checkpoint(out)
    m = made.model.state_dict()
    for k in a:
        want = 0.75 * a[k] + 0.25 * b[k] if a[k].is_floating_point() else a[k]
        assert torch.allclose(m[k], want, atol=1e-6), k
    assert made.meta.provenance["weights"] == [0.75, 0.25] and made.extra["soup_of"][1]["weight"] == 0.25
    shown = [line for line in cli("info", out).out.splitlines() if "soup of" in line]
    assert "child.pth (weight 0.25, sha256" in " ".join(shown[1].replace("│", " ").split())
    for bad, says in (("1", "give 2 positive numbers"), ("1,-1", "give 2 positive numbers"),
                      ("1,inf", "give 2 positive numbers"), ("1,x", "numbers separated by commas")):
        r = cli("soup", stage_z, child, "-o", out, "--weights", bad, "--force")
        assert r.code == 1 and says in r.err and "Traceback" not in r.err, r.err


def test_a_soup_refuses_one_checkpoint_the_same_one_twice_another_model_and_an_existing_output(cli, tmp_path):
    parent = load_checkpoint(BUNDLED)
    other = save_checkpoint(tmp_path / "96.pth", parent.model, dataclasses.replace(parent.meta, input_size=(96, 96)))
    copy = save_checkpoint(tmp_path / "copy.pth", parent.model, parent.meta)  # another file, the same weights
    child = load_checkpoint(BUNDLED).model
    with torch.no_grad():
        child.dc1.seq[0].depthwise.weight.mul_(0.5)
    child = save_checkpoint(tmp_path / "child.pth", child, parent.meta)
    out = tmp_path / "soup.pth"
    for args, says in (((BUNDLED,), "at least two checkpoints"),
                       ((BUNDLED, BUNDLED), "the same weights as segnet_dsc.pth"),
                       ((child, BUNDLED, copy), "copy.pth: the same weights as segnet_dsc.pth"),
                       ((BUNDLED, other), "unlike segnet_dsc.pth: a soup averages checkpoints of one model")):
        r = cli("soup", *args, "-o", out)
        assert r.code == 1 and says in r.err and "Traceback" not in r.err and not out.exists(), r.err
    out.write_bytes(b"kept")
    r = cli("soup", BUNDLED, other, "-o", out)
    assert r.code == 1 and "already exists; pass --force" in r.err and out.read_bytes() == b"kept"
