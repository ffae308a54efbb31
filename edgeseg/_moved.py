"""The module names of edgeseg 0.1's flat layout, kept importable for one release with a
DeprecationWarning that names the new home (see README "Development" for the layout).

``import edgeseg.export`` resolves to :mod:`edgeseg.build.export`; the two modules that were split
(``edgeseg.data``, ``edgeseg.tensorrt``) resolve to a module holding the public names of their
parts. The finder sits last on ``sys.meta_path``, so it never shadows a real module.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import types
import warnings

MOVED: dict[str, tuple[str, ...]] = {
    "meta": ("edgeseg.runtime.meta",), "sources": ("edgeseg.runtime.sources",),
    "overlay": ("edgeseg.runtime.overlay",), "latency": ("edgeseg.runtime.latency",),
    "run": ("edgeseg.runtime.loop",), "fp16": ("edgeseg.runtime.fp16",),
    "metrics": ("edgeseg.evaluation.metrics",), "evaluate": ("edgeseg.evaluation.evaluate",),
    "nets": ("edgeseg.build.nets",), "checkpoint": ("edgeseg.build.checkpoint",),
    "export": ("edgeseg.build.export",), "check": ("edgeseg.build.check",),
    "onnx_info": ("edgeseg.build.onnx_info",), "quantize": ("edgeseg.build.quantize",),
    "calibration_cache": ("edgeseg.build.calibration_cache",),
    "data": ("edgeseg.runtime.images", "edgeseg.evaluation.datasets"),
    "tensorrt": ("edgeseg.runtime.cuda", "edgeseg.runtime.device", "edgeseg.runtime.engine_meta",
                 "edgeseg.build.engine"),
}


class MovedModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, name, path=None, target=None):
        if name.startswith("edgeseg.") and name[len("edgeseg."):] in MOVED:
            return importlib.util.spec_from_loader(name, self)
        return None

    def create_module(self, spec):
        homes = MOVED[spec.name[len("edgeseg."):]]
        warnings.warn(f"{spec.name} moved to {' and '.join(homes)}; import it from there (the old name goes "
                      "in edgeseg 0.3)", DeprecationWarning, stacklevel=2)
        if len(homes) == 1:
            return importlib.import_module(homes[0])
        merged = types.ModuleType(spec.name, f"Deprecated: the public names of {', '.join(homes)}.")
        for home in homes:
            module = importlib.import_module(home)
            merged.__dict__.update({k: v for k, v in vars(module).items() if not k.startswith("_")})
        return merged

    def exec_module(self, module) -> None:
        """Nothing to run: the module came whole from its new home."""


def install() -> None:
    if not any(isinstance(f, MovedModules) for f in sys.meta_path):
        sys.meta_path.append(MovedModules())
