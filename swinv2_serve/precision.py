"""Reduced-precision deploy forms that keep the numerically fragile parts of cosine attention in FP32.

SwinV2's attention logits are ``cos(q, k) * exp(logit_scale) + bias`` with scales up to 100: in FP16 an
ulp at 100 is 0.06, so scaling before the matmul (as the FP32 graph does) or a half-precision softmax
visibly moves the probabilities. The FP16 form therefore computes q/k L2-normalisation, the scale, the
bias/mask add, softmax and every LayerNorm in FP32 (explicit Casts in the exported graph) and runs
the matrix multiplications, GELU and residual adds in FP16. Inputs and outputs stay FP32.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from .deploy import DeployAttention, DeploySwinV2


class Fp32LayerNorm(nn.LayerNorm):
    """LayerNorm whose statistics are computed in FP32 whatever the activation dtype."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.layer_norm(x.float(), self.normalized_shape, self.weight, self.bias, self.eps)
        return out.to(x.dtype)


class HalfPrecisionModel(nn.Module):
    """FP32 in, FP32 out; FP16 inside with FP32 islands."""

    def __init__(self, model: DeploySwinV2) -> None:
        super().__init__()
        self.model = model
        self.cfg = model.cfg

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.to(torch.float16)).float()


def _fp32_layernorm(norm: nn.LayerNorm) -> Fp32LayerNorm:
    out = Fp32LayerNorm(norm.normalized_shape, eps=norm.eps)
    out.load_state_dict({k: v.float() for k, v in norm.state_dict().items()})
    return out


def to_half_with_fp32_islands(deploy: DeploySwinV2) -> HalfPrecisionModel:
    """FP16 copy of a deploy-form model with LayerNorm, q/k normalisation, scale, bias and softmax in FP32."""
    model = copy.deepcopy(deploy).half()
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, nn.LayerNorm):
                setattr(module, name, _fp32_layernorm(child))
        if isinstance(module, DeployAttention):
            module.fp32_islands = True
            for name, buf in list(module.named_buffers(recurse=False)):
                if buf.is_floating_point():
                    setattr(module, name, buf.float())
    return HalfPrecisionModel(model).eval()
