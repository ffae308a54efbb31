"""Train SegNet / SegNet-DSC on an Oxford-IIIT Pet layout folder with the notebook's recipe.

Recipe (defaults): 128x128 inputs, random horizontal flip, colour jitter, Adam lr 1e-3,
cross-entropy over pet/background/border, optional StepLR. Images are decoded and resized once
(through :func:`edgeseg.runtime.images.preprocess`'s resize) and augmented per batch as tensors, so an epoch
costs the network's compute, not JPEG decoding. The best epoch by validation mIoU is kept.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import nn

from edgeseg import __version__
from edgeseg.build.checkpoint import load_checkpoint, save_checkpoint
from edgeseg.build.nets import build_model
from edgeseg.errors import EdgesegError
from edgeseg.evaluation.datasets import IGNORE, Sample, oxford_split, read_trimap, resize_mask
from edgeseg.evaluation.metrics import ConfusionMatrix
from edgeseg.files import atomic_write, check_writable
from edgeseg.runtime.images import read_image, resize
from edgeseg.runtime.meta import ModelMeta


@dataclass
class TrainConfig:
    data: str
    arch: str = "segnet-dsc"
    kernel_size: int = 3
    # the recipe that trained the bundled model (models/README.md), from the notebook: batch 8,
    # Adam 1e-3 halved every 20 epochs
    epochs: int = 50
    batch: int = 8
    size: tuple[int, int] = (128, 128)
    lr: float = 1e-3
    step_size: int = 20  # StepLR period in epochs; 0 = constant learning rate
    gamma: float = 0.5
    jitter: float = 0.2  # brightness/contrast/saturation jitter strength
    scale_aug: float = 1.0  # smallest random zoom-in crop (fraction of the side); 1.0 = off (the notebook's recipe)
    val_fraction: float = 0.1  # held out of trainval for choosing the best epoch
    seed: int = 0
    interpolation: str = "area"  # how images are resized, recorded in the checkpoint's metadata
    limit: int = 0  # use only the first N trainval images (quick runs, tests); 0 = all
    extra_data: str | None = None  # photos + rough-masks/ (1 pet, 2 background) added to training only
    extra_band: int = 4  # pixels either side of a rough outline that the loss ignores
    device: str = "auto"


def load_arrays(samples: list[Sample], size: tuple[int, int], interpolation: str,
                on_image: Callable[[int], None] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Decode and resize once: (N, 3, H, W) uint8 RGB images, (N, H, W) uint8 class-id masks.
    ``on_image(i)`` is called after the i-th pair (1-based) is loaded."""
    images = np.empty((len(samples), 3, *size), dtype=np.uint8)
    masks = np.empty((len(samples), *size), dtype=np.uint8)
    for i, s in enumerate(samples):
        images[i] = resize(read_image(s.image), size, interpolation)[:, :, ::-1].transpose(2, 0, 1)
        masks[i] = resize_mask(read_trimap(s.mask), size)
        if on_image:
            on_image(i + 1)
    return images, masks


def load_rough(folder: str | Path, size: tuple[int, int], interpolation: str, band: int,
               skip: set[str]) -> tuple[np.ndarray, np.ndarray]:
    """Photos with rough polygon masks (no border class): pet/background, with a band of ``band``
    pixels around the outline ignored, since the true border and the polygon's error both live there."""
    folder = Path(folder)
    mask_dir = folder / "rough-masks"
    if not mask_dir.is_dir():
        raise EdgesegError("no rough-masks/ folder beside the photos (expected <name>.png, 1 pet, 2 background)",
                           folder)
    pairs = [(p, mask_dir / f"{p.stem}.png") for p in sorted(folder.glob("*.jpg")) if p.stem not in skip]
    pairs = [(p, m) for p, m in pairs if m.exists()]
    images = np.empty((len(pairs), 3, *size), dtype=np.uint8)
    masks = np.empty((len(pairs), *size), dtype=np.uint8)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * band + 1, 2 * band + 1))
    for i, (p, m) in enumerate(pairs):
        images[i] = resize(read_image(p), size, interpolation)[:, :, ::-1].transpose(2, 0, 1)
        raw = cv2.imread(str(m), cv2.IMREAD_GRAYSCALE)
        ids = np.full(raw.shape, IGNORE, np.uint8)
        ids[raw == 1], ids[raw == 2] = 0, 1
        if band:
            ids[cv2.morphologyEx((raw == 1).astype(np.uint8), cv2.MORPH_GRADIENT, kernel) > 0] = IGNORE
        masks[i] = resize_mask(ids, size)
    return images, masks


def random_crop(x: torch.Tensor, y: torch.Tensor, min_scale: float, gen: torch.Generator
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample random zoom-in: a crop of ``min_scale``..1 of the side, resized back (bilinear / nearest)."""
    n = x.shape[0]
    scale = min_scale + (1 - min_scale) * torch.rand(n, generator=gen)
    shift = (1 - scale)[:, None] * (torch.rand(n, 2, generator=gen) * 2 - 1)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = theta[:, 1, 1] = scale
    theta[:, :, 2] = shift
    grid = nn.functional.affine_grid(theta.to(x.device), list(x.shape), align_corners=False)
    x = nn.functional.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    y = nn.functional.grid_sample(y[:, None].float(), grid, mode="nearest", padding_mode="border",
                                  align_corners=False)[:, 0].long()
    return x, y


def augment(x: torch.Tensor, y: torch.Tensor, jitter: float, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Random horizontal flip and brightness/contrast/saturation jitter of a float batch in [0, 1]."""
    n = x.shape[0]
    flip = torch.rand(n, generator=gen) < 0.5
    x = torch.where(flip[:, None, None, None].to(x.device), x.flip(-1), x)
    y = torch.where(flip[:, None, None].to(y.device), y.flip(-1), y)
    if jitter > 0:
        def factor() -> torch.Tensor:
            return (1 + (torch.rand(n, 1, 1, 1, generator=gen) * 2 - 1) * jitter).to(x.device)

        x = x * factor()
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        x = (x - mean) * factor() + mean
        gray = (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])
        x = (x - gray) * factor() + gray
        x = x.clamp(0, 1)
    return x, y


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


@torch.no_grad()
def evaluate_arrays(model: nn.Module, images: np.ndarray, masks: np.ndarray, device: torch.device,
                    batch: int = 32) -> dict:
    """Metrics at the training resolution (fast, for picking epochs; `edgeseg eval` scores at full size)."""
    model.eval()
    cm = ConfusionMatrix()
    for i in range(0, len(images), batch):
        x = torch.from_numpy(images[i:i + batch]).to(device).float() / 255.0
        pred = model(x).argmax(1).to(torch.uint8).cpu().numpy()
        cm.update(masks[i:i + batch], pred)
    return cm.summary()


def train(cfg: TrainConfig, out: str | Path, resume: str | Path | None = None, force: bool = False,
          progress: Callable[[dict], None] | None = None) -> dict:
    """Train and write the best checkpoint to ``out``; returns a summary. ``progress`` gets per-step events."""
    out = check_writable(out, force=force or resume is not None)
    last_path = out.with_name(out.stem + ".last" + out.suffix)
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    device = pick_device(cfg.device)

    samples = oxford_split(cfg.data, "trainval")
    if cfg.limit:
        samples = samples[: cfg.limit]
    order = np.random.default_rng(cfg.seed).permutation(len(samples))
    # With a single image there is nothing to hold out: it serves as both (quick runs, tests).
    n_val = max(1, round(len(samples) * cfg.val_fraction)) if len(samples) > 1 else 0
    train_idx = order[n_val:]
    val_idx = order[:n_val] if n_val else order
    t0 = time.perf_counter()
    loaded = (lambda i: progress({"event": "loading", "done": i, "total": len(samples)})) if progress else None
    images, masks = load_arrays(samples, cfg.size, cfg.interpolation, loaded)
    tr_images, tr_masks = images[train_idx], masks[train_idx]
    n_extra = 0
    if cfg.extra_data:
        ex_images, ex_masks = load_rough(cfg.extra_data, cfg.size, cfg.interpolation, cfg.extra_band,
                                         skip={s.name for s in samples})
        tr_images, tr_masks = np.concatenate([tr_images, ex_images]), np.concatenate([tr_masks, ex_masks])
        n_extra = len(ex_images)
    load_s = time.perf_counter() - t0
    tr_x, tr_y = torch.from_numpy(tr_images), torch.from_numpy(tr_masks).long()
    va_x, va_y = images[val_idx], masks[val_idx]

    model = build_model(cfg.arch, cfg.kernel_size).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    sched = torch.optim.lr_scheduler.StepLR(opt, cfg.step_size, cfg.gamma) if cfg.step_size else None
    loss_fn = nn.CrossEntropyLoss(ignore_index=IGNORE)
    history: list[dict] = []
    best = {"miou": -1.0, "epoch": 0}
    start_epoch = 1
    if resume is not None:
        state = torch.load(resume, map_location="cpu", weights_only=True)
        if not isinstance(state, dict) or "optimizer" not in state:
            raise EdgesegError("not a training state saved by edgeseg train (*.last.pth)", resume)
        model.load_state_dict(state["state_dict"])
        opt.load_state_dict(state["optimizer"])
        if sched and state.get("scheduler"):
            sched.load_state_dict(state["scheduler"])
        history, best = list(state["history"]), dict(state["best"])
        start_epoch = int(state["epoch"]) + 1
        gen.set_state(state["generator"])

    meta = ModelMeta(
        arch=cfg.arch, kernel_size=cfg.kernel_size, input_size=tuple(cfg.size), interpolation=cfg.interpolation,
        provenance={"trained_with": f"edgeseg {__version__} train", "data": str(cfg.data), "split": "trainval",
                    "train_images": len(train_idx), "val_images": int(n_val), "seed": cfg.seed,
                    "extra_data": cfg.extra_data, "extra_images": n_extra},
    )
    steps = math.ceil(len(train_idx) / cfg.batch)
    for epoch in range(start_epoch, cfg.epochs + 1):
        model.train()
        perm = torch.randperm(len(tr_x), generator=gen)
        t_epoch, running = time.perf_counter(), 0.0
        for step in range(steps):
            idx = perm[step * cfg.batch:(step + 1) * cfg.batch]
            x = tr_x[idx].to(device).float() / 255.0
            y = tr_y[idx].to(device)
            x, y = augment(x, y, cfg.jitter, gen)
            if cfg.scale_aug < 1.0:
                x, y = random_crop(x, y, cfg.scale_aug, gen)
            loss = loss_fn(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            running += loss.item()
            if progress:
                progress({"event": "step", "epoch": epoch, "step": step + 1, "steps": steps,
                          "loss": running / (step + 1)})
        if sched:
            sched.step()
        val = evaluate_arrays(model, va_x, va_y, device)
        row = {"epoch": epoch, "loss": running / steps, "val_miou": val["miou"],
               "val_pixel_accuracy": val["pixel_accuracy"], "seconds": time.perf_counter() - t_epoch,
               "lr": opt.param_groups[0]["lr"]}
        history.append(row)
        improved = val["miou"] > best["miou"]
        if improved:
            best = {"miou": val["miou"], "pixel_accuracy": val["pixel_accuracy"], "epoch": epoch}
            extra = {"recipe": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(cfg).items()},
                     "history": history, "best": best, "epochs_run": epoch}
            save_checkpoint(out, model.cpu(), meta, extra=extra, force=True)
            model.to(device)
        state = {"state_dict": model.state_dict(), "optimizer": opt.state_dict(),
                 "scheduler": sched.state_dict() if sched else None, "history": history, "best": best,
                 "epoch": epoch, "generator": gen.get_state()}
        atomic_write(last_path, lambda p, state=state: torch.save(state, p), force=True)  # resumable after a crash
        if progress:
            progress({"event": "epoch", **row, "best_epoch": best["epoch"], "improved": improved})
    # The best checkpoint records the whole run's history, not just the epochs up to its own.
    final = load_checkpoint(out)
    extra = {**final.extra, "history": history, "epochs_run": cfg.epochs}
    save_checkpoint(out, final.model, final.meta, extra=extra, force=True)
    return {"out": str(out), "best": best, "history": history, "load_seconds": load_s, "device": str(device)}
