"""The digits demo: a real end-to-end training run with no downloads.

scikit-learn ships 1797 8x8 grey digit images. Each is scaled to 0..255, upsampled (bicubic) to the
``swinv2_nano_window4_64`` preset's 64x64 and made RGB; a stratified 80/20 split (seeded) gives 1437
training and 360 validation images, held in memory. Validation goes through the package's
``Preprocess`` like any served image. Five validation images per class are also written as PNG files to
``OUTPUT/holdout/<digit>/`` so a later demo can classify real files through the server.

Recipe (tuned for 2 CPU cores): AdamW lr 2e-3, weight decay 0.05, batch 64, 1 warmup epoch, cosine,
label smoothing 0.1, mild random resized crop (scale 0.6-1) and no flip (digits are not mirror-symmetric).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..model import create_model
from . import distributed as D
from .finetune import TrainConfig, configure_threads, fit

MODEL = "swinv2_nano_window4_64"
DEFAULT_EPOCHS = 15
HOLDOUT_PER_CLASS = 5
LABELS = tuple(str(d) for d in range(10))


def digit_images(size: int = 64) -> tuple[list[np.ndarray], np.ndarray]:
    """scikit-learn's digits as ``size`` x ``size`` RGB uint8 arrays, and their labels."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = []
    for grey in digits.images:  # 8x8, values 0..16
        small = Image.fromarray(np.round(grey * (255.0 / 16.0)).astype(np.uint8), mode="L")
        images.append(np.asarray(small.resize((size, size), Image.Resampling.BICUBIC).convert("RGB")))
    return images, digits.target.astype(np.int64)


def split_digits(seed: int = 0, size: int = 64, val_fraction: float = 0.2) -> tuple[
    list[tuple[np.ndarray, int]], list[tuple[np.ndarray, int]]
]:
    from sklearn.model_selection import train_test_split

    images, labels = digit_images(size)
    idx_train, idx_val = train_test_split(np.arange(len(labels)), test_size=val_fraction, stratify=labels,
                                          random_state=seed)
    return ([(images[i], int(labels[i])) for i in idx_train], [(images[i], int(labels[i])) for i in idx_val])


def write_holdout(val: list[tuple[np.ndarray, int]], folder: Path, per_class: int = HOLDOUT_PER_CLASS) -> int:
    """The first ``per_class`` validation images of each digit as ``folder/<digit>/<n>.png``."""
    counts: dict[int, int] = {}
    for array, label in val:
        n = counts.get(label, 0)
        if n >= per_class:
            continue
        target = folder / LABELS[label]
        target.mkdir(parents=True, exist_ok=True)
        Image.fromarray(array).save(target / f"{n}.png")
        counts[label] = n + 1
    return sum(counts.values())


def demo_config(output: str | Path, epochs: int | None = None, progress: bool = True) -> TrainConfig:
    return TrainConfig(
        output=Path(output),
        model=MODEL,
        epochs=epochs or DEFAULT_EPOCHS,
        batch_size=64,
        lr=2e-3,
        weight_decay=0.05,
        warmup_epochs=1.0,
        label_smoothing=0.1,
        clip_grad=5.0,
        drop_path=0.0,
        crop_scale=(0.6, 1.0),
        hflip=0.0,
        workers=0,
        progress=progress,
    )


def run_digits_demo(output: str | Path, *, epochs: int | None = None, progress: bool = True,
                    seed: int = 0) -> dict[str, Any]:
    """Train the nano SwinV2 on scikit-learn's digits; writes ``output``/{checkpoint.pt, metrics.json, holdout/}.

    Returns the metrics (``val_top1``, ``total_s`` ...).
    """
    began = time.perf_counter()
    cfg = demo_config(output, epochs, progress)
    cfg.seed = seed
    info = D.DistInfo()  # the demo is a single process
    configure_threads(cfg, info)
    torch.manual_seed(seed)
    train, val = split_digits(seed)
    cfg.output.mkdir(parents=True, exist_ok=True)
    n_holdout = write_holdout(val, cfg.output / "holdout")
    cfg.extra_metrics = {"demo": "digits", "model": MODEL, "train_images": len(train), "val_images_total": len(val),
                         "holdout_images": n_holdout, "threads": torch.get_num_threads(),
                         "cpu_count": os.cpu_count()}
    model = create_model(MODEL, num_classes=len(LABELS), drop_path_rate=cfg.drop_path)
    _, metrics = fit(model, train, val, LABELS, cfg, info)
    metrics["total_s"] = round(time.perf_counter() - began, 2)
    (cfg.output / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics
