"""One inference interface over torch, ONNX Runtime, OpenVINO and TensorRT (one module per backend).

``load(path, backend=None, **options) -> Runtime``; call it with float32 [B, 3, H, W] and get
``{"logits": [B, C], "probs": [B, C]}``. The backend classes are imported on first use (see ``registry``).
"""

from __future__ import annotations

import importlib
from typing import Any

from .base import Runtime
from .registry import REGISTRY, Backend, available_backends, backend_for, load, register_backend

_LAZY = {
    "TorchRuntime": ".torch_backend",
    "OnnxRuntime": ".onnxruntime_backend",
    "OpenVINORuntime": ".openvino_backend",
    "TensorRTRuntime": ".tensorrt_backend",
}

__all__ = ["REGISTRY", "Backend", "Runtime", "available_backends", "backend_for", "load", "register_backend", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
