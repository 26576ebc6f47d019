"""Checkpoints in, checkpoints out: the single loading edge for every SwinV2 weight layout.

Four layouts reach the model, each converted to ours (timm's native names) by one small function:

- ``msra``: the official Swin-Transformer repo (``{'model': ...}``, ``layers.i.downsample`` at the END of
  stage i, ``head.``, derived buffers saved alongside the weights);
- ``timm``: identical to ours;
- ``hf``: Hugging Face transformers ``Swinv2*`` (``swinv2.`` prefix, split q/k/v, ``classifier``);
- ``swinv2_serve``: our own self-describing format (config, labels, the export metadata, weights).

Everything is validated against ``model.state_dict()`` before a single tensor is copied, so a checkpoint
that does not fit raises one :class:`CheckpointError` naming the keys and shapes and never leaves a
half-loaded model. Pickles are only ever read with ``weights_only=True``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ._version import __version__
from .checkpoint_layouts import (
    CONVERTERS,
    FORMAT,
    FORMAT_VERSION,
    SAFETENSORS_META_KEY,
    StateDict,
    cap_list,
    detect_layout,
    is_own,
    read_raw,
    unwrap_state_dict,
)
from .config import PRESETS, SwinV2Config, resolve_config
from .errors import CheckpointError, ConfigError
from .hub import local_checkpoint
from .model import SwinV2, create_model


@dataclass
class LoadReport:
    """What ``load_checkpoint`` did: the layout it found and how keys were mapped."""

    layout: str
    loaded: int = 0
    converted: dict[str, str] = field(default_factory=dict)  # our key -> checkpoint key, where renamed
    ignored: list[str] = field(default_factory=list)  # checkpoint keys not loaded (derived buffers, extras)
    missing: list[str] = field(default_factory=list)  # model keys kept as initialised (headless + strict=False)
    new_head: bool = False

    def __str__(self) -> str:
        parts = [f"{self.layout} checkpoint: {self.loaded} tensors loaded", f"{len(self.converted)} renamed"]
        if self.ignored:
            parts.append(f"{len(self.ignored)} ignored")
        if self.missing:
            parts.append(f"{len(self.missing)} kept as initialised ({', '.join(self.missing)})")
        if self.new_head:
            parts.append("new classifier head")
        return ", ".join(parts)


def _grouped(keys: list[str]) -> list[str]:
    """Whole blocks collapsed (``layers.2.blocks.6-17.* (204 keys)``), so a short list shows its extent."""
    out: list[str] = []
    stages: dict[str, tuple[int, list[int], int]] = {}  # stage prefix -> (position in out, blocks, key count)
    for key in keys:
        found = re.match(r"(.*layers\.\d+\.blocks\.)(\d+)\.", key)
        if not found:
            out.append(key)
            continue
        prefix, block = found.group(1), int(found.group(2))
        if prefix not in stages:
            stages[prefix] = (len(out), [], 0)
            out.append("")
        pos, blocks, count = stages[prefix]
        stages[prefix] = (pos, blocks if block in blocks else [*blocks, block], count + 1)
    for prefix, (pos, blocks, count) in stages.items():
        blocks.sort()
        contiguous = blocks == list(range(blocks[0], blocks[-1] + 1))
        span = f"{blocks[0]}-{blocks[-1]}" if contiguous and len(blocks) > 1 else ",".join(map(str, blocks))
        single = count == 1 and next(k for k in keys if k.startswith(f"{prefix}{blocks[0]}."))
        out[pos] = single or f"{prefix}{span}.* ({count} keys)"
    return out


def _architecture(sd: Mapping[str, torch.Tensor]) -> tuple[int | None, tuple[int, ...]]:
    """(embed_dim, depths) as far as the (converted) keys tell."""
    depth: dict[int, int] = {}
    for key in sd:
        found = re.match(r"layers\.(\d+)\.blocks\.(\d+)\.", key)
        if found:
            stage, block = int(found.group(1)), int(found.group(2))
            depth[stage] = max(depth.get(stage, 0), block + 1)
    proj = sd.get("patch_embed.proj.weight")
    embed_dim = int(proj.shape[0]) if isinstance(proj, torch.Tensor) else None
    return embed_dim, tuple(depth.get(i, 0) for i in range(max(depth, default=-1) + 1))


def _variant_hint(sd: Mapping[str, torch.Tensor], cfg: SwinV2Config) -> str:
    embed_dim, depths = _architecture(sd)
    if embed_dim is None or not depths or (embed_dim, depths) == (cfg.embed_dim, cfg.depths):
        return ""
    names = [n for n, c in PRESETS.items() if (c.embed_dim, c.depths) == (embed_dim, depths)]
    looks = f"looks like {' / '.join(names[:3])}" if names else "is a different architecture"
    return (
        f"Hint: the checkpoint {looks} (embed_dim {embed_dim}, depths {depths}) but the model is {cfg.name} "
        f"(embed_dim {cfg.embed_dim}, depths {cfg.depths}): build the matching model"
        + (f", e.g. create_model({names[0]!r})" if names else "")
        + "."
    )


def _check(
    sd: StateDict,
    origin: Mapping[str, str],
    model: SwinV2,
    *,
    strict: bool,
    new_head: bool,
    layout: str,
) -> tuple[list[str], list[str], bool]:
    """Raise one CheckpointError for everything that does not fit; else (missing head keys, ignored keys,
    whether the head must be re-initialised)."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    misshaped = [k for k in sd if k in expected and tuple(sd[k].shape) != expected[k]]

    head_in_ckpt = [k for k in sd if k.startswith("head.")]
    head_problem = any(k.startswith("head.") for k in missing + unexpected + misshaped)
    reset_head = new_head
    if new_head:  # the checkpoint's head (whatever its shape) is not used
        missing = [k for k in missing if not k.startswith("head.")]
        unexpected = [k for k in unexpected if not k.startswith("head.")]
        misshaped = [k for k in misshaped if not k.startswith("head.")]
    missing_head = [k for k in missing if k.startswith("head.")]
    ignored: list[str] = []
    if not strict:  # headless checkpoints and extras (e.g. a SimMIM decoder) are fine; the body must be complete
        missing = [k for k in missing if not k.startswith("head.") or head_in_ckpt]
        ignored = [origin.get(k, k) for k in unexpected]
        unexpected = []
    if not (missing or unexpected or misshaped):
        return ([] if new_head else [k for k in missing_head if k not in missing]), ignored, reset_head

    lines = [f"checkpoint ({layout} layout) does not fit {model.cfg.name}:"]
    if missing:
        lines.append(f"  missing ({len(missing)}): {cap_list(_grouped(missing))}")
    if unexpected:
        lines.append(f"  unexpected ({len(unexpected)}): {cap_list(_grouped([origin.get(k, k) for k in unexpected]))}")
    if misshaped:
        shapes = [
            f"{k} checkpoint {list(sd[k].shape)} vs model {list(expected[k])}"
            + (f" (from {origin[k]})" if k in origin else "")
            for k in misshaped
        ]
        lines.append(f"  mis-shaped ({len(misshaped)}): {cap_list(shapes)}")
    hint = _variant_hint(sd, model.cfg)
    body_ok = not any(not k.startswith("head.") for k in missing + unexpected + misshaped)
    if not hint and body_ok and head_problem and not new_head:
        ckpt_weight = sd.get("head.fc.weight")
        ckpt_classes = int(ckpt_weight.shape[0]) if ckpt_weight is not None else 0
        if ckpt_classes and model.num_classes:
            hint = (
                f"Hint: only the classifier differs: the checkpoint has {ckpt_classes} classes, the model "
                f"{model.num_classes}. Pass new_head=True (CLI: --new-head) to load everything else and start a "
                f"fresh {model.num_classes}-class head, or build the model with num_classes={ckpt_classes}."
            )
        elif ckpt_classes:
            hint = "Hint: the model has no classifier (num_classes=0); pass new_head=True to drop the checkpoint's."
        else:
            hint = (
                "Hint: the checkpoint has no classifier head; pass strict=False to keep the model's freshly "
                "initialised head (or new_head=True, CLI: --new-head)."
            )
    if not hint and missing and len(missing) == len(expected):
        hint = (
            "Hint: none of the model's keys were found; is this a SwinV2 checkpoint? "
            f"(first keys: {cap_list(list(sd), 5)})"
        )
    if hint:
        lines.append(hint)
    raise CheckpointError("\n".join(lines))


# -- public API ------------------------------------------------------------------------------------
def load_checkpoint(
    model: SwinV2,
    source: str | Path | Mapping[str, Any],
    *,
    strict: bool = True,
    new_head: bool = False,
    use_ema: bool = False,
) -> LoadReport:
    """Load MSRA / timm / HF / own weights into ``model`` (converted to our names), all or nothing.

    ``new_head=True`` re-initialises the classifier for the model's own class count and loads the rest
    (fine-tuning on new classes). ``strict=False`` tolerates a checkpoint without a head (the model keeps
    its initialised one) and extra keys (reported as ignored); the body must always be complete and
    correctly shaped. ``use_ema`` prefers ``model_ema``/``state_dict_ema`` in training checkpoints.
    """
    raw = read_raw(source)[0] if isinstance(source, (str, Path)) else source
    own = is_own(raw)
    if own:
        version = raw.get("format_version", 0)
        if not isinstance(version, int) or version > FORMAT_VERSION:
            raise CheckpointError(
                f"checkpoint format_version {version} is newer than this swinv2-serve reads ({FORMAT_VERSION}); "
                "upgrade swinv2-serve"
            )
    sd = unwrap_state_dict(raw["state_dict"] if own else raw, use_ema=use_ema)
    layout = FORMAT if own else detect_layout(sd)
    converted, origin, dropped = CONVERTERS[layout](sd)
    missing_head, ignored, reset_head = _check(
        converted, origin, model, strict=strict, new_head=new_head, layout=layout
    )

    if reset_head:
        reference = model.norm.weight  # the fresh head lives where the model does
        model.reset_classifier(model.num_classes, labels=model.cfg.labels)
        model.head.to(device=reference.device, dtype=reference.dtype)
    current = model.state_dict()
    full = {k: (current[k] if (reset_head and k.startswith("head.")) or k in missing_head else converted[k])
            for k in current}
    model.load_state_dict(full, strict=True)
    from_checkpoint = [k for k in full if not ((reset_head and k.startswith("head.")) or k in missing_head)]
    if own and not reset_head and not missing_head and raw.get("labels"):
        labels = tuple(raw["labels"])
        if len(labels) == model.num_classes:
            model.cfg = model.cfg.replace(labels=labels)
    head_dropped = [origin.get(k, k) for k in converted if k.startswith("head.")] if reset_head else []
    return LoadReport(
        layout=layout,
        loaded=len(from_checkpoint),
        converted={k: v for k, v in origin.items() if k in full},
        ignored=dropped + ignored + head_dropped,
        missing=missing_head,
        new_head=reset_head,
    )


def _plain(value: Any, where: str, *, tensors: bool) -> Any:
    """Only what ``torch.load(weights_only=True)`` and JSON can carry (tuples/Paths made plain)."""
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (list, tuple)):
        return [_plain(v, f"{where}[{i}]", tensors=tensors) for i, v in enumerate(value)]
    if isinstance(value, Mapping):
        return {str(k): _plain(v, f"{where}.{k}", tensors=tensors) for k, v in value.items()}
    if tensors and isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if hasattr(value, "__dict__") and type(value).__name__ == "Namespace":  # argparse
        return _plain(vars(value), where, tensors=tensors)
    allowed = "str/int/float/bool/None/list/dict" + ("/tensor" if tensors else "")
    raise TypeError(f"{where} is a {type(value).__name__}; checkpoints store only {allowed}")


def describe(model: SwinV2, *, labels: Any = None, train_args: Any = None, extra: Any = None) -> dict[str, Any]:
    """The self-description stored with our checkpoints (everything but the weights)."""
    cfg = model.cfg
    labels = list(cfg.labels) if labels is None and cfg.labels is not None else labels
    if labels is not None:
        labels = [str(s) for s in labels]
        if len(labels) != cfg.num_classes:
            raise ValueError(f"{len(labels)} labels for a {cfg.num_classes}-class model")
        cfg = cfg.replace(labels=tuple(labels))
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "package_version": __version__,
        "config": cfg.to_dict(),
        "labels": labels,
        "metadata": cfg.metadata().to_dict(),
        "train_args": _plain(train_args or {}, "train_args", tensors=False),
        "extra": _plain(extra or {}, "extra", tensors=False),
    }


def save_checkpoint(
    model: SwinV2,
    path: str | Path,
    *,
    labels: list[str] | tuple[str, ...] | None = None,
    train_args: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write our self-describing checkpoint: ``.pt``/``.pth`` (one plain dict, weights_only-loadable) or
    ``.safetensors`` (description in the file's metadata and in a ``<stem>.json`` sidecar).

    ``labels`` default to ``model.cfg.labels``; ``train_args``/``extra`` hold plain values only.
    """
    path = Path(path)
    description = describe(model, labels=labels, train_args=train_args, extra=extra)
    weights = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        text = json.dumps(description)
        save_file(weights, str(path), metadata={"format": "pt", SAFETENSORS_META_KEY: text})
        path.with_suffix(".json").write_text(json.dumps(description, indent=2) + "\n")
    elif path.suffix in (".pt", ".pth"):
        torch.save({**description, "state_dict": weights}, path)
    else:
        raise ValueError(f"save_checkpoint writes .pt, .pth or .safetensors, not {path.name!r}")
    return path


def read_description(path: str | Path) -> dict[str, Any]:
    """The description of one of our checkpoints without building a model (config, labels, preprocess)."""
    raw, resolved = read_raw(path)
    if not is_own(raw):
        sidecar = resolved.with_suffix(".json")
        if resolved.suffix == ".safetensors" and sidecar.is_file():
            data = json.loads(sidecar.read_text())
            if is_own(data):
                return data
        _not_own(resolved, raw)
    return {k: v for k, v in raw.items() if k != "state_dict"}


def _not_own(path: Path, raw: Any) -> None:
    try:
        layout = detect_layout(unwrap_state_dict(raw))
        what = {"timm": "a timm", "msra": "an official MSRA", "hf": "a Hugging Face transformers"}[layout]
        what += " checkpoint"
    except CheckpointError:
        what = "not a swinv2-serve checkpoint"
    raise CheckpointError(
        f"{path} is {what}, not a self-describing swinv2-serve checkpoint, so load_model cannot tell which "
        "architecture it is: build it with create_model(NAME) and call load_checkpoint(model, path) "
        "(CLI: --model NAME --checkpoint PATH)"
    )


def load_model(path: str | Path, *, map_location: Any = "cpu", **create_overrides: Any) -> SwinV2:
    """Rebuild a model from one of our checkpoints alone, in eval mode.

    ``create_overrides`` (``img_size``, ``window_size``, ``attn_chunk_windows`` ...) build it at another
    resolution/window: the saved CPB normaliser is kept (log-spaced CPB transfer). A different
    ``num_classes`` starts a fresh head.
    """
    raw, resolved = read_raw(path)
    if not is_own(raw):
        sidecar = resolved.with_suffix(".json")
        if resolved.suffix == ".safetensors" and sidecar.is_file() and isinstance(raw, Mapping):
            data = json.loads(sidecar.read_text())
            if is_own(data):
                raw = {**data, "state_dict": raw}
    if not is_own(raw):
        _not_own(resolved, raw)
    try:
        cfg = SwinV2Config.from_dict(raw["config"])
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{resolved}: unusable config in the checkpoint ({exc})") from None
    if raw.get("labels"):
        cfg = cfg.replace(labels=tuple(raw["labels"]))
    saved_classes = cfg.num_classes
    if create_overrides:
        cfg = resolve_config(cfg, **create_overrides)
    model = SwinV2(cfg)
    load_checkpoint(model, raw, new_head=cfg.num_classes != saved_classes)
    return model.to(map_location).eval()


def load_or_create(model: str | None = None, checkpoint: str | Path | None = None, *,
                   num_classes: int | None = None, perturb_seed: int | None = None,
                   pretrained: bool | str | None = None) -> SwinV2:
    """The model a command names, in eval mode: one of our checkpoints alone, a preset with weights in any of
    the four layouts (a path, or an http(s)/file URL downloaded once: ``hub.fetch_url``), a preset with its
    published weights (``pretrained``: True, ``"TAG"`` or ``"TAG@REVISION"``), or a preset with random weights.

    ``perturb_seed`` moves random weights off their initialisation (as training does), so that comparisons
    of logits between formats mean something; without it they stay as initialised.
    """
    if pretrained:
        if model is None or checkpoint is not None:
            raise ConfigError("--pretrained needs --model NAME and no --checkpoint")
        return create_model(model, num_classes=num_classes, pretrained=pretrained).eval()
    checkpoint = local_checkpoint(checkpoint)
    if checkpoint is not None and not Path(checkpoint).is_file():
        raise CheckpointError(f"checkpoint {checkpoint} not found")
    if model is None:
        if checkpoint is None:
            raise ConfigError("give --model NAME and/or --checkpoint PATH")
        return load_model(checkpoint)
    net = create_model(model, num_classes=num_classes)
    if checkpoint is not None:
        load_checkpoint(net, checkpoint)
    elif perturb_seed is not None:
        gen = torch.Generator().manual_seed(perturb_seed)
        with torch.no_grad():
            for p in net.parameters():
                p.add_(torch.randn(p.shape, generator=gen) * 0.02)
    return net.eval()
