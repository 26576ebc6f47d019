"""`swinv2-serve kube`: manifests rendered by the real `kubectl kustomize`, validated offline against real schemas.

- core kinds: `kubernetes-validate --strict` (its Python API, the code path of its CLI) for the two newest Kubernetes
  versions the installed package ships; its WARN lines (e.g. an API version it has no schema for, such as a
  removed one) count as failures, as do ERROR and FATAL lines;
- InferenceService, ServingRuntime, ServiceMonitor: jsonschema against `spec.versions[].schema.openAPIV3Schema` of
  the upstream CRDs in ../shared/k8s/crds. CRD schemas leave `additionalProperties` unset, so a misspelt key would
  pass: validation runs in a *strict* mode that sets `additionalProperties: false` on every object schema that has
  `properties` and neither `additionalProperties` nor `x-kubernetes-preserve-unknown-fields: true` (what the API
  server's pruning would silently drop). `metadata` (just `type: object` in a CRD) is checked as ObjectMeta by
  kubernetes-validate.
No cluster, no network.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import copy
import functools
import io
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from swinv2_serve.commands import kube as kube_cmd
from swinv2_serve.contract import GRPC_PORT, HTTP_PORT, LIVE_PATH, METRICS_PATH, METRICS_PORT, READY_PATH, model_names
from swinv2_serve.errors import SwinV2ServeError
from swinv2_serve.kube import QUEUE_METRIC, KubeError, KubeOptions, write_manifests
from swinv2_serve.kube.options import DEFAULT_IMAGE, ENTRYPOINT, NGC_RELEASE

REPO = Path(__file__).resolve().parents[1]
CRDS = Path(os.environ.get("SWINV2_SERVE_CRDS", REPO.parent / "shared" / "k8s" / "crds"))
KUBECTL = shutil.which("kubectl")
needs_kubectl = pytest.mark.skipif(KUBECTL is None, reason="kubectl (with its built-in kustomize) is not installed")
kv = pytest.importorskip("kubernetes_validate", reason="kubernetes-validate is not installed (the dev extra)")
jsonschema = pytest.importorskip("jsonschema", reason="jsonschema is not installed (the dev extra)")

CRD_FILES = {
    ("serving.kserve.io/v1beta1", "InferenceService"): "serving.kserve.io_inferenceservices.yaml",
    ("serving.kserve.io/v1alpha1", "ServingRuntime"): "serving.kserve.io_servingruntimes.yaml",
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "monitoring.coreos.com_servicemonitors.yaml",
}
Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # the InferenceService CRD is 2 MB of YAML

# three layouts that between them take every storage kind and option path
VARIANTS: dict[str, dict[str, Any]] = {
    "pvc": dict(name="swinv2_tiny", model_repository="pvc://models/swinv2/repo", namespace="ml", gpus=2,
                gpu_product="NVIDIA-H100-80GB-HBM3", replicas=2, max_replicas=6, cpu="8", memory="24Gi",
                cpu_model_repository="s3://bucket/cpu-repo", storage_secret="s3-credentials",
                monitor_labels=(("release", "kube-prometheus-stack"),), kserve=True, image="registry.example:5000/"
                "swinv2-serve:0.1.0", image_pull_secret="regcred"),
    "s3": dict(name="swinv2", model_repository="s3://bucket/triton", storage_secret="s3-credentials",
               service_account="triton-reader", cpu_model_repository="gs://bucket/cpu", kserve=True,
               kserve_protocol="grpc-v2", service_monitor=False, drain_seconds=0),
    "azure": dict(name="classifier", model_repository="as://account/container/repo", kserve=True),
}
OVERLAYS = ("overlays/gpu", "overlays/cpu", "base", "kserve")


# -- rendering ---------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def layouts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = {}
    for variant, kwargs in VARIANTS.items():
        out[variant] = tmp_path_factory.mktemp(f"kube_{variant}")
        write_manifests(KubeOptions(**kwargs), out[variant])
    return out


@functools.cache
def _kustomize(path: Path) -> tuple[dict[str, Any], ...]:
    proc = subprocess.run([KUBECTL, "kustomize", str(path)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, f"kubectl kustomize {path} failed:\n{proc.stderr}"
    return tuple(doc for doc in yaml.safe_load_all(proc.stdout) if doc)


def rendered(layouts: dict[str, Path], variant: str, overlay: str) -> list[dict[str, Any]]:
    return copy.deepcopy(list(_kustomize(layouts[variant] / overlay)))


def one(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, got {[d['metadata']['name'] for d in found]}"
    return found[0]


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    (c,) = deployment["spec"]["template"]["spec"]["containers"]
    return c


# -- validators ----------------------------------------------------------------------------------------------------
def newest_kubernetes_versions(count: int = 2) -> list[str]:
    """The newest minor versions the installed kubernetes-validate has schemas for (found, not hard-coded)."""
    minors = {tuple(int(p) for p in re.match(r"(\d+)\.(\d+)", v).groups()) for v in kv.utils.all_versions()}
    return [f"{major}.{minor}" for major, minor in sorted(minors)[-count:]]


def validate_core(obj: dict[str, Any], version: str) -> None:
    """kubernetes-validate strict, with its printed WARN/ERROR/FATAL lines as failures."""
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        rc = kv.validate_resource(obj, filename="rendered", version=version, strict=True, quiet=True, no_warn=False)
    bad = [line for line in printed.getvalue().splitlines() if line.split(" ", 1)[0] in ("WARN", "ERROR", "FATAL")]
    if rc or bad:
        raise AssertionError(f"{obj['kind']}/{obj['metadata'].get('name')} vs Kubernetes {version}: "
                             + ("; ".join(bad) or f"rc {rc}"))


def _strict(schema: Any) -> Any:
    """An OpenAPI v3 schema with `additionalProperties: false` where the API server would prune unknown keys."""
    if not isinstance(schema, dict):
        return schema
    out = dict(schema)
    if isinstance(out.get("properties"), dict):
        out["properties"] = {key: _strict(sub) for key, sub in out["properties"].items()}
        if "additionalProperties" not in out and not out.get("x-kubernetes-preserve-unknown-fields"):
            out["additionalProperties"] = False
    if isinstance(out.get("additionalProperties"), dict):
        out["additionalProperties"] = _strict(out["additionalProperties"])
    if isinstance(out.get("items"), dict):
        out["items"] = _strict(out["items"])
    for key in ("allOf", "anyOf", "oneOf"):
        if isinstance(out.get(key), list):
            out[key] = [_strict(sub) for sub in out[key]]
    if isinstance(out.get("not"), dict):
        out["not"] = _strict(out["not"])
    return out


@pytest.fixture(scope="module")
def crd_validators() -> dict[tuple[str, str], tuple[Any, Any]]:
    """(apiVersion, kind) -> (strict validator, validator of the schema as published)."""
    if not CRDS.is_dir():
        pytest.skip(f"upstream CRDs not found at {CRDS} (set SWINV2_SERVE_CRDS)")
    out = {}
    for (api_version, kind), filename in CRD_FILES.items():
        crd = yaml.load((CRDS / filename).read_text(), Loader=Loader)
        group, version = api_version.split("/")
        assert crd["spec"]["group"] == group and crd["spec"]["names"]["kind"] == kind
        (entry,) = [v for v in crd["spec"]["versions"] if v["name"] == version]
        schema = entry["schema"]["openAPIV3Schema"]
        out[(api_version, kind)] = (jsonschema.Draft4Validator(_strict(schema)), jsonschema.Draft4Validator(schema))
    return out


def validate_custom(obj: dict[str, Any], validators: dict[tuple[str, str], tuple[Any, Any]]) -> None:
    strict, _ = validators[(obj["apiVersion"], obj["kind"])]
    errors = sorted(strict.iter_errors(obj), key=lambda e: list(e.path))
    if errors:
        raise AssertionError(f"{obj['kind']}/{obj['metadata'].get('name')}: "
                             + "; ".join(f"{'.'.join(map(str, e.path))}: {e.message}" for e in errors[:5]))
    # the CRD says only `type: object` for metadata: check it as the API server does, as ObjectMeta
    as_configmap = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": obj["metadata"]}
    validate_core(as_configmap, newest_kubernetes_versions()[-1])


# -- every layout renders and validates ------------------------------------------------------------------------------
@needs_kubectl
@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_renders_and_validates(layouts, crd_validators, variant: str, overlay: str) -> None:
    docs = rendered(layouts, variant, overlay)
    kinds = sorted(d["kind"] for d in docs)
    if overlay == "kserve":
        assert {"InferenceService", "ServingRuntime", "HorizontalPodAutoscaler"} <= set(kinds)
    else:
        assert {"Deployment", "Service", "PodDisruptionBudget", "HorizontalPodAutoscaler"} <= set(kinds)
        assert kinds.count("Service") == 2
    assert ("ServiceMonitor" in kinds) == VARIANTS[variant].get("service_monitor", True)
    versions = newest_kubernetes_versions()
    assert len(versions) == 2
    for doc in docs:
        if (doc["apiVersion"], doc["kind"]) in CRD_FILES:
            validate_custom(doc, crd_validators)
        else:
            for version in versions:
                validate_core(doc, version)
        if VARIANTS[variant].get("namespace"):
            assert doc["metadata"]["namespace"] == VARIANTS[variant]["namespace"]


# -- the validators do reject ---------------------------------------------------------------------------------------
@needs_kubectl
def test_core_validation_rejects_a_broken_deployment(layouts) -> None:
    deployment = one(rendered(layouts, "pvc", "overlays/gpu"), "Deployment")
    version = newest_kubernetes_versions()[-1]
    validate_core(deployment, version)

    wrong_type = copy.deepcopy(deployment)
    container(wrong_type)["ports"][0]["containerPort"] = "eight thousand"
    with pytest.raises(AssertionError, match="containerPort|eight thousand"):
        validate_core(wrong_type, version)

    unknown_key = copy.deepcopy(deployment)
    container(unknown_key)["livenessProbe"]["httpGet"]["paht"] = LIVE_PATH  # a typo the strict schema rejects
    with pytest.raises(AssertionError, match="paht"):
        validate_core(unknown_key, version)

    removed_api = copy.deepcopy(one(rendered(layouts, "pvc", "overlays/gpu"), "HorizontalPodAutoscaler"))
    removed_api["apiVersion"] = "autoscaling/v2beta2"  # removed in 1.26: only a WARN line from kubernetes-validate
    with pytest.raises(AssertionError, match="WARN"):
        validate_core(removed_api, version)


@needs_kubectl
def test_crd_validation_rejects_a_broken_inference_service(layouts, crd_validators) -> None:
    isvc = one(rendered(layouts, "pvc", "kserve"), "InferenceService")
    validate_custom(isvc, crd_validators)

    wrong_type = copy.deepcopy(isvc)
    wrong_type["spec"]["predictor"]["minReplicas"] = "two"
    with pytest.raises(AssertionError, match="minReplicas"):
        validate_custom(wrong_type, crd_validators)

    unknown_key = copy.deepcopy(isvc)
    unknown_key["spec"]["predictor"]["model"]["storageURI"] = "s3://typo"
    with pytest.raises(AssertionError, match="storageURI"):
        validate_custom(unknown_key, crd_validators)
    # ...which the schema as published lets through: hence the strict mode
    _, published = crd_validators[(isvc["apiVersion"], isvc["kind"])]
    assert not list(published.iter_errors(unknown_key))

    bad_metadata = copy.deepcopy(isvc)
    bad_metadata["metadata"]["labelz"] = {}
    with pytest.raises(AssertionError, match="labelz"):
        validate_custom(bad_metadata, crd_validators)


# -- what the objects say ------------------------------------------------------------------------------------------
@needs_kubectl
def test_deployment_on_a_volume(layouts) -> None:
    opts = VARIANTS["pvc"]
    served = model_names(opts["name"])
    docs = rendered(layouts, "pvc", "overlays/gpu")
    deployment = one(docs, "Deployment", "swinv2-tiny")
    pod = deployment["spec"]["template"]["spec"]
    c = container(deployment)

    assert deployment["metadata"]["annotations"]["swinv2-serve/served-models"] == ",".join(served)
    assert served == ("swinv2_tiny", "swinv2_tiny_preprocess", "swinv2_tiny_image")
    assert deployment["metadata"]["annotations"]["swinv2-serve/ngc-release"] == NGC_RELEASE
    assert "replicas" not in deployment["spec"]  # the HPA owns it
    for key in ("app.kubernetes.io/name", "app.kubernetes.io/instance", "app.kubernetes.io/component"):
        assert key in deployment["metadata"]["labels"] and key in deployment["spec"]["selector"]["matchLabels"]
    assert c["image"] == opts["image"] and pod["imagePullSecrets"] == [{"name": "regcred"}]

    # entrypoint builds engines into the claim (mounted at /models), then runs tritonserver --model-repository=/models
    assert c["command"] == [ENTRYPOINT]
    assert not any(a.startswith("--model-repository") for a in c["args"])
    env = {e["name"]: e["value"] for e in c["env"]}
    assert env == {"MODEL_REPOSITORY": "/models"}  # the engines' precision is the repository's recipe
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["model-repository"]["persistentVolumeClaim"] == {"claimName": "models"}
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    assert mounts["/models"]["subPath"] == "swinv2/repo"
    assert volumes["dshm"]["emptyDir"]["medium"] == "Memory" and mounts["/dev/shm"]["name"] == "dshm"

    # ports, args
    assert {(p["name"], p["containerPort"]) for p in c["ports"]} == {
        ("http", HTTP_PORT), ("grpc", GRPC_PORT), ("metrics", METRICS_PORT)}
    assert {f"--http-port={HTTP_PORT}", f"--grpc-port={GRPC_PORT}", f"--metrics-port={METRICS_PORT}",
            "--strict-readiness=true", "--exit-timeout-secs=30"} <= set(c["args"])

    # probes: startup on readiness for 30 min on GPUs (engine builds), liveness / readiness on Triton's endpoints
    assert c["livenessProbe"]["httpGet"] == {"path": LIVE_PATH, "port": "http"}
    assert c["readinessProbe"]["httpGet"] == {"path": READY_PATH, "port": "http"}
    assert c["startupProbe"]["httpGet"] == {"path": READY_PATH, "port": "http"}
    startup_s = c["startupProbe"]["failureThreshold"] * c["startupProbe"]["periodSeconds"]
    assert startup_s == 30 * 60
    assert deployment["spec"]["progressDeadlineSeconds"] > startup_s

    # GPUs, one GPU kind, GPU-node taints
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 2
    assert c["resources"]["requests"] == {"cpu": "8", "memory": "24Gi"}
    assert c["resources"]["limits"]["cpu"] == "8" and c["resources"]["limits"]["memory"] == "24Gi"
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]

    # security
    sc = c["securityContext"]
    assert sc["runAsNonRoot"] is True and sc["runAsUser"] == 1000 and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]} and sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["securityContext"]["fsGroup"] == 1000 and pod["automountServiceAccountToken"] is False

    # graceful shutdown: preStop drain, then Triton's exit timeout, all inside the grace period
    drain = int(c["lifecycle"]["preStop"]["exec"]["command"][-1])
    assert c["lifecycle"]["preStop"]["exec"]["command"][0] == "sleep" and drain > 0
    assert pod["terminationGracePeriodSeconds"] > drain + 30

    (spread,) = pod["topologySpreadConstraints"]
    assert spread["topologyKey"] == "kubernetes.io/hostname" and spread["whenUnsatisfiable"] == "ScheduleAnyway"
    assert spread["labelSelector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]


@needs_kubectl
def test_services_budget_autoscaler_and_monitoring(layouts) -> None:
    docs = rendered(layouts, "pvc", "overlays/gpu")
    deployment = one(docs, "Deployment")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    service, headless = one(docs, "Service", "swinv2-tiny"), one(docs, "Service", "swinv2-tiny-headless")
    assert service["spec"]["type"] == "ClusterIP"
    assert {(p["name"], p["port"]) for p in service["spec"]["ports"]} == {
        ("http", HTTP_PORT), ("grpc", GRPC_PORT), ("metrics", METRICS_PORT)}
    assert headless["spec"]["clusterIP"] == "None"
    assert "metrics" not in {p["name"] for p in headless["spec"]["ports"]}
    assert "swinv2-tiny-headless:8001" in headless["metadata"]["annotations"]["swinv2-serve/why-headless"]
    for svc in (service, headless):
        assert svc["spec"]["selector"].items() <= pod_labels.items()

    pdb = one(docs, "PodDisruptionBudget")
    assert pdb["apiVersion"] == "policy/v1" and pdb["spec"]["maxUnavailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()

    hpa = one(docs, "HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                             "name": deployment["metadata"]["name"]}
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 6)
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "Pods" and metric["pods"]["metric"]["name"] == QUEUE_METRIC == \
        "triton_queue_time_per_request_us"
    assert metric["pods"]["target"] == {"type": "AverageValue", "averageValue": "10000"}
    assert hpa["spec"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"] == 300

    monitor = one(docs, "ServiceMonitor")
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics" and monitor["spec"]["endpoints"][0]["path"] == \
        METRICS_PATH

    # the rule that makes the metric: Triton's chart's, per pod, in prometheus-adapter's schema
    rules = yaml.safe_load((layouts["pvc"] / "monitoring" / "prometheus-adapter-rules.yaml").read_text())
    (rule,) = rules["rules"]
    assert set(rule) == {"seriesQuery", "resources", "name", "metricsQuery"}
    assert rule["seriesQuery"] == 'nv_inference_queue_duration_us{namespace="ml",pod!=""}'
    assert rule["resources"] == {"overrides": {"namespace": {"resource": "namespace"}, "pod": {"resource": "pod"}}}
    assert rule["name"] == {"matches": "nv_inference_queue_duration_us", "as": QUEUE_METRIC}
    assert rule["metricsQuery"] == (
        "avg(delta(nv_inference_queue_duration_us{<<.LabelMatchers>>}[30s])"
        "/(1+delta(nv_inference_request_success{<<.LabelMatchers>>}[30s]))) by (<<.GroupBy>>)")


@needs_kubectl
def test_cpu_overlay(layouts) -> None:
    for variant in ("pvc", "s3"):
        deployment = one(rendered(layouts, variant, "overlays/cpu"), "Deployment")
        pod, c = deployment["spec"]["template"]["spec"], container(deployment)
        assert "nvidia.com/gpu" not in c["resources"].get("limits", {}) and "tolerations" not in pod
        startup_s = c["startupProbe"]["failureThreshold"] * c["startupProbe"]["periodSeconds"]
        assert startup_s == 5 * 60
        assert deployment["metadata"]["annotations"]["swinv2-serve/accelerator"] == "cpu"

    # pvc layout, cpu overlay: its own repository (s3) replaces the claim, the entrypoint and its env
    deployment = one(rendered(layouts, "pvc", "overlays/cpu"), "Deployment")
    pod, c = deployment["spec"]["template"]["spec"], container(deployment)
    assert c["command"] == ["tritonserver"] and "--model-repository=s3://bucket/cpu-repo" in c["args"]
    assert c["envFrom"] == [{"secretRef": {"name": "s3-credentials"}}] and not c.get("env")
    assert [v["name"] for v in pod["volumes"]] == ["dshm"]
    assert deployment["metadata"]["annotations"]["swinv2-serve/model-repository"] == "s3://bucket/cpu-repo"

    # s3 layout, cpu overlay: gs repository, key file from the secret
    c = container(one(rendered(layouts, "s3", "overlays/cpu"), "Deployment"))
    env = {e["name"]: e["value"] for e in c["env"]}
    assert env["GOOGLE_APPLICATION_CREDENTIALS"].endswith("/key.json") and "--model-repository=gs://bucket/cpu" in \
        c["args"]


@needs_kubectl
def test_object_storage_deployment(layouts) -> None:
    deployment = one(rendered(layouts, "s3", "overlays/gpu"), "Deployment", "swinv2")
    pod, c = deployment["spec"]["template"]["spec"], container(deployment)
    assert c["command"] == ["tritonserver"] and c["args"][0] == "--model-repository=s3://bucket/triton"
    assert c["envFrom"] == [{"secretRef": {"name": "s3-credentials"}}]
    assert pod["serviceAccountName"] == "triton-reader"
    assert "lifecycle" not in c and pod["terminationGracePeriodSeconds"] > 30  # --drain-seconds 0: no preStop
    text = (layouts["s3"] / "base" / "deployment.yaml").read_text()
    assert "must already be in the repository" in text  # the engines note, for object storage


@needs_kubectl
def test_kserve(layouts) -> None:
    docs = rendered(layouts, "pvc", "kserve")
    isvc, runtime = one(docs, "InferenceService", "swinv2-tiny"), one(docs, "ServingRuntime", "swinv2-tiny-triton")
    model = isvc["spec"]["predictor"]["model"]
    assert model["modelFormat"]["name"] == "triton" and model["runtime"] == runtime["metadata"]["name"]
    assert model["protocolVersion"] == "v2" and model["storageUri"] == "pvc://models/swinv2/repo"
    assert model["resources"]["limits"]["nvidia.com/gpu"] == 2
    annotations = isvc["metadata"]["annotations"]
    assert annotations["serving.kserve.io/deploymentMode"] == "RawDeployment"
    assert annotations["serving.kserve.io/autoscalerClass"] == "external"
    assert annotations["storage.kserve.io/readonly"] == "false"  # the entrypoint builds engines into the claim
    assert annotations["swinv2-serve/served-models"] == "swinv2_tiny,swinv2_tiny_preprocess,swinv2_tiny_image"

    spec = runtime["spec"]
    assert spec["supportedModelFormats"] == [{"autoSelect": False, "name": "triton", "version": "2"}]
    assert spec["protocolVersions"] == ["v2", "grpc-v2"]
    assert spec["annotations"] == {"prometheus.kserve.io/port": "8002", "prometheus.kserve.io/path": "/metrics"}
    (c,) = spec["containers"]
    assert c["name"] == "kserve-container" and c["image"] == VARIANTS["pvc"]["image"]
    assert {"--http-port=8080", "--grpc-port=9000", "--strict-readiness=true"} <= set(c["args"])
    assert {"name": "MODEL_REPOSITORY", "value": "/mnt/models"} in c["env"] and c["command"] == [ENTRYPOINT]
    assert [p["containerPort"] for p in c["ports"]] == [8080, 9000, METRICS_PORT]  # HTTP first: protocol v2
    assert c["securityContext"]["runAsUser"] == 1000 and c["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert c["readinessProbe"]["httpGet"] == {"path": READY_PATH, "port": 8080}
    assert c["startupProbe"]["failureThreshold"] * c["startupProbe"]["periodSeconds"] == 30 * 60

    hpa = one(docs, "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"]["name"] == "swinv2-tiny-predictor"  # KServe's raw Deployment
    assert one(docs, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"] == {
        "serving.kserve.io/inferenceservice": "swinv2-tiny"}

    # grpc-v2: gRPC port first (KServe's raw Service maps port 80 to it); object storage: no read-write mount
    docs = rendered(layouts, "s3", "kserve")
    isvc, runtime = one(docs, "InferenceService"), one(docs, "ServingRuntime")
    assert isvc["spec"]["predictor"]["model"]["protocolVersion"] == "grpc-v2"
    assert runtime["spec"]["containers"][0]["ports"][0] == {"name": "h2c", "containerPort": 9000, "protocol": "TCP"}
    assert "storage.kserve.io/readonly" not in isvc["metadata"]["annotations"]
    assert isvc["spec"]["predictor"]["serviceAccountName"] == "triton-reader"

    # Azure: Triton's as://ACCOUNT/CONTAINER/PATH is https://ACCOUNT.blob.core.windows.net/CONTAINER/PATH to KServe
    isvc = one(rendered(layouts, "azure", "kserve"), "InferenceService")
    assert isvc["spec"]["predictor"]["model"]["storageUri"] == "https://account.blob.core.windows.net/container/repo"
    deployment = one(rendered(layouts, "azure", "overlays/gpu"), "Deployment")
    assert "--model-repository=as://account/container/repo" in container(deployment)["args"]


# -- options are checked ----------------------------------------------------------------------------------------
BASE = dict(name="swinv2", model_repository="pvc://models")


@pytest.mark.parametrize(("changes", "message"), [
    (dict(app_name="Bad_Name"), "DNS-1035"),
    (dict(name="swinv2 tiny"), "model name"),
    (dict(name="9lives"), "set --app-name"),
    (dict(namespace="ML"), "DNS-1123 label"),
    (dict(replicas=0), "replicas must be an integer >= 1"),
    (dict(replicas=3, max_replicas=2), "max replicas"),
    (dict(gpus=-1), "gpus must be"),
    (dict(gpus=0), "cpu overlay"),
    (dict(model_repository="/srv/models"), "unknown URI scheme"),
    (dict(model_repository="http://host/models"), "unknown URI scheme"),
    (dict(model_repository="s3://"), "names no bucket"),
    (dict(model_repository="pvc://Models"), "PersistentVolumeClaim"),
    (dict(model_repository="pvc://models/../etc"), "sub-path"),
    (dict(cpu_model_repository="ftp://x/y"), "unknown URI scheme"),
    (dict(cpu="four"), "quantity"),
    (dict(cpu="4", cpu_limit="2"), "below the request"),
    (dict(memory="2Gi", shm_size="2Gi"), "/dev/shm"),
    (dict(image="swinv2-serve"), "no tag"),
    (dict(image="swinv2 serve:1"), "image reference"),
    (dict(queue_target_us=0), "queue target"),
    (dict(kserve_protocol="v1"), "KServe protocol"),
    (dict(storage_secret="creds"), "needs none"),
    (dict(monitor_labels=(("release", "bad value"),)), "label value"),
    (dict(model_repository="s3://minio:9000/bucket", kserve=True), "storage initializer"),
])
def test_bad_options(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(KubeError, match=re.escape(message)) as info:
        KubeOptions(**{**BASE, **changes})
    assert isinstance(info.value, SwinV2ServeError)


def test_long_names_are_refused(tmp_path: Path) -> None:
    opts = KubeOptions(name="a" * 60, model_repository="pvc://models", kserve=True)
    with pytest.raises(KubeError, match="Service name"):
        write_manifests(opts, tmp_path)
    assert not any(tmp_path.iterdir())  # checked before anything is written


def test_accepted_edge_cases() -> None:
    assert KubeOptions(**BASE, image="registry:5000/team/swinv2-serve@sha256:" + "0" * 64).image.endswith("0")
    assert KubeOptions(**BASE, cpu="500m", cpu_limit="1", memory="1.5Gi", shm_size="512Mi").limits["cpu"] == "1"
    assert KubeOptions(name="swinv2_base.v2", model_repository="gs://b/p").app == "swinv2-base-v2"


# -- the CLI subcommand ---------------------------------------------------------------------------------------------
def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="swinv2-serve kube")
    kube_cmd.add_arguments(parser)
    return parser


@needs_kubectl
def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "deploy"
    args = _parser().parse_args([
        "--name", "swinv2", "--model-repository", "pvc://models/swinv2", "--output", str(out), "--gpus", "1",
        "--replicas", "1", "--max-replicas", "3", "--namespace", "inference", "--kserve",
        "--monitor-label", "release=prom", "--cpu", "2", "--memory", "8Gi"])
    assert kube_cmd.run(args) == 0
    printed = capsys.readouterr().out
    assert f"kubectl apply -k {out}/overlays/gpu" in printed and f"kubectl kustomize {out}/overlays/gpu" in printed
    for rel in ("base/kustomization.yaml", "overlays/gpu/kustomization.yaml", "overlays/cpu/kustomization.yaml",
                "kserve/kustomization.yaml", "kserve/inferenceservice.yaml", "kserve/servingruntime.yaml",
                "monitoring/prometheus-adapter-rules.yaml", "README.md"):
        assert (out / rel).is_file() and str(out / rel) in printed
    hpa = one(list(_kustomize(out / "overlays" / "gpu")), "HorizontalPodAutoscaler")
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (1, 3)
    assert hpa["metadata"]["namespace"] == "inference"


def test_cli_bad_arguments(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    common = ["--model-repository", "pvc://models", "--output", str(tmp_path / "x")]
    with pytest.raises(KubeError, match="max replicas"):
        kube_cmd.run(_parser().parse_args([*common, "--replicas", "3", "--max-replicas", "2"]))
    with pytest.raises(KubeError, match="unknown URI scheme"):
        kube_cmd.run(_parser().parse_args(["--model-repository", "./repo", "--output", str(tmp_path / "x")]))
    assert not (tmp_path / "x").exists()
    for bad in (["--kserve-protocol", "v1"], ["--monitor-label", "novalue"], ["--gpus", "two"]):
        with pytest.raises(SystemExit) as info:
            _parser().parse_args([*common, *bad])
        assert info.value.code == 2
    capsys.readouterr()


def test_cli_dispatch(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Through cli.main: an error is one line and exit status 2."""
    from swinv2_serve import cli

    assert cli.main(["kube", "--model-repository", "nfs://server/models", "--output", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("swinv2-serve kube: error: model repository 'nfs://server/models': unknown URI scheme")
    assert cli.main(["kube", "--model-repository", "gs://bucket/repo", "--output", str(tmp_path / "ok")]) == 0
    assert (tmp_path / "ok" / "overlays" / "gpu" / "kustomization.yaml").is_file()


# -- agreement with the rest of the project -------------------------------------------------------------------------
def test_image_facts_match_the_dockerfile() -> None:
    dockerfile = (REPO / "Dockerfile").read_text()
    assert re.search(rf"^ARG NGC_RELEASE={re.escape(NGC_RELEASE)}$", dockerfile, re.M), "NGC_RELEASE drifted"
    assert re.search(rf"^COPY docker/entrypoint.sh {re.escape(ENTRYPOINT)}$", dockerfile, re.M)
    assert re.search(rf"^ENTRYPOINT \[\"{re.escape(ENTRYPOINT)}\"\]$", dockerfile, re.M)
    assert re.search(r'^EXPOSE 8000 8001 8002$', dockerfile, re.M)
    entrypoint = (REPO / "docker" / "entrypoint.sh").read_text()
    assert "${REPO}/.timing_cache" in entrypoint and 'REPO="${MODEL_REPOSITORY:-/models}"' in entrypoint
    from swinv2_serve import _version  # the one place the version is written

    assert f"swinv2-serve:{_version.__version__}" == DEFAULT_IMAGE  # pinned to the package that wrote it


def test_kube_imports_only_what_its_layer_may() -> None:
    """stdlib, yaml, and of ours only contract and errors (import-linter checks the same in CI)."""
    allowed_ours = {"swinv2_serve.contract", "swinv2_serve.errors", "swinv2_serve._version"}
    for path in (REPO / "swinv2_serve" / "kube").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or ""]
            elif isinstance(node, ast.ImportFrom):  # relative: `.x` stays in kube, `..x` must be allowed
                names = [] if node.level == 1 else [f"swinv2_serve.{node.module}"]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                ok = top in sys.stdlib_module_names or top == "yaml" or name in allowed_ours or top == "__future__"
                assert ok, f"{path.name} imports {name}"
