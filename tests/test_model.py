"""Our SwinV2 is numerically the reference: timm (and through its layout, MSRA) and transformers.

Reference models get random weights moved off their init (``perturb_``: logit_scale, norms and the CPB
meta-network included), are loaded through ``load_checkpoint`` in each layout, and must give the same
logits within 1e-5 in fp32.
"""

from __future__ import annotations

import functools
import math

import pytest
import torch
from conftest import perturb_
from test_checkpoint import timm_to_msra

from swinv2_serve import PRESETS, SwinV2Config, create_model, resolve_config
from swinv2_serve.checkpoint import load_checkpoint
from swinv2_serve.model import log_spaced_coords

timm = pytest.importorskip("timm")

TOL = 1e-5

# (timm name, overrides): the five Must-show cases; big ones run at batch 1.
CASES = {
    "tiny_window8_256": ("swinv2_tiny_window8_256", {}),
    "small_window16_256": ("swinv2_small_window16_256", {}),
    "base_window12to24_192to384": ("swinv2_base_window12to24_192to384", {}),
    "tiny_320_padding": ("swinv2_tiny_window8_256", {"img_size": 320, "window_size": 8}),  # timm keeps 8
    "tiny_512_window16_from_8": ("swinv2_tiny_window8_256", {"img_size": 512, "window_size": 16}),
}
SLOW = {"small_window16_256", "base_window12to24_192to384", "tiny_512_window16_from_8"}


def poison_(model: torch.nn.Module) -> torch.nn.Module:
    """NaN in every parameter: anything the loader misses turns the logits into NaN."""
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(float("nan"))
    return model


@functools.lru_cache(maxsize=1)  # one case in memory at a time; the layouts of a case run back to back
def reference(case: str) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor, dict, dict]:
    """(our model, input, timm logits, timm-native state dict, MSRA checkpoint) for one case."""
    name, overrides = CASES[case]
    ours = create_model(name, **overrides).eval()
    normaliser = tuple(h for h, _ in ours.cfg.cpb_normalisers)
    ref = timm.create_model(name, pretrained=False, pretrained_window_sizes=normaliser, **overrides).eval()
    perturb_(ref, seed=1)
    x = torch.randn(1, 3, *ours.cfg.img_size, generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        logits = ref(x)
    return ours, x, logits, ref.state_dict(), timm_to_msra(ref)


@pytest.mark.parametrize(
    ("case", "layout"),
    [pytest.param(c, lay, marks=[pytest.mark.slow] if c in SLOW else []) for c in CASES for lay in ("timm", "msra")],
)
def test_logits_equal_timm(case: str, layout: str) -> None:
    ours, x, expected, timm_sd, msra = reference(case)
    report = load_checkpoint(poison_(ours), timm_sd if layout == "timm" else msra)
    assert report.layout == layout
    with torch.inference_mode():
        diff = (ours(x) - expected).abs().max().item()
    print(f"{case} [{layout}]: max |diff| = {diff:.3g}")
    assert diff <= TOL


@pytest.mark.parametrize("pretrained", [None, (6, 6, 6, 2)], ids=["own-windows", "transfer-from-6"])
def test_logits_equal_transformers(pretrained: tuple[int, ...] | None) -> None:
    transformers = pytest.importorskip("transformers")
    hf_cfg = transformers.Swinv2Config(image_size=64, patch_size=4, embed_dim=32, depths=[2, 2, 2, 2],
                                       num_heads=[1, 2, 4, 8], window_size=4, num_labels=7,
                                       pretrained_window_sizes=list(pretrained or (0, 0, 0, 0)))
    hf = perturb_(transformers.Swinv2ForImageClassification(hf_cfg), seed=3).eval()
    cfg = SwinV2Config(name="hf_small", img_size=(64, 64), embed_dim=32, depths=(2, 2, 2, 2),
                       num_heads=(1, 2, 4, 8), window_size=(4, 4, 4, 4), num_classes=7,
                       pretrained_window_sizes=pretrained or (0, 0, 0, 0))
    ours = poison_(create_model(cfg)).eval()
    assert load_checkpoint(ours, hf.state_dict()).layout == "hf"
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(4))
    with torch.inference_mode():
        diff = (ours(x) - hf(pixel_values=x).logits).abs().max().item()
    print(f"transformers {hf_cfg.pretrained_window_sizes}: max |diff| = {diff:.3g}")
    assert diff <= TOL


# -- sizes ---------------------------------------------------------------------------------------
def _count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


TIMM_NAMES = sorted(set(PRESETS) & set(timm.list_models("swinv2_*")))


def test_parameter_counts_on_meta() -> None:
    """T/S/B/L equal timm's; H and G match the paper (658M, 3.0B, ImageNet-1k head) within 5%."""
    assert len(TIMM_NAMES) == 12
    with torch.device("meta"):
        for name in TIMM_NAMES:
            cfg = PRESETS[name]
            ref = timm.create_model(name, pretrained=False, num_classes=cfg.num_classes)
            assert _count(create_model(name)) == _count(ref), name
        huge = _count(create_model("swinv2_huge_window12_192", num_classes=1000))
        giant = _count(create_model("swinv2_giant_window12_192", num_classes=1000))
    assert abs(huge / 658e6 - 1) < 0.05, huge
    assert abs(giant / 3.0e9 - 1) < 0.05, giant


def test_main_norm_every_six_blocks_in_h_and_g() -> None:
    assert PRESETS["swinv2_huge_window12_192"].extra_norm_period == 6
    assert all(PRESETS[n].extra_norm_period == 0 for n in TIMM_NAMES)
    # G's depths (2, 2, 42, 4) and period with narrow stages, so it builds in a blink
    model = create_model("swinv2_giant_window12_192", embed_dim=8, num_heads=(1, 1, 1, 1), img_size=64)
    with_norm = [(i, j) for i, stage in enumerate(model.layers) for j, b in enumerate(stage.blocks)
                 if b.main_norm is not None]
    assert with_norm == [(2, j) for j in (5, 11, 17, 23, 29, 35, 41)]


# -- sequential self-attention ---------------------------------------------------------------------
def test_attn_chunk_windows_matches_all_at_once() -> None:
    # 72px: maps 18/9/5/3 -> padding in stages 0-2, shifted and unshifted blocks, 25/9/4 windows per image
    cfg = SwinV2Config(name="chunky", img_size=(72, 72), embed_dim=32, depths=(2, 2, 2, 2),
                       num_heads=(1, 2, 4, 8), window_size=(4, 4, 4, 4), num_classes=5)
    assert cfg.stage_shifts[:3] == ((2, 2),) * 3
    full = perturb_(create_model(cfg)).eval()
    x = torch.randn(2, 3, 72, 72, generator=torch.Generator().manual_seed(5))
    with torch.inference_mode():
        expected = full(x)
    for k in (1, 3, 7):
        chunked = create_model(cfg, attn_chunk_windows=k).eval()
        chunked.load_state_dict(full.state_dict())
        assert all(b.attn.chunk_windows == k for s in chunked.layers for b in s.blocks)
        with torch.inference_mode():
            diff = (chunked(x) - expected).abs().max().item()
        assert diff <= TOL, (k, diff)


# -- geometry, transfer, checks ----------------------------------------------------------------------
def test_window_shrinks_and_shift_drops_when_map_is_not_larger() -> None:
    cfg = PRESETS["swinv2_tiny_window16_256"]  # maps 64/32/16/8
    assert cfg.stage_windows == ((16, 16), (16, 16), (16, 16), (8, 8))
    assert cfg.stage_shifts == ((8, 8), (8, 8), (0, 0), (0, 0))
    model = create_model("swinv2_nano_window4_64", depths=(2, 2, 2, 2))  # maps 16/8/4/2 with window 4
    last = model.layers[3].blocks[0]
    assert last.window == (2, 2) and last.attn.relative_coords_table.shape == (9, 2)
    assert model.layers[2].blocks[1].shift == (0, 0) and model.layers[2].blocks[1].attn_mask is None
    assert model.layers[0].blocks[1].shift == (2, 2) and model.layers[0].blocks[1].attn_mask.shape == (16, 16, 16)
    assert model.layers[0].blocks[1].attn_mask.unique().tolist() == [-100.0, 0.0]


def test_transfer_keeps_the_trained_cpb_normaliser() -> None:
    tiny = resolve_config("swinv2_tiny_window8_256", img_size=512, window_size=16)
    assert tiny.stage_windows == ((16, 16),) * 4 and tiny.cpb_normalisers == ((8, 8),) * 4
    assert resolve_config("swinv2_base_window12to24_192to384").cpb_normalisers == ((12, 12),) * 3 + ((6, 6),)
    assert resolve_config("swinv2_tiny_window8_256", window_size=16,
                          pretrained_window_sizes=(4, 4, 4, 4)).cpb_normalisers == ((4, 4),) * 4
    model = create_model("swinv2_nano_window4_64", img_size=128, window_size=8)  # trained: windows 4/4/4/2
    assert model.cfg.stage_windows == ((8, 8), (8, 8), (8, 8), (4, 4))
    assert model.cfg.cpb_normalisers == ((4, 4), (4, 4), (4, 4), (2, 2))
    table = model.layers[0].blocks[0].attn.relative_coords_table
    assert torch.equal(table, log_spaced_coords((8, 8), (4, 4)))
    assert table.abs().max() > 1  # offsets beyond the trained window extrapolate past the trained range


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"img_size": 66}, r"not a multiple of the patch size 4"),
    ({"img_size": 16}, r"too small: swinv2_nano_window4_64 needs at least 32px"),
    ({"window_size": 32}, r"window_size 32 is larger than the first feature map \(16, 16\).*use at most 16"),
])
def test_bad_sizes_raise_useful_errors(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        create_model("swinv2_nano_window4_64", **kwargs)


def test_wrong_input_size_says_how_to_fix() -> None:
    with pytest.raises(ValueError, match=r"input is \(80, 80\), this model runs at \(64, 64\).*img_size=\(80, 80\)"):
        create_model("swinv2_nano_window4_64")(torch.randn(1, 3, 80, 80))


def test_drop_path_only_in_train_mode() -> None:
    model = perturb_(create_model("swinv2_nano_window4_64", drop_path_rate=0.5))
    x = torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(6))
    model.eval()
    with torch.no_grad():
        a, b = model(x), model(x)
        assert torch.equal(a, b)
        model.train()
        assert not torch.allclose(model(x), model(x))
        rates = [blk.drop_path.prob for s in model.layers for blk in s.blocks]
        assert rates[0] == 0.0 and math.isclose(rates[-1], 0.5)
        for blk in (blk for s in model.layers for blk in s.blocks):
            blk.drop_path.prob = 0.0  # no other randomness: train mode now equals eval
        assert torch.allclose(model(x), a, atol=1e-6)
