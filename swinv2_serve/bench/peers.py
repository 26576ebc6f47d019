"""timm as the peer: its SwinTransformerV2 on the same weights, exported the way its users export it."""

from __future__ import annotations

import importlib.util
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..config import SwinV2Config
from ..openvino_int8 import quantize_model
from ..runtime.onnxruntime_backend import require_onnxruntime, session_options
from ..runtime.openvino_backend import (
    compile_logits,
    cpu_capabilities,
    dynamic_batch,
    float_precision_for_int8,
    require_openvino,
)
from ..runtime.torch_backend import autocast_logits
from ..timing import Runner
from .results import TIMM


def timm_unavailable_reason(cfg: SwinV2Config) -> str | None:
    if importlib.util.find_spec("timm") is None:
        return "timm is not installed (pip install timm): no standard-export peer"
    if cfg.extra_norm_period:
        return f"{cfg.name} has main-branch norms (SwinV2-H/G) that timm's SwinTransformerV2 does not have"
    return None


def timm_model(cfg: SwinV2Config) -> Any:
    """timm's SwinTransformerV2 with ``cfg``'s geometry (resolution, window, CPB normaliser, classes)."""
    import timm  # test/bench peer only: not a dependency of the package
    from timm.models.swin_transformer_v2 import SwinTransformerV2

    kwargs = {
        "img_size": tuple(cfg.img_size),
        "window_size": cfg.window_size[0],
        "pretrained_window_sizes": tuple(h for h, _ in cfg.cpb_normalisers),
        "num_classes": cfg.num_classes,
    }
    if cfg.name in timm.list_models("swinv2_*"):
        return timm.create_model(cfg.name, pretrained=False, **kwargs).eval()
    return SwinTransformerV2(patch_size=cfg.patch_size, in_chans=cfg.in_chans, embed_dim=cfg.embed_dim,
                             depths=tuple(cfg.depths), num_heads=tuple(cfg.num_heads), mlp_ratio=cfg.mlp_ratio,
                             qkv_bias=cfg.qkv_bias, **kwargs).eval()


def export_timm_standard(cfg: SwinV2Config, state_dict: dict, path: str | os.PathLike, dynamo: bool = False) -> None:
    """timm's model at ``cfg``'s geometry, exported as its users do: ``torch.onnx.export`` with a dynamic batch.

    Output: ``logits`` only (timm's model has no softmax head).
    """
    model = timm_model(cfg)
    model.load_state_dict(state_dict)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model, (torch.zeros(1, 3, *cfg.img_size),), os.fspath(path), dynamo=dynamo, opset_version=17,
            input_names=["input"], output_names=["logits"],
            **({"dynamic_shapes": ({0: torch.export.Dim("batch", max=256)},)} if dynamo
               else {"dynamic_axes": {"input": {0: "batch"}, "logits": {0: "batch"}}}),
        )


def openvino_logits(path: str | os.PathLike, precision: str, threads: int | None, hint: str = "latency",
                    calibration: np.ndarray | None = None) -> Callable[[np.ndarray], np.ndarray]:
    """Any ONNX (timm's standard export) compiled by OpenVINO with batch -1, as ``x -> logits``; ``int8``
    quantizes it first with the settings ``swinv2-serve quantize`` uses for ours, on ``calibration``."""
    model = dynamic_batch(require_openvino().Core().read_model(os.fspath(path)))
    if precision == "int8":
        if calibration is None:
            raise ValueError("int8 needs calibration images")
        return compile_logits(quantize_model(model, calibration), float_precision_for_int8(cpu_capabilities()),
                              threads, hint)
    return compile_logits(model, precision, threads, hint)


def timm_torch_runner(cfg: SwinV2Config, state_dict: dict, precision: str) -> Runner:
    """timm's model eager in torch, under the same autocast as ours."""
    peer = timm_model(cfg)
    peer.load_state_dict(state_dict)
    cpu = torch.device("cpu")
    return Runner("torch", TIMM, precision, lambda x: autocast_logits(peer, x, precision, cpu).numpy())


def timm_onnx_runner(backend: str, precision: str, onnx_path: Path, threads: int,
                     calibration: np.ndarray | None = None) -> Runner:
    """timm's standard ONNX export in ONNX Runtime (our session options) or OpenVINO (our compile properties)."""
    if backend == "onnxruntime":
        ort = require_onnxruntime()
        session = ort.InferenceSession(str(onnx_path), session_options(threads), providers=["CPUExecutionProvider"])
        return Runner(backend, TIMM, precision, lambda x: session.run(["logits"], {"input": x})[0])
    if backend == "openvino":
        return Runner(backend, TIMM, precision, openvino_logits(onnx_path, precision, threads,
                                                                calibration=calibration))
    raise ValueError(f"no timm peer for {backend}")
