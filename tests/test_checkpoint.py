"""Checkpoint layouts, file formats and every way a checkpoint can fail to fit.

The MSRA and HF layouts are built here from a timm-native state dict (``timm_to_msra``/``timm_to_hf``);
the HF converter is itself checked against transformers' own model.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import pytest
import torch
from conftest import perturb_
from safetensors.torch import save_file

from swinv2_serve import SwinV2Config, create_model
from swinv2_serve.checkpoint import load_checkpoint, load_model, save_checkpoint
from swinv2_serve.contract import ExportMetadata
from swinv2_serve.errors import CheckpointError

DERIVED = ("relative_coords_table", "relative_position_index", "attn_mask")
# Small but complete: shifted windows in stages 0-1, a shrunk window in stage 3, 10 classes.
PICO = SwinV2Config(name="pico", img_size=(64, 64), embed_dim=16, depths=(2, 2, 2, 2), num_heads=(1, 2, 2, 4),
                    window_size=(4, 4, 4, 4), num_classes=10)
HEAD = ("head.fc.weight", "head.fc.bias")


# -- layouts built from a timm-native state dict (test code: the library only reads them) --------
def timm_to_msra(model: torch.nn.Module) -> dict:
    """The official repo's layout: downsample at the end of the previous stage, ``head.``, derived buffers."""
    out = {}
    for key, value in model.state_dict().items():
        key = re.sub(r"^layers\.(\d+)\.downsample\.", lambda m: f"layers.{int(m.group(1)) - 1}.downsample.", key)
        out[re.sub(r"^head\.fc\.", "head.", key)] = value
    out.update({k: v for k, v in model.named_buffers() if k.endswith(DERIVED)})
    return {"model": out}


_HF_BLOCK = {
    "attn.logit_scale": "attention.self.logit_scale",
    "attn.q_bias": "attention.self.query.bias",
    "attn.v_bias": "attention.self.value.bias",
    "attn.cpb_mlp.": "attention.self.continuous_position_bias_mlp.",
    "attn.proj.": "attention.output.dense.",
    "norm1.": "layernorm_before.",
    "norm2.": "layernorm_after.",
    "mlp.fc1.": "intermediate.dense.",
    "mlp.fc2.": "output.dense.",
}
_HF_TOP = {"patch_embed.proj.": "embeddings.patch_embeddings.projection.", "patch_embed.norm.": "embeddings.norm.",
           "norm.": "layernorm.", "head.fc.": "classifier."}


def timm_to_hf(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers' Swinv2ForImageClassification layout: split q/k/v (k without bias), ``swinv2.`` prefix."""
    out = {}
    for key, value in state_dict.items():
        block = re.match(r"layers\.(\d+)\.blocks\.(\d+)\.(.+)", key)
        down = re.match(r"layers\.(\d+)\.downsample\.(.+)", key)
        if block:
            prefix = f"swinv2.encoder.layers.{block.group(1)}.blocks.{block.group(2)}."
            rest = block.group(3)
            if rest == "attn.qkv.weight":
                for name, part in zip(("query", "key", "value"), value.chunk(3)):
                    out[f"{prefix}attention.self.{name}.weight"] = part
                continue
            old = next(o for o in _HF_BLOCK if rest.startswith(o))
            out[prefix + _HF_BLOCK[old] + rest[len(old):]] = value
        elif down:
            out[f"swinv2.encoder.layers.{int(down.group(1)) - 1}.downsample.{down.group(2)}"] = value
        else:
            old = next(o for o in _HF_TOP if key.startswith(o))
            new = _HF_TOP[old] + key[len(old):]
            out[new if old == "head.fc." else "swinv2." + new] = value
    return out


# -- helpers ---------------------------------------------------------------------------------------
def pico(**kw) -> torch.nn.Module:
    return create_model(PICO, **kw).eval()


def poisoned(model: torch.nn.Module) -> torch.nn.Module:
    """NaN everywhere: any tensor the loader forgets shows up in the comparison."""
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(float("nan"))
    return model


def assert_same_weights(a: torch.nn.Module, b: torch.nn.Module, skip: tuple[str, ...] = ()) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        if not key.startswith(skip):
            assert torch.equal(sa[key], sb[key]), key


def snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def source() -> torch.nn.Module:
    return perturb_(pico())


@pytest.fixture(scope="module")
def image() -> torch.Tensor:
    return torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))


# -- every layout loads exactly --------------------------------------------------------------------
@pytest.mark.parametrize("layout", ["timm", "msra", "hf", "swinv2_serve"])
def test_layout_round_trip(layout: str, source, image, tmp_path: Path) -> None:
    if layout == "timm":
        ckpt = source.state_dict()
    elif layout == "msra":
        ckpt = timm_to_msra(source)
        assert "layers.0.downsample.reduction.weight" in ckpt["model"] and "head.weight" in ckpt["model"]
        assert any(k.endswith("attn_mask") for k in ckpt["model"])
    elif layout == "hf":
        ckpt = timm_to_hf(source.state_dict())
    else:
        ckpt = torch.load(save_checkpoint(source, tmp_path / "own.pt"), weights_only=True)
    model = poisoned(pico())
    report = load_checkpoint(model, ckpt)
    assert report.layout == layout
    assert report.loaded == len(model.state_dict())
    assert_same_weights(model, source)
    with torch.no_grad():
        assert torch.equal(model(image), source(image))
    if layout == "msra":
        assert report.converted["layers.1.downsample.reduction.weight"] == "layers.0.downsample.reduction.weight"
        assert any(k.endswith("relative_coords_table") for k in report.ignored)
    if layout == "hf":
        assert report.converted["layers.0.blocks.1.attn.qkv.weight"].endswith("{query,key,value}.weight")


def test_derived_buffers_do_not_decide_the_layout(source) -> None:
    """A timm-layout dict that also carries the derived buffers is still timm (no downsample shifting)."""
    sd = {**source.state_dict(), **{k: v for k, v in source.named_buffers() if k.endswith(DERIVED)}}
    model = poisoned(pico())
    report = load_checkpoint(model, sd)
    assert report.layout == "timm" and any(k.endswith("attn_mask") for k in report.ignored)
    assert_same_weights(model, source)


def test_hf_test_converter_matches_transformers(source, image) -> None:
    """``timm_to_hf`` is only useful if transformers itself accepts its output and computes the same logits."""
    transformers = pytest.importorskip("transformers")
    hf_cfg = transformers.Swinv2Config(image_size=64, patch_size=4, embed_dim=16, depths=[2, 2, 2, 2],
                                       num_heads=[1, 2, 2, 4], window_size=4, num_labels=10)
    hf = transformers.Swinv2ForImageClassification(hf_cfg).eval()
    hf.load_state_dict(timm_to_hf(source.state_dict()), strict=True)
    with torch.no_grad():
        diff = (hf(pixel_values=image).logits - source(image)).abs().max().item()
    assert diff <= 1e-5


# -- file formats and wrappers ---------------------------------------------------------------------
@pytest.mark.parametrize(("suffix", "layout"), [(".pth", "timm"), (".pt", "msra"), (".bin", "hf"),
                                                (".safetensors", "timm"), (".safetensors", "hf")])
def test_file_formats(suffix: str, layout: str, source, tmp_path: Path) -> None:
    sd = {"timm": source.state_dict(), "msra": timm_to_msra(source)["model"], "hf": timm_to_hf(source.state_dict())}
    path = tmp_path / f"weights{suffix}"
    if suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in sd[layout].items()}, str(path), metadata={"format": "pt"})
    else:
        torch.save({"model": sd[layout]} if layout == "msra" else sd[layout], path)
    model = poisoned(pico())
    assert load_checkpoint(model, path).layout == layout
    assert_same_weights(model, source)


def test_hf_save_pretrained_folder(source, tmp_path: Path) -> None:
    """What a Hugging Face user has on disk: a folder with config.json + model.safetensors."""
    transformers = pytest.importorskip("transformers")
    hf_cfg = transformers.Swinv2Config(image_size=64, patch_size=4, embed_dim=16, depths=[2, 2, 2, 2],
                                       num_heads=[1, 2, 2, 4], window_size=4, num_labels=10)
    hf = transformers.Swinv2ForImageClassification(hf_cfg)
    hf.load_state_dict(timm_to_hf(source.state_dict()))
    hf.save_pretrained(tmp_path)
    model = poisoned(pico())
    assert load_checkpoint(model, tmp_path).layout == "hf"
    assert_same_weights(model, source)


@pytest.mark.parametrize("wrap", ["model", "state_dict", "module", "nested", "ema"])
def test_wrapped_state_dicts(wrap: str, source) -> None:
    sd = source.state_dict()
    other = {k: torch.zeros_like(v) for k, v in sd.items()}
    ckpt = {
        "model": {"model": sd, "epoch": 3},
        "state_dict": {"state_dict": sd, "optimizer": {"lr": 0.1}, "epoch": 3},
        "module": {"state_dict": {f"module.{k}": v for k, v in sd.items()}},
        "nested": {"model": {"state_dict": sd}},
        "ema": {"state_dict": other, "state_dict_ema": sd},
    }[wrap]
    model = poisoned(pico())
    load_checkpoint(model, ckpt, use_ema=wrap == "ema")
    assert_same_weights(model, source)
    if wrap == "ema":  # without use_ema the raw weights win
        load_checkpoint(model, ckpt)
        assert all(torch.count_nonzero(v) == 0 for v in model.state_dict().values())


# -- our own format --------------------------------------------------------------------------------
@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_own_format_describes_itself(suffix: str, source, image, tmp_path: Path) -> None:
    labels = [f"digit {i}" for i in range(10)]
    path = save_checkpoint(source, tmp_path / f"ckpt{suffix}", labels=labels,
                           train_args={"lr": 1e-3, "epochs": 2, "out": tmp_path, "betas": (0.9, 0.999)},
                           extra={"val_top1": 0.93})
    if suffix == ".pt":
        raw = torch.load(path, weights_only=True)
    else:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as handle:
            raw = json.loads(handle.metadata()["swinv2_serve"])
        assert json.loads(path.with_suffix(".json").read_text()) == raw
    assert raw["format"] == "swinv2_serve" and raw["format_version"] == 1
    assert raw["labels"] == labels and raw["extra"] == {"val_top1": 0.93}
    assert raw["train_args"]["betas"] == [0.9, 0.999] and raw["train_args"]["out"] == str(tmp_path)
    assert ExportMetadata.from_dict(raw["metadata"]) == source.cfg.replace(labels=tuple(labels)).metadata()
    assert SwinV2Config.from_dict(raw["config"]) == source.cfg

    model = load_model(path)
    assert not model.training
    assert model.cfg == source.cfg and model.cfg.labels == tuple(labels)
    assert model.cfg.metadata().to_dict() == raw["metadata"]
    with torch.no_grad():
        assert torch.equal(model(image), source(image))


def test_load_model_transfers_at_load_time(source, tmp_path: Path) -> None:
    path = save_checkpoint(source, tmp_path / "ckpt.pt")
    model = load_model(path, img_size=96, window_size=6, attn_chunk_windows=2)
    assert model.cfg.img_size == (96, 96) and model.cfg.stage_windows[0] == (6, 6)
    assert model.cfg.cpb_normalisers == PICO.cpb_normalisers  # trained windows stay the CPB normaliser
    assert_same_weights(model, source)
    assert model(torch.randn(1, 3, 96, 96)).shape == (1, 10)


def test_own_checkpoint_into_a_built_model_sets_labels(source, tmp_path: Path) -> None:
    path = save_checkpoint(source, tmp_path / "ckpt.pth", labels=list("abcdefghij"))
    model = poisoned(pico())
    assert load_checkpoint(model, path).layout == "swinv2_serve"
    assert model.cfg.labels == tuple("abcdefghij")
    assert_same_weights(model, source)


# -- failure modes: one clear error, model untouched ----------------------------------------------
def test_wrong_variant_names_the_variant() -> None:
    tiny = create_model("swinv2_tiny_window8_256")
    small = create_model("swinv2_small_window8_256")
    before = snapshot(small)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(small, tiny.state_dict())
    msg = str(err.value)
    assert "missing (204): layers.2.blocks.6-17.* (204 keys)" in msg
    assert "looks like swinv2_tiny_window8_256" in msg and "depths (2, 2, 6, 2)" in msg
    assert "swinv2_small_window8_256 (embed_dim 96, depths (2, 2, 18, 2))" in msg
    assert all(torch.equal(before[k], v) for k, v in small.state_dict().items())  # nothing half-loaded
    with pytest.raises(CheckpointError, match=r"(?s)unexpected \(204\).*looks like swinv2_small"):
        load_checkpoint(tiny, timm_to_msra(small))


def test_wrong_class_count_then_new_head(source) -> None:
    model = pico(num_classes=5)
    before = snapshot(model)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(model, source.state_dict())
    msg = str(err.value)
    assert "mis-shaped (2): head.fc.weight checkpoint [10, 128] vs model [5, 128]" in msg
    assert "new_head=True" in msg and "--new-head" in msg and "num_classes=10" in msg
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # nothing half-loaded

    report = load_checkpoint(model, timm_to_msra(source), new_head=True)
    assert report.new_head and set(report.ignored) >= {"head.weight", "head.bias"}
    assert report.loaded == len(model.state_dict()) - 2
    assert_same_weights(model, source, skip=("head.",))
    assert model.head.fc.weight.shape == (5, 128) and torch.isfinite(model.head.fc.weight).all()
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 5)


def test_new_head_follows_the_model_dtype(source) -> None:
    model = pico(num_classes=3).double()
    load_checkpoint(model, source.state_dict(), new_head=True)
    assert model.head.fc.weight.dtype == torch.float64
    assert torch.equal(model.norm.weight, source.norm.weight.double())
    assert model(torch.randn(1, 3, 64, 64, dtype=torch.float64)).dtype == torch.float64


def test_missing_key_and_headless_checkpoints(source) -> None:
    sd = source.state_dict()
    broken = {k: v for k, v in sd.items() if k != "layers.1.blocks.0.norm1.weight"}
    with pytest.raises(CheckpointError, match=r"missing \(1\): layers\.1\.blocks\.0\.norm1\.weight$"):
        load_checkpoint(pico(), broken)
    with pytest.raises(CheckpointError, match="missing"):  # strict=False never excuses the body
        load_checkpoint(pico(), broken, strict=False)

    headless = {k: v for k, v in sd.items() if not k.startswith("head.")}
    headless["decoder.0.weight"] = torch.zeros(3)  # e.g. a SimMIM decoder
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(pico(), headless)
    assert "missing (2): head.fc.weight, head.fc.bias" in str(err.value)
    assert "unexpected (1): decoder.0.weight" in str(err.value)
    model = pico()
    head = model.head.fc.weight.clone()
    report = load_checkpoint(model, headless, strict=False)
    assert report.missing == list(HEAD) and report.ignored == ["decoder.0.weight"]
    assert torch.equal(model.head.fc.weight, head)
    assert_same_weights(model, source, skip=("head.",))


def test_misshaped_key(source) -> None:
    sd = dict(source.state_dict())
    sd["layers.2.blocks.0.attn.cpb_mlp.2.weight"] = torch.zeros(3, 512)
    model = pico()
    before = snapshot(model)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(model, timm_to_hf(sd))
    msg = str(err.value)
    assert "(hf layout)" in msg
    assert ("mis-shaped (1): layers.2.blocks.0.attn.cpb_mlp.2.weight checkpoint [3, 512] vs model [2, 512] (from "
            "swinv2.encoder.layers.2.blocks.0.attention.self.continuous_position_bias_mlp.2.weight)") in msg
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_not_a_checkpoint(tmp_path: Path) -> None:
    text = tmp_path / "notes.pth"
    text.write_text("these are not weights\n")
    with pytest.raises(CheckpointError, match="notes.pth is not a .*PyTorch checkpoint"):
        load_checkpoint(pico(), text)
    fake = tmp_path / "model.safetensors"
    fake.write_bytes(b"\x00" * 64)
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        load_checkpoint(pico(), fake)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(pico(), tmp_path / "absent.pth")
    tensor_only = tmp_path / "tensor.pt"
    torch.save(torch.zeros(3), tensor_only)
    with pytest.raises(CheckpointError, match="expected a state dict"):
        load_checkpoint(pico(), tensor_only)
    other = tmp_path / "resnet.pth"
    torch.save({"conv1.weight": torch.zeros(2, 3, 7, 7), "fc.weight": torch.zeros(10, 2)}, other)
    with pytest.raises(CheckpointError, match="none of the model's keys were found"):
        load_checkpoint(pico(), other)


def test_pickle_with_objects_is_refused(source, tmp_path: Path) -> None:
    """timm's train.py saves ``args`` as an argparse.Namespace: weights_only refuses it, we say what to do."""
    path = tmp_path / "train_ckpt.pth"
    torch.save({"state_dict": source.state_dict(), "args": argparse.Namespace(lr=0.1)}, path)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(pico(), path)
    msg = str(err.value)
    assert "argparse.Namespace" in msg and "weights_only=True" in msg and "If you trust the file" in msg


def test_load_model_needs_our_format(source, tmp_path: Path) -> None:
    path = tmp_path / "timm.pth"
    torch.save(source.state_dict(), path)
    with pytest.raises(CheckpointError, match=r"is a timm checkpoint.*create_model\(NAME\).*load_checkpoint"):
        load_model(path)
    torch.save(timm_to_msra(source), path)
    with pytest.raises(CheckpointError, match="is an official MSRA checkpoint"):
        load_model(path)


def test_newer_format_version_is_refused(source, tmp_path: Path) -> None:
    path = save_checkpoint(source, tmp_path / "ckpt.pt")
    raw = torch.load(path, weights_only=True)
    raw["format_version"] = 99
    torch.save(raw, path)
    with pytest.raises(CheckpointError, match="upgrade swinv2-serve"):
        load_model(path)


def test_save_refuses_unknown_suffix_and_non_plain_values(source, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"\.pt, \.pth or \.safetensors"):
        save_checkpoint(source, tmp_path / "ckpt.onnx")
    with pytest.raises(TypeError, match=r"extra\.fn is a function"):
        save_checkpoint(source, tmp_path / "ckpt.pt", extra={"fn": lambda: 0})
    with pytest.raises(ValueError, match="3 labels for a 10-class model"):
        save_checkpoint(source, tmp_path / "ckpt.pt", labels=["a", "b", "c"])
