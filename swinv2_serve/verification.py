"""One way to compare a model's outputs with a reference: ``compare`` -> ``Comparison``, judged by a ``Tolerance``.

Every hop that checks numbers uses it: ONNX vs eager at export, TensorRT engines vs ONNX Runtime, OpenVINO
bf16/int8 vs fp32 (the fidelity gate), and the benchmark's reduced-precision rows. A ``Verdict`` keeps the
measurement, the bounds and the reasons it failed, so every stage reports a refusal the same way.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import numpy as np

from .errors import SwinV2ServeError

log = logging.getLogger(__name__)

# The fidelity gate of reduced precisions: top-1 agreement with fp32 of the same model on a check set.
FIDELITY_THRESHOLD = 0.99
FIDELITY_MODES = ("refuse", "warn", "off")


class FidelityError(SwinV2ServeError):
    """A reduced precision whose outputs disagree with fp32 too often to serve."""


@dataclass(frozen=True)
class Comparison:
    """How ``candidate`` logits differ from ``reference`` logits on the same inputs."""

    samples: int
    max_abs_diff: float  # max over everything of |candidate - reference| (inf where the candidate is not finite)
    max_rel_error: float  # max over samples of max|candidate - reference| / max|reference|
    top1_agreement: float  # share of samples whose argmax agrees
    nonfinite: int  # NaN/Inf values in the candidate
    reference_scale: float  # max |reference|

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def compare(reference: np.ndarray, candidate: np.ndarray) -> Comparison:
    """Logits [N, C] of a reference and a candidate on the same N inputs."""
    ref = np.asarray(reference, dtype=np.float64)
    got = np.asarray(candidate, dtype=np.float64)
    if ref.shape != got.shape or ref.ndim != 2:
        raise SwinV2ServeError(f"cannot compare logits of shapes {list(ref.shape)} and {list(got.shape)}")
    if not len(ref):
        return Comparison(0, 0.0, 0.0, 1.0, 0, 0.0)
    diff = np.abs(np.nan_to_num(got, nan=np.inf, posinf=np.inf, neginf=np.inf) - ref)
    per_sample_scale = np.maximum(np.abs(ref).max(axis=1), 1e-12)
    return Comparison(
        samples=len(ref),
        max_abs_diff=float(diff.max()),
        max_rel_error=float((diff.max(axis=1) / per_sample_scale).max()),
        top1_agreement=float((got.argmax(1) == ref.argmax(1)).mean()),
        nonfinite=int((~np.isfinite(got)).sum()),
        reference_scale=float(np.abs(ref).max()),
    )


@dataclass(frozen=True)
class Tolerance:
    """Bounds a comparison must keep; the defaults bound nothing but NaN/Inf, which always fail.

    ``atol`` + ``rtol`` bound the largest absolute difference relative to the reference's largest logit
    (``max_abs_diff <= atol + rtol * reference_scale``); ``max_rel_error`` bounds the worst sample.
    """

    atol: float = math.inf
    rtol: float = 0.0
    max_rel_error: float = math.inf
    min_top1: float = 0.0

    def abs_limit(self, reference_scale: float) -> float:
        return self.atol + self.rtol * reference_scale

    def failures(self, c: Comparison) -> tuple[str, ...]:
        problems = []
        if c.nonfinite:
            problems.append(f"{c.nonfinite} NaN/Inf values")
        limit = self.abs_limit(c.reference_scale)
        if c.max_abs_diff > limit:
            problems.append(f"max |logit diff| {c.max_abs_diff:.3g} > {limit:.3g}")
        if c.max_rel_error > self.max_rel_error:
            problems.append(f"max relative logit error {c.max_rel_error:.3g} > {self.max_rel_error:.3g}")
        if c.top1_agreement < self.min_top1:
            problems.append(f"top-1 agreement {c.top1_agreement:.1%} < {self.min_top1:.1%}")
        return tuple(problems)


def fidelity_tolerance(threshold: float = FIDELITY_THRESHOLD) -> Tolerance:
    """The reduced-precision gate: top-1 agreement with fp32 of at least ``threshold``, no NaN/Inf."""
    return Tolerance(min_top1=threshold)


@dataclass(frozen=True)
class Verdict:
    """A comparison judged against a tolerance: what was measured, the bounds, and why it failed."""

    what: str  # "onnxruntime vs eager", "bf16", "int8" ...
    comparison: Comparison
    tolerance: Tolerance
    failures: tuple[str, ...]
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        return not self.failures

    def summary(self) -> str:
        c = self.comparison
        text = (f"{self.what}: top-1 agreement {c.top1_agreement:.1%} on {c.samples} inputs, max |diff| "
                f"{c.max_abs_diff:.3g}, max relative error {c.max_rel_error:.3g}, {c.nonfinite} NaN/Inf")
        return text + (f" -> FAILED: {'; '.join(self.failures)}" if self.failures else " -> passed")

    def to_dict(self) -> dict[str, Any]:
        return {"what": self.what, **self.comparison.to_dict(), "tolerance": asdict(self.tolerance),
                "failures": list(self.failures), "passed": self.passed, "seconds": round(self.seconds, 3)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Verdict:
        """Inverse of ``to_dict``, judging the stored measurement again (a stored verdict is not trusted); also
        reads the int8 fidelity records of IRs quantized before it existed."""
        comparison_fields = Comparison.__dataclass_fields__
        if "tolerance" not in data:  # old: precision, samples, top1_agreement, max_rel_error, nonfinite, threshold
            tolerance = fidelity_tolerance(float(data["threshold"]))
            values = {k: data.get(k, 0.0) for k in comparison_fields}
            values.update(max_abs_diff=float("nan"), reference_scale=float("nan"))
            comparison = Comparison(**values)
            return cls(str(data.get("precision", "int8")), comparison, tolerance, tolerance.failures(comparison),
                       float(data.get("seconds", 0.0)))
        comparison = Comparison(**{k: data[k] for k in comparison_fields})
        tolerance = Tolerance(**data["tolerance"])
        return cls(str(data["what"]), comparison, tolerance, tolerance.failures(comparison),
                   float(data.get("seconds", 0.0)))


def judge(what: str, reference: np.ndarray, candidate: np.ndarray, tolerance: Tolerance,
          seconds: float = 0.0) -> Verdict:
    comparison = compare(reference, candidate)
    return Verdict(what, comparison, tolerance, tolerance.failures(comparison), seconds)


def run_batched(fn: Callable[[np.ndarray], np.ndarray], inputs: np.ndarray, batch: int) -> np.ndarray:
    """``fn`` over ``inputs`` in slices of ``batch`` (engines and IRs have a max batch), concatenated."""
    step = max(1, batch)
    return np.concatenate([fn(inputs[i:i + step]) for i in range(0, len(inputs), step)])


class Judged(Protocol):
    """A check that has been decided: a ``Verdict`` (agreement) or an ``AccuracyCheck`` (labels)."""

    @property
    def passed(self) -> bool: ...

    def summary(self) -> str: ...


def enforce(verdict: Judged, mode: str, source: str, remedy: str) -> None:
    """Apply a fidelity mode to a check: ``refuse`` raises ``FidelityError``, ``warn`` logs loudly."""
    if mode not in FIDELITY_MODES:
        raise SwinV2ServeError(f"fidelity must be one of {', '.join(FIDELITY_MODES)}, got {mode!r}")
    if verdict.passed or mode == "off":
        log.info("%s: %s", source, verdict.summary())
        return
    refuse_or_warn(f"{source}: {verdict.summary()}. {remedy}", mode)


def refuse_or_warn(message: str, mode: str) -> None:
    """A fidelity problem: ``FidelityError`` under ``refuse``, a loud warning under ``warn``."""
    if mode == "refuse":
        raise FidelityError(message)
    log.warning("LOW FIDELITY %s", message)


# -- accuracy against labels (the gate's second half when the check images have labels) -------------------------
@dataclass(frozen=True)
class AccuracyCheck:
    """Top-1 against labels of a reduced precision and of its fp32 reference on the same images.

    ``max_drop`` is the largest loss of top-1 (a fraction: 0.01 = one point) the user accepts; None measures only.
    """

    what: str
    samples: int
    reference_top1: float
    candidate_top1: float
    max_drop: float | None = None

    @property
    def drop(self) -> float:
        return self.reference_top1 - self.candidate_top1

    @property
    def passed(self) -> bool:
        return self.max_drop is None or self.drop <= self.max_drop + 1e-12

    def summary(self) -> str:
        limit = "" if self.max_drop is None else f", limit {100 * self.max_drop:.2f}"
        text = (f"{self.what}: top-1 {self.candidate_top1:.2%} vs fp32 {self.reference_top1:.2%} on {self.samples} "
                f"labelled images (drop {100 * self.drop:.2f} points{limit})")
        return text + ("" if self.passed else " -> FAILED: accuracy drops more than allowed")

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "drop": self.drop, "passed": self.passed}


def accuracy_check(what: str, reference: np.ndarray, candidate: np.ndarray, targets: np.ndarray,
                   max_drop: float | None = None) -> AccuracyCheck:
    """Logits [N, C] of fp32 and of a reduced precision, and the N class indices they should predict."""
    targets = np.asarray(targets)
    if max_drop is not None and not 0.0 <= max_drop <= 1.0:
        raise SwinV2ServeError(f"max accuracy drop is a fraction in [0, 1] (0.01 = one point), got {max_drop}")
    if not len(targets):
        raise SwinV2ServeError(f"{what}: no labelled images to measure accuracy on")
    return AccuracyCheck(what, len(targets), float((np.asarray(reference).argmax(1) == targets).mean()),
                         float((np.asarray(candidate).argmax(1) == targets).mean()), max_drop)
