"""Our ONNX vs timm's standard export, each under OpenVINO bf16, OpenVINO fp32 and ONNX Runtime fp32, in one run.

    python benchmarks/openvino_vs_timm.py --model swinv2_tiny_window8_256 --batch 1 8 --threads 2

Same weights (every parameter moved off its init by N(0, 0.02), as in onnx_vs_timm.py) in both graphs.
Six engines; iterations are interleaved across all of them (engine 1, 2, ... 6, engine 1, ...) so machine
noise hits each alike. Prints median/p90 latency per engine and batch, ratios to timm's best path (timm
under OpenVINO bf16), and each reduced-precision engine's top-1 agreement / max relative logit error
against ONNX Runtime fp32 of the same graph. Needs timm (the `dev` extra) and openvino.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from onnx_vs_timm import common_parser, emit, export_pair, off_init_model, session  # noqa: E402

from swinv2_serve.openvino_backend import compare_logits, compile_onnx_dynamic_batch  # noqa: E402

Engine = Callable[[np.ndarray], np.ndarray]


def ort_engine(path: Path, threads: int) -> Engine:
    sess = session(path, threads)
    name = sess.get_outputs()[0].name
    return lambda x: sess.run([name], {"input": x})[0]


def build_engines(ours: Path, timm: Path, threads: int) -> dict[str, Engine]:
    engines: dict[str, Engine] = {}
    for graph, path in (("ours", ours), ("timm", timm)):  # logits are output 0 in both graphs
        engines[f"{graph}/openvino-bf16"] = compile_onnx_dynamic_batch(path, "bf16", threads)
        engines[f"{graph}/openvino-fp32"] = compile_onnx_dynamic_batch(path, "fp32", threads)
        engines[f"{graph}/onnxruntime-fp32"] = ort_engine(path, threads)
    return engines


def time_interleaved(engines: dict[str, Engine], x: np.ndarray, iters: int, warmup: int) -> dict[str, list[float]]:
    for _ in range(warmup):
        for run in engines.values():
            run(x)
    times: dict[str, list[float]] = {k: [] for k in engines}
    for _ in range(iters):
        for key, run in engines.items():
            start = time.perf_counter()
            run(x)
            times[key].append((time.perf_counter() - start) * 1000)
    return times


def fidelity(engines: dict[str, Engine], x: np.ndarray) -> dict[str, dict]:
    out = {}
    for graph in ("ours", "timm"):
        ref = engines[f"{graph}/onnxruntime-fp32"](x)
        for precision in ("bf16", "fp32"):
            report = compare_logits(ref, engines[f"{graph}/openvino-{precision}"](x), precision)
            out[f"{graph}/openvino-{precision}"] = {"top1_agreement": report.top1_agreement,
                                                   "max_rel_error": round(report.max_rel_error, 5),
                                                   "nonfinite": report.nonfinite}
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = common_parser(__doc__, iters=24, warmup=2)
    parser.add_argument("--check", type=int, default=32, help="random inputs for the fidelity columns")
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    model = off_init_model(args.model)
    tmp = Path(tempfile.mkdtemp(prefix="swinv2_ov_bench_"))
    ours, timm = tmp / "ours.onnx", tmp / "timm.onnx"
    export_pair(model, ours, timm)
    engines = build_engines(ours, timm, args.threads)
    rng = np.random.default_rng(0)
    check = rng.standard_normal((args.check, 3, *model.cfg.img_size), dtype=np.float32)
    result: dict = {"model": args.model, "threads": args.threads, "fidelity_vs_ort_fp32": fidelity(engines, check),
                    "batches": {}}
    for batch in args.batch:
        x = rng.standard_normal((batch, 3, *model.cfg.img_size), dtype=np.float32)
        times = time_interleaved(engines, x, max(5, args.iters // batch), args.warmup)
        med = {k: statistics.median(v) for k, v in times.items()}
        timm_best = med["timm/openvino-bf16"]
        ours_best = min(v for k, v in med.items() if k.startswith("ours/"))
        result["batches"][batch] = {
            "median_ms": {k: round(v, 1) for k, v in med.items()},
            "p90_ms": {k: round(float(np.percentile(v, 90)), 1) for k, v in times.items()},
            "ratio_to_timm_openvino_bf16": {k: round(v / timm_best, 3) for k, v in med.items()},
            "ours_best_over_timm_best": round(ours_best / timm_best, 3),
            "iters": len(next(iter(times.values()))),
        }
    emit(result, args.json)
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
