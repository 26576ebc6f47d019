"""`swinv2-serve train`: fine-tune on an ImageFolder, SimMIM-pretrain (--simmim), or run the digits demo.

Runs alone or under ``torchrun --nproc-per-node N -m swinv2_serve train ...`` (DDP; --zero shards AdamW).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from ..errors import SwinV2ServeError
from ..train.digits import run_digits_demo
from ..train.finetune import TrainConfig, run_finetune
from ..train.simmim import SimMIMConfig, run_simmim
from ._pretrained import CHECKPOINT_HELP, add_pretrained_argument, checkpoint_source, weights_file


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", help="preset name (see `swinv2-serve models`)")
    parser.add_argument("--checkpoint", type=checkpoint_source, help=f"start from these weights: {CHECKPOINT_HELP}")
    add_pretrained_argument(parser)
    parser.add_argument("--new-head", action="store_true", help="train a fresh classifier (class count changed)")
    parser.add_argument("--data", type=Path, help="ImageFolder dir: DIR/<class>/*.jpg, or DIR/train + DIR/val")
    parser.add_argument("--output", type=Path, required=True, help="run dir: checkpoint.pt, metrics.json(l), last.pt")
    parser.add_argument("--demo", choices=["digits"], help="train the nano model on scikit-learn's digits")
    parser.add_argument("--simmim", action="store_true", help="SimMIM masked-image pretraining (labels unused)")
    g = parser.add_argument_group("optimisation")
    g.add_argument("--epochs", type=int, default=None, help="default 30 (digits demo: 15, SimMIM: 100)")
    g.add_argument("--batch-size", type=int, default=64, help="per process")
    g.add_argument("--lr", type=float, default=1e-3)
    g.add_argument("--weight-decay", type=float, default=0.05)
    g.add_argument("--warmup-epochs", type=float, default=1.0)
    g.add_argument("--layer-decay", type=float, default=1.0, help="layer-wise LR decay (e.g. 0.9 when fine-tuning)")
    g.add_argument("--label-smoothing", type=float, default=0.1)
    g.add_argument("--clip-grad", type=float, default=5.0, help="max grad norm; 0 disables")
    g.add_argument("--amp", choices=["off", "bf16", "fp16"], default="off")
    g.add_argument("--accum-steps", type=int, default=1, help="gradient accumulation micro-steps")
    g.add_argument("--grad-checkpointing", action="store_true", help="recompute block activations in backward")
    g.add_argument("--ema", type=float, default=None, metavar="DECAY", help="evaluate/save an EMA of the weights")
    g.add_argument("--zero", action="store_true", help="ZeroRedundancyOptimizer (under torchrun)")
    g.add_argument("--drop-path", type=float, default=None, help="stochastic depth rate (default: the preset's)")
    a = parser.add_argument_group("data")
    a.add_argument("--mixup", type=float, default=0.0, help="mixup alpha (0 = off)")
    a.add_argument("--cutmix", type=float, default=0.0, help="cutmix alpha (0 = off)")
    a.add_argument("--hflip", type=float, default=0.5, help="horizontal flip probability")
    a.add_argument("--img-size", type=int, default=None, help="train at another resolution")
    a.add_argument("--val-fraction", type=float, default=0.1, help="held out when DIR has no val/ folder")
    a.add_argument("--workers", type=int, default=None, help="loader processes (default: by core count)")
    a.add_argument("--threads", type=int, default=None, help="torch threads per process (default: idle cores)")
    s = parser.add_argument_group("SimMIM")
    s.add_argument("--mask-ratio", type=float, default=0.6)
    s.add_argument("--mask-patch-size", type=int, default=None, help="default 32 (img >= 192), else img/8")
    s.add_argument("--norm-target", action="store_true", help="reconstruct locally normalised pixels")
    r = parser.add_argument_group("run")
    r.add_argument("--resume", action="store_true", help="continue from OUTPUT/last.pt")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    r.add_argument("--no-progress", action="store_true")


def _config(args: argparse.Namespace):  # noqa: ANN202
    return TrainConfig(
        output=args.output, data=args.data, model=args.model, new_head=args.new_head,
        checkpoint=weights_file(args.model, args.checkpoint, args.pretrained),
        epochs=args.epochs or 30, batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay,
        warmup_epochs=args.warmup_epochs, layer_decay=args.layer_decay, label_smoothing=args.label_smoothing,
        clip_grad=args.clip_grad or None, amp=args.amp, accum_steps=args.accum_steps,
        grad_checkpointing=args.grad_checkpointing, ema=args.ema, mixup=args.mixup, cutmix=args.cutmix,
        img_size=args.img_size, drop_path=args.drop_path, hflip=args.hflip, val_fraction=args.val_fraction,
        workers=args.workers, threads=args.threads, resume=args.resume, seed=args.seed, zero=args.zero,
        device=args.device, progress=not args.no_progress,
    )


def run(args: argparse.Namespace) -> int:
    if args.demo == "digits":
        metrics = run_digits_demo(args.output, epochs=args.epochs, progress=not args.no_progress, seed=args.seed)
    elif args.simmim:
        if args.data is None:
            raise SwinV2ServeError("--simmim needs --data DIR (images in class sub-folders; labels are ignored)")
        cfg = _config(args)
        cfg.epochs = args.epochs or 100
        metrics = run_simmim(cfg, SimMIMConfig(mask_ratio=args.mask_ratio, mask_patch_size=args.mask_patch_size,
                                               norm_target=args.norm_target))
    else:
        metrics = run_finetune(_config(args))
    if os.environ.get("RANK", "0") == "0":  # under torchrun only the main rank reports
        print(json.dumps({k: v for k, v in metrics.items() if not isinstance(v, (list, dict))}, indent=2))
    return 0
