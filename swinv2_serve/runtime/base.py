"""The one inference interface: ``runtime(x) -> {"logits", "probs"}`` for x float32 [B, 3, H, W]."""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

from ..contract import ExportMetadata
from ..errors import SwinV2ServeError


class Runtime(ABC):
    """A loaded model. Every exported model describes itself (``metadata``), so a runtime needs only the file."""

    backend: str = ""
    precision: str = "fp32"

    def __init__(self, metadata: ExportMetadata, max_batch: int | None = None) -> None:
        self.metadata = metadata
        self.max_batch = max_batch

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return self.metadata.input_shape

    @property
    def num_classes(self) -> int:
        return self.metadata.num_classes

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

    def logits(self, x: np.ndarray) -> np.ndarray:
        """Logits only, in slices of ``max_batch`` (for checks and benchmarks over many inputs)."""
        step = self.max_batch or len(x) or 1
        return np.concatenate([self(x[i:i + step])["logits"] for i in range(0, len(x), step)])

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
        return (f"{type(self).__name__}(model={self.metadata.model!r}, input={list(self.input_shape)}, "
                f"max_batch={self.max_batch}, precision={self.precision!r})")
