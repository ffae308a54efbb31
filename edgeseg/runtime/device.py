"""Facts about the machine a latency figure was measured on: CPU, package versions, and on a Jetson
its L4T release, power mode, clock pinning and a tegrastats line. Nothing here imports TensorRT."""

from __future__ import annotations

import functools
import os
import platform
import re
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np


def l4t_release() -> str | None:
    try:
        first = Path("/etc/nv_tegra_release").read_text().splitlines()[0]
    except (OSError, IndexError):
        return None
    m = re.search(r"R(\d+).*REVISION:\s*([\d.]+)", first)
    return f"{m.group(1)}.{m.group(2)}" if m else first.strip()


def jetson_facts(sample_seconds: float = 1.0) -> dict:
    """Power mode, whether jetson_clocks pinned the clocks, one tegrastats line (each when available)."""
    facts: dict = {}
    if l4t_release() is None:
        return facts
    facts["l4t"] = l4t_release()

    def out(cmd: list[str], timeout: float = 5.0) -> str | None:
        if shutil.which(cmd[0]) is None:
            return None
        try:
            return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout).stdout.strip()
        except (subprocess.SubprocessError, OSError):
            return None

    if (q := out(["nvpmodel", "-q"])) is not None:
        facts["power_mode"] = q.splitlines()[0] if q else ""
    if (c := out(["jetson_clocks", "--show"])) is not None:
        facts["jetson_clocks"] = clocks_pinned(c)
    if shutil.which("tegrastats"):
        try:
            p = subprocess.Popen(["tegrastats", "--interval", "200"], stdout=subprocess.PIPE, text=True)
            time.sleep(sample_seconds)
            p.terminate()
            lines = (p.communicate(timeout=5)[0] or "").strip().splitlines()
            facts["tegrastats"] = lines[-1] if lines else ""
        except (subprocess.SubprocessError, OSError):
            pass
    return facts


def clocks_pinned(show: str) -> bool | None:
    """From ``jetson_clocks --show``: True when every CPU's MinFreq equals its MaxFreq (clocks locked)."""
    cpus = re.findall(r"^cpu\d+:.*?MinFreq=(\d+) MaxFreq=(\d+)", show, flags=re.M)
    return all(lo == hi for lo, hi in cpus) if cpus else None


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith(("model name", "hardware", "cpu model")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment() -> dict:
    """Machine and package facts that a latency figure depends on."""
    import cv2
    import onnxruntime

    from edgeseg import __version__

    env = {
        "edgeseg": __version__, "python": platform.python_version(), "platform": platform.platform(),
        "machine": platform.machine(), "cpu": cpu_model(), "cpu_count": os.cpu_count(),
        "numpy": np.__version__, "opencv": cv2.__version__, "onnxruntime": onnxruntime.__version__,
    }
    env.update(jetson_facts(sample_seconds=0.5))  # empty off a Jetson
    return env


@functools.cache
def opencv_has_gstreamer() -> bool:
    """Whether this OpenCV was built with GStreamer (JetPack's is; the PyPI wheels are not)."""
    import cv2

    info = cv2.getBuildInformation()
    line = next((s.split(":", 1)[1] for s in info.splitlines() if s.strip().startswith("GStreamer:")), "NO")
    return line.strip().upper().startswith("YES")
