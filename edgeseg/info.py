"""Describe a model file (checkpoint, ONNX or TensorRT engine) as a plain dict."""

from __future__ import annotations

import statistics
from pathlib import Path

from edgeseg.errors import EdgesegError


def describe(path: str | Path, size: tuple[int, int] | None = None) -> dict:
    """A JSON-ready description of ``path``; ``size`` (H, W) sets where MACs are counted."""
    path = Path(path)
    if not path.exists():
        raise EdgesegError("no such file; check the path", path)
    if path.suffix.lower() == ".onnx":
        from edgeseg.compile.onnx_info import describe_onnx

        return describe_onnx(path)
    if path.suffix.lower() in (".engine", ".plan", ".trt"):
        from dataclasses import asdict

        from edgeseg.files import sha256_file
        from edgeseg.runtime.backends.engine_meta import EngineMeta

        return {"path": str(path), "kind": "engine", "file_bytes": path.stat().st_size,
                "sha256": sha256_file(path), **asdict(EngineMeta.load(path))}
    return describe_checkpoint(path, size)


def time_left(record: dict) -> dict | None:
    """What a resumable run has left: epochs, and seconds at the median pace of the epochs run so far (the
    plan of a stage spread over several sessions). None when the record does not tell."""
    try:
        left = max(int(record["recipe"]["epochs"]) - record["epoch"], 0)
        pace = statistics.median(float(h["seconds"]) for h in record["history"])
    except (TypeError, KeyError, ValueError, statistics.StatisticsError):
        return None
    return {"epochs": left, "median_epoch_seconds": pace, "seconds": left * pace}


def describe_checkpoint(path: Path, size: tuple[int, int] | None = None) -> dict:
    from edgeseg.compile.checkpoint import kept_model, load_checkpoint_or_state
    from edgeseg.compile.nets import model_stats
    from edgeseg.files import sha256_file

    ckpt = load_checkpoint_or_state(path)
    if isinstance(ckpt, dict):  # a run's *.last.pth: how far it got, not a model
        return {"path": str(path), "kind": "training_state", "file_bytes": path.stat().st_size,
                "sha256": sha256_file(path), "kept": kept_model(path),
                "extra": {"recipe": ckpt["recipe"], "history": ckpt["history"], "best": ckpt["best"],
                          "epochs_run": ckpt["epoch"]}, "time_left": time_left(ckpt)}
    h, w = size or ckpt.meta.input_size
    stats = model_stats(ckpt.model, h, w)
    return {
        "path": str(path),
        "kind": "checkpoint",
        "file_bytes": path.stat().st_size,
        "sha256": ckpt.sha256,
        "arch": ckpt.meta.arch,
        "kernel_size": ckpt.meta.kernel_size,
        "parameters": stats.parameters,
        "macs": stats.macs,
        "macs_at": [h, w],
        "classes": list(ckpt.meta.class_names),
        "meta": ckpt.meta.to_dict(),
        "stored_as": ckpt.form,
        "extra": {k: v for k, v in ckpt.extra.items() if isinstance(v, (int, float, str, list, dict))},
    }
