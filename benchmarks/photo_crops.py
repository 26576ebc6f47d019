"""Calibration images from a handful of photos: seeded random crops (20-100% of the area) and flips.

    python benchmarks/photo_crops.py --images ../shared/images --count 120 --output /tmp/photo_crops

Only eight photos can be had here, and int8 calibration wants a hundred or more images like the ones to be
served; crops of real photos are real image statistics at many scales. A deployment calibrates on its
own traffic instead (``swinv2-serve quantize --images``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from swinv2_serve.errors import ImageDecodeError
from swinv2_serve.preprocess import image_files, load_image, to_rgb


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=Path, required=True)
    parser.add_argument("--count", type=int, default=120)
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    photos = []
    for path in image_files(args.images, recursive=False):
        try:
            photos.append(to_rgb(load_image(path)))
        except ImageDecodeError:
            continue
    rng = np.random.default_rng(args.seed)
    args.output.mkdir(parents=True, exist_ok=True)
    for i in range(args.count):
        photo = photos[i % len(photos)]
        w, h = photo.size
        side = np.sqrt(rng.uniform(0.2, 1.0))
        cw, ch = max(16, int(w * side)), max(16, int(h * side))
        left, top = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        crop: Image.Image = photo.crop((left, top, left + cw, top + ch))
        if rng.random() < 0.5:
            crop = ImageOps.mirror(crop)
        crop.save(args.output / f"crop_{i:04d}.png")
    print(f"wrote {args.count} crops of {len(photos)} photos to {args.output}")


if __name__ == "__main__":
    main()
