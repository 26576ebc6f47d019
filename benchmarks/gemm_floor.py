"""The GEMM floor: SwinV2's linear layers alone, at their real shapes, in ONNX Runtime.

    python benchmarks/gemm_floor.py [--model swinv2_tiny_window8_256] [--threads 2]

Every nn.Linear of the model (qkv, proj, fc1, fc2, patch-merging reductions) runs on inputs with the token
counts it sees at the model's resolution, and nothing else: no attention products, softmax, LayerNorm, GELU
or token reordering. Its latency is a lower bound for any fp32 export of the same model in the same runtime;
compare it with `benchmarks/onnx_vs_timm.py` to see how much of a full graph is left to optimise.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import onnxruntime as ort
import torch
from torch import nn

from swinv2_serve import create_model
from swinv2_serve.config import SwinV2Config


class LinearsOnly(nn.Module):
    """The linear layers of each stage, chained so that none is dead code."""

    def __init__(self, cfg: SwinV2Config) -> None:
        super().__init__()
        dims = cfg.stage_dims
        self.merges = nn.ModuleList(
            nn.Linear(4 * dims[i - 1], d, bias=False) if i else nn.Identity() for i, d in enumerate(dims)
        )
        self.blocks = nn.ModuleList(
            nn.ModuleList(
                nn.ModuleList([nn.Linear(d, 3 * d), nn.Linear(d, d), nn.Linear(d, 4 * d), nn.Linear(4 * d, d)])
                for _ in range(depth)
            )
            for d, depth in zip(dims, cfg.depths)
        )

    def forward(self, *stage_inputs: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(())
        for x, merge, blocks in zip(stage_inputs, self.merges, self.blocks):
            t = merge(x)
            for qkv, proj, fc1, fc2 in blocks:
                t = proj(qkv(t).narrow(-1, 0, t.shape[-1]))
                t = fc2(fc1(t))
            out = out + t.sum()
        return out


def stage_inputs(cfg: SwinV2Config) -> list[torch.Tensor]:
    """One input per stage: its tokens x (its width, or 4x the previous width before patch merging)."""
    dims = cfg.stage_dims
    return [torch.randn(1, h * w, 4 * dims[i - 1] if i else dims[0]) for i, (h, w) in enumerate(cfg.stage_resolutions)]


def linear_gflop(cfg: SwinV2Config, model: LinearsOnly) -> float:
    flops = 0
    for (h, w), merge, blocks in zip(cfg.stage_resolutions, model.merges, model.blocks):
        weights = [p for n, p in [*merge.named_parameters(), *blocks.named_parameters()] if n.endswith("weight")]
        flops += sum(2 * p.numel() * h * w for p in weights)
    return flops / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="swinv2_tiny_window8_256")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--iters", type=int, default=30)
    args = parser.parse_args()
    cfg = create_model(args.model).cfg
    model = LinearsOnly(cfg).eval()
    inputs = stage_inputs(cfg)
    path = Path(tempfile.mkdtemp()) / "linears.onnx"
    names = [f"x{i}" for i in range(len(inputs))]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, tuple(inputs), str(path), dynamo=False, opset_version=17, input_names=names)
    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feed = {name: x.numpy() for name, x in zip(names, inputs)}
    for _ in range(3):
        session.run(None, feed)
    times = []
    for _ in range(args.iters):
        time.sleep(0.05)  # let the intra-op pool go idle, as the interleaved benchmarks do
        start = time.perf_counter()
        session.run(None, feed)
        times.append((time.perf_counter() - start) * 1000)
    print(f"{args.model} linear layers only ({linear_gflop(cfg, model):.2f} GFLOP, {args.threads} threads): "
          f"median {statistics.median(times):.1f} ms, min {min(times):.1f} ms")


if __name__ == "__main__":
    main()
