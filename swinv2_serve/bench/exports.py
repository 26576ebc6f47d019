"""Benchmark exports, each measured in its own interpreter (``export_child``)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from ..config import SwinV2Config
from .results import ExportRecord

CHILD = __name__.rpartition(".")[0] + ".export_child"


def run_export(impl: str, cfg: SwinV2Config, weights: Path, path: Path, threads: int) -> ExportRecord:
    """One export of ``cfg`` (already resolved) in a fresh interpreter."""
    job = {"impl": impl, "cfg": cfg.to_dict(), "weights": str(weights), "path": str(path), "threads": threads}
    record = ExportRecord(impl=impl, img_size=cfg.img_size[0], window_size=cfg.window_size[0], status="ok")
    proc = subprocess.run([sys.executable, "-m", CHILD, json.dumps(job)], capture_output=True, text=True)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        tail = " | ".join((proc.stderr or proc.stdout).strip().splitlines()[-3:])
        record.status, record.reason = "error", f"export child exited {proc.returncode}: {tail}"[:500]
        return record
    out = json.loads(lines[-1])
    record.seconds = round(out["seconds"], 2)
    record.peak_rss_mb = round(out["peak_rss"] / 2**20, 1)
    record.rss_increase_mb = round(max(0, out["peak_rss"] - out["rss_before"]) / 2**20, 1)
    record.nodes, record.size_mb = out["nodes"], round(out["size"] / 2**20, 1)
    return record
