"""KServe: a ServingRuntime of our image and an InferenceService that names it.

KServe's stock ``kserve-tritonserver`` runtime runs NGC's plain tritonserver image, which lacks our wheel: the
``NAME_preprocess`` python model imports ``swinv2_serve.preprocess`` and would fail to load. So we ship our own
ServingRuntime with our image and the stock runtime's conventions (HTTP 8080, gRPC 9000, repository /mnt/models,
user 1000, all capabilities dropped, ``prometheus.kserve.io/*`` annotations for metrics on 8002, protocols v2 and
grpc-v2); ``autoSelect`` stays off so it never captures other Triton InferenceServices of the namespace.

The InferenceService asks for RawDeployment (a plain Deployment + Service): a GPU pod may spend minutes building
engines, so Knative's scale-to-zero buys nothing, and Knative allows one port per container and probes on it only,
while Triton serves HTTP, gRPC and metrics. Autoscaling is ``external``: KServe makes no HPA of its own and ours
(the queue-time one) targets KServe's ``NAME-predictor`` Deployment.
"""

from __future__ import annotations

from ..contract import METRICS_PATH, METRICS_PORT
from .objects import (
    ANNOTATIONS,
    SHM_MOUNT,
    Obj,
    container_security,
    metadata,
    pod_security,
    pre_stop,
    probes,
    served_annotations,
    shm_volume,
    spread,
    triton_args,
)
from .options import ENTRYPOINT, KubeOptions, Storage

HTTP_PORT, GRPC_PORT = 8080, 9000  # KServe's conventions (the stock Triton runtime's --http-port / --grpc-port)
MODEL_DIR = "/mnt/models"  # where KServe puts storageUri (storage initializer download, or the PVC itself)
CONTAINER = "kserve-container"


def runtime_name(opts: KubeOptions) -> str:
    return f"{opts.app}-triton"


def predictor_name(opts: KubeOptions) -> str:
    """The Deployment and Service KServe creates for the predictor in RawDeployment mode."""
    return f"{opts.app}-predictor"


def pod_labels(opts: KubeOptions) -> dict[str, str]:
    """Labels KServe puts on the predictor's pods (and Service)."""
    return {"serving.kserve.io/inferenceservice": opts.app}


def storage_uri(storage: Storage) -> str:
    """KServe's spelling of the repository: Azure is https://ACCOUNT.blob.core.windows.net/CONTAINER/PATH there,
    as://ACCOUNT/CONTAINER/PATH for Triton."""
    if storage.scheme != "as":
        return storage.uri
    account, _, rest = storage.uri[len("as://"):].partition("/")
    return f"https://{account}.blob.core.windows.net/{rest}"


def serving_runtime(opts: KubeOptions) -> Obj:
    http = {"name": "http1", "containerPort": HTTP_PORT, "protocol": "TCP"}
    grpc = {"name": "h2c", "containerPort": GRPC_PORT, "protocol": "TCP"}
    metrics = {"name": "metrics", "containerPort": METRICS_PORT, "protocol": "TCP"}
    # KServe's raw Service maps its port 80 to the container's first port: the one protocolVersion speaks
    ports = [grpc, http, metrics] if opts.kserve_protocol == "grpc-v2" else [http, grpc, metrics]
    container: Obj = {
        "name": CONTAINER, "image": opts.image, "imagePullPolicy": "IfNotPresent",
        # always the entrypoint with MODEL_REPOSITORY=/mnt/models: KServe hands the repository over as a folder
        "command": [ENTRYPOINT],
        "args": triton_args(opts, HTTP_PORT, GRPC_PORT, METRICS_PORT),
        "env": [{"name": "MODEL_REPOSITORY", "value": MODEL_DIR}],
        "ports": ports,
        **probes(HTTP_PORT, opts.gpu_startup_minutes),
        "lifecycle": pre_stop(opts),
        "securityContext": container_security(),
        "volumeMounts": [SHM_MOUNT],
        "resources": {"requests": opts.requests, "limits": opts.limits},
    }
    spec: Obj = {
        "annotations": {"prometheus.kserve.io/port": str(METRICS_PORT), "prometheus.kserve.io/path": METRICS_PATH},
        "supportedModelFormats": [{"name": "triton", "version": "2", "autoSelect": False}],
        "protocolVersions": ["v2", "grpc-v2"],
        "multiModel": False,
        "containers": [{k: v for k, v in container.items() if v not in ({}, [])}],
        "volumes": [shm_volume(opts)],
    }
    if opts.image_pull_secret:
        spec["imagePullSecrets"] = [{"name": opts.image_pull_secret}]
    return {"apiVersion": "serving.kserve.io/v1alpha1", "kind": "ServingRuntime",
            "metadata": metadata(runtime_name(opts), opts,
                                 {f"{ANNOTATIONS}/why": "our image: NAME_preprocess imports the swinv2_serve wheel, "
                                                        "which the stock kserve-tritonserver image lacks"}),
            "spec": spec}


def inference_service(opts: KubeOptions) -> Obj:
    storage = opts.storage
    annotations = {
        "serving.kserve.io/deploymentMode": "RawDeployment",
        "serving.kserve.io/autoscalerClass": "external",  # our HorizontalPodAutoscaler (queue time per request)
        **served_annotations(opts, storage),
    }
    if storage.is_pvc:
        # mount the claim read-write at /mnt/models, so the entrypoint can build missing engines into it;
        # object storage is downloaded to a read-only folder: its engines must already be in the repository
        annotations["storage.kserve.io/readonly"] = "false"
    limits = {**opts.limits, "nvidia.com/gpu": opts.gpus}
    predictor: Obj = {
        "minReplicas": opts.replicas, "maxReplicas": opts.max_replicas,
        "terminationGracePeriodSeconds": opts.grace_seconds,
        "securityContext": pod_security(),
        "topologySpreadConstraints": spread(pod_labels(opts)),
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        "model": {
            "modelFormat": {"name": "triton", "version": "2"},
            "runtime": runtime_name(opts),
            "protocolVersion": opts.kserve_protocol,
            "storageUri": storage_uri(storage),
            "resources": {"requests": opts.requests, "limits": limits},
        },
    }
    if opts.gpu_product:
        predictor["nodeSelector"] = {"nvidia.com/gpu.product": opts.gpu_product}
    if opts.service_account:  # KServe's storage initializer takes object-storage credentials from it
        predictor["serviceAccountName"] = opts.service_account
    return {"apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService",
            "metadata": metadata(opts.app, opts, annotations), "spec": {"predictor": predictor}}
