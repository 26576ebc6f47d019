"""Published SwinV2 weights by name: timm's Hugging Face repos first, the official MSRA release files second.

``fetch_pretrained("swinv2_tiny_window8_256")`` returns the cached ``model.safetensors`` of
``timm/swinv2_tiny_window8_256.ms_in1k``: huggingface_hub downloads it once into its own cache
(``HF_HUB_CACHE``, default ``~/.cache/huggingface/hub``) and, with ``HF_HUB_OFFLINE=1``, never touches the
network. ``fetch_url(URL)`` downloads an MSRA ``.pth`` once into ``<HF_HOME>/swinv2_serve/downloads`` (beside
the hub's folder, so that ``hf cache scan`` stays clean); ``load_checkpoint`` reads it with ``weights_only=True``.

Which weights a preset has is data beside the presets (``config.PRETRAINED``): timm's tags (``ms_in1k`` ...) under
short names (``in1k``, ``in22k``, ``in22k-ft-in1k``), the class count that goes with them, and the MSRA file of
the same weights.

Checksums: the hub stores a large (LFS) file as a blob named by its sha256, so every hub file is checked against
the digest the hub published for its revision; a ``revision`` (commit) pins the repository, ``sha256`` the bytes.
A URL download is checked against ``#sha256=HEX`` (pip's URL fragment) when given, else against the digest
recorded at its first download (a cache file that changed since is refused).
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import MSRA_RELEASE, PRETRAINED, PretrainedTag, get_config
from .errors import CheckpointError, ConfigError

log = logging.getLogger(__name__)

HUB_FILE = "model.safetensors"
URL_SCHEMES = ("https", "http", "file")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_TRUE = {"1", "ON", "YES", "TRUE"}  # huggingface_hub's reading of HF_HUB_OFFLINE
_CHUNK = 1 << 20


class WeightsUnavailableError(CheckpointError):
    """Weights that are not in the cache and cannot be downloaded (offline, no network, refused)."""


class ChecksumError(CheckpointError):
    """A downloaded or cached weights file whose sha256 is not the one expected."""


@dataclass(frozen=True)
class PretrainedFile:
    """A weights file on local disk and where it came from."""

    path: Path
    source: str  # hub repo id or URL
    tag: PretrainedTag | None
    revision: str | None  # the hub commit it was read at
    sha256: str

    def describe(self) -> str:
        at = f"@{self.revision}" if self.revision else ""
        return f"{self.source}{at} (sha256 {self.sha256[:12]}...)"


# -- tags ----------------------------------------------------------------------------------------------------
def pretrained_tags(name: str) -> tuple[PretrainedTag, ...]:
    """The published weights of preset ``name`` (default first); a clear error for presets without any."""
    get_config(name)  # unknown names: the ConfigError that lists the presets
    tags = PRETRAINED.get(name)
    if not tags:
        raise ConfigError(f"{name} has no published weights (presets with weights: {', '.join(PRETRAINED)}); "
                          "train it (`swinv2-serve train`) or pass --checkpoint PATH")
    return tags


def parse_spec(pretrained: bool | str) -> tuple[str | None, str | None]:
    """``True`` / ``"TAG"`` / ``"TAG@REVISION"`` / ``"@REVISION"`` -> (tag or None for the default, revision)."""
    if pretrained is True:
        return None, None
    tag, _, revision = str(pretrained).strip().partition("@")
    return tag or None, revision or None


def resolve_tag(name: str, tag: str | None = None) -> PretrainedTag:
    """Our tag (``in1k``) or timm's (``ms_in1k``) -> the entry; None -> the preset's default."""
    tags = pretrained_tags(name)
    if tag is None:
        return tags[0]
    for entry in tags:
        if tag in (entry.tag, entry.timm_tag):
            return entry
    have = ", ".join(f"{t.tag} ({t.repo_id(name)})" for t in tags)
    raise ConfigError(f"unknown pretrained tag {tag!r} for {name}; it has: {have}")


# -- cache and network ---------------------------------------------------------------------------------------
def offline() -> bool:
    """``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) as huggingface_hub reads it, at call time."""
    return any(os.environ.get(var, "").upper() in _TRUE for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def hub_cache(cache_dir: str | os.PathLike | None = None) -> Path:
    """huggingface_hub's cache folder, read from the environment at call time (its constants are read at import)."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    explicit = os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "huggingface")
    return Path(home).expanduser() / "hub"


def downloads_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """Where URL downloads are kept: ``swinv2_serve/downloads`` beside the hub's cache folder."""
    return hub_cache(cache_dir).parent / "swinv2_serve" / "downloads"


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def check_sha256(path: Path, expected: str | None, what: str) -> str:
    """The file's sha256; ``ChecksumError`` when an expected digest is given and differs."""
    got = file_sha256(path)
    if expected is not None and got != expected.lower():
        raise ChecksumError(f"{what}: sha256 of {path} is {got}, expected {expected.lower()} (corrupted or replaced "
                            "file): delete it and download again")
    return got


def _unavailable(what: str, cache: Path, reason: str) -> WeightsUnavailableError:
    return WeightsUnavailableError(
        f"cannot fetch {what}: {reason}, and it is not in the cache {cache}; run once with network access (it is "
        "cached for later offline runs), point HF_HUB_CACHE at a cache that has it, or pass --checkpoint PATH")


# -- the hub ---------------------------------------------------------------------------------------------------
def _hub_errors() -> Any:
    try:
        from huggingface_hub import errors
    except ImportError as exc:
        raise WeightsUnavailableError("pretrained weights need huggingface_hub: pip install 'swinv2-serve[hub]'"
                                      ) from exc
    return errors


def _download(repo_id: str, revision: str, cache: Path) -> Path:
    errors = _hub_errors()
    from huggingface_hub import hf_hub_download

    what = f"{repo_id}/{HUB_FILE}@{revision}"
    try:
        return Path(hf_hub_download(repo_id, HUB_FILE, revision=revision, cache_dir=cache,
                                    local_files_only=offline()))
    except errors.LocalEntryNotFoundError:
        raise _unavailable(what, cache, "HF_HUB_OFFLINE is set" if offline() else "the hub cannot be reached "
                           "(no network?)") from None
    except errors.RevisionNotFoundError:
        raise CheckpointError(f"{repo_id} has no revision {revision!r}: give a commit hash, tag or branch of it"
                              ) from None
    except (errors.RepositoryNotFoundError, errors.EntryNotFoundError) as exc:
        raise CheckpointError(f"{what} not found on the hub ({type(exc).__name__})") from None
    except (errors.HfHubHTTPError, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise _unavailable(what, cache, f"download failed ({first})") from None


def hub_digest(path: Path) -> str | None:
    """The sha256 the hub published for a cached LFS file: the name of the blob its snapshot entry points to."""
    name = Path(os.path.realpath(path)).name
    return name if _SHA256.fullmatch(name) else None


def fetch_pretrained(name: str, pretrained: bool | str = True, *, revision: str | None = None,
                     sha256: str | None = None, cache_dir: str | os.PathLike | None = None) -> PretrainedFile:
    """The published ``model.safetensors`` of preset ``name`` from the hub cache (downloaded once), checksum-checked.

    ``pretrained``: True (the preset's default tag), ``"TAG"`` or ``"TAG@REVISION"``; ``revision`` / ``sha256``
    pin the commit / the file (else the table's pins, else ``main`` and the hub's own digest).
    """
    tag_name, spec_revision = parse_spec(pretrained)
    tag = resolve_tag(name, tag_name)
    repo_id = tag.repo_id(name)
    revision = revision or spec_revision or tag.revision or "main"
    path = _download(repo_id, revision, hub_cache(cache_dir))
    expected = sha256 or tag.sha256 or hub_digest(path)
    digest = check_sha256(path, expected, f"{repo_id}@{revision}")
    if expected is None:
        log.warning("%s: no published sha256 to check %s against (sha256 %s)", repo_id, path, digest)
    commit = path.parent.name if path.parent.parent.name == "snapshots" else None
    return PretrainedFile(path=path, source=repo_id, tag=tag, revision=commit, sha256=digest)


def load_pretrained(module: Any, weights: PretrainedFile) -> None:
    """Published weights (``fetch_pretrained``) into a SwinV2 of their preset (timm's layout is ours), all or
    nothing. A model with another class count keeps its fresh head and gets everything else (fine-tuning)."""
    from safetensors.torch import load_file

    state = load_file(os.fspath(weights.path))
    keep_head = int(module.num_classes) == weights.tag.num_classes if weights.tag else True
    if not keep_head:
        state = {k: v for k, v in state.items() if not k.startswith("head.")}
    expected = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    problems = [f"unexpected {k}" for k in state if k not in expected]
    problems += [f"missing {k}" for k in expected if k not in state and (keep_head or not k.startswith("head."))]
    problems += [f"{k} {list(v.shape)} vs model {list(expected[k])}" for k, v in state.items()
                 if k in expected and tuple(v.shape) != expected[k]]
    if problems:
        shown = "; ".join(problems[:4]) + (f" (+{len(problems) - 4} more)" if len(problems) > 4 else "")
        raise CheckpointError(f"{weights.describe()} does not fit the model: {shown}")
    module.load_state_dict(state, strict=keep_head)
    log.info("loaded %s%s", weights.describe(), "" if keep_head else
             f" with a fresh {module.num_classes}-class head (the weights have {weights.tag.num_classes})")


# -- URLs (the MSRA release files, or any other) ---------------------------------------------------------------
def is_url(source: object) -> bool:
    return isinstance(source, str) and urllib.parse.urlparse(source).scheme in URL_SCHEMES


def split_sha256(url: str) -> tuple[str, str | None]:
    """``URL#sha256=HEX`` -> (URL, HEX); other URLs -> (URL, None)."""
    base, _, fragment = url.partition("#")
    params: Mapping[str, list[str]] = urllib.parse.parse_qs(fragment)
    digest = params.get("sha256", [None])[0]
    if fragment and (digest is None or not _SHA256.fullmatch(digest.lower())):
        raise CheckpointError(f"URL fragment #{fragment} is not #sha256=<64 hex digits>")
    return base, digest.lower() if digest else None


def _stream(url: str, partial: Path, progress: bool) -> str:
    """Download ``url`` into ``partial`` (with a progress bar), hashing as it goes; its sha256."""
    from tqdm import tqdm

    digest = hashlib.sha256()
    with urllib.request.urlopen(url, timeout=60) as response, open(partial, "wb") as out:  # noqa: S310 - checked scheme
        total = int(response.headers.get("Content-Length") or 0) or None
        with tqdm(total=total, unit="B", unit_scale=True, desc=partial.name.removesuffix(".partial"),
                  disable=not progress) as bar:
            for block in iter(lambda: response.read(_CHUNK), b""):
                out.write(block)
                digest.update(block)
                bar.update(len(block))
    return digest.hexdigest()


def fetch_url(url: str, *, sha256: str | None = None, cache_dir: str | os.PathLike | None = None,
              progress: bool = True) -> PretrainedFile:
    """A checkpoint URL downloaded once into ``downloads_dir`` and checked (see the module doc); its local copy."""
    base, pinned = split_sha256(url)
    expected = (sha256 or pinned or "").lower() or None
    parsed = urllib.parse.urlparse(base)
    if parsed.scheme not in URL_SCHEMES:
        raise CheckpointError(f"{base}: only {', '.join(URL_SCHEMES)} URLs can be downloaded")
    filename = Path(urllib.parse.unquote(parsed.path)).name or "checkpoint.pth"
    target = downloads_dir(cache_dir) / hashlib.sha256(base.encode()).hexdigest()[:16] / filename
    record = target.with_name(target.name + ".sha256")
    if target.is_file():
        recorded = record.read_text().strip() if record.is_file() else None
        digest = check_sha256(target, expected or recorded, base)
        return PretrainedFile(path=target, source=base, tag=None, revision=None, sha256=digest)
    if parsed.scheme != "file" and offline():
        raise _unavailable(base, target.parent, "HF_HUB_OFFLINE is set")
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".partial")
    try:
        digest = _stream(base, partial, progress)
    except (urllib.error.URLError, OSError) as exc:
        partial.unlink(missing_ok=True)
        reason = getattr(exc, "reason", None) or exc
        raise _unavailable(base, target.parent, f"download failed ({reason})") from None
    if expected is not None and digest != expected:
        partial.unlink(missing_ok=True)
        raise ChecksumError(f"{base}: downloaded sha256 {digest}, expected {expected}: the file changed or the "
                            "pin is wrong; nothing was kept")
    partial.replace(target)
    record.write_text(digest + "\n")
    log.info("downloaded %s to %s (sha256 %s)", base, target, digest)
    return PretrainedFile(path=target, source=base, tag=None, revision=None, sha256=digest)


def local_checkpoint(source: str | os.PathLike | None, *, cache_dir: str | os.PathLike | None = None
                     ) -> Path | None:
    """A checkpoint argument as a local path: URLs are downloaded once (``fetch_url``), paths stay paths."""
    if source is None:
        return None
    if is_url(source):
        return fetch_url(str(source), cache_dir=cache_dir).path
    return Path(source)


__all__ = ["MSRA_RELEASE", "PRETRAINED", "ChecksumError", "PretrainedFile", "PretrainedTag", "WeightsUnavailableError",
           "downloads_dir", "fetch_pretrained", "fetch_url", "file_sha256", "hub_cache", "is_url", "load_pretrained",
           "local_checkpoint", "offline", "parse_spec", "pretrained_tags", "resolve_tag"]
