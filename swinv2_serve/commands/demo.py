"""`swinv2-serve demo`: the main job end to end on this machine (what `make demo` runs)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..demo import run_demo


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--output", type=Path, default=Path("runs/demo"), help="where everything is written")
    parser.add_argument("--images", type=Path, help="photos to classify as well (e.g. ../shared/images)")
    parser.add_argument("--checkpoint", type=Path, help="use this checkpoint instead of training the digits demo")
    parser.add_argument("--per-class", type=int, default=20, help="held-out digits classified per class")
    parser.add_argument("--no-bench", action="store_true", help="skip the latency sweep")


def run(args: argparse.Namespace) -> int:
    run_demo(args.output, images=args.images, checkpoint=args.checkpoint, per_class=args.per_class,
             bench=not args.no_bench)
    return 0
