"""`swinv2-serve` / `python -m swinv2_serve`: a thin layer over the stage modules.

Each subcommand lives in ``swinv2_serve/commands/<name>.py`` with ``add_arguments(parser)`` and
``run(args) -> int``; a command's module (and the libraries it needs) is imported only when that command
is named, so ``swinv2-serve --help`` is fast and a missing optional extra only affects its own command.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from .errors import SwinV2ServeError

COMMANDS: dict[str, str] = {
    "models": "list the model presets",
    "export": "checkpoint -> deploy form -> ONNX (and TensorRT) per resolution",
    "quantize": "int8 OpenVINO IR from an export, calibrated and fidelity-checked on your images",
    "repository": "write a Triton model repository for an exported model",
    "serve": "start the embedded Triton server (HTTP, gRPC, metrics)",
    "classify": "classify images through a running server",
    "bench": "latency / throughput across resolutions, batches and backends",
    "train": "fine-tune or SimMIM-pretrain a SwinV2",
    "demo": "train, export, serve, classify and benchmark end to end on this machine",
    "engine": "build the missing TensorRT engines of a repository on this GPU (the container's entrypoint)",
    "kube": "Kubernetes / KServe manifests (Kustomize base + gpu/cpu overlays) for a model repository",
    "evaluate": "top-1/top-5 on a labelled folder for several formats (and a served model) side by side",
    "optimize": "find the fastest path that keeps the model's answers on this machine, and write its repository",
}


def _command_module(name: str):  # noqa: ANN202
    return importlib.import_module(f"swinv2_serve.commands.{name}")


def build_parser(argv: Sequence[str] | None = None, *, every_command: bool = False) -> argparse.ArgumentParser:
    """The parser; only the command named in ``argv`` gets its arguments (all of them with ``every_command``)."""
    parser = argparse.ArgumentParser(prog="swinv2-serve", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    wanted = next((a for a in argv or () if not a.startswith("-")), None)
    for name, help_text in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if every_command or wanted == name:
            _command_module(name).add_arguments(p)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    try:
        return int(_command_module(args.command).run(args) or 0)
    except SwinV2ServeError as exc:
        print(f"swinv2-serve {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"swinv2-serve {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
