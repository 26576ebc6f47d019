# swinv2-serve on NVIDIA Triton Inference Server.
#
#   docker build -t swinv2-serve --build-arg NGC_RELEASE=24.10 .
#   docker run --gpus all --rm --shm-size=1g -p 8000:8000 -p 8001:8001 -p 8002:8002 \
#       -v "$PWD/repo:/models" swinv2-serve
#
# One NGC release for every stage: the TensorRT stage (trtexec) and the Triton stage ship the same
# TensorRT, so an engine built at container start is loadable by Triton's tensorrt_plan backend.
# --shm-size: the python backend (NAME_preprocess) exchanges tensors with Triton through /dev/shm;
# Docker's 64 MB default is too small for batches of decoded images; give it at least 256m (1g is safe).
ARG NGC_RELEASE=24.10

# --- 1. the package as a wheel (no GPU needed) -------------------------------------------------------
FROM nvcr.io/nvidia/tritonserver:${NGC_RELEASE}-py3 AS wheel
WORKDIR /src
COPY pyproject.toml README.md ./
COPY swinv2_serve ./swinv2_serve
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

# --- 2. TensorRT tools of the same release ------------------------------------------------------------
FROM nvcr.io/nvidia/tensorrt:${NGC_RELEASE}-py3 AS tensorrt

# --- 3. serving image ------------------------------------------------------------------------------------
FROM nvcr.io/nvidia/tritonserver:${NGC_RELEASE}-py3 AS serve
LABEL org.opencontainers.image.title="swinv2-serve" \
      org.opencontainers.image.description="Swin Transformer V2 classifiers on Triton (TensorRT / ONNX Runtime)"
# trtexec builds engines at start-up on the target GPU (its libnvinfer is the one Triton already ships)
COPY --from=tensorrt /opt/tensorrt/bin/trtexec /usr/local/bin/trtexec
COPY --from=wheel /wheels /tmp/wheels
# The python-backend preprocessing model imports swinv2_serve.preprocess: numpy + Pillow only, no torch.
RUN pip install --no-cache-dir "numpy<2" "pillow>=10" \
    && pip install --no-cache-dir --no-deps /tmp/wheels/*.whl \
    && rm -rf /tmp/wheels
COPY docker/entrypoint.sh /usr/local/bin/swinv2-serve-entrypoint
ENV MODEL_REPOSITORY=/models
VOLUME ["/models"]
EXPOSE 8000 8001 8002
HEALTHCHECK --interval=30s --timeout=5s --start-period=300s \
    CMD ["curl", "-fs", "localhost:8000/v2/health/ready"]
ENTRYPOINT ["/usr/local/bin/swinv2-serve-entrypoint"]
