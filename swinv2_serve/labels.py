"""Class names for a model: its own labels, ImageNet-1k names (shipped as data), or ``class_<i>``.

The ImageNet-1k names in ``data/imagenet1k_labels.txt`` are the WordNet lemmas of the 1000 ILSVRC-2012
synsets in class-index order; they ship with the package and are never fetched.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from importlib import resources

from .contract import ExportMetadata
from .errors import SwinV2ServeError

IMAGENET1K_FILE = "imagenet1k_labels.txt"


@lru_cache(maxsize=1)
def imagenet1k_labels() -> tuple[str, ...]:
    text = resources.files("swinv2_serve").joinpath("data", IMAGENET1K_FILE).read_text(encoding="utf-8")
    names = tuple(line.strip() for line in text.splitlines() if line.strip())
    if len(names) != 1000:
        raise SwinV2ServeError(f"{IMAGENET1K_FILE} holds {len(names)} names, expected 1000: reinstall swinv2-serve")
    return names


def labels_for(metadata_or_num_classes: ExportMetadata | int, labels: Sequence[str] | None = None) -> list[str]:
    """One name per class, in index order.

    The checkpoint's own labels win (``labels`` or ``metadata["labels"]``); without them a 1000-class model
    gets the ImageNet-1k names and any other model ``class_0 .. class_<C-1>``.
    """
    if isinstance(metadata_or_num_classes, ExportMetadata):
        num_classes = metadata_or_num_classes.num_classes
        if labels is None:
            labels = metadata_or_num_classes.labels
    else:
        num_classes = int(metadata_or_num_classes)
    if num_classes < 1:
        raise SwinV2ServeError(f"num_classes must be >= 1, got {num_classes}")
    if labels:
        names = [str(name).strip() for name in labels]
        if len(names) != num_classes:
            raise SwinV2ServeError(f"the model has {num_classes} classes but {len(names)} labels were given")
        bad = [name for name in names if not name or "\n" in name]
        if bad:
            raise SwinV2ServeError("labels must be non-empty single-line strings (one line per class in labels.txt)")
        return names
    if num_classes == 1000:
        return list(imagenet1k_labels())
    return [f"class_{i}" for i in range(num_classes)]


def labels_text(names: Sequence[str]) -> str:
    """The ``labels.txt`` Triton reads through ``label_filename``: one name per line, index order."""
    return "".join(f"{name}\n" for name in names)
