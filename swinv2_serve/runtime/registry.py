"""Backends by name: ``load(path, backend=..., precision=...)`` and what can run on this machine.

A backend's module (and the library it wraps: torch, onnxruntime, openvino, tensorrt) is imported when it is
first used, by its dotted path, so that a server running ONNX Runtime never imports torch and a missing
optional library only affects the backend that needs it. Adding one touches no other code.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..contract import RUNTIME_BACKENDS
from ..errors import SwinV2ServeError
from .base import Runtime


@dataclass(frozen=True)
class Backend:
    """A runtime backend: its Runtime class (or ``"module:Class"``, imported on first use), the file suffixes
    it claims, and how to tell whether it can run here (the library it wraps, then an optional ``probe``
    returning None or the reason, e.g. no GPU)."""

    name: str
    runtime: type[Runtime] | str
    description: str
    suffixes: tuple[str, ...] = ()
    requires: str | None = None  # the library it wraps (a module name) ...
    install_hint: str = ""  # ... and how to get it
    probe: Callable[[], str | None] | str | None = None

    def runtime_class(self) -> type[Runtime]:
        return _resolve(self.runtime)

    def unavailable_reason(self) -> str | None:
        if self.requires and importlib.util.find_spec(self.requires) is None:
            return f"{self.requires} is not installed: {self.install_hint}"
        return _resolve(self.probe)() if self.probe else None


def _resolve(target: Any) -> Any:
    if not isinstance(target, str):
        return target
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


_HERE = __name__.rpartition(".")[0]
REGISTRY: dict[str, Backend] = {}


def register_backend(backend: Backend) -> None:
    REGISTRY[backend.name] = backend


for _backend in (
    Backend("onnxruntime", f"{_HERE}.onnxruntime_backend:OnnxRuntime",
            "ONNX Runtime (CPU; CUDA/TensorRT execution providers with onnxruntime-gpu)", (".onnx",),
            "onnxruntime", "pip install 'swinv2-serve[onnx]'"),
    Backend("torch", f"{_HERE}.torch_backend:TorchRuntime", "PyTorch deploy-form model (CPU or CUDA; fp32/fp16/bf16)",
            (".pt", ".pth", ".safetensors"), "torch", "pip install torch"),
    Backend("openvino", f"{_HERE}.openvino_backend:OpenVINORuntime",
            "OpenVINO on the CPU (ONNX or IR .xml; fp32, or bf16 where the CPU has it, fidelity-checked)", (".xml",),
            "openvino", "pip install 'swinv2-serve[openvino]'",
            f"{_HERE}.openvino_backend:openvino_unavailable_reason"),
    Backend("tensorrt", f"{_HERE}.tensorrt_backend:TensorRTRuntime",
            "TensorRT 10 engine (.plan + .plan.json) on an NVIDIA GPU", (".plan", ".engine"), "tensorrt",
            "pip install 'swinv2-serve[trt]' on a machine with an NVIDIA GPU, or run in "
            "nvcr.io/nvidia/tensorrt:<release>-py3 with --gpus all",
            f"{_HERE}.tensorrt_backend:tensorrt_unavailable_reason"),
):
    register_backend(_backend)
assert set(REGISTRY) == set(RUNTIME_BACKENDS), "contract.RUNTIME_BACKENDS and the registry disagree"


def available_backends() -> dict[str, str | None]:
    """Backend name -> None where it can run here, else the reason it cannot (benchmarks skip with it)."""
    out: dict[str, str | None] = {}
    for name, backend in REGISTRY.items():
        try:
            out[name] = backend.unavailable_reason()
        except Exception as exc:  # noqa: BLE001 - a probe must never take the caller down
            out[name] = f"{type(exc).__name__}: {exc}"
    return out


def backend_for(path: str | os.PathLike) -> str:
    """The backend a model file's suffix names."""
    suffix = Path(path).suffix.lower()
    for backend in REGISTRY.values():
        if suffix in backend.suffixes:
            return backend.name
    raise SwinV2ServeError(f"cannot tell the backend of {Path(path).name} from its suffix; pass backend=, one of "
                           f"{', '.join(REGISTRY)}")


def load(path: str | os.PathLike | Any, backend: str | None = None, **options: Any) -> Runtime:
    """Load an exported model (or a torch module) for inference; the backend defaults from the file suffix.

    ``options`` go to the backend's Runtime: ``precision`` for every backend, ``threads``, ``max_batch``,
    ``providers`` (ONNX Runtime), ``hint``/``fidelity`` (OpenVINO), ``device`` (torch, TensorRT) ...
    """
    if not isinstance(path, (str, os.PathLike)):  # an nn.Module
        backend = backend or "torch"
    else:
        path = Path(path)
        if not path.exists():
            raise SwinV2ServeError(f"{path}: no such model file; export one with `swinv2-serve export`")
        backend = backend or backend_for(path)
    if backend not in REGISTRY:
        raise SwinV2ServeError(f"unknown backend {backend!r}; one of {', '.join(REGISTRY)}")
    return REGISTRY[backend].runtime_class()(path, **options)
