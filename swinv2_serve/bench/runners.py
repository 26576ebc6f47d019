"""The callables a sweep times, one per (backend, implementation, precision), built the way users run them.

Ours go through the product paths: ``runtime.load`` for torch, ONNX Runtime and OpenVINO, ``quantize_int8``
for int8, ``build_engine`` for TensorRT, and the embedded Triton server with the package's ``Classifier``
for Triton over HTTP/gRPC. Each returns a ``timing.Runner`` (x -> logits).
"""

from __future__ import annotations

import contextlib
import importlib.util
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from ..client import Classifier
from ..contract import read_onnx_metadata
from ..model import SwinV2
from ..openvino_int8 import load_calibration_set, quantize_int8
from ..preprocess import Preprocess
from ..runtime import load
from ..runtime.openvino_backend import resolve_precision
from ..runtime.torch_backend import autocast_logits
from ..server import EmbeddedServer, ServerConfig, free_ports
from ..tensorrt_build import build_engine
from ..timing import Runner
from .peers import timm_onnx_runner
from .results import BACKEND_PRECISIONS, OURS, TRITON_PROTOCOLS


def ours_runner(backend: str, precision: str, model: SwinV2, onnx_path: Path | None, threads: int) -> Runner:
    """Our deploy form in torch (``model`` is already at the target geometry), or our ONNX in a runtime."""
    if backend == "torch":
        runtime = load(model, "torch", precision=precision)
        cpu = torch.device("cpu")
        return Runner(backend, OURS, precision, lambda x: autocast_logits(runtime.module, x, precision, cpu).numpy())
    if onnx_path is None:
        raise ValueError(f"{backend} needs our ONNX export")
    options: dict[str, Any] = {"threads": threads, "precision": precision}
    if backend == "openvino":
        options.update(hint="latency", fidelity="off")
    runtime = load(onnx_path, backend, **options)
    if runtime.precision != precision:  # resolve_precision fell back: never time fp32 under a bf16 label
        raise ValueError(f"{backend} runs {runtime.precision}, not the requested {precision}")
    return Runner(backend, OURS, precision, lambda x: runtime(x)["logits"], runtime.close)


def int8_runners(ours_onnx: Path, timm_onnx: Path | None, calibration: Path, threads: int,
                 workdir: Path) -> list[Runner]:
    """OpenVINO int8. Ours: the product path (``quantize_int8`` -> IR -> ``OpenVINORuntime``); timm: its
    export quantized with the same NNCF settings on the same calibration images (a like-for-like peer)."""
    xml = quantize_int8(ours_onnx, calibration, workdir / f"{ours_onnx.stem}_int8.xml", fidelity="warn",
                        threads=threads).xml
    runtime = load(xml, "openvino", threads=threads, hint="latency", fidelity="off")
    runners = [Runner("openvino", OURS, "int8", lambda x: runtime(x)["logits"], runtime.close)]
    if timm_onnx is not None:
        images = load_calibration_set(calibration, Preprocess.from_metadata(read_onnx_metadata(ours_onnx)))
        runners.append(timm_onnx_runner("openvino", "int8", timm_onnx, threads, images.calibration))
    return runners


def tensorrt_runner(precision: str, onnx_path: Path, max_batch: int, workdir: Path) -> Runner:
    """An engine built from our fp32 ONNX (FP16 flag with FP32 islands for fp16)."""
    plan = workdir / f"{onnx_path.stem}_{precision}.plan"
    build_engine(onnx_path, plan, precision=precision, max_batch=max_batch, progress=False)
    runtime = load(plan, "tensorrt")
    return Runner("tensorrt", OURS, precision, lambda x: runtime(x)["logits"], runtime.close)


@contextlib.contextmanager
def triton_server(onnx_path: Path, name: str, threads: int, max_batch: int, queue_delay_us: int,
                  log_file: Path) -> Iterator[EmbeddedServer]:
    """The embedded Triton server for one exported resolution, on free ports; always stopped."""
    http, grpc, metrics = free_ports(3)
    config = ServerConfig(http_port=http, grpc_port=grpc, metrics_port=metrics, max_batch=max_batch,
                          max_queue_delay_us=queue_delay_us, log_file=str(log_file), preprocess_instances=1)
    with EmbeddedServer(onnx_path, name, config=config, backend="onnxruntime",
                        runtime_options={"threads": threads}) as server:
        yield server


def triton_runner(backend: str, server: EmbeddedServer, name: str) -> Runner:
    protocol = TRITON_PROTOCOLS[backend]
    url = server.http_url if protocol == "http" else server.grpc_url
    client = Classifier(url, protocol, model=name, concurrency=1, timeout=600.0)
    return Runner(backend, OURS, "fp32", lambda x: client.infer(x)["logits"], client.close)


def triton_unavailable_reason() -> str | None:
    missing = [m for m in ("pytriton", "tritonclient") if importlib.util.find_spec(m) is None]
    if missing:
        return f"{' and '.join(missing)} not installed: pip install 'swinv2-serve[serve]'"
    return None


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

