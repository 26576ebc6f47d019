"""optimize's PNGs: batch-1 latency per candidate, and throughput against batch (matplotlib, the [bench] extra)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ..bench.plots import pyplot
from .choice import CHOSEN
from .search import ResolutionResult


def plot_latency(resolutions: Sequence[ResolutionResult], path: Path) -> Path:
    """Horizontal bars: p50 at batch 1 with a whisker to p99, per profiled candidate; the chosen one filled."""
    plt = pyplot()
    fig, axes = plt.subplots(1, len(resolutions), figsize=(6.5 * len(resolutions), 3.8), squeeze=False)
    for ax, res in zip(axes[0], resolutions):
        rows = [r for r in res.results if r.latency_ms is not None]
        names = [r.name for r in rows]
        p50 = [r.latency_ms["p50"] for r in rows]  # type: ignore[index]
        p99 = [r.latency_ms["p99"] - r.latency_ms["p50"] for r in rows]  # type: ignore[index]
        colors = ["tab:green" if r.verdict == CHOSEN else "tab:gray" for r in rows]
        ax.barh(names, p50, xerr=[[0] * len(rows), p99], color=colors, capsize=3)
        ax.invert_yaxis()
        ax.set_xlabel("batch-1 latency p50 (ms), whisker to p99")
        ax.set_title(f"{res.img_size} px: candidates that passed the fidelity gate")
        ax.grid(True, axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_throughput(resolutions: Sequence[ResolutionResult], path: Path) -> Path:
    """Images/s against batch, one line per profiled candidate (the chosen one thick)."""
    plt = pyplot()
    fig, axes = plt.subplots(1, len(resolutions), figsize=(6.0 * len(resolutions), 4.0), squeeze=False)
    for ax, res in zip(axes[0], resolutions):
        for r in res.results:
            curve = r.profile.get("throughput_img_s")
            if not curve:
                continue
            batches = sorted(int(b) for b in curve)
            ax.plot(batches, [curve[str(b)] for b in batches], "o-", markersize=4, label=r.name,
                    linewidth=3 if r.verdict == CHOSEN else 1.2)
        ax.set_xscale("log", base=2)
        batches = sorted({int(b) for r in res.results for b in r.profile.get("throughput_img_s", {})}) or [1]
        ax.set_xticks(batches, [str(b) for b in batches])
        ax.minorticks_off()
        ax.set_xlabel("batch")
        ax.set_ylabel("images / s")
        ax.set_title(f"{res.img_size} px: throughput")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
