"""Supervised fine-tuning: ImageFolder data in, ``checkpoint.pt`` + ``metrics.json`` out.

One loop serves a single process and ``torchrun`` (DDP, optionally ZeRO-sharded AdamW). Per optimizer
step: optional mixup/cutmix, autocast (bf16/fp16), loss / accum_steps backward (DDP's gradient sync only
on the last micro-step), unscale + clip, step, cosine LR, EMA. After every epoch: evaluation through the
package's ``Preprocess``, a line in ``metrics.jsonl`` and ``last.pt`` for ``--resume``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

from ..checkpoint import load_checkpoint, load_model, read_description, save_checkpoint
from ..errors import CheckpointError, SwinV2ServeError
from ..model import SwinV2, create_model
from ..preprocess import ImageLike, Preprocess
from . import distributed as D
from .data import ImageDataset, ShardSampler, TrainTransform, collate_skipping, load_splits
from .mixing import mix_batch, soft_cross_entropy
from .optim import ModelEma, build_optimizer, cosine_schedule
from .resume import restore_training_state, save_training_state

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class TrainConfig:
    """Everything a fine-tuning run needs; ``swinv2-serve train`` fills it from its flags."""

    output: Path
    data: Path | None = None
    model: str | None = None
    checkpoint: Path | None = None
    new_head: bool = False
    epochs: int = 30
    batch_size: int = 64  # per process
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_epochs: float = 1.0
    min_lr_ratio: float = 0.01
    layer_decay: float = 1.0
    label_smoothing: float = 0.1
    clip_grad: float | None = 5.0
    amp: str = "off"
    accum_steps: int = 1
    grad_checkpointing: bool = False
    ema: float | None = None
    mixup: float = 0.0
    cutmix: float = 0.0
    img_size: int | None = None
    drop_path: float | None = None
    crop_scale: tuple[float, float] = (0.08, 1.0)
    hflip: float = 0.5
    val_fraction: float = 0.1
    workers: int | None = None
    threads: int | None = None
    resume: bool = False
    seed: int = 0
    zero: bool = False
    device: str | None = None
    progress: bool = True
    stop_after_epoch: int | None = None  # end this run early (the schedule still spans ``epochs``)
    extra_metrics: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.output = Path(self.output)
        if self.amp not in ("off", *AMP_DTYPES):
            raise SwinV2ServeError(f"--amp must be off, bf16 or fp16, got {self.amp!r}")
        if self.epochs < 1 or self.batch_size < 1 or self.accum_steps < 1:
            raise SwinV2ServeError("--epochs, --batch-size and --accum-steps must be >= 1")

    def to_json(self) -> dict[str, Any]:
        return {k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(self).items()
                if k != "extra_metrics"}


# -- setup -------------------------------------------------------------------------------------------
def configure_threads(cfg: TrainConfig, info: D.DistInfo) -> int:
    """Share the cores between this machine's ranks, and leave busy cores alone.

    Intra-op threads that spin on a core another process is using slow a step down several-fold (seen
    here: 0.1 s -> 1-4 s per step with two threads on two loaded cores, 0.3 s with one), so unless
    ``--threads`` is given we use at most the cores the 1-minute load average leaves idle (at least one).
    """
    cores = os.cpu_count() or 1
    per_rank = max(1, cores // info.local_world_size)
    if cfg.threads:
        threads = cfg.threads
    else:
        idle = cores - os.getloadavg()[0] if hasattr(os, "getloadavg") else cores
        threads = max(1, min(per_rank, math.floor(idle / info.local_world_size + 0.5)))
    torch.set_num_threads(threads)
    return threads


def default_workers(cfg: TrainConfig, info: D.DistInfo) -> int:
    if cfg.workers is not None:
        return cfg.workers
    per_rank = (os.cpu_count() or 1) // info.local_world_size
    return 0 if per_rank <= 2 else min(4, per_rank - 1)


def build_model(cfg: TrainConfig, num_classes: int) -> SwinV2:
    """``--model`` (+ ``--checkpoint``) or a self-describing ``--checkpoint`` alone, with the data's class count."""
    overrides: dict[str, Any] = {}
    if cfg.img_size:
        overrides["img_size"] = cfg.img_size
    if cfg.drop_path is not None:
        overrides["drop_path_rate"] = cfg.drop_path
    if cfg.model:
        model = create_model(cfg.model, num_classes=num_classes, **overrides)
        if cfg.checkpoint:
            load_checkpoint(model, cfg.checkpoint, new_head=cfg.new_head)
        return model
    if not cfg.checkpoint:
        raise SwinV2ServeError("give --model NAME (see `swinv2-serve models`) or a --checkpoint to start from")
    saved_classes = int(read_description(cfg.checkpoint)["config"]["num_classes"])
    if saved_classes not in (0, num_classes) and not cfg.new_head:
        raise CheckpointError(
            f"{cfg.checkpoint} has {saved_classes} classes, the data has {num_classes}; pass --new-head to train "
            "a new classifier head"
        )
    model = load_model(cfg.checkpoint, num_classes=num_classes, **overrides)
    return model


# -- one epoch ---------------------------------------------------------------------------------------
@dataclass
class EpochStats:
    loss: float
    images: int
    skipped: int
    seconds: float


def train_one_epoch(
    model: torch.nn.Module,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler,
    cfg: TrainConfig,
    info: D.DistInfo,
    epoch: int,
    num_classes: int,
    img_size: tuple[int, int],
    ema: ModelEma | None = None,
) -> EpochStats:
    model.train()
    start = time.perf_counter()
    gen = torch.Generator().manual_seed(hash((cfg.seed, epoch, info.rank, 7919)) & 0x7FFF_FFFF_FFFF)
    loss_sum, seen, skipped = 0.0, 0, 0
    n = len(loader)
    bar = tqdm(loader, desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not (cfg.progress and info.is_main),
               leave=False, dynamic_ncols=True)
    for i, batch in enumerate(bar):
        skipped += batch.skipped
        weight = 1.0
        images, labels = batch.images, batch.labels
        if len(batch) == 0:  # every image of this batch was unreadable: a zero-weight step keeps ranks in step
            images = torch.zeros(1, 3, *img_size)
            labels = torch.zeros(1, dtype=torch.long)
            weight = 0.0
        images, labels = images.to(info.device, non_blocking=True), labels.to(info.device, non_blocking=True)
        images, targets = mix_batch(images, labels, num_classes, mixup=cfg.mixup, cutmix=cfg.cutmix,
                                    smoothing=cfg.label_smoothing, gen=gen)
        last_micro = (i + 1) % cfg.accum_steps == 0 or i + 1 == n
        loss = accumulate_and_step(partial(_classification_loss, model, images, targets), weight, model=model,
                                   optimizer=optimizer, scaler=scaler, scheduler=scheduler, cfg=cfg, info=info,
                                   last_micro=last_micro)
        if last_micro and ema is not None:
            ema.update(_unwrap(model))
        loss_sum += float(loss.detach()) * len(batch)
        seen += len(batch)
        bar.set_postfix(loss=f"{loss_sum / max(seen, 1):.4f}", lr=f"{scheduler.get_last_lr()[-1]:.2e}")
    loss_sum, seen, skipped = D.all_reduce_sum([loss_sum, seen, skipped], info)
    return EpochStats(loss_sum / max(seen, 1), int(seen), int(skipped), time.perf_counter() - start)


def _classification_loss(model: torch.nn.Module, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return soft_cross_entropy(model(images), targets)


def accumulate_and_step(compute_loss: Callable[[], torch.Tensor], weight: float, *, model: torch.nn.Module,
                        optimizer: Any, scaler: Any, scheduler: Any, cfg: Any, info: D.DistInfo,
                        last_micro: bool) -> torch.Tensor:
    """One micro-step: autocast forward, scaled backward (no DDP all-reduce until the last micro-step of an
    accumulation), then on the last one: unscale, clip, optimizer + scaler + schedule step.

    ``weight`` 0 makes a step that moves nothing but keeps DDP ranks in lockstep (an all-unreadable batch).
    Returns the weighted loss."""
    sync = contextlib.nullcontext() if last_micro or not info.enabled else model.no_sync()
    with sync:
        with torch.autocast(info.device.type, dtype=AMP_DTYPES.get(cfg.amp, torch.float32), enabled=cfg.amp != "off"):
            loss = compute_loss() * weight
        scaler.scale(loss / cfg.accum_steps).backward()
    if last_micro:
        if cfg.clip_grad:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_grad)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        scheduler.step()
    return loss


@torch.no_grad()
def evaluate(model: torch.nn.Module, loader: DataLoader, info: D.DistInfo, amp: str = "off") -> dict[str, float]:
    """Top-1 / top-5 / loss over this rank's shard, summed across ranks."""
    model.eval()
    correct1 = correct5 = loss_sum = 0.0
    seen = skipped = 0
    for batch in loader:
        skipped += batch.skipped
        if len(batch) == 0:
            continue
        images, labels = batch.images.to(info.device), batch.labels.to(info.device)
        with torch.autocast(info.device.type, dtype=AMP_DTYPES.get(amp, torch.float32), enabled=amp != "off"):
            logits = model(images).float()
        loss_sum += float(F.cross_entropy(logits, labels, reduction="sum"))
        top = logits.topk(min(5, logits.shape[1]), dim=1).indices
        correct1 += float((top[:, 0] == labels).sum())
        correct5 += float((top == labels[:, None]).any(dim=1).sum())
        seen += len(batch)
    correct1, correct5, loss_sum, seen, skipped = D.all_reduce_sum([correct1, correct5, loss_sum, seen, skipped], info)
    seen = max(seen, 1)
    return {"val_top1": correct1 / seen, "val_top5": correct5 / seen, "val_loss": loss_sum / seen,
            "val_images": int(seen), "val_skipped": int(skipped)}


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if isinstance(model, DistributedDataParallel) else model


def optimizer_state(optimizer: torch.optim.Optimizer, info: D.DistInfo) -> dict[str, Any] | None:
    """The full optimizer state on the main rank (ZeRO gathers its shards there first)."""
    from torch.distributed.optim import ZeroRedundancyOptimizer

    if isinstance(optimizer, ZeroRedundancyOptimizer):
        optimizer.consolidate_state_dict(to=0)
    return optimizer.state_dict() if info.is_main else None


# -- the run -----------------------------------------------------------------------------------------
def fit(
    model: SwinV2,
    train_samples: list[tuple[ImageLike, int]],
    val_samples: list[tuple[ImageLike, int]],
    labels: tuple[str, ...],
    cfg: TrainConfig,
    info: D.DistInfo,
) -> tuple[SwinV2, dict[str, Any]]:
    """Train ``model`` and write ``cfg.output``/{metrics.jsonl, last.pt, checkpoint.pt, metrics.json}."""
    out = cfg.output
    if info.is_main:
        out.mkdir(parents=True, exist_ok=True)
        if not cfg.resume:  # a fresh run starts a fresh log
            (out / "metrics.jsonl").unlink(missing_ok=True)
    model.to(info.device)
    model.set_grad_checkpointing(cfg.grad_checkpointing)
    workers = default_workers(cfg, info)
    train_ds = ImageDataset(train_samples, TrainTransform.from_config(model.cfg, scale=tuple(cfg.crop_scale),
                                                                     hflip=cfg.hflip), seed=cfg.seed)
    val_ds = ImageDataset(val_samples, Preprocess.from_config(model.cfg))
    sampler = DistributedSampler(train_ds, num_replicas=info.world_size, rank=info.rank, shuffle=True, seed=cfg.seed)
    common = dict(num_workers=workers, collate_fn=collate_skipping, pin_memory=info.device.type == "cuda")
    train_loader = DataLoader(train_ds, batch_size=cfg.batch_size, sampler=sampler, **common)
    val_loader = DataLoader(val_ds, batch_size=cfg.batch_size * 2,
                            sampler=ShardSampler(len(val_ds), info.rank, info.world_size), **common)

    optimizer = build_optimizer(model, lr=cfg.lr, weight_decay=cfg.weight_decay, layer_decay=cfg.layer_decay,
                                zero=cfg.zero and info.enabled)
    steps_per_epoch = math.ceil(len(train_loader) / cfg.accum_steps)
    scheduler = cosine_schedule(optimizer, total_steps=cfg.epochs * steps_per_epoch,
                                warmup_steps=round(cfg.warmup_epochs * steps_per_epoch),
                                min_lr_ratio=cfg.min_lr_ratio)
    scaler = torch.amp.GradScaler(info.device.type, enabled=cfg.amp == "fp16")
    ema = ModelEma(model, cfg.ema) if cfg.ema else None

    start_epoch, history, skipped_total = 0, [], 0
    if cfg.resume:
        start_epoch, history, skipped_total = restore_training_state(out, model, optimizer, scheduler, scaler, ema)
    net: torch.nn.Module = DistributedDataParallel(model) if info.enabled else model
    eval_model = ema.module if ema is not None else model
    began = time.perf_counter()
    record: dict[str, Any] = history[-1] if history else {}
    last_epoch = cfg.epochs if cfg.stop_after_epoch is None else min(cfg.epochs, cfg.stop_after_epoch)
    for epoch in range(start_epoch, last_epoch):
        train_ds.set_epoch(epoch)
        sampler.set_epoch(epoch)
        stats = train_one_epoch(net, train_loader, optimizer, scheduler, scaler, cfg, info, epoch, len(labels),
                                model.cfg.img_size, ema)
        val = evaluate(eval_model, val_loader, info, cfg.amp)
        skipped_total += stats.skipped
        record = {"epoch": epoch + 1, "train_loss": stats.loss, **val, "lr": scheduler.get_last_lr()[-1],
                  "train_images": stats.images, "skipped_images": stats.skipped, "epoch_s": round(stats.seconds, 3)}
        history.append(record)
        opt_state = optimizer_state(optimizer, info)
        if info.is_main:
            with open(out / "metrics.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")
            if cfg.progress:
                skipped_note = f", {stats.skipped} unreadable images skipped" if stats.skipped else ""
                tqdm.write(f"epoch {epoch + 1}/{cfg.epochs}: train_loss {stats.loss:.4f} val_top1 "
                           f"{val['val_top1']:.4f} val_loss {val['val_loss']:.4f}{skipped_note}")
            save_training_state(out, {
                "model": model.state_dict(), "optimizer": opt_state, "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict(), "epoch": epoch + 1, "history": history, "skipped": skipped_total,
                "args": cfg.to_json(), **({"ema": ema.state_dict()} if ema is not None else {}),
            })
        D.barrier(info)

    final = eval_model
    metrics = {
        **{k: v for k, v in record.items() if k.startswith("val_")},
        "epochs": len(history),
        "best_val_top1": max((h["val_top1"] for h in history), default=0.0),
        "skipped_images": skipped_total,
        "train_s": round(time.perf_counter() - began, 2),
        "world_size": info.world_size,
        "num_classes": len(labels),
        "weights": "ema" if ema is not None else "model",
        **cfg.extra_metrics,
    }
    if info.is_main:
        save_checkpoint(final, out / "checkpoint.pt", labels=list(labels), train_args=cfg.to_json(),
                        extra={"metrics": metrics})
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    D.barrier(info)
    return model, metrics


@contextlib.contextmanager
def training_process(cfg: TrainConfig) -> Iterator[D.DistInfo]:
    """This process's part of a (possibly torchrun) job: process group, threads, seed; torn down at the end."""
    info = D.init_distributed(cfg.device)
    try:
        configure_threads(cfg, info)
        torch.manual_seed(cfg.seed)
        yield info
    finally:
        D.cleanup()


def run_finetune(cfg: TrainConfig) -> dict[str, Any]:
    """Data directory -> trained checkpoint; returns the final metrics (also in ``output/metrics.json``)."""
    if cfg.data is None:
        raise SwinV2ServeError("--data DIR is required (one sub-folder per class), or use --demo digits")
    with training_process(cfg) as info:
        train_split, val_split = load_splits(cfg.data, val_fraction=cfg.val_fraction, seed=cfg.seed)
        model = build_model(cfg, len(train_split.classes))
        _, metrics = fit(model, train_split.samples, val_split.samples, train_split.classes, cfg, info)
        return metrics
