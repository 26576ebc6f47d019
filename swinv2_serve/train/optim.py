"""AdamW parameter groups (no decay on norms/biases/logit_scale/CPB, layer-wise LR decay), the cosine
schedule with linear warmup, and an exponential moving average of the weights."""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
from torch import nn

from ..model import SwinV2


def layer_id(name: str, depths: tuple[int, ...]) -> int:
    """Depth of a parameter for layer-wise LR decay: 0 = patch embedding, 1..sum(depths) = blocks in order,
    sum(depths) + 1 = final norm and head. A stage's patch merging sits with that stage's first block."""
    if name.startswith("patch_embed"):
        return 0
    if name.startswith("layers."):
        parts = name.split(".")
        stage = int(parts[1])
        first = sum(depths[:stage]) + 1
        if parts[2] == "blocks":
            return first + int(parts[3])
        return first  # downsample
    return sum(depths) + 1


def param_groups(
    model: SwinV2,
    *,
    lr: float,
    weight_decay: float,
    layer_decay: float = 1.0,
) -> list[dict[str, Any]]:
    """One group per (layer, decay?) pair; each group's ``lr_scale`` is ``layer_decay ** (top - layer)``.

    The scheduler multiplies its base LR by ``lr_scale``, so the head trains at ``lr`` and the patch
    embedding at ``lr * layer_decay ** (sum(depths) + 1)``.
    """
    no_decay = model.no_weight_decay_names()
    depths = model.cfg.depths
    top = sum(depths) + 1
    groups: dict[tuple[int, bool], dict[str, Any]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        layer = layer_id(name, depths) if layer_decay != 1.0 else top
        decay = name not in no_decay
        key = (layer, decay)
        if key not in groups:
            scale = layer_decay ** (top - layer)
            groups[key] = {
                "params": [],
                "names": [],
                "weight_decay": weight_decay if decay else 0.0,
                "lr": lr * scale,
                "lr_scale": scale,
                "layer": layer,
            }
        groups[key]["params"].append(param)
        groups[key]["names"].append(name)
    return [groups[k] for k in sorted(groups)]


def build_optimizer(
    model: SwinV2,
    *,
    lr: float,
    weight_decay: float,
    layer_decay: float = 1.0,
    betas: tuple[float, float] = (0.9, 0.999),
    zero: bool = False,
    extra_params: list[tuple[str, nn.Parameter]] | None = None,
) -> torch.optim.Optimizer:
    """AdamW over :func:`param_groups`; ``zero=True`` shards its state across ranks (ZeRO stage 1).

    ``extra_params`` (e.g. SimMIM's mask token and decoder) train at the full LR; 1-D ones without decay.
    """
    groups = param_groups(model, lr=lr, weight_decay=weight_decay, layer_decay=layer_decay)
    for decay in (True, False):
        params = [p for _, p in extra_params or [] if (p.ndim > 1) == decay]
        if params:
            groups.append({"params": params, "names": [], "weight_decay": weight_decay if decay else 0.0,
                           "lr": lr, "lr_scale": 1.0, "layer": -1})
    for group in groups:
        group.pop("names")  # ZeroRedundancyOptimizer and state_dict() want plain values
    if zero:
        from torch.distributed.optim import ZeroRedundancyOptimizer

        return ZeroRedundancyOptimizer(groups, optimizer_class=torch.optim.AdamW, lr=lr, betas=betas)
    return torch.optim.AdamW(groups, lr=lr, betas=betas)


def cosine_schedule(
    optimizer: torch.optim.Optimizer, *, total_steps: int, warmup_steps: int, min_lr_ratio: float = 0.01
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warmup from 0, then cosine to ``min_lr_ratio`` of the base LR; stepped once per optimizer step."""
    total_steps = max(1, total_steps)
    warmup_steps = min(max(0, warmup_steps), total_steps - 1)

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


class ModelEma:
    """Exponential moving average of parameters (buffers are copied): ``ema = d * ema + (1 - d) * p``."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        for ema_p, p in zip(self.module.parameters(), model.parameters()):
            ema_p.lerp_(p.detach().to(ema_p.dtype), 1.0 - self.decay)
        for ema_b, b in zip(self.module.buffers(), model.buffers()):
            ema_b.copy_(b)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.module.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.module.load_state_dict(state)
