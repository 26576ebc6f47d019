"""The paths a model can run on here, each built once from our ONNX (or the torch model) as a ``Runtime``.

``bench`` times them against timm's peers and ``optimize`` checks, profiles and chooses among them; both build
them here, so a path measured by one is the path the other deploys. A ``CandidateSpec`` names a path (backend,
precision, variant), ``candidate_unavailable_reason`` says why it cannot run on this machine, ``build_candidate``
makes it (export stage: int8 quantization, TensorRT engine) and loads it through ``runtime.load``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..checkpoint import save_checkpoint
from ..contract import BACKEND_PRECISIONS as RUNTIME_PRECISIONS
from ..machine import cpu_flags
from ..model import SwinV2
from ..openvino_int8 import INT8_RECIPES, quantize_int8
from ..runtime import Runtime, load
from ..runtime.openvino_backend import resolve_precision
from ..runtime.torch_backend import autocast_logits
from ..tensorrt_build import build_engine
from ..timing import Runner
from .results import BACKEND_PRECISIONS, OURS

COMPILE = "compile"  # torch.compile variant of the torch backend
AMX = "amx"  # openvino int8 with the recipe for AMX CPUs (openvino_int8.AMX_RECIPE)
REPOSITORY_BACKENDS = ("onnxruntime", "openvino", "tensorrt")  # what a Triton repository here can hold
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


@dataclass(frozen=True)
class CandidateSpec:
    """One way to run the model: backend, precision and an optional variant (``compile`` for torch)."""

    backend: str
    precision: str
    variant: str = ""

    @property
    def name(self) -> str:
        return f"{self.backend} {self.precision}" + (f" ({self.variant})" if self.variant else "")

    @property
    def deployable(self) -> bool:
        """Whether a Triton model repository can hold it (torch runs in-process only)."""
        return self.backend in REPOSITORY_BACKENDS

    @property
    def runner_impl(self) -> str:
        return f"{OURS}+{self.variant}" if self.variant else OURS


# every path optimize considers, in the order of preference on a tie: float before reduced, plain before compiled
ALL_CANDIDATES = (
    CandidateSpec("onnxruntime", "fp32"),
    CandidateSpec("openvino", "fp32"),
    CandidateSpec("openvino", "bf16"),
    CandidateSpec("openvino", "int8"),
    CandidateSpec("openvino", "int8", AMX),
    CandidateSpec("tensorrt", "fp32"),
    CandidateSpec("tensorrt", "fp16"),
    CandidateSpec("torch", "fp32"),
    CandidateSpec("torch", "bf16"),
    CandidateSpec("torch", "fp32", COMPILE),
)


@dataclass
class BuiltCandidate:
    """A candidate built and loaded: ``path`` is what ``runtime.load(path, backend=..., precision=...)`` loads."""

    spec: CandidateSpec
    runtime: Runtime
    path: Path | None
    build_s: float
    call: Callable[[np.ndarray], np.ndarray]  # x -> logits, the callable that is timed
    notes: dict[str, Any] = field(default_factory=dict)

    def logits(self, x: np.ndarray, batch: int = 8) -> np.ndarray:
        step = min(batch, self.runtime.max_batch or batch)
        return np.concatenate([self.call(x[i:i + step]) for i in range(0, len(x), step)])

    def runner(self) -> Runner:
        return Runner(self.spec.backend, self.spec.runner_impl, self.spec.precision, self.call, self.close)

    def close(self) -> None:
        self.runtime.close()


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
        return None if calibration is not None else \
            "openvino int8 needs --calibration DIR: images to calibrate the quantization on"
    if backend == "openvino" and resolve_precision(precision, openvino_caps)[0] != precision:
        return (f"this CPU has no {precision} support (OpenVINO CPU capabilities: "
                f"{', '.join(openvino_caps) or 'none'}; needs AVX512_BF16 or AMX): skipped, not run as fp32")
    return None


def candidate_unavailable_reason(spec: CandidateSpec, backend_reasons: Mapping[str, str | None],
                                 openvino_caps: Sequence[str], calibration: Path | None,
                                 flags: frozenset[str] | None = None) -> str | None:
    """Why ``spec`` cannot run on this machine, or None. ``backend_reasons``: ``runtime.available_backends()``."""
    reason = backend_reasons.get(spec.backend)
    if reason:
        return reason
    cpu = cpu_flags() if flags is None else flags
    if spec.variant == AMX and "amx_int8" not in cpu:
        return "the int8 recipe for AMX CPUs needs AMX-INT8, which this CPU does not have"
    if spec.backend == "torch":
        if spec.precision not in RUNTIME_PRECISIONS["torch"] or spec.precision == "fp16":
            return f"torch {spec.precision} on the CPU: fp16 autocast is for GPUs"
        if spec.precision == "bf16" and not any(f in cpu for f in BF16_CPU_FLAGS):
            return "this CPU has no bf16 instructions (AVX512_BF16 or AMX): torch bf16 autocast would be emulated"
        return None
    return precision_unavailable_reason(spec.backend, spec.precision, openvino_caps, calibration)


def _torch_call(runtime: Any, spec: CandidateSpec) -> Callable[[np.ndarray], np.ndarray]:
    forward = torch.compile(runtime.module) if spec.variant == COMPILE else runtime.module
    cpu = torch.device("cpu")
    return lambda x: autocast_logits(forward, x, spec.precision, cpu).numpy()


def build_candidate(
    spec: CandidateSpec,
    *,
    model: SwinV2 | None = None,
    onnx: Path | None = None,
    threads: int | None = None,
    workdir: Path | None = None,
    calibration: Path | None = None,
    max_batch: int = 32,
    int8: Mapping[str, Any] | None = None,
) -> BuiltCandidate:
    """Build ``spec`` once and load it.

    torch: ``model`` (already at the target geometry) in its deploy form; with ``workdir`` it is also saved as
    one of our checkpoints (its ``path``). onnxruntime / openvino fp32 and bf16: ``onnx`` itself (OpenVINO
    compiles the ONNX; no load-time check, the caller checks). openvino int8: ``quantize_int8`` on
    ``calibration`` into ``workdir``, with ``int8`` as its keyword arguments (default ``fidelity="warn"``: its own
    held-out check against OpenVINO fp32 is recorded in the IR, not enforced; the caller judges).
    tensorrt: ``build_engine`` into ``workdir`` with a ``[1, max_batch]`` profile.
    """
    start = time.perf_counter()
    backend, precision = spec.backend, spec.precision
    notes: dict[str, Any] = {}
    path: Path | None = None
    if backend == "torch":
        if model is None:
            raise ValueError("torch candidates need the model")
        runtime = load(model, "torch", precision=precision)
        call = _torch_call(runtime, spec)
        if workdir is not None:
            path = save_checkpoint(model, workdir / f"{_stem(onnx, model)}_torch.pt")
    else:
        if onnx is None:
            raise ValueError(f"{backend} needs our ONNX export")
        options: dict[str, Any] = {"threads": threads}
        if backend == "openvino" and precision == "int8":
            if calibration is None or workdir is None:
                raise ValueError("openvino int8 needs calibration images and a workdir")
            suffix = f"_{spec.variant}" if spec.variant else ""
            result = quantize_int8(onnx, calibration, workdir / f"{onnx.stem}_int8{suffix}.xml",
                                   **{"fidelity": "warn", "threads": threads, "recipe": INT8_RECIPES[spec.variant],
                                      **(int8 or {})})
            path = result.xml
            notes["int8_check_vs_openvino_fp32"] = result.report.to_dict()
            notes["int8_batch1_ms"] = {"fp32": round(result.speed.fp32_ms, 2), "int8": round(result.speed.int8_ms, 2)}
            options.update(hint="latency", fidelity="off")  # the record is in the IR; the caller judges
        elif backend == "tensorrt":
            if workdir is None:
                raise ValueError("tensorrt needs a workdir for its engine")
            path = workdir / f"{onnx.stem}_{precision}.plan"
            build_engine(onnx, path, precision=precision, max_batch=max_batch, progress=False)
            options = {}
        else:
            path = onnx
            options["precision"] = precision
            if backend == "openvino":
                options.update(hint="latency", fidelity="off")
        runtime = load(path, backend, **options)
        if runtime.precision != precision:  # resolve_precision fell back: never time fp32 under a bf16 label
            runtime.close()
            raise ValueError(f"{backend} runs {runtime.precision}, not the requested {precision}")
        call = _runtime_call(runtime)
    return BuiltCandidate(spec, runtime, path, time.perf_counter() - start, call, notes)


def _runtime_call(runtime: Runtime) -> Callable[[np.ndarray], np.ndarray]:
    return lambda x: runtime(x)["logits"]


def _stem(onnx: Path | None, model: SwinV2) -> str:
    return onnx.stem if onnx is not None else f"{model.cfg.name}_{model.cfg.img_size[0]}"


__all__ = ["ALL_CANDIDATES", "AMX", "COMPILE", "REPOSITORY_BACKENDS", "BuiltCandidate", "CandidateSpec",
           "build_candidate", "candidate_unavailable_reason", "precision_unavailable_reason"]
