"""CUDA and TensorRT entry points for the device runtime: the modules, imported lazily with one clear
error when missing, cuda-python's error tuples unpacked, and the facts an engine is bound to."""

from __future__ import annotations

from edgeseg.errors import EdgesegError


def import_tensorrt():
    """The tensorrt module, or one clear error saying how to get it."""
    try:
        import tensorrt as trt
    except ImportError:
        raise EdgesegError(
            "TensorRT is not installed: on Jetson it comes with JetPack (apt install python3-libnvinfer, or use "
            "docker/Dockerfile.jetson); on x86 with an NVIDIA GPU pip install 'edgeseg[tensorrt]'") from None
    return trt


def cudart():
    try:
        from cuda.bindings import runtime
    except ImportError:
        try:
            from cuda import cudart as runtime  # cuda-python < 12.6.1
        except ImportError:
            raise EdgesegError("cuda-python is not installed: pip install 'cuda-python' matching your CUDA "
                               "major version (JetPack 6: cuda-python>=12.6,<13)") from None
    return runtime


def ck(ret):
    """Unpack a cuda-python (err, *results) tuple, raising on error."""
    rt = cudart()
    err, rest = ret[0], ret[1:]
    if err != rt.cudaError_t.cudaSuccess:
        name = rt.cudaGetErrorName(err)[1]
        raise EdgesegError(f"CUDA error {name.decode() if isinstance(name, bytes) else name}")
    return rest[0] if len(rest) == 1 else (rest or None)


def gpu_info(device: int = 0) -> dict:
    rt = cudart()
    try:
        props = ck(rt.cudaGetDeviceProperties(device))
    except EdgesegError as e:
        raise EdgesegError(f"no usable NVIDIA GPU ({e}); TensorRT engines need one") from None
    name = props.name.decode() if isinstance(props.name, bytes) else str(props.name)
    return {"gpu": name.strip("\x00").strip(), "compute_capability": f"{props.major}.{props.minor}"}


def system_key() -> dict:
    trt = import_tensorrt()
    return {"tensorrt": trt.__version__, **gpu_info()}
