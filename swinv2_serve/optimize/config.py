"""What ``optimize`` is asked: the model, the images, the objective and the limits (``OptimizeConfig``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..bench.candidates import ALL_CANDIDATES, COMPILE, CandidateSpec
from ..errors import SwinV2ServeError
from ..verification import FIDELITY_THRESHOLD

OBJECTIVES = ("latency", "throughput")
# run unless asked: everything but torch.compile, which compiles for minutes on a small CPU and has no
# Triton repository form (name it in --candidates to include it)
DEFAULT_CANDIDATES = tuple(spec for spec in ALL_CANDIDATES if spec.variant != COMPILE)


def parse_candidate(text: str) -> CandidateSpec:
    """``backend/precision[/variant]`` (``openvino/int8``, ``torch/fp32/compile``) as a known candidate."""
    parts = text.strip().lower().split("/")
    spec = CandidateSpec(*parts) if 2 <= len(parts) <= 3 else None
    if spec not in ALL_CANDIDATES:
        known = ", ".join(f"{s.backend}/{s.precision}" + (f"/{s.variant}" if s.variant else "") for s in ALL_CANDIDATES)
        raise SwinV2ServeError(f"unknown candidate {text!r}; choose from {known}")
    return spec  # type: ignore[return-value]


@dataclass
class OptimizeConfig:
    """One ``swinv2-serve optimize`` run."""

    images: Path
    output: Path
    model: str | None = None
    checkpoint: Path | None = None
    img_sizes: list[int] = field(default_factory=list)  # empty: the model's own resolution
    objective: str = "latency"
    max_batch: int = 8
    budget_s: float = 600.0  # wall clock for the whole run; profiling gets what building leaves
    threads: int | None = None  # per runtime (default: every usable core)
    fidelity_threshold: float = FIDELITY_THRESHOLD  # top-1 agreement with fp32 eager on the held-out images
    max_rel_error: float | None = None  # optional bound on reduced precisions' max relative logit error
    candidates: tuple[CandidateSpec, ...] = DEFAULT_CANDIDATES
    name: str = "swinv2"  # served model name (NAME_<img> when several resolutions)
    calibration: int = 300  # images to calibrate int8 on, at most
    check: int = 100  # held-out images for the fidelity check, at most (and at most a fifth)
    serve_check: bool = True  # start the embedded Triton on the repository and compare served logits
    overwrite: bool = False
    cooldown_ms: float = 50.0  # untimed pause before each timed call (see benchmarks/README.md)
    seed: int = 0
    progress: bool = True

    def validate(self) -> None:
        if self.model is None and self.checkpoint is None:
            raise SwinV2ServeError("give --model NAME and/or --checkpoint PATH")
        if self.objective not in OBJECTIVES:
            raise SwinV2ServeError(f"--objective must be one of {', '.join(OBJECTIVES)}, got {self.objective!r}")
        if not self.images.is_dir():
            raise SwinV2ServeError(f"--images {self.images}: not a directory of images")
        if self.max_batch < 1 or any(s < 1 for s in self.img_sizes):
            raise SwinV2ServeError("--max-batch and --img-size must be positive")
        if not 0.0 < self.fidelity_threshold <= 1.0:
            raise SwinV2ServeError(f"--fidelity-threshold must be in (0, 1], got {self.fidelity_threshold}")
        if self.budget_s <= 0:
            raise SwinV2ServeError("--budget-s must be positive")
        if not self.candidates:
            raise SwinV2ServeError("--candidates: nothing to try")
        if not self.name or any(c in self.name for c in "/\\ ") or self.name.startswith("."):
            raise SwinV2ServeError(f"--name {self.name!r} must be a plain model name (letters, digits, _ - .)")
        if self.output.exists() and any(self.output.iterdir()) and not self.overwrite:
            raise SwinV2ServeError(f"--output {self.output} exists and is not empty: pass --overwrite or another "
                                   "folder")

    def batches(self) -> list[int]:
        """1, 2, 4, ... up to ``max_batch`` (and ``max_batch`` itself)."""
        sizes, b = [], 1
        while b < self.max_batch:
            sizes.append(b)
            b *= 2
        return [*sizes, self.max_batch]
