"""Training: fine-tuning (``finetune``), SimMIM pretraining (``simmim``) and the digits demo (``digits``).

Everything runs alone or under ``torchrun`` (DDP, optional ZeRO); checkpoints are the package's own
self-describing format, so they feed ``load_model`` and the export chain directly.
"""

from __future__ import annotations

from .finetune import TrainConfig, run_finetune

__all__ = ["TrainConfig", "run_finetune"]
