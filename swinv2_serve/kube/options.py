"""What `swinv2-serve kube` is asked for, checked before anything is generated or written."""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal
from functools import cached_property

from .._version import __version__
from ..contract import ServedNames, model_names
from ..errors import SwinV2ServeError

# The serving image is the one the repository's Dockerfile builds: NGC's tritonserver:<NGC_RELEASE>-py3 plus trtexec of
# the same release and our wheel. Its ENTRYPOINT builds missing TensorRT engines, then execs tritonserver.
NGC_RELEASE = "24.10"  # the Dockerfile's ARG NGC_RELEASE (a test keeps the two equal)
ENTRYPOINT = "/usr/local/bin/swinv2-serve-entrypoint"
RUN_AS_USER = 1000  # the NGC image's triton-server user, as in KServe's stock Triton runtime
OBJECT_STORES = ("s3", "gs", "as")  # Triton reads these itself (Amazon S3, Google Cloud Storage, Azure Storage)
SCHEMES = ("pvc", *OBJECT_STORES)
KSERVE_PROTOCOLS = ("v2", "grpc-v2")


DEFAULT_IMAGE = f"swinv2-serve:{__version__}"  # pinned: a floating tag lets replicas of one Deployment differ

_DNS1123_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_DNS1035_LABEL = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
_DNS1123_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_LABEL_NAME = re.compile(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]")
_MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
# Kubernetes' resource.Quantity grammar, without a sign
_QUANTITY = re.compile(r"(?P<num>[0-9]+(\.[0-9]*)?|\.[0-9]+)(?P<suffix>[KMGTPE]i|[numkMGTPE]|[eE][+-]?[0-9]+)?")
_SUFFIX = {"": 1, "n": Decimal("1e-9"), "u": Decimal("1e-6"), "m": Decimal("1e-3"), "k": 10**3, "M": 10**6,
           "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40,
           "Pi": 2**50, "Ei": 2**60}


class KubeError(SwinV2ServeError, ValueError):
    """Options that would produce manifests Kubernetes (or KServe, or Triton) rejects."""


def check_dns1123_label(value: str, what: str) -> str:
    if len(value) > 63 or not _DNS1123_LABEL.fullmatch(value):
        raise KubeError(f"{what} {value!r} is not a DNS-1123 label (lower-case letters, digits and '-', starting "
                        "and ending with a letter or digit, at most 63 characters)")
    return value


def check_dns1035_label(value: str, what: str) -> str:
    if len(value) > 63 or not _DNS1035_LABEL.fullmatch(value):
        raise KubeError(f"{what} {value!r} is not a DNS-1035 label (as a DNS-1123 label, but starting with a "
                        "letter; at most 63 characters)")
    return value


def check_dns1123_subdomain(value: str, what: str) -> str:
    if len(value) > 253 or not _DNS1123_SUBDOMAIN.fullmatch(value):
        raise KubeError(f"{what} {value!r} is not a DNS-1123 subdomain (lower-case letters, digits, '-' and '.')")
    return value


def check_label(key: str, value: str) -> tuple[str, str]:
    prefix, _, name = key.rpartition("/")
    if (prefix and len(prefix) > 253) or (prefix and not _DNS1123_SUBDOMAIN.fullmatch(prefix)) \
            or len(name) > 63 or not _LABEL_NAME.fullmatch(name):
        raise KubeError(f"label key {key!r} is not a Kubernetes label key ([PREFIX/]NAME)")
    if len(value) > 63 or (value and not _LABEL_NAME.fullmatch(value)):
        raise KubeError(f"label value {value!r} (for {key}) is not a Kubernetes label value")
    return key, value


def parse_quantity(value: str, what: str) -> Decimal:
    """A Kubernetes quantity (``500m``, ``4``, ``16Gi``) as a number, so requests and limits compare."""
    match = _QUANTITY.fullmatch(str(value))
    if not match:
        raise KubeError(f"{what} {value!r} is not a Kubernetes quantity (e.g. 500m, 4, 16Gi)")
    suffix = match["suffix"] or ""
    scale = Decimal(10) ** int(suffix[1:]) if suffix[:1] in ("e", "E") else Decimal(_SUFFIX[suffix])
    amount = Decimal(match["num"]) * scale
    if amount <= 0:
        raise KubeError(f"{what} must be more than zero, got {value!r}")
    return amount


@dataclass(frozen=True)
class Storage:
    """Where the Triton model repository lives: a PersistentVolumeClaim or an object-storage URI."""

    uri: str
    scheme: str
    claim: str = ""  # pvc:// only
    subpath: str = ""  # pvc:// only: a folder inside the volume

    @property
    def is_pvc(self) -> bool:
        return self.scheme == "pvc"


def parse_storage(uri: str) -> Storage:
    """``pvc://CLAIM[/SUBPATH]``, ``s3://...``, ``gs://...`` or ``as://...``; anything else is an error."""
    scheme, sep, rest = uri.partition("://")
    if not sep or scheme not in SCHEMES:
        raise KubeError(f"model repository {uri!r}: unknown URI scheme; one of "
                        f"{', '.join(s + '://' for s in SCHEMES)} (a local folder: copy it to a volume and use "
                        "pvc://CLAIM/SUBPATH)")
    if not rest.strip("/"):
        raise KubeError(f"model repository {uri!r} names no {'claim' if scheme == 'pvc' else 'bucket'}")
    if scheme != "pvc":
        return Storage(uri=uri, scheme=scheme)
    claim, _, subpath = rest.partition("/")
    check_dns1123_subdomain(claim, "PersistentVolumeClaim name")
    subpath = subpath.strip("/")
    if subpath and any(part in ("", ".", "..") for part in subpath.split("/")):
        raise KubeError(f"model repository {uri!r}: the sub-path must be a plain relative folder (no '.', '..', '//')")
    return Storage(uri=uri, scheme=scheme, claim=claim, subpath=subpath)


@dataclass(frozen=True)
class KubeOptions:
    """Everything the manifests depend on; ``check()`` runs on construction.

    ``name`` is the served model name (as in the repository: NAME, NAME_preprocess, NAME_image); ``app_name`` the
    Kubernetes name of every object, derived from it when not given (lower-cased, ``_``/``.`` -> ``-``).
    Limits default to the requests (Guaranteed QoS: a latency server should not be throttled or evicted first).
    """

    name: str
    model_repository: str
    app_name: str | None = None
    namespace: str | None = None
    image: str = DEFAULT_IMAGE
    image_pull_secret: str | None = None
    gpus: int = 1
    gpu_product: str | None = None  # node label nvidia.com/gpu.product (GPU feature discovery): one GPU kind
    replicas: int = 1
    max_replicas: int = 4
    cpu: str = "4"
    cpu_limit: str | None = None
    memory: str = "16Gi"
    memory_limit: str | None = None
    shm_size: str = "1Gi"
    queue_target_us: int = 10_000
    drain_seconds: int = 10
    exit_timeout_seconds: int = 30
    gpu_startup_minutes: int = 30
    cpu_startup_minutes: int = 5
    cpu_model_repository: str | None = None
    storage_secret: str | None = None
    service_account: str | None = None
    service_monitor: bool = True
    monitor_labels: tuple[tuple[str, str], ...] = ()
    kserve: bool = False
    kserve_protocol: str = "v2"

    def __post_init__(self) -> None:
        self.check()

    # -- derived ---------------------------------------------------------------------------------------------
    @property
    def app(self) -> str:
        return self.app_name or self.name.lower().replace("_", "-").replace(".", "-")

    @property
    def served(self) -> ServedNames:
        return model_names(self.name)

    @cached_property
    def storage(self) -> Storage:
        return parse_storage(self.model_repository)

    @cached_property
    def cpu_storage(self) -> Storage:
        return parse_storage(self.cpu_model_repository or self.model_repository)

    @property
    def limits(self) -> dict[str, str]:
        return {"cpu": self.cpu_limit or self.cpu, "memory": self.memory_limit or self.memory}

    @property
    def requests(self) -> dict[str, str]:
        return {"cpu": self.cpu, "memory": self.memory}

    @property
    def grace_seconds(self) -> int:
        """preStop drain, then Triton's own exit timeout for in-flight requests, then a margin before SIGKILL."""
        return self.drain_seconds + self.exit_timeout_seconds + 15

    # -- validation ------------------------------------------------------------------------------------------
    def check(self) -> None:
        if not _MODEL_NAME.fullmatch(self.name):
            raise KubeError(f"model name {self.name!r}: letters, digits, '_', '.', '-' only (as in the repository)")
        try:
            check_dns1035_label(self.app, "Kubernetes name")
        except KubeError as exc:
            if self.app_name:
                raise
            raise KubeError(f"{exc}; it comes from --name {self.name!r}: set --app-name") from None
        if self.namespace is not None:
            check_dns1123_label(self.namespace, "namespace")
        for value, what in ((self.image_pull_secret, "image pull secret"), (self.storage_secret, "storage secret"),
                            (self.service_account, "service account")):
            if value is not None:
                check_dns1123_subdomain(value, what)
        self._check_image()
        for value, what, low in ((self.gpus, "gpus", 1), (self.replicas, "replicas", 1),
                                 (self.queue_target_us, "queue target (us)", 1), (self.drain_seconds, "drain", 0),
                                 (self.exit_timeout_seconds, "exit timeout", 1),
                                 (self.gpu_startup_minutes, "gpu startup minutes", 1),
                                 (self.cpu_startup_minutes, "cpu startup minutes", 1)):
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                hint = " (the cpu overlay is the one without GPUs)" if what == "gpus" else ""
                raise KubeError(f"{what} must be an integer >= {low}, got {value!r}{hint}")
        if not isinstance(self.max_replicas, int) or self.max_replicas < self.replicas:
            raise KubeError(f"max replicas ({self.max_replicas!r}) must be >= replicas ({self.replicas})")
        for kind in ("cpu", "memory"):
            if parse_quantity(self.limits[kind], f"{kind} limit") < parse_quantity(self.requests[kind], kind):
                raise KubeError(f"{kind} limit {self.limits[kind]} is below the request {self.requests[kind]}")
        if parse_quantity(self.shm_size, "shm size") >= parse_quantity(self.limits["memory"], "memory limit"):
            raise KubeError(f"/dev/shm ({self.shm_size}) is memory-backed and counts against the memory limit "
                            f"({self.limits['memory']}): make it smaller or raise --memory")
        if self.gpu_product is not None:
            check_label("nvidia.com/gpu.product", self.gpu_product)
        for key, value in self.monitor_labels:
            check_label(key, value)
        if self.kserve_protocol not in KSERVE_PROTOCOLS:
            raise KubeError(f"KServe protocol {self.kserve_protocol!r}: one of {', '.join(KSERVE_PROTOCOLS)}")
        storage, cpu_storage = self.storage, self.cpu_storage  # parsed now: a bad URI fails before anything is written
        if self.storage_secret and storage.is_pvc and cpu_storage.is_pvc:
            raise KubeError("--storage-secret holds object-storage credentials; a pvc:// repository needs none")
        if self.kserve and storage.scheme == "s3" and ":" in storage.uri[len("s3://"):].split("/", 1)[0]:
            raise KubeError("KServe's storage initializer reads s3://BUCKET/PATH; give the S3 endpoint in the "
                            "storage secret or service account annotations, not in the URI")

    def _check_image(self) -> None:
        image = self.image
        if not image or any(c.isspace() for c in image):
            raise KubeError(f"image {image!r} is not an image reference")
        last = image.rsplit("/", 1)[-1]
        if "@" not in image and ":" not in last:
            raise KubeError(f"image {image!r} has no tag: pin one (e.g. {DEFAULT_IMAGE}) so every replica runs the "
                            "same build")
