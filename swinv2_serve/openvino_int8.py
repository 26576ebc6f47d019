"""int8 for the OpenVINO backend: post-training quantization with NNCF, calibrated and checked on real images.

``quantize_int8(model.onnx, images_dir, model_int8.xml)`` writes an OpenVINO IR whose linear layers run int8
(``FakeQuantize`` on their inputs and weights; the CPU plugin executes them with VNNI/AMX int8 kernels).
The images are the user's: quantization ranges come from them, and a held-out part of them is the
fidelity check. Nothing is written unless the int8 model's top-1 agrees with the fp32 model's on at
least 99% of the held-out images (``fidelity="warn"`` writes it anyway and says so loudly).

Choices, each measured on SwinV2-T/256 here (benchmarks/OPENVINO.md):

- SmoothQuant is off. It migrates activation outliers into the weights, but SwinV2's linear layers read
  the raw residual stream (res-post-norm: no LayerNorm before qkv/fc1), and with it the max relative
  logit error was 0.38-0.55 against 0.045 without.
- The two attention products (q.k^T and attn.v, both operands activations) stay in floating point: the
  cosine similarities are multiplied by a logit scale of up to 100 before the softmax, so their int8
  rounding is amplified; they are < 3% of the FLOPs.
- Everything else follows NNCF's transformer preset (LayerNorm, softmax, GELU and residual adds in float).
- NNCF's overflow fix (weights on 7 of their 8 bits) is applied to every layer unless the quantizing CPU has
  VNNI (``overflow_fix="auto"``). Without VNNI the CPU plugin's int8 kernels sum pairs of u8*s8 products in
  saturating int16: on an AVX2 CPU here, NNCF's default (first layer only) agreed with fp32 on 70% of
  held-out images against 92.5% with the fix on every layer (max relative logit error 0.22 vs 0.078).
  The choice is recorded in the IR, and an IR quantized for a VNNI CPU is refused on a CPU without it,
  where its recorded fidelity does not hold (``--overflow-fix enable`` makes an IR for every x86 CPU).

The IR carries the package metadata (``rt_info["swinv2_serve"]``, as ``convert_to_ir`` writes it) and the
fidelity record (``rt_info["swinv2_serve_int8"]``), which ``OpenVINORuntime`` reads and enforces on load.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import BackendUnavailableError, DatasetError, SwinV2ServeError
from .machine import cpu_has_vnni
from .preprocess import Preprocess, image_files
from .runtime.openvino_backend import (
    DEVICE,
    FIDELITY_REMEDY,
    INT8_KEY,
    compile_properties,
    cpu_capabilities,
    dynamic_batch,
    float_precision_for_int8,
    is_quantized,
    read_model_metadata,
    require_openvino,
    write_model_metadata,
)
from .timing import Runner, measure
from .verification import FIDELITY_THRESHOLD, Verdict, enforce, fidelity_tolerance, judge, run_batched

log = logging.getLogger(__name__)

DEFAULT_CALIBRATION = 300  # NNCF's own default subset size
DEFAULT_CHECK = 100
MIN_CALIBRATION = 8
MIN_CHECK = 8
# "auto": the full fix unless this CPU has VNNI; "enable": every layer (IRs for any x86 CPU); "first-layer":
# NNCF's default, for fleets that all have VNNI/AMX
OVERFLOW_FIX = ("auto", "enable", "first-layer")
# nodes that pass a tensor through unchanged in value: looking through them finds a weight's Constant
_PASS_THROUGH = {"Convert", "Reshape", "Transpose", "Unsqueeze", "Squeeze"}


@dataclass(frozen=True)
class CalibrationSet:
    """Preprocessed images split into a calibration part and a disjoint held-out fidelity check part."""

    calibration: np.ndarray  # [N, 3, H, W]
    check: np.ndarray  # [M, 3, H, W]
    unreadable: tuple[str, ...]  # files skipped, with the reason


@dataclass(frozen=True)
class LatencyCheck:
    """Batch-1 median latency of the fp32 and int8 compiles on the quantizing CPU: a quick check that int8
    pays off here (without VNNI it may not), not a benchmark (``swinv2-serve bench`` is)."""

    fp32_ms: float
    int8_ms: float
    rounds: int

    @property
    def ratio(self) -> float:
        return self.int8_ms / self.fp32_ms

    def summary(self) -> str:
        return (f"batch 1: int8 {self.int8_ms:.1f} ms vs fp32 {self.fp32_ms:.1f} ms "
                f"({self.ratio:.2f}x, median of {self.rounds})")


@dataclass(frozen=True)
class Int8Result:
    xml: Path
    report: Verdict
    calibration_images: int
    seconds: float
    speed: LatencyCheck


def check_latency(reference: Callable[[np.ndarray], Any], candidate: Callable[[np.ndarray], Any], x: np.ndarray,
                  rounds: int = 7) -> LatencyCheck:
    """Median ms of ``rounds`` calls each, interleaved (``timing.measure``) so machine noise hits both alike."""
    runners = [Runner("openvino", "ours", "fp32", reference), Runner("openvino", "ours", "int8", candidate)]
    times = measure(runners, x, warmup=1, iters=rounds, min_iters=rounds, min_time=0.0, max_time=0.0).times_ms
    return LatencyCheck(fp32_ms=float(np.median(times[runners[0].key])),
                        int8_ms=float(np.median(times[runners[1].key])), rounds=rounds)


def require_nncf() -> Any:
    try:
        import nncf
    except ImportError as exc:
        raise BackendUnavailableError("int8 needs NNCF: pip install 'swinv2-serve[openvino]'") from exc
    return nncf


def load_calibration_set(images: str | os.PathLike, preprocess: Preprocess, *, calibration: int = DEFAULT_CALIBRATION,
                         check: int = DEFAULT_CHECK, seed: int = 0) -> CalibrationSet:
    """Every image under ``images`` (recursively), shuffled (seeded), split into check and calibration parts.

    The check part takes ``check`` images but never more than a fifth of them; the rest (up to
    ``calibration``) calibrates. Unreadable files are skipped and listed, not fatal.
    """
    root = Path(images)
    if not root.is_dir():
        raise DatasetError(f"calibration images: {root} is not a directory")
    files = image_files(root)
    shuffled = [files[i] for i in np.random.default_rng(seed).permutation(len(files))]
    arrays, unreadable = preprocess.batch_readable(shuffled)
    n_check = min(check, len(arrays) // 5)
    n_calibration = min(calibration, len(arrays) - n_check)
    if n_check < MIN_CHECK or n_calibration < MIN_CALIBRATION:
        raise DatasetError(
            f"calibration images: {len(arrays)} readable images under {root} ({len(unreadable)} unreadable); "
            f"int8 needs at least {MIN_CALIBRATION} to calibrate and {MIN_CHECK} held out to check fidelity "
            f"(>= {MIN_CALIBRATION + MIN_CHECK} and a fifth held out: give {5 * MIN_CHECK} or more images like the "
            "ones you will serve)")
    return CalibrationSet(calibration=arrays[n_check:n_check + n_calibration], check=arrays[:n_check],
                          unreadable=tuple(unreadable))


def _reads_constant(output: Any) -> bool:
    node = output.get_node()
    while node.get_type_name() in _PASS_THROUGH and node.get_input_size():
        node = node.input_value(0).get_node()
    return node.get_type_name() == "Constant"


def activation_matmuls(model: Any) -> list[str]:
    """MatMuls whose operands are both activations (the attention products): they stay in float."""
    return [op.get_friendly_name() for op in model.get_ordered_ops() if op.get_type_name() == "MatMul"
            and not any(_reads_constant(op.input_value(i)) for i in range(2))]


def resolve_overflow_fix(choice: str, has_vnni: bool) -> str:
    """``auto`` -> ``first-layer`` on a VNNI CPU, else ``enable``; the other choices as given."""
    if choice not in OVERFLOW_FIX:
        raise SwinV2ServeError(f"overflow fix must be one of {', '.join(OVERFLOW_FIX)}, got {choice!r}")
    if choice == "auto":
        return "first-layer" if has_vnni else "enable"
    return choice


def quantize_model(model: Any, calibration: np.ndarray, overflow_fix: str = "auto") -> Any:
    """NNCF post-training quantization of any SwinV2 ``ov.Model`` (ours, or timm's export for a fair peer)
    with this module's settings; ``calibration``: preprocessed images [N, 3, H, W], fed one at a time."""
    nncf = require_nncf()
    from nncf.quantization.advanced_parameters import (
        AdvancedQuantizationParameters,
        AdvancedSmoothQuantParameters,
        OverflowFix,
    )

    if overflow_fix == "auto":
        overflow_fix = resolve_overflow_fix(overflow_fix, cpu_has_vnni())
    fix = {"enable": OverflowFix.ENABLE, "first-layer": OverflowFix.FIRST_LAYER}[overflow_fix]
    name = model.input(0).get_any_name()
    return nncf.quantize(
        model,
        nncf.Dataset(list(calibration), lambda x: {name: x[None]}),
        subset_size=len(calibration),
        model_type=nncf.ModelType.TRANSFORMER,
        ignored_scope=nncf.IgnoredScope(names=activation_matmuls(model), validate=False),
        advanced_parameters=AdvancedQuantizationParameters(
            overflow_fix=fix,
            smooth_quant_alphas=AdvancedSmoothQuantParameters(matmul=-1)),  # -1: off (see module docstring)
    )


def quantize_int8(
    source: str | os.PathLike,
    images: str | os.PathLike,
    output: str | os.PathLike,
    *,
    calibration: int = DEFAULT_CALIBRATION,
    check: int = DEFAULT_CHECK,
    fidelity: str = "refuse",
    threshold: float = FIDELITY_THRESHOLD,
    threads: int | None = None,
    seed: int = 0,
    overflow_fix: str = "auto",
) -> Int8Result:
    """Our ONNX (or fp32 IR) -> int8 IR at ``output`` (.xml + .bin), calibrated on ``images``, fidelity-gated."""
    ov = require_openvino()
    source, output = Path(source), Path(output)
    if output.suffix != ".xml":
        raise SwinV2ServeError(f"int8 output must be an OpenVINO IR path ending in .xml, got {output}")
    has_vnni = cpu_has_vnni()
    overflow_fix = resolve_overflow_fix(overflow_fix, has_vnni)
    started = time.perf_counter()
    core = ov.Core()
    model = core.read_model(os.fspath(source))
    if is_quantized(model):
        raise SwinV2ServeError(f"{source} is already quantized: quantize the fp32 ONNX it came from")
    metadata = read_model_metadata(model, source)
    data = load_calibration_set(images, Preprocess.from_metadata(metadata), calibration=calibration, check=check,
                                seed=seed)
    for line in data.unreadable:
        log.warning("calibration: skipped %s", line)
    log.info("int8: calibrating on %d images, %d held out for the fidelity check", len(data.calibration),
             len(data.check))
    quantized = quantize_model(dynamic_batch(model), data.calibration, overflow_fix)
    float_precision = float_precision_for_int8(cpu_capabilities(core))
    reference = core.compile_model(model, DEVICE, compile_properties("fp32", "latency", threads, None))
    candidate = core.compile_model(quantized, DEVICE, compile_properties(float_precision, "latency", threads, None))
    start = time.perf_counter()
    ref = run_batched(lambda x: reference(x)["logits"], data.check, 8)
    got = run_batched(lambda x: candidate(x)["logits"], data.check, 8)
    report = judge("int8", ref, got, fidelity_tolerance(threshold), time.perf_counter() - start)
    enforce(report, fidelity, f"{output.name} (int8, checked on {len(data.check)} held-out images)", FIDELITY_REMEDY)
    speed = check_latency(reference, candidate, data.check[:1])
    if speed.ratio >= 1.0:
        log.warning("int8 is not faster than fp32 on this CPU (%s%s): serve the fp32 model here, or the "
                    "int8 IR on CPUs with VNNI/AMX", speed.summary(), "" if has_vnni else "; it has no VNNI")
    write_model_metadata(quantized, metadata)
    quantized.set_rt_info(json.dumps({
        "fidelity": report.to_dict(), "check_set": "held-out calibration images",
        "calibration_images": len(data.calibration), "smooth_quant": False, "attention_products": "float",
        "overflow_fix": overflow_fix, "checked_on": {"cpu": core.get_property(DEVICE, "FULL_DEVICE_NAME"),
                                                     "vnni": has_vnni, "float_precision": float_precision,
                                                     "batch1_ms": {"fp32": round(speed.fp32_ms, 2),
                                                                   "int8": round(speed.int8_ms, 2)}},
        "nncf": getattr(require_nncf(), "__version__", "unknown"),
    }), [INT8_KEY])
    output.parent.mkdir(parents=True, exist_ok=True)
    ov.save_model(quantized, os.fspath(output), compress_to_fp16=False)
    return Int8Result(xml=output, report=report, calibration_images=len(data.calibration),
                      seconds=time.perf_counter() - started, speed=speed)


__all__ = ["OVERFLOW_FIX", "CalibrationSet", "Int8Result", "LatencyCheck", "activation_matmuls", "check_latency",
           "load_calibration_set", "quantize_int8", "quantize_model", "resolve_overflow_fix"]
