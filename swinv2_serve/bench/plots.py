"""Plots of a sweep: latency against resolution, throughput against batch (matplotlib, the [bench] extra)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .results import TIMM, BenchResult


def pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_latency_vs_resolution(results: Sequence[BenchResult], path: Path) -> Path:
    """p50 latency (log y, bars to p90) against resolution: one line per backend, one panel per batch."""
    plt = pyplot()
    ok = [r for r in results if r.status == "ok" and r.p50_ms]
    batches = sorted({r.batch for r in ok}) or [1]
    fig, axes = plt.subplots(1, len(batches), figsize=(5.5 * len(batches), 4.2), squeeze=False)
    for ax, batch in zip(axes[0], batches):
        rows = [r for r in ok if r.batch == batch]
        for label in sorted({(r.label, r.precision) for r in rows}):
            line = sorted((r for r in rows if (r.label, r.precision) == label), key=lambda r: r.img_size)
            xs = [r.img_size for r in line]
            p50 = np.array([r.p50_ms for r in line])
            p90 = np.array([r.p90_ms for r in line])
            style = "--" if "[timm]" in label[0] else "-"
            ax.errorbar(xs, p50, yerr=[np.zeros_like(p50), p90 - p50], fmt="o" + style, capsize=3, markersize=4,
                        label=f"{label[0]} {label[1]}")
        ax.set_yscale("log")
        ax.set_xticks(sorted({r.img_size for r in rows}) or [0])
        ax.set_xlabel("image size (px)")
        ax.set_ylabel("latency p50 (ms, bar to p90)")
        ax.set_title(f"batch {batch}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    model = ok[0].model if ok else ""
    fig.suptitle(f"{model}: latency vs resolution")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_throughput_vs_batch(results: Sequence[BenchResult], path: Path) -> Path:
    """Images/s against batch: one panel per backend, one line per resolution (timm dashed)."""
    plt = pyplot()
    ok = [r for r in results if r.status == "ok" and r.images_per_s]
    backends = sorted({(r.backend, r.precision) for r in ok}) or [("none", "fp32")]
    cols = min(3, len(backends))
    rows_n = math.ceil(len(backends) / cols)
    fig, axes = plt.subplots(rows_n, cols, figsize=(4.8 * cols, 3.8 * rows_n), squeeze=False)
    for ax in axes.flat[len(backends):]:
        ax.set_visible(False)
    for ax, (backend, precision) in zip(axes.flat, backends):
        rows = [r for r in ok if r.backend == backend and r.precision == precision]
        for img, impl in sorted({(r.img_size, r.impl) for r in rows}):
            line = sorted((r for r in rows if (r.img_size, r.impl) == (img, impl)), key=lambda r: r.batch)
            ax.plot([r.batch for r in line], [r.images_per_s for r in line], "o" + ("--" if impl == TIMM else "-"),
                    markersize=4, label=f"{img}px" + (" [timm]" if impl == TIMM else ""))
        ax.set_xscale("log", base=2)
        ax.set_xticks(sorted({r.batch for r in rows}) or [1])
        ax.get_xaxis().set_major_formatter(plt.matplotlib.ticker.ScalarFormatter())
        ax.set_xlabel("batch")
        ax.set_ylabel("images / s")
        ax.set_title(f"{backend} {precision}")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("throughput vs batch")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
