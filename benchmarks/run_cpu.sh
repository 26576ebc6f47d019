#!/usr/bin/env bash
# Regenerates benchmarks/results/ (CSV + JSON + Markdown + PNG) on a CPU machine; the table in
# benchmarks/README.md is copied from benchmarks/results/results.md. About 5 minutes on 2 quiet cores, 15 at load ~8.
#
#   benchmarks/run_cpu.sh                 # from the repository root
#   PYTHON=python3 benchmarks/run_cpu.sh  # another interpreter (default: .venv/bin/python if present)
#
# The sweep: SwinV2-T/256 (random weights, perturbed; speed does not depend on their values) at
# 192..1024 px, batch 1 and 8, torch / ONNX Runtime / Triton (embedded server, gRPC + HTTP) on 2 threads,
# with timm's standard export and timm eager side by side at 256 and 512 px. TensorRT is listed so its
# skip reason is recorded. Cells above 1024x1024 pixels per batch are skipped (time budget): batch 8 runs
# up to 256 px, batch 1 up to 1024 px.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}"
exec "$PYTHON" -m swinv2_serve bench \
    --model swinv2_tiny_window8_256 \
    --img-size 192 256 384 512 768 1024 \
    --batch 1 8 \
    --backend torch onnxruntime tensorrt triton-grpc triton-http \
    --compare timm --compare-img-size 256 512 \
    --threads 2 \
    --warmup 1 --min-iters 5 --min-time 2 --max-time 20 --cooldown-ms 50 \
    --max-pixels-per-batch 1048576 \
    --output benchmarks/results \
    "$@"
