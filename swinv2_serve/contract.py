"""The vocabulary every stage shares: tensor and model names, backends, precisions, and the export metadata.

This module sits at the bottom of the package and imports nothing of ours but ``errors``. Everything an
exported model says about itself (resolution, windows, classes, labels, preprocessing) travels as one
``ExportMetadata``; ``to_json`` is its only writer and ``from_json`` its only reader, whether the JSON sits
in an ONNX file's ``metadata_props``, an OpenVINO IR's ``rt_info``, a TensorRT plan's sidecar, a Triton
config parameter or one of our checkpoints.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from .errors import SwinV2ServeError

# -- tensors and served models ------------------------------------------------------------------------------
INPUT_NAME = "input"  # float32 [B, 3, H, W]
OUTPUT_NAMES = ("logits", "probs")  # float32 [B, C] each
IMAGE_INPUT = "image"  # BYTES [B, 1]: encoded JPEG/PNG for NAME_image
METADATA_KEY = "swinv2_serve"  # ONNX metadata_props key, IR rt_info key, Triton config parameter
LABELS_FILE = "labels.txt"  # beside a Triton config; one class name per line
PREPROCESS_SUFFIX = "_preprocess"
ENSEMBLE_SUFFIX = "_image"

# Triton's default ports and health endpoints (the embedded server, the container and the manifests agree)
HTTP_PORT, GRPC_PORT, METRICS_PORT = 8000, 8001, 8002
LIVE_PATH, READY_PATH, METRICS_PATH = "/v2/health/live", "/v2/health/ready", "/metrics"


class ServedNames(NamedTuple):
    """The three models one SwinV2 is served as."""

    tensor: str  # NAME: input FP32 [3, H, W] -> logits, probs
    preprocess: str  # NAME_preprocess: image BYTES [1] -> input
    ensemble: str  # NAME_image: image -> NAME_preprocess -> NAME


def model_names(name: str) -> ServedNames:
    """(tensor model, preprocessing model, ensemble) names for NAME (a trailing ``_image`` is dropped)."""
    base = name.removesuffix(ENSEMBLE_SUFFIX)
    return ServedNames(base, f"{base}{PREPROCESS_SUFFIX}", f"{base}{ENSEMBLE_SUFFIX}")


# -- backends and precisions ---------------------------------------------------------------------------------
PRECISIONS = ("fp32", "fp16", "bf16", "int8")
RUNTIME_BACKENDS = ("torch", "onnxruntime", "openvino", "tensorrt")
# what each runtime backend runs on our code path: torch through autocast, ONNX Runtime the fp32 export
# (fp16 exports are for GPUs), OpenVINO fp32/bf16 compile hints or an int8 IR, TensorRT fp32/fp16 engines
BACKEND_PRECISIONS: dict[str, tuple[str, ...]] = {
    "torch": ("fp32", "fp16", "bf16"),
    "onnxruntime": ("fp32",),
    "openvino": ("fp32", "bf16", "int8"),
    "tensorrt": ("fp32", "fp16"),
}


def check_precision(precision: str, backend: str | None = None) -> str:
    """``precision`` if it is one of ours (and ``backend`` runs it), else an error that lists the choices."""
    if precision not in PRECISIONS:
        raise SwinV2ServeError(f"unknown precision {precision!r}; one of {', '.join(PRECISIONS)}")
    if backend is not None:
        supported = BACKEND_PRECISIONS.get(backend)
        if supported is None:
            raise SwinV2ServeError(f"unknown backend {backend!r}; one of {', '.join(RUNTIME_BACKENDS)}")
        if precision not in supported:
            raise SwinV2ServeError(f"{backend} runs {' / '.join(supported)}, not {precision}")
    return precision


# -- export metadata -----------------------------------------------------------------------------------------
METADATA_FORMAT = 1


class MetadataError(SwinV2ServeError, ValueError):
    """Export metadata that is missing, malformed, or written by a newer swinv2-serve."""


def _ints(value: Any) -> tuple[int, ...]:
    return tuple(int(v) for v in value)


def _floats(value: Any) -> tuple[float, ...]:
    return tuple(float(v) for v in value)


@dataclass(frozen=True)
class ExportMetadata:
    """What an exported SwinV2 says about itself; ``SwinV2Config.metadata()`` builds it.

    ``window_sizes`` are the windows each stage really uses (after shrinking to the feature map) and
    ``pretrained_window_sizes`` the CPB normaliser per stage; ``config`` is the full ``SwinV2Config`` as a
    dict, so a runtime can rebuild the model's geometry. ``opset`` is None for a model that was never
    exported (a torch runtime).
    """

    model: str
    img_size: tuple[int, int]
    window_sizes: tuple[int, ...]
    pretrained_window_sizes: tuple[int, ...]
    num_classes: int
    labels: tuple[str, ...] | None
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str
    crop_pct: float
    fp16: bool
    opset: int | None
    config: Mapping[str, Any]
    swinv2_serve_version: str
    input: str = INPUT_NAME
    outputs: tuple[str, ...] = OUTPUT_NAMES
    format: int = METADATA_FORMAT

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "img_size", _ints(self.img_size))
        set_(self, "window_sizes", _ints(self.window_sizes))
        set_(self, "pretrained_window_sizes", _ints(self.pretrained_window_sizes))
        set_(self, "mean", _floats(self.mean))
        set_(self, "std", _floats(self.std))
        set_(self, "outputs", tuple(str(o) for o in self.outputs))
        if self.labels is not None:
            set_(self, "labels", tuple(str(s) for s in self.labels))
        if len(self.img_size) != 2 or len(self.mean) != 3 or len(self.std) != 3:
            raise MetadataError(f"img_size needs (H, W) and mean/std three values, got {self.img_size}, "
                                f"{self.mean}, {self.std}")
        if self.num_classes < 0:  # 0: a headless encoder (SimMIM pretraining checkpoints)
            raise MetadataError(f"num_classes must be >= 0, got {self.num_classes}")

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """[3, H, W]: one image, without the batch axis."""
        return (3, *self.img_size)

    def replace(self, **changes: Any) -> ExportMetadata:
        return dataclasses.replace(self, **changes)

    def with_labels(self, labels: Sequence[str] | None) -> ExportMetadata:
        return self.replace(labels=None if labels is None else tuple(labels))

    # the one writer and the one reader
    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["config"] = dict(self.config)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "metadata") -> ExportMetadata:
        if not isinstance(data, Mapping):
            raise MetadataError(f"{source}: '{METADATA_KEY}' metadata must be a JSON object, got {type(data).__name__}")
        fmt = data.get("format", METADATA_FORMAT)  # files written before the field existed are format 1
        if not isinstance(fmt, int) or fmt > METADATA_FORMAT:
            raise MetadataError(f"{source}: metadata format {fmt!r} is newer than this swinv2-serve reads "
                                f"({METADATA_FORMAT}); upgrade swinv2-serve")
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - set(fields))
        required = [name for name, f in fields.items() if f.default is dataclasses.MISSING]
        missing = [name for name in required if name not in data]
        if unknown or missing:
            what = "; ".join(part for part in (f"missing {missing}" if missing else "",
                                               f"unknown {unknown}" if unknown else "") if part)
            raise MetadataError(f"{source}: not swinv2-serve export metadata ({what}); re-export the model with "
                                "`swinv2-serve export`")
        try:
            return cls(**{k: v for k, v in data.items() if k in fields})
        except (TypeError, ValueError) as exc:
            raise MetadataError(f"{source}: malformed '{METADATA_KEY}' metadata ({exc})") from None

    @classmethod
    def from_json(cls, text: str | bytes, source: str = "metadata") -> ExportMetadata:
        try:
            data = json.loads(text)
        except (TypeError, ValueError) as exc:
            raise MetadataError(f"{source}: '{METADATA_KEY}' metadata is not JSON ({exc})") from None
        return cls.from_dict(data, source)


def read_onnx_metadata(path: str | os.PathLike) -> ExportMetadata:
    """The ``swinv2_serve`` metadata of an ONNX file (its graph and weights are not loaded)."""
    import onnx  # optional: the [onnx] extra

    model = onnx.load(os.fspath(path), load_external_data=False)
    for prop in model.metadata_props:
        if prop.key == METADATA_KEY:
            return ExportMetadata.from_json(prop.value, os.fspath(path))
    raise MetadataError(f"{path} has no '{METADATA_KEY}' metadata: export it with `swinv2-serve export`")
