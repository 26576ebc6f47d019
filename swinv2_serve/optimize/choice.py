"""What one candidate measured (``CandidateResult``) and the choice among them: pure functions, no I/O.

The rule: among candidates that passed the fidelity gate, were profiled, and can be served from a Triton
repository, the lowest batch-1 p50 latency (objective ``latency``) or the highest images/s over the batch
sweep (``throughput``); a tie goes to the earlier candidate (float before reduced precision). A candidate
that failed the gate is never chosen, however fast.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from ..verification import Verdict

CHOSEN, PASSED, REFUSED, NOT_RUNNABLE, ERROR = "chosen", "passed", "refused", "not runnable", "error"
KNEE = 0.95  # a batch size within 5% of the best throughput is as good as the best


@dataclass(frozen=True)
class Fidelity:
    """A candidate's agreement with fp32 eager on the held-out images."""

    top1_agreement: float
    max_rel_error: float
    nonfinite: int
    passed: bool
    samples: int = 0
    failures: tuple[str, ...] = ()

    @classmethod
    def from_verdict(cls, verdict: Verdict, extra_failures: Sequence[str] = ()) -> Fidelity:
        c = verdict.comparison
        failures = (*verdict.failures, *extra_failures)
        return cls(round(c.top1_agreement, 6), round(c.max_rel_error, 6), c.nonfinite, not failures, c.samples,
                   tuple(failures))

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "failures": list(self.failures)}


@dataclass
class CandidateResult:
    """One candidate at one resolution, as optimize.json records it."""

    backend: str
    precision: str
    variant: str = ""
    deployable: bool = True
    path: str | None = None
    fidelity: Fidelity | None = None
    latency_ms: dict[str, float] | None = None  # batch 1: {"p50", "p99"}
    throughput_img_s: float | None = None  # best images/s over the batch sweep
    verdict: str = ""
    reason: str = ""
    build_s: float | None = None
    profile: dict[str, Any] = field(default_factory=dict)  # p90, n, windows, stability, {batch: img/s} curve
    notes: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"{self.backend} {self.precision}" + (f" ({self.variant})" if self.variant else "")

    @property
    def passed(self) -> bool:
        return self.fidelity is not None and self.fidelity.passed

    @property
    def measured(self) -> bool:
        return self.latency_ms is not None and self.throughput_img_s is not None

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["fidelity"] = None if self.fidelity is None else self.fidelity.to_dict()
        out["name"] = self.name
        return out


def score(result: CandidateResult, objective: str) -> float:
    """Lower is better: batch-1 p50 ms (latency) or minus the best images/s (throughput)."""
    if objective == "latency":
        assert result.latency_ms is not None
        return result.latency_ms["p50"]
    if objective == "throughput":
        assert result.throughput_img_s is not None
        return -result.throughput_img_s
    raise ValueError(f"unknown objective {objective!r}")


def eligible(result: CandidateResult) -> bool:
    return result.passed and result.measured and result.deployable


def choose(results: Sequence[CandidateResult], objective: str) -> CandidateResult | None:
    """The fastest eligible candidate for ``objective`` (see the module docstring), or None."""
    best: CandidateResult | None = None
    for result in results:
        if eligible(result) and (best is None or score(result, objective) < score(best, objective)):
            best = result
    return best


def assign_verdicts(results: Sequence[CandidateResult], chosen: CandidateResult | None, objective: str) -> None:
    """``chosen`` / ``passed`` (with how much slower, or why it cannot be deployed) on every checked result."""
    for result in results:
        if result.verdict in (REFUSED, NOT_RUNNABLE, ERROR):
            continue
        if result is chosen:
            result.verdict, result.reason = CHOSEN, f"fastest passing candidate for {objective}"
            continue
        result.verdict = PASSED
        if not result.deployable:
            result.reason = "runs in-process only: a Triton repository here holds ONNX Runtime, OpenVINO or TensorRT"
        elif not result.measured:
            result.reason = "not profiled"
        elif chosen is not None:
            ratio = score(result, objective) / score(chosen, objective)
            what = "p50" if objective == "latency" else "images/s"
            value = ratio if objective == "latency" else 1 / ratio
            result.reason = f"{what} {value:.2f}x the chosen {chosen.name}"


def preferred_batch_sizes(curve: Mapping[int, float], knee: float = KNEE) -> list[int]:
    """Triton's preferred batch sizes from a measured {batch: images/s} curve: the smallest batch that reaches
    ``knee`` of the best throughput, and the batch of the best throughput itself."""
    if not curve:
        return []
    best_batch = max(curve, key=lambda b: (curve[b], -b))
    peak = curve[best_batch]
    first = min(b for b, value in curve.items() if value >= knee * peak)
    return sorted({first, best_batch})


def queue_delay_us(objective: str, batch1_p50_ms: float) -> int:
    """Dynamic batcher delay: none for latency (batch what is already queued), a quarter of one batch-1
    inference for throughput (enough to gather concurrent requests, small against their latency)."""
    return 0 if objective == "latency" else int(round(batch1_p50_ms * 250))


def instance_count(cores: int, threads: int) -> int:
    """Model instances that fit the cores without oversubscribing them (each runs ``threads`` threads)."""
    return max(1, cores // max(1, threads))


__all__ = ["CHOSEN", "ERROR", "NOT_RUNNABLE", "PASSED", "REFUSED", "CandidateResult", "Fidelity", "assign_verdicts",
           "choose", "eligible", "instance_count", "preferred_batch_sizes", "queue_delay_us", "score"]
