"""The little CUDA the TensorRT runtime needs, over cuda-python's runtime API (``cuda.bindings.runtime``).

One stream, device buffers, pinned host buffers viewed as numpy arrays, and the GPU's name and compute
capability (an engine records them and refuses to run elsewhere). cuda-python returns ``(err, value)``
tuples instead of raising; ``_check`` turns a non-success code into a ``CudaError`` naming the call.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np

from ..errors import BackendUnavailableError, SwinV2ServeError


class CudaError(SwinV2ServeError, RuntimeError):
    """A CUDA runtime call failed on a machine that has a GPU."""


def cudart() -> ModuleType:
    """cuda-python's runtime module (``cuda.bindings.runtime``; ``cuda.cudart`` on cuda-python < 12.6)."""
    try:
        from cuda.bindings import runtime
    except ImportError:
        try:
            from cuda import cudart as runtime  # type: ignore[no-redef]
        except ImportError as exc:
            raise BackendUnavailableError(
                "cuda-python is not installed: pip install 'swinv2-serve[trt]' (needs an NVIDIA GPU and driver)"
            ) from exc
    return runtime


def check(result: Any, call: str) -> Any:
    rt = cudart()
    err, *values = result if isinstance(result, tuple) else (result,)
    if err != rt.cudaError_t.cudaSuccess:
        _, text = rt.cudaGetErrorString(err)
        message = text.decode() if isinstance(text, bytes) else str(text)
        raise CudaError(f"{call} failed: {message} ({err.name if hasattr(err, 'name') else err})")
    if not values:
        return None
    return values[0] if len(values) == 1 else tuple(values)


@dataclass(frozen=True)
class GpuInfo:
    name: str
    compute_capability: tuple[int, int]
    total_memory: int

    @property
    def cc(self) -> str:
        return f"{self.compute_capability[0]}.{self.compute_capability[1]}"


def gpu_info(device: int = 0) -> GpuInfo:
    """Name and compute capability of a CUDA device; ``BackendUnavailableError`` where there is none."""
    rt = cudart()
    err, count = rt.cudaGetDeviceCount()
    if err != rt.cudaError_t.cudaSuccess or not count:
        _, text = rt.cudaGetErrorString(err)
        why = text.decode() if isinstance(text, bytes) else str(text)
        raise BackendUnavailableError(f"no CUDA GPU visible: {why if count is None or err else 'device count is 0'}")
    if device >= count:
        raise BackendUnavailableError(f"CUDA device {device} requested, only {count} visible")
    props = check(rt.cudaGetDeviceProperties(device), "cudaGetDeviceProperties")
    name = props.name.decode(errors="replace") if isinstance(props.name, bytes) else str(props.name)
    return GpuInfo(name=name.rstrip("\x00").strip(), compute_capability=(int(props.major), int(props.minor)),
                   total_memory=int(props.totalGlobalMem))


class Stream:
    """One CUDA stream (the runtime enqueues copies and inference on it, then synchronises)."""

    def __init__(self) -> None:
        self.handle = check(cudart().cudaStreamCreate(), "cudaStreamCreate")

    @property
    def ptr(self) -> int:
        return int(self.handle)

    def synchronize(self) -> None:
        check(cudart().cudaStreamSynchronize(self.handle), "cudaStreamSynchronize")

    def close(self) -> None:
        if self.handle is not None:
            cudart().cudaStreamDestroy(self.handle)
            self.handle = None


class DeviceBuffer:
    """``nbytes`` of device memory."""

    def __init__(self, nbytes: int) -> None:
        self.nbytes = int(nbytes)
        self.ptr = int(check(cudart().cudaMalloc(max(self.nbytes, 1)), "cudaMalloc"))

    def close(self) -> None:
        if self.ptr:
            cudart().cudaFree(self.ptr)
            self.ptr = 0


class PinnedBuffer:
    """Page-locked host memory (async copies need it), with a numpy view over it."""

    def __init__(self, shape: tuple[int, ...], dtype: np.dtype | type) -> None:
        self.dtype = np.dtype(dtype)
        self.shape = tuple(int(s) for s in shape)
        self.nbytes = int(np.prod(self.shape)) * self.dtype.itemsize
        self.ptr = int(check(cudart().cudaMallocHost(max(self.nbytes, 1)), "cudaMallocHost"))
        raw = (ctypes.c_byte * max(self.nbytes, 1)).from_address(self.ptr)
        self.array = np.frombuffer(raw, dtype=self.dtype, count=int(np.prod(self.shape))).reshape(self.shape)

    def close(self) -> None:
        if self.ptr:
            self.array = np.empty(0, dtype=self.dtype)
            cudart().cudaFreeHost(self.ptr)
            self.ptr = 0


def copy_to_device(dst: DeviceBuffer, src: PinnedBuffer, nbytes: int, stream: Stream) -> None:
    rt = cudart()
    kind = rt.cudaMemcpyKind.cudaMemcpyHostToDevice
    check(rt.cudaMemcpyAsync(dst.ptr, src.ptr, nbytes, kind, stream.handle), "cudaMemcpyAsync(H2D)")


def copy_to_host(dst: PinnedBuffer, src: DeviceBuffer, nbytes: int, stream: Stream) -> None:
    rt = cudart()
    kind = rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
    check(rt.cudaMemcpyAsync(dst.ptr, src.ptr, nbytes, kind, stream.handle), "cudaMemcpyAsync(D2H)")
