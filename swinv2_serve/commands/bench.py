"""`swinv2-serve bench` (being built: see the open issues)."""

from __future__ import annotations

import argparse

from ..errors import SwinV2ServeError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    pass


def run(args: argparse.Namespace) -> int:
    raise SwinV2ServeError("'bench' is not available in this build yet")
