"""The core objects: Deployment, Services, PodDisruptionBudget, HorizontalPodAutoscaler, ServiceMonitor, and the
prometheus-adapter rule that turns Triton's counters into the autoscaler's metric. Plain dicts, one function each."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..contract import GRPC_PORT, HTTP_PORT, LIVE_PATH, METRICS_PATH, METRICS_PORT, READY_PATH
from .options import ENTRYPOINT, NGC_RELEASE, RUN_AS_USER, KubeOptions, Storage

Obj = dict[str, Any]

CONTAINER = "triton"
MOUNT = "/models"  # where a pvc:// repository is mounted (the image's MODEL_REPOSITORY default)
PROBE_PERIOD_S = 10
QUEUE_METRIC = "triton_queue_time_per_request_us"
# Triton's own chart (deploy/k8s-onprem): the queue time per request, per pod, over 30 s
QUEUE_QUERY = ("avg(delta(nv_inference_queue_duration_us{<<.LabelMatchers>>}[30s])"
               "/(1+delta(nv_inference_request_success{<<.LabelMatchers>>}[30s]))) by (<<.GroupBy>>)")
SCALE_DOWN_WINDOW_S = 300
ANNOTATIONS = "swinv2-serve"  # prefix of our own annotations


def grpc_note(service: str, port: int) -> str:
    return (f"gRPC keeps one long-lived HTTP/2 connection and an L4 ClusterIP Service pins it to one pod: clients "
            f"that should spread their requests resolve this headless Service (dns:///{service}:{port}, round_robin "
            "policy) or go through a service mesh / L7 proxy")


def labels(opts: KubeOptions) -> dict[str, str]:
    return {"app.kubernetes.io/name": "swinv2-serve", "app.kubernetes.io/instance": opts.app,
            "app.kubernetes.io/component": "inference-server"}


def metadata(name: str, opts: KubeOptions, annotations: dict[str, str] | None = None) -> Obj:
    meta: Obj = {"name": name, "labels": labels(opts)}
    if annotations:
        meta["annotations"] = annotations
    return meta


def served_annotations(opts: KubeOptions, storage: Storage) -> dict[str, str]:
    return {f"{ANNOTATIONS}/served-models": ",".join(opts.served),
            f"{ANNOTATIONS}/model-repository": storage.uri,
            f"{ANNOTATIONS}/ngc-release": NGC_RELEASE}


@dataclass
class Wiring:
    """How the container reaches its model repository: what it runs, with which arguments, env and volumes."""

    command: list[str]
    args: list[str]
    env: list[Obj] = field(default_factory=list)
    env_from: list[Obj] = field(default_factory=list)
    volumes: list[Obj] = field(default_factory=list)
    mounts: list[Obj] = field(default_factory=list)


SHM_MOUNT: Obj = {"name": "dshm", "mountPath": "/dev/shm"}


def shm_volume(opts: KubeOptions) -> Obj:
    """The python backend (NAME_preprocess) trades tensors with Triton through /dev/shm; a container runtime's
    64 MB default is too small for batches of decoded images. Memory-backed: it counts against the memory limit."""
    return {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": opts.shm_size}}


def storage_wiring(storage: Storage, opts: KubeOptions, mount: str = MOUNT) -> Wiring:
    """pvc: our entrypoint (builds missing TensorRT engines into the volume, timing cache at MOUNT/.timing_cache,
    then execs tritonserver --model-repository=MOUNT). Object storage: tritonserver itself reads the URI, and
    nothing can be written there, so TensorRT engines must already be in the repository."""
    shm, shm_mount = [shm_volume(opts)], [SHM_MOUNT]
    if storage.is_pvc:
        mount_: Obj = {"name": "model-repository", "mountPath": mount}
        if storage.subpath:
            mount_["subPath"] = storage.subpath
        return Wiring(command=[ENTRYPOINT], args=[],
                      env=[{"name": "MODEL_REPOSITORY", "value": mount}],
                      volumes=[{"name": "model-repository", "persistentVolumeClaim": {"claimName": storage.claim}},
                               *shm],
                      mounts=[mount_, *shm_mount])
    wiring = Wiring(command=["tritonserver"], args=[f"--model-repository={storage.uri}"], volumes=shm,
                    mounts=shm_mount)
    if opts.storage_secret and storage.scheme == "gs":  # a service-account key file
        keys = "/var/run/secrets/swinv2-serve/storage"
        wiring.volumes.append({"name": "storage-credentials", "secret": {"secretName": opts.storage_secret}})
        wiring.mounts.append({"name": "storage-credentials", "mountPath": keys, "readOnly": True})
        wiring.env.append({"name": "GOOGLE_APPLICATION_CREDENTIALS", "value": f"{keys}/key.json"})
    elif opts.storage_secret:  # s3: AWS_ACCESS_KEY_ID/..., as: AZURE_STORAGE_ACCOUNT/AZURE_STORAGE_KEY
        wiring.env_from.append({"secretRef": {"name": opts.storage_secret}})
    return wiring


def triton_args(opts: KubeOptions, http: int, grpc: int, metrics: int) -> list[str]:
    return [f"--http-port={http}", f"--grpc-port={grpc}", f"--metrics-port={metrics}", "--allow-http=true",
            "--allow-grpc=true", "--allow-metrics=true",
            "--strict-readiness=true",  # ready only when every model (NAME, NAME_preprocess, NAME_image) is
            f"--exit-timeout-secs={opts.exit_timeout_seconds}"]


def probes(port: int | str, startup_minutes: int) -> Obj:
    """Triton's chart's probes; the startupProbe holds the others off while engines build and models load."""
    def get(path: str) -> Obj:
        return {"httpGet": {"path": path, "port": port}}

    return {
        "startupProbe": {**get(READY_PATH), "periodSeconds": PROBE_PERIOD_S, "timeoutSeconds": 5,
                         "failureThreshold": startup_failures(startup_minutes)},
        "livenessProbe": {**get(LIVE_PATH), "periodSeconds": 10, "timeoutSeconds": 5, "failureThreshold": 3},
        "readinessProbe": {**get(READY_PATH), "periodSeconds": 5, "timeoutSeconds": 3, "failureThreshold": 3},
    }


def startup_failures(minutes: int) -> int:
    return minutes * 60 // PROBE_PERIOD_S


def container_security() -> Obj:
    return {"runAsNonRoot": True, "runAsUser": RUN_AS_USER, "runAsGroup": RUN_AS_USER,
            "allowPrivilegeEscalation": False, "privileged": False, "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"}}


def pod_security() -> Obj:
    # fsGroup: a fresh volume becomes writable by user 1000 (engines built at start); OnRootMismatch skips the
    # recursive chown of a large repository on every start
    return {"runAsNonRoot": True, "runAsUser": RUN_AS_USER, "runAsGroup": RUN_AS_USER, "fsGroup": RUN_AS_USER,
            "fsGroupChangePolicy": "OnRootMismatch", "seccompProfile": {"type": "RuntimeDefault"}}


def pre_stop(opts: KubeOptions) -> Obj:
    """Sleep first, so endpoint controllers and proxies drop the pod before Triton stops taking requests."""
    return {"preStop": {"exec": {"command": ["sleep", str(opts.drain_seconds)]}}} if opts.drain_seconds else {}


def spread(match_labels: dict[str, str]) -> list[Obj]:
    return [{"maxSkew": 1, "topologyKey": "kubernetes.io/hostname", "whenUnsatisfiable": "ScheduleAnyway",
             "labelSelector": {"matchLabels": match_labels}, "matchLabelKeys": ["pod-template-hash"]}]


def deployment(opts: KubeOptions) -> Obj:
    wiring = storage_wiring(opts.storage, opts)
    ports = [{"name": "http", "containerPort": HTTP_PORT, "protocol": "TCP"},
             {"name": "grpc", "containerPort": GRPC_PORT, "protocol": "TCP"},
             {"name": "metrics", "containerPort": METRICS_PORT, "protocol": "TCP"}]
    container: Obj = {
        "name": CONTAINER, "image": opts.image, "imagePullPolicy": "IfNotPresent",
        "command": wiring.command, "args": wiring.args + triton_args(opts, HTTP_PORT, GRPC_PORT, METRICS_PORT),
        "ports": ports,
        "env": wiring.env, "envFrom": wiring.env_from,
        "resources": {"requests": opts.requests, "limits": opts.limits},
        **probes("http", opts.cpu_startup_minutes),
        "lifecycle": pre_stop(opts),
        "securityContext": container_security(),
        "volumeMounts": wiring.mounts,
    }
    pod: Obj = {
        "automountServiceAccountToken": False,  # Triton never calls the Kubernetes API
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": opts.grace_seconds,
        "securityContext": pod_security(),
        "topologySpreadConstraints": spread(labels(opts)),
        "containers": [{k: v for k, v in container.items() if v not in ({}, [])}],
        "volumes": wiring.volumes,
    }
    if opts.service_account:
        pod["serviceAccountName"] = opts.service_account
    if opts.image_pull_secret:
        pod["imagePullSecrets"] = [{"name": opts.image_pull_secret}]
    scrape = {"prometheus.io/scrape": "true", "prometheus.io/port": str(METRICS_PORT),
              "prometheus.io/path": METRICS_PATH}
    return {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": metadata(opts.app, opts, served_annotations(opts, opts.storage)),
        "spec": {
            # no `replicas`: the HorizontalPodAutoscaler owns the count (an applied value would reset it)
            "revisionHistoryLimit": 5,
            "progressDeadlineSeconds": progress_deadline(opts.cpu_startup_minutes),
            # a new pod is ready before an old one goes (needs room for one more pod, e.g. a spare GPU)
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
            "selector": {"matchLabels": labels(opts)},
            "template": {"metadata": {"labels": labels(opts),
                                      "annotations": {**scrape, **served_annotations(opts, opts.storage)}},
                         "spec": pod},
        },
    }


def progress_deadline(startup_minutes: int) -> int:
    return startup_minutes * 60 + 600


def services(opts: KubeOptions) -> list[Obj]:
    """A ClusterIP Service (http, grpc, metrics) and a headless one for client-side gRPC balancing."""
    http = {"name": "http", "port": HTTP_PORT, "targetPort": "http", "protocol": "TCP"}
    grpc = {"name": "grpc", "port": GRPC_PORT, "targetPort": "grpc", "protocol": "TCP",
            "appProtocol": "kubernetes.io/h2c"}
    metrics = {"name": "metrics", "port": METRICS_PORT, "targetPort": "metrics", "protocol": "TCP"}
    main = {"apiVersion": "v1", "kind": "Service", "metadata": metadata(opts.app, opts),
            "spec": {"type": "ClusterIP", "selector": labels(opts), "ports": [http, grpc, metrics]}}
    return [main, headless_service(f"{opts.app}-headless", opts, labels(opts), [grpc, http])]


def headless_service(name: str, opts: KubeOptions, selector: dict[str, str], ports: list[Obj]) -> Obj:
    # no metrics port here, so a ServiceMonitor that also matches this Service does not scrape each pod twice
    note = grpc_note(name, next(p["port"] for p in ports if p["name"] == "grpc"))
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": metadata(name, opts, {f"{ANNOTATIONS}/why-headless": note}),
            "spec": {"clusterIP": "None", "selector": selector, "ports": ports}}


def pod_disruption_budget(name: str, opts: KubeOptions, selector: dict[str, str]) -> Obj:
    # maxUnavailable (not minAvailable: 1), so a single replica does not block node drains forever; pods that
    # never became ready (e.g. still building engines) may always be evicted
    return {"apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": metadata(name, opts),
            "spec": {"maxUnavailable": 1, "selector": {"matchLabels": selector},
                     "unhealthyPodEvictionPolicy": "AlwaysAllow"}}


def autoscaler(name: str, opts: KubeOptions, deployment_name: str) -> Obj:
    """Scale on Triton's queue time per request (Triton's chart's signal); the target must sit above the dynamic
    batcher's max_queue_delay_microseconds, which every request may spend queued at low load."""
    return {
        "apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler", "metadata": metadata(name, opts),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": deployment_name},
            "minReplicas": opts.replicas, "maxReplicas": opts.max_replicas,
            "metrics": [{"type": "Pods", "pods": {"metric": {"name": QUEUE_METRIC},
                                                  "target": {"type": "AverageValue",
                                                             "averageValue": str(opts.queue_target_us)}}}],
            "behavior": {
                "scaleUp": {"stabilizationWindowSeconds": 0,
                            "policies": [{"type": "Pods", "value": 2, "periodSeconds": 60}]},
                "scaleDown": {"stabilizationWindowSeconds": SCALE_DOWN_WINDOW_S,
                              "policies": [{"type": "Pods", "value": 1, "periodSeconds": 120}]},
            },
        },
    }


def service_monitor(name: str, opts: KubeOptions, service_labels: dict[str, str]) -> Obj:
    meta = metadata(name, opts)
    meta["labels"].update(dict(opts.monitor_labels))  # e.g. release=kube-prometheus-stack, for Prometheus to pick
    return {"apiVersion": "monitoring.coreos.com/v1", "kind": "ServiceMonitor", "metadata": meta,
            "spec": {"selector": {"matchLabels": service_labels},
                     "endpoints": [{"port": "metrics", "path": METRICS_PATH, "interval": "15s",
                                    "scrapeTimeout": "10s"}]}}


def adapter_rules(opts: KubeOptions) -> Obj:
    """prometheus-adapter's config (its ``rules:`` list), exactly the rule of Triton's chart, renamed metric."""
    where = f'namespace="{opts.namespace}",pod!=""' if opts.namespace else 'pod!=""'
    return {"rules": [{
        "seriesQuery": f"nv_inference_queue_duration_us{{{where}}}",
        "resources": {"overrides": {"namespace": {"resource": "namespace"}, "pod": {"resource": "pod"}}},
        "name": {"matches": "nv_inference_queue_duration_us", "as": QUEUE_METRIC},
        "metricsQuery": QUEUE_QUERY,
    }]}
