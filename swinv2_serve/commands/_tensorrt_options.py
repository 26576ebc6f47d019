"""The TensorRT build options shared by `swinv2-serve export --format trt` and `swinv2-serve engine`."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from ..errors import SwinV2ServeError
from ..runtime.engine import batch_profile
from ..tensorrt_build import DEFAULT_TOLERANCE, TensorRTOptions, check_engine_precision


def _precision_arg(value: str) -> str:
    try:
        return check_engine_precision(value.lower())
    except SwinV2ServeError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _positive_int(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {value!r}") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {number}")
    return number


def _positive_float(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {value!r}") from None
    if not number > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
    return number


def _fraction(value: str) -> float:
    number = _positive_float(value)
    if number > 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {value}")
    return number


def add_tensorrt_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``--format trt`` options of ``swinv2-serve export``."""
    g = parser.add_argument_group("TensorRT engines (--format trt; TensorRT 10 + an NVIDIA GPU)")
    g.add_argument("--precision", type=_precision_arg, default="fp16", metavar="{fp32,fp16}",
                   help="engine precision; fp16 keeps normalisations and softmax in FP32 (default fp16)")
    g.add_argument("--min-batch", type=_positive_int, default=1, help="profile min batch (default 1)")
    g.add_argument("--opt-batch", type=_positive_int, default=None,
                   help="batch TensorRT tunes for (default: max/2 rounded down to a power of two)")
    g.add_argument("--max-batch", type=_positive_int, default=32, help="profile max batch (default 32)")
    g.add_argument("--workspace-gib", type=_positive_float, default=4.0, help="builder workspace (default 4)")
    g.add_argument("--timing-cache", type=Path, default=None, metavar="FILE",
                   help="read and update this timing cache (rebuilds on the same GPU get much faster)")
    g.add_argument("--version-compatible", action="store_true",
                   help="engine also runs on later TensorRT 10.x releases (BuilderFlag.VERSION_COMPATIBLE)")
    g.add_argument("--hardware-compatible", action="store_true",
                   help="engine runs on any Ampere or newer GPU (HardwareCompatibilityLevel.AMPERE_PLUS)")
    g.add_argument("--strongly-typed", action=argparse.BooleanOptionalAction, default=None,
                   help="strongly typed network (default: yes for an fp16 ONNX, no for fp32)")
    g.add_argument("--max-abs-diff-rtol", type=_positive_float, default=None, metavar="RTOL",
                   help="verification: allowed |logits diff| relative to the largest logit "
                        "(default 0.01 fp32, 0.05 fp16)")
    g.add_argument("--min-top1", type=_fraction, default=None,
                   help="verification: minimum top-1 agreement with ONNX Runtime (default 0.99 fp32, 0.95 fp16)")


def tensorrt_options_from_args(args: argparse.Namespace) -> TensorRTOptions:
    """Validate the parsed options (call it before any slow step); ``SwinV2ServeError`` says what is wrong."""
    precision = check_engine_precision(args.precision)
    try:
        profile = batch_profile(args.min_batch, args.opt_batch, args.max_batch)
    except SwinV2ServeError as exc:
        raise SwinV2ServeError(f"--min-batch/--opt-batch/--max-batch: {exc}") from None
    default = DEFAULT_TOLERANCE[precision]
    tolerance = dataclasses.replace(default, rtol=args.max_abs_diff_rtol or default.rtol,
                                    min_top1=args.min_top1 or default.min_top1)
    return TensorRTOptions(precision=precision, profile=profile, workspace_gib=float(args.workspace_gib),
                           timing_cache=args.timing_cache, version_compatible=bool(args.version_compatible),
                           hardware_compatible=bool(args.hardware_compatible), strongly_typed=args.strongly_typed,
                           tolerance=tolerance)
