"""Shared fixtures: notebook checkpoints, the real datasets, an in-process CLI runner, a fake camera."""

from __future__ import annotations

import dataclasses
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
DATASETS = REPO.parent / "shared" / "datasets"
PETS3 = DATASETS / "oxford-pets-3breeds"
PETS37 = DATASETS / "oxford-pets-37breeds-photos"


@pytest.fixture(scope="session", autouse=True)
def private_cache(tmp_path_factory):
    """Engines and OpenVINO's compiled models go to a temporary folder, not the user's ~/.cache."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EDGESEG_CACHE", str(tmp_path_factory.mktemp("edgeseg-cache")))
        yield


@dataclass
class CliResult:
    code: int
    out: str
    err: str


@pytest.fixture
def cli(capsys, monkeypatch):
    """Run ``edgeseg ARGS...`` through the real entry point (error handling included), in-process."""
    from edgeseg.cli import main

    def run(*args: str) -> CliResult:
        monkeypatch.setattr(sys, "argv", ["edgeseg", *map(str, args)])
        monkeypatch.setenv("EDGESEG_DEBUG", "")  # recorded, so a --debug run cannot leak "1" to later tests
        code = 0
        try:
            main()
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    return run


def randomize_bn(model, seed: int = 0):
    """Give every BatchNorm non-trivial statistics, as a trained checkpoint has."""
    import torch

    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.rand(n, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(n, generator=g) * 0.4 - 0.1)
            m.num_batches_tracked.fill_(100)
    return model.eval()


@pytest.fixture(scope="session")
def notebook_models():
    """{arch: model built exactly as the notebook builds it, with non-trivial BN statistics}."""
    import torch
    from notebook_reference import ImageSegmentation

    torch.manual_seed(0)
    return {
        "segnet-dsc": randomize_bn(ImageSegmentation(kernel_size=3, dsc=True), 1),
        "segnet": randomize_bn(ImageSegmentation(kernel_size=3, dsc=False), 2),
    }


@pytest.fixture(scope="session")
def notebook_ckpt(notebook_models, tmp_path_factory):
    """{arch: path of ``torch.save(model.state_dict(), path)``, the notebook's way of saving}."""
    import torch

    folder = tmp_path_factory.mktemp("notebook")
    paths = {}
    for arch, model in notebook_models.items():
        paths[arch] = folder / f"{arch}.pth"
        torch.save(model.state_dict(), paths[arch])
    return paths


@pytest.fixture(scope="session")
def stage_z(tmp_path_factory):
    """A checkpoint as ``edgeseg train`` writes one: the bundled weights with the training record of stage
    Z, one of the bundled soup's ingredients (30 epochs from T160, best epoch 27)."""
    from edgeseg.compile.checkpoint import load_checkpoint, save_checkpoint

    bundled = load_checkpoint(REPO / "models" / "segnet_dsc.pth")
    z = bundled.extra["soup_of"][1]
    record = {k: v for k, v in z.items() if k not in ("file", "sha256", "provenance")}
    meta = dataclasses.replace(bundled.meta, provenance=z["provenance"])
    return save_checkpoint(tmp_path_factory.mktemp("stage_z") / "segnet_dsc.pth", bundled.model, meta, record)


@pytest.fixture(scope="session")
def exported(notebook_ckpt, tmp_path_factory):
    """{arch: (onnx path, export report)} for both notebook checkpoints at 64x64."""
    from edgeseg.compile.checkpoint import load_checkpoint
    from edgeseg.compile.export import ExportOptions, export

    folder = tmp_path_factory.mktemp("onnx")
    out = {}
    for arch, path in notebook_ckpt.items():
        onnx_path = folder / f"{arch}.onnx"
        out[arch] = (onnx_path, export(load_checkpoint(path), onnx_path, ExportOptions(size=(64, 64))))
    return out


@pytest.fixture
def pets3():
    if not PETS3.is_dir():
        pytest.skip(f"dataset not found at {PETS3} (CI has ../shared beside the clone)")
    return PETS3


@pytest.fixture
def pets37():
    if not PETS37.is_dir():
        pytest.skip(f"dataset not found at {PETS37} (CI has ../shared beside the clone)")
    return PETS37


class FakeCamera:
    """A VideoCapture stand-in: ``frames`` frames every ``period`` s; then it blocks for ``block`` s (a stalled
    RTSP read) or fails. Records its release."""

    def __init__(self, frames: int, period: float = 0.005, block: float = 0.0, opened: bool = True) -> None:
        self.left, self.period, self.block, self.opened, self.released = frames, period, block, opened, False

    def isOpened(self) -> bool:
        return self.opened

    def read(self):
        time.sleep(self.period)
        if self.left <= 0:
            time.sleep(self.block)
            return False, None
        self.left -= 1
        return True, np.full((48, 64, 3), 100, np.uint8)

    def get(self, prop):
        return 30.0

    def release(self) -> None:
        self.released = True
