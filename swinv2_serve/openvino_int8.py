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
from .evaluate import folder_targets, read_images
from .labels import labels_for
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
from .verification import (
    FIDELITY_THRESHOLD,
    AccuracyCheck,
    Verdict,
    accuracy_check,
    enforce,
    fidelity_tolerance,
    judge,
    run_batched,
)

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
    check_files: tuple[Path, ...] = ()  # the files of ``check`` (their class folders label them, if any)


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
    accuracy: AccuracyCheck | None = None  # int8 vs fp32 top-1 against labels, when the check images have them


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
    arrays, kept, unreadable = read_images(shuffled, preprocess)
    n_check = min(check, len(arrays) // 5)
    n_calibration = min(calibration, len(arrays) - n_check)
    if n_check < MIN_CHECK or n_calibration < MIN_CALIBRATION:
        raise DatasetError(
            f"calibration images: {len(arrays)} readable images under {root} ({len(unreadable)} unreadable); "
            f"int8 needs at least {MIN_CALIBRATION} to calibrate and {MIN_CHECK} held out to check fidelity "
            f"(>= {MIN_CALIBRATION + MIN_CHECK} and a fifth held out: give {5 * MIN_CHECK} or more images like the "
            "ones you will serve)")
    return CalibrationSet(calibration=arrays[n_check:n_check + n_calibration], check=arrays[:n_check],
                          unreadable=tuple(unreadable), check_files=tuple(kept[:n_check]))


def check_targets(images: str | os.PathLike, data: CalibrationSet, class_names: list[str],
                  max_accuracy_drop: float | None) -> np.ndarray | None:
    """Class index per held-out image (-1: unlabelled) when folders under ``images`` name the model's classes;
    None without labels, which a requested accuracy gate refuses."""
    targets = folder_targets(images, data.check_files, class_names) if data.check_files else None
    if targets is not None and (targets >= 0).any():
        return targets
    if max_accuracy_drop is not None:
        raise DatasetError(f"an accuracy gate needs labelled check images: no folder under {images} names a class "
                           f"of the model (like {', '.join(class_names[:3])}); drop the limit or label the images")
    return None


def _reads_constant(output: Any) -> bool:
    node = output.get_node()
    while node.get_type_name() in _PASS_THROUGH and node.get_input_size():
        node = node.input_value(0).get_node()
    return node.get_type_name() == "Constant"


def activation_matmuls(model: Any) -> list[str]:
    """MatMuls whose operands are both activations (the attention products): they stay in float."""
    return [op.get_friendly_name() for op in model.get_ordered_ops() if op.get_type_name() == "MatMul"
            and not any(_reads_constant(op.input_value(i)) for i in range(2))]


def _after_softmax(output: Any) -> bool:
    node = output.get_node()
    while node.get_type_name() in _PASS_THROUGH and node.get_input_size():
        node = node.input_value(0).get_node()
    return node.get_type_name() == "Softmax"


def attention_matmuls(model: Any) -> tuple[list[str], list[str]]:
    """The attention products split in two: the scores (q.k^T, the query scaled by the logit scale) and the
    value products (softmax(...).v)."""
    names = set(activation_matmuls(model))
    values = [op.get_friendly_name() for op in model.get_ordered_ops()
              if op.get_friendly_name() in names and _after_softmax(op.input_value(0))]
    return sorted(names - set(values)), values


def _producer(output: Any) -> Any:
    node = output.get_node()
    while node.get_type_name() in _PASS_THROUGH and node.get_input_size():
        node = node.input_value(0).get_node()
    return node


def _is_gelu(node: Any, depth: int = 3) -> bool:
    """GELU, as one op or as ONNX opset 17 exports it (x * 0.5 * (1 + erf(x / sqrt 2)), ending in a Multiply)."""
    if node.get_type_name() in ("Gelu", "Erf"):
        return True
    if depth == 0 or node.get_type_name() not in ("Multiply", "Add"):
        return False
    return any(_is_gelu(node.input_value(i).get_node(), depth - 1) for i in range(node.get_input_size()))


def linear_layers(model: Any) -> dict[str, list[str]]:
    """The linear layers (MatMuls with a constant weight) by what they read: ``proj`` the attention output,
    ``fc2`` the GELU, ``stream`` everything else (qkv and fc1 read the residual stream, merging its gather)."""
    out: dict[str, list[str]] = {"proj": [], "fc2": [], "stream": []}
    for op in model.get_ordered_ops():
        if op.get_type_name() != "MatMul" or not _reads_constant(op.input_value(1)):
            continue
        source = _producer(op.input_value(0))
        if source.get_type_name() == "MatMul" and not any(_reads_constant(source.input_value(i)) for i in range(2)):
            kind = "proj"
        elif _is_gelu(source):
            kind = "fc2"
        else:
            kind = "stream"
        out[kind].append(op.get_friendly_name())
    return out


def linear_channels(model: Any) -> dict[str, int]:
    """Linear layer -> the smaller of its input and output channel counts (from its weight's shape)."""
    out = {}
    for op in model.get_ordered_ops():
        if op.get_type_name() == "MatMul" and _reads_constant(op.input_value(1)):
            shape = op.input_value(1).get_partial_shape()
            if shape.rank.is_static and all(d.is_static for d in shape):
                out[op.get_friendly_name()] = min(d.get_length() for d in list(shape)[-2:])
    return out


ATTENTION = ("float", "values", "int8")  # attention products left in float: both, only q.k^T, none
FLOAT_LINEARS = ("proj", "fc2")  # linear layers that may be left in float


@dataclass(frozen=True)
class Int8Recipe:
    """What NNCF quantizes beyond the linear layers, and for which CPU (benchmarks/OPTIMIZE.md measured each).

    ``attention``: ``float`` keeps both attention products in float; ``values`` quantizes softmax(...).v (its
    operands are probabilities in [0, 1] and values) and keeps q.k^T in float (the query carries the logit
    scale, up to 100, which would amplify int8 rounding before the softmax); ``int8`` quantizes both.
    ``float_linears``: linear layers left in float by what they read (``proj``: the attention output, ``fc2``: the
    GELU); ``float_stages``: every linear layer of the first N stages left in float (found by width: stage i is
    2**i times as wide as stage 0; a head narrower than that, e.g. 10 classes, stays float too).
    ``target_device``: NNCF's ``TargetDevice`` (``CPU_SPR`` also quantizes Multiply and drops one of two
    quantizers before an Add, for AMX CPUs). ``preset``: None = NNCF's transformer default (mixed: asymmetric
    activations), or ``performance`` (symmetric activations).
    """

    attention: str = "float"
    float_linears: tuple[str, ...] = ()
    float_stages: int = 0  # linear layers of the first N stages (the narrowest widths) stay float
    target_device: str = "ANY"
    preset: str | None = None

    def __post_init__(self) -> None:
        if self.attention not in ATTENTION:
            raise SwinV2ServeError(f"attention must be one of {', '.join(ATTENTION)}, got {self.attention!r}")
        bad = [k for k in self.float_linears if k not in FLOAT_LINEARS]
        if bad:
            raise SwinV2ServeError(f"float_linears must be among {', '.join(FLOAT_LINEARS)}, got {bad}")

    def ignored(self, model: Any) -> list[str]:
        scores, values = attention_matmuls(model)
        names = {"float": scores + values, "values": scores, "int8": []}[self.attention]
        linears = linear_layers(model)
        names += [name for kind in self.float_linears for name in linears[kind]]
        if self.float_stages:  # stage i is 2**i times as wide as stage 0, whose width its proj layers have
            channels = linear_channels(model)
            widths = [channels[name] for name in linears["proj"] if name in channels] or list(channels.values())
            limit = min(widths, default=0) * 2**self.float_stages
            names += [name for name, width in channels.items() if width < limit]
        return sorted(set(names))

    def to_dict(self) -> dict[str, Any]:
        return {"attention": self.attention, "float_linears": list(self.float_linears),
                "float_stages": self.float_stages, "target_device": self.target_device, "preset": self.preset}


DEFAULT_RECIPE = Int8Recipe()
# AMX CPUs (Sapphire Rapids and later), measured in benchmarks/OPTIMIZE.md: AMX-bf16 runs the narrow stage-1/2
# linear layers (96/192 channels, activation-bound) faster than their int8 kernels with the requantization around
# them; int8 on the attention output projection makes OpenVINO run softmax.v in f32 and requantize its output;
# symmetric activations skip the zero-point compensation
AMX_RECIPE = Int8Recipe(float_linears=("proj",), float_stages=2, preset="performance")
INT8_RECIPES = {"": DEFAULT_RECIPE, "amx": AMX_RECIPE}  # optimize's openvino int8 candidates, by variant


def resolve_overflow_fix(choice: str, has_vnni: bool) -> str:
    """``auto`` -> ``first-layer`` on a VNNI CPU, else ``enable``; the other choices as given."""
    if choice not in OVERFLOW_FIX:
        raise SwinV2ServeError(f"overflow fix must be one of {', '.join(OVERFLOW_FIX)}, got {choice!r}")
    if choice == "auto":
        return "first-layer" if has_vnni else "enable"
    return choice


def quantize_model(model: Any, calibration: np.ndarray, overflow_fix: str = "auto",
                   recipe: Int8Recipe = DEFAULT_RECIPE) -> Any:
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
        target_device=nncf.TargetDevice[recipe.target_device],
        preset=None if recipe.preset is None else nncf.QuantizationPreset[recipe.preset.upper()],
        ignored_scope=nncf.IgnoredScope(names=recipe.ignored(model), validate=False),
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
    max_accuracy_drop: float | None = None,
    recipe: Int8Recipe = DEFAULT_RECIPE,
) -> Int8Result:
    """Our ONNX (or fp32 IR) -> int8 IR at ``output`` (.xml + .bin), calibrated on ``images``, fidelity-gated.

    When the held-out images sit in folders named like the model's classes, int8's top-1 against those labels is
    measured beside fp32's and recorded; ``max_accuracy_drop`` (a fraction: 0.01 = one point) refuses a larger
    loss, in addition to the agreement gate (and needs labelled images).
    """
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
    targets = check_targets(images, data, labels_for(metadata), max_accuracy_drop)
    log.info("int8: calibrating on %d images, %d held out for the fidelity check", len(data.calibration),
             len(data.check))
    quantized = quantize_model(dynamic_batch(model), data.calibration, overflow_fix, recipe)
    float_precision = float_precision_for_int8(cpu_capabilities(core))
    reference = core.compile_model(model, DEVICE, compile_properties("fp32", "latency", threads, None))
    candidate = core.compile_model(quantized, DEVICE, compile_properties(float_precision, "latency", threads, None))
    start = time.perf_counter()
    ref = run_batched(lambda x: reference(x)["logits"], data.check, 8)
    got = run_batched(lambda x: candidate(x)["logits"], data.check, 8)
    report = judge("int8", ref, got, fidelity_tolerance(threshold), time.perf_counter() - start)
    enforce(report, fidelity, f"{output.name} (int8, checked on {len(data.check)} held-out images)", FIDELITY_REMEDY)
    accuracy = None
    if targets is not None:
        labelled = targets >= 0
        accuracy = accuracy_check("int8", ref[labelled], got[labelled], targets[labelled], max_accuracy_drop)
        enforce(accuracy, fidelity, f"{output.name} (int8 vs fp32 against labels)", FIDELITY_REMEDY)
    speed = check_latency(reference, candidate, data.check[:1])
    if speed.ratio >= 1.0:
        log.warning("int8 is not faster than fp32 on this CPU (%s%s): serve the fp32 model here, or the "
                    "int8 IR on CPUs with VNNI/AMX", speed.summary(), "" if has_vnni else "; it has no VNNI")
    write_model_metadata(quantized, metadata)
    quantized.set_rt_info(json.dumps({
        "fidelity": report.to_dict(), "check_set": "held-out calibration images",
        "calibration_images": len(data.calibration), "smooth_quant": False,
        "attention_products": {"float": "float", "values": "q.k^T float, softmax.v int8", "int8": "int8"}[
            recipe.attention], "recipe": recipe.to_dict(),
        "overflow_fix": overflow_fix, "checked_on": {"cpu": core.get_property(DEVICE, "FULL_DEVICE_NAME"),
                                                     "vnni": has_vnni, "float_precision": float_precision,
                                                     "batch1_ms": {"fp32": round(speed.fp32_ms, 2),
                                                                   "int8": round(speed.int8_ms, 2)}},
        "nncf": getattr(require_nncf(), "__version__", "unknown"),
        **({"accuracy": accuracy.to_dict()} if accuracy is not None else {}),
    }), [INT8_KEY])
    output.parent.mkdir(parents=True, exist_ok=True)
    ov.save_model(quantized, os.fspath(output), compress_to_fp16=False)
    return Int8Result(xml=output, report=report, calibration_images=len(data.calibration),
                      seconds=time.perf_counter() - started, speed=speed, accuracy=accuracy)


__all__ = ["OVERFLOW_FIX", "CalibrationSet", "Int8Result", "LatencyCheck", "activation_matmuls", "check_latency",
           "check_targets", "load_calibration_set", "quantize_int8", "quantize_model", "resolve_overflow_fix"]
