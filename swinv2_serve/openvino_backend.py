"""OpenVINO backend: our ONNX (or a saved IR ``.xml``) compiled for the CPU in fp32, bf16 or int8.

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

Fidelity: reduced precision is fragile for cosine attention, so a bf16 runtime is checked at load time
(``check_fidelity``): a few seeded random inputs run through an fp32 compile and the bf16 compile of the
same model; a top-1 agreement below ``FIDELITY_THRESHOLD`` (99%), or any NaN/Inf, is refused with the
numbers (``fidelity="refuse"``, the default), logged as a warning (``"warn"``), or not checked (``"off"``).
Random inputs are a harsh check set (flat logits, small top-1 margins): a trained SwinV2-T agreed 100% in
bf16 on real images but 97-98% on noise (benchmarks/OPENVINO.md). Pass ``check_inputs=`` (a preprocessed
array, or a folder of images like the ones you serve; ``serve --fidelity-images DIR``) to check on your
own data. An int8
IR has no fp32 weights left to compare with: the fidelity that ``quantize_int8`` measured on held-out
images is stored in the IR and enforced the same way on load.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import BackendUnavailableError, SwinV2ServeError
from .runtime import INPUT_NAME, METADATA_KEY, OUTPUT_NAMES, Runtime, read_onnx_metadata

log = logging.getLogger(__name__)

PRECISIONS = {"fp32": "f32", "bf16": "bf16"}  # int8: a quantized IR (openvino_int8), float ops as below
HINTS = {"latency": "LATENCY", "throughput": "THROUGHPUT"}
FIDELITY_MODES = ("refuse", "warn", "off")
FIDELITY_THRESHOLD = 0.99
FIDELITY_SAMPLES = 8
DEVICE = "CPU"


class FidelityError(SwinV2ServeError):
    """A reduced precision whose outputs disagree with fp32 too often to serve."""


def require_openvino() -> Any:
    try:
        import openvino as ov
    except ImportError as exc:
        raise BackendUnavailableError("openvino is not installed: pip install 'swinv2-serve[openvino]'") from exc
    return ov


def cpu_capabilities(core: Any | None = None) -> list[str]:
    core = core or require_openvino().Core()
    return list(core.get_property(DEVICE, "OPTIMIZATION_CAPABILITIES"))


VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")


@functools.cache  # the CPU does not change under a running process
def cpu_has_vnni(cpuinfo: str | os.PathLike = "/proc/cpuinfo") -> bool:
    """Whether this CPU has an int8 dot-product instruction (AVX512-VNNI, AVX-VNNI or AMX-INT8).

    OpenVINO reports "INT8" either way; the difference matters because without VNNI the int8 kernels
    accumulate pairs of u8*s8 products in saturating int16 (``vpmaddubsw``), which needs NNCF's overflow fix.
    Where the flags cannot be read (not Linux), the answer is False: the safe side.
    """
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return False
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return any(flag in flags for flag in VNNI_FLAGS)


def resolve_precision(requested: str, capabilities: Sequence[str]) -> tuple[str, str | None]:
    """(precision to run, message or None): bf16 only where the CPU reports BF16, else fp32 with a reason."""
    if requested not in PRECISIONS:
        raise SwinV2ServeError(f"openvino precision must be one of {', '.join(PRECISIONS)}, got {requested!r}")
    if requested == "bf16" and "BF16" not in capabilities:
        return "fp32", (f"bf16 requested but this CPU has no bf16 support (OpenVINO CPU capabilities: "
                        f"{', '.join(capabilities) or 'none'}; needs AVX512_BF16 or AMX): running fp32 instead")
    return requested, None


# -- fidelity ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FidelityReport:
    """How a reduced-precision model's logits compare with fp32 on a check set."""

    precision: str
    samples: int
    top1_agreement: float
    max_rel_error: float  # max over samples of max|got - ref| / max|ref|
    nonfinite: int
    threshold: float
    seconds: float

    @property
    def ok(self) -> bool:
        return self.nonfinite == 0 and self.top1_agreement >= self.threshold

    def summary(self) -> str:
        return (f"{self.precision}: top-1 agreement with fp32 {self.top1_agreement:.1%} on {self.samples} check inputs "
                f"(threshold {self.threshold:.0%}), max relative logit error {self.max_rel_error:.3g}, "
                f"{self.nonfinite} NaN/Inf")

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}


def check_inputs_for(shape: Sequence[int], samples: int = FIDELITY_SAMPLES, seed: int = 0) -> np.ndarray:
    """Seeded standard-normal inputs [samples, *shape] (the normalised-image space the model sees)."""
    return np.random.default_rng(seed).standard_normal((samples, *shape), dtype=np.float32)


def compare_logits(reference: np.ndarray, got: np.ndarray, precision: str, threshold: float = FIDELITY_THRESHOLD,
                   seconds: float = 0.0) -> FidelityReport:
    nonfinite = int((~np.isfinite(got)).sum())
    denom = np.maximum(np.abs(reference).max(axis=1), 1e-12)
    rel = np.abs(np.nan_to_num(got, nan=np.inf) - reference).max(axis=1) / denom
    agreement = float((got.argmax(1) == reference.argmax(1)).mean())
    return FidelityReport(
        precision=precision, samples=len(reference), top1_agreement=agreement,
        max_rel_error=float(rel.max()), nonfinite=nonfinite, threshold=threshold, seconds=seconds,
    )


def check_fidelity(
    reference: Callable[[np.ndarray], np.ndarray],
    candidate: Callable[[np.ndarray], np.ndarray],
    inputs: np.ndarray,
    *,
    precision: str,
    threshold: float = FIDELITY_THRESHOLD,
    batch: int = 8,
) -> FidelityReport:
    """Run ``inputs`` through both callables (x -> logits) in batches and compare top-1, error, NaN/Inf."""
    start = time.perf_counter()
    ref = np.concatenate([reference(inputs[i:i + batch]) for i in range(0, len(inputs), batch)])
    got = np.concatenate([candidate(inputs[i:i + batch]) for i in range(0, len(inputs), batch)])
    return compare_logits(ref, got, precision, threshold, time.perf_counter() - start)


def enforce_fidelity(report: FidelityReport, mode: str, source: str) -> None:
    if mode not in FIDELITY_MODES:
        raise SwinV2ServeError(f"fidelity must be one of {', '.join(FIDELITY_MODES)}, got {mode!r}")
    if report.ok:
        log.info("%s: %s", source, report.summary())
        return
    refuse_or_warn(f"{source}: {report.summary()}. This precision changes predictions: serve fp32 "
                   "(precision='fp32'), or pass fidelity='warn' to run it anyway", mode)


def refuse_or_warn(message: str, mode: str) -> None:
    """A fidelity problem: FidelityError under ``refuse``, a loud warning under ``warn``."""
    if mode == "refuse":
        raise FidelityError(message)
    log.warning("LOW FIDELITY %s", message)


# -- model files ------------------------------------------------------------------------------------------------
def read_model_metadata(model: Any, path: Path) -> dict[str, Any]:
    """The swinv2_serve JSON: the ONNX's metadata_props, or an IR's rt_info written by ``convert_to_ir``."""
    if path.suffix.lower() == ".onnx":
        return read_onnx_metadata(path)
    if model.has_rt_info([METADATA_KEY]):
        return json.loads(model.get_rt_info([METADATA_KEY]).astype(str))
    raise SwinV2ServeError(f"{path} has no '{METADATA_KEY}' rt_info: convert it with swinv2_serve.openvino_backend."
                           "convert_to_ir (or serve the ONNX)")


def convert_to_ir(onnx: str | os.PathLike, xml: str | os.PathLike) -> Path:
    """ONNX -> OpenVINO IR (``.xml`` + ``.bin``, fp32 weights) carrying the swinv2_serve metadata in rt_info."""
    ov = require_openvino()
    xml = Path(xml)
    xml.parent.mkdir(parents=True, exist_ok=True)
    model = ov.Core().read_model(os.fspath(onnx))
    model.set_rt_info(json.dumps(read_onnx_metadata(onnx)), [METADATA_KEY])
    ov.save_model(model, os.fspath(xml), compress_to_fp16=False)
    return xml


def compile_properties(precision: str, hint: str, threads: int | None, cache_dir: str | os.PathLike | None
                       ) -> dict[str, Any]:
    if hint not in HINTS:
        raise SwinV2ServeError(f"openvino hint must be one of {', '.join(HINTS)}, got {hint!r}")
    props: dict[str, Any] = {"INFERENCE_PRECISION_HINT": PRECISIONS[precision], "PERFORMANCE_HINT": HINTS[hint]}
    if threads:
        props["INFERENCE_NUM_THREADS"] = int(threads)
    if cache_dir:
        Path(cache_dir).mkdir(parents=True, exist_ok=True)
        props["CACHE_DIR"] = os.fspath(cache_dir)
    return props


def compile_onnx_dynamic_batch(path: str | os.PathLike, precision: str, threads: int | None,
                               hint: str = "latency", calibration: np.ndarray | None = None
                               ) -> Callable[[np.ndarray], np.ndarray]:
    """Any ONNX (e.g. timm's standard export) compiled for the CPU with batch -1, as ``x -> output 0``.

    No metadata or I/O names are required (unlike ``OpenVINORuntime``); the output is a float32 copy.
    ``precision="int8"`` quantizes it first with ``openvino_int8.quantize_model`` on ``calibration``
    (preprocessed images), the settings ``swinv2-serve quantize`` uses for ours.
    """
    ov = require_openvino()
    core = ov.Core()
    model = core.read_model(os.fspath(path))
    model.reshape({model.input(0): ov.PartialShape([-1, *model.input(0).get_partial_shape()[1:]])})
    if precision == "int8":
        from .openvino_int8 import float_precision_for_int8, quantize_model

        if calibration is None:
            raise SwinV2ServeError("int8 needs calibration images")
        model, precision = quantize_model(model, calibration), float_precision_for_int8(cpu_capabilities(core))
    compiled = core.compile_model(model, DEVICE, compile_properties(precision, hint, threads, None))
    request = compiled.create_infer_request()
    output = compiled.output(0)
    return lambda x: np.array(request.infer({0: x})[output], dtype=np.float32, copy=True)


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
        from .openvino_int8 import float_precision_for_int8, int8_record, is_quantized, overflow_mismatch

        self.core = ov.Core()
        model = self.core.read_model(os.fspath(path))
        quantized = is_quantized(model)
        self.requested_precision = precision or ("int8" if quantized else "fp32")
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
        self.fidelity: FidelityReport | None = None
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
            enforce_fidelity(self.fidelity, fidelity, path.name)

    @staticmethod
    def _check_io(model: Any, path: Path) -> None:
        inputs = [i.get_any_name() for i in model.inputs]
        outputs = {o.get_any_name() for o in model.outputs}
        if inputs != [INPUT_NAME] or not set(OUTPUT_NAMES) <= outputs:
            raise SwinV2ServeError(f"{path}: expected input '{INPUT_NAME}' and outputs {list(OUTPUT_NAMES)}, "
                                   f"got {inputs} -> {sorted(outputs)}")

    def _check_fidelity(self, model: Any, check_inputs: np.ndarray | str | os.PathLike | None,
                        threshold: float) -> FidelityReport:
        props = {**self.properties, "INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"}
        props.pop("CACHE_DIR", None)
        reference = self.core.compile_model(model, DEVICE, props)
        if check_inputs is None:
            inputs = check_inputs_for(self.input_shape)
        elif isinstance(check_inputs, np.ndarray):
            inputs = self.check_input(check_inputs)
        else:
            inputs = self._preprocessed_images(Path(check_inputs))
        batch = min(8, self.max_batch or 8)
        return check_fidelity(lambda x: reference(x)["logits"], lambda x: self.run(x)["logits"], inputs,
                              precision=self.precision, threshold=threshold, batch=batch)

    def _preprocessed_images(self, folder: Path, limit: int = 256) -> np.ndarray:
        from .preprocess import Preprocess, image_files

        images, unreadable = Preprocess.from_metadata(self.metadata).batch_readable(
            image_files(folder)[:limit] if folder.is_dir() else [])
        for line in unreadable:
            log.warning("fidelity images: skipped %s", line)
        if not len(images):
            raise SwinV2ServeError(f"fidelity images: no readable images under {folder}")
        return images

    def run(self, x: np.ndarray) -> dict[str, np.ndarray]:
        with self._lock:
            results = self._request.infer({INPUT_NAME: x})
            return {name: np.array(results[name], dtype=np.float32, copy=True) for name in OUTPUT_NAMES}

    def close(self) -> None:
        self._request = self.compiled = None

    def __repr__(self) -> str:
        return f"{super().__repr__()[:-1]}, precision={self.precision!r})"


def _require_int8_match(path: Path, quantized: bool, requested: str) -> None:
    if requested == "int8" and not quantized:
        raise SwinV2ServeError(f"{path.name} is not quantized: make an int8 IR first with `swinv2-serve quantize "
                               f"--onnx {path.name} --images DIR --output {path.stem}_int8.xml`")
    if quantized and requested != "int8":
        raise SwinV2ServeError(f"{path.name} is an int8 IR and runs int8 only: serve the fp32 ONNX it was "
                               f"quantized from for precision {requested!r}")


def _recorded_fidelity(record: dict[str, Any] | None, path: Path) -> FidelityReport | None:
    if record is None:
        log.warning("%s: int8 IR without a swinv2-serve fidelity record (quantized elsewhere): its agreement "
                    "with fp32 is unknown", path.name)
        return None
    fields = {k: v for k, v in record["fidelity"].items() if k != "ok"}
    return FidelityReport(**fields)


def openvino_unavailable_reason() -> str | None:
    try:
        ov = require_openvino()
    except BackendUnavailableError as exc:
        return str(exc)
    if DEVICE not in ov.Core().available_devices:
        return "OpenVINO sees no CPU device"
    return None


__all__ = ["FIDELITY_THRESHOLD", "FidelityError", "FidelityReport", "OpenVINORuntime", "check_fidelity",
           "compare_logits", "convert_to_ir", "cpu_capabilities", "resolve_precision"]
