"""swinv2-serve: Swin Transformer V2 classifiers from checkpoint to TensorRT / ONNX / Triton.

Everything but the configs is imported lazily: ``import swinv2_serve`` costs no torch, so the client
and the server's preprocessing model run without it.
"""

from __future__ import annotations

from typing import Any

from ._version import __version__
from .config import PRESETS, SwinV2Config, get_config, list_models, resolve_config

_LAZY = {
    # lazy so that the client and Triton's preprocessing model (no torch in the serving image) import cheaply
    "SwinV2": ".model",
    "create_model": ".model",
    "load_checkpoint": ".checkpoint",
    "load_model": ".checkpoint",
    "save_checkpoint": ".checkpoint",
    "to_deploy": ".deploy",
    "export_onnx": ".onnx_export",
    "Preprocess": ".preprocess",
    "load": ".runtime",
    "ExportMetadata": ".contract",
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
