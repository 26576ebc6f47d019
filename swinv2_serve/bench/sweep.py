"""The sweep: resolutions x batches x backends x precisions, timm interleaved as the peer.

Per resolution: the config is resolved once (``resolve_config``: the window scales with the image), our ONNX
and timm's are exported in child processes, one runner is built per backend and precision, and each
(batch, precision) cell is timed round-robin (``timing.measure``) so noise hits every number and its peer
alike. Reduced-precision rows record their agreement with fp32 of the same backend on the same batch.
Nothing here asserts a speed: the numbers are recorded, not judged.
"""

from __future__ import annotations

import contextlib
import shutil
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from ..checkpoint import load_or_create
from ..config import SwinV2Config, resolve_config
from ..deploy import resize_model
from ..machine import machine_facts, usable_cores
from ..model import SwinV2
from ..runtime import available_backends
from ..runtime.openvino_backend import cpu_capabilities
from ..timing import Runner, RunnerKey, Samples, measure, summarise
from ..verification import compare
from .budget import budget_reason, default_memory_budget_gb
from .exports import run_export
from .peers import timm_onnx_runner, timm_torch_runner, timm_unavailable_reason
from .report import write_report
from .results import (
    ONNX_BACKENDS,
    OURS,
    TIMM,
    TIMM_ONNX_PEERS,
    TIMM_PEERS,
    TRITON_PROTOCOLS,
    BenchConfig,
    BenchReport,
    BenchResult,
    ExportRecord,
)
from .runners import (
    int8_runners,
    ours_runner,
    precision_unavailable_reason,
    tensorrt_runner,
    triton_runner,
    triton_server,
    triton_unavailable_reason,
)


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


def compare_with_fp32(rows: list[BenchResult], outputs: dict[RunnerKey, np.ndarray]) -> None:
    """Fill top-1 agreement / max relative logit error on reduced-precision ours rows with an ours fp32 peer."""
    for row in rows:
        reference = outputs.get((row.backend, OURS, "fp32"))
        if row.impl != OURS or row.precision == "fp32" or row.status != "ok" or reference is None:
            continue
        comparison = compare(reference, outputs[(row.backend, OURS, row.precision)])
        row.top1_agreement_vs_fp32 = comparison.top1_agreement
        row.max_rel_logit_err_vs_fp32 = round(comparison.max_rel_error, 6)


class _Sweep:
    """State of one run: model, exports, rows; one method per step."""

    def __init__(self, config: BenchConfig) -> None:
        config.validate()
        self.config = config
        self.threads = config.threads or usable_cores()
        torch.set_num_threads(self.threads)
        self.model = load_or_create(config.model, config.checkpoint, perturb_seed=config.seed)
        self.base = self.model.cfg
        self.sizes = config.img_sizes or [self.base.img_size[0]]
        self.memory_budget = config.max_memory_gb or default_memory_budget_gb()
        self.results: list[BenchResult] = []
        self.exports: list[ExportRecord] = []
        self.runner_errors: dict[RunnerKey, str] = {}
        self.skipped = self._unavailable()
        self.precision_skips = self._precision_skips()
        self.machine = machine_facts(self.threads)
        self.rng = np.random.default_rng(config.seed)
        self._server: Any = None

    def _unavailable(self) -> dict[str, str]:
        reasons: dict[str, str] = {}
        probes = available_backends()
        for backend in self.config.backends:
            reason = triton_unavailable_reason() if backend in TRITON_PROTOCOLS else probes.get(backend)
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
        caps = cpu_capabilities() if "openvino" in self.config.backends and "openvino" not in self.skipped else []
        reasons = {(b, p): precision_unavailable_reason(b, p, caps, self.config.calibration)
                   for b in self.config.backends if b not in self.skipped for p in self.config.precisions}
        return {key: reason for key, reason in reasons.items() if reason}

    def compare_here(self, img: int) -> bool:
        wanted = self.config.compare_img_sizes
        return TIMM in self.config.compare and TIMM not in self.skipped and (wanted is None or img in wanted)

    def row(self, cfg: SwinV2Config, batch: int, backend: str, impl: str, precision: str, status: str,
            reason: str = "", **stats: Any) -> BenchResult:
        result = BenchResult(model=self.base.name, img_size=cfg.img_size[0], window_size=cfg.window_size[0],
                             batch=batch, backend=backend, impl=impl, precision=precision, status=status,
                             reason=reason, **stats)
        self.results.append(result)
        return result

    def run(self, workdir: Path) -> None:
        weights = workdir / "weights.pt"
        torch.save(self.model.state_dict(), weights)
        bar = tqdm(total=len(self.sizes) * len(self.config.batches), desc="bench", unit="cell",
                   disable=not self.config.progress, file=sys.stderr)
        try:
            for img in self.sizes:
                self.run_resolution(resolve_config(self.base, img_size=img), workdir, weights, bar)
        finally:
            bar.close()

    def run_resolution(self, cfg: SwinV2Config, workdir: Path, weights: Path, bar: Any) -> None:
        img = cfg.img_size[0]
        runnable = [b for b in self.config.backends if b not in self.skipped]
        batches = self.config.batches
        budget = {b: budget_reason(cfg, b, self.config.max_pixels_per_batch, self.memory_budget) for b in batches}
        if all(budget.values()):  # nothing fits: record and do not even export
            for batch in batches:
                self._skip_cell(cfg, batch, budget[batch])
                bar.update(1)
            return
        bar.set_postfix_str(f"{img}px: export")
        paths = self._exports(cfg, workdir, weights, runnable)
        with contextlib.ExitStack() as stack:
            runners = self._runners(cfg, paths, runnable, stack, workdir)
            for batch in batches:
                if budget[batch]:
                    self._skip_cell(cfg, batch, budget[batch])
                else:
                    bar.set_postfix_str(f"{img}px batch {batch}")
                    self._measure_cell(cfg, batch, runners)
                bar.update(1)
            for runner in runners:
                with contextlib.suppress(Exception):
                    runner.close()

    def _exports(self, cfg: SwinV2Config, workdir: Path, weights: Path, runnable: list[str]) -> dict[str, Path | None]:
        img = cfg.img_size[0]
        paths: dict[str, Path | None] = {OURS: None, TIMM: None}
        if not any(b in ONNX_BACKENDS for b in runnable):
            return paths
        impls = [OURS] + ([TIMM] if self.compare_here(img) and any(b in TIMM_ONNX_PEERS for b in runnable) else [])
        for impl in impls:
            path = workdir / f"{self.base.name}_{img}_{impl}.onnx"
            record = run_export(impl, cfg, weights, path, self.threads)
            self.exports.append(record)
            if record.status == "ok":
                paths[impl] = path
            else:
                print(f"bench: {impl} export at {img}px failed: {record.reason}", file=sys.stderr)
        return paths

    def _runners(self, cfg: SwinV2Config, paths: dict[str, Path | None], runnable: list[str],
                 stack: contextlib.ExitStack, workdir: Path) -> list[Runner]:
        runners: list[Runner] = []
        self.runner_errors = {}
        img = cfg.img_size[0]
        compare_timm = self.compare_here(img)
        # the train-time model at this geometry, for the torch runners only (ONNX backends run the export)
        model = None if "torch" not in runnable else self.model if cfg == self.base else resize_model(
            self.model, img_size=cfg.img_size, window_size=cfg.window_size)
        for backend in runnable:
            for precision in self.config.precisions:
                if (backend, precision) in self.precision_skips:
                    continue
                peers = [TIMM] if compare_timm and backend in TIMM_PEERS else []
                try:
                    runners += self._make_runners(backend, precision, peers, cfg, model, paths, stack, workdir)
                except Exception as exc:  # noqa: BLE001 - recorded per cell, the sweep goes on
                    for impl in [OURS, *peers]:
                        self.runner_errors[(backend, impl, precision)] = f"{type(exc).__name__}: {exc}"[:500]
                    print(f"bench: {backend}/{precision} at {img}px: {exc}", file=sys.stderr)
        return runners

    def _make_runners(self, backend: str, precision: str, peers: list[str], cfg: SwinV2Config, model: SwinV2 | None,
                      paths: dict[str, Path | None], stack: contextlib.ExitStack, workdir: Path) -> list[Runner]:
        ours = paths[OURS]
        if backend in ONNX_BACKENDS and ours is None:
            raise RuntimeError(f"our ONNX export failed at {cfg.img_size[0]}px (see exports)")
        if backend in TRITON_PROTOCOLS:
            assert ours is not None
            if self._server is None:  # one server per resolution, for both protocols
                name = f"{self.base.name}_{cfg.img_size[0]}"
                self._server = stack.enter_context(triton_server(
                    ours, name, self.threads, max(self.config.batches), self.config.triton_queue_delay_us,
                    workdir / f"tritonserver_{cfg.img_size[0]}.log"))
                stack.callback(lambda: setattr(self, "_server", None))
                self.machine["tritonserver"] = self.machine["tritonserver"] or self._server.triton_version()
            return [triton_runner(backend, self._server, self._server.name)]
        if backend == "tensorrt":
            assert ours is not None
            return [tensorrt_runner(precision, ours, max(self.config.batches), workdir)]
        if precision == "int8":
            assert ours is not None and self.config.calibration is not None
            return int8_runners(ours, paths[TIMM] if peers else None, self.config.calibration, self.threads, workdir)
        runners = [ours_runner(backend, precision, model, ours, self.threads)]
        if peers and backend == "torch":
            assert model is not None
            runners.append(timm_torch_runner(cfg, model.state_dict(), precision))
        elif peers and paths[TIMM] is not None:
            runners.append(timm_onnx_runner(backend, precision, paths[TIMM], self.threads))
        return runners

    def _skip_cell(self, cfg: SwinV2Config, batch: int, reason: str | None) -> None:
        for backend in self.config.backends:
            for precision in self.config.precisions:
                why = self.skipped.get(backend) or reason or ""
                self.row(cfg, batch, backend, OURS, precision, "skipped", why)

    def _measure_cell(self, cfg: SwinV2Config, batch: int, runners: list[Runner]) -> None:
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
        outputs: dict[RunnerKey, np.ndarray] = {}
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
            cell = [self.row(cfg, batch, r.backend, r.impl, precision, "ok",
                             **summarise(samples.times_ms[r.key], batch)) for r in group]
            pair_with_timm(cell, samples)
            measured += cell
            outputs.update(samples.first_output)
        compare_with_fp32(measured, outputs)


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
