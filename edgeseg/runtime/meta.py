"""What a deployed model needs to know about itself: architecture, input and preprocessing, classes.

The same record travels in edgeseg checkpoints (``meta``), in ONNX ``metadata_props`` and beside
engines, so every command preprocesses a frame the way the model was trained. No PyTorch here.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields

from edgeseg import CLASS_NAMES

INTERPOLATIONS = ("nearest", "linear", "area", "cubic")
# (in, out, convs) of the encoder blocks dc1..dc4 and the decoder blocks uc4..uc1
ENCODER = ((3, 64, 2), (64, 128, 2), (128, 256, 3), (256, 512, 3))
DECODER = ((512, 256, 3), (256, 128, 3), (128, 64, 2), (64, 3, 2))


def conv_macs(arch: str, kernel_size: int, height: int, width: int) -> int:
    """Multiply-accumulates of all convolutions at an input of ``height`` x ``width`` (no PyTorch needed)."""
    k2 = kernel_size * kernel_size
    total = 0

    def conv(cin: int, cout: int, pixels: int) -> int:
        return pixels * (cin * k2 + cin * cout if arch == "segnet-dsc" else cin * cout * k2)

    for level, (cin, cout, n) in enumerate(ENCODER):
        pixels = (height >> level) * (width >> level)
        total += conv(cin, cout, pixels) + (n - 1) * conv(cout, cout, pixels)
    for level, (cin, cout, n) in zip((3, 2, 1, 0), DECODER, strict=True):
        pixels = (height >> level) * (width >> level)
        total += (n - 1) * conv(cin, cin, pixels) + conv(cin, cout, pixels)
    return total


@dataclass(frozen=True)
class ModelMeta:
    arch: str = "segnet-dsc"
    kernel_size: int = 3
    input_size: tuple[int, int] = (128, 128)  # height, width
    class_names: tuple[str, ...] = CLASS_NAMES
    # Preprocessing: RGB, values in [0, 1], NCHW float32, resized with this OpenCV interpolation.
    # The notebook trained with nearest-neighbour resizing, so that is the default for its
    # checkpoints; edgeseg's own training records what it used.
    interpolation: str = "nearest"
    color: str = "RGB"
    value_range: tuple[float, float] = (0.0, 1.0)
    layout: str = "NCHW"
    # The graph averages each frame's logits with its mirror image's (edgeseg export --flip-average): the
    # runtime need do nothing about it, but the work per frame is twice the convolutions'.
    flip_average: bool = False
    provenance: dict = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        """Metadata comes from files (checkpoints, ONNX properties): every field is checked, so that a damaged
        or hostile one fails here, with its name, rather than deep in preprocessing."""
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"interpolation must be one of {INTERPOLATIONS}, got {self.interpolation!r}")
        size = self.input_size
        if len(size) != 2 or not all(isinstance(n, int) and not isinstance(n, bool) and 0 < n <= 8192 for n in size):
            raise ValueError(f"input_size must be two whole numbers from 1 to 8192, got {list(size)!r}")
        if not self.class_names or not all(isinstance(n, str) for n in self.class_names):
            raise ValueError(f"class_names must be names, got {list(self.class_names)!r}")
        lo_hi = self.value_range
        if len(lo_hi) != 2 or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in lo_hi) \
                or not lo_hi[0] < lo_hi[1]:
            raise ValueError(f"value_range must be two finite numbers, low then high, got {list(lo_hi)!r}")
        if self.color not in ("RGB", "BGR") or self.layout != "NCHW":
            raise ValueError(f"color must be RGB or BGR and layout NCHW, got {self.color!r} and {self.layout!r}")
        if not isinstance(self.arch, str) or not isinstance(self.kernel_size, int) \
                or not isinstance(self.provenance, dict) or not isinstance(self.flip_average, bool):
            raise ValueError("arch must be a name, kernel_size a whole number, flip_average true or false and "
                             "provenance a mapping")

    def frame_macs(self) -> int:
        """Multiply-accumulates of the convolutions one frame costs (twice the network's for a mirror average)."""
        h, w = self.input_size
        return conv_macs(self.arch, self.kernel_size, h, w) * (2 if self.flip_average else 1)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["input_size"] = list(self.input_size)
        d["class_names"] = list(self.class_names)
        d["value_range"] = list(self.value_range)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> ModelMeta:
        """Raises ValueError for anything that is not edgeseg metadata."""
        if not isinstance(d, dict):
            raise ValueError(f"metadata must be a mapping, got {type(d).__name__}")
        known = {f.name for f in fields(cls)}
        kw = {k: v for k, v in d.items() if k in known}
        for key in ("input_size", "class_names", "value_range"):
            if key in kw:
                if not isinstance(kw[key], (list, tuple)):
                    raise ValueError(f"{key} must be a list, got {kw[key]!r}")
                kw[key] = tuple(kw[key])
        return cls(**kw)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    def with_(self, **changes) -> ModelMeta:
        d = self.to_dict()
        d.update(changes)
        return ModelMeta.from_dict(d)
