"""One inference interface over torch, ONNX Runtime, TensorRT and OpenVINO.

``load(path, backend=...)`` returns a ``Runtime``: call it with a float32 [B, 3, H, W] array and get
``{"logits": [B, C], "probs": [B, C]}`` back. The server and the benchmarks use every backend this way.
Every exported model carries its own description (``swinv2_serve`` metadata: img_size, mean/std,
labels ...), so a runtime needs nothing but the file.
"""

from __future__ import annotations

import json
import os
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import numpy as np

from .errors import BackendUnavailableError, SwinV2ServeError

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
        if self.max_batch is not None and x.shape[0] > self.max_batch:
            raise SwinV2ServeError(f"batch {x.shape[0]} exceeds this model's max batch {self.max_batch}")
        return np.ascontiguousarray(x)

    def __call__(self, x: np.ndarray) -> dict[str, np.ndarray]:
        return self.run(self.check_input(x))

    @abstractmethod
    def run(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """Backend inference on an already checked input."""


def read_onnx_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The ``swinv2_serve`` JSON stored in an ONNX file's metadata_props."""
    import onnx

    model = onnx.load(os.fspath(path), load_external_data=False)
    for prop in model.metadata_props:
        if prop.key == METADATA_KEY:
            return json.loads(prop.value)
    raise SwinV2ServeError(f"{path} has no '{METADATA_KEY}' metadata: export it with `swinv2-serve export`")


class OnnxRuntime(Runtime):
    """ONNX Runtime session; providers in order of preference (TensorRT/CUDA EPs where installed)."""

    backend = "onnxruntime"

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        providers: list[str] | None = None,
        threads: int | None = None,
        max_batch: int | None = None,
        optimization: str = "all",
    ) -> None:
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise BackendUnavailableError("onnxruntime is not installed: pip install 'swinv2-serve[onnx]'") from exc
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
        available = ort.get_available_providers()
        wanted = providers or ["CPUExecutionProvider"]
        missing = [p for p in wanted if p not in available]
        if missing:
            raise BackendUnavailableError(f"onnxruntime providers {missing} are not available here (have {available})")
        self.session = ort.InferenceSession(os.fspath(path), options, providers=wanted)
        self.providers = self.session.get_providers()

    def run(self, x: np.ndarray) -> dict[str, np.ndarray]:
        logits, probs = self.session.run(list(OUTPUT_NAMES), {INPUT_NAME: x})
        return {"logits": logits, "probs": probs}


BACKENDS: dict[str, str] = {
    "onnxruntime": "ONNX Runtime (CPU; CUDA/TensorRT execution providers with onnxruntime-gpu)",
    "torch": "PyTorch deploy-form model (CPU or CUDA)",
    "tensorrt": "TensorRT engine (.plan) on an NVIDIA GPU",
    "openvino": "OpenVINO on CPU (fp32 / bf16)",
}


def load(path: str | os.PathLike, backend: str | None = None, **options: Any) -> Runtime:
    """Load an exported model for inference; the backend defaults from the file suffix."""
    path = Path(path)
    if not path.exists():
        raise SwinV2ServeError(f"{path}: no such model file; export one with `swinv2-serve export`")
    if backend is None:
        backend = {".onnx": "onnxruntime", ".plan": "tensorrt", ".engine": "tensorrt"}.get(path.suffix, "torch")
    if backend == "onnxruntime":
        return OnnxRuntime(path, **options)
    if backend not in BACKENDS:
        raise SwinV2ServeError(f"unknown backend {backend!r}; one of {', '.join(BACKENDS)}")
    raise BackendUnavailableError(f"backend {backend!r} is not built yet")
