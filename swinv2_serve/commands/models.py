from __future__ import annotations

import argparse

from ..config import PRESETS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--verbose", "-v", action="store_true", help="show the architecture of each preset")


def run(args: argparse.Namespace) -> int:
    for name, cfg in sorted(PRESETS.items()):
        line = f"{name:40s} img {cfg.img_size[0]:4d}  window {cfg.window_size[0]:2d}  classes {cfg.num_classes}"
        if args.verbose:
            line += f"  C={cfg.embed_dim} depths={cfg.depths} heads={cfg.num_heads} cpb={cfg.pretrained_window_sizes}"
        print(line)
    return 0
