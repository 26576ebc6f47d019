"""Published weights by name, offline: a hub-layout cache built here from timm's own state dict, loaded through
huggingface_hub's real code with HF_HUB_OFFLINE=1; MSRA files by (file://) URL; every error with its message.

No test here can reach the network: sockets may only connect to the loopback interface."""

from __future__ import annotations

import hashlib
import json
import os
import socket
from pathlib import Path

import pytest
import torch

pytest.importorskip("huggingface_hub")
timm = pytest.importorskip("timm")

from conftest import perturb_  # noqa: E402
from test_checkpoint import timm_to_msra  # noqa: E402

from swinv2_serve import create_model  # noqa: E402
from swinv2_serve.checkpoint import load_or_create  # noqa: E402
from swinv2_serve.cli import main as cli_main  # noqa: E402
from swinv2_serve.errors import ConfigError  # noqa: E402
from swinv2_serve.hub import (  # noqa: E402
    PRETRAINED,
    ChecksumError,
    WeightsUnavailableError,
    downloads_dir,
    fetch_pretrained,
    fetch_url,
    parse_spec,
)

NAME = "swinv2_tiny_window8_256"
COMMIT = "3f1c0ffee" + "0" * 31  # a commit hash as the hub writes it (40 hex)


def write_hub_file(cache: Path, repo_id: str, data: bytes, *, commit: str = COMMIT, blob: str | None = None) -> Path:
    """``model.safetensors`` as huggingface_hub lays it out: blobs/<sha256>, snapshots/<commit>/ -> blob, refs/main."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    blob_name = blob or hashlib.sha256(data).hexdigest()
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    (repo / "blobs" / blob_name).write_bytes(data)
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True, exist_ok=True)
    (snapshot / "model.safetensors").symlink_to(Path("..", "..", "blobs", blob_name))
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    return snapshot / "model.safetensors"


@pytest.fixture(scope="module")
def timm_tiny() -> torch.nn.Module:
    """timm's own swinv2_tiny_window8_256 (weights moved off their init, as a trained model's would be)."""
    return perturb_(timm.create_model(NAME, pretrained=False), scale=0.02, seed=5).eval()


@pytest.fixture(scope="module")
def hub_dir(timm_tiny: torch.nn.Module, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from safetensors.torch import save

    cache = tmp_path_factory.mktemp("hf") / "hub"
    weights = save({k: v.contiguous() for k, v in timm_tiny.state_dict().items()})
    write_hub_file(cache, f"timm/{NAME}.ms_in1k", weights)
    return cache


@pytest.fixture(autouse=True)
def offline(hub_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """HF_HUB_OFFLINE=1 and our cache (huggingface_hub read its constants at import: they are patched too)."""
    import huggingface_hub.constants as constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(hub_dir))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hub_dir))
    real_connect = socket.socket.connect

    def loopback_only(sock: socket.socket, address: tuple) -> object:
        if sock.family in (socket.AF_INET, socket.AF_INET6) and address[0] not in ("127.0.0.1", "::1", "localhost"):
            raise AssertionError(f"a test tried to reach the network: {address}")
        return real_connect(sock, address)

    monkeypatch.setattr(socket.socket, "connect", loopback_only)
    return hub_dir


def logits(model: torch.nn.Module, seed: int = 0) -> torch.Tensor:
    x = torch.randn(1, 3, 256, 256, generator=torch.Generator().manual_seed(seed))
    with torch.inference_mode():
        return model(x)


# -- the hub ---------------------------------------------------------------------------------------------------
def test_pretrained_loads_offline_and_equals_timm(timm_tiny: torch.nn.Module) -> None:
    model = create_model(NAME, pretrained=True).eval()
    diff = (logits(model) - logits(timm_tiny)).abs().max().item()
    print(f"create_model({NAME!r}, pretrained=True) vs timm on the same weights: max |diff| = {diff}")
    assert diff == 0.0


def test_revision_pin_checksum_and_tag_names(hub_dir: Path) -> None:
    found = fetch_pretrained(NAME, f"ms_in1k@{COMMIT}")  # timm's tag name works too
    assert found.revision == COMMIT and found.tag.tag == "in1k" and found.source == f"timm/{NAME}.ms_in1k"
    assert found.sha256 == Path(os.path.realpath(found.path)).name  # checked against the hub's own digest
    assert fetch_pretrained(NAME, sha256=found.sha256).path == found.path
    assert parse_spec(True) == (None, None) and parse_spec("in1k@abc") == ("in1k", "abc")
    assert parse_spec("@abc") == (None, "abc")
    with pytest.raises(WeightsUnavailableError, match=r"cannot fetch .*@" + "f" * 40 + r": HF_HUB_OFFLINE is set"):
        fetch_pretrained(NAME, "in1k@" + "f" * 40)


def test_other_class_count_keeps_the_body(timm_tiny: torch.nn.Module) -> None:
    model = create_model(NAME, pretrained=True, num_classes=7)
    body = {k: v for k, v in timm_tiny.state_dict().items() if not k.startswith("head.")}
    assert model.head.fc.weight.shape == (7, 768)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in body.items())


def test_every_published_preset_is_a_preset_with_its_class_count() -> None:
    from swinv2_serve.config import PRESETS

    for name, tags in PRETRAINED.items():
        assert tags and PRESETS[name].num_classes == tags[0].num_classes, name
        assert tags[0].msra_url.startswith("https://github.com/SwinTransformer/storage/releases/download/v2.0.0/")


@pytest.mark.skipif(not hasattr(timm.models, "swin_transformer_v2"), reason="timm without SwinV2")
def test_table_matches_timm_default_cfgs() -> None:
    """Our tags, class counts and MSRA URLs are timm's (read from its default_cfgs, never copied by hand)."""
    cfgs = timm.models.swin_transformer_v2.default_cfgs
    ours = {f"{name}.{t.timm_tag}": (t.num_classes, t.msra_url) for name, tags in PRETRAINED.items() for t in tags}
    theirs = {f"{arch}.{tag}": (c.num_classes, c.url) for arch, dc in cfgs.items() for tag, c in dc.cfgs.items()}
    assert ours == theirs


# -- errors, one line each ---------------------------------------------------------------------------------------
def test_error_no_network() -> None:
    with pytest.raises(WeightsUnavailableError) as caught:
        fetch_pretrained("swinv2_small_window8_256")  # not in the cache, and offline
    message = str(caught.value)
    assert "\n" not in message and message.startswith(
        "cannot fetch timm/swinv2_small_window8_256.ms_in1k/model.safetensors@main: HF_HUB_OFFLINE is set, and it "
        "is not in the cache") and "--checkpoint PATH" in message


def test_error_unknown_tag() -> None:
    with pytest.raises(ConfigError, match=r"^unknown pretrained tag 'in22k' for swinv2_tiny_window8_256; it has: "
                                          r"in1k \(timm/swinv2_tiny_window8_256\.ms_in1k\)$"):
        create_model(NAME, pretrained="in22k")


def test_error_preset_without_published_weights() -> None:
    with pytest.raises(ConfigError, match=r"^swinv2_huge_window12_192 has no published weights \(presets with "
                                          r"weights: swinv2_tiny_window8_256, .*\); train it"):
        create_model("swinv2_huge_window12_192", pretrained=True)


def test_error_checksum_mismatch(hub_dir: Path) -> None:
    """A cached blob whose bytes are not the ones the hub published (corrupted or replaced), and a wrong pin."""
    write_hub_file(hub_dir, "timm/swinv2_tiny_window16_256.ms_in1k", b"not these bytes", blob="0" * 64)
    with pytest.raises(ChecksumError, match=r"^timm/swinv2_tiny_window16_256\.ms_in1k@main: sha256 of .* is "
                                            r"[0-9a-f]{64}, expected 0{64} \(corrupted or replaced file\)"):
        fetch_pretrained("swinv2_tiny_window16_256")
    with pytest.raises(ChecksumError, match="expected " + "1" * 64):
        fetch_pretrained(NAME, sha256="1" * 64)


def test_cli_error_is_one_line(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert cli_main(["export", "--model", "swinv2_nano_window4_64", "--pretrained", "--output", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("swinv2-serve export: error: swinv2_nano_window4_64 has no "
                                                   "published weights")


# -- MSRA release files by URL -----------------------------------------------------------------------------------
@pytest.fixture
def msra_url(timm_tiny: torch.nn.Module, tmp_path: Path) -> tuple[str, Path]:
    """The MSRA-layout file of the same weights, named as in the release, behind a file:// URL."""
    path = tmp_path / "release" / "swinv2_tiny_patch4_window8_256.pth"
    path.parent.mkdir()
    torch.save(timm_to_msra(timm_tiny), path)
    return path.as_uri(), path


def test_msra_url_downloads_once_checked_and_equals_timm(msra_url: tuple[str, Path], timm_tiny: torch.nn.Module,
                                                         hub_dir: Path) -> None:
    url, original = msra_url
    digest = hashlib.sha256(original.read_bytes()).hexdigest()
    model = load_or_create(NAME, f"{url}#sha256={digest}")
    assert (logits(model) - logits(timm_tiny)).abs().max().item() == 0.0
    cached = fetch_url(url)
    assert cached.path.is_relative_to(downloads_dir(hub_dir)) and cached.sha256 == digest
    assert (cached.path.parent / (cached.path.name + ".sha256")).read_text().strip() == digest
    original.unlink()  # downloaded once: later runs read the cache
    assert fetch_url(url).path == cached.path
    data = cached.path.read_bytes()
    cached.path.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))  # the cache file changed since it was checked
    with pytest.raises(ChecksumError, match=r"sha256 of .* is [0-9a-f]{64}, expected " + digest):
        load_or_create(NAME, url)


def test_url_errors(msra_url: tuple[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    url, _ = msra_url
    before = sorted(downloads_dir().rglob("*.pth*"))
    with pytest.raises(ChecksumError, match=r"downloaded sha256 [0-9a-f]{64}, expected 2{64}: .*nothing was kept"):
        fetch_url(f"{url}#sha256={'2' * 64}")
    assert sorted(downloads_dir().rglob("*.pth*")) == before
    with pytest.raises(WeightsUnavailableError, match=r"^cannot fetch https://github.com/SwinTransformer/.*: "
                                                      "HF_HUB_OFFLINE is set"):
        load_or_create(NAME, PRETRAINED[NAME][0].msra_url)
    monkeypatch.delenv("HF_HUB_OFFLINE")
    with socket.socket() as probe:  # a loopback port nobody listens on: a refused connection, not the internet
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(WeightsUnavailableError, match=r"^cannot fetch http://127.0.0.1:\d+/x.pth: download failed"):
        fetch_url(f"http://127.0.0.1:{port}/x.pth", progress=False)


def test_cli_evaluate_with_pretrained_weights(images_dir: Path, tmp_path: Path) -> None:
    """`evaluate --model NAME --pretrained` offline on an ImageNet-layout folder (weights random: accuracy means
    nothing; the synset mapping and the loading path are the point)."""
    for name, synset in (("cat.jpg", "n02123045"), ("coffee.jpg", "n07920052"), ("rocket.jpg", "n04266014")):
        (tmp_path / "val" / synset).mkdir(parents=True)
        (tmp_path / "val" / synset / name).write_bytes((images_dir / name).read_bytes())
    out = tmp_path / "e.json"
    assert cli_main(["evaluate", "--data", str(tmp_path / "val"), "--model", NAME, "--pretrained", "in1k",
                     "--json", str(out), "--no-progress"]) == 0
    result = json.loads(out.read_text())
    assert result["data"]["layout"] == "imagenet-synsets" and result["data"]["evaluated"] == 3
    assert result["rows"][0]["source"] == f"{NAME} (published weights, in1k)"
    assert set(result["rows"][0]["per_class"]) == {"tabby, tabby cat", "espresso", "space shuttle"}


def test_commands_resolve_pretrained_and_urls() -> None:
    from swinv2_serve.cli import build_parser
    from swinv2_serve.commands import bench, train
    from swinv2_serve.commands._pretrained import checkpoint_source

    argv = ["bench", "--model", NAME, "--pretrained", "in1k"]
    assert bench.config_from_args(build_parser(argv).parse_args(argv)).checkpoint == fetch_pretrained(NAME).path
    argv = ["train", "--model", NAME, "--pretrained", "--checkpoint", "x.pth", "--output", "out"]
    with pytest.raises(ConfigError, match=r"^--pretrained needs --model NAME and no --checkpoint$"):
        train._config(build_parser(argv).parse_args(argv))
    url = PRETRAINED[NAME][0].msra_url
    assert checkpoint_source(url) == url and checkpoint_source("a/b.pth") == Path("a/b.pth")
