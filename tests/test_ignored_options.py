"""An option given where it would do nothing is refused in one line, naming what it needs, before anything is
read or written: a user who set --percentile, --max-drop or --verify-limit expects it to count. (eval's and
run's own rules are tested beside their commands: test_trainset, test_train_eval, test_sources, test_serve,
test_events.)"""

from __future__ import annotations

import pytest
from conftest import PETS3, REPO

MODEL = REPO / "models" / "segnet_dsc.onnx"
CHECKPOINT = REPO / "models" / "segnet_dsc.pth"
PHOTOS = REPO / "calibration"
RANGES = REPO / "models" / "segnet_dsc.calib.json"
QUICK = ("--data", PETS3, "--limit", "6", "--epochs", "1", "--size", "32x32")  # were a check missing: seconds


@pytest.mark.parametrize(("args", "refused"), [
    (["quantize", MODEL, "--calib", PHOTOS, "--percentile", "99.9"], "--percentile applies only with --method "
     "percentile"),  # cpu's auto method is minmax
    (["quantize", MODEL, "--calib", PHOTOS, "--method", "entropy", "--target", "tensorrt", "--percentile", "99.9"],
     "--percentile applies only with --method percentile"),
    (["quantize", MODEL, "--calib-ranges", RANGES, "--num-images", "16"], "--num-images shapes calibration on "
     "--calib photos, and --calib-ranges brings ranges already made: leave --num-images out"),
    (["quantize", MODEL, "--calib-ranges", RANGES, "--percentile", "99.9"], "--percentile shapes calibration"),
    (["quantize", MODEL, "--seed", "3"], "--seed applies only with --calib"),  # neither --calib nor ranges
    (["quantize", MODEL, "--calib", PHOTOS, "--max-drop", "0.5"], "--max-drop applies only with --val"),
    (["quantize", MODEL, "--calib", PHOTOS, "--min-agreement", "0.9"], "--min-agreement applies only with --val"),
    (["quantize", MODEL, "--calib", PHOTOS, "--val-limit", "5"], "--val-limit applies only with --val"),
    (["quantize", MODEL, "--calib", PHOTOS, "--threads", "1"], "--threads applies only with --val"),
    (["quantize", MODEL, "--calib", PHOTOS, "--val", PHOTOS, "--val-limit", "2", "--max-drop", "0.5"],
     "--max-drop gates mIoU on masks, and these are plain photos"),
    (["quantize", MODEL, "--calib", PHOTOS, "--val", PETS3, "--val-limit", "2", "--min-agreement", "0.9"],
     "--min-agreement gates plain photos, and this folder has masks"),
    (["bench", MODEL, "--data-limit", "5"], "--data-limit applies only with --data"),
    (["bench", MODEL, "--images", PHOTOS], "--images applies only with --end-to-end"),
    (["bench", "triton://127.0.0.1:1/edgeseg", "--concurrency", "1,2", "--data", PETS3], "--data applies to the "
     "latency table, not to --concurrency's load levels"),  # refused before any server is asked
    (["export", CHECKPOINT, "--verify-limit", "3"], "--verify-limit applies only with --verify-images"),
    (["export", CHECKPOINT, "--batch", "2", "--dynamic-batch"], "--batch fixes the batch size and --dynamic-batch"),
    (["build", MODEL, "--precision", "fp16", "--calib", PHOTOS], "this build is fp16: add --precision int8 or "
     "leave --calib out"),
    (["train", *QUICK, "--schedule", "cosine", "--step-size", "5"], "--step-size applies only with --schedule step"),
    (["train", *QUICK, "--schedule", "cosine", "--gamma", "0.3"], "--gamma applies only with --schedule step"),
])
def test_an_option_that_would_be_ignored_is_refused(cli, tmp_path, args, refused):
    out = tmp_path / "out"
    r = cli(*args, *(["--json", out] if args[0] == "bench" else ["-o", out]))
    assert r.code == 1 and refused in r.err, r.err
    assert len(r.err.strip().splitlines()) == 1 and "Traceback" not in r.err and not out.exists()


def test_the_options_apply_where_they_belong(cli, tmp_path):
    """The same options where they count are taken (the refusals above are not blanket ones)."""
    r = cli("quantize", MODEL, "--calib", PHOTOS, "--target", "tensorrt", "--percentile", "99.99", "--num-images",
            "16", "--seed", "1", "-o", tmp_path / "q.onnx", "--json")  # auto is percentile for tensorrt
    assert r.code == 0, r.err
    assert '"method": "percentile"' in r.out and '"images": 16' in r.out
