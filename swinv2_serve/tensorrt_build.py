"""ONNX -> TensorRT engine (.plan) with the TensorRT 10 Python API, plus its JSON sidecar.

One optimisation profile per engine over the batch axis (H and W are fixed per resolution). FP16
engines keep SwinV2's numerically fragile parts in FP32:

* from our fp16 ONNX (explicit Casts around the q/k L2-normalisation, LayerNorm and softmax) the
  network is built *strongly typed*: TensorRT runs every tensor in the type the ONNX gives it;
* from an fp32 ONNX, ``BuilderFlag.FP16`` plus ``OBEY_PRECISION_CONSTRAINTS`` with Normalization,
  Softmax and Reduce layers (and the square / sqrt around a reduction) pinned to FP32.

Beside each ``model.plan`` a ``model.plan.json`` records what the engine is bound to (TensorRT
version, GPU name and compute capability), its batch profile, I/O tensors, build flags and the
ONNX's ``swinv2_serve`` metadata, so the runtime and the Triton repository writer need nothing else.
Everything that needs no GPU (profiles, sidecar, compatibility rules, CLI options) is a pure function.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import BackendUnavailableError, ExportError, SwinV2ServeError
from .runtime import INPUT_NAME, OUTPUT_NAMES, read_onnx_metadata

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "fp16")
SIDECAR_FORMAT = 1
NGC_HINT = (
    "TensorRT needs an NVIDIA GPU: run this in nvcr.io/nvidia/tensorrt:<release>-py3 with --gpus all "
    "(the release of your Triton serving container; see export/README.md)"
)


class EngineCompatibilityError(SwinV2ServeError, RuntimeError):
    """An engine built for another TensorRT version or GPU."""


# -- batch profile -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class BatchProfile:
    """The optimisation profile's batch range: TensorRT tunes kernels for ``opt``, accepts min..max."""

    min: int
    opt: int
    max: int

    def shapes(self, chw: Sequence[int]) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
        """(min, opt, max) input shapes for ``profile.set_shape``."""
        chw = tuple(int(d) for d in chw)
        return (self.min, *chw), (self.opt, *chw), (self.max, *chw)


def default_opt_batch(min_batch: int, max_batch: int) -> int:
    """Half the max batch rounded down to a power of two (the size a dynamic batcher mostly forms)."""
    half = max(1, max_batch // 2)
    return max(min_batch, 1 << (half.bit_length() - 1))


def batch_profile(min_batch: int = 1, opt_batch: int | None = None, max_batch: int = 32) -> BatchProfile:
    """Validated batch profile: 1 <= min <= opt <= max."""
    for what, value in (("min batch", min_batch), ("max batch", max_batch), ("opt batch", opt_batch)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, np.integer))):
            raise SwinV2ServeError(f"{what} must be an integer, got {value!r}")
    if min_batch < 1:
        raise SwinV2ServeError(f"min batch must be >= 1, got {min_batch}")
    if max_batch < min_batch:
        raise SwinV2ServeError(f"max batch {max_batch} is smaller than min batch {min_batch}")
    opt = default_opt_batch(min_batch, max_batch) if opt_batch is None else opt_batch
    if not min_batch <= opt <= max_batch:
        raise SwinV2ServeError(f"opt batch {opt} must lie between min batch {min_batch} and max batch {max_batch}")
    return BatchProfile(int(min_batch), int(opt), int(max_batch))


def check_precision(precision: str) -> str:
    if precision == "int8":
        raise SwinV2ServeError("precision int8 is not supported (it needs a calibration set): use fp16 or fp32")
    if precision not in PRECISIONS:
        raise SwinV2ServeError(f"unknown precision {precision!r}: use one of {', '.join(PRECISIONS)}")
    return precision


def resolve_strongly_typed(precision: str, onnx_fp16: bool, requested: bool | None) -> bool:
    """Whether to build a strongly typed network; refuses combinations that cannot give ``precision``.

    A strongly typed network runs the ONNX's own types, so it gives FP16 only from an fp16 ONNX.
    """
    check_precision(precision)
    if precision == "fp32" and onnx_fp16:
        raise SwinV2ServeError("this ONNX was exported in fp16: build it with --precision fp16, or export fp32")
    if requested is None:
        return onnx_fp16
    if requested and precision == "fp16" and not onnx_fp16:
        raise SwinV2ServeError(
            "a strongly typed network runs the ONNX's own types and this ONNX is fp32, so the engine would be fp32: "
            "export the ONNX with fp16, or build without --strongly-typed (FP16 flag + FP32 islands)"
        )
    return requested


# -- sidecar -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int, ...]  # -1 = dynamic (the batch axis)
    dtype: str  # numpy name: float32, float16

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TensorSpec:
        return cls(str(data["name"]), tuple(int(d) for d in data["shape"]), str(data["dtype"]))


@dataclass(frozen=True)
class EngineInfo:
    """Everything known about a built engine; ``<plan>.json`` is its JSON form."""

    plan: str
    tensorrt_version: str
    gpu_name: str
    compute_capability: tuple[int, int]
    precision: str
    batch_profile: BatchProfile
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    flags: dict[str, Any] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)
    onnx_sha256: str = ""
    build_seconds: float = 0.0
    verification: dict[str, Any] | None = None

    @property
    def version_compatible(self) -> bool:
        return bool(self.flags.get("version_compatible", False))

    @property
    def hardware_compatibility_level(self) -> str:
        return str(self.flags.get("hardware_compatibility_level", "NONE"))

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["format"] = SIDECAR_FORMAT
        out["compute_capability"] = f"{self.compute_capability[0]}.{self.compute_capability[1]}"
        out["inputs"] = [{**asdict(t), "shape": list(t.shape)} for t in self.inputs]
        out["outputs"] = [{**asdict(t), "shape": list(t.shape)} for t in self.outputs]
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EngineInfo:
        fmt = int(data.get("format", SIDECAR_FORMAT))
        if fmt > SIDECAR_FORMAT:
            raise SwinV2ServeError(f"engine sidecar format {fmt} is newer than this swinv2-serve understands")
        bp = data["batch_profile"]
        return cls(
            plan=str(data["plan"]),
            tensorrt_version=str(data["tensorrt_version"]),
            gpu_name=str(data["gpu_name"]),
            compute_capability=parse_compute_capability(data["compute_capability"]),
            precision=str(data["precision"]),
            batch_profile=BatchProfile(int(bp["min"]), int(bp["opt"]), int(bp["max"])),
            inputs=tuple(TensorSpec.from_dict(t) for t in data["inputs"]),
            outputs=tuple(TensorSpec.from_dict(t) for t in data["outputs"]),
            flags=dict(data.get("flags", {})),
            metadata=dict(data.get("metadata", {})),
            onnx_sha256=str(data.get("onnx_sha256", "")),
            build_seconds=float(data.get("build_seconds", 0.0)),
            verification=data.get("verification"),
        )


def parse_compute_capability(value: str | Sequence[int]) -> tuple[int, int]:
    """"8.6", [8, 6] or (8, 6) -> (8, 6)."""
    parts = value.split(".") if isinstance(value, str) else list(value)
    if len(parts) != 2:
        raise SwinV2ServeError(f"compute capability must look like '8.6', got {value!r}")
    return (int(parts[0]), int(parts[1]))


def sidecar_path(plan_path: str | os.PathLike) -> Path:
    """``model.plan`` -> ``model.plan.json``."""
    plan_path = Path(plan_path)
    return plan_path.with_name(plan_path.name + ".json")


def write_sidecar(info: EngineInfo, plan_path: str | os.PathLike) -> Path:
    path = sidecar_path(plan_path)
    _atomic_write(path, (json.dumps(info.to_dict(), indent=2, sort_keys=True) + "\n").encode())
    return path


def read_sidecar(plan_path: str | os.PathLike) -> EngineInfo:
    path = sidecar_path(plan_path)
    if not path.is_file():
        raise SwinV2ServeError(
            f"{path} not found: a plan needs the sidecar written beside it by `swinv2-serve export --format trt`"
        )
    try:
        return EngineInfo.from_dict(json.loads(path.read_text()))
    except (KeyError, TypeError, ValueError) as exc:
        raise SwinV2ServeError(f"{path}: not a valid engine sidecar ({exc})") from exc


def _atomic_write(path: Path, data: bytes | memoryview) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# -- engine / machine compatibility ------------------------------------------------------------------
def _version_tuple(version: str) -> tuple[int, ...]:
    out = []
    for part in version.split("."):
        digits = "".join(ch for ch in part if ch.isdigit())
        if not digits:
            break
        out.append(int(digits))
    return tuple(out)


def check_engine_compatibility(
    sidecar: EngineInfo | Mapping[str, Any],
    trt_version: str,
    gpu_name: str,
    cc: str | Sequence[int],
    *,
    plan: str = "this engine",
) -> None:
    """Raise ``EngineCompatibilityError`` unless this TensorRT version and GPU may run the engine.

    A plain engine runs only on the TensorRT version and GPU model that built it. A version-compatible
    one also runs on later TensorRT releases of the same major version; a hardware-compatible one
    (AMPERE_PLUS) on any GPU of compute capability 8.0 or newer, SAME_COMPUTE_CAPABILITY on any GPU
    of the same compute capability.
    """
    info = sidecar if isinstance(sidecar, EngineInfo) else EngineInfo.from_dict(sidecar)
    here_cc = parse_compute_capability(cc)
    built = f"TensorRT {info.tensorrt_version} on {info.gpu_name} (compute capability {_cc(info.compute_capability)})"
    here = f"TensorRT {trt_version} on {gpu_name} (compute capability {_cc(here_cc)})"
    problems = []

    built_v, here_v = _version_tuple(info.tensorrt_version), _version_tuple(trt_version)
    if info.version_compatible:
        if not built_v or not here_v or here_v[0] != built_v[0] or here_v < built_v:
            problems.append(
                f"a version-compatible engine runs on TensorRT {built_v[0] if built_v else '?'}.x from "
                f"{info.tensorrt_version} on, not on {trt_version}"
            )
    elif here_v != built_v:
        problems.append("TensorRT versions differ (rebuild, or build with --version-compatible)")

    level = info.hardware_compatibility_level.upper()
    if level == "AMPERE_PLUS":
        if here_cc < (8, 0):
            problems.append("a hardware-compatible (AMPERE_PLUS) engine needs compute capability 8.0 or newer")
    elif level == "SAME_COMPUTE_CAPABILITY":
        if here_cc != info.compute_capability:
            problems.append("compute capabilities differ")
    elif _norm_gpu(gpu_name) != _norm_gpu(info.gpu_name) or here_cc != info.compute_capability:
        problems.append("GPUs differ (rebuild on this GPU, or build with --hardware-compatible on Ampere or newer)")

    if problems:
        raise EngineCompatibilityError(
            f"{plan} was built with {built}; this is {here}: {'; '.join(problems)}. TensorRT engines are bound "
            "to the TensorRT version and GPU that built them: rebuild with `swinv2-serve export --format trt` here"
        )


def _cc(cc: tuple[int, int]) -> str:
    return f"{cc[0]}.{cc[1]}"


def _norm_gpu(name: str) -> str:
    return " ".join(name.lower().split())


# -- TensorRT itself ----------------------------------------------------------------------------------
def require_tensorrt() -> Any:
    """The ``tensorrt`` module, or a ``BackendUnavailableError`` that says where to run instead."""
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise BackendUnavailableError(f"tensorrt is not installed. {NGC_HINT}") from exc
    major = _version_tuple(trt.__version__)[:1]
    if major != (10,):
        raise BackendUnavailableError(f"TensorRT 10 is required, found {trt.__version__}. {NGC_HINT}")
    return trt


def tensorrt_unavailable_reason() -> str | None:
    """None where TensorRT and a CUDA GPU are usable here, else why not (for skips and ``available_backends``)."""
    try:
        require_tensorrt()
        from .cuda_utils import gpu_info

        gpu_info()
    except BackendUnavailableError as exc:
        return str(exc)
    return None


def _make_logger(trt: Any, verbose: bool = False) -> Any:
    """A ``trt.ILogger`` that keeps every message (the build log in errors) and forwards warnings on."""

    class BuildLogger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.lines: list[str] = []
            self._lock = threading.Lock()

        def log(self, severity: Any, msg: str) -> None:
            name = getattr(severity, "name", str(severity))
            with self._lock:
                self.lines.append(f"[{name}] {msg}")
            if severity in (trt.ILogger.INTERNAL_ERROR, trt.ILogger.ERROR):
                log.error("TensorRT: %s", msg)
            elif severity == trt.ILogger.WARNING:
                log.warning("TensorRT: %s", msg)
            elif verbose:
                log.info("TensorRT: %s", msg)

        def tail(self, n: int = 60) -> str:
            with self._lock:
                important = [line for line in self.lines if not line.startswith(("[VERBOSE]", "[INFO]"))]
                return "\n".join((important or self.lines)[-n:]) or "(TensorRT logged nothing)"

    return BuildLogger()


def _make_progress_monitor(trt: Any) -> Any | None:
    """A ``trt.IProgressMonitor`` (TensorRT >= 10.0) drawing one tqdm bar per build phase."""
    base = getattr(trt, "IProgressMonitor", None)
    if base is None:
        return None
    from tqdm.auto import tqdm

    class TqdmProgress(base):  # type: ignore[misc, valid-type]
        def __init__(self) -> None:
            base.__init__(self)
            self._bars: dict[str, Any] = {}
            self._lock = threading.Lock()

        def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
            with contextlib.suppress(Exception), self._lock:
                self._bars[phase_name] = tqdm(total=num_steps, desc=phase_name, position=len(self._bars),
                                              leave=parent_phase is None, unit="step", dynamic_ncols=True)

        def step_complete(self, phase_name: str, step: int) -> bool:
            with contextlib.suppress(Exception), self._lock:
                bar = self._bars.get(phase_name)
                if bar is not None:
                    bar.update(step + 1 - bar.n)
            return True  # False would cancel the build

        def phase_finish(self, phase_name: str) -> None:
            with contextlib.suppress(Exception), self._lock:
                bar = self._bars.pop(phase_name, None)
                if bar is not None:
                    bar.close()

    return TqdmProgress()


@contextlib.contextmanager
def _heartbeat(what: str, every_s: float = 15.0) -> Iterator[None]:
    """Log a line every ``every_s`` seconds while a long call without progress callbacks runs."""
    done = threading.Event()
    start = time.monotonic()

    def beat() -> None:
        while not done.wait(every_s):
            log.info("%s: %.0f s", what, time.monotonic() - start)

    thread = threading.Thread(target=beat, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()


FP32_LAYER_TYPES = ("NORMALIZATION", "SOFTMAX", "REDUCE")
FP32_NEIGHBOUR_TYPES = ("ELEMENTWISE", "UNARY")  # the square before and the sqrt after an L2 reduction


def _pin_fp32_islands(trt: Any, network: Any) -> list[str]:
    """Pin normalisations, softmax and reductions (with the square/sqrt around them) to FP32."""
    floats = (trt.float32, trt.float16)
    layers = [network.get_layer(i) for i in range(network.num_layers)]
    producer: dict[str, Any] = {}
    consumers: dict[str, list[Any]] = {}
    for layer in layers:
        for j in range(layer.num_outputs):
            producer[layer.get_output(j).name] = layer
        for j in range(layer.num_inputs):
            tensor = layer.get_input(j)
            if tensor is not None:
                consumers.setdefault(tensor.name, []).append(layer)

    def float_layer(layer: Any) -> bool:
        return all(layer.get_output(j).dtype in floats and not layer.get_output(j).is_shape_tensor
                   for j in range(layer.num_outputs))

    chosen: dict[str, Any] = {}
    for layer in layers:
        if layer.type.name not in FP32_LAYER_TYPES or not float_layer(layer):
            continue
        chosen[layer.name] = layer
        if layer.type.name == "REDUCE":
            src = producer.get(layer.get_input(0).name)
            if src is not None and src.type.name in FP32_NEIGHBOUR_TYPES and float_layer(src):
                chosen[src.name] = src
            for dst in consumers.get(layer.get_output(0).name, []):
                if dst.type.name == "UNARY" and float_layer(dst):
                    chosen[dst.name] = dst
    for layer in chosen.values():
        layer.precision = trt.float32
        for j in range(layer.num_outputs):
            layer.set_output_type(j, trt.float32)
    return sorted(chosen)


def _parse_onnx(trt: Any, network: Any, logger: Any, onnx_path: Path) -> None:
    parser = trt.OnnxParser(network, logger)
    if parser.parse_from_file(os.fspath(onnx_path)):
        return
    errors = []
    for i in range(parser.num_errors):
        err = parser.get_error(i)
        where = f"node {err.node()} ({err.node_name()}, {err.node_operator()})" if err.node() >= 0 else "graph"
        errors.append(f"  {where}: {err.desc()} [{err.code()}]")
    raise ExportError(f"TensorRT's ONNX parser rejected {onnx_path}:\n" + "\n".join(errors or [logger.tail()]))


def _tensor_specs(trt: Any, tensors: Iterable[Any]) -> tuple[TensorSpec, ...]:
    return tuple(TensorSpec(t.name, tuple(int(d) for d in t.shape), np.dtype(trt.nptype(t.dtype)).name)
                 for t in tensors)


def build_engine(
    onnx_path: str | os.PathLike,
    plan_path: str | os.PathLike,
    *,
    precision: str = "fp16",
    min_batch: int = 1,
    opt_batch: int | None = None,
    max_batch: int = 32,
    workspace_gib: float = 4.0,
    timing_cache: str | os.PathLike | None = None,
    version_compatible: bool = False,
    hardware_compatible: bool = False,
    strongly_typed: bool | None = None,
    progress: bool = True,
) -> EngineInfo:
    """Build ``plan_path`` (+ its sidecar) from our ONNX; ``ExportError`` with the builder log on failure.

    ``strongly_typed=None`` picks a strongly typed network for an fp16 ONNX (its Casts define the FP32
    islands) and FP16 flag + precision constraints for an fp32 ONNX. ``timing_cache`` is read if it
    exists and written back after the build, so rebuilds on the same GPU are fast.
    """
    onnx_path, plan_path = Path(onnx_path), Path(plan_path)
    check_precision(precision)
    profile = batch_profile(min_batch, opt_batch, max_batch)
    if workspace_gib <= 0:
        raise SwinV2ServeError(f"workspace must be > 0 GiB, got {workspace_gib}")
    metadata = read_onnx_metadata(onnx_path)
    typed = resolve_strongly_typed(precision, bool(metadata.get("fp16", False)), strongly_typed)

    trt = require_tensorrt()
    from .cuda_utils import gpu_info

    gpu = gpu_info()
    if hardware_compatible and gpu.compute_capability < (8, 0):
        raise SwinV2ServeError(
            f"--hardware-compatible needs an Ampere or newer GPU to build on; {gpu.name} is {gpu.cc}"
        )

    logger = _make_logger(trt)
    builder = trt.Builder(logger)
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if typed else 0
    network = builder.create_network(flags)
    _parse_onnx(trt, network, logger, onnx_path)
    inputs = [network.get_input(i) for i in range(network.num_inputs)]
    outputs = [network.get_output(i) for i in range(network.num_outputs)]
    if [t.name for t in inputs] != [INPUT_NAME] or len(inputs[0].shape) != 4:
        raise ExportError(f"{onnx_path}: expected one input '{INPUT_NAME}' [B,3,H,W], got "
                          f"{[(t.name, tuple(t.shape)) for t in inputs]}")
    missing = set(OUTPUT_NAMES) - {t.name for t in outputs}
    if missing:
        raise ExportError(f"{onnx_path}: outputs {sorted(missing)} missing; re-export with `swinv2-serve export`")
    chw = tuple(int(d) for d in inputs[0].shape[1:])
    if any(d < 0 for d in chw):
        raise ExportError(f"{onnx_path}: only the batch axis may be dynamic, input is {tuple(inputs[0].shape)}")

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    pinned: list[str] = []
    if precision == "fp16" and not typed:
        if not builder.platform_has_fast_fp16:
            log.warning("%s has no fast FP16; the engine may be slower than FP32", gpu.name)
        config.set_flag(trt.BuilderFlag.FP16)
        config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
        pinned = _pin_fp32_islands(trt, network)
    opt_profile = builder.create_optimization_profile()
    opt_profile.set_shape(INPUT_NAME, *profile.shapes(chw))
    config.add_optimization_profile(opt_profile)
    if version_compatible:
        config.set_flag(trt.BuilderFlag.VERSION_COMPATIBLE)
    if hardware_compatible:
        config.hardware_compatibility_level = trt.HardwareCompatibilityLevel.AMPERE_PLUS
    cache_path = Path(timing_cache) if timing_cache else None
    if cache_path is not None:
        cache = config.create_timing_cache(cache_path.read_bytes() if cache_path.is_file() else b"")
        config.set_timing_cache(cache, ignore_mismatch=False)
    monitor = _make_progress_monitor(trt) if progress else None
    if monitor is not None:
        config.progress_monitor = monitor

    log.info("building %s (%s, batch %d..%d, opt %d) on %s", plan_path.name, precision, profile.min,
             profile.max, profile.opt, gpu.name)
    start = time.monotonic()
    with _heartbeat(f"building {plan_path.name}") if progress and monitor is None else contextlib.nullcontext():
        serialized = builder.build_serialized_network(network, config)
    seconds = time.monotonic() - start
    if serialized is None:
        raise ExportError(f"TensorRT could not build {plan_path.name} from {onnx_path}. Builder log:\n{logger.tail()}")
    _atomic_write(plan_path, memoryview(serialized))
    if cache_path is not None:
        _atomic_write(cache_path, memoryview(config.get_timing_cache().serialize()))

    info = EngineInfo(
        plan=plan_path.name,
        tensorrt_version=trt.__version__,
        gpu_name=gpu.name,
        compute_capability=gpu.compute_capability,
        precision=precision,
        batch_profile=profile,
        inputs=_tensor_specs(trt, inputs),
        outputs=_tensor_specs(trt, outputs),
        flags={
            "strongly_typed": typed,
            "fp16_flag": precision == "fp16" and not typed,
            "fp32_layers": len(pinned),
            "version_compatible": version_compatible,
            "hardware_compatibility_level": "AMPERE_PLUS" if hardware_compatible else "NONE",
            "workspace_gib": workspace_gib,
            "timing_cache": os.fspath(cache_path) if cache_path else None,
        },
        metadata=metadata,
        onnx_sha256=file_sha256(onnx_path),
        build_seconds=round(seconds, 2),
    )
    write_sidecar(info, plan_path)
    log.info("built %s in %.1f s", plan_path, seconds)
    return info


# -- verification against ONNX Runtime ----------------------------------------------------------------
@dataclass(frozen=True)
class Tolerance:
    """An engine passes when max|logits diff| <= atol + rtol * max|reference logits| and top-1 agrees."""

    atol: float
    rtol: float
    min_top1: float

    def limit(self, ref_scale: float) -> float:
        return self.atol + self.rtol * ref_scale


DEFAULT_TOLERANCE = {
    "fp32": Tolerance(atol=1e-3, rtol=1e-2, min_top1=0.99),  # TF32 matmuls are on, as in trtexec
    "fp16": Tolerance(atol=1e-2, rtol=5e-2, min_top1=0.95),
}


def compare_outputs(reference: Mapping[str, np.ndarray], test: Mapping[str, np.ndarray]) -> dict[str, float]:
    """max |diff| of logits and probs, top-1 agreement, and the reference's logit scale."""
    ref_logits, test_logits = np.asarray(reference["logits"], np.float32), np.asarray(test["logits"], np.float32)
    if ref_logits.shape != test_logits.shape:
        raise ExportError(f"logits shapes differ: {ref_logits.shape} vs {test_logits.shape}")
    return {
        "max_abs_diff": float(np.abs(ref_logits - test_logits).max(initial=0.0)),
        "probs_max_abs_diff": float(np.abs(np.asarray(reference["probs"], np.float32)
                                           - np.asarray(test["probs"], np.float32)).max(initial=0.0)),
        "top1_agreement": float((ref_logits.argmax(1) == test_logits.argmax(1)).mean()) if len(ref_logits) else 1.0,
        "reference_scale": float(np.abs(ref_logits).max(initial=0.0)),
        "count": int(len(ref_logits)),
    }


def check_verification(result: Mapping[str, Any], tolerance: Tolerance, what: str = "engine") -> None:
    """``ExportError`` when a verification result is outside ``tolerance``."""
    limit = tolerance.limit(float(result.get("reference_scale", 0.0)))
    problems = []
    if result["max_abs_diff"] > limit:
        problems.append(f"max |logits diff| {result['max_abs_diff']:.3g} > {limit:.3g}")
    if result["top1_agreement"] < tolerance.min_top1:
        problems.append(f"top-1 agreement {result['top1_agreement']:.3f} < {tolerance.min_top1}")
    if problems:
        raise ExportError(f"{what} disagrees with ONNX Runtime: {'; '.join(problems)} (refusing to write it)")


def _run_batched(runtime: Any, x: np.ndarray, max_batch: int | None) -> dict[str, np.ndarray]:
    step = max_batch or len(x) or 1
    parts = [runtime(x[i:i + step]) for i in range(0, len(x), step)]
    return {k: np.concatenate([p[k] for p in parts]) for k in OUTPUT_NAMES}


def verify_engine(
    plan_path: str | os.PathLike,
    onnx_path: str | os.PathLike,
    images: Sequence[str | os.PathLike] = (),
    *,
    random_inputs: int = 8,
    seed: int = 0,
) -> dict[str, Any]:
    """Compare an engine with ONNX Runtime on real photos (via ``Preprocess``) and random inputs.

    Returns ``max_abs_diff`` (logits, all inputs), ``top1_agreement`` (photos; random inputs where no
    photo was given) and the details per input set.
    """
    from .preprocess import Preprocess
    from .runtime import OnnxRuntime, TensorRTRuntime

    engine = TensorRTRuntime(plan_path)
    try:
        reference = OnnxRuntime(onnx_path)
        return verify_runtime(engine, reference, Preprocess.from_metadata(reference.metadata), images,
                              random_inputs=random_inputs, seed=seed)
    finally:
        engine.close()


def verify_runtime(
    test: Any, reference: Any, preprocess: Any, images: Sequence[str | os.PathLike] = (),
    *, random_inputs: int = 8, seed: int = 0,
) -> dict[str, Any]:
    """``verify_engine``'s comparison for any two runtimes (tested here with ONNX Runtime vs torch)."""
    photos = preprocess.batch(images) if images else None
    rng = np.random.default_rng(seed)
    noise = rng.standard_normal((random_inputs, *reference.input_shape)).astype(np.float32)
    sets = {"photos": photos, "random": noise}
    details = {}
    for name, x in sets.items():
        if x is None or not len(x):
            continue
        details[name] = compare_outputs(_run_batched(reference, x, test.max_batch),
                                        _run_batched(test, x, test.max_batch))
    if not details:
        raise ExportError("nothing to verify with: give photos or random_inputs > 0")
    top1_from = details.get("photos") or details["random"]
    return {
        "max_abs_diff": max(d["max_abs_diff"] for d in details.values()),
        "probs_max_abs_diff": max(d["probs_max_abs_diff"] for d in details.values()),
        "top1_agreement": top1_from["top1_agreement"],
        "reference_scale": max(d["reference_scale"] for d in details.values()),
        "details": details,
    }


# -- CLI -----------------------------------------------------------------------------------------------
def _precision_arg(value: str) -> str:
    try:
        return check_precision(value.lower())
    except SwinV2ServeError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _positive_int(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {value!r}") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {number}")
    return number


def _positive_float(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {value!r}") from None
    if not number > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
    return number


def _fraction(value: str) -> float:
    number = _positive_float(value)
    if number > 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {value}")
    return number


def add_tensorrt_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``--format trt`` options of ``swinv2-serve export``."""
    g = parser.add_argument_group("TensorRT engines (--format trt; TensorRT 10 + an NVIDIA GPU)")
    g.add_argument("--precision", type=_precision_arg, default="fp16", metavar="{fp32,fp16}",
                   help="engine precision; fp16 keeps normalisations and softmax in FP32 (default fp16)")
    g.add_argument("--min-batch", type=_positive_int, default=1, help="profile min batch (default 1)")
    g.add_argument("--opt-batch", type=_positive_int, default=None,
                   help="batch TensorRT tunes for (default: max/2 rounded down to a power of two)")
    g.add_argument("--max-batch", type=_positive_int, default=32, help="profile max batch (default 32)")
    g.add_argument("--workspace-gib", type=_positive_float, default=4.0, help="builder workspace (default 4)")
    g.add_argument("--timing-cache", type=Path, default=None, metavar="FILE",
                   help="read and update this timing cache (rebuilds on the same GPU get much faster)")
    g.add_argument("--version-compatible", action="store_true",
                   help="engine also runs on later TensorRT 10.x releases (BuilderFlag.VERSION_COMPATIBLE)")
    g.add_argument("--hardware-compatible", action="store_true",
                   help="engine runs on any Ampere or newer GPU (HardwareCompatibilityLevel.AMPERE_PLUS)")
    g.add_argument("--strongly-typed", action=argparse.BooleanOptionalAction, default=None,
                   help="strongly typed network (default: yes for an fp16 ONNX, no for fp32)")
    g.add_argument("--max-abs-diff-rtol", type=_positive_float, default=None, metavar="RTOL",
                   help="verification: allowed |logits diff| relative to the largest logit "
                        "(default 0.01 fp32, 0.05 fp16)")
    g.add_argument("--min-top1", type=_fraction, default=None,
                   help="verification: minimum top-1 agreement with ONNX Runtime (default 0.99 fp32, 0.95 fp16)")


@dataclass(frozen=True)
class TensorRTOptions:
    precision: str
    profile: BatchProfile
    workspace_gib: float
    timing_cache: Path | None
    version_compatible: bool
    hardware_compatible: bool
    strongly_typed: bool | None
    tolerance: Tolerance


def tensorrt_options_from_args(args: argparse.Namespace) -> TensorRTOptions:
    """Validate the parsed options (call it before any slow step); ``SwinV2ServeError`` says what is wrong."""
    precision = check_precision(args.precision)
    try:
        profile = batch_profile(args.min_batch, args.opt_batch, args.max_batch)
    except SwinV2ServeError as exc:
        raise SwinV2ServeError(f"--min-batch/--opt-batch/--max-batch: {exc}") from None
    tolerance = DEFAULT_TOLERANCE[precision]
    tolerance = Tolerance(
        atol=tolerance.atol,
        rtol=args.max_abs_diff_rtol if getattr(args, "max_abs_diff_rtol", None) else tolerance.rtol,
        min_top1=args.min_top1 if getattr(args, "min_top1", None) else tolerance.min_top1,
    )
    return TensorRTOptions(
        precision=precision,
        profile=profile,
        workspace_gib=float(args.workspace_gib),
        timing_cache=args.timing_cache,
        version_compatible=bool(args.version_compatible),
        hardware_compatible=bool(args.hardware_compatible),
        strongly_typed=args.strongly_typed,
        tolerance=tolerance,
    )


def default_plan_path(onnx_path: str | os.PathLike, precision: str) -> Path:
    """``out/model_256.onnx`` -> ``out/model_256.fp16.plan`` (a ``.fp16`` already in the ONNX name is kept once)."""
    onnx_path = Path(onnx_path)
    stem = onnx_path.stem.removesuffix(f".{precision}")
    return onnx_path.with_name(f"{stem}.{precision}.plan")


def build_verified(
    onnx_path: str | os.PathLike,
    plan_path: str | os.PathLike,
    opts: TensorRTOptions,
    images: Sequence[str | os.PathLike] = (),
    *,
    reference_onnx: str | os.PathLike | None = None,
) -> EngineInfo:
    """Build, verify against ONNX Runtime, and only then write ``plan_path`` and its sidecar.

    ``reference_onnx`` (default: the ONNX built from) is what the engine is compared with; an fp16
    engine compared with the fp32 ONNX measures its whole error against the real model.
    """
    require_tensorrt()
    final = Path(plan_path)
    partial = final.with_name(f".{final.name}.partial")
    try:
        info = build_engine(
            onnx_path, partial, precision=opts.precision, min_batch=opts.profile.min, opt_batch=opts.profile.opt,
            max_batch=opts.profile.max, workspace_gib=opts.workspace_gib, timing_cache=opts.timing_cache,
            version_compatible=opts.version_compatible, hardware_compatible=opts.hardware_compatible,
            strongly_typed=opts.strongly_typed,
        )
        reference = Path(reference_onnx or onnx_path)
        result = verify_engine(partial, reference, images)
        check_verification(result, opts.tolerance, what=final.name)
        verification = {**result, "tolerance": asdict(opts.tolerance), "reference": reference.name}
        info = EngineInfo(**{**info.__dict__, "plan": final.name, "verification": verification})
        os.replace(partial, final)
        write_sidecar(info, final)
        log.info("%s verified: max |diff| %.3g, top-1 agreement %.3f", final.name, result["max_abs_diff"],
                 result["top1_agreement"])
        return info
    finally:
        for leftover in (partial, sidecar_path(partial)):
            with contextlib.suppress(FileNotFoundError):
                leftover.unlink()


def build_from_args(
    onnx_path: str | os.PathLike,
    args: argparse.Namespace,
    images: Sequence[str | os.PathLike] = (),
    plan_path: str | os.PathLike | None = None,
) -> EngineInfo:
    """``swinv2-serve export --format trt``: validate the options, build, verify, write (see ``build_verified``)."""
    opts = tensorrt_options_from_args(args)
    require_tensorrt()
    plan_path = plan_path or default_plan_path(onnx_path, opts.precision)
    return build_verified(onnx_path, plan_path, opts, images)
