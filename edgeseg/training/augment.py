"""Augmentation on the device, per batch, on float tensors in [0, 1]: flips and colour jitter, zoom-in and
zoom-out windows with rotation, blur, grey; and one epoch's draw of augmented batches."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn

from edgeseg.evaluation.datasets import IGNORE
from edgeseg.training.recipe import TrainConfig


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


DARK_GAIN = (0.15, 0.5)  # what is left of the light: a lamp-lit room to a dim one, before the camera's gain
DARK_GAMMA = (1.0, 2.0)  # shadows sink faster than highlights
DARK_NOISE = 0.04  # the largest per-pixel noise sigma (of the [0, 1] range): the gain the camera then applies


def random_dark(x: torch.Tensor, p: float, gen: torch.Generator) -> torch.Tensor:
    """A share ``p`` of the batch dimmed as a dim room or dusk looks to a small camera: a gamma that sinks
    the shadows, a gain well under one, and sensor noise; the dark animals a pet camera misses at night."""
    n = x.shape[0]

    def draw(lo: float, hi: float) -> torch.Tensor:
        return (lo + torch.rand(n, 1, 1, 1, generator=gen) * (hi - lo)).to(x.device)

    chosen = (torch.rand(n, generator=gen) < p)[:, None, None, None].to(x.device)
    noise = torch.randn(x.shape, generator=gen).to(x.device) * draw(0.0, DARK_NOISE)
    dim = (x.clamp_min(0) ** draw(*DARK_GAMMA) * draw(*DARK_GAIN) + noise).clamp(0, 1)
    return torch.where(chosen, dim, x)


def epoch_batches(images: torch.Tensor, masks: torch.Tensor, draw: torch.Tensor | None, steps: int,
                  cfg: TrainConfig, gen: torch.Generator, device: torch.device
                  ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """One epoch's draw, augmented: what the steps train on and what averaged weights refresh BatchNorm on.
    ``draw`` weights the photos (balance, negatives: drawn with replacement); None shuffles them. An epoch
    is ``steps`` batches of the draw (train: as many as the trainval samples fill, so photos from
    --extra-data are drawn among them rather than added to the epoch)."""
    perm = (torch.multinomial(draw, len(images), replacement=True, generator=gen) if draw is not None
            else torch.randperm(len(images), generator=gen))
    for step in range(steps):
        idx = perm[step * cfg.batch:(step + 1) * cfg.batch]
        x = images[idx].to(device).float() / 255.0
        y = masks[idx].to(device)
        x, y = augment(x, y, cfg.jitter, gen)
        if cfg.scale_aug < 1.0 or cfg.zoom_out > 1.0 or cfg.rotate:
            x, y = random_crop(x, y, cfg.scale_aug, gen, cfg.rotate, cfg.zoom_out)
        x = random_blur(x, cfg.blur, gen)
        if cfg.dark:
            x = random_dark(x, cfg.dark, gen)
        if cfg.gray:
            x = random_gray(x, cfg.gray, gen)
        yield x.contiguous(memory_format=torch.channels_last), y
