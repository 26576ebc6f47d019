"""OpenVINO: our ONNX (or a saved IR ``.xml``) compiled for the CPU in fp32, bf16 or int8.

``load(path, backend="openvino", precision="bf16")`` gives a ``Runtime`` like every other backend.

- ``precision``: ``fp32`` (``INFERENCE_PRECISION_HINT=f32``; set explicitly, because OpenVINO's CPU
  default on AVX512-BF16/AMX machines is already bf16) or ``bf16``. bf16 needs the CPU to report "BF16"
  in ``OPTIMIZATION_CAPABILITIES``; elsewhere the runtime says so once and runs fp32
  (``resolve_precision``, a pure function). ``int8`` is a property of the file: an IR written by
  ``openvino_int8.quantize_int8`` (``swinv2-serve quantize``) loads as int8 (the default for it), its
  float ops in bf16 where the CPU has it, as they were checked.
- ``hint``: ``latency`` or ``throughput`` (``PERFORMANCE_HINT``); ``threads``: ``INFERENCE_NUM_THREADS``;
  ``cache_dir``: ``CACHE_DIR`` (compiled blobs reused across starts).
- batch is dynamic (``[-1, 3, H, W]``) or bounded ``[1..max_batch]``.
- metadata: the ONNX's ``swinv2_serve`` JSON, or the IR's ``rt_info["swinv2_serve"]`` (``convert_to_ir``).

Fidelity: reduced precision is fragile for cosine attention, so a bf16 runtime is checked at load time:
a few seeded random inputs run through an fp32 compile and the bf16 compile of the same model, and a
top-1 agreement below ``FIDELITY_THRESHOLD`` (99%), or any NaN/Inf, is refused with the numbers
(``fidelity="refuse"``, the default), logged as a warning (``"warn"``), or not checked (``"off"``).
Random inputs are a harsh check set (flat logits, small top-1 margins): a trained SwinV2-T agreed 100% in
bf16 on real images but 97-98% on noise (benchmarks/OPENVINO.md). Pass ``check_inputs=`` (a preprocessed
array, or a folder of images like the ones you serve; ``serve --fidelity-images DIR``) to check on your
own data. An int8 IR has no fp32 weights left to compare with: the fidelity that ``quantize_int8``
measured on held-out images is stored in the IR (``INT8_KEY``) and enforced the same way on load.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..contract import INPUT_NAME, METADATA_KEY, OUTPUT_NAMES, ExportMetadata, check_precision, read_onnx_metadata
from ..errors import BackendUnavailableError, SwinV2ServeError
from ..machine import cpu_has_vnni
from ..preprocess import Preprocess, image_files
from ..verification import (
    FIDELITY_MODES,
    FIDELITY_THRESHOLD,
    Verdict,
    enforce,
    fidelity_tolerance,
    judge,
    refuse_or_warn,
    run_batched,
)
from .base import Runtime

log = logging.getLogger(__name__)

HINT_PRECISIONS = {"fp32": "f32", "bf16": "bf16"}  # INFERENCE_PRECISION_HINT; int8 is a quantized IR
HINTS = {"latency": "LATENCY", "throughput": "THROUGHPUT"}
FIDELITY_SAMPLES = 8
DEVICE = "CPU"
INT8_KEY = "swinv2_serve_int8"  # the int8 fidelity record quantize_int8 writes into the IR's rt_info
FIDELITY_REMEDY = "This precision changes predictions: serve fp32 (precision='fp32'), or pass fidelity='warn'"


def require_openvino() -> Any:
    try:
        import openvino as ov
    except ImportError as exc:
        raise BackendUnavailableError("openvino is not installed: pip install 'swinv2-serve[openvino]'") from exc
    return ov


def openvino_unavailable_reason() -> str | None:
    try:
        ov = require_openvino()
    except BackendUnavailableError as exc:
        return str(exc)
    if DEVICE not in ov.Core().available_devices:
        return "OpenVINO sees no CPU device"
    return None


def cpu_capabilities(core: Any | None = None) -> list[str]:
    core = core or require_openvino().Core()
    return list(core.get_property(DEVICE, "OPTIMIZATION_CAPABILITIES"))


def resolve_precision(requested: str, capabilities: Sequence[str]) -> tuple[str, str | None]:
    """(precision to run, message or None): bf16 only where the CPU reports BF16, else fp32 with a reason."""
    if requested not in HINT_PRECISIONS:
        raise SwinV2ServeError(f"openvino precision must be one of {', '.join(HINT_PRECISIONS)}, got {requested!r}")
    if requested == "bf16" and "BF16" not in capabilities:
        return "fp32", (f"bf16 requested but this CPU has no bf16 support (OpenVINO CPU capabilities: "
                        f"{', '.join(capabilities) or 'none'}; needs AVX512_BF16 or AMX): running fp32 instead")
    return requested, None


def float_precision_for_int8(capabilities: Sequence[str]) -> str:
    """Precision of the ops an int8 IR leaves in float: bf16 where the CPU has it (OpenVINO's own default)."""
    return "bf16" if "BF16" in capabilities else "fp32"


def compile_properties(precision: str, hint: str, threads: int | None, cache_dir: str | os.PathLike | None
                       ) -> dict[str, Any]:
    if hint not in HINTS:
        raise SwinV2ServeError(f"openvino hint must be one of {', '.join(HINTS)}, got {hint!r}")
    props: dict[str, Any] = {"INFERENCE_PRECISION_HINT": HINT_PRECISIONS[precision], "PERFORMANCE_HINT": HINTS[hint]}
    if threads:
        props["INFERENCE_NUM_THREADS"] = int(threads)
    if cache_dir:
        Path(cache_dir).mkdir(parents=True, exist_ok=True)
        props["CACHE_DIR"] = os.fspath(cache_dir)
    return props


def dynamic_batch(model: Any) -> Any:
    """``model`` with its input reshaped to batch -1 (ours and timm's exports alike)."""
    ov = require_openvino()
    model.reshape({model.input(0): ov.PartialShape([-1, *model.input(0).get_partial_shape()[1:]])})
    return model


def compile_logits(model: Any, precision: str, threads: int | None, hint: str = "latency"
                   ) -> Callable[[np.ndarray], np.ndarray]:
    """Any ``ov.Model`` (e.g. timm's standard export read by OpenVINO) compiled for the CPU, as ``x -> output 0``.

    No metadata or I/O names are required (unlike ``OpenVINORuntime``); an int8 model's float ops run in
    ``precision``. The output is a float32 copy.
    """
    core = require_openvino().Core()
    compiled = core.compile_model(model, DEVICE, compile_properties(precision, hint, threads, None))
    request = compiled.create_infer_request()
    output = compiled.output(0)
    return lambda x: np.array(request.infer({0: x})[output], dtype=np.float32, copy=True)


# -- IR files -------------------------------------------------------------------------------------------------
def read_model_metadata(model: Any, path: Path) -> ExportMetadata:
    """The export metadata: the ONNX's metadata_props, or an IR's rt_info written by ``convert_to_ir``."""
    if path.suffix.lower() == ".onnx":
        return read_onnx_metadata(path)
    if model.has_rt_info([METADATA_KEY]):
        return ExportMetadata.from_json(model.get_rt_info([METADATA_KEY]).astype(str), os.fspath(path))
    raise SwinV2ServeError(f"{path} has no '{METADATA_KEY}' rt_info: convert it with "
                           "swinv2_serve.runtime.openvino_backend.convert_to_ir (or serve the ONNX)")


def write_model_metadata(model: Any, metadata: ExportMetadata) -> None:
    model.set_rt_info(metadata.to_json(), [METADATA_KEY])


def convert_to_ir(onnx: str | os.PathLike, xml: str | os.PathLike) -> Path:
    """ONNX -> OpenVINO IR (``.xml`` + ``.bin``, fp32 weights) carrying the swinv2_serve metadata in rt_info."""
    ov = require_openvino()
    xml = Path(xml)
    xml.parent.mkdir(parents=True, exist_ok=True)
    model = ov.Core().read_model(os.fspath(onnx))
    write_model_metadata(model, read_onnx_metadata(onnx))
    ov.save_model(model, os.fspath(xml), compress_to_fp16=False)
    return xml


def is_quantized(model: Any) -> bool:
    return any(op.get_type_name() == "FakeQuantize" for op in model.get_ordered_ops())


def int8_record(model: Any) -> dict[str, Any] | None:
    """The fidelity record ``quantize_int8`` wrote into an IR, or None (quantized elsewhere)."""
    if model.has_rt_info([INT8_KEY]):
        return json.loads(model.get_rt_info([INT8_KEY]).astype(str))
    return None


def overflow_mismatch(record: dict[str, Any], has_vnni: bool) -> str | None:
    """Why an int8 IR's recorded fidelity does not hold on this CPU, or None.

    An IR quantized without the overflow fix on every layer was checked where int8 products do not
    saturate (VNNI); on a CPU without VNNI its outputs are not the ones that were checked. Records
    from before the choice was recorded used NNCF's default, ``first-layer``.
    """
    fix = record.get("overflow_fix", "first-layer")
    if fix == "enable" or has_vnni:
        return None
    return ("quantized with NNCF's overflow fix on the first layer only (for CPUs with VNNI), but this CPU has "
            "no VNNI, where its int8 products saturate and the recorded fidelity does not hold: quantize it "
            "again on this CPU or with --overflow-fix enable")


def check_inputs_for(shape: Sequence[int], samples: int = FIDELITY_SAMPLES, seed: int = 0) -> np.ndarray:
    """Seeded standard-normal inputs [samples, *shape] (the normalised-image space the model sees)."""
    return np.random.default_rng(seed).standard_normal((samples, *shape), dtype=np.float32)


def preprocessed_images(folder: str | os.PathLike, metadata: ExportMetadata, limit: int = 256) -> np.ndarray:
    """Up to ``limit`` images of ``folder`` through the model's own preprocessing (unreadable ones skipped)."""
    folder = Path(folder)
    images, unreadable = Preprocess.from_metadata(metadata).batch_readable(
        image_files(folder)[:limit] if folder.is_dir() else [])
    for line in unreadable:
        log.warning("fidelity images: skipped %s", line)
    if not len(images):
        raise SwinV2ServeError(f"fidelity images: no readable images under {folder}")
    return images


# -- runtime ----------------------------------------------------------------------------------------------------
class OpenVINORuntime(Runtime):
    """An OpenVINO CPU compile of our ONNX / IR. See the module docstring for the options."""

    backend = "openvino"

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        precision: str | None = None,
        hint: str = "latency",
        threads: int | None = None,
        cache_dir: str | os.PathLike | None = None,
        max_batch: int | None = None,
        fidelity: str = "refuse",
        fidelity_threshold: float = FIDELITY_THRESHOLD,
        check_inputs: np.ndarray | str | os.PathLike | None = None,
    ) -> None:
        ov = require_openvino()
        path = Path(path)
        if fidelity not in FIDELITY_MODES:
            raise SwinV2ServeError(f"fidelity must be one of {', '.join(FIDELITY_MODES)}, got {fidelity!r}")
        self.core = ov.Core()
        model = self.core.read_model(os.fspath(path))
        quantized = is_quantized(model)
        self.requested_precision = check_precision(precision or ("int8" if quantized else "fp32"), "openvino")
        capabilities = cpu_capabilities(self.core)
        if quantized or self.requested_precision == "int8":
            _require_int8_match(path, quantized, self.requested_precision)
            self.precision, compile_precision = "int8", float_precision_for_int8(capabilities)
        else:
            self.precision, reason = resolve_precision(self.requested_precision, capabilities)
            compile_precision = self.precision
            if reason:
                log.warning("%s: %s", path.name, reason)
        super().__init__(read_model_metadata(model, path), max_batch)
        self._check_io(model, path)
        batch = ov.Dimension(1, max_batch) if max_batch else ov.Dimension(-1)
        model.reshape({model.input(0): ov.PartialShape([batch, *map(ov.Dimension, self.input_shape)])})
        self.properties = compile_properties(compile_precision, hint, threads, cache_dir)
        self.compiled = self.core.compile_model(model, DEVICE, self.properties)
        self._request = self.compiled.create_infer_request()
        self._lock = threading.Lock()
        self.fidelity: Verdict | None = None
        if fidelity == "off" or self.precision == "fp32":
            return
        if quantized:  # no fp32 weights to compare with here: enforce what quantize_int8 measured
            record = int8_record(model)
            mismatch = overflow_mismatch(record, cpu_has_vnni()) if record else None
            if mismatch:
                refuse_or_warn(f"{path.name}: {mismatch}; or pass fidelity='warn' to run it anyway", fidelity)
            self.fidelity = _recorded_fidelity(record, path)
        else:
            self.fidelity = self._check_fidelity(model, check_inputs, fidelity_threshold)
        if self.fidelity is not None:
            enforce(self.fidelity, fidelity, path.name, FIDELITY_REMEDY)

    @staticmethod
    def _check_io(model: Any, path: Path) -> None:
        inputs = [i.get_any_name() for i in model.inputs]
        outputs = {o.get_any_name() for o in model.outputs}
        if inputs != [INPUT_NAME] or not set(OUTPUT_NAMES) <= outputs:
            raise SwinV2ServeError(f"{path}: expected input '{INPUT_NAME}' and outputs {list(OUTPUT_NAMES)}, "
                                   f"got {inputs} -> {sorted(outputs)}")

    def _check_fidelity(self, model: Any, check_inputs: np.ndarray | str | os.PathLike | None,
                        threshold: float) -> Verdict:
        props = {**self.properties, "INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"}
        props.pop("CACHE_DIR", None)
        reference = self.core.compile_model(model, DEVICE, props)
        if check_inputs is None:
            inputs = check_inputs_for(self.input_shape)
        elif isinstance(check_inputs, np.ndarray):
            inputs = self.check_input(check_inputs)
        else:
            inputs = preprocessed_images(check_inputs, self.metadata)
        batch = min(8, self.max_batch or 8)
        start = time.perf_counter()
        ref = run_batched(lambda x: reference(x)["logits"], inputs, batch)
        got = run_batched(lambda x: self.run(x)["logits"], inputs, batch)
        return judge(self.precision, ref, got, fidelity_tolerance(threshold), time.perf_counter() - start)

    def run(self, x: np.ndarray) -> dict[str, np.ndarray]:
        with self._lock:
            results = self._request.infer({INPUT_NAME: x})
            return {name: np.array(results[name], dtype=np.float32, copy=True) for name in OUTPUT_NAMES}

    def close(self) -> None:
        self._request = self.compiled = None


def _require_int8_match(path: Path, quantized: bool, requested: str) -> None:
    if requested == "int8" and not quantized:
        raise SwinV2ServeError(f"{path.name} is not quantized: make an int8 IR first with `swinv2-serve quantize "
                               f"--onnx {path.name} --images DIR --output {path.stem}_int8.xml`")
    if quantized and requested != "int8":
        raise SwinV2ServeError(f"{path.name} is an int8 IR and runs int8 only: serve the fp32 ONNX it was "
                               f"quantized from for precision {requested!r}")


def _recorded_fidelity(record: dict[str, Any] | None, path: Path) -> Verdict | None:
    if record is None:
        log.warning("%s: int8 IR without a swinv2-serve fidelity record (quantized elsewhere): its agreement "
                    "with fp32 is unknown", path.name)
        return None
    return Verdict.from_dict(record["fidelity"])


# -- per-layer profile (PERF_COUNT) ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class LayerTime:
    """One executed node of a compiled model: OpenVINO's name, type and kernel, and its mean ms per inference."""

    name: str
    node_type: str
    exec_type: str  # the kernel: brgemm_avx512_amx_int8, jit_avx512_bf16, ref_any_f32 ...
    ms: float


def layer_times(model: Any, x: np.ndarray, *, precision: str = "fp32", threads: int | None = None, iters: int = 10,
                warmup: int = 3) -> tuple[float, list[LayerTime]]:
    """OpenVINO's per-layer counters (``PERF_COUNT``) of ``model`` (an ``ov.Model`` or a file) on ``x``.

    ``precision`` is the compile hint (fp32/bf16; an int8 model's float ops). Returns the median wall ms of the
    profiled calls and each executed node's mean ms over them (the counters slow a call down a little).
    """
    ov = require_openvino()
    core = ov.Core()
    if not isinstance(model, ov.Model):
        model = core.read_model(os.fspath(model))
    props = {**compile_properties(precision, "latency", threads, None), "PERF_COUNT": True}
    compiled = core.compile_model(model, DEVICE, props)
    request = compiled.create_infer_request()
    for _ in range(warmup):
        request.infer({0: x})
    walls: list[float] = []
    calls: list[list[LayerTime]] = []
    for _ in range(iters):
        start = time.perf_counter()
        request.infer({0: x})
        walls.append((time.perf_counter() - start) * 1000.0)
        calls.append(executed_layers(request))
    return float(np.median(walls)), mean_layer_times(calls)


def executed_layers(request: Any) -> list[LayerTime]:
    """The nodes the last inference of ``request`` (compiled with ``PERF_COUNT``) executed, with their ms."""
    return [LayerTime(info.node_name, info.node_type, info.exec_type, info.real_time.total_seconds() * 1000.0)
            for info in request.get_profiling_info() if info.status == info.Status.EXECUTED]


def mean_layer_times(calls: Sequence[Sequence[LayerTime]]) -> list[LayerTime]:
    """Each node's mean ms over several inferences' ``executed_layers``, slowest first."""
    totals: dict[tuple[str, str, str], float] = {}
    for call in calls:
        for t in call:
            key = (t.name, t.node_type, t.exec_type)
            totals[key] = totals.get(key, 0.0) + t.ms
    layers = [LayerTime(name, node_type, exec_type, ms / max(1, len(calls)))
              for (name, node_type, exec_type), ms in totals.items()]
    return sorted(layers, key=lambda t: -t.ms)


def layer_summary(layers: Sequence[LayerTime]) -> list[tuple[str, str, int, float]]:
    """(node type, kernel, count, total ms) per kind of layer, slowest first."""
    groups: dict[tuple[str, str], list[float]] = {}
    for layer in layers:
        groups.setdefault((layer.node_type, layer.exec_type), []).append(layer.ms)
    return sorted(((t, e, len(ms), sum(ms)) for (t, e), ms in groups.items()), key=lambda row: -row[3])
