"""What a sweep is asked (``BenchConfig``) and what it records (``BenchResult``, ``ExportRecord``, ``BenchReport``)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..contract import BACKEND_PRECISIONS as RUNTIME_PRECISIONS
from ..contract import PRECISIONS, RUNTIME_BACKENDS
from ..errors import SwinV2ServeError

TRITON_PROTOCOLS = {"triton-http": "http", "triton-grpc": "grpc"}
BACKENDS = (*RUNTIME_BACKENDS, *TRITON_PROTOCOLS)
COMPARE = ("timm",)
OURS, TIMM = "ours", "timm"
# precisions each backend can run on this code path: the runtimes' own, and Triton serving the fp32 export
BACKEND_PRECISIONS = {**RUNTIME_PRECISIONS, **{name: ("fp32",) for name in TRITON_PROTOCOLS}}
ONNX_BACKENDS = ("onnxruntime", "openvino", "tensorrt", *TRITON_PROTOCOLS)  # run our ONNX export
TIMM_ONNX_PEERS = ("onnxruntime", "openvino")  # their timm peer runs timm's standard ONNX export
TIMM_PEERS = ("torch", *TIMM_ONNX_PEERS)


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
