"""What a deployed model needs to know about itself: architecture, input and preprocessing, classes.

The same record travels in edgeseg checkpoints (``meta``), in ONNX ``metadata_props`` and beside
engines, so every command preprocesses a frame the way the model was trained. No PyTorch here.
"""

from __future__ import annotations

import json
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
    provenance: dict = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"interpolation must be one of {INTERPOLATIONS}, got {self.interpolation!r}")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["input_size"] = list(self.input_size)
        d["class_names"] = list(self.class_names)
        d["value_range"] = list(self.value_range)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> ModelMeta:
        known = {f.name for f in fields(cls)}
        kw = {k: v for k, v in d.items() if k in known}
        for key in ("input_size", "class_names", "value_range"):
            if key in kw:
                kw[key] = tuple(kw[key])
        return cls(**kw)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    def with_(self, **changes) -> ModelMeta:
        d = self.to_dict()
        d.update(changes)
        return ModelMeta.from_dict(d)
