"""`swinv2-serve optimize`: the fastest path that keeps the model's answers on this machine, deployed.

    swinv2-serve optimize --checkpoint run/checkpoint.pt --images my_images/ --objective latency --output opt/
    swinv2-serve serve --repository opt/repository --name swinv2

Every path this machine can run (ONNX Runtime fp32; OpenVINO fp32, bf16 where the CPU has it, int8 calibrated
on part of --images; TensorRT fp32/fp16 where a GPU is; torch eager fp32/bf16) is built once, checked against
the model in PyTorch fp32 on held-out images, profiled if it passes, and the fastest passing one is written as
a Triton repository. Paths that cannot run here are listed with the reason. Writes DIR/optimize.md,
DIR/optimize.json, DIR/latency.png, DIR/throughput.png and DIR/repository; nothing appears in DIR unless the
run completes.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import signal
import sys
from pathlib import Path

from ..openvino_int8 import require_nncf
from ..optimize import DEFAULT_CANDIDATES, OBJECTIVES, OptimizeConfig, parse_candidate, run_optimize
from ..verification import FIDELITY_THRESHOLD


def add_arguments(parser: argparse.ArgumentParser) -> None:
    src = parser.add_argument_group("model")
    src.add_argument("--checkpoint", type=Path, help="our checkpoint, or MSRA/timm/HF weights with --model")
    src.add_argument("--model", help="preset name (random, perturbed weights unless --checkpoint: for trying it out)")
    src.add_argument("--img-size", type=int, nargs="+", default=[],
                     help="resolutions (default: the model's own); the window scales with the image")
    search = parser.add_argument_group("search")
    search.add_argument("--images", type=Path, required=True, metavar="DIR",
                        help="images like the ones you will serve (recursive): a fifth (at most --check) is held out "
                             "for the fidelity check, the rest (at most --calibration) calibrates int8")
    search.add_argument("--objective", choices=OBJECTIVES, default="latency",
                        help="latency: lowest batch-1 p50; throughput: most images/s over the batch sweep")
    search.add_argument("--max-batch", type=int, default=8, help="batch sweep 1, 2, 4 ... N; the repository's max")
    search.add_argument("--budget-s", type=float, default=600.0,
                        help="wall-clock budget of the whole run; profiling gets what building leaves (default 600)")
    search.add_argument("--threads", type=int, help="threads per runtime (default: every usable core)")
    search.add_argument("--fidelity-threshold", type=float, default=FIDELITY_THRESHOLD,
                        help=f"top-1 agreement with fp32 eager a candidate needs (default {FIDELITY_THRESHOLD})")
    search.add_argument("--max-rel-error", type=float,
                        help="also refuse reduced precisions whose max relative logit error exceeds this")
    default = " ".join("/".join(filter(None, (s.backend, s.precision, s.variant))) for s in DEFAULT_CANDIDATES)
    search.add_argument("--candidates", nargs="+", type=parse_candidate, metavar="BACKEND/PRECISION[/VARIANT]",
                        help=f"paths to try (default: {default}; add torch/fp32/compile for torch.compile)")
    search.add_argument("--calibration", type=int, default=300, help="int8 calibration images, at most")
    search.add_argument("--check", type=int, default=100, help="held-out check images, at most (and a fifth)")
    out = parser.add_argument_group("output")
    out.add_argument("--output", type=Path, required=True, metavar="DIR",
                     help="optimize.md, optimize.json, PNGs, repository/ and the built models")
    out.add_argument("--name", default="swinv2", help="served model name (NAME_<img> for several resolutions)")
    out.add_argument("--overwrite", action="store_true", help="replace DIR (only once the new run is complete)")
    out.add_argument("--no-serve-check", action="store_true",
                     help="do not start the embedded Triton to compare served logits with the chosen file")
    out.add_argument("--seed", type=int, default=0)
    out.add_argument("--no-progress", action="store_true")


def config_from_args(args: argparse.Namespace) -> OptimizeConfig:
    return OptimizeConfig(
        images=args.images, output=args.output, model=args.model, checkpoint=args.checkpoint,
        img_sizes=list(dict.fromkeys(args.img_size)), objective=args.objective, max_batch=args.max_batch,
        budget_s=args.budget_s, threads=args.threads, fidelity_threshold=args.fidelity_threshold,
        max_rel_error=args.max_rel_error,
        candidates=tuple(dict.fromkeys(args.candidates)) if args.candidates else DEFAULT_CANDIDATES,
        name=args.name, calibration=args.calibration, check=args.check, serve_check=not args.no_serve_check,
        overwrite=args.overwrite, seed=args.seed, progress=not args.no_progress,
    )


def _interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    config = config_from_args(args)
    if any(spec.precision == "int8" for spec in config.candidates):
        with contextlib.suppress(Exception):  # NNCF's INFO lists every node it leaves alone
            require_nncf().set_log_level(logging.ERROR)
    previous = signal.signal(signal.SIGTERM, _interrupt)  # SIGTERM cleans up like Ctrl+C: DIR stays untouched
    try:
        report = run_optimize(config, ["swinv2-serve", *sys.argv[1:]])
    finally:
        signal.signal(signal.SIGTERM, previous)
    failed = False
    for img, res in report.data["resolutions"].items():
        chosen = res["chosen"]
        if chosen is None:
            print(f"{img}px: no candidate passed the fidelity gate and can be served", file=sys.stderr)
            failed = True
            continue
        repo = res["repository"]
        latency = chosen["latency_ms"]
        print(f"{img}px: chosen {chosen['name']}: p50 {latency['p50']:.1f} ms, {chosen['throughput_img_s']:.2f} img/s, "
              f"top-1 agreement {chosen['fidelity']['top1_agreement']:.1%} -> {chosen['path']}")
        check = repo.get("served_check")
        if check is not None and not check.get("equal"):
            print(f"{img}px: served logits differ from the chosen file run directly: {check}", file=sys.stderr)
            failed = True
        print(f"  serve it: {repo['serve_command']}")
    print(f"report: {report.output / 'optimize.md'}")
    return 1 if failed else 0
