"""`swinv2-serve quantize`: our ONNX -> an int8 OpenVINO IR, calibrated and fidelity-checked on your images."""

from __future__ import annotations

import argparse
import logging

from ..openvino_int8 import DEFAULT_CALIBRATION, DEFAULT_CHECK, INT8_RECIPES, OVERFLOW_FIX, quantize_int8, require_nncf


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--onnx", required=True, metavar="PATH", help="our fp32 export (.onnx, or an fp32 IR .xml)")
    parser.add_argument("--images", required=True, metavar="DIR",
                        help="images like the ones you will serve (searched recursively; class folders are fine)")
    parser.add_argument("--output", required=True, metavar="XML", help="int8 IR to write (.xml; .bin beside it)")
    parser.add_argument("--calibration", type=int, default=DEFAULT_CALIBRATION,
                        help=f"images used to calibrate (default {DEFAULT_CALIBRATION})")
    parser.add_argument("--check", type=int, default=DEFAULT_CHECK,
                        help=f"images held out for the fidelity check (default {DEFAULT_CHECK}, at most a fifth)")
    parser.add_argument("--fidelity", choices=["refuse", "warn"], default="refuse",
                        help="below 99%% top-1 agreement with fp32 on the held-out images: refuse (default) or "
                             "write it anyway with a warning")
    parser.add_argument("--overflow-fix", choices=OVERFLOW_FIX, default="auto",
                        help="NNCF's overflow fix (weights on 7 bits): auto = every layer unless this CPU has VNNI; "
                             "enable = every layer, for an IR served on CPUs without VNNI (e.g. AVX2-only); "
                             "first-layer = NNCF's default, for VNNI/AMX fleets")
    parser.add_argument("--max-accuracy-drop", type=float, metavar="POINTS",
                        help="with labelled images (class folders): also refuse an int8 model whose top-1 accuracy on "
                             "the held-out images is more than POINTS percentage points below fp32's")
    parser.add_argument("--recipe", choices=["default", *[k for k in INT8_RECIPES if k]], default="default",
                        help="what stays in float: default = the attention products (any x86 CPU); amx = also the "
                             "narrow stage-1/2 and attention-output layers (faster on AMX: benchmarks/OPTIMIZE.md)")
    parser.add_argument("--threads", type=int, help="OpenVINO threads for the check")


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    require_nncf().set_log_level(logging.WARNING)  # its INFO lists every node it leaves alone
    result = quantize_int8(args.onnx, args.images, args.output, calibration=args.calibration, check=args.check,
                           fidelity=args.fidelity, threads=args.threads, overflow_fix=args.overflow_fix,
                           max_accuracy_drop=None if args.max_accuracy_drop is None else args.max_accuracy_drop / 100,
                           recipe=INT8_RECIPES["" if args.recipe == "default" else args.recipe])
    print(f"wrote {result.xml} in {result.seconds:.0f}s: calibrated on {result.calibration_images} images; "
          f"{result.report.summary()}")
    if result.accuracy is not None:
        print(result.accuracy.summary())
    verdict = "" if result.speed.ratio < 1.0 else ": int8 does not pay off here"
    print(f"on this CPU, {result.speed.summary()}{verdict}")
    print(f"serve it: swinv2-serve serve --onnx {result.xml}")
    return 0
