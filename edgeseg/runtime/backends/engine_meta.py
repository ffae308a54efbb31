"""What an engine was built from and for, stored beside it as ENGINE.json and checked before loading."""

from __future__ import annotations

import json
import shlex
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from edgeseg import __version__
from edgeseg.errors import EdgesegError
from edgeseg.files import atomic_write


@dataclass
class EngineMeta:
    """Stored beside the engine as ENGINE.json; compared with the running system before loading."""

    tensorrt: str
    gpu: str
    compute_capability: str
    precision: str
    input_shape: list
    onnx_sha256: str
    source_onnx: str
    calibration_sha256: str | None = None
    l4t: str | None = None
    edgeseg: str = __version__
    built_at: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    model_meta: dict = field(default_factory=dict)  # the ONNX's edgeseg_meta (preprocessing, classes)
    # the edgeseg build options that differ from their defaults, replayed by rebuild_command
    build_options: dict = field(default_factory=dict)

    def save(self, engine: Path) -> None:
        text = json.dumps(asdict(self), indent=2)
        atomic_write(meta_path(engine), lambda p: p.write_text(text), force=True)

    @classmethod
    def load(cls, engine: Path) -> EngineMeta:
        p = meta_path(engine)
        if not p.exists():
            raise EdgesegError(f"no {p.name} beside the engine: cannot tell how it was built; rebuild it with "
                               "edgeseg build", engine)
        try:
            data = json.loads(p.read_text())
            known = {f.name for f in fields(cls)}
            return cls(**{k: v for k, v in data.items() if k in known})  # keys of other edgeseg versions
        except (json.JSONDecodeError, TypeError, AttributeError) as e:
            raise EdgesegError(f"{p.name} is unreadable ({e}); rebuild the engine with edgeseg build", engine) from e

    def rebuild_command(self, engine: Path) -> str:
        """The command that builds this engine again, with every option it was built with."""
        args = ["edgeseg", "build", self.source_onnx, "--precision", self.precision]
        for key, value in self.build_options.items():
            args += [f"--{key.replace('_', '-')}", str(value)]
        return shlex.join([*args, "-o", str(engine), "--force"])

    def mismatch(self, system: dict) -> str | None:
        """Why this engine cannot run on ``system`` ({tensorrt, gpu, compute_capability}), or None."""
        for key in ("tensorrt", "gpu", "compute_capability"):
            if system.get(key) != getattr(self, key):
                return f"built for {key.replace('_', ' ')} {getattr(self, key)}, this system has {system.get(key)}"
        return None


def meta_path(engine: Path) -> Path:
    return Path(str(engine) + ".json")
