"""One resolution: export, build every candidate once, check it against fp32 eager, profile those that pass, choose.

The check set is the held-out part of ``--images`` (``openvino_int8.load_calibration_set``: seeded shuffle, a
fifth held out), the same split ``quantize_int8`` makes for int8, so no candidate is checked on images it was
calibrated on. The reference is the model itself in PyTorch fp32 (the train-time form, not the deploy form:
every candidate, ONNX Runtime fp32 included, is a transformation of it). fp32 candidates must also keep
``FP32_MAX_REL`` (they compute the same function); reduced precisions the top-1 gate, and ``--max-rel-error``
if given. An int8 IR must also pass the check ``quantize_int8`` recorded in it, which every server that loads
it enforces.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..bench.candidates import BuiltCandidate, CandidateSpec, build_candidate, candidate_unavailable_reason
from ..model import SwinV2
from ..onnx_export import export_onnx
from ..openvino_int8 import CalibrationSet, load_calibration_set
from ..preprocess import Preprocess
from ..runtime import available_backends
from ..runtime.openvino_backend import cpu_capabilities
from ..timing import RunnerKey
from ..verification import Tolerance, judge
from .choice import ERROR, NOT_RUNNABLE, REFUSED, CandidateResult, Fidelity, choose
from .config import OptimizeConfig
from .profile import batch_sweep, stable_latency

FP32_MAX_REL = 1e-3  # an fp32 path computes the same function: anything larger is a bug, not rounding
MIN_PROFILE_S = 4.0  # profiling time when building used up the budget (latency still takes >= 2 windows)
Say = Callable[[str], None]


@dataclass
class ResolutionResult:
    """Everything optimize learned at one resolution."""

    img_size: int
    window_size: int
    onnx: Path
    check_images: int
    calibration_images: int
    results: list[CandidateResult]
    chosen: CandidateResult | None
    built: dict[CandidateSpec, BuiltCandidate] = field(default_factory=dict)  # passing ones, still loaded
    check: np.ndarray | None = field(default=None, repr=False)  # the held-out images, preprocessed
    repository: dict[str, Any] | None = None
    seconds: float = 0.0

    def close(self) -> None:
        for built in self.built.values():
            with contextlib.suppress(Exception):
                built.close()
        self.built.clear()


def tolerance_for(precision: str, threshold: float, max_rel_error: float | None) -> Tolerance:
    if precision == "fp32":
        return Tolerance(min_top1=threshold, max_rel_error=FP32_MAX_REL)
    return Tolerance(min_top1=threshold, max_rel_error=math.inf if max_rel_error is None else max_rel_error)


@torch.no_grad()
def eager_logits(model: SwinV2, x: np.ndarray, batch: int = 8) -> np.ndarray:
    """The reference: the train-time model in PyTorch fp32."""
    model = model.eval()
    return np.concatenate([model(torch.from_numpy(x[i:i + batch])).float().numpy() for i in range(0, len(x), batch)])


def tile(x: np.ndarray, batch: int) -> np.ndarray:
    """``batch`` inputs taken from ``x`` in order, repeating it as needed."""
    reps = -(-batch // len(x))
    return np.ascontiguousarray(np.concatenate([x] * reps)[:batch])


def _result(spec: CandidateSpec, **fields: Any) -> CandidateResult:
    return CandidateResult(spec.backend, spec.precision, spec.variant, spec.deployable, **fields)


def _int8_record_failures(built: BuiltCandidate) -> list[str]:
    record = built.notes.get("int8_check_vs_openvino_fp32")
    if record is None or record.get("passed", True):
        return []
    return [f"the IR's own record (vs OpenVINO fp32) failed: {'; '.join(record.get('failures', []))}"]


class ResolutionSearch:
    """Steps of one resolution; ``run()`` does them in order."""

    def __init__(self, config: OptimizeConfig, model: SwinV2, workdir: Path, threads: int, say: Say,
                 deadline: float) -> None:
        self.config, self.model, self.workdir, self.threads, self.say = config, model, workdir, threads, say
        self.deadline = deadline
        self.img = model.cfg.img_size[0]

    def run(self) -> ResolutionResult:
        started = time.perf_counter()
        self.workdir.mkdir(parents=True, exist_ok=True)
        onnx = self.workdir / f"{self.model.cfg.name}_{self.img}.onnx"
        self.say(f"{self.img}px: exporting ONNX (deploy form, verified against eager)")
        export = export_onnx(self.model, onnx)
        data = self.check_set(export.metadata)
        self.say(f"{self.img}px: {len(data.check)} held-out check images, {len(data.calibration)} for int8 "
                 "calibration; reference = PyTorch fp32 eager")
        reference = eager_logits(self.model, data.check)
        res = ResolutionResult(self.img, self.model.cfg.window_size[0], onnx, len(data.check), len(data.calibration),
                               [], None, check=data.check)
        try:
            self.build_and_check(res, onnx, data.check, reference)
            self.profile(res, data.check)
            res.chosen = choose(res.results, self.config.objective)
        except BaseException:
            res.close()
            raise
        res.seconds = time.perf_counter() - started
        return res

    def check_set(self, metadata: Any) -> CalibrationSet:
        c = self.config
        return load_calibration_set(c.images, Preprocess.from_metadata(metadata), calibration=c.calibration,
                                    check=c.check, seed=c.seed)

    def build_and_check(self, res: ResolutionResult, onnx: Path, check: np.ndarray, reference: np.ndarray) -> None:
        c = self.config
        probes = available_backends()
        caps = cpu_capabilities() if not probes.get("openvino") else []
        int8 = {"calibration": c.calibration, "check": c.check, "seed": c.seed, "threshold": c.fidelity_threshold}
        for spec in c.candidates:
            reason = candidate_unavailable_reason(spec, probes, caps, c.images)
            if reason:
                self.say(f"{self.img}px: {spec.name}: not runnable here: {reason}")
                res.results.append(_result(spec, verdict=NOT_RUNNABLE, reason=reason))
                continue
            self.say(f"{self.img}px: {spec.name}: building")
            try:
                built = build_candidate(spec, model=self.model, onnx=onnx, threads=self.threads, workdir=self.workdir,
                                        calibration=c.images, max_batch=c.max_batch, int8=int8)
                started = time.perf_counter()
                logits = built.logits(check)
                check_s = time.perf_counter() - started
            except Exception as exc:  # noqa: BLE001 - one failing path must not end the search
                message = f"{type(exc).__name__}: {exc}"[:500]
                self.say(f"{self.img}px: {spec.name}: failed: {message}")
                res.results.append(_result(spec, verdict=ERROR, reason=message))
                continue
            verdict = judge(spec.name, reference, logits, tolerance_for(spec.precision, c.fidelity_threshold,
                                                                        c.max_rel_error))
            fidelity = Fidelity.from_verdict(verdict, _int8_record_failures(built))
            result = _result(spec, path=None if built.path is None else str(built.path), fidelity=fidelity,
                             build_s=round(built.build_s, 2), notes={**built.notes, "check_s": round(check_s, 2)})
            self.say(f"{self.img}px: {spec.name}: built in {built.build_s:.1f}s; top-1 agreement "
                     f"{fidelity.top1_agreement:.1%}, max rel error {fidelity.max_rel_error:.3g}, "
                     f"{fidelity.nonfinite} NaN/Inf -> {'passed' if fidelity.passed else 'REFUSED'}")
            if fidelity.passed:
                res.built[spec] = built
            else:
                result.verdict, result.reason = REFUSED, "; ".join(fidelity.failures)
                built.close()
            res.results.append(result)

    def profile(self, res: ResolutionResult, check: np.ndarray) -> None:
        if not res.built:
            return
        c = self.config
        runners = [b.runner() for b in res.built.values()]
        keys: dict[RunnerKey, CandidateResult] = {}
        for spec, runner in zip(res.built, runners):
            keys[runner.key] = next(r for r in res.results if (r.backend, r.precision, r.variant) ==
                                    (spec.backend, spec.precision, spec.variant))
        budget = max(MIN_PROFILE_S, self.deadline - time.perf_counter())
        names = ", ".join(spec.name for spec in res.built)
        self.say(f"{self.img}px: batch-1 latency of {names} (interleaved, {budget * 0.6:.0f}s at most)")
        latency = stable_latency(runners, check[:1], budget_s=budget * 0.6, cooldown_s=c.cooldown_ms / 1000,
                                 on_window=lambda n, ok: self.say(f"{self.img}px:   window {n}"
                                                                  + (" (stable)" if ok else "")))
        batches = [b for b in c.batches() if b > 1]
        curves: dict[RunnerKey, dict[int, float]] = {key: {} for key in keys}
        if batches:
            budget = max(MIN_PROFILE_S / 2, self.deadline - time.perf_counter())
            curves = batch_sweep(runners, {b: tile(check, b) for b in batches}, budget_s=budget,
                                 cooldown_s=c.cooldown_ms / 1000,
                                 on_batch=lambda b: self.say(f"{self.img}px: throughput at batch {b}"))
        for key, result in keys.items():
            lat = latency[key]
            curve = {1: round(1000.0 / lat.mean, 3), **curves[key]}
            result.latency_ms = {"p50": lat.p50, "p99": lat.p99}
            result.throughput_img_s = max(curve.values())
            result.profile = {"batch1": lat.to_dict(), "throughput_img_s": {str(b): v for b, v in curve.items()}}


def search(config: OptimizeConfig, models: Sequence[SwinV2], workdir: Path, threads: int, say: Say,
           deadline: float) -> list[ResolutionResult]:
    """Every resolution in turn, each with an equal share of the time that is left."""
    out: list[ResolutionResult] = []
    try:
        for i, model in enumerate(models):
            share = (deadline - time.perf_counter()) / (len(models) - i)
            img = model.cfg.img_size[0]
            out.append(ResolutionSearch(config, model, workdir / str(img), threads, say,
                                        time.perf_counter() + share).run())
    except BaseException:
        for res in out:
            res.close()
        raise
    return out
