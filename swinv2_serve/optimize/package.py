"""The winner as a Triton repository, and proof that the repository serves what was chosen.

``write_winner`` writes NAME, NAME_preprocess and NAME_image for the chosen candidate with the settings the
measurements support (preferred batch sizes from the throughput curve, instances that fit the cores, the
batcher delay of the objective, Triton's warm-up). ``served_check`` starts the embedded Triton on that
repository, exactly as ``swinv2-serve serve --repository DIR --name NAME`` does, and compares the logits it
serves (raw tensors to NAME, one encoded image to NAME_image) with the chosen file loaded directly.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import numpy as np

from ..contract import ENSEMBLE_SUFFIX
from ..preprocess import Preprocess, image_files
from ..repository import OpenVINOOptions, write_repository
from ..runtime import load
from ..runtime.openvino_backend import convert_to_ir
from ..server import ServerConfig, free_ports, running
from .choice import CandidateResult, instance_count, preferred_batch_sizes, queue_delay_us

SERVED_ATOL = 1e-4  # relative to max(1, |logits|): the same runtime on the same batch


def _bf16(chosen: CandidateResult) -> bool:
    return chosen.backend == "openvino" and chosen.precision == "bf16"


def runtime_options(chosen: CandidateResult, threads: int, images: Path | None = None) -> dict[str, Any]:
    """How the embedded server loads the chosen file (``serve --precision/--threads/--fidelity-images``); an
    OpenVINO bf16 model is checked again at load, on ``images`` (without them: on random inputs, a harsher set
    than the held-out images optimize checked on). ``images=None``: loading it directly, no load-time check."""
    if chosen.backend == "tensorrt":
        return {"precision": chosen.precision}
    options: dict[str, Any] = {"precision": chosen.precision, "threads": threads}
    if _bf16(chosen):
        options.update({"check_inputs": str(images)} if images is not None else {"fidelity": "off"})
    return options


def serve_command(repository: Path, name: str, chosen: CandidateResult, threads: int, images: Path) -> str:
    extra = f" --precision bf16 --fidelity-images {images}" if _bf16(chosen) else ""
    threads_flag = "" if chosen.backend == "tensorrt" else f" --threads {threads}"
    return f"swinv2-serve serve --repository {repository} --name {name}{extra}{threads_flag}"


def write_winner(repository: Path, name: str, chosen: CandidateResult, onnx: Path, *, objective: str,
                 max_batch: int, threads: int, cores: int, workdir: Path) -> dict[str, Any]:
    """Write the chosen candidate's models into ``repository``; returns what was written and why."""
    curve = {int(b): v for b, v in chosen.profile.get("throughput_img_s", {}).items()}
    assert chosen.latency_ms is not None and chosen.path is not None
    settings = {
        "max_batch": max_batch,
        "instances": instance_count(cores, threads),
        "preferred_batch_sizes": preferred_batch_sizes(curve),
        "max_queue_delay_us": queue_delay_us(objective, chosen.latency_ms["p50"]),
    }
    common: dict[str, Any] = {"max_batch": max_batch, "instances": settings["instances"],
                              "max_queue_delay_us": settings["max_queue_delay_us"],
                              "preferred_batch_sizes": settings["preferred_batch_sizes"]}
    if chosen.backend == "openvino":
        ir = Path(chosen.path)
        if ir.suffix != ".xml":  # fp32 / bf16 compile the ONNX: the repository holds its IR
            ir = convert_to_ir(onnx, workdir / f"{onnx.stem}_ir.xml")
        write_repository(repository, name, onnx=onnx, backend="openvino", ir=ir, kind="cpu",
                         openvino=OpenVINOOptions(precision=chosen.precision, threads=threads, hint="latency"),
                         **common)
    elif chosen.backend == "tensorrt":
        write_repository(repository, name, onnx=onnx, plan=chosen.path, kind="gpu", **common)
    elif chosen.backend == "onnxruntime":
        write_repository(repository, name, onnx=onnx, kind="cpu", **common)
    else:
        raise ValueError(f"{chosen.name} has no Triton repository form")
    return {"name": name, "backend": chosen.backend, "precision": chosen.precision, **settings,
            "warmup": ["random_data batch 1", f"zero_data batch {max_batch}"]}


def served_check(repository: Path, name: str, chosen: CandidateResult, threads: int, check: np.ndarray,
                 images_dir: Path, log_file: Path, max_batch: int) -> dict[str, Any]:
    """Serve ``repository`` with the embedded Triton and compare NAME and NAME_image with the chosen file."""
    import tritonclient.grpc as grpcclient

    assert chosen.path is not None
    options = runtime_options(chosen, threads, images_dir)
    direct = load(chosen.path, chosen.backend, **runtime_options(chosen, threads))
    x = np.ascontiguousarray(check[:min(8, max_batch)])
    image = _first_readable(images_dir, direct.metadata)
    http, grpc, metrics = free_ports(3)
    config = ServerConfig(http_port=http, grpc_port=grpc, metrics_port=metrics, max_batch=max_batch,
                          max_queue_delay_us=0, log_file=str(log_file))
    with running(repository=repository, name=name, config=config, backend=chosen.backend,
                 runtime_options=options) as server, \
            contextlib.closing(grpcclient.InferenceServerClient(server.grpc_url)) as client:
        tensor = grpcclient.InferInput("input", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x)
        served = client.infer(name, [tensor]).as_numpy("logits")
        served_image = None
        if image is not None:
            encoded = grpcclient.InferInput("image", [1, 1], "BYTES")
            encoded.set_data_from_numpy(np.array([[image[0].read_bytes()]], dtype=object))
            served_image = client.infer(f"{name}{ENSEMBLE_SUFFIX}", [encoded]).as_numpy("logits")
    want = direct(x)["logits"]
    out = _agreement(served, want, "tensor", len(x))
    if image is not None and served_image is not None:
        out["image"] = _agreement(served_image, direct(image[1])["logits"], "image", 1)
        out["image"]["file"] = image[0].name
    out["equal"] = out["equal"] and out.get("image", {"equal": True})["equal"]
    direct.close()
    return out


def _agreement(served: np.ndarray, direct: np.ndarray, what: str, n: int) -> dict[str, Any]:
    diff = float(np.abs(served - direct).max())
    limit = SERVED_ATOL * max(1.0, float(np.abs(direct).max()))
    same_top1 = bool(np.array_equal(served.argmax(1), direct.argmax(1)))
    return {"inputs": n, "what": what, "max_abs_diff": diff, "limit": limit, "top1_equal": same_top1,
            "equal": diff <= limit and same_top1}


def _first_readable(folder: Path, metadata: Any) -> tuple[Path, np.ndarray] | None:
    preprocess = Preprocess.from_metadata(metadata)
    for path in image_files(folder):
        with contextlib.suppress(Exception):
            return path, preprocess(path)[None]
    return None

