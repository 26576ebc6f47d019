"""`swinv2-serve export`: checkpoint -> deploy form -> ONNX (and TensorRT) per resolution, verified.

    swinv2-serve export --model swinv2_tiny_window8_256 --checkpoint ms.pth --img-size 256 384 512 --output out/
    swinv2-serve export --checkpoint runs/digits/checkpoint.pt --img-size 64 96 --output out/ --repository repo/

Window per resolution: ``--window-size`` if given, else the library's rule (``resolve_config``): the model's
own window at its own resolution, scaled with the image elsewhere (8 @ 256 -> 16 @ 512).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from tqdm import tqdm

from ..checkpoint import load_or_create
from ..onnx_export import ExportResult, export_onnx
from ..preprocess import image_files
from ..repository import write_repository
from ..runtime.tensorrt_backend import require_tensorrt
from ..tensorrt_build import build_verified
from ._pretrained import CHECKPOINT_HELP, add_pretrained_argument, checkpoint_source
from ._tensorrt_options import add_tensorrt_arguments, tensorrt_options_from_args

DEFAULT_IMAGES = Path(__file__).resolve().parents[2].parent / "shared" / "images"  # a checkout beside ../shared


def add_arguments(parser: argparse.ArgumentParser) -> None:
    src = parser.add_argument_group("model")
    src.add_argument("--model", help="preset name (see `swinv2-serve models`); optional for our own checkpoints")
    src.add_argument("--checkpoint", type=checkpoint_source, help=CHECKPOINT_HELP)
    add_pretrained_argument(src)
    src.add_argument("--num-classes", type=int, help="class count of a foreign checkpoint (default: the preset's)")
    out = parser.add_argument_group("export")
    out.add_argument("--img-size", type=int, nargs="+", help="one export per resolution (default: the model's own)")
    out.add_argument("--window-size", type=int, help="window for every resolution (default: scaled with the image)")
    out.add_argument("--output", type=Path, required=True, help="directory for the .onnx / .plan files")
    out.add_argument("--format", nargs="+", choices=["onnx", "trt"], default=["onnx"], help="artefacts to build")
    out.add_argument("--onnx-fp16", action="store_true", help="also write an FP16 ONNX (FP32 islands) per resolution")
    out.add_argument("--opset", type=int, default=17)
    out.add_argument("--no-verify", action="store_true", help="skip the ONNX Runtime vs eager check")
    out.add_argument("--images", type=Path, default=None,
                     help="photos for engine verification (default ../shared/images when present)")
    out.add_argument("--repository", type=Path, help="also write a Triton model repository here")
    out.add_argument("--name", help="served model name in the repository (default: the model name)")
    out.add_argument("--repository-kind", choices=["cpu", "gpu"], default="gpu")
    add_tensorrt_arguments(parser)


def run(args: argparse.Namespace) -> int:
    trt_opts = tensorrt_options_from_args(args) if "trt" in args.format else None  # argument errors first
    if trt_opts is not None:
        require_tensorrt()
    model = load_or_create(args.model, args.checkpoint, num_classes=args.num_classes, pretrained=args.pretrained)
    if args.checkpoint is None and not args.pretrained:
        print(f"note: no --checkpoint: exporting {args.model} with random weights (fine for benchmarks only)")
    cfg = model.cfg
    sizes = args.img_size or [cfg.img_size[0]]
    folder = args.images or DEFAULT_IMAGES
    images = image_files(folder, recursive=False) if folder.is_dir() else []  # unreadable ones are skipped
    args.output.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    artefacts: list[tuple[int, Path, Path | None]] = []
    bar = tqdm(sizes, desc="export", unit="res")
    for img in bar:
        geometry = {"img_size": img, "window_size": args.window_size}
        stem = f"{cfg.name}_{img}"
        bar.set_postfix_str(f"{img}px: ONNX")
        result = export_onnx(model, args.output / f"{stem}.onnx", opset=args.opset, verify=not args.no_verify,
                             **geometry)
        rows.append(_row(result))
        fp16_path = None
        if args.onnx_fp16 or (trt_opts is not None and trt_opts.precision == "fp16"):
            bar.set_postfix_str(f"{img}px: FP16 ONNX")
            half = export_onnx(model, args.output / f"{stem}.fp16.onnx", opset=args.opset, fp16=True,
                               verify=not args.no_verify, **geometry)
            rows.append(_row(half))
            fp16_path = half.path
        plan = None
        if trt_opts is not None:
            bar.set_postfix_str(f"{img}px: TensorRT {trt_opts.precision}")
            source = fp16_path if (trt_opts.precision == "fp16" and fp16_path) else result.path
            plan = args.output / f"{stem}.{trt_opts.precision}.plan"
            # the engine is checked against the FP32 ONNX: its whole error against the real model
            build_verified(source, plan, trt_opts, images, reference_onnx=result.path)
            rows.append({"file": plan.name, "nodes": "-", "size_mb": round(plan.stat().st_size / 2**20, 1)})
        artefacts.append((img, result.path, plan))
    _print_table(rows)
    if args.repository is not None:
        name = args.name or cfg.name
        for img, onnx_path, plan in artefacts:
            served = name if len(artefacts) == 1 else f"{name}_{img}"
            write_repository(args.repository, served, onnx=onnx_path, plan=plan, kind=args.repository_kind,
                             max_batch=args.max_batch)
            print(f"repository: {args.repository / served} (+ {served}_preprocess, {served}_image)")
    return 0


def _row(result: ExportResult) -> dict[str, Any]:
    return {
        "file": result.path.name,
        "window": "/".join(str(w) for w in result.window_sizes),
        "nodes": result.nodes,
        "size_mb": round(result.size_bytes / 2**20, 1),
        "max_abs_diff": None if result.max_abs_diff is None else f"{result.max_abs_diff:.2e}",
        "top1": result.top1_agreement,
        "seconds": round(result.seconds, 1),
    }


def _print_table(rows: list[dict[str, Any]]) -> None:
    if not rows:
        return
    columns = list(dict.fromkeys(k for row in rows for k in row))
    widths = {c: max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in columns}
    print("  ".join(c.ljust(widths[c]) for c in columns))
    for row in rows:
        print("  ".join(str(row.get(c, "")).ljust(widths[c]) for c in columns))
