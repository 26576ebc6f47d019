"""Training module: fine-tuning, resume, optimizer groups, bad data, SimMIM, DDP/ZeRO and the digits demo.

Data: real scikit-learn digits written as PNG class folders, plus the broken files from ../shared/images.
Everything runs the nano preset on CPU; the full digits demo is ``slow``.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from PIL import Image

from swinv2_serve import create_model, load_model
from swinv2_serve.checkpoint import save_checkpoint
from swinv2_serve.cli import main as cli_main
from swinv2_serve.errors import CheckpointError
from swinv2_serve.server import free_ports
from swinv2_serve.train import TrainConfig, run_finetune
from swinv2_serve.train.data import DatasetError, load_splits
from swinv2_serve.train.digits import digit_images, run_digits_demo
from swinv2_serve.train.distributed import DistInfo
from swinv2_serve.train.finetune import fit
from swinv2_serve.train.optim import param_groups
from swinv2_serve.train.simmim import SimMIMConfig, run_simmim

NANO = "swinv2_nano_window4_64"


def _write_digits(root: Path, classes: tuple[int, ...] = (0, 1, 2), per_class: int = 12) -> Path:
    images, labels = digit_images(64)
    for c in classes:
        folder = root / str(c)
        folder.mkdir(parents=True, exist_ok=True)
        for n, i in enumerate(np.flatnonzero(labels == c)[:per_class]):
            Image.fromarray(images[i]).save(folder / f"{n}.png")
    return root


@pytest.fixture(scope="module")
def digits_dir(tmp_path_factory: pytest.TempPathFactory, images_dir: Path) -> Path:
    """3 digit classes x 12 PNGs, plus a truncated JPEG and a non-image posing as images of class 0."""
    root = _write_digits(tmp_path_factory.mktemp("digits"))
    for name in ("bad_truncated.jpg", "bad_not_an_image.jpg"):
        shutil.copy(images_dir / name, root / "0" / name)
    return root


def _cfg(output: Path, data: Path | None = None, **kw: object) -> TrainConfig:
    base = dict(model=NANO, epochs=2, batch_size=8, lr=2e-3, warmup_epochs=0.0, hflip=0.0, crop_scale=(0.6, 1.0),
                workers=0, threads=1, progress=False, val_fraction=0.25)
    base.update(kw)
    return TrainConfig(output=output, data=data, **base)


# -- fine-tuning -------------------------------------------------------------------------------------
def test_finetune_learns_skips_bad_images_and_round_trips(digits_dir: Path, tmp_path: Path) -> None:
    metrics = run_finetune(_cfg(tmp_path, digits_dir, epochs=4))
    log = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2, 3, 4]
    assert log[-1]["train_loss"] < log[0]["train_loss"]
    # the two broken files sit in class 0: every epoch skips both, in the train or the val split
    assert all(r["skipped_images"] + r["val_skipped"] == 2 for r in log)
    assert metrics["val_top1"] == log[-1]["val_top1"] and metrics["val_top1"] > 1 / 3
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["val_top1"] == metrics["val_top1"]
    # the checkpoint describes itself and reproduces the logits
    model = load_model(tmp_path / "checkpoint.pt")
    assert model.cfg.labels == ("0", "1", "2")
    state = torch.load(tmp_path / "last.pt", weights_only=True)
    reference = create_model(NANO, num_classes=3).eval()
    reference.load_state_dict(state["model"])
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x), reference(x))


def test_all_options_together_run(digits_dir: Path, tmp_path: Path) -> None:
    """mixup + cutmix, bf16 autocast, accumulation, activation checkpointing, EMA, layer decay: one epoch."""
    metrics = run_finetune(_cfg(tmp_path, digits_dir, epochs=1, mixup=0.8, cutmix=1.0, amp="bf16", accum_steps=2,
                                grad_checkpointing=True, ema=0.9, layer_decay=0.8, label_smoothing=0.1))
    assert metrics["weights"] == "ema" and np.isfinite(metrics["val_loss"])
    assert load_model(tmp_path / "checkpoint.pt").num_classes == 3


def test_resume_continues_exactly(digits_dir: Path, tmp_path: Path) -> None:
    train, val = load_splits(digits_dir, val_fraction=0.25)
    labels = train.classes

    def run(out: Path, **kw: object) -> torch.nn.Module:
        torch.manual_seed(0)
        model = create_model(NANO, num_classes=3)
        fitted, _ = fit(model, train.samples, val.samples, labels, _cfg(out, epochs=2, **kw), DistInfo())
        return fitted

    straight = run(tmp_path / "a")
    run(tmp_path / "b", stop_after_epoch=1)
    assert torch.load(tmp_path / "b" / "last.pt", weights_only=True)["epoch"] == 1
    resumed = run(tmp_path / "b", resume=True)
    for (name, p), q in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(p, q), name
    log = [json.loads(line) for line in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2]


def test_param_groups_no_decay_and_layer_decay() -> None:
    model = create_model(NANO)
    groups = param_groups(model, lr=1.0, weight_decay=0.05, layer_decay=0.5)
    decayed = {n for g in groups if g["weight_decay"] > 0 for n in g["names"]}
    undecayed = {n for g in groups if g["weight_decay"] == 0 for n in g["names"]}
    assert undecayed == model.no_weight_decay_names()
    assert any("logit_scale" in n for n in undecayed) and any("cpb_mlp" in n for n in undecayed)
    assert not any(n.endswith(".bias") or "norm" in n for n in decayed)
    lr = {n: g["lr"] for g in groups for n in g["names"]}
    assert lr["head.fc.weight"] == 1.0
    top = sum(model.cfg.depths) + 1
    assert lr["patch_embed.proj.weight"] == 0.5**top
    assert lr["patch_embed.proj.weight"] < lr["layers.0.blocks.0.attn.qkv.weight"] < lr[
        "layers.3.blocks.0.attn.qkv.weight"] < lr["head.fc.weight"]


# -- bad input ---------------------------------------------------------------------------------------
def test_data_dir_errors(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="does not exist"):
        load_splits(tmp_path / "missing")
    (tmp_path / "empty" / "a").mkdir(parents=True)
    with pytest.raises(DatasetError, match="no images"):
        load_splits(tmp_path / "empty")
    one = _write_digits(tmp_path / "one", classes=(7,), per_class=3)
    with pytest.raises(DatasetError, match="at least 2"):
        load_splits(one)
    code = cli_main(["train", "--model", NANO, "--data", str(tmp_path / "missing"), "--output", str(tmp_path / "o")])
    assert code == 2


def test_wrong_variant_checkpoint_is_a_clear_error(digits_dir: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    ckpt = save_checkpoint(create_model(NANO, num_classes=3), tmp_path / "nano.pt", labels=["0", "1", "2"])
    wrong = create_model("swinv2_tiny_window8_256", img_size=64, window_size=4, num_classes=3)
    with pytest.raises(CheckpointError):
        from swinv2_serve.checkpoint import load_checkpoint

        load_checkpoint(wrong, ckpt)
    code = cli_main(["train", "--model", "swinv2_tiny_window8_256", "--img-size", "64", "--checkpoint", str(ckpt),
                     "--data", str(digits_dir), "--output", str(tmp_path / "o"), "--no-progress"])
    assert code == 2
    assert "error" in capsys.readouterr().err
    # a class-count change without --new-head is refused, with the flag it trains
    ten = save_checkpoint(create_model(NANO), tmp_path / "ten.pt")
    with pytest.raises(CheckpointError, match="new-head"):
        run_finetune(_cfg(tmp_path / "p", digits_dir, checkpoint=ten, model=None))


# -- SimMIM ------------------------------------------------------------------------------------------
def test_simmim_loss_decreases_and_checkpoint_finetunes(digits_dir: Path, tmp_path: Path) -> None:
    pre = tmp_path / "pre"
    metrics = run_simmim(_cfg(pre, digits_dir, epochs=6, batch_size=12, lr=3e-3, weight_decay=0.05),
                         SimMIMConfig(mask_ratio=0.6))
    curve = metrics["loss_curve"]
    assert metrics["simmim"]["mask_patch_size"] == 8
    assert curve[-1] < 0.8 * curve[0], curve
    encoder = load_model(pre / "checkpoint.pt")
    assert encoder.num_classes == 0
    ft = run_finetune(_cfg(tmp_path / "ft", digits_dir, epochs=1, checkpoint=pre / "checkpoint.pt",
                           new_head=True))
    tuned = load_model(tmp_path / "ft" / "checkpoint.pt")
    assert tuned.num_classes == 3 and ft["epochs"] == 1
    # the encoder weights were the starting point (small LR, one epoch: still close to them)
    start = encoder.state_dict()["patch_embed.proj.weight"]
    assert torch.allclose(tuned.state_dict()["patch_embed.proj.weight"], start, atol=0.05)


# -- DDP ---------------------------------------------------------------------------------------------
def _ddp_worker(rank: int, world: int, port: int, data: str, out: str, zero: bool) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    from swinv2_serve.train import distributed as D

    info = D.init_distributed("cpu")
    try:
        torch.set_num_threads(1)
        torch.manual_seed(rank)  # different init per rank: DDP must broadcast rank 0's weights
        train, val = load_splits(data, val_fraction=0.25)
        model = create_model(NANO, num_classes=3)
        cfg = _cfg(Path(out), epochs=1, batch_size=6, zero=zero, seed=0)
        fitted, _ = fit(model, train.samples, val.samples, train.classes, cfg, info)
        torch.save(fitted.state_dict(), Path(out) / f"rank{rank}.pt")
    finally:
        D.cleanup()


@pytest.mark.parametrize("zero", [False, True], ids=["ddp", "ddp-zero"])
def test_ddp_two_gloo_processes_agree(digits_dir: Path, tmp_path: Path, zero: bool) -> None:
    mp.spawn(_ddp_worker, args=(2, free_ports(1)[0], str(digits_dir), str(tmp_path), zero), nprocs=2, join=True)
    a = torch.load(tmp_path / "rank0.pt", weights_only=True)
    b = torch.load(tmp_path / "rank1.pt", weights_only=True)
    init = create_model(NANO, num_classes=3).state_dict()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    assert not torch.equal(a["head.fc.weight"], init["head.fc.weight"])  # it trained
    assert json.loads((tmp_path / "metrics.json").read_text())["world_size"] == 2


# -- the digits demo ---------------------------------------------------------------------------------
def test_digits_demo_writes_its_files(tmp_path: Path) -> None:
    metrics = run_digits_demo(tmp_path, epochs=1, progress=False)
    assert (tmp_path / "checkpoint.pt").is_file()
    assert json.loads((tmp_path / "metrics.json").read_text())["val_top1"] == metrics["val_top1"]
    assert sorted(p.name for p in (tmp_path / "holdout").iterdir()) == [str(d) for d in range(10)]
    assert len(list((tmp_path / "holdout").rglob("*.png"))) == 50
    model = load_model(tmp_path / "checkpoint.pt")
    assert model.cfg.labels == tuple(str(d) for d in range(10))
    # the trained checkpoint feeds the export chain: ONNX Runtime agrees with it on the held-out PNG files
    ort = pytest.importorskip("onnxruntime")
    from swinv2_serve import Preprocess, export_onnx

    export_onnx(model, tmp_path / "digits.onnx")
    files = sorted((tmp_path / "holdout").rglob("*.png"))[::5]
    batch = Preprocess.from_config(model.cfg).batch(files)
    session = ort.InferenceSession(str(tmp_path / "digits.onnx"), providers=["CPUExecutionProvider"])
    onnx_logits = session.run(["logits"], {"input": batch})[0]
    with torch.no_grad():
        eager = model(torch.from_numpy(batch)).numpy()
    np.testing.assert_allclose(onnx_logits, eager, atol=1e-4, rtol=1e-4)
    assert (onnx_logits.argmax(1) == eager.argmax(1)).all()


@pytest.mark.slow
def test_digits_demo_reaches_target(digits_demo_run: Path) -> None:
    metrics = json.loads((digits_demo_run / "metrics.json").read_text())
    assert metrics["val_top1"] >= 0.9, metrics
