"""``DIR/last.pt``: everything needed to continue a run exactly (not a model checkpoint for export).

Model and EMA weights, optimizer and scheduler state, the finished epoch, the RNG states and the
arguments, all as tensors / plain Python so ``torch.load(weights_only=True)`` reads it. The exported
model lives in ``DIR/checkpoint.pt`` (``swinv2_serve.checkpoint.save_checkpoint``).
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import CheckpointError

LAST = "last.pt"


def rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": list(random.getstate()[1]),
        "python_version": random.getstate()[0],
        "python_gauss": random.getstate()[2],
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "gauss": float(np_state[4])},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate((state["python_version"], tuple(state["python"]), state["python_gauss"]))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_training_state(output: Path, state: dict[str, Any]) -> Path:
    """Atomic write of ``output/last.pt`` (a crash mid-write never leaves a half file behind)."""
    path = Path(output) / LAST
    tmp = path.with_suffix(".pt.tmp")
    torch.save({**state, "rng": rng_state()}, tmp)
    os.replace(tmp, path)
    return path


def load_training_state(output: Path) -> dict[str, Any]:
    path = Path(output) / LAST
    if not path.is_file():
        raise CheckpointError(f"--resume: no {LAST} in {output}; start without --resume or point --output at the run")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the same user error
        raise CheckpointError(f"--resume: {path} is not a readable training state ({exc})") from None


def restore_training_state(out: Path, model: torch.nn.Module, optimizer: Any, scheduler: Any, scaler: Any,
                           ema: Any = None) -> tuple[int, list[dict[str, Any]], int]:
    """Resume from ``out/last.pt``: loads every stateful piece in place (and the RNGs).

    Returns (epochs done, metrics history, images skipped so far).
    """
    state = load_training_state(out)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    scaler.load_state_dict(state["scaler"])
    if ema is not None and "ema" in state:
        ema.load_state_dict(state["ema"])
    set_rng_state(state["rng"])
    return state["epoch"], state["history"], state["skipped"]
