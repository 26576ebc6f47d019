"""The single image -> tensor path, used by the client, the server's preprocessing model and training eval.

It reproduces timm's eval transform for a pretrained cfg (resize the shorter side to
``floor(img_size / crop_pct)`` with the cfg's interpolation, centre crop, scale to [0, 1], normalise)
with Pillow and numpy only, so a client needs no torch. Decoding is defensive: anything that is not a
complete, reasonably sized image becomes an ``ImageDecodeError`` that says why.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, ImageOps

from .config import SwinV2Config
from .contract import ExportMetadata
from .errors import ImageDecodeError

ImageLike = str | os.PathLike | bytes | bytearray | memoryview | Image.Image | np.ndarray

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff", ".ppm", ".pgm")
MAX_IMAGE_PIXELS = 64_000_000  # ~8000 x 8000: beyond that we refuse to decode (decompression bombs)
ImageFile.LOAD_TRUNCATED_IMAGES = False

RESAMPLE = {
    "bicubic": Image.Resampling.BICUBIC,
    "bilinear": Image.Resampling.BILINEAR,
    "nearest": Image.Resampling.NEAREST,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
}


def image_files(folder: str | os.PathLike, recursive: bool = True) -> list[Path]:
    """Image files under ``folder`` (by extension; nothing is decoded), sorted."""
    candidates = Path(folder).rglob("*") if recursive else Path(folder).iterdir()
    return sorted(p for p in candidates if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def _decode(data: bytes, what: str) -> Image.Image:
    if not data:
        raise ImageDecodeError(f"{what}: empty input, expected encoded JPEG/PNG bytes")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            w, h = image.size
            if w * h > MAX_IMAGE_PIXELS:
                raise ImageDecodeError(
                    f"{what}: declared size {w}x{h} exceeds the {MAX_IMAGE_PIXELS:,} pixel limit; downscale it first"
                )
            image.load()  # decode now: truncated data fails here, not later
    except ImageDecodeError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageDecodeError(f"{what}: refused, image too large ({exc})") from None
    except Image.UnidentifiedImageError:
        raise ImageDecodeError(f"{what}: not a recognised image format (expected JPEG, PNG, WebP, BMP ...)") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageDecodeError(f"{what}: corrupt or truncated image ({exc})") from None
    return image


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode -> RGB. Transparency is composited onto white; EXIF orientation is applied."""
    with contextlib.suppress(Exception):  # a broken EXIF block should not lose the image
        image = ImageOps.exif_transpose(image)
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if image.mode == "I;16" or image.mode.startswith("I;16"):
        array = np.asarray(image, dtype=np.float32) / 257.0
        image = Image.fromarray(array.clip(0, 255).astype(np.uint8), mode="L")
    elif image.mode in ("I", "F"):
        array = np.asarray(image, dtype=np.float32)
        lo, hi = float(array.min()), float(array.max())
        array = (array - lo) / (hi - lo or 1.0) * 255.0
        image = Image.fromarray(array.astype(np.uint8), mode="L")
    return image.convert("RGB") if image.mode != "RGB" else image


def load_image(source: ImageLike) -> Image.Image:
    """Path, encoded bytes, PIL image or HWC/HW uint8 array -> RGB PIL image."""
    if isinstance(source, Image.Image):
        return to_rgb(source)
    if isinstance(source, np.ndarray):
        return to_rgb(_array_to_image(source))
    if isinstance(source, (bytes, bytearray, memoryview)):
        return to_rgb(_decode(bytes(source), "image bytes"))
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        if not os.path.isfile(path):
            raise ImageDecodeError(f"{path}: no such file")
        with open(path, "rb") as f:
            return to_rgb(_decode(f.read(), path))
    raise ImageDecodeError(f"cannot read an image from {type(source).__name__}; pass a path, bytes, PIL image or array")


def _array_to_image(array: np.ndarray) -> Image.Image:
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3 or array.shape[2] not in (1, 3, 4):
        raise ImageDecodeError(f"array images must be HxW or HxWxC with C in (1, 3, 4), got shape {array.shape}")
    if array.dtype != np.uint8:
        if np.issubdtype(array.dtype, np.floating) and array.size and array.min() >= 0.0 and array.max() <= 1.0:
            array = (array * 255.0).round()
        array = array.clip(0, 255).astype(np.uint8)
    mode = {1: "L", 3: "RGB", 4: "RGBA"}[array.shape[2]]
    return Image.fromarray(array[:, :, 0] if mode == "L" else array, mode=mode)


@dataclass(frozen=True)
class Preprocess:
    """timm-style eval transform: resize shorter side to img/crop_pct, centre crop, normalise. CHW float32."""

    img_size: tuple[int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str
    crop_pct: float

    def __post_init__(self) -> None:
        if self.interpolation not in RESAMPLE:
            raise ValueError(f"unknown interpolation {self.interpolation!r}; one of {sorted(RESAMPLE)}")
        if not 0.0 < self.crop_pct <= 1.0:
            raise ValueError(f"crop_pct must be in (0, 1], got {self.crop_pct}")

    @classmethod
    def from_metadata(cls, meta: ExportMetadata) -> Preprocess:
        """The transform an exported model (or one of our checkpoints) describes in its metadata."""
        return cls(img_size=meta.img_size, mean=meta.mean, std=meta.std, interpolation=meta.interpolation,
                   crop_pct=meta.crop_pct)

    @classmethod
    def from_config(cls, cfg: SwinV2Config) -> Preprocess:
        """The transform of a ``SwinV2Config`` (the same numbers its exports carry)."""
        return cls.from_metadata(cfg.metadata())

    @property
    def resize_size(self) -> tuple[int, int]:
        return (math.floor(self.img_size[0] / self.crop_pct), math.floor(self.img_size[1] / self.crop_pct))

    def resize_and_crop(self, image: Image.Image) -> Image.Image:
        resample = RESAMPLE[self.interpolation]
        th, tw = self.resize_size
        w, h = image.size
        if th == tw:  # square target: keep the aspect ratio, shorter side -> th (as torchvision's Resize(int))
            if w <= h:
                new_w, new_h = th, int(th * h / w)
            else:
                new_w, new_h = int(th * w / h), th
        else:  # non-square: keep the aspect ratio, cover the target, crop the rest (timm's ResizeKeepRatio)
            ratio = min(h / th, w / tw)
            new_w, new_h = round(w / ratio), round(h / ratio)
        if (new_w, new_h) != (w, h):
            image = image.resize((new_w, new_h), resample)
        ch, cw = self.img_size
        if new_w < cw or new_h < ch:  # only with crop_pct > 1 in principle; pad like torchvision would fail
            image = image.resize((max(new_w, cw), max(new_h, ch)), resample)
            new_w, new_h = image.size
        top = int(round((new_h - ch) / 2.0))
        left = int(round((new_w - cw) / 2.0))
        return image.crop((left, top, left + cw, top + ch))

    def __call__(self, source: ImageLike) -> np.ndarray:
        """One image -> float32 [3, H, W], normalised."""
        image = self.resize_and_crop(load_image(source))
        array = np.asarray(image, dtype=np.float32) / 255.0
        array = (array - np.asarray(self.mean, dtype=np.float32)) / np.asarray(self.std, dtype=np.float32)
        return np.ascontiguousarray(array.transpose(2, 0, 1))

    def batch_readable(self, paths: Iterable[Path]) -> tuple[np.ndarray, list[str]]:
        """Files -> float32 [B, 3, H, W] of those that decode, and "name: reason" for those that do not."""
        arrays, unreadable = [], []
        for path in paths:
            try:
                arrays.append(self(path))
            except ImageDecodeError as exc:
                unreadable.append(f"{Path(path).name}: {exc}")
        stacked = np.stack(arrays) if arrays else np.zeros((0, 3, *self.img_size), dtype=np.float32)
        return stacked, unreadable

    def batch(self, sources: Iterable[ImageLike]) -> np.ndarray:
        """Several images -> float32 [B, 3, H, W]."""
        arrays = [self(s) for s in sources]
        if not arrays:
            return np.zeros((0, 3, *self.img_size), dtype=np.float32)
        return np.stack(arrays)
