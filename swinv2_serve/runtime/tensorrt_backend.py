"""TensorRT 10: a ``.plan`` plus its sidecar, run with name-based tensors and ``execute_async_v3`` on one stream."""

from __future__ import annotations

import contextlib
import os
import threading
from pathlib import Path
from typing import Any

import numpy as np

from ..contract import INPUT_NAME, check_precision
from ..errors import BackendUnavailableError, SwinV2ServeError
from . import cuda as cu
from .base import Runtime
from .engine import check_engine_compatibility, read_sidecar, version_tuple

NGC_HINT = (
    "TensorRT needs an NVIDIA GPU: run this in nvcr.io/nvidia/tensorrt:<release>-py3 with --gpus all "
    "(the release of your Triton serving container; see export/README.md)"
)


def require_tensorrt() -> Any:
    """The ``tensorrt`` module, or a ``BackendUnavailableError`` that says where to run instead."""
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise BackendUnavailableError(f"tensorrt is not installed. {NGC_HINT}") from exc
    if version_tuple(trt.__version__)[:1] != (10,):
        raise BackendUnavailableError(f"TensorRT 10 is required, found {trt.__version__}. {NGC_HINT}")
    return trt


def tensorrt_unavailable_reason() -> str | None:
    """None where TensorRT and a CUDA GPU are usable here, else why not (for skips and ``available_backends``)."""
    try:
        require_tensorrt()
        cu.gpu_info()
    except BackendUnavailableError as exc:
        return str(exc)
    return None


class TensorRTRuntime(Runtime):
    """A TensorRT 10 engine (.plan + its sidecar).

    Device and pinned host buffers are sized once for the profile's max batch; each call copies the
    batch in, sets the input shape, enqueues, copies the outputs back and synchronises. Calls are
    serialised by a lock (one execution context). Refuses engines built for another TensorRT or GPU.
    """

    backend = "tensorrt"

    def __init__(self, path: str | os.PathLike, *, device: int = 0, check_compatibility: bool = True,
                 precision: str | None = None) -> None:
        path = Path(path)
        trt = require_tensorrt()
        self.info = read_sidecar(path)
        if precision is not None and check_precision(precision, "tensorrt") != self.info.precision:
            raise SwinV2ServeError(f"{path.name} is a {self.info.precision} engine, not {precision}: build one "
                                   f"with `swinv2-serve export --format trt --precision {precision}`")
        gpu = cu.gpu_info(device)
        if check_compatibility:
            check_engine_compatibility(self.info, trt.__version__, gpu.name, gpu.compute_capability, plan=path.name)
        super().__init__(self.info.metadata, self.info.batch_profile.max)
        self.precision = self.info.precision
        self.min_batch = self.info.batch_profile.min
        cu.check(cu.cudart().cudaSetDevice(device), "cudaSetDevice")
        self._lock = threading.Lock()
        self._buffers: list[Any] = []
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._trt_runtime = trt.Runtime(self._logger)
        if self.info.version_compatible:
            self._trt_runtime.engine_host_code_allowed = True  # the plan embeds its lean runtime
        self.engine = self._trt_runtime.deserialize_cuda_engine(path.read_bytes())
        if self.engine is None:
            raise SwinV2ServeError(f"TensorRT could not deserialize {path} (corrupt, or built by another version)")
        self.context = self.engine.create_execution_context()
        self.stream: cu.Stream | None = cu.Stream()

        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        if inputs != [INPUT_NAME]:
            raise SwinV2ServeError(f"{path}: expected one input '{INPUT_NAME}', engine has {inputs}")
        self.outputs = [n for n in names if n not in inputs]
        max_shape = tuple(self.engine.get_tensor_profile_shape(INPUT_NAME, 0)[2])
        self.context.set_input_shape(INPUT_NAME, max_shape)
        self._host: dict[str, cu.PinnedBuffer] = {}
        self._device: dict[str, cu.DeviceBuffer] = {}
        for name in names:
            shape = max_shape if name == INPUT_NAME else tuple(self.context.get_tensor_shape(name))
            dtype = np.dtype(trt.nptype(self.engine.get_tensor_dtype(name)))
            self._host[name] = cu.PinnedBuffer(shape, dtype)
            self._device[name] = cu.DeviceBuffer(self._host[name].nbytes)
            self._buffers += [self._host[name], self._device[name]]
            self.context.set_tensor_address(name, self._device[name].ptr)

    def check_input(self, x: np.ndarray) -> np.ndarray:
        x = super().check_input(x)
        if x.shape[0] < self.min_batch:
            raise SwinV2ServeError(f"batch {x.shape[0]} is below this engine's min batch {self.min_batch}")
        return x

    def run(self, x: np.ndarray) -> dict[str, np.ndarray]:
        batch = len(x)
        with self._lock:
            assert self.stream is not None, "runtime closed"
            host_in = self._host[INPUT_NAME]
            host_in.array[:batch] = x  # casts if the engine's input is not fp32
            cu.copy_to_device(self._device[INPUT_NAME], host_in, batch * host_in.array[0].nbytes, self.stream)
            if not self.context.set_input_shape(INPUT_NAME, x.shape):
                raise SwinV2ServeError(f"engine rejected input shape {list(x.shape)}")
            if not self.context.execute_async_v3(self.stream.ptr):
                raise SwinV2ServeError("TensorRT execute_async_v3 failed (see the TensorRT log above)")
            for name in self.outputs:
                out = self._host[name]
                size = int(np.prod(tuple(self.context.get_tensor_shape(name))))
                cu.copy_to_host(out, self._device[name], size * out.dtype.itemsize, self.stream)
            self.stream.synchronize()
            return {name: self._host[name].array[:batch].astype(np.float32, copy=True) for name in self.outputs}

    def close(self) -> None:
        for buffer in getattr(self, "_buffers", []):
            buffer.close()
        self._buffers = []
        if getattr(self, "stream", None) is not None:
            self.stream.close()  # type: ignore[union-attr]
            self.stream = None
        self.context = self.engine = None

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # interpreter shutdown may have torn CUDA down already
            self.close()
