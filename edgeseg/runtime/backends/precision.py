"""Which arithmetic precision a CPU backend computes in: ``fp32``, ``bf16``, ``fp16`` or ``auto``.

``auto`` is decided by measurement on the machine at hand, never by CPU name:

1. candidates: FP32 plus the low precisions this CPU runs natively (feature flags from
   /proc/cpuinfo: ``amx_bf16``/``avx512_bf16`` for bf16, ``amx_fp16``/``avx512_fp16`` for fp16 on
   x86; ``bf16``/``asimdhp`` on ARM);
2. each candidate runs the model on :func:`check_inputs` beside FP32 (interleaved timing, class-id
   agreement with FP32);
3. the fastest candidate that agrees with FP32 on at least :data:`MIN_AGREEMENT` of the pixels and
   is at least :data:`MIN_GAIN` faster wins; otherwise FP32.

The decision and its figures are cached per model file, runtime version, thread count and CPU
feature set (``$EDGESEG_CACHE/precision.json``), and every report records them. The check inputs
are synthetic (smooth multi-scale noise): they need no photos on the device and catch what breaks a
model wholesale (an unpool that loses windows, an overflowing layer), while the accuracy of each
precision on real photos is measured by ``edgeseg bench --data`` and ``edgeseg eval``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np

from edgeseg.errors import EdgesegError
from edgeseg.files import cache_root

CPU_PRECISIONS = ("auto", "fp32", "bf16", "fp16")
MIN_AGREEMENT = 0.97  # pixel agreement with FP32 on the check inputs
MIN_GAIN = 0.9  # a low precision must take at most 0.9x FP32's time to be worth a rounding change
_NATIVE = {  # precision -> CPU feature flags that mean hardware arithmetic for it (any one suffices)
    "x86": {"bf16": ("amx_bf16", "avx512_bf16"), "fp16": ("amx_fp16", "avx512_fp16")},
    "arm": {"bf16": ("bf16",), "fp16": ("asimdhp",)},
}


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> frozenset[str]:
    """The CPU's feature flags (x86 ``flags``, ARM ``Features``); empty where they cannot be read."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


def native_precisions(flags: frozenset[str], machine: str | None = None) -> list[str]:
    """Low precisions (``bf16``, ``fp16``) this CPU computes in hardware, by feature flags."""
    machine = (machine or platform.machine()).lower()
    family = "arm" if machine in ("aarch64", "arm64") else "x86"
    return [p for p, needs in _NATIVE[family].items() if flags & set(needs)]


# x86 instructions that add u8 x s8 byte products straight into 32 bits. Without any of them (AVX2,
# AVX-512 before VNNI) int8 kernels first add pairs of products in 16 bits, which saturate once
# weights use all 8 bits (2 * 255 * 127 > 32767); edgeseg's `cpu` INT8 files keep to 7 bits.
_INT8_DOT32 = ("avx512_vnni", "avx_vnni", "amx_int8")


def int8_pairs_saturate(flags: frozenset[str], machine: str | None = None) -> bool:
    """Whether 8-bit int8 weights can overflow this CPU's int8 kernels: x86 without VNNI (or whose
    flags cannot be read); never ARM, whose kernels widen before adding."""
    machine = (machine or platform.machine()).lower()
    return machine in ("x86_64", "amd64") and not flags & set(_INT8_DOT32)


def check_inputs(size: tuple[int, int], n: int = 8, seed: int = 0) -> np.ndarray:
    """(n, 3, H, W) float32 in [0, 1]: smooth noise at several scales, photo-like enough for a
    network to produce structured masks and deterministic across machines."""
    h, w = size
    rng = np.random.default_rng(seed)
    out = np.zeros((n, 3, h, w), np.float32)
    for scale in (4, 16, 64):
        coarse = rng.random((n, 3, max(1, h // scale), max(1, w // scale)), dtype=np.float32)
        for i in range(n):
            for c in range(3):
                out[i, c] += cv2.resize(coarse[i, c], (w, h), interpolation=cv2.INTER_CUBIC) / 3
    return np.clip(out, 0, 1)


@dataclass
class PrecisionChoice:
    precision: str  # what the backend computes in: fp32, bf16 or fp16
    reason: str
    measured: dict = field(default_factory=dict)  # precision -> {"p50_ms", "agreement"}

    def describe(self) -> dict:
        return asdict(self)


def _cache_file() -> Path:
    return cache_root() / "precision.json"


def _load_cache() -> dict:
    try:
        data = json.loads(_cache_file().read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _store(key: str, choice: PrecisionChoice) -> None:
    """Best effort: a cache that cannot be written only means measuring again next time."""
    data = _load_cache()
    data[key] = choice.describe()
    path = _cache_file()
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps(data, indent=1))
        os.replace(tmp, path)
    except OSError:
        with contextlib.suppress(OSError):  # a full disk leaves no partial file behind
            tmp.unlink(missing_ok=True)


def resolve(requested: str, backend: str, supported: tuple[str, ...], flags: frozenset[str] | None = None) -> list[str]:
    """Precisions to consider for ``requested`` on ``backend``: one for an explicit request (refused
    with the reason when this CPU or backend cannot compute in it), FP32 plus the native ones for
    ``auto``."""
    if requested not in CPU_PRECISIONS:
        raise EdgesegError(f"--precision {requested!r}: choose {', '.join(CPU_PRECISIONS)} for CPU backends")
    flags = cpu_flags() if flags is None else flags
    native = [p for p in native_precisions(flags) if p in supported]
    if requested == "auto":
        return ["fp32", *native]
    if requested != "fp32" and requested not in supported:
        raise EdgesegError(f"--precision {requested}: {backend} cannot compute in {requested} on a CPU; choose "
                           f"{' or '.join(p for p in ('fp32', *supported) if p != requested)}, or auto")
    if requested != "fp32" and requested not in native:
        raise EdgesegError(f"--precision {requested}: this CPU has no native {requested} arithmetic (by its feature "
                           "flags), so the runtime would emulate or ignore it; use --precision fp32 or auto")
    return [requested]


def choose(candidates: list[str], make: Callable[[str], Callable[[np.ndarray], np.ndarray]],
           class_ids: Callable[[np.ndarray], np.ndarray], size: tuple[int, int],
           cache_key: str | None, runs: int = 20) -> tuple[PrecisionChoice, Callable[[np.ndarray], np.ndarray]]:
    """Pick among ``candidates`` ("fp32" first) by speed and agreement with FP32. ``make(p)``
    prepares the backend for precision ``p`` and returns its inference on an NCHW batch; a cached
    decision (``cache_key``; None: no cache) prepares only the one it names."""
    if candidates == ["fp32"]:
        return (PrecisionChoice("fp32", "auto: fp32 (none of the precisions this backend can lower to runs natively "
                                        "on this CPU)"),
                make("fp32"))
    if cache_key is not None:
        hit = _load_cache().get(cache_key)
        # a hand-edited or corrupt entry is measured again and replaced, never trusted half-way
        if isinstance(hit, dict) and hit.get("precision") in candidates and isinstance(hit.get("reason"), str) \
                and isinstance(hit.get("measured", {}), dict):
            return PrecisionChoice(hit["precision"], hit["reason"] + " (cached)", hit.get("measured", {})), \
                make(hit["precision"])
    runners = {p: make(p) for p in candidates}
    x = check_inputs(size)
    ids = {p: np.concatenate([class_ids(run(x[i:i + 1])) for i in range(len(x))]) for p, run in runners.items()}
    times: dict[str, list[float]] = {p: [] for p in candidates}
    for i in range(3 + runs):  # interleaved, the first 3 rounds untimed
        for p, run in runners.items():
            t0 = time.perf_counter()
            run(x[i % len(x):i % len(x) + 1])
            if i >= 3:
                times[p].append(1000 * (time.perf_counter() - t0))
    measured = {p: {"p50_ms": round(float(np.median(times[p])), 3),
                    "agreement": round(float((ids[p] == ids["fp32"]).mean()), 5)} for p in candidates}
    base = measured["fp32"]["p50_ms"]
    good = [p for p in candidates[1:]
            if measured[p]["agreement"] >= MIN_AGREEMENT and measured[p]["p50_ms"] <= MIN_GAIN * base]
    if good:
        best = min(good, key=lambda p: measured[p]["p50_ms"])
        m = measured[best]
        reason = (f"auto: {best}, {base / m['p50_ms']:.1f}x faster than fp32 here, {100 * m['agreement']:.1f}% "
                  f"pixel agreement with fp32 on {len(x)} check inputs")
    else:
        best = "fp32"
        reason = "auto: fp32 (" + "; ".join(
            f"{p}: {base / measured[p]['p50_ms']:.2f}x speed, {100 * measured[p]['agreement']:.1f}% agreement"
            for p in candidates[1:]) + f"; needs >= {1 / MIN_GAIN:.2f}x and >= {100 * MIN_AGREEMENT:.0f}%)"
    choice = PrecisionChoice(best, reason, measured)
    if cache_key is not None:
        _store(cache_key, choice)
    return choice, runners[best]


def cache_key(model_sha256: str, runtime: str, threads: int, flags: frozenset[str] | None = None) -> str:
    """Model file, runtime version, threads, machine and CPU feature set (not the CPU's name)."""
    flags = cpu_flags() if flags is None else flags
    feature_set = hashlib.sha256(" ".join(sorted(flags)).encode()).hexdigest()[:16]
    return f"{model_sha256[:16]}|{runtime}|{threads}t|{platform.machine()}|{feature_set}"
