"""scikit-learn's digits as image folders, the split the training module uses: OUT/train/<d>/*.png, OUT/val/<d>/*.png.

    python benchmarks/optimize_digits.py --output runs/digits

1437 training and 360 validation images (``swinv2_serve.train.digits.split_digits``, seed 0), 64 px RGB PNGs.
``swinv2-serve train --data runs/digits`` trains on them; ``swinv2-serve optimize --images runs/digits/val`` checks
and calibrates on images the model never trained on (benchmarks/OPTIMIZE.md).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from PIL import Image

from swinv2_serve.train.digits import split_digits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    train, val = split_digits(args.seed)
    for part, items in (("train", train), ("val", val)):
        for i, (array, label) in enumerate(items):
            folder = args.output / part / str(label)
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(array).save(folder / f"{i:04d}.png")
    print(f"wrote {len(train)} training and {len(val)} validation images under {args.output}")


if __name__ == "__main__":
    main()
