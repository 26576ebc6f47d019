"""`swinv2-serve engine`: build the missing TensorRT engines of a repository on this GPU (the container entrypoint).

    swinv2-serve engine --repository /models --timing-cache /models/.timing_cache            # in the serving image
    swinv2-serve engine --repository repo/ --dry-run                                            # the exact commands
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..engine_at_start import BUILDERS, build_missing, recipes


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--repository", type=Path, required=True, metavar="DIR",
                        help="a repository written with `swinv2-serve repository --engine-at-start`")
    parser.add_argument("--timing-cache", type=Path, metavar="FILE",
                        help="TensorRT timing cache to read and update (on the shared volume: later pods build faster)")
    parser.add_argument("--builder", choices=BUILDERS, default="trtexec",
                        help="trtexec (the serving image) or our Python builder (needs the tensorrt package)")
    parser.add_argument("--dry-run", action="store_true", help="print the build commands, build nothing")


def run(args: argparse.Namespace) -> int:
    if not recipes(args.repository):
        print(f"{args.repository}: no model is built at start (no */engine.json): nothing to do")
        return 0
    commands = build_missing(args.repository, builder=args.builder, timing_cache=args.timing_cache,
                             dry_run=args.dry_run, log=lambda line: print(line, flush=True))
    if not commands:
        print("every engine is there")
    return 0
