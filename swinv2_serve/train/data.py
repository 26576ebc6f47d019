"""Image-classification data: an ImageFolder scan, train augmentation, and the package's eval preprocessing.

Eval goes through :class:`swinv2_serve.preprocess.Preprocess` (the same path as the client and the
server); training uses a random resized crop and a horizontal flip on top of the same decoding and
normalisation. Augmentation randomness is drawn from a generator seeded by ``(seed, epoch, index)``, so an
epoch is reproducible whatever the number of loader workers or processes (this is what makes resume
exact). An unreadable image never stops an epoch: the sample comes back marked bad, the collate function
drops it and the trainer counts it.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..errors import DatasetError, ImageDecodeError
from ..preprocess import IMAGE_EXTENSIONS, RESAMPLE, ImageLike, Preprocess, image_files, load_image


# -- scanning ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ImageFolderSplit:
    """(source, class index) samples plus the class names, in index order."""

    samples: list[tuple[ImageLike, int]]
    classes: tuple[str, ...]


def scan_image_folder(root: str | Path, classes: Sequence[str] | None = None) -> ImageFolderSplit:
    """``root/<class>/**/<image>`` -> samples. ``classes`` fixes the label order (a val split uses train's)."""
    root = Path(root)
    if not root.exists():
        raise DatasetError(f"data directory {root} does not exist")
    if not root.is_dir():
        raise DatasetError(f"data path {root} is not a directory (expected one sub-folder per class)")
    found = {d.name: image_files(d) for d in sorted(root.iterdir()) if d.is_dir() and not d.name.startswith(".")}
    found = {name: files for name, files in found.items() if files}
    if classes is None:
        if not found:
            raise DatasetError(
                f"no images found under {root}: expected one sub-folder per class holding "
                f"{', '.join(IMAGE_EXTENSIONS[:3])} ... files"
            )
        if len(found) < 2:
            raise DatasetError(
                f"{root} holds images of only one class ({next(iter(found))!r}); a classifier needs at least 2 "
                "class sub-folders"
            )
        classes = tuple(found)
    unknown = sorted(set(found) - set(classes))
    if unknown:
        raise DatasetError(f"{root} has class folders the training split does not: {unknown}")
    index = {name: i for i, name in enumerate(classes)}
    samples: list[tuple[ImageLike, int]] = [(p, index[name]) for name, files in found.items() for p in files]
    if not samples:
        raise DatasetError(f"no images found under {root}")
    return ImageFolderSplit(samples, tuple(classes))


def stratified_split(
    samples: Sequence[tuple[ImageLike, int]], val_fraction: float, seed: int
) -> tuple[list[tuple[ImageLike, int]], list[tuple[ImageLike, int]]]:
    """Split per class so every class keeps at least one training sample (and gets a val sample if it can)."""
    if not 0.0 < val_fraction < 1.0:
        raise DatasetError(f"val fraction must be in (0, 1), got {val_fraction}")
    by_class: dict[int, list[tuple[ImageLike, int]]] = {}
    for sample in samples:
        by_class.setdefault(sample[1], []).append(sample)
    rng = random.Random(seed)
    train, val = [], []
    for label in sorted(by_class):
        items = list(by_class[label])
        rng.shuffle(items)
        n_val = min(len(items) - 1, max(1, round(len(items) * val_fraction))) if len(items) > 1 else 0
        val.extend(items[:n_val])
        train.extend(items[n_val:])
    return train, val


def load_splits(data: str | Path, *, val_fraction: float = 0.1, seed: int = 0) -> tuple[
    ImageFolderSplit, ImageFolderSplit
]:
    """``DIR/train`` + ``DIR/val`` when both exist, otherwise a stratified split of ``DIR`` itself."""
    data = Path(data)
    if (data / "train").is_dir() and (data / "val").is_dir():
        train = scan_image_folder(data / "train")
        return train, scan_image_folder(data / "val", classes=train.classes)
    full = scan_image_folder(data)
    train, val = stratified_split(full.samples, val_fraction, seed)
    if not val:
        raise DatasetError(f"{data} is too small to hold out a validation split; add images or a val/ folder")
    return ImageFolderSplit(train, full.classes), ImageFolderSplit(val, full.classes)


# -- transforms --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TrainTransform:
    """Random resized crop + optional horizontal flip, then the eval path's scaling and normalisation."""

    img_size: tuple[int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bicubic"
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    hflip: float = 0.5

    @classmethod
    def from_config(cls, cfg: Any, **kw: Any) -> TrainTransform:
        return cls(img_size=tuple(cfg.img_size), mean=tuple(cfg.mean), std=tuple(cfg.std),
                   interpolation=cfg.interpolation, **kw)

    def crop_box(self, width: int, height: int, gen: torch.Generator) -> tuple[int, int, int, int]:
        """(left, top, right, bottom) of a random area/aspect crop; falls back to the centre (torchvision-like)."""
        area = width * height
        log_ratio = (math.log(self.ratio[0]), math.log(self.ratio[1]))
        for _ in range(10):
            u = torch.rand(3, generator=gen).tolist()
            target = area * (self.scale[0] + u[0] * (self.scale[1] - self.scale[0]))
            aspect = math.exp(log_ratio[0] + u[1] * (log_ratio[1] - log_ratio[0]))
            w = round(math.sqrt(target * aspect))
            h = round(math.sqrt(target / aspect))
            if 0 < w <= width and 0 < h <= height:
                left = int(torch.randint(0, width - w + 1, (1,), generator=gen))
                top = int(torch.randint(0, height - h + 1, (1,), generator=gen))
                return left, top, left + w, top + h
        side = min(width, height)
        left, top = (width - side) // 2, (height - side) // 2
        return left, top, left + side, top + side

    def __call__(self, source: ImageLike, gen: torch.Generator) -> np.ndarray:
        image = load_image(source)
        box = self.crop_box(*image.size, gen)
        image = image.resize((self.img_size[1], self.img_size[0]), RESAMPLE[self.interpolation], box=box)
        if self.hflip > 0 and float(torch.rand(1, generator=gen)) < self.hflip:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        array = np.asarray(image, dtype=np.float32) / 255.0
        array = (array - np.asarray(self.mean, dtype=np.float32)) / np.asarray(self.std, dtype=np.float32)
        return np.ascontiguousarray(array.transpose(2, 0, 1))


# -- datasets ----------------------------------------------------------------------------------------
class ImageDataset(torch.utils.data.Dataset):
    """(source, label) samples through a train or eval transform; unreadable samples come back as ``None``.

    ``source`` is anything :func:`load_image` reads: a path, encoded bytes, a PIL image or a uint8 array
    (the digits demo holds its images in memory).
    """

    def __init__(
        self,
        samples: Sequence[tuple[ImageLike, int]],
        transform: TrainTransform | Preprocess,
        *,
        seed: int = 0,
    ) -> None:
        self.samples = list(samples)
        self.transform = transform
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int] | None:
        source, label = self.samples[index]
        try:
            if isinstance(self.transform, TrainTransform):
                gen = torch.Generator().manual_seed(hash((self.seed, self.epoch, index)) & 0x7FFF_FFFF_FFFF)
                array = self.transform(source, gen)
            else:
                array = self.transform(source)
        except ImageDecodeError:
            return None
        return torch.from_numpy(array), label


@dataclass
class Batch:
    images: torch.Tensor  # [B, 3, H, W]
    labels: torch.Tensor  # [B]
    skipped: int  # unreadable samples dropped from this batch

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def collate_skipping(items: list[tuple[torch.Tensor, int] | None]) -> Batch:
    good = [item for item in items if item is not None]
    skipped = len(items) - len(good)
    if not good:
        return Batch(torch.empty(0), torch.empty(0, dtype=torch.long), skipped)
    return Batch(torch.stack([g[0] for g in good]), torch.tensor([g[1] for g in good], dtype=torch.long), skipped)


class ShardSampler(torch.utils.data.Sampler[int]):
    """Every ``world``-th index from ``rank``: an eval sampler that neither pads nor duplicates."""

    def __init__(self, length: int, rank: int, world: int) -> None:
        self.indices = list(range(rank, length, world))

    def __iter__(self):  # noqa: ANN204
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)
