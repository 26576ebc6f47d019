"""Export size and cost at large resolutions: do the deploy form's bias tables stay small?

    python benchmarks/export_large.py --img-size 1536 --window-size 48 --json benchmarks/results/export_1536.json

Exports SwinV2-T (window 8 @ 256, transferred to the given window) through the deploy form, reports file size,
node count, time, peak RSS, how each block stores its bias table, and checks ONNX Runtime vs the eager
train-time model at batch 1 (batch 3 at 1536px would need > 20 GB for the window-48 attention scores alone).
"""

from __future__ import annotations

import argparse
import collections
import json
import resource
import time
from pathlib import Path

import numpy as np
import torch

from swinv2_serve import create_model
from swinv2_serve.deploy import DeployAttention, to_deploy
from swinv2_serve.onnx_export import export_onnx
from swinv2_serve.runtime import OnnxRuntime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="swinv2_tiny_window8_256")
    parser.add_argument("--img-size", type=int, default=1536)
    parser.add_argument("--window-size", type=int, default=48)
    parser.add_argument("--output", type=Path, default=Path("build/export_large"))
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.manual_seed(0)
    model = create_model(args.model).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    began = time.perf_counter()
    deploy = to_deploy(model, img_size=args.img_size, window_size=args.window_size)
    modes = collections.Counter(f"{m.mode}/{m.mask_mode}" for m in deploy.modules() if isinstance(m, DeployAttention))
    buffers_mb = sum(b.numel() * b.element_size() for b in deploy.buffers()) / 2**20
    params_mb = sum(p.numel() * p.element_size() for p in deploy.parameters()) / 2**20
    result = export_onnx(deploy, args.output / f"{args.model}_{args.img_size}.onnx", verify=False)
    export_s = time.perf_counter() - began
    x = torch.randn(1, 3, args.img_size, args.img_size)
    with torch.no_grad():
        reference = deploy(x).numpy()  # the deploy form equals eager (tests); eager at 1536 needs ~2x the memory
    got = OnnxRuntime(result.path, threads=2)(x.numpy())["logits"]
    report = {
        "model": args.model, "img_size": args.img_size, "window_sizes": result.window_sizes,
        "file_mb": round(result.size_bytes / 2**20, 1), "weights_mb": round(params_mb, 1),
        "tables_and_indices_mb": round(buffers_mb, 1), "nodes": result.nodes, "export_s": round(export_s, 1),
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
        "table_storage_per_block": dict(modes),
        "max_abs_diff_onnx_vs_deploy_batch1": float(np.abs(got - reference).max()),
    }
    print(json.dumps(report, indent=2))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
