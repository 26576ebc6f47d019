"""A TensorRT engine's sidecar (``<plan>.json``): what the plan is bound to and how to run it.

An engine runs only on the TensorRT version and GPU model that built it (unless built version- or
hardware-compatible), so the sidecar records them with the batch profile, the I/O tensors, the build flags
and the ONNX's export metadata. The builder writes it, and the runtime and the Triton repository writer read
it through ``read_sidecar``, the only reader. Everything here is pure: no GPU needed.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..contract import ExportMetadata
from ..errors import SwinV2ServeError

SIDECAR_FORMAT = 1


class EngineCompatibilityError(SwinV2ServeError, RuntimeError):
    """An engine built for another TensorRT version or GPU."""


# -- batch profile -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class BatchProfile:
    """The optimisation profile's batch range: TensorRT tunes kernels for ``opt``, accepts min..max."""

    min: int
    opt: int
    max: int

    def shapes(self, chw: Sequence[int]) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
        """(min, opt, max) input shapes for ``profile.set_shape``."""
        chw = tuple(int(d) for d in chw)
        return (self.min, *chw), (self.opt, *chw), (self.max, *chw)


def default_opt_batch(min_batch: int, max_batch: int) -> int:
    """Half the max batch rounded down to a power of two (the size a dynamic batcher mostly forms)."""
    half = max(1, max_batch // 2)
    return max(min_batch, 1 << (half.bit_length() - 1))


def batch_profile(min_batch: int = 1, opt_batch: int | None = None, max_batch: int = 32) -> BatchProfile:
    """Validated batch profile: 1 <= min <= opt <= max."""
    for what, value in (("min batch", min_batch), ("max batch", max_batch), ("opt batch", opt_batch)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, np.integer))):
            raise SwinV2ServeError(f"{what} must be an integer, got {value!r}")
    if min_batch < 1:
        raise SwinV2ServeError(f"min batch must be >= 1, got {min_batch}")
    if max_batch < min_batch:
        raise SwinV2ServeError(f"max batch {max_batch} is smaller than min batch {min_batch}")
    opt = default_opt_batch(min_batch, max_batch) if opt_batch is None else opt_batch
    if not min_batch <= opt <= max_batch:
        raise SwinV2ServeError(f"opt batch {opt} must lie between min batch {min_batch} and max batch {max_batch}")
    return BatchProfile(int(min_batch), int(opt), int(max_batch))


# -- sidecar -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int, ...]  # -1 = dynamic (the batch axis)
    dtype: str  # numpy name: float32, float16

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TensorSpec:
        return cls(str(data["name"]), tuple(int(d) for d in data["shape"]), str(data["dtype"]))


@dataclass(frozen=True)
class EngineInfo:
    """Everything known about a built engine; ``<plan>.json`` is its JSON form."""

    plan: str
    tensorrt_version: str
    gpu_name: str
    compute_capability: tuple[int, int]
    precision: str
    batch_profile: BatchProfile
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    metadata: ExportMetadata
    flags: dict[str, Any] = field(default_factory=dict)
    onnx_sha256: str = ""
    build_seconds: float = 0.0
    verification: dict[str, Any] | None = None

    @property
    def version_compatible(self) -> bool:
        return bool(self.flags.get("version_compatible", False))

    @property
    def hardware_compatibility_level(self) -> str:
        return str(self.flags.get("hardware_compatibility_level", "NONE"))

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["format"] = SIDECAR_FORMAT
        out["metadata"] = self.metadata.to_dict()
        out["compute_capability"] = f"{self.compute_capability[0]}.{self.compute_capability[1]}"
        out["inputs"] = [{**asdict(t), "shape": list(t.shape)} for t in self.inputs]
        out["outputs"] = [{**asdict(t), "shape": list(t.shape)} for t in self.outputs]
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EngineInfo:
        fmt = int(data.get("format", SIDECAR_FORMAT))
        if fmt > SIDECAR_FORMAT:
            raise SwinV2ServeError(f"engine sidecar format {fmt} is newer than this swinv2-serve understands")
        bp = data["batch_profile"]
        return cls(
            plan=str(data["plan"]),
            tensorrt_version=str(data["tensorrt_version"]),
            gpu_name=str(data["gpu_name"]),
            compute_capability=parse_compute_capability(data["compute_capability"]),
            precision=str(data["precision"]),
            batch_profile=BatchProfile(int(bp["min"]), int(bp["opt"]), int(bp["max"])),
            inputs=tuple(TensorSpec.from_dict(t) for t in data["inputs"]),
            outputs=tuple(TensorSpec.from_dict(t) for t in data["outputs"]),
            flags=dict(data.get("flags", {})),
            metadata=ExportMetadata.from_dict(data["metadata"], "engine sidecar"),
            onnx_sha256=str(data.get("onnx_sha256", "")),
            build_seconds=float(data.get("build_seconds", 0.0)),
            verification=data.get("verification"),
        )


def parse_compute_capability(value: str | Sequence[int]) -> tuple[int, int]:
    """"8.6", [8, 6] or (8, 6) -> (8, 6)."""
    parts = value.split(".") if isinstance(value, str) else list(value)
    if len(parts) != 2:
        raise SwinV2ServeError(f"compute capability must look like '8.6', got {value!r}")
    return (int(parts[0]), int(parts[1]))


def sidecar_path(plan_path: str | os.PathLike) -> Path:
    """``model.plan`` -> ``model.plan.json``."""
    plan_path = Path(plan_path)
    return plan_path.with_name(plan_path.name + ".json")


def write_sidecar(info: EngineInfo, plan_path: str | os.PathLike) -> Path:
    path = sidecar_path(plan_path)
    atomic_write(path, (json.dumps(info.to_dict(), indent=2, sort_keys=True) + "\n").encode())
    return path


def read_sidecar(plan_path: str | os.PathLike) -> EngineInfo:
    path = sidecar_path(plan_path)
    if not path.is_file():
        raise SwinV2ServeError(
            f"{path} not found: a plan needs the sidecar written beside it by `swinv2-serve export --format trt`"
        )
    try:
        return EngineInfo.from_dict(json.loads(path.read_text()))
    except (KeyError, TypeError, ValueError) as exc:
        raise SwinV2ServeError(f"{path}: not a valid engine sidecar ({exc})") from exc


def atomic_write(path: Path, data: bytes | memoryview) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# -- engine / machine compatibility ------------------------------------------------------------------
def version_tuple(version: str) -> tuple[int, ...]:
    out = []
    for part in version.split("."):
        digits = "".join(ch for ch in part if ch.isdigit())
        if not digits:
            break
        out.append(int(digits))
    return tuple(out)


def check_engine_compatibility(
    sidecar: EngineInfo | Mapping[str, Any],
    trt_version: str,
    gpu_name: str,
    cc: str | Sequence[int],
    *,
    plan: str = "this engine",
) -> None:
    """Raise ``EngineCompatibilityError`` unless this TensorRT version and GPU may run the engine.

    A plain engine runs only on the TensorRT version and GPU model that built it. A version-compatible
    one also runs on later TensorRT releases of the same major version; a hardware-compatible one
    (AMPERE_PLUS) on any GPU of compute capability 8.0 or newer, SAME_COMPUTE_CAPABILITY on any GPU
    of the same compute capability.
    """
    info = sidecar if isinstance(sidecar, EngineInfo) else EngineInfo.from_dict(sidecar)
    here_cc = parse_compute_capability(cc)
    built = f"TensorRT {info.tensorrt_version} on {info.gpu_name} (compute capability {_cc(info.compute_capability)})"
    here = f"TensorRT {trt_version} on {gpu_name} (compute capability {_cc(here_cc)})"
    problems = []

    built_v, here_v = version_tuple(info.tensorrt_version), version_tuple(trt_version)
    if info.version_compatible:
        if not built_v or not here_v or here_v[0] != built_v[0] or here_v < built_v:
            problems.append(
                f"a version-compatible engine runs on TensorRT {built_v[0] if built_v else '?'}.x from "
                f"{info.tensorrt_version} on, not on {trt_version}"
            )
    elif here_v != built_v:
        problems.append("TensorRT versions differ (rebuild, or build with --version-compatible)")

    level = info.hardware_compatibility_level.upper()
    if level == "AMPERE_PLUS":
        if here_cc < (8, 0):
            problems.append("a hardware-compatible (AMPERE_PLUS) engine needs compute capability 8.0 or newer")
    elif level == "SAME_COMPUTE_CAPABILITY":
        if here_cc != info.compute_capability:
            problems.append("compute capabilities differ")
    elif _norm_gpu(gpu_name) != _norm_gpu(info.gpu_name) or here_cc != info.compute_capability:
        problems.append("GPUs differ (rebuild on this GPU, or build with --hardware-compatible on Ampere or newer)")

    if problems:
        raise EngineCompatibilityError(
            f"{plan} was built with {built}; this is {here}: {'; '.join(problems)}. TensorRT engines are bound "
            "to the TensorRT version and GPU that built them: rebuild with `swinv2-serve export --format trt` here"
        )


def _cc(cc: tuple[int, int]) -> str:
    return f"{cc[0]}.{cc[1]}"


def _norm_gpu(name: str) -> str:
    return " ".join(name.lower().split())


