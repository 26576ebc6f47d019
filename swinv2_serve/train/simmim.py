"""SimMIM masked-image pretraining around an unchanged ``SwinV2``.

The wrapper runs the encoder's own parts: ``patch_embed`` -> replace masked tokens by a learnable mask
token -> ``layers`` -> ``norm``; a 1x1 convolution to ``stride**2 * 3`` channels and a pixel shuffle
reconstruct the input; the loss is L1 on the masked pixels only (optionally against locally normalised
pixels). The checkpoint written is the encoder alone (``num_classes=0``), so fine-tuning loads it with
``--new-head`` (``load_checkpoint(model, path, new_head=True)``).

Mask patch size: the paper masks 32x32 patches of 192px images (a 6x6 grid). At 32px a 64px image has a
2x2 grid, where a 0.6 ratio can only mask 2 or 3 of 4 quarters, so below 192px the default is
``img_size / 8`` rounded down to a multiple of the patch size (8px for the nano model: an 8x8 grid).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

from ..checkpoint import load_checkpoint, save_checkpoint
from ..errors import SwinV2ServeError
from ..model import SwinV2, create_model
from ..preprocess import image_files
from . import distributed as D
from .data import DatasetError, ImageDataset, TrainTransform, collate_skipping
from .finetune import TrainConfig, accumulate_and_step, default_workers, optimizer_state, training_process
from .optim import build_optimizer, cosine_schedule
from .resume import restore_training_state, save_training_state


@dataclass
class SimMIMConfig:
    mask_ratio: float = 0.6
    mask_patch_size: int | None = None  # None: 32 at >= 192px, else img/8 (see the module docstring)
    norm_target: bool = False
    norm_target_patch: int | None = None  # odd window of the local normalisation; None: ~img/4 (47 at 192)

    def resolve(self, model: SwinV2) -> SimMIMConfig:
        patch = model.cfg.patch_size
        img = min(model.cfg.img_size)
        size = self.mask_patch_size
        if size is None:
            size = 32 if img >= 192 else max(patch, (img // 8) // patch * patch)
        h, w = model.cfg.img_size
        if size % patch or h % size or w % size:
            raise SwinV2ServeError(
                f"mask patch size {size} must be a multiple of the patch size {patch} and divide the image {h}x{w}"
            )
        if not 0.0 < self.mask_ratio < 1.0:
            raise SwinV2ServeError(f"--mask-ratio must be in (0, 1), got {self.mask_ratio}")
        norm_patch = self.norm_target_patch or (img // 4) | 1
        return SimMIMConfig(self.mask_ratio, size, self.norm_target, norm_patch)


def random_masks(batch: int, grid: tuple[int, int], ratio: float, gen: torch.Generator) -> torch.Tensor:
    """[B, gh, gw] bool: exactly ``round(ratio * gh * gw)`` masked cells per image."""
    cells = grid[0] * grid[1]
    count = round(ratio * cells)
    order = torch.rand(batch, cells, generator=gen).argsort(dim=1)
    mask = torch.zeros(batch, cells, dtype=torch.bool)
    mask.scatter_(1, order[:, :count], True)
    return mask.view(batch, *grid)


def local_normalise(x: torch.Tensor, window: int) -> torch.Tensor:
    """Each pixel minus the mean over a ``window`` neighbourhood, divided by its std (SimMIM's norm target)."""
    pad = window // 2
    mean = F.avg_pool2d(x, window, stride=1, padding=pad, count_include_pad=False)
    sq = F.avg_pool2d(x * x, window, stride=1, padding=pad, count_include_pad=False)
    var = (sq - mean * mean).clamp_min(0.0)
    return (x - mean) / (var + 1e-6).sqrt()


class SimMIM(nn.Module):
    """Encoder + mask token + linear (1x1 conv) pixel-shuffle decoder; ``forward`` returns the loss."""

    def __init__(self, encoder: SwinV2, cfg: SimMIMConfig) -> None:
        super().__init__()
        self.encoder = encoder
        self.cfg = cfg.resolve(encoder)
        mc = encoder.cfg
        self.stride = mc.patch_size * 2 ** (mc.num_stages - 1)
        self.mask_token = nn.Parameter(torch.zeros(mc.embed_dim))
        nn.init.trunc_normal_(self.mask_token, std=0.02)
        self.decoder = nn.Sequential(nn.Conv2d(mc.num_features, self.stride**2 * 3, kernel_size=1),
                                     nn.PixelShuffle(self.stride))

    @property
    def mask_grid(self) -> tuple[int, int]:
        h, w = self.encoder.cfg.img_size
        return (h // self.cfg.mask_patch_size, w // self.cfg.mask_patch_size)

    def reconstruct(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """x [B,3,H,W], mask [B,gh,gw] (True = hidden) -> reconstruction [B,3,H,W]."""
        tokens_per_cell = self.cfg.mask_patch_size // self.encoder.cfg.patch_size
        token_mask = mask.repeat_interleave(tokens_per_cell, 1).repeat_interleave(tokens_per_cell, 2)
        z = self.encoder.patch_embed(x)  # B, Hp, Wp, C
        w = token_mask[..., None].to(z.dtype)
        z = z * (1.0 - w) + self.mask_token.to(z.dtype) * w
        z = self.encoder.norm(self.encoder.layers(z))  # B, h, w, F
        return self.decoder(z.permute(0, 3, 1, 2))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        rec = self.reconstruct(x, mask).float()
        target = local_normalise(x.float(), self.cfg.norm_target_patch) if self.cfg.norm_target else x.float()
        p = self.cfg.mask_patch_size
        pixel_mask = mask.repeat_interleave(p, 1).repeat_interleave(p, 2)[:, None].to(rec.dtype)
        l1 = (rec - target).abs() * pixel_mask
        return l1.sum() / (pixel_mask.sum() * rec.shape[1] + 1e-5)


def scan_images(root: str | Path) -> list[tuple[Path, int]]:
    """Every image under ``root`` (class folders or not; labels are not used)."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"data directory {root} does not exist")
    files = image_files(root)
    if not files:
        raise DatasetError(f"no images found under {root}")
    return [(p, 0) for p in files]


def build_encoder(cfg: TrainConfig) -> SwinV2:
    if not cfg.model:
        raise SwinV2ServeError("--simmim needs --model NAME (the encoder to pretrain)")
    overrides: dict[str, Any] = {"num_classes": 0}
    if cfg.img_size:
        overrides["img_size"] = cfg.img_size
    if cfg.drop_path is not None:
        overrides["drop_path_rate"] = cfg.drop_path
    model = create_model(cfg.model, **overrides)
    if cfg.checkpoint:  # continue pretraining from any layout; a classifier head there is dropped
        load_checkpoint(model, cfg.checkpoint, new_head=True)
    return model


def pretrain(
    encoder: SwinV2, samples: list, cfg: TrainConfig, scfg: SimMIMConfig, info: D.DistInfo
) -> tuple[SimMIM, dict[str, Any]]:
    """The SimMIM loop; writes ``checkpoint.pt`` (encoder only), ``metrics.json(l)`` and ``last.pt``."""
    out = cfg.output
    if info.is_main:
        out.mkdir(parents=True, exist_ok=True)
        if not cfg.resume:
            (out / "metrics.jsonl").unlink(missing_ok=True)
    net = SimMIM(encoder, scfg).to(info.device)
    encoder.set_grad_checkpointing(cfg.grad_checkpointing)
    transform = TrainTransform.from_config(encoder.cfg, scale=(0.67, 1.0), hflip=cfg.hflip)
    dataset = ImageDataset(samples, transform, seed=cfg.seed)
    sampler = DistributedSampler(dataset, num_replicas=info.world_size, rank=info.rank, shuffle=True, seed=cfg.seed)
    loader = DataLoader(dataset, batch_size=cfg.batch_size, sampler=sampler, collate_fn=collate_skipping,
                        num_workers=default_workers(cfg, info))
    extra = [("mask_token", net.mask_token), *(("decoder." + n, p) for n, p in net.decoder.named_parameters())]
    optimizer = build_optimizer(encoder, lr=cfg.lr, weight_decay=cfg.weight_decay, layer_decay=cfg.layer_decay,
                                zero=cfg.zero and info.enabled, extra_params=extra)
    steps = math.ceil(len(loader) / cfg.accum_steps)
    scheduler = cosine_schedule(optimizer, total_steps=cfg.epochs * steps,
                                warmup_steps=round(cfg.warmup_epochs * steps), min_lr_ratio=cfg.min_lr_ratio)
    scaler = torch.amp.GradScaler(info.device.type, enabled=cfg.amp == "fp16")
    start, history, skipped_total = 0, [], 0
    if cfg.resume:
        start, history, skipped_total = restore_training_state(out, net, optimizer, scheduler, scaler)
    model: nn.Module = DistributedDataParallel(net) if info.enabled else net
    began = time.perf_counter()
    last_epoch = cfg.epochs if cfg.stop_after_epoch is None else min(cfg.epochs, cfg.stop_after_epoch)
    for epoch in range(start, last_epoch):
        dataset.set_epoch(epoch)
        sampler.set_epoch(epoch)
        model.train()
        gen = torch.Generator().manual_seed(hash((cfg.seed, epoch, info.rank, 104729)) & 0x7FFF_FFFF_FFFF)
        t0, loss_sum, seen, skipped = time.perf_counter(), 0.0, 0, 0
        bar = tqdm(loader, desc=f"simmim {epoch + 1}/{cfg.epochs}", leave=False,
                   disable=not (cfg.progress and info.is_main))
        for i, batch in enumerate(bar):
            skipped += batch.skipped
            images, weight = batch.images, 1.0
            if len(batch) == 0:
                images, weight = torch.zeros(1, 3, *encoder.cfg.img_size), 0.0
            images = images.to(info.device)
            mask = random_masks(images.shape[0], net.mask_grid, net.cfg.mask_ratio, gen).to(info.device)
            last_micro = (i + 1) % cfg.accum_steps == 0 or i + 1 == len(loader)
            loss = accumulate_and_step(partial(model, images, mask), weight, model=model, optimizer=optimizer,
                                       scaler=scaler, scheduler=scheduler, cfg=cfg, info=info, last_micro=last_micro)
            loss_sum += float(loss.detach()) * len(batch)
            seen += len(batch)
            bar.set_postfix(loss=f"{loss_sum / max(seen, 1):.4f}")
        loss_sum, seen, skipped = D.all_reduce_sum([loss_sum, seen, skipped], info)
        skipped_total += int(skipped)
        record = {"epoch": epoch + 1, "train_loss": loss_sum / max(seen, 1), "lr": scheduler.get_last_lr()[-1],
                  "train_images": int(seen), "skipped_images": int(skipped),
                  "epoch_s": round(time.perf_counter() - t0, 3)}
        history.append(record)
        opt_state = optimizer_state(optimizer, info)
        if info.is_main:
            with open(out / "metrics.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")
            save_training_state(out, {"model": net.state_dict(), "optimizer": opt_state,
                                      "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
                                      "epoch": epoch + 1, "history": history, "skipped": skipped_total,
                                      "args": cfg.to_json()})
        D.barrier(info)
    metrics = {
        "train_loss": history[-1]["train_loss"] if history else None,
        "loss_curve": [h["train_loss"] for h in history],
        "epochs": len(history),
        "skipped_images": skipped_total,
        "train_s": round(time.perf_counter() - began, 2),
        "world_size": info.world_size,
        "simmim": asdict(net.cfg),
    }
    if info.is_main:
        save_checkpoint(encoder, out / "checkpoint.pt", train_args=cfg.to_json(),
                        extra={"simmim": asdict(net.cfg), "metrics": metrics})
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    D.barrier(info)
    return net, metrics


def run_simmim(cfg: TrainConfig, scfg: SimMIMConfig | None = None) -> dict[str, Any]:
    """Data directory (labels ignored) -> pretrained encoder checkpoint; returns the metrics."""
    if cfg.data is None:
        raise SwinV2ServeError("--simmim needs --data DIR")
    with training_process(cfg) as info:
        samples = scan_images(cfg.data)
        encoder = build_encoder(cfg)
        _, metrics = pretrain(encoder, samples, cfg, scfg or SimMIMConfig(), info)
        return metrics
