#!/usr/bin/env bash
# Serving-container entrypoint: build missing TensorRT engines on THIS GPU, then exec tritonserver.
#
# A `docker build` has no GPU, and an engine is tied to the GPU and TensorRT version it was built with,
# so engines are built here, at container start, once per repository volume:
#   for every DIR/NAME/config.pbtxt with platform "tensorrt_plan" whose 1/model.plan is missing,
#   build it from DIR/NAME/model.onnx (kept beside the config) with trtexec over the batch range
#   1..max_batch_size of the config. TRT_PRECISION=fp16|fp32 (default fp16).
# Extra arguments are passed to tritonserver (e.g. --log-verbose=1).
set -euo pipefail

REPO="${MODEL_REPOSITORY:-/models}"
PRECISION="${TRT_PRECISION:-fp16}"

for config in "${REPO}"/*/config.pbtxt; do
  [ -e "${config}" ] || continue
  dir="$(dirname "${config}")"
  grep -q 'platform: "tensorrt_plan"' "${config}" || continue
  [ -f "${dir}/1/model.plan" ] && continue
  if [ ! -f "${dir}/model.onnx" ]; then
    echo "entrypoint: ${dir}/1/model.plan is missing and there is no ${dir}/model.onnx to build it from" >&2
    exit 2
  fi
  max_batch="$(sed -n 's/^max_batch_size: *\([0-9]*\).*/\1/p' "${config}")"
  dims="$(sed -n '/^input {/,/^}/s/^ *dims: *\([0-9]*\)/\1/p' "${config}" | paste -sd x -)"
  opt_batch=$(( max_batch > 1 ? max_batch / 2 : 1 ))
  flags=()
  [ "${PRECISION}" = "fp16" ] && flags+=(--fp16)
  echo "entrypoint: building ${dir}/1/model.plan (${PRECISION}, batch 1..${max_batch}, input ${dims})"
  mkdir -p "${dir}/1"
  trtexec --onnx="${dir}/model.onnx" --saveEngine="${dir}/1/model.plan" \
    --minShapes="input:1x${dims}" --optShapes="input:${opt_batch}x${dims}" --maxShapes="input:${max_batch}x${dims}" \
    --timingCacheFile="${REPO}/.timing_cache" "${flags[@]}" > "${dir}/trtexec.log" 2>&1 \
    || { echo "entrypoint: trtexec failed, see ${dir}/trtexec.log" >&2; tail -n 20 "${dir}/trtexec.log" >&2; exit 1; }
done

exec tritonserver --model-repository="${REPO}" "$@"
