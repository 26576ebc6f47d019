"""``Preprocess`` against its peer, timm's eval transform, on the real photos.

timm's side is built the way timm users build it: the data config of the model's pretrained cfg
(``resolve_data_config``; the same dict as with an instantiated model, without building an 88M-parameter
network for it) and ``create_transform``: Resize(shorter side = floor(img / crop_pct), bicubic) ->
CenterCrop -> ToTensor -> Normalize. The photo goes to timm the way timm's ``ImageDataset`` loads it
(``Image.open(path).convert("RGB")``); ours starts from the path.

Bound: both sides resize with the same Pillow call and then compute ``(x / 255 - mean) / std`` in float32, so
the tensors are expected to be identical (0.0 measured on every photo here). The assertion allows 1e-6, a
few float32 ulps at these magnitudes (|x| <= 2.7), which leaves room for a library computing x / 255 as
x * (1 / 255); one grey level of difference anywhere is 1 / 255 / 0.229 = 0.017, far above it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from swinv2_serve.config import resolve_config
from swinv2_serve.preprocess import Preprocess, image_files

timm_data = pytest.importorskip("timm.data")
timm_models = pytest.importorskip("timm.models")

BOUND = 1e-6
MODELS = {  # name -> what timm's cfg says (crop_pct, interpolation), asserted so the peer is the one we mean
    "swinv2_tiny_window8_256": (0.9, "bicubic"),
    "swinv2_base_window12to24_192to384": (1.0, "bicubic"),
}


def timm_eval_transform(name: str):  # noqa: ANN201
    pretrained_cfg = timm_models.get_pretrained_cfg(name).to_dict()
    data_cfg = timm_data.resolve_data_config(pretrained_cfg=pretrained_cfg)
    assert (data_cfg["crop_pct"], data_cfg["interpolation"]) == MODELS[name]
    return timm_data.create_transform(**data_cfg, is_training=False)


def mode_of(path: Path) -> str:
    with Image.open(path) as image:
        return image.mode


@pytest.fixture(scope="module")
def photos(images_dir: Path) -> list[Path]:
    found = [p for p in image_files(images_dir, recursive=False) if not p.name.startswith("bad_")]
    modes = {mode_of(p) for p in found}
    assert {"RGB", "L", "RGBA"} <= modes, f"expected RGB, grayscale and RGBA photos in {images_dir}, got {modes}"
    return found


def max_abs_diff(ours: np.ndarray, theirs: np.ndarray) -> float:
    assert ours.shape == theirs.shape and ours.dtype == theirs.dtype == np.float32
    return float(np.abs(ours - theirs).max())


@pytest.mark.parametrize("name", list(MODELS))
def test_matches_timm_eval_transform_on_photos(name: str, photos: list[Path]) -> None:
    ours = Preprocess.from_config(resolve_config(name))
    theirs = timm_eval_transform(name)
    diffs = {}
    for path in photos:
        with Image.open(path) as image:
            peer = theirs(image.convert("RGB")).numpy()
        diffs[f"{path.name} ({mode_of(path)})"] = max_abs_diff(ours(path), peer)
    print(f"{name}: max |ours - timm| per photo: {diffs}")
    assert max(diffs.values()) <= BOUND, diffs


def test_transparent_rgba_is_composited_on_white_then_transformed_like_timm(photos: list[Path]) -> None:
    """The RGBA photo is opaque (alpha 255 everywhere), so it shows only the RGBA decode. With real transparency
    our choice is to composite onto white (timm's loader would drop alpha instead); the transform after that
    must still be timm's."""
    name = "swinv2_tiny_window8_256"
    with Image.open(next(p for p in photos if mode_of(p) == "RGBA")) as image:
        rgba = image.convert("RGBA")
    ramp = np.linspace(0, 255, rgba.width, dtype=np.float32).round().astype(np.uint8)
    rgba.putalpha(Image.fromarray(np.tile(ramp, (rgba.height, 1))))  # transparent left, opaque right
    on_white = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
    ours = Preprocess.from_config(resolve_config(name))(rgba)
    assert max_abs_diff(ours, timm_eval_transform(name)(on_white).numpy()) <= BOUND
    dropped = timm_eval_transform(name)(rgba.convert("RGB")).numpy()
    assert max_abs_diff(ours, dropped) > 0.1  # the ramp really changed the picture: the check above means something


def test_non_square_target_matches_timm(photos: list[Path]) -> None:
    cfg = resolve_config("swinv2_tiny_window8_256", img_size=(256, 320))
    theirs = timm_data.create_transform(input_size=(3, *cfg.img_size), crop_pct=cfg.crop_pct,
                                        interpolation=cfg.interpolation, mean=cfg.mean, std=cfg.std)
    ours = Preprocess.from_config(cfg)
    for path in photos:  # landscape and portrait photos: the aspect ratio is kept, the rest cropped
        with Image.open(path) as image:
            assert max_abs_diff(ours(path), theirs(image.convert("RGB")).numpy()) <= BOUND, path.name
