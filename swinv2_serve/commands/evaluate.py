"""`swinv2-serve evaluate`: top-1 / top-5 on a labelled folder for several formats side by side.

    swinv2-serve evaluate --data val/ --checkpoint runs/digits/checkpoint.pt --onnx digits.onnx digits.fp16.onnx \\
        --ir digits.onnx digits_int8.xml --precision fp32 bf16 --url 127.0.0.1:8001 --protocol grpc --name digits \\
        --json eval.json --markdown eval.md

The eager checkpoint (fp32) is the reference when given: every row reports its accuracy delta and its top-1
agreement / largest logit difference against it on the same images.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from ..checkpoint import load_or_create
from ..client import Classifier
from ..contract import PRECISIONS
from ..errors import SwinV2ServeError
from ..evaluate import (
    DEFAULT_BATCH,
    Candidate,
    EvaluationReport,
    eager_candidates,
    evaluate,
    file_candidates,
    labelled_folder,
)
from ..labels import labels_for
from ._pretrained import CHECKPOINT_HELP, add_pretrained_argument, checkpoint_source


def add_arguments(parser: argparse.ArgumentParser) -> None:
    data = parser.add_argument_group("data")
    data.add_argument("--data", type=Path, required=True,
                      help="labelled images: DIR/<class>/*, ImageNet's DIR/n01440764/*, or flat with --ground-truth")
    data.add_argument("--ground-truth", type=Path, metavar="FILE",
                      help="flat folder: one 'FILE LABEL' (or FILE,LABEL) per line; LABEL a class name/synset/index")
    data.add_argument("--limit", type=int, help="evaluate a seeded random subset of this many images")
    data.add_argument("--seed", type=int, default=0)
    src = parser.add_argument_group("models (any mix; the eager fp32 model is the reference when given)")
    src.add_argument("--model", help="preset name (with --checkpoint of a foreign layout, or --pretrained)")
    src.add_argument("--checkpoint", type=checkpoint_source, help=CHECKPOINT_HELP)
    add_pretrained_argument(src)
    src.add_argument("--num-classes", type=int, help="class count of a foreign checkpoint (default: the preset's)")
    src.add_argument("--onnx", type=Path, nargs="+", default=[], help="ONNX exports run by ONNX Runtime (fp32/fp16)")
    src.add_argument("--ir", type=Path, nargs="+", default=[],
                     help="OpenVINO: IR .xml (int8 from `quantize`) or .onnx, at each --precision fp32/bf16")
    src.add_argument("--plan", type=Path, nargs="+", default=[], help="TensorRT engines (NVIDIA GPU)")
    src.add_argument("--url", help="a served model: HOST:PORT of Triton (the embedded server or NVIDIA's)")
    src.add_argument("--name", default="swinv2", help="served model name (default swinv2)")
    src.add_argument("--protocol", choices=["http", "grpc"], default="http")
    run_ = parser.add_argument_group("run")
    run_.add_argument("--precision", nargs="+", choices=PRECISIONS, default=["fp32"],
                      help="eager: fp32 (always) + fp16/bf16 autocast; OpenVINO: fp32/bf16 of fp32 models; int8 "
                           "IRs run int8, ONNX and plans as exported")
    run_.add_argument("--batch-size", type=int, default=DEFAULT_BATCH)
    run_.add_argument("--threads", type=int, help="ONNX Runtime / OpenVINO / torch threads (default: all cores)")
    run_.add_argument("--no-progress", action="store_true")
    out = parser.add_argument_group("output")
    out.add_argument("--json", type=Path, default=Path("evaluate.json"), help="results (default ./evaluate.json)")
    out.add_argument("--markdown", type=Path, help="also write the table here")


def _candidates(args: argparse.Namespace) -> list[Candidate]:
    rows: list[Candidate] = []
    if args.model or args.checkpoint is not None or args.pretrained:
        model = load_or_create(args.model, args.checkpoint, num_classes=args.num_classes, pretrained=args.pretrained)
        rows += eager_candidates(model, _source(args), args.precision)
    for backend, paths in (("onnxruntime", args.onnx), ("openvino", args.ir), ("tensorrt", args.plan)):
        for path in paths:
            rows += file_candidates(path, backend, args.precision, threads=args.threads)
    if args.url:
        rows.append(served_candidate(args.url, args.name, args.protocol))
    return rows


def _source(args: argparse.Namespace) -> str:
    if args.pretrained:
        return f"{args.model} (published weights, {'default tag' if args.pretrained is True else args.pretrained})"
    return str(args.checkpoint) if args.checkpoint is not None else f"{args.model} (random weights)"


def served_candidate(url: str, name: str, protocol: str) -> Candidate:
    """A model served by Triton, through the package's client (its ``Preprocess`` from the served metadata)."""
    client = Classifier(url, protocol, name)
    return Candidate(name=f"served {name} ({protocol})", backend="triton", precision="as served",
                     source=f"{protocol}://{client.url}/{name}", predict=lambda x: client.infer(x)["logits"],
                     preprocess=client.preprocess, num_classes=client.metadata.num_classes,
                     labels=tuple(client.labels), close=client.close)


def write_outputs(report: EvaluationReport, args: argparse.Namespace, seconds: float) -> None:
    payload: dict[str, Any] = {**report.to_dict(), "seconds": round(seconds, 2),
                               "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()
                                        if k != "func"}}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    if args.markdown is not None:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(f"# swinv2-serve evaluate\n\n{report.markdown()}")


def run(args: argparse.Namespace) -> int:
    began = time.perf_counter()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    candidates = _candidates(args)
    try:
        if not candidates:
            raise SwinV2ServeError("nothing to evaluate: give --checkpoint/--model, --onnx, --ir, --plan or --url")
        labels = candidates[0].labels or tuple(labels_for(candidates[0].num_classes))
        data = labelled_folder(args.data, labels, ground_truth=args.ground_truth).subset(args.limit, args.seed)
        report = evaluate(data, candidates, batch_size=args.batch_size, progress=not args.no_progress)
    finally:
        for candidate in candidates:
            candidate.close()
    print(report.markdown())
    write_outputs(report, args, time.perf_counter() - began)
    print(f"wrote {args.json}" + (f" and {args.markdown}" if args.markdown else ""))
    return 0
