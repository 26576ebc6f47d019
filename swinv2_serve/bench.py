"""Latency / throughput sweeps: resolutions x batches x backends x precisions, with timm as the peer.

``run_bench(BenchConfig(...)) -> BenchReport``; ``swinv2-serve bench`` is the CLI over it. Per resolution:

1. export our deploy-form ONNX (and, with ``compare=["timm"]``, timm's model the standard way:
   ``torch.onnx.export`` of ``timm.create_model`` on the same weights) in a fresh child process, which
   reports the export time and its peak RSS (``VmHWM`` of the child from /proc/self/status at the
   end, and that minus the child's RSS just before the export started);
2. build one runner per backend (torch deploy form, ONNX Runtime, OpenVINO CPU in fp32 / bf16, Triton
   over HTTP/gRPC through the embedded server and the package's ``Classifier``) plus the timm peers
   (timm's ONNX in ONNX Runtime with identical session options, timm's ONNX compiled by OpenVINO with
   the same compile properties and precision, timm eager in torch);
3. per batch and precision, call every runner in turn, round-robin (ours, timm, ours, timm ...), so
   machine noise hits each number and its peer alike; warm-up rounds first, then rounds until each
   runner has ``min_iters`` samples and ``min_time`` seconds have passed (or a fixed ``iters``).

Results are ``BenchResult`` rows (p50/p90/p99/mean latency, images/s, ratio ours/timm; reduced-precision
rows also their top-1 agreement and max relative logit error against fp32 of the same backend on the
same batch), ``ExportRecord`` rows, machine facts and the reasons for everything skipped (a backend not
installed, OpenVINO bf16 on a CPU without BF16: never fp32 timed under a bf16 label); written as
CSV + JSON + Markdown + PNG.
Nothing here asserts a speed: the numbers are recorded, not judged.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import importlib.metadata
import importlib.util
import json
import logging
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import SwinV2ServeError

log = logging.getLogger(__name__)

BACKENDS = ("torch", "onnxruntime", "openvino", "tensorrt", "triton-http", "triton-grpc")
PRECISIONS = ("fp32", "fp16", "bf16", "int8")
COMPARE = ("timm",)
OURS, TIMM = "ours", "timm"
TRITON_PROTOCOLS = {"triton-http": "http", "triton-grpc": "grpc"}
# precisions each backend can run on this code path (ONNX Runtime / Triton here run the fp32 export;
# OpenVINO compiles it with INFERENCE_PRECISION_HINT f32 or bf16, or runs an NNCF int8 quantization of it)
BACKEND_PRECISIONS = {
    "torch": ("fp32", "fp16", "bf16"),
    "onnxruntime": ("fp32",),
    "openvino": ("fp32", "bf16", "int8"),
    "tensorrt": ("fp32", "fp16"),
    "triton-http": ("fp32",),
    "triton-grpc": ("fp32",),
}
ONNX_BACKENDS = ("onnxruntime", "openvino", "tensorrt", *TRITON_PROTOCOLS)  # run our ONNX export
TIMM_ONNX_PEERS = ("onnxruntime", "openvino")  # their timm peer runs timm's standard ONNX export
TIMM_PEERS = ("torch", *TIMM_ONNX_PEERS)
LIBRARIES = ("torch", "onnxruntime", "openvino", "onnx", "timm", "numpy", "nvidia-pytriton", "tritonclient", "tensorrt",
             "matplotlib", "psutil")


# -- configuration and results ---------------------------------------------------------------------------
@dataclass
class BenchConfig:
    """What to sweep and how long to measure each cell."""

    model: str | None = None
    checkpoint: Path | None = None
    img_sizes: list[int] = field(default_factory=list)  # empty: the model's own resolution
    batches: list[int] = field(default_factory=lambda: [1])
    backends: list[str] = field(default_factory=lambda: ["torch", "onnxruntime"])
    precisions: list[str] = field(default_factory=lambda: ["fp32"])
    threads: int | None = None  # intra-op threads for torch and ONNX Runtime (default: all cores)
    warmup: int = 2  # rounds before timing
    iters: int | None = None  # fixed timed rounds; None: adaptive (min_iters and min_time)
    min_iters: int = 10
    min_time: float = 2.0  # seconds per (resolution, batch, precision) cell
    max_time: float = 60.0  # stop adding rounds after this (never below 3 samples)
    compare: list[str] = field(default_factory=list)  # ["timm"]
    compare_img_sizes: list[int] | None = None  # None: every resolution
    calibration: Path | None = None  # openvino int8: images to calibrate on (ours and timm's peer alike)
    max_pixels_per_batch: int | None = None  # batch*H*W above this is skipped (time budget)
    max_memory_gb: float | None = None  # estimated activation memory above this is skipped (default: half free RAM)
    output: Path = Path("bench_results")
    workdir: Path | None = None  # where exports go (kept); None: a temporary folder, removed at the end
    triton_queue_delay_us: int = 0  # dynamic batcher delay of the embedded server (0: latency, not batching)
    cooldown_ms: float = 50.0  # untimed pause before each call (lets the previous runner's threads stop spinning)
    seed: int = 0
    plots: bool = True
    progress: bool = True

    def validate(self) -> None:
        if self.model is None and self.checkpoint is None:
            raise SwinV2ServeError("give --model NAME and/or --checkpoint PATH")
        bad = [b for b in self.backends if b not in BACKENDS]
        if bad:
            raise SwinV2ServeError(f"unknown backend(s) {bad}; choose from {', '.join(BACKENDS)}")
        bad = [p for p in self.precisions if p not in PRECISIONS]
        if bad:
            raise SwinV2ServeError(f"unknown precision(s) {bad}; choose from {', '.join(PRECISIONS)}")
        bad = [c for c in self.compare if c not in COMPARE]
        if bad:
            raise SwinV2ServeError(f"unknown --compare {bad}; choose from {', '.join(COMPARE)}")
        if any(b < 1 for b in self.batches) or any(s < 1 for s in self.img_sizes):
            raise SwinV2ServeError("batches and image sizes must be positive")
        if self.iters is not None and self.iters < 1:
            raise SwinV2ServeError("--iters must be at least 1")
        if self.min_iters < 1 or self.min_time < 0 or self.warmup < 0:
            raise SwinV2ServeError("--min-iters must be >= 1, --min-time and --warmup >= 0")


@dataclass
class BenchResult:
    """One (resolution, batch, backend, implementation, precision) cell."""

    model: str
    img_size: int
    window_size: int
    batch: int
    backend: str
    impl: str  # "ours" or "timm"
    precision: str
    status: str  # "ok", "skipped" or "error"
    reason: str = ""
    iters: int = 0
    p50_ms: float | None = None
    p90_ms: float | None = None
    p99_ms: float | None = None
    mean_ms: float | None = None
    min_ms: float | None = None
    max_ms: float | None = None
    images_per_s: float | None = None  # batch / mean latency
    ratio_vs_timm: float | None = None  # ours p50 / timm p50 (ours rows with a measured peer)
    max_abs_logit_diff_vs_timm: float | None = None
    # reduced-precision ours rows with an ours fp32 row of the same backend in the cell (same input batch):
    top1_agreement_vs_fp32: float | None = None
    max_rel_logit_err_vs_fp32: float | None = None  # max over the batch of max|x - fp32| / max|fp32|

    @property
    def label(self) -> str:
        return self.backend if self.impl == OURS else f"{self.backend} [timm]"


@dataclass
class ExportRecord:
    """One ONNX export, measured in its own child process."""

    impl: str
    img_size: int
    window_size: int
    status: str
    reason: str = ""
    seconds: float | None = None
    peak_rss_mb: float | None = None  # VmHWM of the child process (imports, model and export)
    rss_increase_mb: float | None = None  # that minus the child's RSS right before the export
    nodes: int | None = None
    size_mb: float | None = None


@dataclass
class BenchReport:
    config: dict[str, Any]
    machine: dict[str, Any]
    results: list[BenchResult]
    exports: list[ExportRecord]
    skipped: dict[str, str]  # backend/compare name -> why it could not run at all
    seconds: float = 0.0
    files: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "config": self.config,
            "machine": self.machine,
            "skipped": self.skipped,
            "seconds": round(self.seconds, 1),
            "results": [asdict(r) for r in self.results],
            "exports": [asdict(e) for e in self.exports],
            "method": METHOD,
        }


METHOD = {
    "latency": "wall-clock time.perf_counter() around one call (client round trip for Triton), per runner; "
               "runners of a cell are called round-robin, start rotated every round, with an untimed cooldown "
               "(config cooldown_ms) before each call so the previous runner's spinning threads are asleep",
    "iterations": "warm-up rounds, then rounds until every runner has min_iters samples and min_time has passed "
                  "(at most max_time, never fewer than 3 samples), or exactly iters rounds",
    "percentiles": "numpy.percentile (linear) over the samples; with few samples p99 is close to the max",
    "images_per_s": "batch / mean latency",
    "ratio_vs_timm": "ours p50 / timm p50, same weights, same backend, same session options, same loop",
    "vs_fp32": "reduced-precision ours rows: top-1 agreement and max relative logit error (per image max|x - fp32| "
               "/ max|fp32|, max over the batch) against ours fp32 of the same backend on the same input batch "
               "(first warm-up call of each runner)",
    "export_memory": "each export runs in a fresh interpreter (subprocess); peak_rss_mb = VmHWM of /proc/self/status "
                     "at its end (the process's own peak RSS: interpreter, torch, model and export; ru_maxrss is not "
                     "used because Linux carries the parent's RSS into it across fork+exec), rss_increase_mb = peak "
                     "minus VmRSS right before the export call",
    "export_seconds": "torch.onnx.export plus our metadata step; no verification inside the timing",
}


# -- machine facts ---------------------------------------------------------------------------------------------
def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _gpu() -> str | None:
    with contextlib.suppress(Exception):
        import torch

        if torch.cuda.is_available():
            return ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
    if shutil.which("nvidia-smi"):
        with contextlib.suppress(Exception):
            out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10).stdout
            gpus = [line.strip() for line in out.splitlines() if line.startswith("GPU ")]
            return "; ".join(gpus) or None
    return None


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def usable_cores() -> int:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def machine_facts(threads: int) -> dict[str, Any]:
    """CPU, cores, memory, GPU (or None), load and library versions, recorded with every result."""
    facts: dict[str, Any] = {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "cores_usable": usable_cores(),
        "threads": threads,
        "gpu": _gpu(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "libraries": {name: _version(name) for name in LIBRARIES},
        "tritonserver": None,  # filled in when a Triton mode starts the server
        "load_average_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    with contextlib.suppress(Exception):
        import psutil

        facts["memory_gb"] = round(psutil.virtual_memory().total / 2**30, 1)
    return facts


# -- model and peers ---------------------------------------------------------------------------------------------
def load_bench_model(model: str | None, checkpoint: Path | None, seed: int = 0) -> Any:
    """Our train-time SwinV2: our checkpoint, a preset + foreign checkpoint, or a preset with random weights.

    Random weights are perturbed off their init (as trained weights are), so logit comparisons mean something.
    """
    import torch

    from .checkpoint import load_checkpoint, load_model
    from .model import create_model

    if checkpoint is not None and not Path(checkpoint).exists():
        raise SwinV2ServeError(f"checkpoint {checkpoint} not found")
    if model is None:
        if checkpoint is None:
            raise SwinV2ServeError("give --model NAME and/or --checkpoint PATH")
        return load_model(checkpoint).eval()
    try:
        net = create_model(model)
    except ValueError as exc:
        raise SwinV2ServeError(str(exc)) from None
    if checkpoint is not None:
        load_checkpoint(net, checkpoint)
    else:
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in net.parameters():
                p.add_(torch.randn(p.shape, generator=gen) * 0.02)
    return net.eval()


def window_at(cfg: Any, img: int) -> int:
    """The window for ``img``: the export command's rule (scaled with the image: 8 @ 256 -> 16 @ 512)."""
    from .config import window_for

    return window_for(cfg.img_size[0], cfg.window_size[0], img)


def resized_config(cfg: Any, img: int) -> Any:
    from .config import resolve_config

    if img == cfg.img_size[0] and window_at(cfg, img) == cfg.window_size[0]:
        return cfg
    return resolve_config(cfg, img_size=img, window_size=window_at(cfg, img))


def timm_unavailable_reason(cfg: Any) -> str | None:
    if importlib.util.find_spec("timm") is None:
        return "timm is not installed (pip install timm): no standard-export peer"
    if cfg.extra_norm_period:
        return f"{cfg.name} has main-branch norms (SwinV2-H/G) that timm's SwinTransformerV2 does not have"
    return None


def timm_model(cfg: Any) -> Any:
    """timm's SwinTransformerV2 with ``cfg``'s geometry (resolution, window, CPB normaliser, classes)."""
    import timm
    from timm.models.swin_transformer_v2 import SwinTransformerV2

    kwargs = {
        "img_size": tuple(cfg.img_size),
        "window_size": cfg.window_size[0],
        "pretrained_window_sizes": tuple(h for h, _ in cfg.cpb_normalisers),
        "num_classes": cfg.num_classes,
    }
    if cfg.name in timm.list_models("swinv2_*"):
        return timm.create_model(cfg.name, pretrained=False, **kwargs).eval()
    return SwinTransformerV2(patch_size=cfg.patch_size, in_chans=cfg.in_chans, embed_dim=cfg.embed_dim,
                             depths=tuple(cfg.depths), num_heads=tuple(cfg.num_heads), mlp_ratio=cfg.mlp_ratio,
                             qkv_bias=cfg.qkv_bias, **kwargs).eval()


def export_timm_standard(
    name: str | Any,
    state_dict: dict,
    img_size: tuple[int, int] | int | None,
    path: Path,
    dynamo: bool = False,
) -> None:
    """timm's model exported the way its users do: ``torch.onnx.export`` with a dynamic batch.

    ``name`` is a timm model name (native window) or one of our ``SwinV2Config`` (its window and CPB
    normaliser are used, so a resized config gives timm's model at that geometry). Output: ``logits``.
    """
    import torch

    from .config import resolve_config

    if isinstance(name, str):
        cfg = resolve_config(name, img_size=img_size) if img_size is not None else resolve_config(name)
    else:
        cfg = name if img_size is None else resolve_config(name, img_size=img_size)
    model = timm_model(cfg)
    model.load_state_dict(state_dict)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model, (torch.zeros(1, 3, *cfg.img_size),), str(path), dynamo=dynamo, opset_version=17,
            input_names=["input"], output_names=["logits"],
            **({"dynamic_shapes": ({0: torch.export.Dim("batch", max=256)},)} if dynamo
               else {"dynamic_axes": {"input": {0: "batch"}, "logits": {0: "batch"}}}),
        )


# -- exports in a child process ---------------------------------------------------------------------------------
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
    import psutil

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


def _export_child(job: dict[str, Any]) -> dict[str, Any]:
    """Runs in a fresh interpreter: build the model, export once, report time and memory."""
    import torch

    from .config import SwinV2Config
    from .model import SwinV2

    torch.set_num_threads(job["threads"])
    base = SwinV2Config.from_dict(job["base_cfg"])
    state_dict = torch.load(job["weights"], map_location="cpu", weights_only=True)
    model = SwinV2(base)
    model.load_state_dict(state_dict)
    model.eval()
    target = resized_config(base, job["img_size"])
    path = Path(job["path"])
    rss_before = _rss_now()
    start = time.perf_counter()
    if job["impl"] == OURS:
        from .onnx_export import export_onnx

        resize = {} if target is base else {"img_size": job["img_size"], "window_size": job["window_size"]}
        export_onnx(model, path, verify=False, **resize)
    else:
        export_timm_standard(target, model.state_dict(), None, path)
    seconds = time.perf_counter() - start
    peak = _peak_rss()
    import onnx

    nodes = len(onnx.load(str(path), load_external_data=False).graph.node)
    return {"seconds": seconds, "peak_rss": peak, "rss_before": rss_before, "nodes": nodes,
            "size": path.stat().st_size}


def run_export(impl: str, base_cfg: Any, weights: Path, img: int, window: int, path: Path,
               threads: int) -> ExportRecord:
    """One export in a fresh interpreter (``python -m swinv2_serve.bench --export-child JOB``)."""
    job = {"impl": impl, "base_cfg": base_cfg.to_dict(), "weights": str(weights), "img_size": img,
           "window_size": window, "path": str(path), "threads": threads}
    record = ExportRecord(impl=impl, img_size=img, window_size=window, status="ok")
    proc = subprocess.run([sys.executable, "-m", "swinv2_serve.bench", "--export-child", json.dumps(job)],
                          capture_output=True, text=True)
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


# -- budgets ---------------------------------------------------------------------------------------------------
def estimate_memory_bytes(cfg: Any, batch: int) -> int:
    """Rough peak inference memory: weights plus the largest stage's attention and activations.

    Attention: batch x windows x heads x N^2 floats, x3 (scores, biased, softmax alive together);
    activations: batch x padded tokens x dim floats, x12 (qkv 3C, MLP hidden 4C, residual copies).
    """
    weights = 4 * (cfg.embed_dim * cfg.embed_dim * 12 * sum(d * 4**i for i, d in enumerate(cfg.depths)))
    peak = 0
    for (h, w), (wh, ww), heads, dim in zip(cfg.stage_resolutions, cfg.stage_windows, cfg.num_heads,
                                           cfg.stage_dims):
        ph, pw = math.ceil(h / wh) * wh, math.ceil(w / ww) * ww
        n = wh * ww
        windows = (ph // wh) * (pw // ww)
        attention = batch * windows * heads * n * n * 4 * 3
        activations = batch * ph * pw * dim * 4 * 12
        peak = max(peak, attention + activations)
    return weights + peak


def default_memory_budget_gb() -> float:
    with contextlib.suppress(Exception):
        import psutil

        return psutil.virtual_memory().available / 2**30 / 2
    with contextlib.suppress(Exception):
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 2**30 / 2
    return 8.0


def budget_reason(cfg: Any, batch: int, max_pixels: int | None, max_memory_gb: float) -> str | None:
    """Why a (resolution, batch) cell is not run here, or None."""
    h, w = cfg.img_size
    if max_pixels is not None and batch * h * w > max_pixels:
        return (f"batch*H*W = {batch * h * w:,} > --max-pixels-per-batch {max_pixels:,} "
                "(time budget on this machine)")
    need = estimate_memory_bytes(cfg, batch) / 2**30
    if need > max_memory_gb:
        return f"estimated peak memory {need:.1f} GB > budget {max_memory_gb:.1f} GB (--max-memory-gb)"
    return None


# -- runners -------------------------------------------------------------------------------------------------
@dataclass
class Runner:
    """A callable under test: float32 [B,3,H,W] -> logits [B,C]."""

    backend: str
    impl: str
    precision: str
    call: Callable[[np.ndarray], np.ndarray]
    close: Callable[[], None] = lambda: None

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.backend, self.impl, self.precision)


def _torch_call(module: Any, precision: str) -> Callable[[np.ndarray], np.ndarray]:
    import torch

    dtype = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]

    def call(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            inputs = torch.from_numpy(x)
            if dtype is None:
                return module(inputs).float().numpy()
            with torch.autocast("cpu", dtype=dtype):
                return module(inputs).float().numpy()

    return call


def ort_session(path: Path, threads: int) -> Any:
    """The session options our OnnxRuntime uses (all graph optimisations, intra = threads, inter = 1)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def ours_runner(backend: str, precision: str, model: Any, cfg: Any, onnx_path: Path | None, threads: int) -> Runner:
    if backend == "torch":
        from .runtime import TorchRuntime

        resize = {} if cfg is model.cfg else {"img_size": cfg.img_size[0], "window_size": cfg.window_size[0]}
        runtime = TorchRuntime(model, dtype=precision, **resize)
        return Runner(backend, OURS, precision, _torch_call(runtime.module, precision))
    if backend == "onnxruntime":
        from .runtime import OnnxRuntime

        assert onnx_path is not None
        ort_runtime = OnnxRuntime(onnx_path, threads=threads)
        return Runner(backend, OURS, precision, lambda x: ort_runtime(x)["logits"])
    if backend == "openvino":
        from .openvino_backend import OpenVINORuntime

        assert onnx_path is not None
        ov_runtime = OpenVINORuntime(onnx_path, precision=precision, threads=threads, hint="latency", fidelity="off")
        if ov_runtime.precision != precision:  # resolve_precision fell back: never time fp32 under a bf16 label
            raise SwinV2ServeError(f"openvino compiled {ov_runtime.precision}, not the requested {precision}")
        return Runner(backend, OURS, precision, lambda x: ov_runtime(x)["logits"], ov_runtime.close)
    raise SwinV2ServeError(f"no local runner for {backend}")


def timm_runner(backend: str, precision: str, model: Any, cfg: Any, onnx_path: Path | None, threads: int) -> Runner:
    if backend == "torch":
        peer = timm_model(cfg)
        peer.load_state_dict(model.state_dict())
        return Runner(backend, TIMM, precision, _torch_call(peer, precision))
    if backend == "onnxruntime":
        assert onnx_path is not None
        session = ort_session(onnx_path, threads)
        return Runner(backend, TIMM, precision, lambda x: session.run(["logits"], {"input": x})[0])
    if backend == "openvino":
        from .openvino_backend import compile_onnx_dynamic_batch

        assert onnx_path is not None
        return Runner(backend, TIMM, precision, compile_onnx_dynamic_batch(onnx_path, precision, threads))
    raise SwinV2ServeError(f"no timm peer for {backend}")


def int8_runner(impl: str, onnx_path: Path, ours_onnx: Path, calibration: Path, threads: int,
                workdir: Path) -> Runner:
    """OpenVINO int8. Ours: the product path (``quantize_int8`` -> IR -> ``OpenVINORuntime``); timm: its
    export quantized with the same NNCF settings on the same calibration images (a like-for-like peer)."""
    from .openvino_backend import OpenVINORuntime, compile_onnx_dynamic_batch
    from .openvino_int8 import load_calibration_set, quantize_int8

    if impl == OURS:
        xml = quantize_int8(onnx_path, calibration, workdir / f"{onnx_path.stem}_int8.xml", fidelity="warn",
                            threads=threads).xml
        runtime = OpenVINORuntime(xml, threads=threads, hint="latency", fidelity="off")
        return Runner("openvino", OURS, "int8", lambda x: runtime(x)["logits"], runtime.close)
    from .preprocess import Preprocess
    from .runtime import read_onnx_metadata

    images = load_calibration_set(calibration, Preprocess.from_metadata(read_onnx_metadata(ours_onnx)))
    return Runner("openvino", TIMM, "int8", compile_onnx_dynamic_batch(onnx_path, "int8", threads,
                                                                       calibration=images.calibration))


@contextlib.contextmanager
def triton_server(onnx_path: Path, name: str, threads: int, max_batch: int, queue_delay_us: int,
                  log_file: Path) -> Iterator[Any]:
    """The embedded Triton server for one exported resolution, on free ports; always stopped."""
    from .server import EmbeddedServer, ServerConfig, free_ports

    http, grpc, metrics = free_ports(3)
    config = ServerConfig(http_port=http, grpc_port=grpc, metrics_port=metrics, max_batch=max_batch,
                          max_queue_delay_us=queue_delay_us, log_file=str(log_file), preprocess_instances=1)
    server = EmbeddedServer(onnx_path, name, config=config, backend="onnxruntime",
                            runtime_options={"threads": threads})
    with server:
        yield server


def triton_runner(backend: str, server: Any, name: str) -> Runner:
    from .client import Classifier

    protocol = TRITON_PROTOCOLS[backend]
    url = server.http_url if protocol == "http" else server.grpc_url
    client = Classifier(url, protocol, model=name, concurrency=1, timeout=600.0)
    return Runner(backend, OURS, "fp32", lambda x: client.infer(x)["logits"], client.close)


def tritonserver_version(server: Any) -> str | None:
    with contextlib.suppress(Exception):
        import tritonclient.http as httpclient

        client = httpclient.InferenceServerClient(server.http_url)
        try:
            return str(client.get_server_metadata().get("version"))
        finally:
            client.close()
    return None


def triton_unavailable_reason() -> str | None:
    missing = [m for m in ("pytriton", "tritonclient") if importlib.util.find_spec(m) is None]
    if missing:
        return f"{' and '.join(missing)} not installed: pip install 'swinv2-serve[serve]'"
    return None


# -- measurement ----------------------------------------------------------------------------------------------
@dataclass
class Samples:
    times_ms: dict[tuple[str, str, str], list[float]]
    first_output: dict[tuple[str, str, str], np.ndarray]


def measure(runners: Sequence[Runner], x: np.ndarray, *, warmup: int, iters: int | None, min_iters: int,
            min_time: float, max_time: float, cooldown_s: float = 0.0) -> Samples:
    """Round-robin over ``runners`` (start rotated each round): warm-up, then timed rounds.

    ``cooldown_s`` sleeps (untimed) before each call, so the spinning worker threads of the previous
    runner (ONNX Runtime, OpenMP) have gone to sleep and do not steal cores from the next one.
    """
    first = {r.key: r.call(x) for r in runners}  # also the first warm-up call
    for _ in range(max(0, warmup - 1)):
        for r in runners:
            r.call(x)
    times: dict[tuple[str, str, str], list[float]] = {r.key: [] for r in runners}
    start = time.perf_counter()
    rounds = 0
    while True:
        order = list(runners[rounds % len(runners):]) + list(runners[: rounds % len(runners)])
        for r in order:
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
    arr = np.asarray(times_ms, dtype=np.float64)
    p50, p90, p99 = np.percentile(arr, [50, 90, 99])
    mean = float(arr.mean())
    return {"iters": len(arr), "p50_ms": round(float(p50), 3), "p90_ms": round(float(p90), 3),
            "p99_ms": round(float(p99), 3), "mean_ms": round(mean, 3), "min_ms": round(float(arr.min()), 3),
            "max_ms": round(float(arr.max()), 3), "images_per_s": round(batch * 1000.0 / mean, 3)}


def pair_with_timm(rows: list[BenchResult], samples: Samples) -> None:
    """Fill ratio ours/timm and the logit difference on our rows that have a measured timm peer."""
    by_key = {(r.backend, r.impl, r.precision): r for r in rows if r.status == "ok"}
    for (backend, impl, precision), row in by_key.items():
        peer = by_key.get((backend, TIMM, precision))
        if impl != OURS or peer is None or not peer.p50_ms:
            continue
        row.ratio_vs_timm = round(row.p50_ms / peer.p50_ms, 3)
        ours_out = samples.first_output[(backend, OURS, precision)]
        timm_out = samples.first_output[(backend, TIMM, precision)]
        row.max_abs_logit_diff_vs_timm = float(np.abs(ours_out - timm_out).max())


def compare_with_fp32(rows: list[BenchResult], outputs: dict[tuple[str, str, str], np.ndarray]) -> None:
    """Fill top-1 agreement / max relative logit error on reduced-precision ours rows with an ours fp32 peer."""
    from .openvino_backend import compare_logits

    for row in rows:
        reference = outputs.get((row.backend, OURS, "fp32"))
        if row.impl != OURS or row.precision == "fp32" or row.status != "ok" or reference is None:
            continue
        report = compare_logits(reference, outputs[(row.backend, OURS, row.precision)], row.precision)
        row.top1_agreement_vs_fp32 = report.top1_agreement
        row.max_rel_logit_err_vs_fp32 = round(report.max_rel_error, 6)


def precision_unavailable_reason(backend: str, precision: str, openvino_caps: Sequence[str] = (),
                                 calibration: Path | None = None) -> str | None:
    """Why ``backend`` does not run ``precision`` here, or None; ``openvino_caps``: OpenVINO's CPU capabilities."""
    supported = BACKEND_PRECISIONS[backend]
    if precision not in supported:
        if supported == ("fp32",):
            return (f"{backend} runs the fp32 export on this code path; {precision} is for GPU engines "
                    "(export --onnx-fp16 / --format trt)")
        return f"{backend} runs {' / '.join(supported)} on this code path, not {precision}"
    if backend == "openvino" and precision == "int8":
        if calibration is None:
            return "openvino int8 needs --calibration DIR: images to calibrate the quantization on"
        return None
    if backend == "openvino":
        from .openvino_backend import resolve_precision

        if resolve_precision(precision, openvino_caps)[0] != precision:
            return (f"this CPU has no {precision} support (OpenVINO CPU capabilities: "
                    f"{', '.join(openvino_caps) or 'none'}; needs AVX512_BF16 or AMX): skipped, not run as fp32")
    return None


# -- the sweep -------------------------------------------------------------------------------------------------
class _Sweep:
    """State of one run: model, exports, rows; one method per step."""

    def __init__(self, config: BenchConfig) -> None:
        import torch

        config.validate()
        self.config = config
        self.threads = config.threads or usable_cores()
        torch.set_num_threads(self.threads)
        self.model = load_bench_model(config.model, config.checkpoint, config.seed)
        self.base = self.model.cfg
        self.sizes = config.img_sizes or [self.base.img_size[0]]
        self.memory_budget = config.max_memory_gb or default_memory_budget_gb()
        self.results: list[BenchResult] = []
        self.exports: list[ExportRecord] = []
        self.skipped = self._unavailable()
        self.precision_skips = self._precision_skips()
        self.machine = machine_facts(self.threads)
        self.rng = np.random.default_rng(config.seed)

    def _unavailable(self) -> dict[str, str]:
        from .runtime import available_backends

        reasons: dict[str, str] = {}
        probes = available_backends()
        for backend in self.config.backends:
            if backend in TRITON_PROTOCOLS:
                reason = triton_unavailable_reason()
            else:
                reason = probes.get(backend, f"unknown backend {backend}")
            if reason:
                reasons[backend] = reason
        if TIMM in self.config.compare:
            reason = timm_unavailable_reason(self.base)
            if reason:
                reasons[TIMM] = reason
        for name, reason in reasons.items():
            print(f"bench: skipping {name}: {reason}", file=sys.stderr)
        return reasons

    def _precision_skips(self) -> dict[tuple[str, str], str]:
        """(backend, precision) -> why it is not run here, for the backends that can run at all."""
        caps: list[str] = []
        if "openvino" in self.config.backends and "openvino" not in self.skipped:
            from .openvino_backend import cpu_capabilities

            caps = cpu_capabilities()
        reasons = {(b, p): precision_unavailable_reason(b, p, caps, self.config.calibration)
                   for b in self.config.backends if b not in self.skipped for p in self.config.precisions}
        return {key: reason for key, reason in reasons.items() if reason}

    def compare_here(self, img: int) -> bool:
        wanted = self.config.compare_img_sizes
        return TIMM in self.config.compare and TIMM not in self.skipped and (wanted is None or img in wanted)

    def row(self, cfg: Any, batch: int, backend: str, impl: str, precision: str, status: str,
            reason: str = "", **stats: Any) -> BenchResult:
        result = BenchResult(model=self.base.name, img_size=cfg.img_size[0], window_size=cfg.window_size[0],
                             batch=batch, backend=backend, impl=impl, precision=precision, status=status,
                             reason=reason, **stats)
        self.results.append(result)
        return result

    def run(self, workdir: Path) -> None:
        import torch

        weights = workdir / "weights.pt"
        torch.save(self.model.state_dict(), weights)
        cells = len(self.sizes) * len(self.config.batches)
        bar = _progress(cells, self.config.progress)
        try:
            for img in self.sizes:
                self.run_resolution(img, workdir, weights, bar)
        finally:
            bar.close()

    def run_resolution(self, img: int, workdir: Path, weights: Path, bar: Any) -> None:
        cfg = resized_config(self.base, img)
        window = cfg.window_size[0]
        runnable = [b for b in self.config.backends if b not in self.skipped]
        batches = self.config.batches
        budget = {b: budget_reason(cfg, b, self.config.max_pixels_per_batch, self.memory_budget) for b in batches}
        if all(budget.values()):  # nothing fits: record and do not even export
            for batch in batches:
                self._skip_cell(cfg, batch, runnable, budget[batch])
                bar.update(1)
            return
        bar.set_postfix_str(f"{img}px: export")
        paths = self._exports(cfg, img, window, workdir, weights, runnable)
        with contextlib.ExitStack() as stack:
            runners = self._runners(cfg, img, paths, runnable, stack, workdir)
            for batch in batches:
                if budget[batch]:
                    self._skip_cell(cfg, batch, runnable, budget[batch])
                else:
                    bar.set_postfix_str(f"{img}px batch {batch}")
                    self._measure_cell(cfg, batch, runners)
                bar.update(1)
            for runner in runners:
                with contextlib.suppress(Exception):
                    runner.close()

    def _exports(self, cfg: Any, img: int, window: int, workdir: Path, weights: Path,
                 runnable: list[str]) -> dict[str, Path | None]:
        needs_onnx = any(b in ONNX_BACKENDS for b in runnable)
        impls = [OURS] + ([TIMM] if self.compare_here(img) and any(b in TIMM_ONNX_PEERS for b in runnable) else [])
        paths: dict[str, Path | None] = {OURS: None, TIMM: None}
        if not needs_onnx:
            return paths
        for impl in impls:
            path = workdir / f"{self.base.name}_{img}_{impl}.onnx"
            record = run_export(impl, self.base, weights, img, window, path, self.threads)
            self.exports.append(record)
            if record.status == "ok":
                paths[impl] = path
            else:
                print(f"bench: {impl} export at {img}px failed: {record.reason}", file=sys.stderr)
        return paths

    def _runners(self, cfg: Any, img: int, paths: dict[str, Path | None], runnable: list[str],
                 stack: contextlib.ExitStack, workdir: Path) -> list[Runner]:
        runners: list[Runner] = []
        self.runner_errors: dict[tuple[str, str, str], str] = {}
        compare = self.compare_here(img)
        for backend in runnable:
            for precision in self.config.precisions:
                if (backend, precision) in self.precision_skips:
                    continue
                impls = [OURS] + ([TIMM] if compare and backend in TIMM_PEERS else [])
                for impl in impls:
                    try:
                        runner = self._make_runner(backend, impl, precision, cfg, img, paths, stack, workdir)
                    except Exception as exc:  # noqa: BLE001 - recorded per cell, the sweep goes on
                        self.runner_errors[(backend, impl, precision)] = f"{type(exc).__name__}: {exc}"[:500]
                        print(f"bench: {backend}/{impl}/{precision} at {img}px: {exc}", file=sys.stderr)
                        continue
                    runners.append(runner)
        return runners

    def _make_runner(self, backend: str, impl: str, precision: str, cfg: Any, img: int,
                     paths: dict[str, Path | None], stack: contextlib.ExitStack, workdir: Path) -> Runner:
        if backend in TRITON_PROTOCOLS:
            server = getattr(self, "_server", None)
            if server is None or getattr(self, "_server_img", None) != img:
                if paths[OURS] is None:
                    raise SwinV2ServeError("no ONNX export to serve")
                name = f"{self.base.name}_{img}"
                server = stack.enter_context(triton_server(
                    paths[OURS], name, self.threads, max(self.config.batches), self.config.triton_queue_delay_us,
                    workdir / f"tritonserver_{img}.log"))
                self._server, self._server_img, self._server_name = server, img, name
                stack.callback(lambda: setattr(self, "_server", None))
                self.machine["tritonserver"] = self.machine["tritonserver"] or tritonserver_version(server)
            return triton_runner(backend, server, self._server_name)
        if backend == "tensorrt":
            return self._tensorrt_runner(precision, img, paths[OURS], workdir)
        path = paths[impl]
        if backend in TIMM_ONNX_PEERS and path is None:
            raise SwinV2ServeError(f"{impl} ONNX export failed at {img}px (see exports)")
        if precision == "int8":
            assert path is not None and paths[OURS] is not None and self.config.calibration is not None
            return int8_runner(impl, path, paths[OURS], self.config.calibration, self.threads, workdir)
        factory = ours_runner if impl == OURS else timm_runner
        return factory(backend, precision, self.model, cfg, path, self.threads)

    def _tensorrt_runner(self, precision: str, img: int, onnx_path: Path | None, workdir: Path) -> Runner:
        """Build an engine from our fp32 ONNX (FP16 flag with FP32 islands for fp16) and time it."""
        from .runtime import TensorRTRuntime
        from .tensorrt_build import build_engine

        if onnx_path is None:
            raise SwinV2ServeError(f"no ONNX export at {img}px to build an engine from")
        plan = workdir / f"{self.base.name}_{img}_{precision}.plan"
        build_engine(onnx_path, plan, precision=precision, max_batch=max(self.config.batches), progress=False)
        runtime = TensorRTRuntime(plan)
        return Runner("tensorrt", OURS, precision, lambda x: runtime(x)["logits"], runtime.close)

    def _skip_cell(self, cfg: Any, batch: int, runnable: list[str], reason: str | None) -> None:
        for backend in self.config.backends:
            for precision in self.config.precisions:
                why = self.skipped.get(backend) or reason or ""
                self.row(cfg, batch, backend, OURS, precision, "skipped", why)

    def _measure_cell(self, cfg: Any, batch: int, runners: list[Runner]) -> None:
        c = self.config
        for backend in c.backends:  # what does not run here gets a row saying why
            for precision in c.precisions:
                reason = self.skipped.get(backend) or self.precision_skips.get((backend, precision))
                if reason:
                    self.row(cfg, batch, backend, OURS, precision, "skipped", reason)
        for key, reason in self.runner_errors.items():
            self.row(cfg, batch, *key, status="error", reason=reason)
        x = self.rng.standard_normal((batch, 3, *cfg.img_size), dtype=np.float32)
        measured: list[BenchResult] = []
        outputs: dict[tuple[str, str, str], np.ndarray] = {}
        for precision in c.precisions:
            group = [r for r in runners if r.precision == precision]
            if not group:
                continue
            try:
                samples = measure(group, x, warmup=c.warmup, iters=c.iters, min_iters=c.min_iters,
                                  min_time=c.min_time, max_time=c.max_time, cooldown_s=c.cooldown_ms / 1000)
            except Exception as exc:  # noqa: BLE001
                for r in group:
                    self.row(cfg, batch, r.backend, r.impl, precision, "error", f"{type(exc).__name__}: {exc}"[:500])
                continue
            cell = [self.row(cfg, batch, r.backend, r.impl, precision, "ok", **summarise(samples.times_ms[r.key],
                                                                                       batch)) for r in group]
            pair_with_timm(cell, samples)
            measured += cell
            outputs.update(samples.first_output)
        compare_with_fp32(measured, outputs)


def _progress(total: int, enabled: bool) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, desc="bench", unit="cell", disable=not enabled, file=sys.stderr)


def run_bench(config: BenchConfig) -> BenchReport:
    """Run the sweep and write CSV, JSON, Markdown and PNGs into ``config.output``."""
    start = time.perf_counter()
    sweep = _Sweep(config)
    tmp = None
    if config.workdir is None:
        tmp = tempfile.mkdtemp(prefix="swinv2_bench_")
        workdir = Path(tmp)
    else:
        workdir = config.workdir
        workdir.mkdir(parents=True, exist_ok=True)
    try:
        sweep.run(workdir)
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    report = BenchReport(config=_config_json(config, sweep), machine=sweep.machine, results=sweep.results,
                         exports=sweep.exports, skipped=sweep.skipped, seconds=time.perf_counter() - start)
    write_report(report, config.output, plots=config.plots)
    return report


def _config_json(config: BenchConfig, sweep: _Sweep) -> dict[str, Any]:
    out = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(config).items()}
    out.update(threads=sweep.threads, img_sizes=sweep.sizes, max_memory_gb=round(sweep.memory_budget, 1),
               model=sweep.base.name, argv=list(sys.argv))
    return out


# -- output -------------------------------------------------------------------------------------------------------
CSV_FIELDS = [f.name for f in dataclasses.fields(BenchResult)]
EXPORT_FIELDS = [f.name for f in dataclasses.fields(ExportRecord)]


def write_report(report: BenchReport, output: Path, *, plots: bool = True) -> dict[str, str]:
    output.mkdir(parents=True, exist_ok=True)
    files = {"csv": output / "results.csv", "exports_csv": output / "exports.csv", "json": output / "results.json",
             "markdown": output / "results.md"}
    _write_csv(files["csv"], CSV_FIELDS, [asdict(r) for r in report.results])
    _write_csv(files["exports_csv"], EXPORT_FIELDS, [asdict(e) for e in report.exports])
    files["markdown"].write_text(markdown_report(report), encoding="utf-8")
    if plots:
        files["latency_png"] = plot_latency_vs_resolution(report.results, output / "latency_vs_resolution.png")
        files["throughput_png"] = plot_throughput_vs_batch(report.results, output / "throughput_vs_batch.png")
    report.files = {k: str(v) for k, v in files.items()}
    files["json"].write_text(json.dumps({**report.to_json(), "files": report.files}, indent=2), encoding="utf-8")
    return report.files


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_latency_vs_resolution(results: Sequence[BenchResult], path: Path) -> Path:
    """p50 latency (log y, bars to p90) against resolution: one line per backend, one panel per batch."""
    plt = _pyplot()
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
    plt = _pyplot()
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


def load_report(path: Path) -> BenchReport:
    """A report back from its results.json (to re-render tables and plots without measuring again)."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    return BenchReport(config=data["config"], machine=data["machine"],
                       results=[BenchResult(**r) for r in data["results"]],
                       exports=[ExportRecord(**e) for e in data["exports"]], skipped=data["skipped"],
                       seconds=data.get("seconds", 0.0))


def _write_csv(path: Path, fields: list[str], rows: list[dict[str, Any]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows({k: ("" if v is None else v) for k, v in row.items()} for row in rows)


def _fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def wide_table(results: Sequence[BenchResult]) -> list[str]:
    """Resolution x backend: one row per (img, batch, precision), ``p50 / p99 ms, img/s`` per backend column."""
    ok = [r for r in results if r.status == "ok"]
    labels = sorted({r.label for r in ok}, key=lambda lab: (BACKENDS.index(lab.split()[0])
                                                            if lab.split()[0] in BACKENDS else 99, lab))
    if not labels:
        return []
    lines = ["| img (window) | batch | precision | " + " | ".join(labels) + " |",
             "| ---: | ---: | --- | " + " | ".join("---:" for _ in labels) + " |"]
    cells = {(r.img_size, r.batch, r.precision, r.label): r for r in ok}
    for img, window, batch, precision in sorted({(r.img_size, r.window_size, r.batch, r.precision) for r in ok}):
        row = []
        for label in labels:
            r = cells.get((img, batch, precision, label))
            row.append("-" if r is None else f"{_fmt(r.p50_ms)} / {_fmt(r.p99_ms)} ms, {_fmt(r.images_per_s, 2)}/s")
        lines.append(f"| {img} ({window}) | {batch} | {precision} | " + " | ".join(row) + " |")
    return lines


def markdown_report(report: BenchReport) -> str:
    """Tables: resolution x backend, the long form with n, ours/timm pairs, exports, skips, machine."""
    ok = [r for r in report.results if r.status == "ok"]
    wide = wide_table(report.results)
    head = ["### p50 / p99 latency and images/s per resolution and backend", "", *wide, ""] if wide else []
    lines = ["| img | window | batch | backend | precision | p50 ms | p90 ms | p99 ms | img/s | n |",
             "| ---: | ---: | ---: | --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    for r in sorted(ok, key=lambda r: (r.img_size, r.batch, r.backend, r.impl != OURS, r.precision)):
        lines.append(f"| {r.img_size} | {r.window_size} | {r.batch} | {r.label} | {r.precision} | {_fmt(r.p50_ms)} | "
                     f"{_fmt(r.p90_ms)} | {_fmt(r.p99_ms)} | {_fmt(r.images_per_s, 2)} | {r.iters} |")
    out = [*head, "### All measured cells (n = samples per runner)", "", *lines, ""]
    pairs = [r for r in ok if r.ratio_vs_timm is not None]
    if pairs:
        peers = {(r.img_size, r.batch, r.backend, r.precision): r for r in ok if r.impl == TIMM}
        out += ["### Ours vs timm (same weights, same loop, interleaved)", "",
                "| img | batch | backend | precision | ours p50 ms | timm p50 ms | ours/timm | max abs logit diff |",
                "| ---: | ---: | --- | --- | ---: | ---: | ---: | ---: |"]
        for r in sorted(pairs, key=lambda r: (r.backend, r.img_size, r.batch, r.precision)):
            peer = peers[(r.img_size, r.batch, r.backend, r.precision)]
            out.append(f"| {r.img_size} | {r.batch} | {r.backend} | {r.precision} | {_fmt(r.p50_ms)} | "
                       f"{_fmt(peer.p50_ms)} | **{r.ratio_vs_timm:.3f}** | {r.max_abs_logit_diff_vs_timm:.2g} |")
        out.append("")
    reduced = [r for r in ok if r.top1_agreement_vs_fp32 is not None]
    if reduced:
        out += ["### Reduced precision vs fp32 (ours, same backend, same input batch)", "",
                "| img | batch | backend | precision | top-1 agreement | max rel logit error |",
                "| ---: | ---: | --- | --- | ---: | ---: |"]
        out += [f"| {r.img_size} | {r.batch} | {r.backend} | {r.precision} | {r.top1_agreement_vs_fp32:.0%} | "
                f"{r.max_rel_logit_err_vs_fp32:.2g} |"
                for r in sorted(reduced, key=lambda r: (r.backend, r.img_size, r.batch, r.precision))]
        out.append("")
    if report.exports:
        out += ["### Export time and peak memory (one child process per export)", "",
                "| img | window | impl | seconds | peak RSS MB | RSS increase MB | nodes | size MB |",
                "| ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: |"]
        for e in report.exports:
            out.append(f"| {e.img_size} | {e.window_size} | {e.impl} | {_fmt(e.seconds)} | {_fmt(e.peak_rss_mb, 0)} | "
                       f"{_fmt(e.rss_increase_mb, 0)} | {e.nodes if e.nodes is not None else '-'} | "
                       f"{_fmt(e.size_mb)} |" + (f" {e.status}: {e.reason}" if e.status != "ok" else ""))
        out.append("")
    skipped = _skip_summary(report)
    if skipped:
        out += ["### Skipped", "", *[f"- {s}" for s in skipped], ""]
    m = report.machine
    libs = ", ".join(f"{k} {v}" for k, v in m["libraries"].items() if v)
    out += ["### Machine", "",
            f"- CPU: {m['cpu']} ({m['cores_usable']} usable cores), threads {m['threads']}, "
            f"memory {m.get('memory_gb', '?')} GB, GPU: {m['gpu'] or 'none'}",
            f"- load average at start: {m.get('load_average_at_start')}",
            f"- python {m['python']}; {libs}; tritonserver {m.get('tritonserver') or 'not started'}", ""]
    return "\n".join(out)


def _skip_summary(report: BenchReport) -> list[str]:
    seen: dict[str, list[str]] = {}
    for r in report.results:
        if r.status in ("skipped", "error"):
            where = f"{r.img_size}px b{r.batch}"
            seen.setdefault(f"{r.backend} {r.precision} ({r.status}): {r.reason}", []).append(where)
    for name, reason in report.skipped.items():
        if name == TIMM:
            seen.setdefault(f"--compare timm: {reason}", [])
    return [f"{what}" + (f" — {', '.join(dict.fromkeys(where))}" if where else "") for what, where in seen.items()]


__all__ = ["BenchConfig", "BenchReport", "BenchResult", "ExportRecord", "estimate_memory_bytes", "export_timm_standard",
           "load_report", "machine_facts", "markdown_report", "run_bench", "timm_model", "write_report"]


if __name__ == "__main__":  # the export child: python -m swinv2_serve.bench --export-child JOB_JSON
    if len(sys.argv) == 3 and sys.argv[1] == "--export-child":
        print(json.dumps(_export_child(json.loads(sys.argv[2]))))
    else:
        sys.exit("usage: python -m swinv2_serve.bench --export-child JOB_JSON (internal; use `swinv2-serve bench`)")
