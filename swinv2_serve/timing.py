"""Wall-clock timing of callables side by side: the one timing loop that ``bench``, ``quantize`` and ``optimize`` share.

Runners are called round-robin, the starting runner rotated every round, so machine noise (another process,
frequency changes) hits each number and its peers alike; speed is compared within one run, never asserted.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

RunnerKey = tuple[str, str, str]  # (backend, implementation, precision)


@dataclass
class Runner:
    """A callable under test: float32 [B, 3, H, W] -> logits [B, C]."""

    backend: str
    impl: str  # "ours" or a peer ("timm")
    precision: str
    call: Callable[[np.ndarray], np.ndarray]
    close: Callable[[], None] = lambda: None

    @property
    def key(self) -> RunnerKey:
        return (self.backend, self.impl, self.precision)


@dataclass
class Samples:
    times_ms: dict[RunnerKey, list[float]]
    first_output: dict[RunnerKey, np.ndarray]  # each runner's first warm-up output (for fidelity columns)


def measure(runners: Sequence[Runner], x: np.ndarray, *, warmup: int = 2, iters: int | None = None,
            min_iters: int = 10, min_time: float = 2.0, max_time: float = 60.0, cooldown_s: float = 0.0) -> Samples:
    """Round-robin over ``runners``: warm-up rounds, then timed rounds.

    Timed rounds run exactly ``iters`` times, or (``iters=None``) until every runner has ``min_iters`` samples
    and ``min_time`` seconds have passed, stopping after ``max_time`` (never under 3 samples). ``cooldown_s``
    sleeps, untimed, before each call, so the spinning worker threads of the previous runner (ONNX Runtime,
    OpenMP) have gone to sleep and do not steal cores from the next one.
    """
    first = {r.key: r.call(x) for r in runners}  # also the first warm-up call
    for _ in range(max(0, warmup - 1)):
        for r in runners:
            r.call(x)
    times: dict[RunnerKey, list[float]] = {r.key: [] for r in runners}
    start = time.perf_counter()
    rounds = 0
    while True:
        shift = rounds % len(runners)
        for r in [*runners[shift:], *runners[:shift]]:
            if cooldown_s:
                time.sleep(cooldown_s)
            t0 = time.perf_counter()
            r.call(x)
            times[r.key].append((time.perf_counter() - t0) * 1000.0)
        rounds += 1
        elapsed = time.perf_counter() - start
        if iters is not None:
            if rounds >= iters:
                break
        elif (rounds >= min_iters and elapsed >= min_time) or (rounds >= 3 and elapsed >= max_time):
            break
    return Samples(times, first)


def summarise(times_ms: Sequence[float], batch: int) -> dict[str, Any]:
    """p50/p90/p99/mean/min/max in ms and images/s (batch / mean latency) of one runner's samples."""
    arr = np.asarray(times_ms, dtype=np.float64)
    p50, p90, p99 = np.percentile(arr, [50, 90, 99])
    mean = float(arr.mean())
    return {"iters": len(arr), "p50_ms": round(float(p50), 3), "p90_ms": round(float(p90), 3),
            "p99_ms": round(float(p99), 3), "mean_ms": round(mean, 3), "min_ms": round(float(arr.min()), 3),
            "max_ms": round(float(arr.max()), 3), "images_per_s": round(batch * 1000.0 / mean, 3)}
