"""The deploy form: a trained SwinV2 re-parameterised for inference at one resolution.

``to_deploy`` is the RepVGG-style step. After it the train-time machinery is gone:

* CPB meta-network -> a static ``16 * sigmoid(MLP(coords))`` bias table per block, for the window the
  block runs at (a new window/resolution here is the log-CPB transfer);
* ``exp(min(logit_scale, ln 100))`` -> a per-head constant folded into the query normalisation;
* shift masks -> constants (added to the bias table where that stays small);
* cyclic shift + padding + window partition -> one token permutation (a Gather). Tokens stay in the
  current block's window order between blocks, so block j -> j+1 is a single composed Gather, and
  patch merging gathers its 2x2 neighbours straight from window order.

Tables are kept dense ([heads, N, N], or [nW, heads, N, N] with the mask folded in) while they are
small; large windows keep the compact [heads, (2Wh-1)(2Ww-1)] table plus an index, and the mask as
region labels, so a 1536px export stays a sane size.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

from .config import SwinV2Config, resolve_config
from .model import SHIFT_MASK_VALUE, SwinV2, WindowAttention, labels_to_mask, shift_window_labels, window_partition

DENSE_TABLE_BYTES = 8 * 2**20  # above this a per-block table is stored compactly and expanded at run time
NORM_EPS = 1e-12  # F.normalize's eps: |x| is clamped from below, never divided by 0


# -- token orders ----------------------------------------------------------------------------------
def window_order(resolution: tuple[int, int], window: tuple[int, int], shift: tuple[int, int]) -> torch.Tensor:
    """For each position of the (shifted, padded, partitioned) window sequence: its raster token, or -1 for padding.

    Matches the train-time block: roll by -shift over the real map, pad bottom/right, partition.
    """
    h, w = resolution
    hp = math.ceil(h / window[0]) * window[0]
    wp = math.ceil(w / window[1]) * window[1]
    ys, xs = torch.meshgrid(torch.arange(hp), torch.arange(wp), indexing="ij")
    raster = ((ys + shift[0]) % h) * w + (xs + shift[1]) % w
    raster[(ys >= h) | (xs >= w)] = -1
    return window_partition(raster[None, :, :, None], window).reshape(-1)


def transition_index(src_order: torch.Tensor, dst_order: torch.Tensor) -> torch.Tensor:
    """Gather index taking tokens from ``src_order`` to ``dst_order``; padding reads row len(src) (a zero row)."""
    position = torch.full((int(src_order.max()) + 1,), -1, dtype=torch.long)
    real = src_order >= 0
    position[src_order[real]] = torch.nonzero(real).squeeze(1)
    index = torch.full_like(dst_order, len(src_order))
    index[dst_order >= 0] = position[dst_order[dst_order >= 0]]
    return index


def merge_index(src_order: torch.Tensor, resolution: tuple[int, int]) -> torch.Tensor:
    """[H2*W2, 4] gather index of patch merging's 2x2 neighbours (x00, x10, x01, x11) in raster order of the output."""
    h, w = resolution
    position = transition_index(src_order, torch.arange(h * w))  # raster -> position in src_order
    zero_row = len(src_order)
    h2, w2 = (h + 1) // 2, (w + 1) // 2
    out = torch.empty(h2 * w2, 4, dtype=torch.long)
    ys, xs = torch.meshgrid(torch.arange(h2), torch.arange(w2), indexing="ij")
    ys, xs = ys.reshape(-1), xs.reshape(-1)
    for k, (dy, dx) in enumerate(((0, 0), (1, 0), (0, 1), (1, 1))):
        y, x = 2 * ys + dy, 2 * xs + dx
        inside = (y < h) & (x < w)
        out[:, k] = zero_row
        out[inside, k] = position[(y * w + x)[inside]]
    return out


def _is_identity(index: torch.Tensor, length: int) -> bool:
    return len(index) == length and bool((index == torch.arange(length)).all())


# -- deploy modules ------------------------------------------------------------------------------------
class TokenGather(nn.Module):
    """x[:, index] on (B, L, C); appends a zero row first when the index reads padding."""

    def __init__(self, index: torch.Tensor, src_len: int) -> None:
        super().__init__()
        self.pad = bool((index == src_len).any())
        self.register_buffer("index", index.clone(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pad:
            x = F.pad(x, (0, 0, 0, 1))
        return x.index_select(1, self.index)


class DeployAttention(nn.Module):
    """Cosine window attention with every input-independent term precomputed."""

    def __init__(self, attn: WindowAttention, labels: torch.Tensor | None, num_windows: int,
                 dense_limit: int = DENSE_TABLE_BYTES) -> None:
        """``labels``: [nW, N] shift-region id per window token (None for an unshifted block)."""
        super().__init__()
        self.num_heads = attn.num_heads
        self.dim = attn.dim
        self.num_windows = num_windows
        self.fp32_islands = False  # set by precision.to_half_with_fp32_islands
        window = attn.window
        n = window[0] * window[1]
        self.n = n
        with torch.no_grad():
            self.qkv = nn.Linear(attn.dim, 3 * attn.dim)
            self.qkv.weight.copy_(attn.qkv.weight)
            bias = attn.qkv_bias()
            self.qkv.bias.copy_(bias if bias is not None else torch.zeros(3 * attn.dim))
            self.proj = nn.Linear(attn.dim, attn.dim)
            self.proj.load_state_dict(attn.proj.state_dict())
            self.register_buffer("q_scale", attn.logit_scale_value().detach().clone().view(1, -1, 1, 1))
            bytes_bias = self.num_heads * n * n * 4
            bytes_mask = num_windows * n * n * 4
            self.mode = "dense"
            if labels is not None and bytes_bias * num_windows <= dense_limit:
                # mask folded into the bias: one constant [nW, heads, N, N]
                masked = attn.position_bias()[None] + labels_to_mask(labels)[:, None]
                self.register_buffer("bias", masked.contiguous())
                self.mode = "dense_masked"
            elif bytes_bias <= dense_limit:
                self.register_buffer("bias", attn.position_bias().contiguous())
            else:
                self.mode = "compact"
                self.window = window
                # [heads, 2Wh-1, 2Ww-1] + separable row/column offsets (Wh^2 and Ww^2 entries, not N^2)
                table = 16.0 * torch.sigmoid(attn.cpb_mlp(attn.relative_coords_table))  # [(2Wh-1)(2Ww-1), heads]
                table = table.t().reshape(-1, 2 * window[0] - 1, 2 * window[1] - 1)
                self.register_buffer("bias_table", table.contiguous())
                self.register_buffer("offset_y", _pair_offsets(window[0]))
                self.register_buffer("offset_x", _pair_offsets(window[1]))
        self.mask_mode = "none" if labels is None or self.mode == "dense_masked" else (
            "dense" if bytes_mask <= dense_limit else "labels")
        if self.mask_mode == "dense":
            self.register_buffer("mask", labels_to_mask(labels)[:, None].contiguous())  # [nW, 1, N, N]
        elif self.mask_mode == "labels":
            self.register_buffer("mask_labels", labels.clone())  # [nW, N]: tokens attend iff same id

    def position_bias(self) -> torch.Tensor:
        if self.mode == "compact":  # bias[h, (yi, xi), (yj, xj)] = table[h, yi - yj, xi - xj]
            wh, ww = self.window
            t = self.bias_table.index_select(1, self.offset_y).index_select(2, self.offset_x)  # [h, wh*wh, ww*ww]
            return t.view(-1, wh, wh, ww, ww).permute(0, 1, 3, 2, 4).reshape(-1, self.n, self.n)
        return self.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B * nW, N, C) in window order. Reshapes use constants (batch is -1): no shape arithmetic in the graph."""
        n, heads, dim = self.n, self.num_heads, self.dim
        qkv = self.qkv(x).reshape(-1, n, 3 * heads, dim // heads).transpose(1, 2)
        q, k, v = qkv.split(heads, dim=1)  # (B*nW, heads, N, d) each; constant sizes export as one Split
        if self.fp32_islands:  # reduced precision: normalise, scale, bias and softmax in fp32
            q, k = q.float(), k.float()
            q = q / torch.linalg.vector_norm(q, dim=-1, keepdim=True).clamp_min(NORM_EPS)
            k = k / torch.linalg.vector_norm(k, dim=-1, keepdim=True).clamp_min(NORM_EPS)
            attn = (q.to(v.dtype) @ k.to(v.dtype).transpose(-2, -1)).float() * self.q_scale
        else:  # fp32: fold the logit scale into the (N x d) query instead of the (N x N) scores
            q = q * (self.q_scale / torch.linalg.vector_norm(q, dim=-1, keepdim=True).clamp_min(NORM_EPS))
            k = k / torch.linalg.vector_norm(k, dim=-1, keepdim=True).clamp_min(NORM_EPS)
            attn = q @ k.transpose(-2, -1)
        if self.mode == "dense_masked" or self.mask_mode != "none":
            attn = attn.reshape(-1, self.num_windows, heads, n, n) + self.position_bias()
            if self.mask_mode == "dense":
                attn = attn + self.mask
            elif self.mask_mode == "labels":
                labels = self.mask_labels
                differs = labels[:, None, :, None] != labels[:, None, None, :]
                attn = attn + differs.to(attn.dtype) * SHIFT_MASK_VALUE
            attn = attn.reshape(-1, heads, n, n)
        else:
            attn = attn + self.position_bias()
        attn = attn.softmax(dim=-1).to(v.dtype)
        return self.proj((attn @ v).transpose(1, 2).reshape(-1, n, dim))


def _pair_offsets(size: int) -> torch.Tensor:
    """[size * size]: (i - j + size - 1) for every (i, j), the row (or column) of a relative-offset table."""
    i = torch.arange(size)
    return (i[:, None] - i[None, :] + size - 1).reshape(-1)


class DeployBlock(nn.Module):
    def __init__(self, block, num_windows: int, dense_limit: int) -> None:  # noqa: ANN001 - SwinV2Block
        super().__init__()
        self.n = block.window[0] * block.window[1]
        self.length = num_windows * self.n
        self.dim = block.norm1.normalized_shape[0]
        labels = shift_window_labels(block.resolution, block.window, block.shift) if any(block.shift) else None
        self.attn = DeployAttention(block.attn, labels, num_windows, dense_limit)
        self.norm1 = block.norm1
        self.mlp = block.mlp
        self.norm2 = block.norm2
        self.main_norm = block.main_norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        attn = self.attn(x.reshape(-1, self.n, self.dim)).reshape(-1, self.length, self.dim)
        x = x + self.norm1(attn)
        x = x + self.norm2(self.mlp(x))
        if self.main_norm is not None:
            x = self.main_norm(x)
        return x


class DeployMerge(nn.Module):
    """Patch merging as one Gather of 2x2 neighbours -> (B, L/4, 4C) -> reduction -> norm."""

    def __init__(self, merging, index: torch.Tensor, src_len: int) -> None:  # noqa: ANN001 - PatchMerging
        super().__init__()
        self.gather = TokenGather(index.reshape(-1), src_len)
        self.out_len = index.shape[0]
        self.in_dim = merging.reduction.in_features // 4
        self.reduction = merging.reduction
        self.norm = merging.norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.gather(x).reshape(-1, self.out_len, 4 * self.in_dim)
        return self.norm(self.reduction(x))


class DeploySwinV2(nn.Module):
    """Inference form of ``SwinV2``: (B, 3, H, W) -> logits (B, C); no CPB MLP, no roll, no pad, no masks to build."""

    def __init__(self, model: SwinV2, cfg: SwinV2Config, dense_limit: int = DENSE_TABLE_BYTES) -> None:
        super().__init__()
        self.cfg = cfg
        self.patch_embed = model.patch_embed
        steps: list[nn.Module] = []
        grid = cfg.patch_grid
        order = torch.arange(grid[0] * grid[1])  # raster order after the patch embedding
        for i, stage in enumerate(model.layers):
            resolution = cfg.stage_resolutions[i]
            if i > 0:
                # merging reads the previous stage's map in whatever order it is in, writes raster order
                prev_res = cfg.stage_resolutions[i - 1]
                steps.append(DeployMerge(stage.downsample, merge_index(order, prev_res), len(order)))
                order = torch.arange(resolution[0] * resolution[1])
            for block in stage.blocks:
                block_order = window_order(resolution, block.window, block.shift)
                index = transition_index(order, block_order)
                if not _is_identity(index, len(order)):
                    steps.append(TokenGather(index, len(order)))
                order = block_order
                num_windows = len(block_order) // (block.window[0] * block.window[1])
                steps.append(DeployBlock(block, num_windows, dense_limit))
        self.steps = nn.Sequential(*steps)
        real = torch.nonzero(order >= 0).squeeze(1)
        self.final_gather = None if len(real) == len(order) else TokenGather(real, len(order))
        self.norm = model.norm
        self.head = model.head.fc

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed.proj(x).flatten(2).transpose(1, 2)
        x = self.patch_embed.norm(x)
        x = self.steps(x)
        if self.final_gather is not None:
            x = self.final_gather(x)
        return self.head(self.norm(x).mean(dim=1))


def resize_model(
    model: SwinV2,
    *,
    img_size: int | tuple[int, int] | None = None,
    window_size: int | tuple[int, ...] | None = None,
) -> SwinV2:
    """The same weights as a new train-time model at another resolution / window (the log-CPB transfer:
    the CPB normaliser stays the one the model was trained with). The original is untouched."""
    target = SwinV2(resolve_config(model.cfg, img_size=img_size, window_size=window_size))
    target.load_state_dict(model.state_dict())
    return target.eval()


@torch.no_grad()
def to_deploy(
    model: SwinV2,
    *,
    img_size: int | tuple[int, int] | None = None,
    window_size: int | tuple[int, ...] | None = None,
    dense_limit: int = DENSE_TABLE_BYTES,
) -> DeploySwinV2:
    """Re-parameterise a trained SwinV2 for inference, optionally at a new resolution / window size.

    A new size goes through ``resize_model`` first. The result holds no CPB MLP, shares no module with
    ``model`` and computes the same logits.
    """
    if not isinstance(model, SwinV2):
        raise TypeError(f"to_deploy expects a swinv2_serve SwinV2, got {type(model).__name__}")
    if img_size is not None or window_size is not None:
        model = resize_model(model, img_size=img_size, window_size=window_size)
    else:
        model = copy.deepcopy(model)  # the deploy form must not share modules with a model that may train on
    return DeploySwinV2(model.eval(), model.cfg, dense_limit).eval()


__all__ = ["DeployAttention", "DeploySwinV2", "merge_index", "resize_model", "to_deploy", "transition_index",
           "window_order"]
