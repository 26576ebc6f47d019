"""One inference interface over torch, ONNX Runtime and TensorRT.

``load(path, backend=...)`` returns a ``Runtime``: call it with a float32 [B, 3, H, W] array and get
``{"logits": [B, C], "probs": [B, C]}`` back. The server and the benchmarks use every backend this way.
Every exported model carries its own description (``swinv2_serve`` metadata: img_size, mean/std,
labels ...), so a runtime needs nothing but the file.

Backends live in a registry (``register_backend``): name -> factory, file suffixes, and a probe that
says why the backend cannot run here. Adding one (OpenVINO, say) touches no other code.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import os
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import BackendUnavailableError, SwinV2ServeError

log = logging.getLogger(__name__)

METADATA_KEY = "swinv2_serve"
INPUT_NAME = "input"
OUTPUT_NAMES = ("logits", "probs")


class Runtime(ABC):
    """A loaded model: ``runtime(x) -> {"logits", "probs"}`` for x float32 [B, 3, H, W]."""

    backend: str = ""

    def __init__(self, metadata: dict[str, Any], max_batch: int | None = None) -> None:
        self.metadata = metadata
        self.max_batch = max_batch

    @property
    def input_shape(self) -> tuple[int, int, int]:
        h, w = self.metadata["img_size"]
        return (3, int(h), int(w))

    @property
    def num_classes(self) -> int:
        return int(self.metadata["num_classes"])

    def check_input(self, x: np.ndarray) -> np.ndarray:
        """Refuse wrong shapes/dtypes with a message instead of a backend stack trace."""
        if not isinstance(x, np.ndarray):
            raise SwinV2ServeError(f"input must be a numpy array, got {type(x).__name__}")
        if x.dtype != np.float32:
            raise SwinV2ServeError(f"input must be float32, got {x.dtype}")
        if x.ndim != 4 or tuple(x.shape[1:]) != self.input_shape:
            raise SwinV2ServeError(f"input must be [B, {', '.join(map(str, self.input_shape))}], got {list(x.shape)}")
        if x.shape[0] < 1:
            raise SwinV2ServeError("input batch is empty")
        if self.max_batch is not None and x.shape[0] > self.max_batch:
            raise SwinV2ServeError(f"batch {x.shape[0]} exceeds this model's max batch {self.max_batch}")
        return np.ascontiguousarray(x)

    def __call__(self, x: np.ndarray) -> dict[str, np.ndarray]:
        return self.run(self.check_input(x))

    @abstractmethod
    def run(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """Backend inference on an already checked input."""

    def close(self) -> None:  # noqa: B027 - optional hook, not abstract
        """Release device memory and sessions (optional; garbage collection does it too)."""

    def __enter__(self) -> Runtime:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(model={self.metadata.get('model')!r}, input={list(self.input_shape)}, "
                f"max_batch={self.max_batch})")


def read_onnx_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The ``swinv2_serve`` JSON stored in an ONNX file's metadata_props."""
    import onnx

    model = onnx.load(os.fspath(path), load_external_data=False)
    for prop in model.metadata_props:
        if prop.key == METADATA_KEY:
            return json.loads(prop.value)
    raise SwinV2ServeError(f"{path} has no '{METADATA_KEY}' metadata: export it with `swinv2-serve export`")


# -- torch -----------------------------------------------------------------------------------------------
TORCH_DTYPES = ("fp32", "fp16", "bf16")


def _metadata_from_config(cfg: Any) -> dict[str, Any]:
    try:
        from .onnx_export import export_metadata
    except ImportError:  # the same keys the ONNX carries, without the export stage
        return {"model": cfg.name, "img_size": list(cfg.img_size), "num_classes": cfg.num_classes,
                "labels": list(cfg.labels) if cfg.labels else None, **cfg.preprocessing(), "fp16": False}
    return export_metadata(cfg)


class TorchRuntime(Runtime):
    """A SwinV2 in PyTorch: deploy form by default, CPU or CUDA, fp32 or fp16/bf16 autocast, optional compile.

    ``model`` is one of our checkpoints (path) or a ``SwinV2`` / ``DeploySwinV2`` module (anything with
    a ``.cfg``); ``img_size``/``window_size`` run a train-time model at another resolution. fp16/bf16
    use ``torch.autocast``: weights stay fp32 and autocast keeps LayerNorm, softmax and norms in fp32,
    the same islands the fp16 ONNX/TensorRT engines keep.
    """

    backend = "torch"

    def __init__(
        self,
        model: Any,
        *,
        device: str = "cpu",
        dtype: str = "fp32",
        compile: bool = False,
        compile_mode: str | None = None,
        deploy: bool = True,
        img_size: int | tuple[int, int] | None = None,
        window_size: int | tuple[int, ...] | None = None,
        max_batch: int | None = None,
    ) -> None:
        import torch

        from .model import SwinV2

        if dtype not in TORCH_DTYPES:
            raise SwinV2ServeError(f"dtype must be one of {', '.join(TORCH_DTYPES)}, got {dtype!r}")
        self.device = torch.device(device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise BackendUnavailableError("torch device 'cuda' requested but torch sees no CUDA GPU")
        if isinstance(model, (str, os.PathLike)):
            from .checkpoint import load_model

            sizes = {k: v for k, v in (("img_size", img_size), ("window_size", window_size)) if v is not None}
            model, img_size, window_size = load_model(model, **sizes), None, None
        if not hasattr(model, "cfg"):
            raise SwinV2ServeError(f"TorchRuntime needs a swinv2_serve model (with .cfg), got {type(model).__name__}")
        resize = img_size is not None or window_size is not None
        if resize and not isinstance(model, SwinV2):
            raise SwinV2ServeError("img_size/window_size need the train-time SwinV2 (a deploy form is fixed)")
        if isinstance(model, SwinV2) and (deploy or resize):
            from .deploy import to_deploy

            model = to_deploy(model, img_size=img_size, window_size=window_size)
            if not deploy:
                log.warning("img_size/window_size given: running the deploy form (deploy=False ignored)")
        super().__init__(_metadata_from_config(model.cfg), max_batch)
        self.dtype = dtype
        self.module = model.eval().to(self.device)
        self._autocast_dtype = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}[dtype]
        self._forward = torch.compile(self.module, mode=compile_mode) if compile else self.module

    def run(self, x: np.ndarray) -> dict[str, np.ndarray]:
        import torch

        with torch.inference_mode():
            inputs = torch.from_numpy(x).to(self.device, non_blocking=True)
            if self._autocast_dtype is None:
                logits = self._forward(inputs)
            else:
                with torch.autocast(self.device.type, dtype=self._autocast_dtype):
                    logits = self._forward(inputs)
            logits = logits.float()
            probs = logits.softmax(dim=-1)
            return {"logits": logits.cpu().numpy(), "probs": probs.cpu().numpy()}


# -- ONNX Runtime ------------------------------------------------------------------------------------------
ORT_PROVIDERS = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
}
ORT_OPTIMIZATION = ("disable", "basic", "extended", "all")
ProviderSpec = str | tuple[str, Mapping[str, Any]]


def ort_providers(
    providers: str | Sequence[ProviderSpec] | None,
    provider_options: Mapping[str, Mapping[str, Any]] | None = None,
) -> tuple[list[str], list[dict[str, Any]]]:
    """Normalise providers: short names (cpu/cuda/tensorrt) or full names, with per-provider options."""
    if providers is None:
        providers = ["cpu"]
    elif isinstance(providers, str):
        providers = [providers]
    names: list[str] = []
    options: list[dict[str, Any]] = []
    for spec in providers:
        name, opts = (spec, {}) if isinstance(spec, str) else (spec[0], dict(spec[1]))
        name = ORT_PROVIDERS.get(name.lower(), name)
        opts = {**(provider_options or {}).get(name, {}), **opts}
        names.append(name)
        options.append({k: str(v) if isinstance(v, bool) else v for k, v in opts.items()})
    return names, options


class OnnxRuntime(Runtime):
    """ONNX Runtime session. CPU by default; ``providers=["tensorrt", "cuda", "cpu"]`` with onnxruntime-gpu.

    ``provider_options`` maps a provider to its options (e.g. ``{"TensorrtExecutionProvider":
    {"trt_fp16_enable": True, "trt_engine_cache_enable": True, "trt_engine_cache_path": "cache"}}``).
    ONNX Runtime silently falls back to CPU when a GPU provider fails to load; this refuses instead.
    """

    backend = "onnxruntime"

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        providers: str | Sequence[ProviderSpec] | None = None,
        provider_options: Mapping[str, Mapping[str, Any]] | None = None,
        threads: int | None = None,
        max_batch: int | None = None,
        optimization: str = "all",
    ) -> None:
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise BackendUnavailableError("onnxruntime is not installed: pip install 'swinv2-serve[onnx]'") from exc
        if optimization not in ORT_OPTIMIZATION:
            raise SwinV2ServeError(f"optimization must be one of {', '.join(ORT_OPTIMIZATION)}, got {optimization!r}")
        super().__init__(read_onnx_metadata(path), max_batch)
        options = ort.SessionOptions()
        options.graph_optimization_level = {
            "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        }[optimization]
        if threads:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        names, provider_opts = ort_providers(providers, provider_options)
        available = ort.get_available_providers()
        missing = [p for p in names if p not in available]
        if missing:
            raise BackendUnavailableError(
                f"onnxruntime providers {missing} are not available here (have {available}); GPU providers need "
                "onnxruntime-gpu and a CUDA GPU"
            )
        self.session = ort.InferenceSession(os.fspath(path), options, providers=names, provider_options=provider_opts)
        self.providers = self.session.get_providers()
        dropped = [p for p in names if p not in self.providers]
        if dropped:
            raise BackendUnavailableError(f"onnxruntime could not start {dropped} (CUDA/cuDNN/TensorRT libraries "
                                          f"missing?); running on {self.providers} instead was refused")
        batch = self.session.get_inputs()[0].shape[0]
        if self.max_batch is None and isinstance(batch, int):
            self.max_batch = batch

    def run(self, x: np.ndarray) -> dict[str, np.ndarray]:
        logits, probs = self.session.run(list(OUTPUT_NAMES), {INPUT_NAME: x})
        return {"logits": logits, "probs": probs}


# -- TensorRT ------------------------------------------------------------------------------------------------
class TensorRTRuntime(Runtime):
    """A TensorRT 10 engine (.plan + its sidecar): name-based tensors, ``execute_async_v3`` on one stream.

    Device and pinned host buffers are sized once for the profile's max batch; each call copies the
    batch in, sets the input shape, enqueues, copies the outputs back and synchronises. Calls are
    serialised by a lock (one execution context). Refuses engines built for another TensorRT or GPU.
    """

    backend = "tensorrt"

    def __init__(self, path: str | os.PathLike, *, device: int = 0, check_compatibility: bool = True) -> None:
        from . import cuda_utils as cu
        from .tensorrt_build import check_engine_compatibility, read_sidecar, require_tensorrt

        path = Path(path)
        trt = require_tensorrt()
        self.info = read_sidecar(path)
        gpu = cu.gpu_info(device)
        if check_compatibility:
            check_engine_compatibility(self.info, trt.__version__, gpu.name, gpu.compute_capability, plan=path.name)
        super().__init__(self.info.metadata, self.info.batch_profile.max)
        self.min_batch = self.info.batch_profile.min
        cu._check(cu.cudart().cudaSetDevice(device), "cudaSetDevice")
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
        self.stream = cu.Stream()

        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        if inputs != [INPUT_NAME]:
            raise SwinV2ServeError(f"{path}: expected one input '{INPUT_NAME}', engine has {inputs}")
        self.outputs = [n for n in names if n not in inputs]
        max_shape = tuple(self.engine.get_tensor_profile_shape(INPUT_NAME, 0)[2])
        self.context.set_input_shape(INPUT_NAME, max_shape)
        self._host: dict[str, Any] = {}
        self._device: dict[str, Any] = {}
        for name in names:
            shape = max_shape if name == INPUT_NAME else tuple(self.context.get_tensor_shape(name))
            dtype = np.dtype(trt.nptype(self.engine.get_tensor_dtype(name)))
            self._host[name] = cu.PinnedBuffer(shape, dtype)
            self._device[name] = cu.DeviceBuffer(self._host[name].nbytes)
            self._buffers += [self._host[name], self._device[name]]
            self.context.set_tensor_address(name, self._device[name].ptr)
        self._cu = cu

    def check_input(self, x: np.ndarray) -> np.ndarray:
        x = super().check_input(x)
        if x.shape[0] < self.min_batch:
            raise SwinV2ServeError(f"batch {x.shape[0]} is below this engine's min batch {self.min_batch}")
        return x

    def run(self, x: np.ndarray) -> dict[str, np.ndarray]:
        cu, batch = self._cu, len(x)
        with self._lock:
            host_in = self._host[INPUT_NAME]
            host_in.array[:batch] = x  # casts if the engine's input is not fp32
            nbytes = batch * host_in.array[0].nbytes
            cu.copy_to_device(self._device[INPUT_NAME], host_in, nbytes, self.stream)
            if not self.context.set_input_shape(INPUT_NAME, x.shape):
                raise SwinV2ServeError(f"engine rejected input shape {list(x.shape)}")
            if not self.context.execute_async_v3(self.stream.ptr):
                raise SwinV2ServeError("TensorRT execute_async_v3 failed (see the TensorRT log above)")
            shapes = {}
            for name in self.outputs:
                shapes[name] = tuple(self.context.get_tensor_shape(name))
                out = self._host[name]
                cu.copy_to_host(out, self._device[name], int(np.prod(shapes[name])) * out.dtype.itemsize, self.stream)
            self.stream.synchronize()
            return {name: self._host[name].array[:batch].astype(np.float32, copy=True) for name in self.outputs}

    def close(self) -> None:
        for buffer in getattr(self, "_buffers", []):
            buffer.close()
        self._buffers = []
        if getattr(self, "stream", None) is not None:
            self.stream.close()
            self.stream = None
        self.context = self.engine = None

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # interpreter shutdown may have torn CUDA down already
            self.close()


# -- registry ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Backend:
    """A runtime backend: ``factory(path_or_model, **options) -> Runtime``; ``probe()`` -> None or why not."""

    name: str
    factory: Callable[..., Runtime]
    description: str
    probe: Callable[[], str | None]
    suffixes: tuple[str, ...] = ()


REGISTRY: dict[str, Backend] = {}
BACKENDS: dict[str, str] = {}  # name -> description (kept in step with REGISTRY)


def register_backend(backend: Backend) -> None:
    REGISTRY[backend.name] = backend
    BACKENDS[backend.name] = backend.description


def _module_probe(module: str, hint: str) -> Callable[[], str | None]:
    def probe() -> str | None:
        return None if importlib.util.find_spec(module) else f"{module} is not installed: {hint}"

    return probe


def _tensorrt_probe() -> str | None:
    from .tensorrt_build import tensorrt_unavailable_reason

    return tensorrt_unavailable_reason()


register_backend(Backend("onnxruntime", OnnxRuntime,
                         "ONNX Runtime (CPU; CUDA/TensorRT execution providers with onnxruntime-gpu)",
                         _module_probe("onnxruntime", "pip install 'swinv2-serve[onnx]'"), (".onnx",)))
register_backend(Backend("torch", TorchRuntime, "PyTorch deploy-form model (CPU or CUDA; fp32/fp16/bf16)",
                         _module_probe("torch", "pip install torch"), (".pt", ".pth", ".safetensors")))
def _openvino_factory(path: Any, **options: Any) -> Runtime:
    from .openvino_backend import OpenVINORuntime

    return OpenVINORuntime(path, **options)


def _openvino_probe() -> str | None:
    from .openvino_backend import openvino_unavailable_reason

    return openvino_unavailable_reason()


register_backend(Backend("openvino", _openvino_factory,
                         "OpenVINO on the CPU (ONNX or IR .xml; fp32, or bf16 where the CPU has it, fidelity-checked)",
                         _openvino_probe, (".xml",)))
register_backend(Backend("tensorrt", TensorRTRuntime, "TensorRT 10 engine (.plan + .plan.json) on an NVIDIA GPU",
                         _tensorrt_probe, (".plan", ".engine")))


def available_backends() -> dict[str, str | None]:
    """Backend name -> None where it can run here, else the reason it cannot (benchmarks skip with it)."""
    out: dict[str, str | None] = {}
    for name, backend in REGISTRY.items():
        try:
            out[name] = backend.probe()
        except Exception as exc:  # noqa: BLE001 - a probe must never take the caller down
            out[name] = f"{type(exc).__name__}: {exc}"
    return out


def load(path: str | os.PathLike | Any, backend: str | None = None, **options: Any) -> Runtime:
    """Load an exported model (or a torch module) for inference; the backend defaults from the file suffix."""
    if not isinstance(path, (str, os.PathLike)):  # an nn.Module
        backend = backend or "torch"
    else:
        path = Path(path)
        if not path.exists():
            raise SwinV2ServeError(f"{path}: no such model file; export one with `swinv2-serve export`")
        if backend is None:
            backend = next((b.name for b in REGISTRY.values() if path.suffix.lower() in b.suffixes), None)
            if backend is None:
                raise SwinV2ServeError(f"cannot tell the backend of {path.name} from its suffix; pass backend=, one of "
                                       f"{', '.join(REGISTRY)}")
    if backend not in REGISTRY:
        raise SwinV2ServeError(f"unknown backend {backend!r}; one of {', '.join(REGISTRY)}")
    return REGISTRY[backend].factory(path, **options)
