"""ONNX Runtime sessions configured for steady, honest latency on small CPU boxes.

Settings and why (measured on the 2-core dev machine, see README's benchmark section):
- denormals flushed: trained weights make denormal activations that cost several times the FLOPs;
- intra-op spinning off: several sessions in one process (bench, quantize's gate) otherwise steal
  each other's cores while their idle threads spin;
- exact int8 products on x86 without VNNI (``session.x64quantprecision``): there ONNX Runtime's
  u8 x s8 kernels add pairs of products in 16 bits, which saturate (255 * 127 * 2 > 32767) and
  turn an INT8 model's masks wrong; the option makes it use u8 x u8 kernels there for weights
  that could overflow (7-bit weights keep the fast kernels: edgeseg.compile.quantize);
- threads default to the physical cores the process may use (SMT siblings counted once; the allowed
  CPU count when sysfs has no topology).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import onnxruntime as ort

from edgeseg.errors import EdgesegError

# Flushing denormals is deliberate; numpy notices it the first time it inspects float limits.
warnings.filterwarnings("ignore", message="The value of the smallest subnormal", category=UserWarning)


def default_threads(sysfs: Path = Path("/sys/devices/system/cpu")) -> int:
    """Physical cores this process may run on: SMT siblings share one core's vector units, and a
    second thread per core slows compute-bound kernels down. Counts (package, core) pairs of the
    allowed CPUs from sysfs; the allowed CPU count where the topology cannot be read."""
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))
    cores = set()
    for cpu in cpus:
        topo = sysfs / f"cpu{cpu}" / "topology"
        try:
            cores.add(((topo / "physical_package_id").read_text().strip(), (topo / "core_id").read_text().strip()))
        except OSError:
            return max(1, len(cpus))
    return max(1, len(cores))


def session_options(threads: int | None = None, spinning: bool = False) -> ort.SessionOptions:
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads or default_threads()
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.add_session_config_entry("session.set_denormal_as_zero", "1")
    so.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    so.add_session_config_entry("session.x64quantprecision", "1")
    so.log_severity_level = 3
    return so


def session_settings(so: ort.SessionOptions) -> dict:
    """What a report should say about how a session was configured."""
    return {"intra_op_threads": so.intra_op_num_threads, "graph_optimization": str(so.graph_optimization_level),
            "denormals_flushed": so.get_session_config_entry("session.set_denormal_as_zero") == "1",
            "spinning": so.get_session_config_entry("session.intra_op.allow_spinning") == "1",
            "int8_unsaturated": so.get_session_config_entry("session.x64quantprecision") == "1"}


def create_session(model: str | Path | bytes, threads: int | None = None, spinning: bool = False,
                   providers: list[str] | None = None) -> ort.InferenceSession:
    """An InferenceSession with :func:`session_options`; a bad file becomes one clear error."""
    source = model if isinstance(model, bytes) else str(model)
    try:
        return ort.InferenceSession(source, sess_options=session_options(threads, spinning),
                                    providers=providers or ["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own exception types for bad models
        where = None if isinstance(model, bytes) else model
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise EdgesegError(f"ONNX Runtime cannot load this model ({first})", where) from e


def run(session: ort.InferenceSession, x: np.ndarray) -> np.ndarray:
    """Feed the single input, return the first output."""
    return session.run(None, {session.get_inputs()[0].name: x})[0]
