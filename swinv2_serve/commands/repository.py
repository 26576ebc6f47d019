"""`swinv2-serve repository`: write a Triton model repository (NAME, NAME_preprocess, NAME_image)."""

from __future__ import annotations

import argparse


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
                        help="tensorrt_plan config whose engine the container builds on its GPU at start")
    parser.add_argument("--max-queue-delay-us", type=int, default=2000, help="dynamic batching wait (us)")


def run(args: argparse.Namespace) -> int:
    from ..repository import write_repository

    repo = write_repository(
        args.output, args.name, onnx=args.onnx, plan=args.plan, max_batch=args.max_batch, instances=args.instances,
        kind=args.kind, max_queue_delay_us=args.max_queue_delay_us, engine_at_start=args.engine_at_start,
    )
    for model, config in repo.configs.items():
        print(f"{model:<32} {config}")
    print(f"max_batch_size {repo.max_batch}; run: tritonserver --model-repository={repo.root.resolve()}")
    return 0
