"""The PyTorch model as trained, behind the same backend interface as the deployed runtimes: the
reference that eval, bench and doctor compare deployed files against, and what training scores its scene
sets with after every epoch (edgeseg.training.scene_checks)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgeseg.compile.checkpoint import load_checkpoint
from edgeseg.runtime.backends.base import BackendInfo
from edgeseg.runtime.meta import ModelMeta


class TorchBackend:
    """A PyTorch model in FP32 (on the CPU, or the device it trains on): a reference for accuracy, not a
    deployment path."""

    def __init__(self, model, meta: ModelMeta, device: str = "cpu", extra: dict | None = None) -> None:
        import torch

        self.torch = torch
        self.model = model
        self.meta = meta
        self.device = device
        self.info = BackendInfo(name="torch", provider=str(device), precision="fp32",
                                threads=torch.get_num_threads(), output="logits", static_batch=None,
                                extra={"torch": torch.__version__, **(extra or {})})

    @classmethod
    def load(cls, path: Path, threads: int | None) -> TorchBackend:
        """A checkpoint file on the CPU."""
        import torch

        if threads:
            torch.set_num_threads(threads)
        # As ONNX Runtime's sessions do (edgeseg.runtime.backends.onnxruntime): trained weights make denormal
        # activations, which some CPUs compute through slow microcode assists. Process-wide; False on
        # CPUs without the control, where nothing changes.
        flushed = torch.set_flush_denormal(True)
        ckpt = load_checkpoint(path)
        return cls(ckpt.model, ckpt.meta, extra={"denormals_flushed": flushed})

    def __call__(self, x: np.ndarray) -> np.ndarray:
        with self.torch.inference_mode():
            return self.model(self.torch.from_numpy(x).to(self.device)).cpu().numpy()
