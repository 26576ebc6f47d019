"""OpenVINO's per-layer counters (PERF_COUNT) of several compiled models side by side: where the time goes.

    python benchmarks/optimize_profile.py --file ours.onnx bf16 --file ours_int8_amx.xml bf16 --file timm.onnx bf16 \\
        --batch 1 --threads 2 [--iters 20] [--top 12] [--json OUT.json]

Each ``--file PATH PRECISION`` is compiled for the CPU with the package's compile properties
(``INFERENCE_PRECISION_HINT``; for an int8 IR the precision of its float ops) plus ``PERF_COUNT``. The models are
called in turn on one seeded input (round-robin, the first model rotated each round, 50 ms pause before each
call, as ``timing.measure`` does), so other jobs on the machine hit each alike, and
each node's mean ms is reported per (node type, kernel), side by side, then the slowest nodes of each. The counters
add a little overhead: time speed claims with ``timing.measure`` (benchmarks/optimize_int8.py), not with this.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

from swinv2_serve.runtime.openvino_backend import (
    LayerTime,
    compile_properties,
    executed_layers,
    layer_summary,
    mean_layer_times,
    require_openvino,
)


def compile_profiled(path: Path, precision: str, batch: int, threads: int):  # noqa: ANN201 - an InferRequest
    ov = require_openvino()
    core = ov.Core()
    model = core.read_model(os.fspath(path))
    model.reshape({model.input(0): ov.PartialShape([batch, *model.input(0).get_partial_shape()[1:]])})
    props = {**compile_properties(precision, "latency", threads, None), "PERF_COUNT": True}
    return core.compile_model(model, "CPU", props).create_infer_request()


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--file", nargs=2, action="append", required=True, metavar=("PATH", "PRECISION"))
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--img-size", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--top", type=int, default=12)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    requests = [compile_profiled(Path(p), precision, args.batch, args.threads) for p, precision in args.file]
    x = np.random.default_rng(0).standard_normal((args.batch, 3, args.img_size, args.img_size), dtype=np.float32)
    calls: list[list[list[LayerTime]]] = [[] for _ in requests]
    walls: list[list[float]] = [[] for _ in requests]
    for i in range(args.iters + 3):
        order = [*range(i % len(requests), len(requests)), *range(i % len(requests))]  # start rotated each round
        for j in order:
            request = requests[j]
            time.sleep(0.05)  # as timing.measure's cooldown
            start = time.perf_counter()
            request.infer({0: x})
            if i >= 3:
                walls[j].append((time.perf_counter() - start) * 1000.0)
                calls[j].append(executed_layers(request))
    out = []
    for (path, precision), call, wall in zip(args.file, calls, walls):
        layers = mean_layer_times(call)
        out.append({"file": path, "precision": precision, "batch": args.batch,
                    "wall_p50_ms": round(float(np.median(wall)), 2),
                    "layers_ms": round(sum(t.ms for t in layers), 2),
                    "by_kind": [{"type": t, "kernel": e, "count": n, "ms": round(ms, 3)}
                                for t, e, n, ms in layer_summary(layers)],
                    "slowest": [{"name": t.name, "type": t.node_type, "kernel": t.exec_type, "ms": round(t.ms, 3)}
                                for t in layers[:args.top]]})
    print_side_by_side(out)
    out.append({"load_average_after": list(os.getloadavg()), "iters": args.iters, "threads": args.threads})
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=2))
    return out


def print_side_by_side(results: list[dict]) -> None:
    kinds: dict[tuple[str, str], list[str]] = {}
    for i, r in enumerate(results):
        for row in r["by_kind"]:
            cells = kinds.setdefault((row["type"], row["kernel"]), ["-"] * len(results))
            cells[i] = f"{row['ms']:.2f} ({row['count']})"
    names = [Path(r["file"]).name[:28] for r in results]
    print("| layer kind (kernel) | " + " | ".join(names) + " |")
    print("| --- | " + " | ".join("---:" for _ in names) + " |")
    print("| **sum of layers, ms** | " + " | ".join(f"**{r['layers_ms']:.2f}**" for r in results) + " |")
    print("| wall p50, ms (with counters) | " + " | ".join(f"{r['wall_p50_ms']:.2f}" for r in results) + " |")
    for (t, e), cells in kinds.items():
        print(f"| {t} ({e}) | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
