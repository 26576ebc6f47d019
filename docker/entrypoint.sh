#!/usr/bin/env bash
# Serving-container entrypoint: build missing TensorRT engines on THIS GPU, then exec tritonserver.
#
# A `docker build` has no GPU, and an engine is tied to the GPU and TensorRT version that built it, so a
# repository written with `swinv2-serve repository --engine-at-start` carries NAME/model.onnx and the build
# recipe NAME/engine.json instead of a plan. `swinv2-serve engine` builds every missing NAME/1/model.plan from
# it with trtexec: the fp16 export, strongly typed, so the FP32 islands of `swinv2-serve export --format trt`
# are kept (swinv2_serve/engine_at_start.py; `--dry-run` shows the exact command). The timing cache sits on the
# repository volume; a lock per plan lets pods sharing the volume build it once.
# Object storage (s3://, gs://, as://) is read by Triton itself: its engines must be in the repository already.
# Extra arguments are passed to tritonserver (e.g. --log-verbose=1).
set -euo pipefail

REPO="${MODEL_REPOSITORY:-/models}"

case "${REPO}" in
  s3://* | gs://* | as://*) ;;
  *) swinv2-serve engine --repository "${REPO}" --timing-cache "${REPO}/.timing_cache" ;;
esac

exec tritonserver --model-repository="${REPO}" "$@"
