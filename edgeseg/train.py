"""Train SegNet / SegNet-DSC on an Oxford-IIIT Pet layout folder with the notebook's recipe.

Recipe (defaults): 128x128 inputs, random horizontal flip, colour jitter, Adam lr 1e-3,
cross-entropy over pet/background/border (plus, optionally, the Lovasz-softmax IoU loss), StepLR or cosine
schedule, optionally from a checkpoint's weights (fine-tuning). Images are decoded and resized once
(through :func:`edgeseg.runtime.images.preprocess`'s resize) and augmented per batch as tensors, so an epoch
costs the network's compute, not JPEG decoding. The best epoch by validation mIoU is kept.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import nn
from torch.optim import swa_utils

from edgeseg import __version__, trainset
from edgeseg.build.checkpoint import load_checkpoint, save_checkpoint
from edgeseg.build.nets import build_model
from edgeseg.errors import EdgesegError
from edgeseg.evaluation.datasets import IGNORE, resize_mask
from edgeseg.evaluation.metrics import ConfusionMatrix
from edgeseg.files import atomic_write, check_writable
from edgeseg.losses import lovasz_softmax
from edgeseg.recipe import SCHEDULES, TrainConfig
from edgeseg.runtime.images import read_image, resize
from edgeseg.runtime.meta import ModelMeta
from edgeseg.runtime.precision import cpu_flags, native_precisions


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


def random_crop(x: torch.Tensor, y: torch.Tensor, min_scale: float, gen: torch.Generator, degrees: float = 0.0,
                max_scale: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample random zoom (a window of ``min_scale``..``max_scale`` of the side, resized to the
    input: below 1 a crop, above 1 the whole photo made smaller inside a reflected border) and rotation
    (within +-``degrees``): bilinear for images, nearest for labels; label pixels that come from
    outside the photo (rotated corners, the border of a zoom-out) are ignored by the loss."""
    n = x.shape[0]
    scale = min_scale + (max_scale - min_scale) * torch.rand(n, generator=gen)
    shift = (1 - scale).abs()[:, None] * (torch.rand(n, 2, generator=gen) * 2 - 1)
    angle = torch.deg2rad((torch.rand(n, generator=gen) * 2 - 1) * degrees)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = theta[:, 1, 1] = scale * torch.cos(angle)
    theta[:, 0, 1], theta[:, 1, 0] = -scale * torch.sin(angle), scale * torch.sin(angle)
    theta[:, :, 2] = shift
    grid = nn.functional.affine_grid(theta.to(x.device), list(x.shape), align_corners=False)
    x = nn.functional.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    # labels shifted by one so that zero padding marks the outside
    y1 = nn.functional.grid_sample((y[:, None].float() + 1), grid, mode="nearest", padding_mode="zeros",
                                   align_corners=False)[:, 0].long()
    return x, torch.where(y1 == 0, torch.full_like(y1, IGNORE), y1 - 1)


def random_blur(x: torch.Tensor, p: float, gen: torch.Generator) -> torch.Tensor:
    """Blur a share ``p`` of the batch with a 5x5 Gaussian of sigma 0.5..1.5 (out-of-focus frames)."""
    n = x.shape[0]
    chosen = torch.rand(n, generator=gen) < p
    if p <= 0 or not chosen.any():
        return x
    sigma = 0.5 + torch.rand(1, generator=gen).item()
    t = torch.arange(5, dtype=torch.float32) - 2
    k1 = torch.exp(-(t**2) / (2 * sigma**2))
    k1 /= k1.sum()
    kernel = (k1[:, None] * k1[None, :]).to(x.device).expand(3, 1, 5, 5)
    blurred = nn.functional.conv2d(nn.functional.pad(x, (2, 2, 2, 2), mode="reflect"), kernel, groups=3)
    return torch.where(chosen[:, None, None, None].to(x.device), blurred, x)


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


def random_gray(x: torch.Tensor, p: float, gen: torch.Generator) -> torch.Tensor:
    """A share ``p`` of the batch turned to grey (luma in all three channels): night-vision and monochrome
    cameras, and shape over coat colour."""
    chosen = (torch.rand(x.shape[0], generator=gen) < p)[:, None, None, None].to(x.device)
    luma = (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]).expand_as(x)
    return torch.where(chosen, luma, x)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def pick_precision(name: str, device: torch.device) -> str:
    """The training step's compute precision. ``auto`` takes bf16 autocast where the device has bf16 arithmetic
    (CUDA Ampere+, x86 AVX512-BF16/AMX, ARM BF16), else fp32. Weights, optimizer state, BatchNorm statistics and
    the loss stay FP32 either way, and validation (which picks the kept epoch) runs in FP32, the precision the
    model is exported in. On a 2-vCPU AMX Xeon a batch-8 step took 314 ms in bf16 vs 597 ms in fp32 (both
    channels-last; benchmarks/train_step.py, docs/training.md)."""
    if name not in ("auto", "fp32", "bf16"):
        raise EdgesegError(f"--precision {name!r}: expected auto, fp32 or bf16")
    if name != "auto":
        return name
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if device.type == "cpu" and "bf16" in native_precisions(cpu_flags()) else "fp32"


@torch.no_grad()
def evaluate_arrays(model: nn.Module, images: np.ndarray, masks: np.ndarray, device: torch.device,
                    batch: int = 32) -> dict:
    """Metrics at the training resolution (fast, for picking epochs; `edgeseg eval` scores at full size)."""
    model.eval()
    cm = ConfusionMatrix()
    for i in range(0, len(images), batch):
        x = (torch.from_numpy(images[i:i + batch]).to(device).float() / 255.0).contiguous(
            memory_format=torch.channels_last)
        pred = model(x).argmax(1).to(torch.uint8).cpu().numpy()
        cm.update(masks[i:i + batch], pred)
    return cm.summary()


@torch.no_grad()
def averaged_weights(average: swa_utils.AveragedModel, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
                     va_x: np.ndarray, va_y: np.ndarray, device: torch.device, epochs: tuple[int, int]) -> dict:
    """Refresh the averaged weights' BatchNorm statistics on one augmented epoch (an average of weights
    is not the average of their statistics) and score them on the validation photos."""
    swa_utils.update_bn((x for x, _ in batches), average, device)
    val = evaluate_arrays(average.module, va_x, va_y, device)
    return {"epochs": list(epochs), "val_miou": val["miou"], "val_pixel_accuracy": val["pixel_accuracy"]}


def scheduler(opt: torch.optim.Optimizer, cfg: TrainConfig) -> torch.optim.lr_scheduler.LRScheduler | None:
    """The learning-rate schedule, stepped once per epoch."""
    if cfg.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs, eta_min=cfg.lr / 100)
    return torch.optim.lr_scheduler.StepLR(opt, cfg.step_size, cfg.gamma) if cfg.step_size else None


PATH_FIELDS = ("data", "cache", "init", "extra_data", "no_animal")


def portable(recipe: dict) -> dict:
    """A recipe as a checkpoint records it: paths by their last part (the dataset folders' names, the
    cache's and the parent checkpoint's file names), so that a shipped checkpoint does not carry the
    trainer's directory layout. Also applied to a parent's recipe recorded by an older edgeseg."""
    def name(key: str, v: object) -> object:
        if isinstance(v, (list, tuple)):
            return ", ".join(Path(str(f)).name for f in v)
        if isinstance(v, str) and v:  # "data" of an older record: folders already joined with ", "
            return ", ".join(Path(f).name for f in (v.split(", ") if key == "data" else [v]))
        return v

    return {k: (name(k, v) if k in PATH_FIELDS else list(v) if isinstance(v, tuple) else v)
            for k, v in recipe.items()}


def initial_model(cfg: TrainConfig) -> tuple[nn.Module, dict]:
    """A fresh network, or ``cfg.init``'s weights to fine-tune. The second value is what the new checkpoint
    records of where it started: the parent's file hash and its own training record, so that a model
    trained in stages keeps every stage's recipe and history."""
    if cfg.init is None:
        return build_model(cfg.arch, cfg.kernel_size), {}
    start = load_checkpoint(cfg.init)  # weights_only: an untrusted file
    arch = start.meta.arch
    if arch != cfg.arch or start.meta.kernel_size != cfg.kernel_size:
        raise EdgesegError(f"this checkpoint is {arch} k={start.meta.kernel_size}, not the {cfg.arch} "
                           f"k={cfg.kernel_size} asked for: pass --arch {arch}", cfg.init)
    return start.model.train(), {"init_from": {"file": Path(cfg.init).name, "sha256": start.sha256,
                                               **training_record(start.extra)}}


def training_record(extra: dict) -> dict:
    """What a checkpoint's training record passes on to a model fine-tuned from it, paths made portable
    at every stage."""
    record = {k: extra[k] for k in ("recipe", "history", "best", "epochs_run") if k in extra}
    if "recipe" in record:
        record["recipe"] = portable(record["recipe"])
    if "init_from" in extra:
        parent = extra["init_from"]
        record["init_from"] = {"file": parent.get("file"), "sha256": parent.get("sha256"), **training_record(parent)}
    return record


def training_set(cfg: TrainConfig, progress: Callable[[dict], None] | None = None) -> trainset.TrainSet:
    """The decoded training photos: from ``cfg.cache`` when it exists (refused when it was built from
    other data than ``cfg.data`` names), else from the folders, then written to ``cfg.cache``."""
    cache = Path(cfg.cache) if cfg.cache else None
    crops = cfg.negatives > 0
    samples = trainset.trainval_samples(cfg.folders) if cfg.folders else None
    if samples is not None and cfg.limit:
        samples = samples[: cfg.limit]
    if cache is not None and cache.exists():
        ts, info = trainset.load_cache(cache)
        if samples is None and cfg.limit:  # the cache alone: its first photos (with their crops)
            first = set(list(dict.fromkeys(ts.names))[: cfg.limit])
            ts = ts.select(np.array([i for i, n in enumerate(ts.names) if n in first], dtype=np.int64))
        if samples is not None and info.get("fingerprint") != trainset.fingerprint(
                samples, cfg.size, cfg.interpolation, crops):
            raise EdgesegError("this training cache was built from other photos, size or options than --data asks "
                               "for: delete it, or leave out --data to train from the cache alone", cache)
        if tuple(info.get("size", ())) != tuple(cfg.size) or info.get("negatives") != crops:
            raise EdgesegError(f"this training cache holds {info.get('size')} inputs with negatives="
                               f"{info.get('negatives')}; train with those, or rebuild it", cache)
        return ts
    if samples is None:
        raise EdgesegError("give --data (an Oxford-IIIT Pet layout folder, repeatable) or an existing --cache")

    def loaded(i: int, n: int) -> None:
        if progress:
            progress({"event": "loading", "done": i, "total": n})

    ts = trainset.load(samples, tuple(cfg.size), cfg.interpolation, crops, loaded)
    if cache is not None:
        info = {"fingerprint": trainset.fingerprint(samples, cfg.size, cfg.interpolation, crops),
                "folders": list(cfg.folders), "size": list(cfg.size), "negatives": crops,
                "interpolation": cfg.interpolation}
        trainset.save_cache(ts, cache, info)
    return ts


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
    precision = pick_precision(cfg.precision, device)

    if cfg.schedule not in SCHEDULES:  # refused before anything loads
        raise EdgesegError(f"--schedule {cfg.schedule!r}: expected {' or '.join(SCHEDULES)}")
    model, parent = initial_model(cfg)  # a bad --init is refused before the photos load
    t0 = time.perf_counter()
    free = trainset.load_no_animal(cfg.no_animal, tuple(cfg.size), cfg.interpolation) if cfg.no_animal else None
    ts = training_set(cfg, progress)
    if free is not None:
        ts = ts + free
    val_idx, held_out = trainset.validation_split(ts, cfg.val_fraction, cfg.seed)
    train_idx = np.array([i for i in range(len(ts)) if ts.names[i] not in held_out], dtype=np.int64)
    tr_images, tr_masks = ts.images[train_idx], ts.masks[train_idx]
    weights = trainset.draw_weights([ts.names[i] for i in train_idx], ts.negative[train_idx], cfg.balance,
                                    cfg.negatives)
    n_extra = 0
    if cfg.extra_data:
        ex_images, ex_masks = load_rough(cfg.extra_data, cfg.size, cfg.interpolation, cfg.extra_band,
                                         skip=set(ts.names))
        tr_images, tr_masks = np.concatenate([tr_images, ex_images]), np.concatenate([tr_masks, ex_masks])
        weights = np.concatenate([weights, np.full(len(ex_images), weights.mean() if len(weights) else 1.0)])
        n_extra = len(ex_images)
    load_s = time.perf_counter() - t0
    tr_x, tr_y = torch.from_numpy(tr_images), torch.from_numpy(tr_masks).long()
    va_x, va_y = ts.images[val_idx], ts.masks[val_idx]
    draw = torch.from_numpy(weights / weights.sum()) if cfg.balance != "none" or cfg.negatives else None

    # channels-last: oneDNN's and cuDNN's fast layout for these convolutions (1.4x per CPU step in fp32)
    model = model.to(device, memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    sched = scheduler(opt, cfg)
    loss_fn = nn.CrossEntropyLoss(weight=torch.tensor([1.0, 1.0, cfg.border_weight], device=device),
                                  ignore_index=IGNORE)
    history: list[dict] = []
    best = {"miou": -1.0, "epoch": 0}
    start_epoch = 1
    # Weight averaging (--average K): the mean of the last K epochs' weights, BatchNorm refreshed after
    average_from = cfg.epochs - cfg.average + 1 if cfg.average else cfg.epochs + 1
    average: swa_utils.AveragedModel | None = None
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
        if state.get("average") and start_epoch > average_from:
            average = swa_utils.AveragedModel(model)
            average.load_state_dict(state["average"])

    recipe = portable(asdict(cfg))
    n_negative = int(ts.negative[train_idx].sum())
    n_free = sum(1 for i in train_idx if ts.names[i].startswith("no-animal:"))
    meta = ModelMeta(
        arch=cfg.arch, kernel_size=cfg.kernel_size, input_size=tuple(cfg.size), interpolation=cfg.interpolation,
        provenance={"trained_with": f"edgeseg {__version__} train", "data": recipe["data"] or recipe["cache"],
                    "split": "trainval", "train_images": int((~ts.negative[train_idx]).sum()),
                    "negative_crops": n_negative - n_free, "no_animal_images": n_free, "val_images": len(held_out),
                    "seed": cfg.seed,
                    "extra_data": recipe["extra_data"], "extra_images": n_extra},
    )
    steps = math.ceil(len(train_idx) / cfg.batch)

    def epoch_batches() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """One epoch's draw, augmented: what the steps train on and what averaged weights refresh BatchNorm on."""
        perm = (torch.multinomial(draw, len(tr_x), replacement=True, generator=gen) if draw is not None
                else torch.randperm(len(tr_x), generator=gen))
        for step in range(steps):
            idx = perm[step * cfg.batch:(step + 1) * cfg.batch]
            x = tr_x[idx].to(device).float() / 255.0
            y = tr_y[idx].to(device)
            x, y = augment(x, y, cfg.jitter, gen)
            if cfg.scale_aug < 1.0 or cfg.zoom_out > 1.0 or cfg.rotate:
                x, y = random_crop(x, y, cfg.scale_aug, gen, cfg.rotate, cfg.zoom_out)
            x = random_blur(x, cfg.blur, gen)
            if cfg.gray:
                x = random_gray(x, cfg.gray, gen)
            yield x.contiguous(memory_format=torch.channels_last), y

    for epoch in range(start_epoch, cfg.epochs + 1):
        model.train()
        t_epoch, running = time.perf_counter(), 0.0
        for step, (x, y) in enumerate(epoch_batches()):
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
                scores = model(x)
            loss = loss_fn(scores.float(), y)
            if cfg.lovasz:
                loss = loss + cfg.lovasz * lovasz_softmax(scores, y, IGNORE)
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
               "lr": opt.param_groups[0]["lr"], "precision": precision}
        history.append(row)
        improved = val["miou"] > best["miou"]
        if improved:
            best = {"miou": val["miou"], "pixel_accuracy": val["pixel_accuracy"], "epoch": epoch}
            extra = {"recipe": recipe, "history": history, "best": best, "epochs_run": epoch, **parent}
            save_checkpoint(out, model.cpu(), meta, extra=extra, force=True)
            model.to(device)
        if epoch >= average_from:
            if average is None:
                average = swa_utils.AveragedModel(model)
            average.update_parameters(model)  # the first call copies, the next ones keep a running mean
        state = {"state_dict": model.state_dict(), "optimizer": opt.state_dict(),
                 "scheduler": sched.state_dict() if sched else None, "history": history, "best": best,
                 "epoch": epoch, "generator": gen.get_state(),
                 "average": average.state_dict() if average is not None else None}
        atomic_write(last_path, lambda p, state=state: torch.save(state, p), force=True)  # resumable after a crash
        if progress:
            progress({"event": "epoch", **row, "best_epoch": best["epoch"], "improved": improved})
    kept, averaged = None, None
    if average is not None:
        # the epochs it holds (fewer than --average when a run was resumed with it after its first epoch)
        span = (cfg.epochs - int(average.n_averaged) + 1, cfg.epochs)
        averaged = averaged_weights(average, epoch_batches(), va_x, va_y, device, span)
        if progress:
            progress({"event": "average", **averaged, "improved": averaged["val_miou"] > best["miou"]})
        if averaged["val_miou"] > best["miou"]:
            best = {"miou": averaged["val_miou"], "pixel_accuracy": averaged["val_pixel_accuracy"],
                    "epoch": cfg.epochs, "averaged": list(span)}
            kept = average.module.cpu()
    # The kept checkpoint records the whole run's history, not just the epochs up to its own.
    extra = {"recipe": recipe, "history": history, "best": best, "epochs_run": cfg.epochs, **parent,
             **({"average": averaged} if averaged else {})}
    save_checkpoint(out, kept if kept is not None else load_checkpoint(out).model, meta, extra=extra, force=True)
    return {"out": str(out), "best": best, "history": history, "load_seconds": load_s, "device": str(device),
            "precision": precision}
