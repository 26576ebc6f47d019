"""Write a Triton model repository for an exported SwinV2: tensor model, preprocessing model, ensemble.

Layout (dims exclude the batch axis; names match the embedded server, so one client fits both)::

    DIR/NAME/config.pbtxt            onnxruntime_onnx (GPU with the TensorRT accelerator, or CPU), tensorrt_plan,
                                     or backend "openvino" (CPU; 1/model.xml + model.bin, fp32/bf16/int8)
    DIR/NAME/labels.txt              one class name per line; `label_filename` on logits/probs
    DIR/NAME/1/model.onnx|model.plan
    DIR/NAME_preprocess/config.pbtxt python backend: image BYTES [1] -> input FP32 [3, H, W]
    DIR/NAME_preprocess/1/model.py   swinv2_serve.preprocess with the model's own metadata (config parameters)
    DIR/NAME_image/config.pbtxt      ensemble: image -> NAME_preprocess -> NAME -> logits, probs
    DIR/NAME_image/1/                (empty: ensembles need a version directory)

Configs are built as Triton's own ``ModelConfig`` protobuf messages, so every file parses under its schema.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .contract import (
    IMAGE_INPUT,
    INPUT_NAME,
    LABELS_FILE,
    METADATA_KEY,
    OUTPUT_NAMES,
    ExportMetadata,
    model_names,
    read_onnx_metadata,
)
from .engine_at_start import recipe_for, write_recipe
from .errors import BackendUnavailableError, SwinV2ServeError
from .labels import labels_for, labels_text
from .openvino_int8 import quantize_int8
from .runtime.engine import read_sidecar, sidecar_path
from .runtime.openvino_backend import OpenVINORuntime, convert_to_ir
from .verification import FIDELITY_THRESHOLD

if TYPE_CHECKING:
    from tritonclient.grpc import model_config_pb2 as mc

PREPROCESS_TEMPLATE = "triton_preprocess_model.py"  # in swinv2_serve/data, copied to NAME_preprocess/1/model.py


@dataclass(frozen=True)
class BatchingOptions:
    """Dynamic batching and instances shared by the repository writer and the embedded server."""

    max_batch: int = 32
    max_queue_delay_us: int = 2000
    preferred_batch_sizes: tuple[int, ...] | None = None  # None: powers of two up to max_batch, from 4
    instances: int = 1
    preprocess_instances: int = 2

    def __post_init__(self) -> None:
        if self.max_batch < 1:
            raise SwinV2ServeError(f"max batch must be >= 1, got {self.max_batch}")
        if self.instances < 1 or self.preprocess_instances < 1:
            raise SwinV2ServeError("instance counts must be >= 1")

    @property
    def preferred(self) -> list[int]:
        if self.preferred_batch_sizes is not None:
            return [b for b in self.preferred_batch_sizes if 1 <= b <= self.max_batch]
        sizes, b = [], 4
        while b <= self.max_batch:
            sizes.append(b)
            b *= 2
        return sizes


@dataclass
class Repository:
    """What ``write_repository`` produced."""

    root: Path
    name: str
    configs: dict[str, Path] = field(default_factory=dict)  # model name -> config.pbtxt
    max_batch: int = 0

    @property
    def models(self) -> list[str]:
        return list(self.configs)


# ---------------------------------------------------------------------------------------------- helpers


def metadata_parameter(metadata: ExportMetadata, labels: Sequence[str]) -> str:
    """The ``swinv2_serve`` config parameter: the export metadata with the served labels filled in."""
    return metadata.with_labels(labels).to_json()


def model_config_schema() -> Any:
    """Triton's own ``ModelConfig`` protobuf module (shipped with tritonclient: the [serve]/[client] extra)."""
    try:
        from tritonclient.grpc import model_config_pb2
    except ImportError as exc:
        raise BackendUnavailableError("writing Triton configs needs tritonclient: pip install "
                                      "'swinv2-serve[client]'") from exc
    return model_config_pb2


def set_parameter(config: mc.ModelConfig, key: str, value: str) -> None:
    config.parameters[key].string_value = value


def _fp32(name: str, dims: Sequence[int], label_filename: str | None = None) -> mc.ModelOutput:
    mc = model_config_schema()
    out = mc.ModelOutput(name=name, data_type=mc.TYPE_FP32, dims=list(dims))
    if label_filename:
        out.label_filename = label_filename
    return out


def add_outputs(config: mc.ModelConfig, num_classes: int, *, with_labels: bool = True) -> None:
    for name in OUTPUT_NAMES:
        config.output.append(_fp32(name, [num_classes], LABELS_FILE if with_labels else None))


def attach_labels(config: mc.ModelConfig) -> None:
    """Point every class-score output at labels.txt (Triton's classification extension needs it)."""
    for out in config.output:
        if out.name in OUTPUT_NAMES:
            out.label_filename = LABELS_FILE


def set_dynamic_batching(config: mc.ModelConfig, batching: BatchingOptions) -> None:
    config.dynamic_batching.max_queue_delay_microseconds = batching.max_queue_delay_us
    config.dynamic_batching.preferred_batch_size[:] = batching.preferred


def to_text(config: mc.ModelConfig) -> str:
    from google.protobuf import text_format  # protobuf comes with tritonclient

    return text_format.MessageToString(config)


def parse_config(text: str) -> mc.ModelConfig:
    """Parse config.pbtxt text under Triton's schema; a clear error on anything it rejects."""
    from google.protobuf import text_format

    try:
        return text_format.Parse(text, model_config_schema().ModelConfig())
    except text_format.ParseError as exc:
        raise SwinV2ServeError(f"invalid Triton model config: {exc}") from None


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


# ---------------------------------------------------------------------------------------------- configs


@dataclass(frozen=True)
class OpenVINOOptions:
    """Parameters of Triton's OpenVINO backend (its README: INFERENCE_NUM_THREADS, PERFORMANCE_HINT, HINT_BF16...)."""

    precision: str = "fp32"  # bf16 -> HINT_BF16 "YES"; int8 -> an NNCF-quantized IR (both fidelity-checked first)
    threads: int | None = None  # INFERENCE_NUM_THREADS
    hint: str = "latency"  # PERFORMANCE_HINT LATENCY | THROUGHPUT
    num_streams: str | None = None  # NUM_STREAMS (e.g. "1", "AUTO")
    calibration: str | os.PathLike | None = None  # int8: images to calibrate on and check with
    fidelity_images: str | os.PathLike | None = None  # bf16: check on these (default: seeded random inputs)
    fidelity: str = "refuse"  # bf16/int8 below the threshold: refuse, or "warn" and write it anyway
    fidelity_threshold: float = FIDELITY_THRESHOLD  # top-1 agreement with fp32
    overflow_fix: str = "auto"  # int8: NNCF's overflow fix (openvino_int8.OVERFLOW_FIX)
    max_accuracy_drop: float | None = None  # int8: refuse a larger top-1 loss against labelled calibration folders

    def parameters(self) -> dict[str, str]:
        params = {"PERFORMANCE_HINT": self.hint.upper()}
        if self.threads:
            params["INFERENCE_NUM_THREADS"] = str(self.threads)
        if self.num_streams:
            params["NUM_STREAMS"] = self.num_streams
        if self.precision == "bf16":
            params["HINT_BF16"] = "YES"
        return params


OPENVINO_MODEL_FILE = "model.xml"


def tensor_config(
    name: str,
    metadata: ExportMetadata,
    labels: Sequence[str],
    *,
    platform: str,
    kind: str,
    batching: BatchingOptions,
    openvino: OpenVINOOptions | None = None,
) -> mc.ModelConfig:
    """NAME: input FP32 [3, H, W] -> logits, probs [C] (onnxruntime_onnx, tensorrt_plan, or backend openvino)."""
    mc = model_config_schema()
    dims = list(metadata.input_shape)
    if platform == "openvino":
        config = mc.ModelConfig(name=name, backend="openvino", max_batch_size=batching.max_batch,
                                default_model_filename=OPENVINO_MODEL_FILE)
        for key, value in (openvino or OpenVINOOptions()).parameters().items():
            set_parameter(config, key, value)
    else:
        config = mc.ModelConfig(name=name, platform=platform, max_batch_size=batching.max_batch)
    config.input.append(mc.ModelInput(name=INPUT_NAME, data_type=mc.TYPE_FP32, dims=dims))
    add_outputs(config, metadata.num_classes)
    set_dynamic_batching(config, batching)
    device = mc.ModelInstanceGroup.KIND_GPU if kind == "gpu" else mc.ModelInstanceGroup.KIND_CPU
    config.instance_group.append(mc.ModelInstanceGroup(count=batching.instances, kind=device))
    if platform == "onnxruntime_onnx" and kind == "gpu":
        trt = config.optimization.execution_accelerators.gpu_execution_accelerator.add(name="tensorrt")
        # FP32: ONNX Runtime's TensorRT provider with FP16 on our fp32 ONNX would be free to run the normalisations,
        # scale, bias and softmax in FP16 as well (FP16 overflow in Swin attention is a reported failure); fp16
        # is the tensorrt_plan path, whose engines keep those FP32 islands (export --format trt, engine_at_start)
        trt.parameters["precision_mode"] = "FP32"
        trt.parameters["max_workspace_size_bytes"] = str(1 << 30)
        trt.parameters["trt_engine_cache_enable"] = "1"
        trt.parameters["trt_engine_cache_path"] = "/tmp/triton_trt_cache"
    for batch, how in ((1, "random_data"), (batching.max_batch, "zero_data")):
        warm = config.model_warmup.add(name=f"{how}_batch{batch}", batch_size=batch, count=1)
        warm_input = warm.inputs[INPUT_NAME]
        warm_input.data_type = mc.TYPE_FP32
        warm_input.dims[:] = dims
        setattr(warm_input, how, True)
    set_parameter(config, METADATA_KEY, metadata_parameter(metadata, labels))
    return config


def preprocess_config(
    name: str, metadata: ExportMetadata, labels: Sequence[str], *, batching: BatchingOptions
) -> mc.ModelConfig:
    """NAME_preprocess: image BYTES [1] -> input FP32 [3, H, W] on CPU (python backend).

    No dynamic batching on purpose: Triton then hands the model one request per execute, so a bad image
    fails its own request and nothing else.
    """
    mc = model_config_schema()
    config = mc.ModelConfig(name=name, backend="python", max_batch_size=batching.max_batch)
    config.input.append(mc.ModelInput(name=IMAGE_INPUT, data_type=mc.TYPE_STRING, dims=[1]))
    config.output.append(_fp32(INPUT_NAME, metadata.input_shape))
    config.instance_group.append(
        mc.ModelInstanceGroup(count=batching.preprocess_instances, kind=mc.ModelInstanceGroup.KIND_CPU)
    )
    set_parameter(config, METADATA_KEY, metadata_parameter(metadata, labels))
    return config


def ensemble_config(
    name: str, tensor_model: str, preprocess_model: str, metadata: ExportMetadata, labels: Sequence[str],
    *, max_batch: int,
) -> mc.ModelConfig:
    """NAME_image: image BYTES [1] -> NAME_preprocess -> NAME -> logits, probs [C] (labels attached)."""
    mc = model_config_schema()
    config = mc.ModelConfig(name=name, platform="ensemble", max_batch_size=max_batch)
    config.input.append(mc.ModelInput(name=IMAGE_INPUT, data_type=mc.TYPE_STRING, dims=[1]))
    add_outputs(config, metadata.num_classes)
    steps = config.ensemble_scheduling.step
    pre = steps.add(model_name=preprocess_model, model_version=-1)
    pre.input_map[IMAGE_INPUT] = IMAGE_INPUT
    pre.output_map[INPUT_NAME] = "preprocessed"
    net = steps.add(model_name=tensor_model, model_version=-1)
    net.input_map[INPUT_NAME] = "preprocessed"
    for out in OUTPUT_NAMES:
        net.output_map[out] = out
    set_parameter(config, METADATA_KEY, metadata_parameter(metadata, labels))
    return config


# ---------------------------------------------------------------------------------------------- writer


def write_repository(
    output: str | os.PathLike,
    name: str,
    *,
    onnx: str | os.PathLike | None = None,
    plan: str | os.PathLike | None = None,
    max_batch: int | None = None,
    instances: int = 1,
    kind: str = "gpu",
    labels: Sequence[str] | None = None,
    max_queue_delay_us: int = 2000,
    preprocess_instances: int = 2,
    overwrite: bool = True,
    engine_at_start: bool = False,
    engine_precision: str = "fp16",
    backend: str = "onnxruntime",
    openvino: OpenVINOOptions | None = None,
    preferred_batch_sizes: Sequence[int] | None = None,
    ir: str | os.PathLike | None = None,
) -> Repository:
    """Write NAME, NAME_preprocess and NAME_image under ``output``; returns the config paths.

    ``engine_at_start``: a ``tensorrt_plan`` config with ``NAME/model.onnx`` and the build recipe
    ``NAME/engine.json`` beside it and no plan yet; the container's entrypoint builds ``1/model.plan`` on its own
    GPU at start (``swinv2-serve engine``, see ``engine_at_start``). ``engine_precision`` fp16 needs the fp16
    export as ``onnx`` (its Casts keep the FP32 islands).

    ``backend="openvino"``: Triton's OpenVINO backend on CPU instances; the ONNX is converted to
    ``1/model.xml`` + ``model.bin`` (fp32 weights, metadata in rt_info). A bf16 precision is written only
    after the load-time fidelity check passes here (``OpenVINORuntime`` checks it on load), since Triton
    runs no such check; int8 is quantized here on ``openvino.calibration`` images and written only if it
    passes its check on held-out ones (``openvino_int8.quantize_int8``).

    ``preferred_batch_sizes``: the dynamic batcher's preferred sizes (default: powers of two from 4 up to
    ``max_batch``; ``optimize`` passes the ones its measured throughput curve says pay off).
    ``ir``: with ``backend="openvino"``, an IR (``.xml`` + ``.bin``) that was already built and checked for
    ``openvino.precision`` (``optimize`` checks every candidate on held-out images first): it is copied as
    ``1/model.xml`` instead of converting (bf16: checking) or quantizing ``onnx`` again; ``onnx`` still
    supplies the metadata.
    """
    if backend not in ("onnxruntime", "openvino"):
        raise SwinV2ServeError(f"--backend must be onnxruntime or openvino, got {backend!r}")
    if backend == "openvino":
        if onnx is None or plan is not None or engine_at_start:
            raise SwinV2ServeError("--backend openvino needs --onnx (and no --plan / --engine-at-start)")
        kind = "cpu"
    if onnx is None and plan is None:
        raise SwinV2ServeError("give --onnx (and optionally --plan): the repository needs a model")
    if kind not in ("cpu", "gpu"):
        raise SwinV2ServeError(f"--kind must be cpu or gpu, got {kind!r}")
    if not name or any(c in name for c in "/\\ ") or name.startswith("."):
        raise SwinV2ServeError(f"model name {name!r} must be a plain directory name (letters, digits, _ - .)")
    for path in (onnx, plan):
        if path is not None and not Path(path).is_file():
            raise SwinV2ServeError(f"{path}: no such file")

    metadata = read_onnx_metadata(onnx) if onnx is not None else None
    if plan is not None:
        engine = read_sidecar(plan)
        engine_max = engine.batch_profile.max
        if max_batch is None:
            max_batch = engine_max
        elif max_batch > engine_max:
            raise SwinV2ServeError(
                f"--max-batch {max_batch} exceeds the engine's profile max {engine_max}: "
                f"use --max-batch {engine_max} or rebuild the engine with a larger profile"
            )
        metadata = metadata or engine.metadata
        if kind == "cpu":
            raise SwinV2ServeError("TensorRT plans run on GPUs only: drop --kind cpu or pass --onnx without --plan")
    assert metadata is not None
    if ir is not None and (backend != "openvino" or not Path(ir).with_suffix(".bin").is_file()):
        raise SwinV2ServeError(f"ir={ir}: needs backend='openvino' and an existing IR (.xml with its .bin)")
    batching = BatchingOptions(
        max_batch=max_batch or 32, max_queue_delay_us=max_queue_delay_us, instances=instances,
        preprocess_instances=preprocess_instances,
        preferred_batch_sizes=None if preferred_batch_sizes is None else tuple(preferred_batch_sizes),
    )
    names = labels_for(metadata, labels)
    tensor_name, pre_name, ens_name = model_names(name)
    root = Path(output)
    repo = Repository(root=root, name=name, max_batch=batching.max_batch)

    for model in (tensor_name, pre_name, ens_name):
        if (root / model).exists():
            if not overwrite:
                raise SwinV2ServeError(f"{root / model} exists; remove it or write to another --output")
            shutil.rmtree(root / model)

    try:  # a refused bf16/int8 check, or any other failure, leaves no half-written model behind
        # NAME: the network
        tensor_dir = root / tensor_name
        (tensor_dir / "1").mkdir(parents=True)
        if engine_at_start:
            if plan is not None or onnx is None or kind != "gpu":
                raise SwinV2ServeError("--engine-at-start needs --onnx, no --plan, and --kind gpu")
            write_recipe(tensor_dir, onnx, recipe_for(onnx, engine_precision, batching.max_batch))
            platform = "tensorrt_plan"
        elif plan is not None:
            shutil.copyfile(plan, tensor_dir / "1" / "model.plan")
            shutil.copyfile(sidecar_path(plan), sidecar_path(tensor_dir / "1" / "model.plan"))
            platform = "tensorrt_plan"
        elif backend == "openvino" and ir is not None:
            shutil.copyfile(ir, tensor_dir / "1" / OPENVINO_MODEL_FILE)
            shutil.copyfile(Path(ir).with_suffix(".bin"), (tensor_dir / "1" / OPENVINO_MODEL_FILE).with_suffix(".bin"))
            platform = "openvino"
        elif backend == "openvino":
            options = openvino or OpenVINOOptions()
            _write_openvino_model(onnx, tensor_dir / "1" / OPENVINO_MODEL_FILE, options)  # type: ignore[arg-type]
            platform = "openvino"
        else:
            shutil.copyfile(onnx, tensor_dir / "1" / "model.onnx")  # type: ignore[arg-type]
            platform = "onnxruntime_onnx"
        config = tensor_config(tensor_name, metadata, names, platform=platform, kind=kind, batching=batching,
                               openvino=openvino)
        repo.configs[tensor_name] = _write(tensor_dir / "config.pbtxt", to_text(config))
        _write(tensor_dir / LABELS_FILE, labels_text(names))

        # NAME_preprocess: bytes -> tensor with the package's single preprocessing path
        pre_dir = root / pre_name
        config = preprocess_config(pre_name, metadata, names, batching=batching)
        repo.configs[pre_name] = _write(pre_dir / "config.pbtxt", to_text(config))
        _write(pre_dir / "1" / "model.py", preprocess_model_source())

        # NAME_image: the ensemble
        ens_dir = root / ens_name
        (ens_dir / "1").mkdir(parents=True)
        config = ensemble_config(ens_name, tensor_name, pre_name, metadata, names, max_batch=batching.max_batch)
        repo.configs[ens_name] = _write(ens_dir / "config.pbtxt", to_text(config))
        _write(ens_dir / LABELS_FILE, labels_text(names))
    except BaseException:
        for model in (tensor_name, pre_name, ens_name):
            shutil.rmtree(root / model, ignore_errors=True)
        raise
    return repo


def _write_openvino_model(onnx: str | os.PathLike, xml: Path, options: OpenVINOOptions) -> None:
    """IR for Triton's OpenVINO backend; bf16 and int8 must pass their fidelity checks on this CPU first."""
    if options.precision not in ("fp32", "bf16", "int8"):
        raise SwinV2ServeError(f"openvino precision must be fp32, bf16 or int8, got {options.precision!r}")
    if options.precision == "int8":
        if options.calibration is None:
            raise SwinV2ServeError("--precision int8 needs --calibration DIR: images like the ones you will serve")
        quantize_int8(onnx, options.calibration, xml, threads=options.threads, fidelity=options.fidelity,
                      threshold=options.fidelity_threshold, overflow_fix=options.overflow_fix,
                      max_accuracy_drop=options.max_accuracy_drop)
        return
    if options.precision == "bf16":
        OpenVINORuntime(onnx, precision="bf16", threads=options.threads, fidelity=options.fidelity,
                        fidelity_threshold=options.fidelity_threshold, check_inputs=options.fidelity_images).close()
    convert_to_ir(onnx, xml)


def preprocess_model_source() -> str:
    """The python-backend model.py of NAME_preprocess (a data file of this package)."""
    return resources.files("swinv2_serve").joinpath("data", PREPROCESS_TEMPLATE).read_text(encoding="utf-8")
