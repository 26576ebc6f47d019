"""Swin Transformer V2, train-time form, from the smallest part up.

attention -> block -> stage -> model. Tensors flow channels-last (B, H, W, C). Parameter names
follow timm's layout, so timm-native checkpoints load without renaming; derived tensors (relative
coordinates, indices, shift masks) are non-persistent buffers and never enter a checkpoint.

The paper's parts: residual post-norm (``x + norm(f(x))``), scaled cosine attention with a per-head
``logit_scale`` clamped at ln(100), the log-spaced continuous position bias (CPB) meta-network, shifted
windows with a finite -100 mask, and (H/G) an extra LayerNorm on the main branch every N blocks.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .config import SwinV2Config, resolve_config
from .hub import fetch_pretrained, load_pretrained

LOGIT_SCALE_MAX = math.log(1.0 / 0.01)  # logit scale is clamped at 100
SHIFT_MASK_VALUE = -100.0
CPB_HIDDEN = 512


# -- geometry helpers (shared with the deploy form) ------------------------------------------------
def log_spaced_coords(window: tuple[int, int], normaliser: tuple[int, int]) -> torch.Tensor:
    """Relative offsets of a window, scaled to [-8, 8] by the trained window, then log-spaced.

    Returns [(2Wh-1)*(2Ww-1), 2]: the CPB meta-network's input.
    """
    dh = torch.arange(-(window[0] - 1), window[0], dtype=torch.float32)
    dw = torch.arange(-(window[1] - 1), window[1], dtype=torch.float32)
    coords = torch.stack(torch.meshgrid(dh, dw, indexing="ij"), dim=-1)
    coords[..., 0] /= max(normaliser[0] - 1, 1)
    coords[..., 1] /= max(normaliser[1] - 1, 1)
    coords = coords * 8.0
    coords = torch.sign(coords) * torch.log2(coords.abs() + 1.0) / math.log2(8)
    return coords.reshape(-1, 2)


def relative_position_index(window: tuple[int, int]) -> torch.Tensor:
    """[N, N] index into the (2Wh-1)*(2Ww-1) offset table for every query/key pair of a window."""
    ys, xs = torch.meshgrid(torch.arange(window[0]), torch.arange(window[1]), indexing="ij")
    ys, xs = ys.flatten(), xs.flatten()
    dy = ys[:, None] - ys[None, :] + window[0] - 1
    dx = xs[:, None] - xs[None, :] + window[1] - 1
    return dy * (2 * window[1] - 1) + dx


def shift_region_labels(
    resolution: tuple[int, int], window: tuple[int, int], shift: tuple[int, int]
) -> torch.Tensor:
    """Region id of each position of the (padded) shifted map: tokens of different regions must not attend."""
    hp = math.ceil(resolution[0] / window[0]) * window[0]
    wp = math.ceil(resolution[1] / window[1]) * window[1]
    labels = torch.zeros(hp, wp)
    region = 0
    for hs in (slice(0, -window[0]), slice(-window[0], -shift[0]), slice(-shift[0], None)):
        for ws in (slice(0, -window[1]), slice(-window[1], -shift[1]), slice(-shift[1], None)):
            labels[hs, ws] = region
            region += 1
    return labels


def window_partition(x: torch.Tensor, window: tuple[int, int]) -> torch.Tensor:
    """(B, H, W, C) -> (B * nW, Wh * Ww, C); H and W must be multiples of the window."""
    b, h, w, c = x.shape
    x = x.view(b, h // window[0], window[0], w // window[1], window[1], c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window[0] * window[1], c)


def window_merge(windows: torch.Tensor, window: tuple[int, int], size: tuple[int, int]) -> torch.Tensor:
    """Inverse of ``window_partition``: (B * nW, Wh * Ww, C) -> (B, H, W, C)."""
    h, w = size
    c = windows.shape[-1]
    x = windows.view(-1, h // window[0], w // window[1], window[0], window[1], c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, h, w, c)


def shift_window_labels(
    resolution: tuple[int, int], window: tuple[int, int], shift: tuple[int, int]
) -> torch.Tensor:
    """[nW, N] region id of every token of every (shifted, padded) window."""
    labels = shift_region_labels(resolution, window, shift)
    return window_partition(labels[None, :, :, None], window).squeeze(-1)


def labels_to_mask(labels: torch.Tensor) -> torch.Tensor:
    """[nW, N] region ids -> [nW, N, N] additive mask: -100 between tokens of different regions, else 0."""
    differs = labels[:, None, :] != labels[:, :, None]
    return torch.zeros(differs.shape).masked_fill(differs, SHIFT_MASK_VALUE)


def shift_attention_mask(
    resolution: tuple[int, int], window: tuple[int, int], shift: tuple[int, int]
) -> torch.Tensor | None:
    """[nW, N, N] additive mask (0 or -100) for the shifted windows, None without a shift."""
    if not any(shift):
        return None
    return labels_to_mask(shift_window_labels(resolution, window, shift))


# -- building blocks -------------------------------------------------------------------------------
class DropPath(nn.Module):
    """Stochastic depth: drops the whole residual branch per sample while training."""

    def __init__(self, prob: float = 0.0) -> None:
        super().__init__()
        self.prob = prob

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.prob == 0.0:
            return x
        keep = 1.0 - self.prob
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"prob={self.prob}"


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class WindowAttention(nn.Module):
    """Scaled cosine attention inside windows, with the log-spaced continuous position bias."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        window: tuple[int, int],
        cpb_normaliser: tuple[int, int],
        qkv_bias: bool = True,
        chunk_windows: int | None = None,
    ) -> None:
        super().__init__()
        self.dim = dim
        self.num_heads = num_heads
        self.window = window
        self.cpb_normaliser = cpb_normaliser
        self.chunk_windows = chunk_windows
        self.logit_scale = nn.Parameter(torch.full((num_heads, 1, 1), math.log(10.0)))
        self.cpb_mlp = nn.Sequential(
            nn.Linear(2, CPB_HIDDEN), nn.ReLU(inplace=True), nn.Linear(CPB_HIDDEN, num_heads, bias=False)
        )
        self.qkv = nn.Linear(dim, dim * 3, bias=False)
        if qkv_bias:
            self.q_bias = nn.Parameter(torch.zeros(dim))
            self.v_bias = nn.Parameter(torch.zeros(dim))
        else:
            self.q_bias = self.v_bias = None
        self.proj = nn.Linear(dim, dim)
        self.register_buffer("relative_coords_table", log_spaced_coords(window, cpb_normaliser), persistent=False)
        self.register_buffer("relative_position_index", relative_position_index(window), persistent=False)

    def qkv_bias(self) -> torch.Tensor | None:
        """Bias of the fused qkv projection: k has none (``cat(q_bias, 0, v_bias)``)."""
        if self.q_bias is None:
            return None
        return torch.cat((self.q_bias, torch.zeros_like(self.q_bias), self.v_bias))

    def position_bias(self) -> torch.Tensor:
        """[heads, N, N] bias: ``16 * sigmoid(CPB(coords))`` gathered for every query/key pair."""
        table = self.cpb_mlp(self.relative_coords_table)  # [(2Wh-1)(2Ww-1), heads]
        n = self.window[0] * self.window[1]
        bias = table[self.relative_position_index.view(-1)].view(n, n, self.num_heads)
        return 16.0 * torch.sigmoid(bias.permute(2, 0, 1))

    def logit_scale_value(self) -> torch.Tensor:
        return torch.clamp(self.logit_scale, max=LOGIT_SCALE_MAX).exp()

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B * nW, N, C) windows of B images; mask: (nW, N, N) or None."""
        bias = self.position_bias()
        scale = self.logit_scale_value()
        if self.chunk_windows is None:
            return self._attend(x, bias, scale, mask)
        # Sequential self-attention: a bounded number of windows per step bounds the N x N memory.
        num_windows = 1 if mask is None else mask.shape[0]
        b = x.shape[0] // num_windows
        per_image = x.view(b, num_windows, *x.shape[1:])
        if mask is None:  # windows are independent: chunk over all of them
            chunks = [self._attend(c, bias, scale, None) for c in x.split(self.chunk_windows)]
            return torch.cat(chunks)
        outs = []
        for start in range(0, num_windows, self.chunk_windows):
            part = per_image[:, start:start + self.chunk_windows]
            k = part.shape[1]
            out = self._attend(part.reshape(b * k, *x.shape[1:]), bias, scale, mask[start:start + k])
            outs.append(out.view(b, k, *x.shape[1:]))
        return torch.cat(outs, dim=1).view_as(x)

    def _attend(
        self, x: torch.Tensor, bias: torch.Tensor, scale: torch.Tensor, mask: torch.Tensor | None
    ) -> torch.Tensor:
        bw, n, c = x.shape
        qkv = F.linear(x, self.qkv.weight, self.qkv_bias())
        q, k, v = qkv.view(bw, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4).unbind(0)
        attn = F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).transpose(-2, -1)
        attn = attn * scale + bias
        if mask is not None:
            nw = mask.shape[0]
            attn = attn.view(bw // nw, nw, self.num_heads, n, n) + mask[None, :, None]
            attn = attn.view(bw, self.num_heads, n, n)
        attn = attn.softmax(dim=-1)
        out = (attn @ v).transpose(1, 2).reshape(bw, n, c)
        return self.proj(out)


class SwinV2Block(nn.Module):
    """(Shifted-)window attention and MLP, each a residual post-norm branch."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        resolution: tuple[int, int],
        window: tuple[int, int],
        shift: tuple[int, int],
        cpb_normaliser: tuple[int, int],
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_path: float = 0.0,
        main_norm: bool = False,
        chunk_windows: int | None = None,
    ) -> None:
        super().__init__()
        self.resolution = resolution
        self.window = window
        self.shift = shift
        self.attn = WindowAttention(dim, num_heads, window, cpb_normaliser, qkv_bias, chunk_windows)
        self.norm1 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.norm2 = nn.LayerNorm(dim)
        self.drop_path = DropPath(drop_path)
        self.main_norm = nn.LayerNorm(dim) if main_norm else None
        self.register_buffer("attn_mask", shift_attention_mask(resolution, window, shift), persistent=False)

    def _window_attention(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, c = x.shape
        if any(self.shift):
            x = torch.roll(x, shifts=(-self.shift[0], -self.shift[1]), dims=(1, 2))
        pad_h = -h % self.window[0]
        pad_w = -w % self.window[1]
        x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
        windows = self.attn(window_partition(x, self.window), self.attn_mask)
        x = window_merge(windows, self.window, (h + pad_h, w + pad_w))[:, :h, :w]
        if any(self.shift):
            x = torch.roll(x, shifts=self.shift, dims=(1, 2))
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.norm1(self._window_attention(x)))
        x = x + self.drop_path(self.norm2(self.mlp(x)))
        if self.main_norm is not None:
            x = self.main_norm(x)
        return x


class PatchMerging(nn.Module):
    """2x2 neighbours -> one token: concat (x00, x10, x01, x11), reduce 4C -> 2C, then LayerNorm."""

    def __init__(self, dim: int, out_dim: int) -> None:
        super().__init__()
        self.reduction = nn.Linear(4 * dim, out_dim, bias=False)
        self.norm = nn.LayerNorm(out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, c = x.shape
        x = F.pad(x, (0, 0, 0, w % 2, 0, h % 2))
        h, w = x.shape[1], x.shape[2]
        # channel order: (w parity, h parity, c), i.e. x[0::2,0::2], x[1::2,0::2], x[0::2,1::2], x[1::2,1::2]
        x = x.view(b, h // 2, 2, w // 2, 2, c).permute(0, 1, 3, 4, 2, 5).reshape(b, h // 2, w // 2, 4 * c)
        return self.norm(self.reduction(x))


class SwinV2Stage(nn.Module):
    """Optional patch merging (at the start, timm's layout) followed by ``depth`` blocks."""

    def __init__(self, cfg: SwinV2Config, index: int, drop_paths: list[float]) -> None:
        super().__init__()
        dim = cfg.stage_dims[index]
        self.downsample = PatchMerging(cfg.stage_dims[index - 1], dim) if index > 0 else nn.Identity()
        window = cfg.stage_windows[index]
        shift = cfg.stage_shifts[index]
        self.grad_checkpointing = False
        self.blocks = nn.ModuleList(
            SwinV2Block(
                dim=dim,
                num_heads=cfg.num_heads[index],
                resolution=cfg.stage_resolutions[index],
                window=window,
                shift=shift if j % 2 else (0, 0),
                cpb_normaliser=cfg.cpb_normalisers[index],
                mlp_ratio=cfg.mlp_ratio,
                qkv_bias=cfg.qkv_bias,
                drop_path=drop_paths[j],
                main_norm=cfg.extra_norm_period > 0 and (j + 1) % cfg.extra_norm_period == 0,
                chunk_windows=cfg.attn_chunk_windows,
            )
            for j in range(cfg.depths[index])
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.downsample(x)
        for block in self.blocks:
            if self.grad_checkpointing and self.training and torch.is_grad_enabled():
                x = torch.utils.checkpoint.checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        return x


class PatchEmbed(nn.Module):
    def __init__(self, patch_size: int, in_chans: int, dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, dim, kernel_size=patch_size, stride=patch_size)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(x).permute(0, 2, 3, 1))


class ClassifierHead(nn.Module):
    """Global average pool + linear (``head.fc``, as in timm)."""

    def __init__(self, dim: int, num_classes: int) -> None:
        super().__init__()
        self.fc = nn.Linear(dim, num_classes) if num_classes > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.mean(dim=(1, 2)))


class SwinV2(nn.Module):
    """SwinV2 image classifier: input (B, 3, H, W) at ``cfg.img_size``, output logits (B, classes)."""

    def __init__(self, cfg: SwinV2Config) -> None:
        super().__init__()
        self.cfg = cfg
        self.patch_embed = PatchEmbed(cfg.patch_size, cfg.in_chans, cfg.embed_dim)
        total = sum(cfg.depths)  # stochastic depth grows linearly with depth (plain floats: works on meta)
        rates = [cfg.drop_path_rate * i / max(total - 1, 1) for i in range(total)]
        starts = [sum(cfg.depths[:i]) for i in range(cfg.num_stages)]
        self.layers = nn.Sequential(
            *(SwinV2Stage(cfg, i, rates[s:s + d]) for i, (s, d) in enumerate(zip(starts, cfg.depths)))
        )
        self.norm = nn.LayerNorm(cfg.num_features)
        self.head = ClassifierHead(cfg.num_features, cfg.num_classes)
        self.apply(_init_weights)
        for module in self.modules():  # residual post-norm: module-specific init, after the generic one
            if isinstance(module, WindowAttention):
                nn.init.constant_(module.logit_scale, math.log(10.0))

    @property
    def num_classes(self) -> int:
        return self.cfg.num_classes

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        expected = self.cfg.img_size
        if tuple(x.shape[-2:]) != expected:
            raise ValueError(
                f"input is {tuple(x.shape[-2:])}, this model runs at {expected}: resize the image or build the "
                f"model with img_size={tuple(x.shape[-2:])}"
            )
        return self.norm(self.layers(self.patch_embed(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x))

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        for stage in self.layers:
            stage.grad_checkpointing = enable

    def no_weight_decay_names(self) -> set[str]:
        """Parameters AdamW should not decay: norms, biases, logit scales and the CPB meta-network."""
        names = set()
        for name, param in self.named_parameters():
            if param.ndim <= 1 or "logit_scale" in name or "cpb_mlp" in name or name.endswith("_bias"):
                names.add(name)
        return names

    def reset_classifier(self, num_classes: int, labels: tuple[str, ...] | None = None) -> None:
        self.cfg = self.cfg.replace(num_classes=num_classes, labels=labels)
        self.head = ClassifierHead(self.cfg.num_features, num_classes)
        self.head.apply(_init_weights)


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def create_model(
    name: str | SwinV2Config,
    *,
    img_size: int | tuple[int, int] | None = None,
    window_size: int | tuple[int, ...] | None = None,
    pretrained_window_sizes: int | tuple[int, ...] | None = None,
    num_classes: int | None = None,
    attn_chunk_windows: int | None = None,
    pretrained: bool | str = False,
    **overrides: Any,
) -> SwinV2:
    """Build a SwinV2 by timm name (or from a config), optionally at a new resolution / window size.

    A new ``window_size`` or ``img_size`` keeps the named config's trained window sizes as the CPB
    normaliser unless ``pretrained_window_sizes`` says otherwise (log-spaced CPB transfer).
    ``pretrained``: True, ``"TAG"`` or ``"TAG@REVISION"`` loads the published weights (``hub.load_pretrained``);
    they fit any resolution/window, and another ``num_classes`` keeps a fresh head.
    """
    cfg = resolve_config(
        name,
        img_size=img_size,
        window_size=window_size,
        pretrained_window_sizes=pretrained_window_sizes,
        num_classes=num_classes,
        attn_chunk_windows=attn_chunk_windows,
        **overrides,
    )
    weights = fetch_pretrained(cfg.name, pretrained) if pretrained else None  # before building: fail fast
    model = SwinV2(cfg)
    if weights is not None:
        load_pretrained(model, weights)
    return model
