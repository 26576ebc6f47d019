"""`swinv2-serve bench`: latency / throughput per resolution, batch, backend and precision.

    swinv2-serve bench --model swinv2_tiny_window8_256 --img-size 192 256 384 512 --batch 1 8 \\
        --backend torch onnxruntime openvino triton-grpc triton-http --precision fp32 bf16 --compare timm \
        --output results/

Writes results.csv, exports.csv, results.json (with machine facts and skip reasons), results.md and
latency_vs_resolution.png / throughput_vs_batch.png into --output. Backends that cannot run here
(TensorRT without a GPU, Triton without PyTriton, OpenVINO not installed, OpenVINO bf16 on a CPU
without BF16, timm not installed) are skipped with the reason.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..bench import BACKENDS, COMPARE, BenchConfig, load_report, markdown_report, run_bench, write_report
from ..contract import PRECISIONS
from ..errors import SwinV2ServeError
from ._pretrained import CHECKPOINT_HELP, add_pretrained_argument, checkpoint_source, weights_file


def add_arguments(parser: argparse.ArgumentParser) -> None:
    src = parser.add_argument_group("model")
    src.add_argument("--model", help="preset name (random weights unless --checkpoint or --pretrained)")
    src.add_argument("--checkpoint", type=checkpoint_source, help=CHECKPOINT_HELP)
    add_pretrained_argument(src)
    sweep = parser.add_argument_group("sweep")
    sweep.add_argument("--img-size", type=int, nargs="+", default=[], help="resolutions (default: the model's own); "
                       "the window scales with the image as in `export`")
    sweep.add_argument("--batch", type=int, nargs="+", default=[1])
    sweep.add_argument("--backend", nargs="+", choices=BACKENDS, default=["torch", "onnxruntime"],
                       help="openvino: our ONNX compiled by OpenVINO for the CPU (fp32; bf16 where the CPU has it; "
                            "int8 with --calibration)")
    sweep.add_argument("--precision", nargs="+", choices=PRECISIONS, default=["fp32"],
                       help="per backend: torch fp32/fp16/bf16 (autocast), openvino fp32/bf16/int8, tensorrt "
                            "fp32/fp16, others fp32; other pairs are skipped with the reason")
    sweep.add_argument("--threads", type=int,
                       help="intra-op threads for torch / ONNX Runtime / OpenVINO (default: all cores)")
    sweep.add_argument("--compare", nargs="+", choices=COMPARE, default=[],
                       help="timm: export timm's model the standard way on the same weights and run it "
                            "interleaved with ours (onnxruntime, openvino at the same precision, and torch)")
    sweep.add_argument("--calibration", type=Path, metavar="DIR",
                       help="openvino int8: images to calibrate on (ours via `quantize`, timm's export alike)")
    sweep.add_argument("--compare-img-size", type=int, nargs="+", help="compare only at these resolutions")
    timing = parser.add_argument_group("timing")
    timing.add_argument("--warmup", type=int, default=2, help="warm-up rounds per cell")
    how_long = timing.add_mutually_exclusive_group()
    how_long.add_argument("--iters", type=int, help="exactly this many timed rounds per cell")
    how_long.add_argument("--min-time", type=float, default=2.0, help="adaptive: at least this many seconds per cell")
    timing.add_argument("--min-iters", type=int, default=10, help="adaptive: at least this many samples per runner")
    timing.add_argument("--max-time", type=float, default=60.0,
                        help="adaptive: stop adding rounds after this many seconds (never under 3 samples)")
    timing.add_argument("--cooldown-ms", type=float, default=50.0,
                        help="untimed pause before each call, so the previous runner's spinning threads "
                             "(ONNX Runtime, OpenMP) are asleep when the next one is timed")
    budget = parser.add_argument_group("budgets (skipped with a reason, not crashed)")
    budget.add_argument("--max-pixels-per-batch", type=int, help="skip cells with batch*H*W above this")
    budget.add_argument("--max-memory-gb", type=float, help="skip cells whose estimated memory exceeds this "
                        "(default: half the free RAM)")
    out = parser.add_argument_group("output")
    out.add_argument("--output", type=Path, default=Path("bench_results"), help="folder for CSV/JSON/MD/PNG")
    out.add_argument("--workdir", type=Path, help="keep the exported ONNX files here (default: a temporary folder)")
    out.add_argument("--render", type=Path, metavar="RESULTS_JSON",
                     help="measure nothing: rewrite the CSV/Markdown/PNGs of an earlier results.json into --output")
    out.add_argument("--no-plots", action="store_true")
    out.add_argument("--no-progress", action="store_true")
    out.add_argument("--triton-queue-delay-us", type=int, default=0,
                     help="dynamic batcher delay of the embedded server (0 measures latency, not batching)")
    out.add_argument("--seed", type=int, default=0)


def config_from_args(args: argparse.Namespace) -> BenchConfig:
    return BenchConfig(
        model=args.model, checkpoint=weights_file(args.model, args.checkpoint, args.pretrained),
        img_sizes=list(args.img_size), batches=list(args.batch),
        backends=list(dict.fromkeys(args.backend)), precisions=list(dict.fromkeys(args.precision)),
        threads=args.threads, warmup=args.warmup, iters=args.iters, min_iters=args.min_iters,
        min_time=args.min_time, max_time=args.max_time, compare=list(args.compare),
        compare_img_sizes=args.compare_img_size, calibration=args.calibration,
        max_pixels_per_batch=args.max_pixels_per_batch,
        max_memory_gb=args.max_memory_gb, output=args.output, workdir=args.workdir,
        triton_queue_delay_us=args.triton_queue_delay_us, cooldown_ms=args.cooldown_ms, seed=args.seed,
        plots=not args.no_plots,
        progress=not args.no_progress,
    )


def run(args: argparse.Namespace) -> int:
    if args.render is not None:
        if not args.render.is_file():
            raise SwinV2ServeError(f"{args.render}: no such results.json")
        report = load_report(args.render)
        write_report(report, args.output, plots=not args.no_plots)
        print(markdown_report(report))
        return 0
    report = run_bench(config_from_args(args))
    print(markdown_report(report))
    print(f"wrote {', '.join(report.files.values())} in {report.seconds:.0f}s")
    return 0
