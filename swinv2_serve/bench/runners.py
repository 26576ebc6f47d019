"""The callables a sweep times, one per (backend, implementation, precision), built the way users run them.

Ours go through the product paths, built by ``candidates.build_candidate`` (shared with ``optimize``):
``runtime.load`` for torch, ONNX Runtime and OpenVINO, ``quantize_int8`` for int8, ``build_engine`` for
TensorRT; and the embedded Triton server with the package's ``Classifier`` for Triton over HTTP/gRPC. Each
returns a ``timing.Runner`` (x -> logits).
"""

from __future__ import annotations

import contextlib
import importlib.util
from collections.abc import Iterator
from pathlib import Path

from ..client import Classifier
from ..contract import read_onnx_metadata
from ..model import SwinV2
from ..openvino_int8 import load_calibration_set
from ..preprocess import Preprocess
from ..server import EmbeddedServer, ServerConfig, free_ports
from ..timing import Runner
from .candidates import CandidateSpec, build_candidate, precision_unavailable_reason
from .peers import timm_onnx_runner
from .results import OURS, TRITON_PROTOCOLS


def ours_runner(backend: str, precision: str, model: SwinV2 | None, onnx_path: Path | None, threads: int) -> Runner:
    """Our deploy form in torch (``model`` is already at the target geometry), or our ONNX in a runtime."""
    return build_candidate(CandidateSpec(backend, precision), model=model, onnx=onnx_path, threads=threads).runner()


def int8_runners(ours_onnx: Path, timm_onnx: Path | None, calibration: Path, threads: int,
                 workdir: Path) -> list[Runner]:
    """OpenVINO int8. Ours: the product path (``quantize_int8`` -> IR -> ``OpenVINORuntime``); timm: its
    export quantized with the same NNCF settings on the same calibration images (a like-for-like peer)."""
    ours = build_candidate(CandidateSpec("openvino", "int8"), onnx=ours_onnx, threads=threads, workdir=workdir,
                           calibration=calibration)
    runners = [ours.runner()]
    if timm_onnx is not None:
        images = load_calibration_set(calibration, Preprocess.from_metadata(read_onnx_metadata(ours_onnx)))
        runners.append(timm_onnx_runner("openvino", "int8", timm_onnx, threads, images.calibration))
    return runners


def tensorrt_runner(precision: str, onnx_path: Path, max_batch: int, workdir: Path) -> Runner:
    """An engine built from our fp32 ONNX (FP16 flag with FP32 islands for fp16)."""
    return build_candidate(CandidateSpec("tensorrt", precision), onnx=onnx_path, workdir=workdir,
                           max_batch=max_batch).runner()


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


__all__ = ["int8_runners", "ours_runner", "precision_unavailable_reason", "tensorrt_runner", "triton_runner",
           "triton_server", "triton_unavailable_reason"]
