"""Deploy form -> ONNX, one file per resolution, verified in ONNX Runtime against eager.

The graph: input ``input`` [B, 3, H, W] float32 -> outputs ``logits`` and ``probs`` [B, C] float32;
batch is the only dynamic axis. The file describes itself in ``metadata_props["swinv2_serve"]`` (JSON:
model, img_size, windows, CPB normaliser, classes, labels, preprocessing), so the runtimes, the
Triton repository writer and the client need nothing else.
"""

from __future__ import annotations

import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .contract import INPUT_NAME, METADATA_KEY, OUTPUT_NAMES, ExportMetadata
from .deploy import DeployAttention, DeploySwinV2, resize_model, to_deploy
from .errors import ExportError
from .model import SwinV2
from .precision import to_half_with_fp32_islands
from .runtime.onnxruntime_backend import OnnxRuntime
from .verification import Tolerance, Verdict, judge

# ONNX Runtime vs eager: fp32 equals eager up to float reordering; fp16 may drift by a small fraction of the
# logit range (plus a floor for near-zero logits) but must not produce NaN/Inf
FP32_TOLERANCE = Tolerance(atol=1e-4)
FP16_TOLERANCE = Tolerance(atol=2e-2, rtol=2e-2)


@dataclass
class ExportResult:
    path: Path
    metadata: ExportMetadata
    nodes: int
    size_bytes: int
    seconds: float
    verification: Verdict | None = None

    @property
    def window_sizes(self) -> tuple[int, ...]:
        return self.metadata.window_sizes

    @property
    def max_abs_diff(self) -> float | None:
        return None if self.verification is None else self.verification.comparison.max_abs_diff

    @property
    def top1_agreement(self) -> float | None:
        return None if self.verification is None else self.verification.comparison.top1_agreement

    def summary(self) -> dict[str, Any]:
        return {"path": str(self.path), "img_size": list(self.metadata.img_size),
                "window_sizes": list(self.window_sizes), "fp16": self.metadata.fp16, "nodes": self.nodes,
                "size_bytes": self.size_bytes, "seconds": round(self.seconds, 2), "max_abs_diff": self.max_abs_diff,
                "top1_agreement": self.top1_agreement}


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
    attention = (m for m in deploy.modules() if isinstance(m, DeployAttention))
    return any(m.mode == "compact" or m.mask_mode == "labels" for m in attention)


def export_onnx(
    model: SwinV2 | DeploySwinV2,
    path: str | os.PathLike,
    *,
    img_size: int | tuple[int, int] | None = None,
    window_size: int | None = None,
    opset: int = 17,
    fp16: bool = False,
    verify: bool = True,
    tolerance: Tolerance | None = None,
) -> ExportResult:
    """Export the deploy form of ``model`` at ``img_size`` (default: the model's own) to ``path``.

    A new ``img_size`` without ``window_size`` scales the window with the resolution (``resolve_config``).

    ``fp16=True`` writes an FP16 graph for GPUs in which the q/k L2-normalisation, LayerNorm and softmax
    run in FP32 (explicit Casts); inputs and outputs stay FP32. ``verify`` runs ONNX Runtime on batches
    of 1 and 3 and raises ``ExportError`` if its logits leave ``tolerance`` (default ``FP32_TOLERANCE`` or
    ``FP16_TOLERANCE``) around eager's.
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
    deploy_for_export = to_half_with_fp32_islands(deploy) if fp16 else deploy
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
    metadata = cfg.metadata(fp16=fp16, opset=opset)
    proto = onnx.load(str(path))
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, metadata.to_json()
    proto.producer_name = "swinv2-serve"
    onnx.save(proto, str(path))
    result = ExportResult(path=path, metadata=metadata, nodes=len(proto.graph.node), size_bytes=path.stat().st_size,
                          seconds=0.0)
    if verify:
        result.verification = verify_onnx(path, reference, tolerance or (FP16_TOLERANCE if fp16 else FP32_TOLERANCE))
    result.seconds = time.perf_counter() - start
    return result


def verify_onnx(
    path: str | os.PathLike,
    reference: nn.Module,
    tolerance: Tolerance = FP32_TOLERANCE,
    *,
    batches: tuple[int, ...] = (1, 3),
    seed: int = 0,
) -> Verdict:
    """Run the ONNX in ONNX Runtime (CPU) and compare with ``reference`` eager; ``ExportError`` outside tolerance."""
    runtime = OnnxRuntime(path)
    gen = torch.Generator().manual_seed(seed)
    inputs = [torch.randn(batch, 3, *runtime.input_shape[1:], generator=gen) for batch in batches]
    with torch.no_grad():
        expected = np.concatenate([reference.eval()(x).float().numpy() for x in inputs])
    got = np.concatenate([runtime(x.numpy())["logits"] for x in inputs])
    verdict = judge("ONNX Runtime vs eager", expected, got, tolerance)
    if not verdict.passed:
        raise ExportError(f"{path}: {verdict.summary()}")
    return verdict
