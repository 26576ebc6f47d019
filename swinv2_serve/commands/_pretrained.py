"""``--pretrained [TAG[@REVISION]]`` and ``--checkpoint PATH|URL``, shared by the commands that name a model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..hub import fetch_pretrained, is_url, local_checkpoint

PRETRAINED_HELP = ("the preset's published weights (timm's Hugging Face repo, cached; HF_HUB_OFFLINE=1 uses the "
                   "cache only): TAG in1k / in22k / in22k-ft-in1k (default: the preset's own), @REVISION pins a "
                   "hub commit")
CHECKPOINT_HELP = ("weights: our own checkpoint, or MSRA / timm / Hugging Face with --model; a path, or an "
                   "https:// URL (e.g. the MSRA release) downloaded once into the cache, '#sha256=HEX' checks it")


def checkpoint_source(text: str) -> str | Path:
    """argparse type of --checkpoint: URLs stay strings (``Path`` would fold ``https://`` into ``https:/``)."""
    return text if is_url(text) else Path(text)


def add_pretrained_argument(parser: Any) -> None:  # a parser or an argument group
    parser.add_argument("--pretrained", nargs="?", const=True, default=None, metavar="TAG", help=PRETRAINED_HELP)


def weights_file(model: str | None, checkpoint: str | Path | None, pretrained: bool | str | None) -> Path | None:
    """The local file a command loads: the hub's cached file for --pretrained, a URL's download, or the path."""
    if pretrained:
        if model is None or checkpoint is not None:
            raise ConfigError("--pretrained needs --model NAME and no --checkpoint")
        return fetch_pretrained(model, pretrained).path
    return local_checkpoint(checkpoint)
