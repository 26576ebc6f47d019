"""Profiling the candidates that passed: batch-1 latency until it is stable, then a batch sweep.

Both are ``timing.measure`` (the package's one timing loop): every candidate is called round-robin, the
start rotated each round, with an untimed cooldown before each call, so noise from other processes hits all
of them alike. Latency is measured in windows of a few rounds; it is *stable* when, for every candidate, the
p50s of the last ``STABLE_WINDOWS`` windows lie within ``STABILITY`` of each other (perf_analyzer's rule),
and its percentiles are taken over those windows. If the time share runs out first, the percentiles are taken
over every window measured and the profile says it was not stable (on a shared machine other jobs come and go).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from ..timing import Runner, RunnerKey, measure, summarise

STABLE_WINDOWS = 3
STABILITY = 0.10  # max/min of the windows' p50s
WINDOW_ROUNDS = 10
MIN_WINDOWS = 2


@dataclass
class LatencyProfile:
    p50: float
    p90: float
    p99: float
    mean: float
    n: int
    windows: int  # windows measured in all
    window_p50s: list[float]  # of the last STABLE_WINDOWS windows
    stable: bool  # those agreed within STABILITY; else the percentiles are over every window

    def to_dict(self) -> dict[str, object]:
        return {"p50": self.p50, "p90": self.p90, "p99": self.p99, "mean": self.mean, "n": self.n,
                "windows": self.windows, "window_p50s": self.window_p50s, "stable": self.stable}


def spread(values: Sequence[float]) -> float:
    """max / min - 1 of positive values (0 for fewer than two)."""
    return max(values) / min(values) - 1.0 if len(values) > 1 else 0.0


def stable_latency(runners: Sequence[Runner], x: np.ndarray, *, budget_s: float, cooldown_s: float = 0.05,
                   window_rounds: int = WINDOW_ROUNDS, stable_windows: int = STABLE_WINDOWS,
                   stability: float = STABILITY, clock: Callable[[], float] = time.perf_counter,
                   on_window: Callable[[int, bool], None] | None = None) -> dict[RunnerKey, LatencyProfile]:
    """Latency of every runner on ``x``, in windows of ``window_rounds`` rounds until stable or out of time."""
    deadline = clock() + budget_s
    windows: list[dict[RunnerKey, list[float]]] = []
    stable = False
    while True:
        samples = measure(runners, x, warmup=2 if not windows else 1, iters=window_rounds, cooldown_s=cooldown_s)
        windows.append(samples.times_ms)
        recent = windows[-stable_windows:]
        stable = len(recent) == stable_windows and all(
            spread([float(np.median(w[r.key])) for w in recent]) <= stability for r in runners)
        if on_window is not None:
            on_window(len(windows), stable)
        if stable or (clock() >= deadline and len(windows) >= MIN_WINDOWS):
            break
    out = {}
    for r in runners:
        times = [t for w in (recent if stable else windows) for t in w[r.key]]
        stats = summarise(times, 1)
        out[r.key] = LatencyProfile(stats["p50_ms"], stats["p90_ms"], stats["p99_ms"], stats["mean_ms"], len(times),
                                    len(windows), [round(float(np.median(w[r.key])), 3) for w in recent], stable)
    return out


def batch_sweep(runners: Sequence[Runner], inputs: dict[int, np.ndarray], *, budget_s: float,
                cooldown_s: float = 0.05, on_batch: Callable[[int], None] | None = None
                ) -> dict[RunnerKey, dict[int, float]]:
    """Images/s (batch / mean latency) of every runner at every batch of ``inputs`` ({batch: x}); each batch
    gets an equal share of ``budget_s`` and at least 3 timed rounds."""
    curves: dict[RunnerKey, dict[int, float]] = {r.key: {} for r in runners}
    share = budget_s / max(1, len(inputs))
    for batch, x in inputs.items():
        if on_batch is not None:
            on_batch(batch)
        samples = measure(runners, x, warmup=1, min_iters=3, min_time=share / 2, max_time=share,
                          cooldown_s=cooldown_s)
        for r in runners:
            curves[r.key][batch] = summarise(samples.times_ms[r.key], batch)["images_per_s"]
    return curves


__all__ = ["LatencyProfile", "batch_sweep", "spread", "stable_latency"]
