"""What a (resolution, batch) cell may cost on this machine: a rough memory estimate and the skip reasons."""

from __future__ import annotations

import contextlib
import math
import os

from ..config import SwinV2Config


def estimate_memory_bytes(cfg: SwinV2Config, batch: int) -> int:
    """Rough peak inference memory: weights plus the largest stage's attention and activations.

    Attention: batch x windows x heads x N^2 floats, x3 (scores, biased, softmax alive together);
    activations: batch x padded tokens x dim floats, x12 (qkv 3C, MLP hidden 4C, residual copies).
    """
    weights = 4 * (cfg.embed_dim * cfg.embed_dim * 12 * sum(d * 4**i for i, d in enumerate(cfg.depths)))
    peak = 0
    for (h, w), (wh, ww), heads, dim in zip(cfg.stage_resolutions, cfg.stage_windows, cfg.num_heads,
                                           cfg.stage_dims):
        ph, pw = math.ceil(h / wh) * wh, math.ceil(w / ww) * ww
        n = wh * ww
        windows = (ph // wh) * (pw // ww)
        attention = batch * windows * heads * n * n * 4 * 3
        activations = batch * ph * pw * dim * 4 * 12
        peak = max(peak, attention + activations)
    return weights + peak


def default_memory_budget_gb() -> float:
    with contextlib.suppress(Exception):
        import psutil

        return psutil.virtual_memory().available / 2**30 / 2
    with contextlib.suppress(Exception):
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 2**30 / 2
    return 8.0


def budget_reason(cfg: SwinV2Config, batch: int, max_pixels: int | None, max_memory_gb: float) -> str | None:
    """Why a (resolution, batch) cell is not run here, or None."""
    h, w = cfg.img_size
    if max_pixels is not None and batch * h * w > max_pixels:
        return (f"batch*H*W = {batch * h * w:,} > --max-pixels-per-batch {max_pixels:,} "
                "(time budget on this machine)")
    need = estimate_memory_bytes(cfg, batch) / 2**30
    if need > max_memory_gb:
        return f"estimated peak memory {need:.1f} GB > budget {max_memory_gb:.1f} GB (--max-memory-gb)"
    return None
