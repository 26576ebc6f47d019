"""swinv2-serve: Swin Transformer V2 classifiers from checkpoint to TensorRT / ONNX / Triton.

Heavy stages (ONNX, TensorRT, serving, training) are imported lazily so ``import swinv2_serve`` only
costs torch.
"""

from __future__ import annotations

from typing import Any

from .config import PRESETS, SwinV2Config, get_config, list_models, resolve_config
from .model import SwinV2, create_model

__version__ = "0.1.0"

_LAZY = {
    "load_checkpoint": ".checkpoint",
    "load_model": ".checkpoint",
    "save_checkpoint": ".checkpoint",
    "to_deploy": ".deploy",
    "export_onnx": ".onnx_export",
    "Preprocess": ".preprocess",
    "load": ".runtime",
}

__all__ = [
    "PRESETS",
    "SwinV2",
    "SwinV2Config",
    "create_model",
    "get_config",
    "list_models",
    "resolve_config",
    "__version__",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module 'swinv2_serve' has no attribute {name!r}")
