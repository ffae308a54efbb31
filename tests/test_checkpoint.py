"""Notebook checkpoints load unchanged, in every form users save them, and bad files fail cleanly."""

from __future__ import annotations

import json

import pytest
import torch

from edgeseg.compile.checkpoint import load_checkpoint, save_checkpoint
from edgeseg.compile.nets import SegNet, SegNetDSC, build_model, model_stats
from edgeseg.errors import CheckpointError
from edgeseg.runtime.meta import ModelMeta


@pytest.mark.parametrize(("cls", "params"), [(SegNetDSC, 1_749_671), (SegNet, 15_274_892)])
def test_parameter_counts_match_the_published_models(cls, params):
    assert model_stats(cls()).parameters == params


@pytest.mark.parametrize("arch", ["segnet-dsc", "segnet"])
def test_state_dict_keys_are_the_notebooks(arch, notebook_models):
    assert list(build_model(arch).state_dict()) == list(notebook_models[arch].state_dict())


def _wrap(form: str, sd: dict) -> object:
    if form == "plain":
        return sd
    if form == "dataparallel":
        return {f"module.{k}": v for k, v in sd.items()}
    return {form: sd, "epoch": 7, "best_miou": 0.5}


@pytest.mark.parametrize("arch", ["segnet-dsc", "segnet"])
@pytest.mark.parametrize("form", ["plain", "dataparallel", "state_dict", "model_state_dict", "model"])
def test_notebook_checkpoint_loads_with_identical_outputs(arch, form, notebook_models, tmp_path):
    reference = notebook_models[arch]
    path = tmp_path / "ckpt.pth"
    torch.save(_wrap(form, reference.state_dict()), path)
    loaded = load_checkpoint(path)
    assert loaded.meta.arch == arch
    assert loaded.meta.kernel_size == 3
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert torch.equal(loaded.model(x), reference(x))


def test_kernel_size_is_inferred_from_weights(tmp_path):
    model = SegNetDSC(kernel_size=5)
    torch.save(model.state_dict(), tmp_path / "k5.pth")
    assert load_checkpoint(tmp_path / "k5.pth").meta.kernel_size == 5


def test_edgeseg_format_round_trips_metadata(tmp_path):
    meta = ModelMeta(arch="segnet-dsc", input_size=(160, 192), interpolation="area",
                     provenance={"data": "pets"})
    save_checkpoint(tmp_path / "e.pth", SegNetDSC(), meta, extra={"history": [{"epoch": 1, "loss": 0.5}]})
    loaded = load_checkpoint(tmp_path / "e.pth")
    assert loaded.meta == meta
    assert loaded.meta.provenance == {"data": "pets"}
    assert loaded.extra["history"][0]["loss"] == 0.5
    assert loaded.form == "edgeseg"


def test_save_refuses_to_overwrite_without_force(tmp_path):
    path = tmp_path / "e.pth"
    save_checkpoint(path, SegNetDSC(), ModelMeta())
    with pytest.raises(Exception, match="--force"):
        save_checkpoint(path, SegNetDSC(), ModelMeta())
    save_checkpoint(path, SegNetDSC(), ModelMeta(), force=True)


def test_info_reports_parameters_and_macs(cli, notebook_ckpt):
    r = cli("info", notebook_ckpt["segnet-dsc"], "--json")
    assert r.code == 0, r.err
    d = json.loads(r.out)
    assert (d["arch"], d["parameters"], d["macs"]) == ("segnet-dsc", 1_749_671, 1_077_657_600)
    r = cli("info", notebook_ckpt["segnet"], "--size", "256x256", "--json")
    d = json.loads(r.out)
    assert (d["arch"], d["parameters"], d["macs"]) == ("segnet", 15_274_892, 4 * 9_116_319_744)
    table = cli("info", notebook_ckpt["segnet-dsc"]).out
    assert "1,749,671" in table and "pet" in table


class Custom:
    """Any Python object that torch.load(weights_only=True) must refuse to unpickle."""


# --- bad input: one line naming the file, non-zero exit, no traceback -------------------------------

def _bad_files(tmp_path, notebook_models):
    sd = notebook_models["segnet-dsc"].state_dict()
    good = tmp_path / "good.pth"
    torch.save(sd, good)
    files = {}
    files["text"] = tmp_path / "notes.pth"
    files["text"].write_text("this is not a checkpoint\n")
    files["truncated"] = tmp_path / "truncated.pth"
    files["truncated"].write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    files["empty"] = tmp_path / "empty.pth"
    files["empty"].write_bytes(b"")
    files["pickle"] = tmp_path / "pickle.pth"
    torch.save({"model": Custom()}, files["pickle"])
    files["missing"] = tmp_path / "missing.pth"
    torch.save({k: v for k, v in sd.items() if not k.startswith("uc1.")}, files["missing"])
    files["unexpected"] = tmp_path / "unexpected.pth"
    torch.save({**sd, "head.weight": torch.zeros(3)}, files["unexpected"])
    files["shape"] = tmp_path / "shape.pth"
    torch.save({**sd, "dc2.seq.1.weight": torch.zeros(7)}, files["shape"])
    files["arch"] = tmp_path / "resnet.pth"
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7), "fc.bias": torch.zeros(10)}, files["arch"])
    files["kernel"] = tmp_path / "kernel.pth"
    torch.save({**sd, "dc1.seq.0.depthwise.weight": torch.zeros(3, 1, 4, 4)}, files["kernel"])
    files["tensor"] = tmp_path / "tensor.pth"
    torch.save(torch.zeros(3), files["tensor"])
    files["nonexistent"] = tmp_path / "nope.pth"
    return files


BAD = {
    "text": "not a PyTorch checkpoint",
    "truncated": "truncated or corrupt",
    "empty": "empty file",
    "pickle": "weights_only",
    "missing": "missing key(s): uc1.seq.0.depthwise.weight",
    "unexpected": "unexpected key(s): head.weight",
    "shape": "shape mismatch at dc2.seq.1.weight",
    "arch": "cannot infer the architecture",
    "kernel": "cannot infer the kernel size",
    "tensor": "not a state_dict",
    "nonexistent": "no such file",
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_checkpoint_gives_one_clear_line(case, cli, tmp_path, notebook_models):
    path = _bad_files(tmp_path, notebook_models)[case]
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    assert str(path) in str(info.value)
    r = cli("info", path)
    assert r.code == 1
    lines = r.err.strip().splitlines()
    assert len(lines) == 1, r.err
    assert lines[0].startswith(f"error: {path}: ")
    assert BAD[case] in lines[0]
    assert "Traceback" not in r.err


def test_debug_flag_shows_the_traceback_and_keeps_the_exit_code(cli, tmp_path, monkeypatch):
    path = tmp_path / "x.pth"
    path.write_text("nope")
    r = cli("--debug", "info", path)
    assert r.code == 1 and "Traceback" in r.err and "CheckpointError" in r.err
    assert r.err.strip().splitlines()[-1].startswith(f"error: {path}: not a PyTorch checkpoint")
    import edgeseg.info

    def bug(*a, **k):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(edgeseg.info, "describe", bug)
    for args in (("info", path), ("--debug", "info", path)):  # a bug is exit code 3 either way
        r = cli(*args)
        assert r.code == 3 and "internal error ZeroDivisionError: a bug" in r.err
        assert ("Traceback" in r.err) == ("--debug" in args)


@pytest.mark.parametrize(("arch", "k", "h", "w"), [("segnet-dsc", 3, 128, 128), ("segnet", 3, 64, 96),
                                                   ("segnet-dsc", 5, 96, 64)])
def test_torch_free_mac_count_matches_the_hooked_count(arch, k, h, w):
    from edgeseg.runtime.meta import conv_macs

    assert conv_macs(arch, k, h, w) == model_stats(build_model(arch, k), h, w).macs


def test_info_shows_the_bundled_soup_and_each_ingredients_lineage(cli):
    from conftest import REPO

    r = cli("info", REPO / "models" / "segnet_dsc.pth")
    assert r.code == 0, r.err
    assert "stageZG.pth (sha256 72d6ea04e23b, 30 epochs, best validation mIoU 0.6890" in r.out
    assert "segnet_dsc.pth (sha256 d3d0213decf7, 30 epochs, best validation mIoU 0.6888" in r.out
    assert sum("soup of" in line for line in r.out.splitlines()) == 2  # one row per ingredient
    zg, z = json.loads(cli("info", REPO / "models" / "segnet_dsc.pth", "--json").out)["extra"]["soup_of"]
    assert zg["init_from"]["sha256"] == z["sha256"]  # ZG was fine-tuned from Z, the other ingredient
    assert z["provenance"]["data"] == "trainP6.npz" and "provenance.made_with" in r.out  # each keeps its own
    first = z
    for _ in range(6):  # the from-scratch stage, six parents up (model card: stages 1, 2, 3, A, E, T160, Z)
        first = first["init_from"]
    assert len(first["history"]) == 60 and first["best"]["epoch"] == 57


def test_info_summarizes_a_training_record_in_a_few_lines(cli, stage_z):
    r = cli("info", stage_z)
    assert r.code == 0, r.err
    assert "batch 8, lr 0.0003, cosine down to lr/100, 160px, seed 0" in r.out
    assert "30 of 30 planned" in r.out and "27: validation mIoU 0.6888" in r.out
    # how it was trained: augmentation and "no animal" data, each in a line
    assert "zoom-in crops to 0.6 of the side, zoom-out to 1/1.5, rotation within 10 degrees" in r.out
    assert "border class x1.5; 'no animal' 30% of draws (background crops and folder neg160)" in r.out
    # the stage it was fine-tuned from, in one line
    assert "started from" in r.out and "4 epochs, best validation mIoU 0.6755" in r.out
    assert "'val_miou'" not in r.out and len(r.out.splitlines()) < 32  # no raw per-epoch dicts


def test_info_shows_a_record_edgeseg_did_not_write_as_it_is(cli, tmp_path):
    m = build_model("segnet-dsc")
    save_checkpoint(tmp_path / "s.pth", m, ModelMeta(), {"soup_of": ["a.pth", "b.pth"], "init_from": "c.pth"})
    r = cli("info", tmp_path / "s.pth")
    assert r.code == 0, r.err
    assert "['a.pth', 'b.pth']" in r.out and "c.pth" in r.out


def test_info_on_a_damaged_training_state_is_one_line_and_an_odd_record_is_shown_as_it_is(cli, tmp_path):
    """A *.last.pth is untrusted input too: info reads its record, not its weights."""
    base = {"state_dict": build_model("segnet-dsc").state_dict(), "optimizer": {}, "generator": torch.zeros(1)}
    torch.save({**base, "epoch": "three", "history": [], "best": {}}, tmp_path / "bad.last.pth")
    r = cli("info", tmp_path / "bad.last.pth")
    assert r.code == 1 and "record (epoch, recipe, history, best) is damaged" in r.err
    assert len(r.err.strip().splitlines()) == 1 and "Traceback" not in r.err
    torch.save({**base, "epoch": 3, "recipe": {"schedule": 7, "epochs": "x"}, "history": [1, 2], "best": {"epoch": 9}},
               tmp_path / "odd.last.pth")
    r = cli("info", tmp_path / "odd.last.pth")
    assert r.code == 0 and "train --resume" in r.out and "odd.pth" in r.out, r.err


def test_info_on_a_run_in_progress_shows_its_last_epoch_and_the_time_left(cli, tmp_path):
    """A stage spread over sessions is planned by what it has left, at the pace of the epochs it ran."""
    base = {"state_dict": build_model("segnet-dsc").state_dict(), "optimizer": {}, "generator": torch.zeros(1)}
    history = [{"epoch": 1, "val_miou": 0.61, "seconds": 100.0}, {"epoch": 2, "val_miou": 0.7, "seconds": 300.0},
               {"epoch": 3, "val_miou": 0.65, "seconds": 260.0,
                "scenes": [{"set": "no_animal", "folder": "rooms", "pet_share": 0.0125}]}]
    torch.save({**base, "epoch": 3, "recipe": {"epochs": 10}, "history": history,
                "best": {"epoch": 2, "miou": 0.7, "pixel_accuracy": 0.8}}, tmp_path / "run.last.pth")
    d = json.loads(cli("info", tmp_path / "run.last.pth", "--json").out)
    assert d["time_left"] == {"epochs": 7, "median_epoch_seconds": 260.0, "seconds": 1820.0}
    table = " ".join(cli("info", tmp_path / "run.last.pth").out.replace("│", " ").split())
    assert "last epoch 3: validation mIoU 0.6500; rooms: 1.25% called pet" in table
    assert "time left 7 epochs, about 30 min at the median 260 s per epoch" in table
    torch.save({**base, "epoch": 10, "recipe": {"epochs": 10}, "history": history, "best": {"epoch": 2}},
               tmp_path / "done.last.pth")
    assert "time left" not in cli("info", tmp_path / "done.last.pth").out
    torch.save({**base, "epoch": 12, "recipe": {"epochs": 10}, "history": history, "best": {"epoch": 2}},
               tmp_path / "grown.last.pth")  # a step-schedule run resumed with fewer --epochs than it ran
    assert json.loads(cli("info", tmp_path / "grown.last.pth", "--json").out)["time_left"]["epochs"] == 0
