"""The benchmark's export child: ``python -m swinv2_serve.bench.export_child JOB`` (internal).

A fresh interpreter per export, so its time and peak memory are its own. The parent (``exports.run_export``)
hands it the *resolved* target config (resolution and window already decided by ``resolve_config``) and the
weights; it builds the model at that geometry and exports it, ours through ``export_onnx`` and timm's
through ``torch.onnx.export``, then prints one JSON line.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from pathlib import Path
from typing import Any

import onnx
import torch

from ..config import SwinV2Config
from ..model import SwinV2
from ..onnx_export import export_onnx
from .peers import export_timm_standard
from .results import OURS


def _proc_status_bytes(field_name: str) -> int | None:
    """VmRSS / VmHWM of this process from /proc/self/status (per address space: not inherited over exec)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1]) * 1024  # kB
    return None


def _rss_now() -> int:
    rss = _proc_status_bytes("VmRSS")
    if rss is not None:
        return rss
    import psutil  # non-Linux fallback

    return int(psutil.Process().memory_info().rss)


def _peak_rss() -> int:
    """Peak RSS of this process image: VmHWM. ``ru_maxrss`` is not used on Linux because it carries the
    parent's RSS across fork + exec, so a child of a large benchmark process would report the parent's size."""
    peak = _proc_status_bytes("VmHWM")
    if peak is not None:
        return peak
    import resource

    scale = 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB elsewhere
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def export_child(job: dict[str, Any]) -> dict[str, Any]:
    """Runs in the fresh interpreter: build the model at the target geometry, export once, report time and memory."""
    torch.set_num_threads(job["threads"])
    cfg = SwinV2Config.from_dict(job["cfg"])
    state_dict = torch.load(job["weights"], map_location="cpu", weights_only=True)
    model = SwinV2(cfg)
    model.load_state_dict(state_dict)  # the CPB MLP's weights do not depend on the geometry
    model.eval()
    path = Path(job["path"])
    rss_before = _rss_now()
    start = time.perf_counter()
    if job["impl"] == OURS:
        export_onnx(model, path, verify=False)
    else:
        export_timm_standard(cfg, model.state_dict(), path)
    seconds = time.perf_counter() - start
    peak = _peak_rss()
    nodes = len(onnx.load(str(path), load_external_data=False).graph.node)
    return {"seconds": seconds, "peak_rss": peak, "rss_before": rss_before, "nodes": nodes,
            "size": path.stat().st_size}


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m swinv2_serve.bench.export_child JOB_JSON (internal; use `swinv2-serve bench`)")
    print(json.dumps(export_child(json.loads(sys.argv[1]))))
