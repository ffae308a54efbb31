"""Train SegNet / SegNet-DSC on Oxford-IIIT Pet layout folders with the notebook's recipe.

Recipe (defaults): 128x128 inputs, random horizontal flip, colour jitter, Adam lr 1e-3,
cross-entropy over pet/background/border (plus, optionally, the Lovasz-softmax IoU loss), StepLR or cosine
schedule, optionally from a checkpoint's weights (fine-tuning). Images are decoded and resized once
(through :func:`edgeseg.runtime.images.preprocess`'s resize) and augmented per batch as tensors, so an epoch
costs the network's compute, not JPEG decoding. The best epoch by validation mIoU is kept.

    data = load_data(cfg)                      # photos, crops, extra data; the validation hold-out
    run = Run.start(cfg, model, device, resume)  # optimizer, schedule, history (from a *.last.pth)
    for epoch in run.remaining():
        loss = train_epoch(...)                # the steps
        improved = run.record(validate(...))   # validation mIoU picks the kept checkpoint
        run.save_state(last_path)              # resumable after a crash
"""

from __future__ import annotations

import functools
import math
import operator
import random
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.optim import swa_utils

from edgeseg import __version__
from edgeseg.compile.checkpoint import load_checkpoint, save_checkpoint
from edgeseg.compile.nets import build_model
from edgeseg.errors import EdgesegError
from edgeseg.evaluation.metrics import ConfusionMatrix
from edgeseg.evaluation.yolo_data import load_yolo_set, training_split
from edgeseg.files import atomic_write, check_writable
from edgeseg.runtime.backends.precision import cpu_flags, native_precisions
from edgeseg.runtime.meta import ModelMeta
from edgeseg.training import trainset
from edgeseg.training.augment import epoch_batches
from edgeseg.training.losses import training_loss
from edgeseg.training.recipe import SCHEDULES, TrainConfig
from edgeseg.training.scene_checks import SceneChecks

Progress = Callable[[dict], None]


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


PATH_FIELDS = ("data", "cache", "init", "extra_data", "no_animal", "yolo_data", "val_people", "val_no_animal",
               "val_yolo")


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


def recipe_changes(started: dict | None, now: dict) -> list[str]:
    """The options of a resumed run that differ from the ones it was started with, as 'option was X, now Y'.
    What only reports (the scene sets), where it runs (device, precision), the cache's name (a run moved to
    a GPU machine) and --average (a mean of the epochs it holds, recorded so) may change; --data may be left
    out when the cache holds the photos; --epochs may grow under the step schedule (the cosine one was laid
    out over the epochs it started with, and its saved state keeps that length); --animal-classes may change
    unless a --yolo-data set trains. A state saved before edgeseg recorded its recipe is not checked; an
    option that an older edgeseg did not record counts as its default."""
    if started is None:
        return []
    default = portable(asdict(TrainConfig()))
    free = {"device", "precision", "cache", "val_people", "val_numbered", "val_no_animal", "val_yolo", "yolo_split",
            "person_class", "average"}
    if not (started.get("data") and now.get("data")):
        free.add("data")
    if started.get("schedule") == "step":
        free.add("epochs")
    if not (started.get("yolo_data") or now.get("yolo_data")):
        free.add("animal_classes")
    was = {k: started.get(k, default.get(k)) for k in set(started) | set(now)}
    return [f"--{k.replace('_', '-')} was {was[k]!r}, now {now.get(k)!r}"
            for k in sorted(was) if k not in free and was[k] != now.get(k)]


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
    if "soup_of" in extra:  # a soup's ingredients, each with its own record
        record["soup_of"] = [{k: part[k] for k in ("file", "sha256", "provenance") if k in part}
                             | training_record(part) for part in extra["soup_of"]]
    return record


def training_set(cfg: TrainConfig, progress: Progress | None = None) -> trainset.TrainSet:
    """The decoded training photos: from ``cfg.cache`` when it exists (refused when it was built from
    other data than ``cfg.data`` names), else from the folders, then written to ``cfg.cache``."""
    cache = Path(cfg.cache) if cfg.cache else None
    crops = cfg.negatives > 0
    samples = trainset.trainval_samples(cfg.folders) if cfg.folders else None
    if samples is not None and cfg.limit:
        samples = samples[: cfg.limit]
    if cache is not None and cache.exists():
        if progress:
            progress({"event": "cache", "path": str(cache)})
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


@dataclass
class TrainingData:
    """What one run trains and validates on, decoded and resized once."""

    images: torch.Tensor  # (N, 3, H, W) uint8 RGB: trainval photos minus the hold-out, their crops, extra data
    masks: torch.Tensor  # (N, H, W) int64 class ids, IGNORE where unlabelled
    draw: torch.Tensor | None  # drawing probabilities (balance, negatives); None: a plain shuffle
    steps: int  # batches per epoch
    val_images: np.ndarray
    val_masks: np.ndarray
    counts: dict  # for the model's provenance
    seconds: float

    def batches(self, cfg: TrainConfig, gen: torch.Generator, device: torch.device
                ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return epoch_batches(self.images, self.masks, self.draw, self.steps, cfg, gen, device)


def load_data(cfg: TrainConfig, progress: Progress | None = None) -> TrainingData:
    """The training set (from its cache or the folders), the --no-animal photos, the --yolo-data sets and
    --extra-data, split into training and the validation hold-out (a photo's crops are held out with it)."""
    t0 = time.perf_counter()
    size = tuple(cfg.size)
    free = [trainset.load_no_animal(f, size, cfg.interpolation) for f in cfg.no_animal_folders]
    for f in cfg.yolo_data:
        data = load_yolo_set(Path(f), training_split(Path(f)))
        free.append(trainset.load_yolo(data, data.class_ids(cfg.animal_classes, "--animal-classes"), size,
                                       cfg.interpolation))
    ts = training_set(cfg, progress)
    if free:  # one concatenation: each one copies the whole training set
        ts = ts + functools.reduce(operator.add, free)
    val_idx, held_out = trainset.validation_split(ts, cfg.val_fraction, cfg.seed)
    train_idx = np.array([i for i in range(len(ts)) if ts.names[i] not in held_out], dtype=np.int64)
    images, masks = ts.images[train_idx], ts.masks[train_idx]
    weights = trainset.draw_weights([ts.names[i] for i in train_idx], ts.negative[train_idx], cfg.balance,
                                    cfg.negatives)
    n_extra = 0
    if cfg.extra_data:
        ex_images, ex_masks = trainset.load_rough(cfg.extra_data, cfg.size, cfg.interpolation, cfg.extra_band,
                                                  skip=set(ts.names))
        images, masks = np.concatenate([images, ex_images]), np.concatenate([masks, ex_masks])
        weights = np.concatenate([weights, np.full(len(ex_images), weights.mean() if len(weights) else 1.0)])
        n_extra = len(ex_images)
    n_negative = int(ts.negative[train_idx].sum())
    n_free = sum(1 for i in train_idx if ts.names[i].startswith("no-animal:"))
    n_composite = sum(1 for i in train_idx if ts.names[i].startswith(trainset.COMPOSITE) and not ts.negative[i])
    yolo = [i for i in train_idx if ts.names[i].startswith(trainset.YOLO)]
    n_yolo_negative = int(ts.negative[yolo].sum())
    counts = {"train_images": int((~ts.negative[train_idx]).sum()) - n_composite - (len(yolo) - n_yolo_negative),
              "composite_images": n_composite, "negative_crops": n_negative - n_free - n_yolo_negative,
              "no_animal_images": n_free, "yolo_images": len(yolo), "val_images": len(held_out),
              "extra_images": n_extra}
    draw = torch.from_numpy(weights / weights.sum()) if cfg.balance != "none" or cfg.negatives else None
    return TrainingData(torch.from_numpy(images), torch.from_numpy(masks).long(), draw,
                        math.ceil(len(train_idx) / cfg.batch), ts.images[val_idx], ts.masks[val_idx], counts,
                        time.perf_counter() - t0)


def model_meta(cfg: TrainConfig, recipe: dict, data: TrainingData) -> ModelMeta:
    """The metadata every checkpoint of the run carries: input conventions and where the weights came from."""
    c = data.counts
    return ModelMeta(
        arch=cfg.arch, kernel_size=cfg.kernel_size, input_size=tuple(cfg.size), interpolation=cfg.interpolation,
        provenance={"trained_with": f"edgeseg {__version__} train", "data": recipe["data"] or recipe["cache"],
                    "split": "trainval", "train_images": c["train_images"], "negative_crops": c["negative_crops"],
                    "composite_images": c["composite_images"], "no_animal_images": c["no_animal_images"],
                    "yolo_data": recipe["yolo_data"], "yolo_images": c["yolo_images"],
                    "val_images": c["val_images"], "seed": cfg.seed,
                    "extra_data": recipe["extra_data"], "extra_images": c["extra_images"]},
    )


@dataclass
class Run:
    """The state of a run between epochs, which a *.last.pth holds so that --resume continues it."""

    model: nn.Module
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LRScheduler | None
    gen: torch.Generator
    average_from: int  # the first epoch whose weights go into --average's mean
    recipe: dict  # portable(cfg): a resumed run must have been started with the same
    history: list[dict] = field(default_factory=list)
    best: dict = field(default_factory=lambda: {"miou": -1.0, "epoch": 0})
    epoch: int = 0  # the last finished epoch
    average: swa_utils.AveragedModel | None = None

    @classmethod
    def start(cls, cfg: TrainConfig, model: nn.Module, gen: torch.Generator, resume: str | Path | None) -> Run:
        opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
        run = cls(model, opt, scheduler(opt, cfg), gen,
                  cfg.epochs - cfg.average + 1 if cfg.average else cfg.epochs + 1, portable(asdict(cfg)))
        if resume is not None:
            run.load_state(resume)
        return run

    def load_state(self, path: str | Path) -> None:
        state = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(state, dict) or "optimizer" not in state:
            raise EdgesegError("not a training state saved by edgeseg train (*.last.pth)", path)
        if changed := recipe_changes(state.get("recipe"), self.recipe):
            raise EdgesegError(f"this run was started with other options ({'; '.join(changed)}): resume it with "
                               "the options it was started with, or start a new stage with --init", path)
        self.model.load_state_dict(state["state_dict"])
        self.opt.load_state_dict(state["optimizer"])
        if self.sched and state.get("scheduler"):
            self.sched.load_state_dict(state["scheduler"])
        self.history, self.best, self.epoch = list(state["history"]), dict(state["best"]), int(state["epoch"])
        self.gen.set_state(state["generator"])
        if state.get("average") and self.epoch + 1 > self.average_from:
            self.average = swa_utils.AveragedModel(self.model)
            self.average.load_state_dict(state["average"])

    def save_state(self, path: Path) -> None:
        state = {"state_dict": self.model.state_dict(), "optimizer": self.opt.state_dict(),
                 "scheduler": self.sched.state_dict() if self.sched else None, "history": self.history,
                 "best": self.best, "epoch": self.epoch, "generator": self.gen.get_state(), "recipe": self.recipe,
                 "average": self.average.state_dict() if self.average is not None else None}
        atomic_write(path, lambda p: torch.save(state, p), force=True)

    def remaining(self, epochs: int) -> range:
        return range(self.epoch + 1, epochs + 1)

    def record(self, row: dict) -> bool:
        """One finished epoch: its row in the history, the best so far, its weights in the running mean.
        True when it validated better than every epoch before it."""
        self.epoch = row["epoch"]
        self.history.append(row)
        improved = row["val_miou"] > self.best["miou"]
        if improved:
            self.best = {"miou": row["val_miou"], "pixel_accuracy": row["val_pixel_accuracy"], "epoch": self.epoch}
        if self.epoch >= self.average_from:
            if self.average is None:
                self.average = swa_utils.AveragedModel(self.model)
            self.average.update_parameters(self.model)  # the first call copies, the next ones keep a running mean
        return improved


def train_epoch(run: Run, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], loss_fn: Callable, steps: int,
                precision: str, device: torch.device, progress: Progress | None, epoch: int) -> float:
    """The steps of one epoch; returns the mean loss."""
    run.model.train()
    running = 0.0
    for step, (x, y) in enumerate(batches):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            scores = run.model(x)
        loss = loss_fn(scores, y)
        run.opt.zero_grad(set_to_none=True)
        loss.backward()
        run.opt.step()
        running += loss.item()
        if progress:
            progress({"event": "step", "epoch": epoch, "step": step + 1, "steps": steps, "loss": running / (step + 1)})
    if run.sched:
        run.sched.step()
    return running / steps


def train(cfg: TrainConfig, out: str | Path, resume: str | Path | None = None, force: bool = False,
          progress: Progress | None = None) -> dict:
    """Train and write the best checkpoint to ``out``; returns a summary. ``progress`` gets per-step events."""
    out = check_writable(out, force=force or resume is not None)
    last_path = out.with_name(out.stem + ".last" + out.suffix)
    draws = cfg.seed if cfg.shuffle_seed is None else cfg.shuffle_seed  # the hold-out keeps cfg.seed
    random.seed(draws)
    np.random.seed(draws)
    torch.manual_seed(draws)
    gen = torch.Generator().manual_seed(draws)
    device = pick_device(cfg.device)
    precision = pick_precision(cfg.precision, device)
    if cfg.schedule not in SCHEDULES:  # refused before anything loads
        raise EdgesegError(f"--schedule {cfg.schedule!r}: expected {' or '.join(SCHEDULES)}")
    model, parent = initial_model(cfg)  # a bad --init is refused before the photos load
    checks = SceneChecks.from_config(cfg)  # so is a bad --val-* folder
    # channels-last: oneDNN's and cuDNN's fast layout for these convolutions (1.4x per CPU step in fp32)
    run = Run.start(cfg, model.to(device, memory_format=torch.channels_last), gen, resume)  # a bad --resume too
    data = load_data(cfg, progress)
    loss_fn = training_loss(cfg.border_weight, cfg.lovasz, device)
    recipe = run.recipe
    meta = model_meta(cfg, recipe, data)

    for epoch in run.remaining(cfg.epochs):
        t_epoch = time.perf_counter()
        loss = train_epoch(run, data.batches(cfg, gen, device), loss_fn, data.steps, precision, device, progress,
                           epoch)
        val = evaluate_arrays(run.model, data.val_images, data.val_masks, device)
        seen = {"scenes": checks.score(run.model, meta, str(device))} if checks else {}
        row = {"epoch": epoch, "loss": loss, "val_miou": val["miou"], "val_pixel_accuracy": val["pixel_accuracy"],
               **seen, "seconds": time.perf_counter() - t_epoch, "lr": run.opt.param_groups[0]["lr"],
               "precision": precision}
        improved = run.record(row)
        if improved:
            extra = {"recipe": recipe, "history": run.history, "best": run.best, "epochs_run": epoch, **parent}
            save_checkpoint(out, run.model.cpu(), meta, extra=extra, force=True)
            run.model.to(device)
        run.save_state(last_path)  # resumable after a crash
        if progress:
            progress({"event": "epoch", **row, "best_epoch": run.best["epoch"], "improved": improved})
    kept, averaged = None, None
    if run.average is not None:
        # the epochs it holds (fewer than --average when a run was resumed with it after its first epoch)
        span = (cfg.epochs - int(run.average.n_averaged) + 1, cfg.epochs)
        averaged = averaged_weights(run.average, data.batches(cfg, gen, device), data.val_images, data.val_masks,
                                    device, span)
        if progress:
            progress({"event": "average", **averaged, "improved": averaged["val_miou"] > run.best["miou"]})
        if averaged["val_miou"] > run.best["miou"]:
            run.best = {"miou": averaged["val_miou"], "pixel_accuracy": averaged["val_pixel_accuracy"],
                        "epoch": cfg.epochs, "averaged": list(span)}
            kept = run.average.module.cpu()
    # The kept checkpoint records the whole run's history, not just the epochs up to its own.
    extra = {"recipe": recipe, "history": run.history, "best": run.best, "epochs_run": cfg.epochs, **parent,
             **({"average": averaged} if averaged else {})}
    save_checkpoint(out, kept if kept is not None else load_checkpoint(out).model, meta, extra=extra, force=True)
    return {"out": str(out), "best": run.best, "history": run.history, "load_seconds": data.seconds,
            "device": str(device), "precision": precision}
