"""`swinv2-serve kube`: Kubernetes (Kustomize) and KServe manifests that serve a Triton model repository."""

from __future__ import annotations

import argparse
import shlex

from ..kube import KubeOptions, write_manifests
from ..kube.options import DEFAULT_IMAGE, KSERVE_PROTOCOLS, NGC_RELEASE


def _label(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--name", default="swinv2",
                        help="served model name, as in the repository (NAME, NAME_preprocess, NAME_image)")
    parser.add_argument("--model-repository", required=True, metavar="URI",
                        help="pvc://CLAIM[/SUBPATH] (mounted at /models; missing TensorRT engines are built there at "
                             "start), or s3:// gs:// as:// (read by Triton itself; engines must be in it already)")
    parser.add_argument("--output", required=True, metavar="DIR", help="folder for base/, overlays/, kserve/")
    parser.add_argument("--namespace", metavar="NS", help="namespace of every object (default: kubectl's)")
    parser.add_argument("--app-name", metavar="NAME",
                        help="Kubernetes name of the objects (default: --name lower-cased, '_' -> '-')")
    parser.add_argument("--image", default=DEFAULT_IMAGE,
                        help=f"serving image built from the Dockerfile (NGC tritonserver {NGC_RELEASE}); "
                             f"default {DEFAULT_IMAGE}")
    parser.add_argument("--image-pull-secret", metavar="SECRET", help="for a private registry")
    parser.add_argument("--gpus", type=int, default=1, help="nvidia.com/gpu per pod on the gpu overlay (default 1)")
    parser.add_argument("--gpu-product", metavar="LABEL",
                        help="node label nvidia.com/gpu.product to pin one GPU kind (engines are per GPU kind), "
                             "e.g. NVIDIA-A10G")
    parser.add_argument("--replicas", type=int, default=1, help="minimum replicas (autoscaler; default 1)")
    parser.add_argument("--max-replicas", type=int, default=4, help="maximum replicas (autoscaler; default 4)")
    parser.add_argument("--cpu", default="4", help="CPU request per pod (default 4)")
    parser.add_argument("--cpu-limit", help="CPU limit (default: the request)")
    parser.add_argument("--memory", default="16Gi", help="memory request per pod (default 16Gi)")
    parser.add_argument("--memory-limit", help="memory limit (default: the request)")
    parser.add_argument("--shm-size", default="1Gi", help="memory-backed /dev/shm for the python backend (1Gi)")
    parser.add_argument("--queue-target-us", type=int, default=10_000,
                        help="autoscaler target: average queue time per request, microseconds (default 10000; "
                             "keep it above the repository's --max-queue-delay-us)")
    parser.add_argument("--drain-seconds", type=int, default=10,
                        help="preStop sleep before Triton is signalled, so endpoints drop the pod (default 10)")
    parser.add_argument("--exit-timeout", type=int, default=30,
                        help="Triton's --exit-timeout-secs for in-flight requests (default 30)")
    parser.add_argument("--gpu-startup-minutes", type=int, default=30,
                        help="startupProbe window on the gpu overlay and KServe: engine builds (default 30)")
    parser.add_argument("--cpu-startup-minutes", type=int, default=5,
                        help="startupProbe window on the cpu overlay (default 5)")
    parser.add_argument("--cpu-model-repository", metavar="URI",
                        help="the cpu overlay's repository (`swinv2-serve repository --kind cpu`); default: "
                             "--model-repository")
    parser.add_argument("--storage-secret", metavar="SECRET",
                        help="object-storage credentials: s3 AWS_*, as AZURE_STORAGE_* keys (as env), gs key.json")
    parser.add_argument("--service-account", metavar="SA", help="pod service account (e.g. IRSA / workload identity)")
    parser.add_argument("--no-service-monitor", action="store_true",
                        help="leave out the ServiceMonitor (no Prometheus operator in the cluster)")
    parser.add_argument("--monitor-label", action="append", type=_label, default=[], metavar="KEY=VALUE",
                        help="label on the ServiceMonitor for your Prometheus to select it (repeatable)")
    parser.add_argument("--kserve", action="store_true", help="also write kserve/: ServingRuntime + InferenceService")
    parser.add_argument("--kserve-protocol", choices=KSERVE_PROTOCOLS, default="v2",
                        help="InferenceService protocolVersion: v2 (HTTP 8080) or grpc-v2 (gRPC 9000)")


def run(args: argparse.Namespace) -> int:
    opts = KubeOptions(
        name=args.name, model_repository=args.model_repository, app_name=args.app_name, namespace=args.namespace,
        image=args.image, image_pull_secret=args.image_pull_secret, gpus=args.gpus, gpu_product=args.gpu_product,
        replicas=args.replicas, max_replicas=args.max_replicas, cpu=args.cpu, cpu_limit=args.cpu_limit,
        memory=args.memory, memory_limit=args.memory_limit, shm_size=args.shm_size,
        queue_target_us=args.queue_target_us, drain_seconds=args.drain_seconds,
        exit_timeout_seconds=args.exit_timeout, gpu_startup_minutes=args.gpu_startup_minutes,
        cpu_startup_minutes=args.cpu_startup_minutes,
        cpu_model_repository=args.cpu_model_repository, storage_secret=args.storage_secret,
        service_account=args.service_account, service_monitor=not args.no_service_monitor,
        monitor_labels=tuple(args.monitor_label), kserve=args.kserve, kserve_protocol=args.kserve_protocol,
    )
    written = write_manifests(opts, args.output)
    for path in written:
        print(path)
    root = shlex.quote(str(args.output).rstrip("/") or "/")
    print(f"\nserves {', '.join(opts.served)} from {opts.model_repository} with {opts.image}")
    print(f"render: kubectl kustomize {root}/overlays/gpu   (or {root}/overlays/cpu"
          + (f", {root}/kserve)" if opts.kserve else ")"))
    print(f"apply:  kubectl apply -k {root}/overlays/gpu" + (f"   or: kubectl apply -k {root}/kserve" if opts.kserve
                                                              else ""))
    print(f"autoscaling needs prometheus-adapter with the rule in {root}/monitoring/prometheus-adapter-rules.yaml")
    if opts.cpu_model_repository is None:
        print("overlays/cpu serves the same repository: it must then be a CPU one (`swinv2-serve repository --kind "
              "cpu`), or pass --cpu-model-repository")
    if not opts.storage.is_pvc:
        print("object storage: Triton cannot write there, so TensorRT engines must already be in the repository")
    return 0
