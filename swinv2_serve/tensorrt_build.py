"""ONNX -> TensorRT engine (.plan) with the TensorRT 10 Python API, verified, with its JSON sidecar.

One optimisation profile per engine over the batch axis (H and W are fixed per resolution). FP16
engines keep SwinV2's numerically fragile parts in FP32:

* from our fp16 ONNX (explicit Casts around the q/k L2-normalisation, LayerNorm and softmax) the
  network is built *strongly typed*: TensorRT runs every tensor in the type the ONNX gives it;
* from an fp32 ONNX, ``BuilderFlag.FP16`` plus ``OBEY_PRECISION_CONSTRAINTS`` with Normalization,
  Softmax and Reduce layers (and the square / sqrt around a reduction) pinned to FP32.

Beside each ``model.plan`` a ``model.plan.json`` (``runtime.engine``) records what the engine is bound to,
so the runtime and the Triton repository writer need nothing else. An engine is written only after it
agrees with ONNX Runtime on photos and random inputs (``build_verified``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .contract import INPUT_NAME, OUTPUT_NAMES, check_precision, read_onnx_metadata
from .errors import ExportError, SwinV2ServeError
from .preprocess import Preprocess
from .runtime import cuda as cu
from .runtime.base import Runtime
from .runtime.engine import (
    BatchProfile,
    EngineInfo,
    TensorSpec,
    atomic_write,
    batch_profile,
    file_sha256,
    sidecar_path,
    write_sidecar,
)
from .runtime.onnxruntime_backend import OnnxRuntime
from .runtime.tensorrt_backend import TensorRTRuntime, require_tensorrt
from .verification import Tolerance, Verdict, judge

log = logging.getLogger(__name__)


def check_engine_precision(precision: str) -> str:
    if precision == "int8":
        raise SwinV2ServeError("precision int8 is not supported (it needs a calibration set): use fp16 or fp32")
    return check_precision(precision, "tensorrt")


def resolve_strongly_typed(precision: str, onnx_fp16: bool, requested: bool | None) -> bool:
    """Whether to build a strongly typed network; refuses combinations that cannot give ``precision``.

    A strongly typed network runs the ONNX's own types, so it gives FP16 only from an fp16 ONNX.
    """
    check_engine_precision(precision)
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
    check_engine_precision(precision)
    profile = batch_profile(min_batch, opt_batch, max_batch)
    if workspace_gib <= 0:
        raise SwinV2ServeError(f"workspace must be > 0 GiB, got {workspace_gib}")
    metadata = read_onnx_metadata(onnx_path)
    typed = resolve_strongly_typed(precision, metadata.fp16, strongly_typed)

    trt = require_tensorrt()
    gpu = cu.gpu_info()
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
    atomic_write(plan_path, memoryview(serialized))
    if cache_path is not None:
        atomic_write(cache_path, memoryview(config.get_timing_cache().serialize()))

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
# An engine passes when max|logits diff| <= atol + rtol * max|reference logits| and top-1 agrees often enough.
DEFAULT_TOLERANCE = {
    "fp32": Tolerance(atol=1e-3, rtol=1e-2, min_top1=0.99),  # TF32 matmuls are on, as in trtexec
    "fp16": Tolerance(atol=1e-2, rtol=5e-2, min_top1=0.95),
}


@dataclass(frozen=True)
class EngineVerification:
    """An engine against a reference runtime, on photos (their top-1 decides) and on random inputs."""

    photos: Verdict | None
    random: Verdict | None

    @property
    def decisive(self) -> Verdict:
        decisive = self.photos or self.random
        assert decisive is not None
        return decisive

    @property
    def passed(self) -> bool:
        return all(v.passed for v in (self.photos, self.random) if v is not None)

    def to_dict(self) -> dict[str, Any]:
        return {name: v.to_dict() for name, v in (("photos", self.photos), ("random", self.random)) if v is not None}


def verify_runtime(test: Runtime, reference: Runtime, tolerance: Tolerance,
                   images: Sequence[str | os.PathLike] = (), *, random_inputs: int = 8,
                   seed: int = 0) -> EngineVerification:
    """Compare ``test`` with ``reference`` on real photos (via ``Preprocess``; unreadable files are skipped)
    and on seeded random inputs; the photos' top-1 agreement decides where photos were given."""
    photos, unreadable = Preprocess.from_metadata(reference.metadata).batch_readable(map(Path, images))
    for line in unreadable:
        log.warning("engine verification: skipped %s", line)
    noise = np.random.default_rng(seed).standard_normal((random_inputs, *reference.input_shape)).astype(np.float32)
    verdicts: dict[str, Verdict | None] = {"photos": None, "random": None}
    for name, x in (("photos", photos), ("random", noise)):
        if len(x):
            random_bounds = Tolerance(atol=tolerance.atol, rtol=tolerance.rtol) if name == "random" and len(photos) \
                else tolerance  # with photos, noise bounds the error only: its top-1 margins are tiny
            verdicts[name] = judge(f"{test.backend} vs {reference.backend} ({name})", reference.logits(x),
                                   test.logits(x), random_bounds)
    if verdicts["photos"] is None and verdicts["random"] is None:
        raise ExportError("nothing to verify with: give photos or random_inputs > 0")
    return EngineVerification(**verdicts)


def verify_engine(plan_path: str | os.PathLike, onnx_path: str | os.PathLike, tolerance: Tolerance,
                  images: Sequence[str | os.PathLike] = (), *, random_inputs: int = 8,
                  seed: int = 0) -> EngineVerification:
    """An engine against ONNX Runtime running ``onnx_path`` (see ``verify_runtime``)."""
    engine = TensorRTRuntime(plan_path)
    try:
        return verify_runtime(engine, OnnxRuntime(onnx_path), tolerance, images, random_inputs=random_inputs,
                              seed=seed)
    finally:
        engine.close()


@dataclass(frozen=True)
class TensorRTOptions:
    """How to build one engine (``swinv2-serve export --format trt``, ``export/build_all.py``, the container)."""

    precision: str = "fp16"
    profile: BatchProfile = BatchProfile(1, 16, 32)
    workspace_gib: float = 4.0
    timing_cache: Path | None = None
    version_compatible: bool = False
    hardware_compatible: bool = False
    strongly_typed: bool | None = None
    tolerance: Tolerance | None = None  # None: DEFAULT_TOLERANCE[precision]

    def __post_init__(self) -> None:
        check_engine_precision(self.precision)
        if self.workspace_gib <= 0:
            raise SwinV2ServeError(f"workspace must be > 0 GiB, got {self.workspace_gib}")

    @property
    def bounds(self) -> Tolerance:
        return self.tolerance or DEFAULT_TOLERANCE[self.precision]


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
        result = verify_engine(partial, reference, opts.bounds, images)
        if not result.passed:
            failed = [v.summary() for v in (result.photos, result.random) if v is not None and not v.passed]
            raise ExportError(f"{final.name} disagrees with ONNX Runtime ({reference.name}): {'; '.join(failed)} "
                              "(refusing to write it)")
        verification = {**result.to_dict(), "tolerance": asdict(opts.bounds), "reference": reference.name}
        info = EngineInfo(**{**info.__dict__, "plan": final.name, "verification": verification})
        os.replace(partial, final)
        write_sidecar(info, final)
        log.info("%s verified: %s", final.name, result.decisive.summary())
        return info
    finally:
        for leftover in (partial, sidecar_path(partial)):
            with contextlib.suppress(FileNotFoundError):
                leftover.unlink()
