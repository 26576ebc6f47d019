"""ONNX Runtime: CPU by default; CUDA / TensorRT execution providers with onnxruntime-gpu."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ..contract import INPUT_NAME, OUTPUT_NAMES, check_precision, read_onnx_metadata
from ..errors import BackendUnavailableError, SwinV2ServeError
from .base import Runtime

ORT_PROVIDERS = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
}
ORT_OPTIMIZATION = ("disable", "basic", "extended", "all")
ProviderSpec = str | tuple[str, Mapping[str, Any]]


def require_onnxruntime() -> Any:
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise BackendUnavailableError("onnxruntime is not installed: pip install 'swinv2-serve[onnx]'") from exc
    return ort


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


def session_options(threads: int | None, optimization: str = "all") -> Any:
    """Session options of every ONNX Runtime session here (ours and the timm peer's alike)."""
    ort = require_onnxruntime()
    if optimization not in ORT_OPTIMIZATION:
        raise SwinV2ServeError(f"optimization must be one of {', '.join(ORT_OPTIMIZATION)}, got {optimization!r}")
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
    options.log_severity_level = 3
    return options


class OnnxRuntime(Runtime):
    """An ONNX Runtime session over one of our exports.

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
        precision: str = "fp32",
    ) -> None:
        ort = require_onnxruntime()
        check_precision(precision, "onnxruntime")
        options = session_options(threads, optimization)
        super().__init__(read_onnx_metadata(path), max_batch)
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
