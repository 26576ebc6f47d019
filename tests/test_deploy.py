"""to_deploy(): the re-parameterised model computes what the train-time model computes."""

from __future__ import annotations

import pytest
import torch
from conftest import perturb_

from swinv2_serve import create_model
from swinv2_serve.deploy import DeployAttention, merge_index, to_deploy, transition_index, window_order


def _max_diff(a: torch.nn.Module, b: torch.nn.Module, x: torch.Tensor) -> float:
    with torch.no_grad():
        return (a(x) - b(x)).abs().max().item()


@pytest.mark.parametrize(
    ("img_size", "dense_limit"),
    # 72: padding in blocks and in patch merging; 72/96 have shifted blocks (stage 3), 64 has none
    [(64, None), (72, None), (96, None), (64, 0), (72, 0), (96, 0)],
)
def test_deploy_equals_eager(img_size: int, dense_limit: int | None) -> None:
    model = perturb_(create_model("swinv2_nano_window4_64", img_size=img_size, window_size=4)).eval()
    kwargs = {} if dense_limit is None else {"dense_limit": dense_limit}
    deploy = to_deploy(model, **kwargs)
    x = torch.randn(3, 3, img_size, img_size)
    assert _max_diff(model, deploy, x) < 1e-5
    modes = {(m.mode, m.mask_mode) for m in deploy.modules() if isinstance(m, DeployAttention)}
    if dense_limit == 0:  # everything compact: tables + index, masks as region labels
        assert {mode for mode, _ in modes} == {"compact"}
        assert ("compact", "labels") in modes or img_size == 64
    elif img_size != 64:
        assert ("dense_masked", "none") in modes


def test_deploy_drops_cpb_and_train_time_parts() -> None:
    model = create_model("swinv2_nano_window4_64")
    deploy = to_deploy(model)
    names = [n for n, _ in deploy.named_parameters()] + [n for n, _ in deploy.named_buffers()]
    assert not any("cpb_mlp" in n or "logit_scale" in n or "relative_coords_table" in n for n in names)
    assert not any(isinstance(m, torch.nn.ReLU) for m in deploy.modules())
    # the source model is untouched and still trainable
    assert any("cpb_mlp" in n for n, _ in model.named_parameters())
    with torch.no_grad():
        deploy.head.weight.zero_()
    assert model.head.fc.weight.abs().sum() > 0


def test_deploy_transfer_equals_train_time_model_at_new_size() -> None:
    """to_deploy(img_size, window_size) == create_model at that geometry with the same weights (log-CPB transfer)."""
    base = perturb_(create_model("swinv2_nano_window4_64")).eval()
    deploy = to_deploy(base, img_size=128, window_size=8)
    target = create_model("swinv2_nano_window4_64", img_size=128, window_size=8).eval()
    target.load_state_dict(base.state_dict())
    assert target.cfg.pretrained_window_sizes == (4, 4, 4, 2)  # the trained windows stay the CPB normaliser
    assert _max_diff(target, deploy, torch.randn(2, 3, 128, 128)) < 1e-5


@pytest.mark.slow
def test_deploy_equals_eager_tiny_real_size() -> None:
    model = perturb_(create_model("swinv2_tiny_window8_256", img_size=320, window_size=8)).eval()  # padded stages
    assert _max_diff(model, to_deploy(model), torch.randn(2, 3, 320, 320)) < 1e-5


def test_window_order_and_transitions_are_permutations() -> None:
    order = window_order((6, 6), (4, 4), (2, 2))  # padded to 8x8: 28 padding slots
    assert len(order) == 64
    real = order[order >= 0]
    assert sorted(real.tolist()) == list(range(36))
    # unshifted -> shifted: every real token is read exactly once, padding reads the zero row
    src = window_order((6, 6), (4, 4), (0, 0))
    index = transition_index(src, order)
    assert (index[order < 0] == len(src)).all()
    assert sorted(src[index[order >= 0]].tolist()) == list(range(36))
    merge = merge_index(src, (6, 6))
    assert merge.shape == (9, 4)
    assert src[merge[0, 1]].item() == 6  # (y=1, x=0) is the second neighbour of output (0, 0)


def test_large_tables_are_stored_compactly() -> None:
    """A big window keeps the compact table + index instead of a dense [heads, N, N] per block."""
    model = create_model("swinv2_nano_window4_64", img_size=256, window_size=48)  # N = 2304
    deploy = to_deploy(model)
    size = sum(b.numel() * b.element_size() for b in deploy.buffers())
    first = next(m for m in deploy.modules() if isinstance(m, DeployAttention))
    assert first.mode == "compact"
    assert size < 64 * 2**20, f"deploy buffers take {size / 2**20:.0f} MiB"
