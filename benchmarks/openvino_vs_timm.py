"""Our ONNX vs timm's standard export under OpenVINO int8 / bf16 / fp32 and ONNX Runtime fp32, in one run,
with the fidelity of every reduced-precision path.

    python benchmarks/openvino_vs_timm.py --model swinv2_tiny_window8_256 --batch 1 8 --threads 2 \\
        --calibration CALIB_DIR --check-images CHECK_DIR [--checkpoint OUR_CHECKPOINT --img-size 256]

Weights: ``--checkpoint`` (ours; ``--img-size`` transfers it to another resolution), else the preset with
every parameter moved off its init by N(0, 0.02) (as onnx_vs_timm.py; nothing can be downloaded here).
Both graphs carry the same weights. int8: ours goes through the product path (``quantize_int8`` -> IR ->
``OpenVINORuntime``); timm's export is quantized with the same NNCF settings on the same calibration images.

Timing: eight engines (six on a CPU without bf16: the bf16 pair is left out, never timed as fp32 under a
bf16 label), iterations interleaved across all of them so machine noise hits each alike, a 50 ms untimed
pause before each call; median/p90 per engine and batch and ratios to timm's best float path (timm under
OpenVINO bf16; without bf16, the faster of timm under OpenVINO fp32 and ONNX Runtime fp32), plus int8 vs
int8. The CPU (name, OpenVINO capabilities, VNNI) is recorded. Fidelity: each reduced-precision engine
against ONNX Runtime fp32 of the same graph on the real images of ``--check-images`` (labels, if the folder
has class sub-folders, give accuracy) and on ``--random`` standard-normal inputs: top-1 agreement, max
relative logit error, NaN/Inf count.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from onnx_vs_timm import common_parser, emit, export_pair, off_init_model, session  # noqa: E402

from swinv2_serve.bench.peers import openvino_logits  # noqa: E402
from swinv2_serve.checkpoint import load_model  # noqa: E402
from swinv2_serve.contract import read_onnx_metadata  # noqa: E402
from swinv2_serve.machine import cpu_has_vnni  # noqa: E402
from swinv2_serve.openvino_int8 import load_calibration_set, quantize_int8  # noqa: E402
from swinv2_serve.preprocess import Preprocess, image_files  # noqa: E402
from swinv2_serve.runtime.openvino_backend import OpenVINORuntime, cpu_capabilities, require_openvino  # noqa: E402
from swinv2_serve.timing import Runner, measure  # noqa: E402
from swinv2_serve.verification import compare  # noqa: E402

Engine = Callable[[np.ndarray], np.ndarray]
REFERENCE = "onnxruntime-fp32"


def ort_engine(path: Path, threads: int) -> Engine:
    sess = session(path, threads)
    name = sess.get_outputs()[0].name
    return lambda x: sess.run([name], {"input": x})[0]


def reduced_precisions() -> tuple[str, ...]:
    """int8 everywhere; bf16 only where the CPU has it."""
    return ("int8", "bf16") if "BF16" in cpu_capabilities() else ("int8",)


def cpu_facts() -> dict:
    core = require_openvino().Core()
    return {"name": core.get_property("CPU", "FULL_DEVICE_NAME"), "openvino_capabilities": cpu_capabilities(core),
            "vnni": cpu_has_vnni(), "openvino": require_openvino().__version__}


def build_engines(ours: Path, timm: Path, calibration: Path, threads: int, workdir: Path) -> dict[str, Engine]:
    images = load_calibration_set(calibration, Preprocess.from_metadata(read_onnx_metadata(ours)))
    xml = quantize_int8(ours, calibration, workdir / "ours_int8.xml", fidelity="warn", threads=threads).xml
    ours_int8 = OpenVINORuntime(xml, threads=threads, fidelity="off")
    engines: dict[str, Engine] = {
        "ours/openvino-int8": lambda x: ours_int8(x)["logits"],
        "timm/openvino-int8": openvino_logits(timm, "int8", threads, calibration=images.calibration),
    }
    for graph, path in (("ours", ours), ("timm", timm)):  # logits are output 0 in both graphs
        if "bf16" in reduced_precisions():
            engines[f"{graph}/openvino-bf16"] = openvino_logits(path, "bf16", threads)
        engines[f"{graph}/openvino-fp32"] = openvino_logits(path, "fp32", threads)
        engines[f"{graph}/{REFERENCE}"] = ort_engine(path, threads)
    return engines


def time_interleaved(engines: dict[str, Engine], x: np.ndarray, iters: int, warmup: int,
                     cooldown_s: float = 0.05) -> dict[str, list[float]]:
    """``timing.measure`` (round-robin, rotated, untimed cooldown before each call) keyed by engine name."""
    runners = [Runner(key, "", "", run) for key, run in engines.items()]
    samples = measure(runners, x, warmup=warmup, iters=iters, cooldown_s=cooldown_s)
    return {r.backend: samples.times_ms[r.key] for r in runners}


def batched(run: Engine, x: np.ndarray, batch: int = 8) -> np.ndarray:
    return np.concatenate([run(x[i:i + batch]) for i in range(0, len(x), batch)])


def fidelity(engines: dict[str, Engine], inputs: np.ndarray, labels: np.ndarray | None) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for graph in ("ours", "timm"):
        ref = batched(engines[f"{graph}/{REFERENCE}"], inputs)
        if labels is not None:
            out[f"{graph}/{REFERENCE}"] = {"accuracy": round(float((ref.argmax(1) == labels).mean()), 4)}
        for precision in reduced_precisions():
            got = batched(engines[f"{graph}/openvino-{precision}"], inputs)
            report = compare(ref, got)
            row = {"top1_agreement": round(report.top1_agreement, 4), "max_rel_error": round(report.max_rel_error, 4),
                   "nonfinite": report.nonfinite}
            if labels is not None:
                row["accuracy"] = round(float((got.argmax(1) == labels).mean()), 4)
            out[f"{graph}/openvino-{precision}"] = row
    return out


def check_set(folder: Path, preprocess: Preprocess) -> tuple[np.ndarray, np.ndarray | None]:
    """Real images (readable ones) and, when every image sits in a class folder named by an index, labels."""
    files = [f for f in image_files(folder) if not f.name.startswith("bad_")]
    x = preprocess.batch(files)
    parents = {f.parent for f in files}
    labels = np.array([int(f.parent.name) for f in files]) if all(p.name.isdigit() for p in parents) else None
    return x, labels


def main(argv: list[str] | None = None) -> dict:
    parser = common_parser(__doc__, iters=24, warmup=2)
    parser.add_argument("--checkpoint", type=Path, help="our checkpoint (default: the preset, perturbed)")
    parser.add_argument("--img-size", type=int, help="with --checkpoint: transfer it to this resolution")
    parser.add_argument("--calibration", type=Path, required=True, help="images to quantize on (int8)")
    parser.add_argument("--check-images", type=Path, required=True, help="real images for the fidelity columns")
    parser.add_argument("--random", type=int, default=256, help="standard-normal inputs for the fidelity columns")
    parser.add_argument("--no-timing", action="store_true", help="fidelity only (e.g. while the machine is busy)")
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    if args.checkpoint:
        model = load_model(args.checkpoint, **({"img_size": args.img_size} if args.img_size else {}))
    else:
        model = off_init_model(args.model)
    tmp = Path(tempfile.mkdtemp(prefix="swinv2_ov_bench_"))
    ours, timm = tmp / "ours.onnx", tmp / "timm.onnx"
    export_pair(model, ours, timm)
    engines = build_engines(ours, timm, args.calibration, args.threads, tmp)
    preprocess = Preprocess.from_metadata(read_onnx_metadata(ours))
    images, labels = check_set(args.check_images, preprocess)
    rng = np.random.default_rng(0)
    noise = rng.standard_normal((args.random, 3, *model.cfg.img_size), dtype=np.float32)
    result: dict = {
        "model": model.cfg.name, "img_size": list(model.cfg.img_size), "window": list(model.cfg.window_size),
        "weights": str(args.checkpoint) if args.checkpoint else "preset + N(0, 0.02)", "threads": args.threads,
        "calibration": str(args.calibration), "check_images": f"{args.check_images} ({len(images)})",
        "cpu": cpu_facts(),
        "fidelity_vs_ort_fp32": {"images": fidelity(engines, images, labels),
                                 f"random_{args.random}": fidelity(engines, noise, None)},
        "batches": {},
    }
    for batch in [] if args.no_timing else args.batch:
        x = rng.standard_normal((batch, 3, *model.cfg.img_size), dtype=np.float32)
        times = time_interleaved(engines, x, max(5, args.iters // batch), args.warmup)
        med = {k: statistics.median(v) for k, v in times.items()}
        timm_best_ms, timm_best = min((v, k) for k, v in med.items() if k.startswith("timm/") and "int8" not in k)
        best = {g: min((v, k) for k, v in med.items() if k.startswith(f"{g}/")) for g in ("ours", "timm")}
        result["batches"][batch] = {
            "median_ms": {k: round(v, 1) for k, v in med.items()},
            "p90_ms": {k: round(float(np.percentile(v, 90)), 1) for k, v in times.items()},
            "timm_best_float": timm_best,
            "ratio_to_timm_best_float": {k: round(v / timm_best_ms, 3) for k, v in med.items()},
            "ours_best": best["ours"][1], "ours_best_over_timm_best_float": round(best["ours"][0] / timm_best_ms, 3),
            "ours_int8_over_timm_int8": round(med["ours/openvino-int8"] / med["timm/openvino-int8"], 3),
            "iters": len(next(iter(times.values()))),
        }
    emit(result, args.json)
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
