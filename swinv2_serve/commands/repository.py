"""`swinv2-serve repository`: write a Triton model repository (NAME, NAME_preprocess, NAME_image)."""

from __future__ import annotations

import argparse

from ..openvino_int8 import OVERFLOW_FIX
from ..repository import OpenVINOOptions, write_repository


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--onnx", metavar="PATH", help="exported ONNX (its metadata describes the model)")
    parser.add_argument("--plan", metavar="PATH", help="TensorRT engine (with its <plan>.json sidecar)")
    parser.add_argument("--name", default="swinv2", help="model name; NAME_preprocess and NAME_image are added")
    parser.add_argument("--output", required=True, metavar="DIR", help="repository root (created if missing)")
    parser.add_argument("--max-batch", type=int, help="max_batch_size (default 32; a plan's profile max)")
    parser.add_argument("--instances", type=int, default=1, help="instances of the network model")
    parser.add_argument("--kind", choices=["cpu", "gpu"], default="gpu",
                        help="gpu: KIND_GPU (+ TensorRT accelerator for ONNX); cpu: KIND_CPU onnxruntime")
    parser.add_argument("--engine-at-start", action="store_true",
                        help="tensorrt_plan config whose engine the container builds on its GPU at start "
                             "(`swinv2-serve engine`)")
    parser.add_argument("--engine-precision", choices=["fp16", "fp32"], default="fp16",
                        help="with --engine-at-start: fp16 needs the fp16 export as --onnx (its FP32 islands)")
    parser.add_argument("--max-queue-delay-us", type=int, default=2000, help="dynamic batching wait (us)")
    parser.add_argument("--backend", choices=["onnxruntime", "openvino"], default="onnxruntime",
                        help="openvino: Triton's OpenVINO backend on CPU (1/model.xml + model.bin)")
    parser.add_argument("--precision", choices=["fp32", "bf16", "int8"], default="fp32",
                        help="openvino: bf16 (HINT_BF16) or int8 (quantized IR), written only if it passes the "
                             "fidelity check here")
    parser.add_argument("--calibration", metavar="DIR", help="openvino int8: images to calibrate and check on")
    parser.add_argument("--fidelity-images", metavar="DIR",
                        help="openvino bf16: check agreement on these images (default: seeded random inputs)")
    parser.add_argument("--fidelity", choices=["refuse", "warn"], default="refuse",
                        help="openvino bf16/int8 below 99%% top-1 agreement with fp32: refuse (default) or write "
                             "it anyway with a warning")
    parser.add_argument("--overflow-fix", choices=OVERFLOW_FIX, default="auto",
                        help="openvino int8: NNCF's overflow fix; auto = every layer unless this CPU has VNNI, "
                             "enable = every layer (for serving CPUs without VNNI)")
    parser.add_argument("--threads", type=int, help="openvino: INFERENCE_NUM_THREADS")
    parser.add_argument("--hint", choices=["latency", "throughput"], default="latency",
                        help="openvino: PERFORMANCE_HINT")


def run(args: argparse.Namespace) -> int:
    openvino = OpenVINOOptions(precision=args.precision, threads=args.threads, hint=args.hint,
                               calibration=args.calibration, fidelity_images=args.fidelity_images,
                               fidelity=args.fidelity, overflow_fix=args.overflow_fix)
    repo = write_repository(
        args.output, args.name, onnx=args.onnx, plan=args.plan, max_batch=args.max_batch, instances=args.instances,
        kind=args.kind, max_queue_delay_us=args.max_queue_delay_us, engine_at_start=args.engine_at_start,
        engine_precision=args.engine_precision,
        backend=args.backend, openvino=openvino,
    )
    for model, config in repo.configs.items():
        print(f"{model:<32} {config}")
    print(f"max_batch_size {repo.max_batch}; run: tritonserver --model-repository={repo.root.resolve()}")
    return 0
