"""`swinv2-serve demo`: the main job end to end on this machine (what `make demo` runs)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..checkpoint import load_or_create, save_checkpoint
from ..demo import run_demo
from ._pretrained import add_pretrained_argument, checkpoint_source, weights_file


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--output", type=Path, default=Path("runs/demo"), help="where everything is written")
    parser.add_argument("--images", type=Path, help="photos to classify as well (e.g. ../shared/images)")
    parser.add_argument("--checkpoint", type=checkpoint_source,
                        help="use this checkpoint (ours: path or URL) instead of training the digits demo")
    parser.add_argument("--model", default="swinv2_tiny_window8_256", help="preset for --pretrained")
    add_pretrained_argument(parser)
    parser.add_argument("--per-class", type=int, default=20, help="held-out digits classified per class")
    parser.add_argument("--no-bench", action="store_true", help="skip the latency sweep")


def run(args: argparse.Namespace) -> int:
    checkpoint = weights_file(None, args.checkpoint, None)
    if args.pretrained:  # the demo runs on our self-describing checkpoints: write one with the published weights
        model = load_or_create(args.model, pretrained=args.pretrained)
        checkpoint = save_checkpoint(model, args.output / "pretrained" / "checkpoint.pt")
    run_demo(args.output, images=args.images, checkpoint=checkpoint, per_class=args.per_class,
             bench=not args.no_bench)
    return 0
