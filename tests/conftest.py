"""Shared fixtures: real photos from ../shared/images and small configs for fast tests."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
IMAGES = Path(os.environ.get("SWINV2_SERVE_IMAGES", REPO.parent / "shared" / "images"))
GOOD_IMAGES = ["astronaut.jpg", "cat.jpg", "coffee.jpg", "rocket.jpg", "hubble.jpg", "motorcycle.png",
               "camera_gray.png", "logo_rgba.png"]
BAD_IMAGES = ["bad_truncated.jpg", "bad_not_an_image.jpg"]


@pytest.fixture(scope="session")
def images_dir() -> Path:
    if not IMAGES.is_dir():
        pytest.skip(f"test photos not found at {IMAGES} (set SWINV2_SERVE_IMAGES)")
    return IMAGES


@pytest.fixture(scope="session")
def photo_paths(images_dir: Path) -> list[Path]:
    return [images_dir / name for name in GOOD_IMAGES]


def perturb_(model: torch.nn.Module, scale: float = 0.05, seed: int = 0) -> torch.nn.Module:
    """Move every parameter off its init (incl. logit_scale, norms, CPB) so comparisons mean something."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * scale)
    return model


@pytest.fixture(autouse=True)
def _deterministic() -> None:
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def digits_demo_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`swinv2-serve train --demo digits` run once per session (a real training, ~2 min on 2 cores): its
    output folder (checkpoint.pt, metrics.json, holdout/). Slow tests that need a trained model share it."""
    from swinv2_serve.cli import main as cli_main

    output = tmp_path_factory.mktemp("digits_demo")
    assert cli_main(["train", "--demo", "digits", "--output", str(output), "--no-progress"]) == 0
    return output
