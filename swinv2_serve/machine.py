"""Facts about this machine that decide which path is fastest or even possible: CPU, its int8/bf16
instructions, cores, GPU, library versions. Recorded with every benchmark and quantization."""

from __future__ import annotations

import contextlib
import functools
import importlib.metadata
import os
import platform
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

LIBRARIES = ("torch", "onnxruntime", "openvino", "nncf", "onnx", "timm", "numpy", "nvidia-pytriton", "tritonclient",
             "tensorrt", "matplotlib", "psutil")
VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")


def cpu_flags(cpuinfo: str | os.PathLike = "/proc/cpuinfo") -> frozenset[str]:
    """The CPU's feature flags from /proc/cpuinfo (empty where it cannot be read: not Linux)."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return frozenset()
    return frozenset(next((line.split(":", 1)[1].split() for line in text.splitlines()
                           if line.startswith("flags")), []))


@functools.cache  # the CPU does not change under a running process
def cpu_has_vnni(cpuinfo: str | os.PathLike = "/proc/cpuinfo") -> bool:
    """Whether this CPU has an int8 dot-product instruction (AVX512-VNNI, AVX-VNNI or AMX-INT8).

    OpenVINO reports "INT8" either way; the difference matters because without VNNI the int8 kernels
    accumulate pairs of u8*s8 products in saturating int16 (``vpmaddubsw``), which needs NNCF's overflow fix.
    Where the flags cannot be read, the answer is False: the safe side.
    """
    return any(flag in cpu_flags(cpuinfo) for flag in VNNI_FLAGS)


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def usable_cores() -> int:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def gpu_names() -> str | None:
    """The NVIDIA GPUs torch (or nvidia-smi) sees, or None."""
    with contextlib.suppress(Exception):
        import torch

        if torch.cuda.is_available():
            return ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
    if shutil.which("nvidia-smi"):
        with contextlib.suppress(Exception):
            out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10).stdout
            return "; ".join(line.strip() for line in out.splitlines() if line.startswith("GPU ")) or None
    return None


def nvidia_driver_present() -> bool:
    """Whether an NVIDIA driver is loaded here (cheap: no CUDA library is initialised)."""
    return Path("/proc/driver/nvidia/gpus").is_dir() or shutil.which("nvidia-smi") is not None


def library_version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def machine_facts(threads: int) -> dict[str, Any]:
    """CPU, cores, memory, GPU (or None), load and library versions, recorded with every result."""
    flags = cpu_flags()
    facts: dict[str, Any] = {
        "cpu": cpu_model(),
        "cpu_flags": sorted(f for f in flags if f.startswith(("avx", "amx"))),
        "vnni": cpu_has_vnni(),
        "cores": os.cpu_count(),
        "cores_usable": usable_cores(),
        "threads": threads,
        "gpu": gpu_names(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "libraries": {name: library_version(name) for name in LIBRARIES},
        "tritonserver": None,  # filled in when a Triton mode starts the server
        "load_average_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    with contextlib.suppress(Exception):
        import psutil

        facts["memory_gb"] = round(psutil.virtual_memory().total / 2**30, 1)
    return facts
