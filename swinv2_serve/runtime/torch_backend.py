"""PyTorch: the deploy form of a SwinV2 on CPU or CUDA, fp32 or fp16/bf16 autocast, optionally compiled."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from ..checkpoint import load_model
from ..contract import check_precision
from ..deploy import DeploySwinV2, to_deploy
from ..errors import BackendUnavailableError, SwinV2ServeError
from ..model import SwinV2
from .base import Runtime

log = logging.getLogger(__name__)

AUTOCAST_DTYPES = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}


def autocast_logits(forward: Callable[[torch.Tensor], torch.Tensor], x: np.ndarray, precision: str,
                    device: torch.device) -> torch.Tensor:
    """float32 logits of ``forward`` on ``x`` under ``precision``'s autocast (any torch module: ours or a peer)."""
    dtype = AUTOCAST_DTYPES[precision]
    with torch.inference_mode():
        inputs = torch.from_numpy(x).to(device, non_blocking=True)
        if dtype is None:
            return forward(inputs).float()
        with torch.autocast(device.type, dtype=dtype):
            return forward(inputs).float()


class TorchRuntime(Runtime):
    """A SwinV2 in PyTorch.

    ``model`` is one of our checkpoints (path) or a ``SwinV2`` / ``DeploySwinV2`` module; ``img_size`` /
    ``window_size`` run a train-time model at another resolution (``resolve_config``'s window rule).
    fp16/bf16 use ``torch.autocast``: weights stay fp32 and autocast keeps LayerNorm, softmax and norms in
    fp32, the same islands the fp16 ONNX/TensorRT engines keep.
    """

    backend = "torch"

    def __init__(
        self,
        model: SwinV2 | DeploySwinV2 | str | os.PathLike,
        *,
        device: str = "cpu",
        precision: str = "fp32",
        compile: bool = False,
        compile_mode: str | None = None,
        deploy: bool = True,
        img_size: int | tuple[int, int] | None = None,
        window_size: int | tuple[int, ...] | None = None,
        max_batch: int | None = None,
    ) -> None:
        check_precision(precision, "torch")
        self.device = torch.device(device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise BackendUnavailableError("torch device 'cuda' requested but torch sees no CUDA GPU")
        if isinstance(model, (str, os.PathLike)):
            model = load_model(model)
        if not isinstance(model, (SwinV2, DeploySwinV2)):
            raise SwinV2ServeError(f"TorchRuntime needs a swinv2_serve model, got {type(model).__name__}")
        resize = img_size is not None or window_size is not None
        if resize and not isinstance(model, SwinV2):
            raise SwinV2ServeError("img_size/window_size need the train-time SwinV2 (a deploy form is fixed)")
        if isinstance(model, SwinV2) and (deploy or resize):
            model = to_deploy(model, img_size=img_size, window_size=window_size)
            if not deploy:
                log.warning("img_size/window_size given: running the deploy form (deploy=False ignored)")
        super().__init__(model.cfg.metadata(), max_batch)
        self.precision = precision
        self.module = model.eval().to(self.device)
        self._forward: Any = torch.compile(self.module, mode=compile_mode) if compile else self.module

    def run(self, x: np.ndarray) -> dict[str, np.ndarray]:
        logits = autocast_logits(self._forward, x, self.precision, self.device)
        return {"logits": logits.cpu().numpy(), "probs": logits.softmax(dim=-1).cpu().numpy()}
