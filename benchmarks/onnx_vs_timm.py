"""Our deploy-form ONNX vs timm's standard ``torch.onnx.export``, same weights, side by side in one run.

    python benchmarks/onnx_vs_timm.py --model swinv2_tiny_window8_256 --batch 1 8 --threads 2

Both graphs run in ONNX Runtime (CPU) with the same session options; iterations are interleaved
(ours, timm, ours, timm ...) so machine noise hits both alike. Prints node counts (as exported and
after ORT's own optimisation), median/p90 latency, the ratio ours/timm and the logit difference.
Needs timm (the `dev` extra).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from swinv2_serve import create_model
from swinv2_serve.bench import export_timm_standard
from swinv2_serve.onnx_export import export_onnx


def session(path: Path, threads: int, optimized_path: Path | None = None):  # noqa: ANN201
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    if optimized_path is not None:
        options.optimized_model_filepath = str(optimized_path)
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def node_count(path: Path) -> int:
    import onnx

    return len(onnx.load(str(path), load_external_data=False).graph.node)


def emit(result: dict, path: Path | None) -> None:
    """Print the results, and write them to ``path`` when given."""
    text = json.dumps(result, indent=2)
    print(text)
    if path is not None:
        path.write_text(text + "\n")


def common_parser(doc: str, *, iters: int, warmup: int) -> argparse.ArgumentParser:
    """Arguments every ours-vs-timm script shares."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--model", default="swinv2_tiny_window8_256")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--iters", type=int, default=iters, help="timed iterations at batch 1 (divided by the batch)")
    parser.add_argument("--warmup", type=int, default=warmup)
    parser.add_argument("--json", type=Path, help="also write the results here")
    return parser


def off_init_model(name: str, scale: float = 0.02, seed: int = 0) -> torch.nn.Module:
    """A preset with every parameter moved off its init (no pretrained weights can be fetched here)."""
    torch.manual_seed(seed)
    model = create_model(name).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * scale)
    return model


def export_pair(model: torch.nn.Module, ours: Path, timm: Path, *, dynamo: bool = False) -> tuple[float, float]:
    """Our deploy-form export and timm's standard export of the same weights; returns both export times."""
    t0 = time.perf_counter()
    export_onnx(model, ours)
    t1 = time.perf_counter()
    export_timm_standard(model.cfg, model.state_dict(), timm, dynamo)
    return t1 - t0, time.perf_counter() - t1


def main(argv: list[str] | None = None) -> dict:
    parser = common_parser(__doc__, iters=30, warmup=3)
    parser.add_argument("--cooldown-ms", type=float, default=50.0, help="untimed pause before each timed call")
    parser.add_argument("--timm-exporter", choices=["torchscript", "dynamo"], default="torchscript")
    args = parser.parse_args(argv)

    model = off_init_model(args.model)
    tmp = Path(tempfile.mkdtemp(prefix="swinv2_bench_"))
    ours_path, timm_path = tmp / "ours.onnx", tmp / "timm.onnx"
    t_ours, t_timm = export_pair(model, ours_path, timm_path, dynamo=args.timm_exporter == "dynamo")

    sessions = {
        "ours": session(ours_path, args.threads, tmp / "ours.opt.onnx"),
        "timm": session(timm_path, args.threads, tmp / "timm.opt.onnx"),
    }
    result: dict = {
        "model": args.model, "threads": args.threads, "timm_exporter": args.timm_exporter,
        "nodes": {"ours": node_count(ours_path), "timm": node_count(timm_path)},
        "nodes_after_ort": {"ours": node_count(tmp / "ours.opt.onnx"), "timm": node_count(tmp / "timm.opt.onnx")},
        "export_seconds": {"ours": round(t_ours, 2), "timm": round(t_timm, 2)},
        "size_mb": {k: round(p.stat().st_size / 2**20, 1) for k, p in (("ours", ours_path), ("timm", timm_path))},
        "batches": {},
    }
    rng = np.random.default_rng(0)
    for batch in args.batch:
        x = rng.standard_normal((batch, 3, *model.cfg.img_size), dtype=np.float32)
        outputs = {k: s.run(None, {"input": x})[0] for k, s in sessions.items()}
        for _ in range(args.warmup):
            for s in sessions.values():
                s.run(None, {"input": x})
        iters = max(5, args.iters // batch)
        times: dict[str, list[float]] = {k: [] for k in sessions}
        for _ in range(iters):
            for k, s in sessions.items():
                time.sleep(args.cooldown_ms / 1000)  # let the other session's spinning threads go idle
                t = time.perf_counter()
                s.run(None, {"input": x})
                times[k].append((time.perf_counter() - t) * 1000)
        med = {k: statistics.median(v) for k, v in times.items()}
        result["batches"][batch] = {
            "median_ms": {k: round(v, 2) for k, v in med.items()},
            "p90_ms": {k: round(float(np.percentile(v, 90)), 2) for k, v in times.items()},
            "min_ms": {k: round(min(v), 2) for k, v in times.items()},
            "ratio_ours_over_timm": round(med["ours"] / med["timm"], 3),
            "max_abs_logit_diff": float(np.abs(outputs["ours"] - outputs["timm"]).max()),
            "top1_agreement": float((outputs["ours"].argmax(1) == outputs["timm"].argmax(1)).mean()),
            "iters": iters,
        }
    emit(result, args.json)
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
