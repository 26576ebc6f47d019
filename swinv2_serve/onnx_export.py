"""Deploy form -> ONNX, one file per resolution, verified in ONNX Runtime against eager.

The graph: input ``input`` [B, 3, H, W] float32 -> outputs ``logits`` and ``probs`` [B, C] float32;
batch is the only dynamic axis. The file describes itself in ``metadata_props["swinv2_serve"]`` (JSON:
model, img_size, windows, CPB normaliser, classes, labels, preprocessing), so the runtimes, the
Triton repository writer and the client need nothing else.
"""

from __future__ import annotations

import json
import os
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .config import SwinV2Config
from .deploy import DeploySwinV2, resize_model, to_deploy
from .errors import ExportError
from .model import SwinV2
from .runtime import INPUT_NAME, METADATA_KEY, OUTPUT_NAMES

FP32_ATOL = 1e-4
FP16_RTOL = 2e-2  # of the largest |logit|


@dataclass
class ExportResult:
    path: Path
    img_size: tuple[int, int]
    window_sizes: list[int]
    nodes: int
    size_bytes: int
    seconds: float
    fp16: bool
    max_abs_diff: float | None = None
    top1_agreement: float | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        out = asdict(self)
        out["path"] = str(self.path)
        out.pop("metadata")
        return out


class _WithProbs(nn.Module):
    """logits and their softmax, both float32 whatever the compute precision."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.model(x).float()
        return logits, logits.softmax(dim=-1)


def has_compact_tables(deploy: nn.Module) -> bool:
    """Whether any block keeps its bias table or shift mask compact (expanded at run time)."""
    from .deploy import DeployAttention

    attention = (m for m in deploy.modules() if isinstance(m, DeployAttention))
    return any(m.mode == "compact" or m.mask_mode == "labels" for m in attention)


def export_metadata(cfg: SwinV2Config, *, fp16: bool = False, opset: int = 17) -> dict[str, Any]:
    from . import __version__

    return {
        "model": cfg.name,
        "img_size": list(cfg.img_size),
        "window_sizes": [h for h, _ in cfg.stage_windows],
        "pretrained_window_sizes": [h for h, _ in cfg.cpb_normalisers],
        "num_classes": cfg.num_classes,
        "labels": list(cfg.labels) if cfg.labels else None,
        **{k: v for k, v in cfg.preprocessing().items() if k != "img_size"},
        "fp16": fp16,
        "opset": opset,
        "input": INPUT_NAME,
        "outputs": list(OUTPUT_NAMES),
        "config": cfg.to_dict(),
        "swinv2_serve_version": __version__,
    }


def export_onnx(
    model: SwinV2 | DeploySwinV2,
    path: str | os.PathLike,
    *,
    img_size: int | tuple[int, int] | None = None,
    window_size: int | None = None,
    opset: int = 17,
    fp16: bool = False,
    verify: bool = True,
    atol: float | None = None,
) -> ExportResult:
    """Export the deploy form of ``model`` at ``img_size`` (default: the model's own) to ``path``.

    ``fp16=True`` writes an FP16 graph for GPUs in which the q/k L2-normalisation, LayerNorm and softmax
    run in FP32 (explicit Casts); inputs and outputs stay FP32. ``verify`` runs ONNX Runtime on batches
    of 1 and 3 and raises ``ExportError`` if logits differ from eager by more than ``atol`` (FP32) or if
    top-1 disagrees / NaNs appear (FP16).
    """
    if opset < 17:
        raise ExportError(f"opset {opset} is too old: >= 17 keeps LayerNormalization one node")
    try:
        import onnx
    except ImportError as exc:
        raise ExportError("ONNX export needs the onnx package: pip install 'swinv2-serve[onnx]'") from exc
    start = time.perf_counter()
    if isinstance(model, DeploySwinV2):
        if img_size is not None or window_size is not None:
            raise ExportError("a deploy-form model is fixed to its resolution; pass the train-time model to resize")
        deploy, reference = model, model
    else:
        if img_size is not None or window_size is not None:
            model = resize_model(model, img_size=img_size, window_size=window_size)  # the truth at the new size
        deploy, reference = to_deploy(model), model
    cfg = deploy.cfg
    if fp16:
        from .precision import to_half_with_fp32_islands

        deploy_for_export = to_half_with_fp32_islands(deploy)
    else:
        deploy_for_export = deploy
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    dummy = torch.zeros(1, 3, *cfg.img_size)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            _WithProbs(deploy_for_export).eval(),
            (dummy,),
            str(path),
            dynamo=False,
            input_names=[INPUT_NAME],
            output_names=list(OUTPUT_NAMES),
            dynamic_axes={INPUT_NAME: {0: "batch"}, **{name: {0: "batch"} for name in OUTPUT_NAMES}},
            opset_version=opset,
            # folding would expand compact bias tables / mask labels back into dense constants in the file
            do_constant_folding=not has_compact_tables(deploy),
        )
    metadata = export_metadata(cfg, fp16=fp16, opset=opset)
    proto = onnx.load(str(path))
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(metadata)
    proto.producer_name = "swinv2-serve"
    onnx.save(proto, str(path))
    result = ExportResult(
        path=path,
        img_size=cfg.img_size,
        window_sizes=metadata["window_sizes"],
        nodes=len(proto.graph.node),
        size_bytes=path.stat().st_size,
        seconds=0.0,
        fp16=fp16,
        metadata=metadata,
    )
    if verify:
        result.max_abs_diff, result.top1_agreement = verify_onnx(path, reference, fp16=fp16, atol=atol)
    result.seconds = time.perf_counter() - start
    return result


def verify_onnx(
    path: str | os.PathLike,
    reference: nn.Module,
    *,
    fp16: bool = False,
    atol: float | None = None,
    batches: tuple[int, ...] = (1, 3),
    seed: int = 0,
) -> tuple[float, float]:
    """Run the ONNX in ONNX Runtime (CPU) and compare with ``reference`` eager; raise over tolerance."""
    from .runtime import OnnxRuntime

    runtime = OnnxRuntime(path)
    gen = torch.Generator().manual_seed(seed)
    worst, agree, total, scale = 0.0, 0, 0, 0.0
    for batch in batches:
        x = torch.randn(batch, 3, *runtime.input_shape[1:], generator=gen)
        with torch.no_grad():
            expected = reference.eval()(x).float().numpy()
        got = runtime(x.numpy())["logits"]
        if not np.isfinite(got).all():
            raise ExportError(f"{path}: ONNX Runtime produced NaN/Inf logits")
        worst = max(worst, float(np.abs(got - expected).max()))
        scale = max(scale, float(np.abs(expected).max()))
        agree += int((got.argmax(1) == expected.argmax(1)).sum())
        total += batch
    # FP32 must match eager; FP16 may drift by a small fraction of the logit range, never flip argmaxes wholesale
    tolerance = atol if atol is not None else (FP16_RTOL * max(scale, 1.0) if fp16 else FP32_ATOL)
    if worst > tolerance:
        raise ExportError(f"{path}: ONNX Runtime logits differ from eager by {worst:.3g} > {tolerance:.3g}")
    return worst, agree / total
