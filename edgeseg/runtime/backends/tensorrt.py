"""TensorRT backend for Predictor: execute_async_v3 with tensor addresses, pinned host buffers and one
CUDA stream, through cuda-python (no PyTorch). An engine built with ``--with-argmax`` returns class
ids, so only H x W bytes come back per frame instead of 3 x H x W floats.
"""

from __future__ import annotations

import ctypes
from pathlib import Path

import numpy as np

from edgeseg.errors import EdgesegError
from edgeseg.runtime.backends.base import BackendInfo
from edgeseg.runtime.backends.cuda import ck, cudart, import_tensorrt, system_key
from edgeseg.runtime.backends.engine_meta import EngineMeta
from edgeseg.runtime.meta import ModelMeta


class TensorRTBackend:
    def __init__(self, engine_path: Path) -> None:
        trt = import_tensorrt()
        meta = EngineMeta.load(engine_path)
        why = meta.mismatch(system_key())
        if why:
            raise EdgesegError(f"this engine was {why}; rebuild it here: {meta.rebuild_command(engine_path)}",
                               engine_path)
        self.rt = cudart()
        self.runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = self.runtime.deserialize_cuda_engine(engine_path.read_bytes())
        if self.engine is None:
            raise EdgesegError(f"TensorRT could not load this engine; rebuild it: {meta.rebuild_command(engine_path)}",
                               engine_path)
        self.context = self.engine.create_execution_context()
        if self.context is None:
            raise EdgesegError("TensorRT could not create an execution context (out of GPU memory?)", engine_path)
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.input = next(n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT)
        self.output = next(n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT)
        shape = list(self.engine.get_tensor_shape(self.input))
        self.dynamic = shape[0] == -1
        if self.dynamic:  # buffers for the profile's largest batch; each call sets the batch it has
            shape[0] = self.engine.get_tensor_profile_shape(self.input, 0)[2][0]
            self._set_batch(shape[0])
        self.batch = int(shape[0])
        self.stream = ck(self.rt.cudaStreamCreate())
        self.buffers = {}
        for name in (self.input, self.output):
            dims = tuple(self.context.get_tensor_shape(name))
            dtype = np.dtype(trt.nptype(self.engine.get_tensor_dtype(name)))
            nbytes = int(np.prod(dims)) * dtype.itemsize
            device = ck(self.rt.cudaMalloc(nbytes))
            host_ptr = ck(self.rt.cudaMallocHost(nbytes))
            host = np.ctypeslib.as_array(ctypes.cast(host_ptr, ctypes.POINTER(ctypes.c_ubyte)), (nbytes,))
            self.buffers[name] = (device, host_ptr, host.view(dtype).reshape(dims))
            if not self.context.set_tensor_address(name, int(device)):
                raise EdgesegError(f"TensorRT refused the address of tensor {name!r}", engine_path)
        self.meta = ModelMeta.from_dict(meta.model_meta) if meta.model_meta else ModelMeta(
            input_size=tuple(shape[2:]))
        self.info = BackendInfo(name="tensorrt", provider=f"{meta.gpu} (sm {meta.compute_capability})",
                                precision=meta.precision, threads=1,
                                output="classes" if len(self.buffers[self.output][2].shape) == 3 else "logits",
                                static_batch=None if self.dynamic else self.batch,
                                extra={"tensorrt": meta.tensorrt, "l4t": meta.l4t,
                                       **({"max_batch": self.batch} if self.dynamic else {})})

    def _set_batch(self, n: int) -> None:
        shape = tuple(self.engine.get_tensor_shape(self.input))
        if not self.context.set_input_shape(self.input, (n, *shape[1:])):
            raise EdgesegError(f"TensorRT refused batch {n} (this engine's profile allows 1..{self.batch})")

    def __call__(self, x: np.ndarray) -> np.ndarray:
        if self.dynamic and len(x) > self.batch:
            return np.concatenate([self(x[i:i + self.batch]) for i in range(0, len(x), self.batch)])
        n = len(x)
        if self.dynamic:
            self._set_batch(n)
        h2d = self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice
        d2h = self.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        dev_in, host_in_ptr, host_in = self.buffers[self.input]
        dev_out, host_out_ptr, host_out = self.buffers[self.output]
        np.copyto(host_in[:n], x, casting="same_kind")
        n_in, n_out = host_in[:n].nbytes, host_out[:n].nbytes  # batch-major: the first n items are contiguous
        ck(self.rt.cudaMemcpyAsync(dev_in, host_in_ptr, n_in, h2d, self.stream))
        if not self.context.execute_async_v3(stream_handle=int(self.stream)):
            raise EdgesegError("TensorRT failed to enqueue the inference")
        ck(self.rt.cudaMemcpyAsync(host_out_ptr, dev_out, n_out, d2h, self.stream))
        ck(self.rt.cudaStreamSynchronize(self.stream))
        return host_out[:n].copy()

    def __del__(self) -> None:
        for dev, host, _ in getattr(self, "buffers", {}).values():
            self.rt.cudaFree(dev)
            self.rt.cudaFreeHost(host)
        if getattr(self, "stream", None) is not None:
            self.rt.cudaStreamDestroy(self.stream)
