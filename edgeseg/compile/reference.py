"""The PyTorch model as trained, behind the same backend interface as the deployed runtimes: the
reference that eval, bench and doctor compare deployed files against."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgeseg.compile.checkpoint import load_checkpoint
from edgeseg.runtime.backends.base import BackendInfo


class TorchBackend:
    """A checkpoint on the CPU in FP32: a reference for accuracy, not a deployment path."""

    def __init__(self, path: Path, threads: int | None) -> None:
        import torch

        if threads:
            torch.set_num_threads(threads)
        # As ONNX Runtime's sessions do (edgeseg.runtime.backends.onnxruntime): trained weights make denormal
        # activations, which some CPUs compute through slow microcode assists. Process-wide; False on
        # CPUs without the control, where nothing changes.
        flushed = torch.set_flush_denormal(True)
        ckpt = load_checkpoint(path)
        self.torch = torch
        self.model = ckpt.model
        self.meta = ckpt.meta
        self.info = BackendInfo(name="torch", provider="cpu", precision="fp32", threads=torch.get_num_threads(),
                                output="logits", static_batch=None,
                                extra={"torch": torch.__version__, "denormals_flushed": flushed})

    def __call__(self, x: np.ndarray) -> np.ndarray:
        with self.torch.inference_mode():
            return self.model(self.torch.from_numpy(x)).numpy()
