"""SegNet and SegNet-DSC exactly as the "Efficient Image Segmentation Using PyTorch" notebook builds them.

Module names, nesting and therefore ``state_dict`` keys follow the notebook so that a checkpoint it
saved loads unchanged: ``bn_input``, encoder blocks ``dc1..dc4`` and decoder blocks ``uc4..uc1``,
each a ``.seq`` Sequential of (conv, BatchNorm2d, ReLU) triples plus ``.mp`` (MaxPool2d with
indices) or ``.mup`` (MaxUnpool2d). In the DSC variant every conv is a module with ``.depthwise``
and ``.pointwise`` children.

This module needs PyTorch; the device runtime never imports it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from edgeseg.runtime.meta import DECODER, ENCODER

ARCHS = ("segnet-dsc", "segnet")
NUM_CLASSES = 3


class DepthwiseSeparableConv2d(nn.Module):
    """Depthwise (groups=in_channels) then pointwise 1x1 convolution, both without bias."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, padding: int) -> None:
        super().__init__()
        self.depthwise = nn.Conv2d(
            in_channels, in_channels, kernel_size, padding=padding, groups=in_channels, bias=False
        )
        self.pointwise = nn.Conv2d(in_channels, out_channels, kernel_size=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise(self.depthwise(x))


def _conv(separable: bool, cin: int, cout: int, kernel_size: int) -> nn.Module:
    if separable:
        return DepthwiseSeparableConv2d(cin, cout, kernel_size, padding=kernel_size // 2)
    return nn.Conv2d(cin, cout, kernel_size, padding=kernel_size // 2, bias=False)


def _conv_stack(separable: bool, widths: list[tuple[int, int]], kernel_size: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for cin, cout in widths:
        layers += [_conv(separable, cin, cout, kernel_size), nn.BatchNorm2d(cout), nn.ReLU()]
    return nn.Sequential(*layers)


class DownBlock(nn.Module):
    """Encoder block: ``n`` convs (the first changes the width), then 2x2 max-pool with indices."""

    def __init__(self, separable: bool, cin: int, cout: int, n: int, kernel_size: int) -> None:
        super().__init__()
        self.seq = _conv_stack(separable, [(cin, cout)] + [(cout, cout)] * (n - 1), kernel_size)
        self.mp = nn.MaxPool2d(kernel_size=2, return_indices=True)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Size]:
        y = self.seq(x)
        pooled, indices = self.mp(y)
        return pooled, indices, y.shape


class UpBlock(nn.Module):
    """Decoder block: 2x2 max-unpool with the encoder's indices, then ``n`` convs (the last changes the width)."""

    def __init__(self, separable: bool, cin: int, cout: int, n: int, kernel_size: int) -> None:
        super().__init__()
        self.mup = nn.MaxUnpool2d(kernel_size=2)
        self.seq = _conv_stack(separable, [(cin, cin)] * (n - 1) + [(cin, cout)], kernel_size)

    def forward(self, x: torch.Tensor, indices: torch.Tensor, output_size: torch.Size) -> torch.Tensor:
        return self.seq(self.mup(x, indices, output_size=output_size))


class _SegNetBase(nn.Module):
    separable: bool
    arch: str

    def __init__(self, kernel_size: int = 3) -> None:
        super().__init__()
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd and positive, got {kernel_size}")
        self.kernel_size = kernel_size
        self.out_channels = NUM_CLASSES
        self.bn_input = nn.BatchNorm2d(3)
        for i, (cin, cout, n) in enumerate(ENCODER, start=1):
            setattr(self, f"dc{i}", DownBlock(self.separable, cin, cout, n, kernel_size))
        for i, (cin, cout, n) in zip((4, 3, 2, 1), DECODER, strict=False):
            setattr(self, f"uc{i}", UpBlock(self.separable, cin, cout, n, kernel_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """RGB in [0, 1], NCHW -> per-class scores (after the final ReLU), NCHW."""
        x = self.bn_input(x)
        skips = []
        for i in range(1, 5):
            x, indices, shape = getattr(self, f"dc{i}")(x)
            skips.append((indices, shape))
        for i in range(4, 0, -1):
            indices, shape = skips[i - 1]
            x = getattr(self, f"uc{i}")(x, indices, shape)
        return x


class SegNet(_SegNetBase):
    """SegNet-Basic with regular convolutions (15,274,892 parameters at kernel size 3)."""

    separable = False
    arch = "segnet"


class SegNetDSC(_SegNetBase):
    """SegNet with depthwise-separable convolutions (1,749,671 parameters at kernel size 3)."""

    separable = True
    arch = "segnet-dsc"


def build_model(arch: str, kernel_size: int = 3) -> _SegNetBase:
    """Instantiate the architecture named ``arch`` (one of :data:`ARCHS`)."""
    classes = {"segnet-dsc": SegNetDSC, "segnet": SegNet}
    if arch not in classes:
        raise ValueError(f"unknown arch {arch!r}; expected one of {', '.join(ARCHS)}")
    return classes[arch](kernel_size=kernel_size)


def exact_unpool(pre_pool: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """MaxUnpool2d(2) of ``x`` without indices, bit-exact with PyTorch's MaxPool2d/MaxUnpool2d pair.

    ``pre_pool`` is the encoder activation that was pooled. Each 2x2 window's winner is found by a
    tournament of comparisons in PyTorch's row-major scan order (the first maximum wins ties), so
    every window gets exactly one winner whatever precision the comparisons run at. The ONNX export
    writes the same formula with Slice/GreaterOrEqual/Max/Where/DepthToSpace (see edgeseg.compile.export).
    """
    a, b, c, d = (pre_pool[..., i::2, j::2] for i, j in ((0, 0), (0, 1), (1, 0), (1, 1)))
    top, bottom = a >= b, c >= d
    upper = torch.maximum(a, b) >= torch.maximum(c, d)
    zero = torch.zeros((), dtype=x.dtype, device=x.device)
    x_up, x_low = torch.where(upper, x, zero), torch.where(upper, zero, x)
    parts = [torch.where(top, x_up, zero), torch.where(top, zero, x_up),
             torch.where(bottom, x_low, zero), torch.where(bottom, zero, x_low)]
    return nn.functional.pixel_shuffle(torch.cat(parts, 1).unflatten(1, (4, -1)).transpose(1, 2).flatten(1, 2), 2)


class DeployUnpool(nn.Module):
    """Runs a notebook model with :func:`exact_unpool` in place of MaxUnpool2d (the export's graph, in PyTorch)."""

    def __init__(self, model: _SegNetBase) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = self.model
        x = m.bn_input(x)
        skips = []
        for i in range(1, 5):
            block = getattr(m, f"dc{i}")
            pre = block.seq(x)
            x = nn.functional.max_pool2d(pre, 2)
            skips.append(pre)
        for i in range(4, 0, -1):
            x = getattr(m, f"uc{i}").seq(exact_unpool(skips[i - 1], x))
        return x


@dataclass(frozen=True)
class ModelStats:
    parameters: int
    macs: int  # multiply-accumulates of convolutions at the given input size


def model_stats(model: nn.Module, height: int = 128, width: int = 128) -> ModelStats:
    """Parameter count and conv MACs at ``height`` x ``width`` (BN, ReLU, pooling not counted)."""
    macs = 0

    def hook(module: nn.Conv2d, _inputs, output: torch.Tensor) -> None:
        nonlocal macs
        k = module.kernel_size[0] * module.kernel_size[1]
        macs += output.numel() // output.shape[0] * k * module.in_channels // module.groups

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.Conv2d)]
    try:
        was_training = model.training
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, 3, height, width))
        model.train(was_training)
    finally:
        for h in handles:
            h.remove()
    return ModelStats(parameters=sum(p.numel() for p in model.parameters()), macs=macs)
