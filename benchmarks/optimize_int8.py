"""int8 recipes for our graph under OpenVINO, against timm's export (int8 with the same NNCF settings, bf16, fp32),
side by side in one process: fidelity on real images and interleaved latency.

    python benchmarks/optimize_int8.py --calibration CALIB_DIR --check-images CHECK_DIR --batch 1 8 --threads 2 \\
        --recipe float --recipe values --recipe values,target_device=CPU_SPR [--checkpoint OURS.pt] \\
        [--workdir DIR] [--json OUT.json]

A recipe is ``openvino_int8.Int8Recipe`` written as ``attention[,key=value...]`` (``float`` is the product's
default). Weights: ``--checkpoint`` (ours) or the preset moved off its init by N(0, 0.02). Both graphs carry
the same weights; calibration: the calibration part of ``--calibration`` exactly as ``quantize_int8`` splits it
(``--calibration-count`` at most). Fidelity: each reduced-precision engine against ONNX Runtime fp32 of its own
graph on ``--check-images`` (accuracy too when the folders are class indices). Timing: ``timing.measure`` over
every engine at once (round-robin, start rotated, 50 ms untimed cooldown), medians and p90, ratios to timm's best
float path (the fastest of timm under OpenVINO bf16/fp32 and ONNX Runtime fp32) and to timm int8.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from onnx_vs_timm import export_pair, off_init_model  # noqa: E402
from openvino_vs_timm import Engine, batched, check_set, cpu_facts, ort_engine  # noqa: E402

from swinv2_serve.checkpoint import load_model  # noqa: E402
from swinv2_serve.contract import read_onnx_metadata  # noqa: E402
from swinv2_serve.openvino_int8 import Int8Recipe, load_calibration_set, quantize_model  # noqa: E402
from swinv2_serve.preprocess import Preprocess  # noqa: E402
from swinv2_serve.runtime.openvino_backend import (  # noqa: E402
    compile_logits,
    cpu_capabilities,
    dynamic_batch,
    float_precision_for_int8,
    require_openvino,
)
from swinv2_serve.timing import Runner, measure  # noqa: E402
from swinv2_serve.verification import compare  # noqa: E402


def parse_recipe(text: str) -> Int8Recipe:
    """``attention[,float_linears=proj+fc2][,float_stages=2][,target_device=CPU_SPR][,preset=performance]``"""
    attention, *rest = text.split(",")
    fields: dict = dict(part.split("=", 1) for part in rest)
    if "float_linears" in fields:
        fields["float_linears"] = tuple(fields["float_linears"].split("+"))
    if "float_stages" in fields:
        fields["float_stages"] = int(fields["float_stages"])
    return Int8Recipe(attention=attention, **fields)


def recipe_name(recipe: Int8Recipe) -> str:
    extra = [f"{k}={'+'.join(v) if isinstance(v, list) else v}" for k, v in recipe.to_dict().items()
             if k != "attention" and v not in (None, "ANY", [], 0)]
    return ",".join([recipe.attention, *extra])


def int8_engine(onnx: Path, calibration: np.ndarray, recipe: Int8Recipe, threads: int, save: Path) -> Engine:
    """Quantized with ``recipe`` and saved to ``save``; an IR already at ``save`` is reused (timing reruns)."""
    ov = require_openvino()
    if save.is_file():
        model = dynamic_batch(ov.Core().read_model(os.fspath(save)))
    else:
        model = quantize_model(dynamic_batch(ov.Core().read_model(os.fspath(onnx))), calibration, recipe=recipe)
        ov.save_model(model, os.fspath(save), compress_to_fp16=False)
    return compile_logits(model, float_precision_for_int8(cpu_capabilities()), threads)


def float_engine(onnx: Path, precision: str, threads: int) -> Engine:
    model = dynamic_batch(require_openvino().Core().read_model(os.fspath(onnx)))
    return compile_logits(model, precision, threads)


def build(ours: Path, timm: Path, calibration: np.ndarray, recipes: list[Int8Recipe], threads: int,
          workdir: Path) -> dict[str, Engine]:
    engines: dict[str, Engine] = {}
    for recipe in recipes:
        name = recipe_name(recipe)
        print(f"quantizing ours with {name}", file=sys.stderr, flush=True)
        engines[f"ours/int8[{name}]"] = int8_engine(ours, calibration, recipe, threads,
                                                    workdir / f"ours_int8_{name.replace(',', '_')}.xml")
    print("quantizing timm with the product's recipe", file=sys.stderr, flush=True)
    engines["timm/int8"] = int8_engine(timm, calibration, Int8Recipe(), threads, workdir / "timm_int8.xml")
    bf16 = "BF16" in cpu_capabilities()
    for graph, path in (("ours", ours), ("timm", timm)):
        if bf16:
            engines[f"{graph}/openvino-bf16"] = float_engine(path, "bf16", threads)
        engines[f"{graph}/openvino-fp32"] = float_engine(path, "fp32", threads)
        engines[f"{graph}/onnxruntime-fp32"] = ort_engine(path, threads)
    return engines


def fidelity(engines: dict[str, Engine], x: np.ndarray, labels: np.ndarray | None) -> dict[str, dict]:
    refs = {g: batched(engines[f"{g}/onnxruntime-fp32"], x) for g in ("ours", "timm")}
    out: dict[str, dict] = {}
    for name, run in engines.items():
        graph = name.split("/")[0]
        got = refs[graph] if name.endswith("onnxruntime-fp32") else batched(run, x)
        c = compare(refs[graph], got)
        row = {"top1_agreement": round(c.top1_agreement, 4), "max_rel_error": round(c.max_rel_error, 4),
               "nonfinite": c.nonfinite}
        if labels is not None:
            row["accuracy"] = round(float((got.argmax(1) == labels).mean()), 4)
        out[name] = row
    return out


def timing(engines: dict[str, Engine], x: np.ndarray, iters: int) -> dict:
    runners = [Runner(name, "", "", run) for name, run in engines.items()]
    samples = measure(runners, x, warmup=2, iters=iters, cooldown_s=0.05)
    times = {r.backend: samples.times_ms[r.key] for r in runners}
    med = {k: statistics.median(v) for k, v in times.items()}
    timm_best, timm_best_ms = min(((k, v) for k, v in med.items() if k.startswith("timm/") and "int8" not in k),
                                  key=lambda kv: kv[1])
    return {
        "median_ms": {k: round(v, 2) for k, v in med.items()},
        "p90_ms": {k: round(float(np.percentile(v, 90)), 2) for k, v in times.items()},
        "timm_best_float": timm_best,
        "ratio_to_timm_best_float": {k: round(v / timm_best_ms, 3) for k, v in med.items()},
        "ratio_to_timm_int8": {k: round(v / med["timm/int8"], 3) for k, v in med.items() if "int8" in k},
        "iters": iters,
        "load_average_after": list(os.getloadavg()),
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="swinv2_tiny_window8_256")
    parser.add_argument("--checkpoint", type=Path, help="our checkpoint (default: the preset, perturbed)")
    parser.add_argument("--calibration", type=Path, required=True)
    parser.add_argument("--calibration-count", type=int, default=300)
    parser.add_argument("--check-images", type=Path, required=True)
    parser.add_argument("--recipe", action="append", type=parse_recipe, default=[])
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--iters", type=int, default=24, help="timed rounds at batch 1 (divided by the batch, >= 5)")
    parser.add_argument("--workdir", type=Path, help="keep exports and int8 IRs here (reused if present)")
    parser.add_argument("--no-fidelity", action="store_true", help="timing only (a rerun when the first was disturbed)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    recipes = args.recipe or [Int8Recipe()]

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="swinv2_opt_int8_"))
    workdir.mkdir(parents=True, exist_ok=True)
    ours, timm = workdir / "ours.onnx", workdir / "timm.onnx"
    if not (ours.is_file() and timm.is_file()):
        model = load_model(args.checkpoint) if args.checkpoint else off_init_model(args.model)
        export_pair(model, ours, timm)
    preprocess = Preprocess.from_metadata(read_onnx_metadata(ours))
    calibration = load_calibration_set(args.calibration, preprocess, calibration=args.calibration_count).calibration
    engines = build(ours, timm, calibration, recipes, args.threads, workdir)
    images, labels = check_set(args.check_images, preprocess)
    result: dict = {
        "weights": str(args.checkpoint) if args.checkpoint else f"{args.model} + N(0, 0.02)",
        "threads": args.threads, "cpu": cpu_facts(), "load_average_at_start": list(os.getloadavg()),
        "calibration": f"{args.calibration} ({len(calibration)})",
        "check_images": f"{args.check_images} ({len(images)})",
        "recipes": [r.to_dict() for r in recipes],
        "fidelity_vs_ort_fp32": {} if args.no_fidelity else fidelity(engines, images, labels),
        "batches": {},
    }
    rng = np.random.default_rng(0)
    for batch in args.batch:
        x = rng.standard_normal((batch, *images.shape[1:]), dtype=np.float32)
        print(f"timing batch {batch}", file=sys.stderr, flush=True)
        result["batches"][batch] = timing(engines, x, max(5, args.iters // batch))
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text)
    return result


if __name__ == "__main__":
    main()
