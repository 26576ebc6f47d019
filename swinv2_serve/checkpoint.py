"""Checkpoints in, checkpoints out: the single loading edge for every SwinV2 weight layout.

Four layouts reach the model, each converted to ours (timm's native names) by one small function:

- ``msra``: the official Swin-Transformer repo (``{'model': ...}``, ``layers.i.downsample`` at the END of
  stage i, ``head.``, derived buffers saved alongside the weights);
- ``timm``: identical to ours;
- ``hf``: Hugging Face transformers ``Swinv2*`` (``swinv2.`` prefix, split q/k/v, ``classifier``);
- ``swinv2_serve``: our own self-describing format (config, labels, preprocessing, weights).

Everything is validated against ``model.state_dict()`` before a single tensor is copied, so a checkpoint
that does not fit raises one :class:`CheckpointError` naming the keys and shapes and never leaves a
half-loaded model. Pickles are only ever read with ``weights_only=True``.
"""

from __future__ import annotations

import json
import pickle
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .config import PRESETS, SwinV2Config, resolve_config
from .errors import CheckpointError
from .model import SwinV2

FORMAT = "swinv2_serve"
FORMAT_VERSION = 1
SAFETENSORS_META_KEY = "swinv2_serve"  # safetensors metadata key holding the JSON description
# Tensors the model derives itself; MSRA (and old HF) checkpoints save them, we drop them.
DERIVED_BUFFERS = ("relative_coords_table", "relative_position_index", "attn_mask")
WRAPPER_KEYS = ("state_dict", "model", "model_ema", "state_dict_ema")
PICKLE_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")
_MAX_LISTED = 10

StateDict = dict[str, torch.Tensor]


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


# -- reading files ---------------------------------------------------------------------------------
def _read_pickle(path: Path, map_location: Any = "cpu") -> Any:
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        text = str(exc)
        if "Weights only load failed" in text or "weights_only" in text:
            found = re.search(r"Unsupported global: ([^\n]*?)(?: was not| \(|\n|$)", text)
            needs = f" (it needs {found.group(1).strip()})" if found else ""
            raise CheckpointError(
                f"{path} holds more than tensors and plain containers{needs}; swinv2-serve only reads pickles "
                "with torch.load(weights_only=True). If you trust the file, re-save just its weights: "
                f"torch.save(torch.load({str(path)!r}, weights_only=False)['model'], 'weights.pth') "
                "(or convert it to .safetensors)"
            ) from None
        raise CheckpointError(f"{path} is not a PyTorch checkpoint ({text.splitlines()[0]})") from None
    except Exception as exc:  # arbitrary bytes make the unpickler fail in arbitrary ways
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CheckpointError(
            f"{path} is not a readable PyTorch checkpoint ({first}); expected a torch.save file "
            f"({'/'.join(PICKLE_SUFFIXES)}) or a .safetensors file"
        ) from None


def _read_safetensors(path: Path, device: str = "cpu") -> tuple[StateDict, dict[str, str]]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file, safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = dict(handle.metadata() or {})
        return load_file(str(path), device=device), metadata
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path} is not a readable safetensors file ({exc})") from None


def _resolve_path(path: str | Path) -> Path:
    path = Path(path)
    if path.is_dir():  # a Hugging Face / timm hub snapshot folder
        for name in ("model.safetensors", "pytorch_model.bin", "checkpoint.pt", "model.pth"):
            if (path / name).is_file():
                return path / name
        raise CheckpointError(f"{path} is a folder without model.safetensors / pytorch_model.bin / checkpoint.pt")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    return path


def _read(path: str | Path, map_location: Any = "cpu") -> tuple[Any, Path]:
    """The raw object in a checkpoint file; safetensors come back as a dict with their description."""
    path = _resolve_path(path)
    if path.suffix == ".safetensors":
        tensors, metadata = _read_safetensors(path, "cpu" if map_location is None else str(map_location))
        if SAFETENSORS_META_KEY in metadata:
            try:
                description = json.loads(metadata[SAFETENSORS_META_KEY])
            except json.JSONDecodeError as exc:
                raise CheckpointError(f"{path}: unreadable {SAFETENSORS_META_KEY} metadata ({exc})") from None
            return {**description, "state_dict": tensors}, path
        return tensors, path
    return _read_pickle(path, map_location), path


# -- unwrapping and layout detection ---------------------------------------------------------------
def _is_own(obj: Any) -> bool:
    return isinstance(obj, Mapping) and obj.get("format") == FORMAT


def _unwrap(obj: Any, use_ema: bool = False) -> StateDict:
    """The state dict inside a training checkpoint (``model``/``state_dict``/EMA wrappers, ``module.``)."""
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"expected a state dict (a mapping of names to tensors), got {type(obj).__name__}")
    order = ("model_ema", "state_dict_ema", *WRAPPER_KEYS) if use_ema else WRAPPER_KEYS
    for _ in range(3):  # nested wrappers, e.g. {'model': {'state_dict': ...}}
        if any(isinstance(v, torch.Tensor) for v in obj.values()):
            break
        inner = next((obj[k] for k in order if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            break
        obj = inner
    tensors = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise CheckpointError(
            f"no tensors found in the checkpoint (top-level keys: {_cap(sorted(map(str, obj)))}); expected a "
            f"state dict, possibly wrapped in one of {', '.join(WRAPPER_KEYS)}"
        )
    for prefix in ("module.", "_orig_mod."):  # DataParallel/DDP, torch.compile
        if all(k.startswith(prefix) for k in tensors):
            tensors = {k[len(prefix):]: v for k, v in tensors.items()}
    return tensors


def detect_layout(state_dict: Mapping[str, Any]) -> str:
    """``hf``, ``msra`` or ``timm`` from the key names of an unwrapped state dict.

    Only MSRA (and timm < 0.9, which used its layout) has a downsample in stage 0 or a bare ``head.``;
    derived buffers say nothing about the layout, so they are not used to tell.
    """
    keys = list(state_dict)
    if any(k.startswith(("swinv2.", "embeddings.patch_embeddings", "encoder.layers.")) for k in keys):
        return "hf"
    if any(k.startswith(("layers.0.downsample.", "head.weight", "head.bias")) for k in keys):
        return "msra"
    return "timm"


# -- one conversion per layout (all return: state dict in our names, our key -> source key, dropped) ------
Converted = tuple[StateDict, dict[str, str], list[str]]


def _from_timm(sd: StateDict) -> Converted:
    dropped = [k for k in sd if k.endswith(DERIVED_BUFFERS)]
    return {k: v for k, v in sd.items() if k not in dropped}, {}, dropped


def _from_msra(sd: StateDict) -> Converted:
    out: StateDict = {}
    origin: dict[str, str] = {}
    dropped: list[str] = []
    for key, value in sd.items():
        if key.endswith(DERIVED_BUFFERS):
            dropped.append(key)
            continue
        new = re.sub(r"^layers\.(\d+)\.downsample\.", lambda m: f"layers.{int(m.group(1)) + 1}.downsample.", key)
        new = re.sub(r"^head\.", "head.fc.", new)
        out[new] = value
        if new != key:
            origin[new] = key
    return out, origin, dropped


_HF_RENAMES: tuple[tuple[str, str], ...] = (  # applied in order, to the key without the ``swinv2.`` prefix
    (r"^embeddings\.patch_embeddings\.projection\.", "patch_embed.proj."),
    (r"^embeddings\.norm\.", "patch_embed.norm."),
    (r"^encoder\.layers\.(\d+)\.downsample\.", "DOWNSAMPLE"),
    (r"^encoder\.layers\.(\d+)\.blocks\.(\d+)\.", r"layers.\1.blocks.\2."),
    (r"\.attention\.self\.continuous_position_bias_mlp\.", ".attn.cpb_mlp."),
    (r"\.attention\.self\.logit_scale$", ".attn.logit_scale"),
    (r"\.attention\.output\.dense\.", ".attn.proj."),
    (r"\.layernorm_before\.", ".norm1."),  # HF applies it to the attention branch (post-norm)
    (r"\.layernorm_after\.", ".norm2."),
    (r"\.intermediate\.dense\.", ".mlp.fc1."),
    (r"\.output\.dense\.", ".mlp.fc2."),
    (r"^layernorm\.", "norm."),
    (r"^classifier\.", "head.fc."),
)
_HF_QKV = re.compile(r"^encoder\.layers\.(\d+)\.blocks\.(\d+)\.attention\.self\.(query|key|value)\.(weight|bias)$")


def _from_hf(sd: StateDict) -> Converted:
    """Split q/k/v -> fused ``qkv.weight`` + ``q_bias``/``v_bias``; downsample moves to the next stage."""
    out: StateDict = {}
    origin: dict[str, str] = {}
    dropped: list[str] = []
    qkv: dict[str, dict[str, torch.Tensor]] = {}
    for full_key, value in sd.items():
        key = full_key.removeprefix("swinv2.")
        if key.endswith(DERIVED_BUFFERS):
            dropped.append(full_key)
            continue
        found = _HF_QKV.match(key)
        if found and not (found.group(3) == "key" and found.group(4) == "bias"):
            block = f"layers.{found.group(1)}.blocks.{found.group(2)}.attn."
            qkv.setdefault(block, {})[f"{found.group(3)}.{found.group(4)}"] = value
            continue
        new = key
        for pattern, repl in _HF_RENAMES:
            if repl == "DOWNSAMPLE":
                new = re.sub(pattern, lambda m: f"layers.{int(m.group(1)) + 1}.downsample.", new)
            else:
                new = re.sub(pattern, repl, new)
        if new == key:  # not an HF name we know (mask_token, decoder, key bias ...): keep it, validation reports it
            new = full_key
        out[new] = value
        if new != full_key:
            origin[new] = full_key
    for block, parts in qkv.items():
        hf_block = "swinv2.encoder." + block.removesuffix("attn.") + "attention.self."
        weights = [parts.get(f"{n}.weight") for n in ("query", "key", "value")]
        if all(w is not None for w in weights):
            out[block + "qkv.weight"] = torch.cat(weights)  # type: ignore[arg-type]
            origin[block + "qkv.weight"] = hf_block + "{query,key,value}.weight"
        else:  # incomplete: leave the parts under their HF names so validation names them
            for n, w in zip(("query", "key", "value"), weights):
                if w is not None:
                    out[f"{hf_block}{n}.weight"] = w
        for name, ours in (("query.bias", "q_bias"), ("value.bias", "v_bias")):
            if name in parts:
                out[block + ours] = parts[name]
                origin[block + ours] = hf_block + name
    return out, origin, dropped


_CONVERTERS: dict[str, Callable[[StateDict], Converted]] = {
    "timm": _from_timm,
    FORMAT: _from_timm,
    "msra": _from_msra,
    "hf": _from_hf,
}


# -- validation ------------------------------------------------------------------------------------
def _cap(items: list[str], limit: int = _MAX_LISTED) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f" ... and {len(items) - limit} more" if len(items) > limit else "")


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
        lines.append(f"  missing ({len(missing)}): {_cap(_grouped(missing))}")
    if unexpected:
        lines.append(f"  unexpected ({len(unexpected)}): {_cap(_grouped([origin.get(k, k) for k in unexpected]))}")
    if misshaped:
        shapes = [
            f"{k} checkpoint {list(sd[k].shape)} vs model {list(expected[k])}"
            + (f" (from {origin[k]})" if k in origin else "")
            for k in misshaped
        ]
        lines.append(f"  mis-shaped ({len(misshaped)}): {_cap(shapes)}")
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
            f"(first keys: {_cap(list(sd), 5)})"
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
    raw = _read(source)[0] if isinstance(source, (str, Path)) else source
    own = _is_own(raw)
    if own:
        version = raw.get("format_version", 0)
        if not isinstance(version, int) or version > FORMAT_VERSION:
            raise CheckpointError(
                f"checkpoint format_version {version} is newer than this swinv2-serve reads ({FORMAT_VERSION}); "
                "upgrade swinv2-serve"
            )
    sd = _unwrap(raw["state_dict"] if own else raw, use_ema=use_ema)
    layout = FORMAT if own else detect_layout(sd)
    converted, origin, dropped = _CONVERTERS[layout](sd)
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
    from . import __version__

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
        "preprocess": cfg.preprocessing(),
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
    raw, resolved = _read(path)
    if not _is_own(raw):
        sidecar = resolved.with_suffix(".json")
        if resolved.suffix == ".safetensors" and sidecar.is_file():
            data = json.loads(sidecar.read_text())
            if _is_own(data):
                return data
        _not_own(resolved, raw)
    return {k: v for k, v in raw.items() if k != "state_dict"}


def _not_own(path: Path, raw: Any) -> None:
    try:
        layout = detect_layout(_unwrap(raw))
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
    raw, resolved = _read(path)
    if not _is_own(raw):
        sidecar = resolved.with_suffix(".json")
        if resolved.suffix == ".safetensors" and sidecar.is_file() and isinstance(raw, Mapping):
            data = json.loads(sidecar.read_text())
            if _is_own(data):
                raw = {**data, "state_dict": raw}
    if not _is_own(raw):
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
