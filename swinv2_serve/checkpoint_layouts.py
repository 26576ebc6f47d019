"""Reading a weights file and converting its layout to ours: the conversion edge of ``load_checkpoint``.

Pickles are only ever read with ``weights_only=True``; safetensors are read as they are. Four layouts are
recognised from their key names and converted by one small function each (``CONVERTERS``): ``timm`` (ours),
``msra`` (the official repo: downsample at the end of a stage, ``head.``, derived buffers saved), ``hf``
(transformers' Swinv2: ``swinv2.`` prefix, split q/k/v, ``classifier``), and our own self-describing format.
"""

from __future__ import annotations

import json
import pickle
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from .errors import CheckpointError

FORMAT = "swinv2_serve"
FORMAT_VERSION = 1
SAFETENSORS_META_KEY = "swinv2_serve"  # safetensors metadata key holding the JSON description
# Tensors the model derives itself; MSRA (and old HF) checkpoints save them, we drop them.
DERIVED_BUFFERS = ("relative_coords_table", "relative_position_index", "attn_mask")
WRAPPER_KEYS = ("state_dict", "model", "model_ema", "state_dict_ema")
PICKLE_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")
_MAX_LISTED = 10

StateDict = dict[str, torch.Tensor]


def cap_list(items: list[str], limit: int = _MAX_LISTED) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f" ... and {len(items) - limit} more" if len(items) > limit else "")


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


def read_raw(path: str | Path, map_location: Any = "cpu") -> tuple[Any, Path]:
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
def is_own(obj: Any) -> bool:
    return isinstance(obj, Mapping) and obj.get("format") == FORMAT


def unwrap_state_dict(obj: Any, use_ema: bool = False) -> StateDict:
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
            f"no tensors found in the checkpoint (top-level keys: {cap_list(sorted(map(str, obj)))}); expected a "
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


CONVERTERS: dict[str, Callable[[StateDict], Converted]] = {
    "timm": _from_timm,
    FORMAT: _from_timm,
    "msra": _from_msra,
    "hf": _from_hf,
}


# -- validation ------------------------------------------------------------------------------------
