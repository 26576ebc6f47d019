"""Class names for a model: its own labels, ImageNet-1k / -22k names (shipped as data), or ``class_<i>``.

The ImageNet-1k names in ``data/imagenet1k_labels.txt`` are the WordNet lemmas of the 1000 ILSVRC-2012
synsets in class-index order; they ship with the package and are never fetched. Beside them: the 1k synsets
in the same order (``imagenet1k_synsets.txt``, for ImageNet validation folders named ``n01440764/``), and the
21 841 ImageNet-22k (fall11) synsets in the order of the MSRA/timm 22k heads with their lemmas
(``imagenet22k_synsets.txt``, ``imagenet22k_labels.txt``). All derived offline from timm 1.0's
``timm/data/_info`` (Apache-2.0; see ``data/SOURCES.md``). 603 of the 22k lemmas are shared by two or more
synsets (WordNet homonyms): the synset is the unambiguous name.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from importlib import resources

from .contract import ExportMetadata
from .errors import SwinV2ServeError

IMAGENET1K_FILE = "imagenet1k_labels.txt"
IMAGENET1K_SYNSETS_FILE = "imagenet1k_synsets.txt"
IMAGENET22K_FILE = "imagenet22k_labels.txt"
IMAGENET22K_SYNSETS_FILE = "imagenet22k_synsets.txt"
IMAGENET22K_CLASSES = 21841


def _data_lines(name: str, expected: int) -> tuple[str, ...]:
    text = resources.files("swinv2_serve").joinpath("data", name).read_text(encoding="utf-8")
    lines = tuple(line.strip() for line in text.splitlines() if line.strip())
    if len(lines) != expected:
        raise SwinV2ServeError(f"{name} holds {len(lines)} lines, expected {expected}: reinstall swinv2-serve")
    return lines


@lru_cache(maxsize=1)
def imagenet1k_labels() -> tuple[str, ...]:
    return _data_lines(IMAGENET1K_FILE, 1000)


@lru_cache(maxsize=1)
def imagenet1k_synsets() -> tuple[str, ...]:
    """WordNet ids of the 1000 ImageNet-1k classes in class-index order (``n01440764`` = 0, tench)."""
    return _data_lines(IMAGENET1K_SYNSETS_FILE, 1000)


@lru_cache(maxsize=1)
def imagenet22k_labels() -> tuple[str, ...]:
    return _data_lines(IMAGENET22K_FILE, IMAGENET22K_CLASSES)


@lru_cache(maxsize=1)
def imagenet22k_synsets() -> tuple[str, ...]:
    """WordNet ids of the 21 841 ImageNet-22k classes in the order of the MSRA/timm 22k heads (sorted ids)."""
    return _data_lines(IMAGENET22K_SYNSETS_FILE, IMAGENET22K_CLASSES)


def synsets_for(num_classes: int) -> tuple[str, ...] | None:
    """The WordNet ids of an ImageNet head of this width (1000 or 21 841 classes), else None."""
    return {1000: imagenet1k_synsets, IMAGENET22K_CLASSES: imagenet22k_synsets}.get(num_classes, lambda: None)()


def labels_for(metadata_or_num_classes: ExportMetadata | int, labels: Sequence[str] | None = None) -> list[str]:
    """One name per class, in index order.

    The checkpoint's own labels win (``labels`` or ``metadata["labels"]``); without them a 1000-class model
    gets the ImageNet-1k names, a 21 841-class model the ImageNet-22k names, any other ``class_0 .. class_<C-1>``.
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
    if num_classes == IMAGENET22K_CLASSES:
        return list(imagenet22k_labels())
    return [f"class_{i}" for i in range(num_classes)]


def labels_text(names: Sequence[str]) -> str:
    """The ``labels.txt`` Triton reads through ``label_filename``: one name per line, index order."""
    return "".join(f"{name}\n" for name in names)
