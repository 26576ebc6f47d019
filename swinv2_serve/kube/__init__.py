"""Kubernetes / KServe manifests for a Triton model repository written by ``swinv2-serve repository``.

Generated as Python data and written with PyYAML as a Kustomize layout (see ``layout.render``):

    DIR/base/                  Deployment, Service, headless Service, PodDisruptionBudget, HPA, ServiceMonitor
    DIR/overlays/gpu|cpu/      patches of the base: GPUs, tolerations, startup windows (and a CPU repository)
    DIR/monitoring/            the prometheus-adapter rule that makes the HPA's queue-time metric
    DIR/kserve/                with ``kserve=True``: ServingRuntime (our image) + InferenceService + HPA/PDB

This package imports only the standard library, PyYAML and ``swinv2_serve.contract`` / ``swinv2_serve.errors``.
"""

from __future__ import annotations

from .layout import render, write_manifests
from .objects import QUEUE_METRIC
from .options import DEFAULT_IMAGE, NGC_RELEASE, KubeError, KubeOptions, Storage, parse_storage

__all__ = ["DEFAULT_IMAGE", "NGC_RELEASE", "QUEUE_METRIC", "KubeError", "KubeOptions", "Storage", "parse_storage",
           "render", "write_manifests"]
