"""Mixup / CutMix on a batch, with label smoothing folded into the soft targets."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def soft_targets(labels: torch.Tensor, num_classes: int, smoothing: float) -> torch.Tensor:
    off = smoothing / num_classes
    return torch.full((labels.shape[0], num_classes), off, device=labels.device).scatter_(
        1, labels[:, None], 1.0 - smoothing + off
    )


def mix_batch(
    images: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    *,
    mixup: float = 0.0,
    cutmix: float = 0.0,
    smoothing: float = 0.0,
    gen: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns (images, soft targets). With both alphas set, each batch picks one of the two at random.

    Mixup blends the batch with its reverse by ``lam ~ Beta(a, a)``; CutMix pastes a box of area
    ``1 - lam`` from the reversed batch, and ``lam`` is corrected to the box's real area.
    """
    targets = soft_targets(labels, num_classes, smoothing)
    if (mixup <= 0 and cutmix <= 0) or images.shape[0] < 2:
        return images, targets
    use_cutmix = cutmix > 0 and (mixup <= 0 or float(torch.rand(1, generator=gen)) < 0.5)
    alpha = cutmix if use_cutmix else mixup
    # Beta(a, a) through its quantile of a uniform from ``gen``, so mixing is reproducible per step
    lam = beta_quantile(alpha, float(torch.rand(1, generator=gen)))
    flipped = images.flip(0)
    if use_cutmix:
        h, w = images.shape[-2:]
        cut = math.sqrt(1.0 - lam)
        ch, cw = int(h * cut), int(w * cut)
        cy = int(torch.randint(0, h, (1,), generator=gen))
        cx = int(torch.randint(0, w, (1,), generator=gen))
        y0, y1 = max(cy - ch // 2, 0), min(cy + ch // 2, h)
        x0, x1 = max(cx - cw // 2, 0), min(cx + cw // 2, w)
        images = images.clone()
        images[..., y0:y1, x0:x1] = flipped[..., y0:y1, x0:x1]
        lam = 1.0 - (y1 - y0) * (x1 - x0) / (h * w)
    else:
        images = images * lam + flipped * (1.0 - lam)
    return images, targets * lam + targets.flip(0) * (1.0 - lam)


def beta_quantile(alpha: float, u: float) -> float:
    """Inverse CDF of Beta(alpha, alpha) at ``u``, from its density on a fine grid (ample for mixing)."""
    xs = torch.linspace(1e-4, 1 - 1e-4, 2001, dtype=torch.float64)
    logpdf = (alpha - 1) * (xs.log() + (1 - xs).log())
    cdf = torch.cumsum((logpdf - logpdf.max()).exp(), 0)
    cdf = cdf / cdf[-1]
    idx = int(torch.searchsorted(cdf, torch.tensor([u], dtype=torch.float64)).clamp(max=len(xs) - 1))
    return float(xs[idx])


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return torch.sum(-targets * F.log_softmax(logits.float(), dim=-1), dim=-1).mean()
