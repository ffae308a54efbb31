"""Load, save and describe checkpoints: one loader that every command uses.

Accepted forms: a plain ``state_dict`` as the notebook saves it; a dict wrapping one under
``state_dict``, ``model_state_dict`` or ``model``; keys prefixed ``module.`` (DataParallel); and
edgeseg's own format (``{"format": "edgeseg-checkpoint", "state_dict": ..., "meta": ...}``).
Architecture and kernel size come from the metadata, or are inferred from keys and shapes.
Checkpoints are untrusted input: always ``torch.load(..., weights_only=True)``.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path

import torch

from edgeseg.compile.nets import build_model
from edgeseg.errors import CheckpointError
from edgeseg.files import atomic_write, sha256_file
from edgeseg.runtime.meta import ModelMeta

FORMAT = "edgeseg-checkpoint"
WRAPPER_KEYS = ("state_dict", "model_state_dict", "model")
TRAINING_STATE = {"state_dict", "optimizer", "generator", "epoch"}  # what train's *.last.pth holds (train.Run)


@dataclass
class LoadedCheckpoint:
    model: torch.nn.Module  # in eval mode
    meta: ModelMeta
    path: Path
    sha256: str
    extra: dict  # anything else an edgeseg checkpoint carries (training history, metrics)
    form: str  # how the weights were stored: "edgeseg", "state_dict", "wrapped in 'model'", ...


def _read(path: Path) -> object:
    if not path.exists():
        raise CheckpointError("no such file; check the path", path)
    if path.is_dir():
        raise CheckpointError("is a folder, not a checkpoint file", path)
    with open(path, "rb") as f:
        head = f.read(4)
    if not head:
        raise CheckpointError("empty file; copy the checkpoint again", path)
    # torch.save writes a zip archive (PyTorch >= 1.6) or, with the legacy format, a pickle (protocol 2+)
    if head != b"PK\x03\x04" and head[0] != 0x80:
        raise CheckpointError("not a PyTorch checkpoint (neither torch.save's zip format nor a pickle); pass a "
                              ".pth/.pt file saved by torch.save", path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "Weights only load failed" in str(e):
            raise CheckpointError(
                "refused by torch.load(weights_only=True): it pickles Python objects besides tensors; "
                "re-save it with torch.save(model.state_dict(), PATH) where you trust it",
                path,
            ) from e
        raise CheckpointError(f"not a PyTorch checkpoint ({e}); pass a .pth/.pt saved by torch.save", path) from e
    except Exception as e:  # torch raises RuntimeError, EOFError, KeyError... for foreign bytes
        if head == b"PK\x03\x04":
            raise CheckpointError(
                "truncated or corrupt checkpoint (zip archive unreadable); copy it again", path
            ) from e
        raise CheckpointError("not a PyTorch checkpoint; pass a .pth/.pt file saved by torch.save", path) from e


def _is_training_state(obj: object) -> bool:
    return isinstance(obj, dict) and obj.keys() >= TRAINING_STATE and obj.get("format") != FORMAT


def kept_model(state_path: Path) -> str | None:
    """The checkpoint train writes beside a NAME.last.pth: NAME.pth (None for a state renamed otherwise)."""
    return state_path.name.replace(".last.", ".") if ".last." in state_path.name else None


def load_checkpoint_or_state(path: str | Path) -> LoadedCheckpoint | dict:
    """The checkpoint at ``path``, or, for a *.last.pth, its record (epoch, recipe, history, best: how far a
    resumable run got); the file is read once, as safely as any checkpoint."""
    path = Path(path)
    obj = _read(path)
    if not _is_training_state(obj):
        return _loaded(obj, path)
    record = {k: obj.get(k) for k in ("epoch", "recipe", "history", "best")}
    if not (isinstance(record["epoch"], int) and isinstance(record["recipe"], (dict, type(None)))
            and isinstance(record["history"], list) and isinstance(record["best"], dict)):
        raise CheckpointError("a training state whose record (epoch, recipe, history, best) is damaged; train "
                              "--resume cannot continue it either", path)
    return record


def _unwrap(obj: object, path: Path) -> tuple[dict[str, torch.Tensor], dict, dict, str]:
    """Return (state_dict, edgeseg meta dict or {}, other entries of an edgeseg checkpoint, form)."""
    if not isinstance(obj, dict):
        raise CheckpointError(f"holds a {type(obj).__name__}, not a state_dict; save model.state_dict()", path)
    if _is_training_state(obj):  # no metadata: read as a model, it would be wrong
        kept = kept_model(path) or "the checkpoint train wrote with it"
        raise CheckpointError(f"a training state that edgeseg train keeps for --resume, not a model; use {kept}, "
                              "or continue the run with train --resume (edgeseg info shows how far it got)", path)
    meta: dict = {}
    extra: dict = {}
    form = "state_dict"
    if obj.get("format") == FORMAT:
        form = "edgeseg"
        meta = dict(obj.get("meta") or {})
        extra = {k: v for k, v in obj.items() if k not in ("format", "meta", "state_dict")}
        obj = obj.get("state_dict")
    else:
        for key in WRAPPER_KEYS:
            inner = obj.get(key)
            if isinstance(inner, dict) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
                obj, form = inner, f"state_dict wrapped in {key!r}"
                break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(
            "no state_dict found (expected a dict of tensors, or one under 'state_dict', "
            "'model_state_dict' or 'model')",
            path,
        )
    if all(k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
        form += " with DataParallel 'module.' prefixes"
    return obj, meta, extra, form


def infer_arch(state_dict: dict[str, torch.Tensor], path: Path) -> tuple[str, int]:
    """(arch, kernel_size) from the first encoder conv's key and weight shape."""
    if "dc1.seq.0.depthwise.weight" in state_dict:
        arch, w = "segnet-dsc", state_dict["dc1.seq.0.depthwise.weight"]
    elif "dc1.seq.0.weight" in state_dict:
        arch, w = "segnet", state_dict["dc1.seq.0.weight"]
    else:
        first = ", ".join(sorted(state_dict)[:3])
        raise CheckpointError(
            "cannot infer the architecture: no 'dc1.seq.0.depthwise.weight' (SegNet-DSC) or "
            f"'dc1.seq.0.weight' (SegNet) key (first keys: {first}); is this a SegNet checkpoint?",
            path,
        )
    if w.ndim != 4 or w.shape[-1] != w.shape[-2] or w.shape[-1] % 2 == 0:
        raise CheckpointError(
            f"cannot infer the kernel size from the first conv's weight of shape {tuple(w.shape)}", path
        )
    return arch, int(w.shape[-1])


def _fit(model: torch.nn.Module, state_dict: dict[str, torch.Tensor], path: Path) -> None:
    expected = model.state_dict()
    # Checkpoints from PyTorch versions before 0.4.1 have no num_batches_tracked buffers: harmless.
    missing = [k for k in expected if k not in state_dict and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state_dict if k not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing key(s): {', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}")
        if unexpected:
            more = " ..." if len(unexpected) > 3 else ""
            parts.append(f"{len(unexpected)} unexpected key(s): {', '.join(unexpected[:3])}{more}")
        raise CheckpointError(
            "; ".join(parts) + f"; it does not match {model.arch} (kernel size {model.kernel_size})", path
        )
    for k, v in state_dict.items():
        if v.shape != expected[k].shape:
            raise CheckpointError(
                f"shape mismatch at {k}: checkpoint {tuple(v.shape)}, {model.arch} expects "
                f"{tuple(expected[k].shape)}",
                path,
            )
    bad = {k: int((~torch.isfinite(v)).sum()) for k, v in state_dict.items() if v.is_floating_point()}
    bad = {k: n for k, n in bad.items() if n}
    if bad:
        first = next(iter(bad))
        raise CheckpointError(f"{sum(bad.values())} NaN/inf value(s) in {len(bad)} tensor(s), first {first}: "
                              "the training run diverged; use an earlier checkpoint", path)
    model.load_state_dict(state_dict, strict=False)


def load_checkpoint(path: str | Path) -> LoadedCheckpoint:
    """Load any supported checkpoint form into a SegNet / SegNet-DSC in eval mode."""
    path = Path(path)
    return _loaded(_read(path), path)


def _loaded(obj: object, path: Path) -> LoadedCheckpoint:
    state_dict, meta_dict, extra, form = _unwrap(obj, path)
    arch, kernel_size = infer_arch(state_dict, path)
    if meta_dict.get("arch", arch) != arch or int(meta_dict.get("kernel_size", kernel_size)) != kernel_size:
        raise CheckpointError(
            f"metadata says {meta_dict.get('arch')} k={meta_dict.get('kernel_size')} but the weights are "
            f"{arch} k={kernel_size}; re-save the checkpoint",
            path,
        )
    try:
        meta = ModelMeta.from_dict({**meta_dict, "arch": arch, "kernel_size": kernel_size})
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"invalid edgeseg metadata ({e})", path) from e
    model = build_model(arch, kernel_size)
    _fit(model, state_dict, path)
    model.eval()
    return LoadedCheckpoint(
        model=model, meta=meta, path=path, sha256=sha256_file(path), extra=extra, form=form
    )


def save_checkpoint(
    path: str | Path, model: torch.nn.Module, meta: ModelMeta, extra: dict | None = None, force: bool = False
) -> Path:
    """Write edgeseg's checkpoint format (weights + metadata + ``extra``), loadable with weights_only."""
    payload = {"format": FORMAT, "state_dict": model.state_dict(), "meta": meta.to_dict(), **(extra or {})}
    return atomic_write(path, lambda tmp: torch.save(payload, tmp), force=force)
