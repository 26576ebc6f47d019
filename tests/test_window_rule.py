"""The window rule through every entry point (issue 14): the same request gives the same model everywhere.

A new ``img_size`` without ``window_size`` scales every stage's window with the resolution (``window_for``:
8 @ 256 -> 16 @ 512; 24 @ 384 -> 32 @ 512, and SwinV2-B's last stage shrinks to its 16 x 16 feature map); an
explicit ``window_size`` keeps its meaning. The entry points are compared with each other: the Python API
(``resolve_config``, ``create_model``, ``to_deploy``, ``export_onnx``, ``TorchRuntime``), ``swinv2-serve export``,
``export/build_all.py`` and ``swinv2-serve bench``; the window numbers asserted are the rule's arithmetic.

Cost, measured on the 2-core machine: a real SwinV2-T/512 ONNX export takes ~13 s (build_all's ONNX Runtime check
~15 s more), a SwinV2-B/512 one ~75 s (~87 s with the model's creation). So:

- SwinV2-T at 512 (slow, ~70 s): three real exports, the bench's (a fresh interpreter that receives the resolved
  config; the ONNX stays in --workdir), ``swinv2-serve export``'s (``export_onnx`` underneath) and
  ``build_all.py``'s (verified in ONNX Runtime); ``to_deploy`` and ``TorchRuntime`` in memory. Every field of the
  metadata is compared; only a runtime's ``opset`` (None: never exported) legitimately differs.
- SwinV2-B at 512: resolve level (``resolve_config``, ``create_model`` on the meta device, build_all's recipe).
- The nano preset at 96 px (fast): real exports through the API, the CLI and build_all, the rule and an explicit
  window side by side (tests/test_bench.py checks the bench's 4 @ 64 -> 6 @ 96).
"""

from __future__ import annotations

import csv
import importlib.util
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from swinv2_serve import create_model, to_deploy
from swinv2_serve.cli import main as cli_main
from swinv2_serve.config import get_config, resolve_config, window_for
from swinv2_serve.contract import ExportMetadata, read_onnx_metadata
from swinv2_serve.onnx_export import export_onnx
from swinv2_serve.runtime.torch_backend import TorchRuntime

pytest.importorskip("onnx")

REPO = Path(__file__).resolve().parents[1]
T = "swinv2_tiny_window8_256"
B = "swinv2_base_window12to24_192to384"
NANO = "swinv2_nano_window4_64"
RULE_AT_512 = {T: (16, 16, 16, 16), B: (32, 32, 32, 16)}  # stage windows: 8*512/256; 24*512/384, last map 16x16


def build_all_module() -> Any:
    """export/build_all.py, a script beside the package, imported once as the module ``build_all``."""
    if "build_all" not in sys.modules:
        spec = importlib.util.spec_from_file_location("build_all", REPO / "export" / "build_all.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules["build_all"] = module  # its dataclasses look their module up
        spec.loader.exec_module(module)
    return sys.modules["build_all"]


def recipe(path: Path, model: str, resolutions: list[int], windows: dict[int, int] | None = None) -> Path:
    lines = ["[[target]]", 'name = "rule"', f'model = "{model}"', 'checkpoint = "random"',
             f"resolutions = {resolutions}", 'output = "out"']
    if windows:
        lines.append("windows = { " + ", ".join(f'"{r}" = {w}' for r, w in windows.items()) + " }")
    path.write_text("\n".join(lines) + "\n")
    return path


def comparable(meta: ExportMetadata) -> dict[str, Any]:
    return meta.to_dict()  # every field: none differs legitimately between exports (same code, version, opset)


# -- resolve level: both models, and the explicit window ---------------------------------------------------------
@pytest.mark.parametrize("name", [T, B])
def test_rule_at_512_in_the_library(name: str) -> None:
    base = get_config(name)
    cfg = resolve_config(name, img_size=512)
    assert tuple(h for h, _ in cfg.stage_windows) == RULE_AT_512[name]
    assert cfg.window_size == tuple(window_for(base.img_size[0], w, 512) for w in base.window_size)
    # the CPB normaliser stays the trained one: the named config's pretrained windows, else its own
    assert cfg.metadata().pretrained_window_sizes == base.metadata().pretrained_window_sizes
    with torch.device("meta"):  # create_model's geometry, without allocating the weights
        assert create_model(name, img_size=512).cfg == cfg


@pytest.mark.parametrize("name", [T, B])
def test_explicit_window_keeps_its_meaning(name: str) -> None:
    cfg = resolve_config(name, img_size=512, window_size=8)
    assert cfg.window_size == (8, 8, 8, 8) and tuple(h for h, _ in cfg.stage_windows) == (8, 8, 8, 8)
    assert cfg.metadata().pretrained_window_sizes == get_config(name).metadata().pretrained_window_sizes
    with torch.device("meta"):
        assert create_model(name, img_size=512, window_size=8).cfg == cfg


@pytest.mark.parametrize("name", [T, B])
def test_build_all_recipe_accepts_the_rule_and_an_override(name: str, tmp_path: Path) -> None:
    build_all = build_all_module()
    (target,) = build_all.load_recipe(recipe(tmp_path / "rule.toml", name, [512])).targets
    assert target.windows == {}  # nothing recorded: the export applies the library's rule
    (target,) = build_all.load_recipe(recipe(tmp_path / "explicit.toml", name, [512], {512: 8})).targets
    assert target.windows == {512: 8}


# -- nano, fast: real exports through the API, the CLI and build_all ------------------------------------------------
def test_nano_entry_points_agree_on_the_rule_and_on_an_explicit_window(tmp_path: Path) -> None:
    rule = resolve_config(NANO, img_size=96)
    explicit = resolve_config(NANO, img_size=96, window_size=4)
    assert tuple(h for h, _ in rule.stage_windows) == (6, 6, 6, 3)  # 4 * 96 / 64; the last map is 3 x 3
    assert tuple(h for h, _ in explicit.stage_windows) == (4, 4, 4, 3)
    model = create_model(NANO).eval()
    api = {w: read_onnx_metadata(export_onnx(model, tmp_path / f"api_{w}.onnx", img_size=96, window_size=w,
                                             verify=False).path) for w in (None, 4)}
    assert api[None] == rule.metadata(opset=17) and api[4] == explicit.metadata(opset=17)

    for w, extra in ((None, []), (4, ["--window-size", "4"])):
        out = tmp_path / f"cli_{w}"
        assert cli_main(["export", "--model", NANO, "--img-size", "96", "--no-verify", "--output", str(out),
                         *extra]) == 0
        assert comparable(read_onnx_metadata(out / f"{NANO}_96.onnx")) == comparable(api[w])

    build_all = build_all_module()
    root = tmp_path / "build_all"
    code = build_all.main(["--recipe", str(recipe(tmp_path / "r.toml", NANO, [96, 128], {128: 4})), "--formats",
                           "onnx", "--root", str(root), "--images", str(tmp_path / "no_images")])
    assert code == 0
    assert comparable(read_onnx_metadata(root / "out" / "rule" / "rule_96.onnx")) == comparable(api[None])
    at_128 = read_onnx_metadata(root / "out" / "rule" / "rule_128.onnx")
    assert at_128.window_sizes == (4, 4, 4, 4)  # the recipe's explicit window at 128, not the rule's 8
    assert at_128 == resolve_config(NANO, img_size=128, window_size=4).metadata(opset=17)


# -- SwinV2-T at 512, slow: every entry point, real ONNX files ------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_512(tmp_path_factory: pytest.TempPathFactory) -> dict[str, ExportMetadata]:
    """ONNX metadata of SwinV2-T at 512 as each entry point writes it (plus the in-memory API objects)."""
    tmp = tmp_path_factory.mktemp("tiny_512")
    found: dict[str, ExportMetadata] = {}
    # the bench: a real export, in a fresh interpreter that receives the resolved config
    work, out = tmp / "bench_work", tmp / "bench_out"
    assert cli_main(["bench", "--model", T, "--img-size", "512", "--backend", "onnxruntime", "--iters", "1",
                     "--warmup", "0", "--no-plots", "--no-progress", "--workdir", str(work), "--output", str(out)]) == 0
    found["bench"] = read_onnx_metadata(work / f"{T}_512_ours.onnx")
    with (out / "results.csv").open(newline="") as f:  # what the bench reports it measured: the first window
        (row,) = csv.DictReader(f)
    assert (row["status"], int(row["img_size"]), int(row["window_size"])) == ("ok", 512, found["bench"].window_sizes[0])

    model = create_model(T).eval()
    opset = found["bench"].opset
    found["to_deploy"] = to_deploy(model, img_size=512).cfg.metadata(opset=opset)
    # a runtime that was never exported says opset None; that field legitimately differs, the rest may not
    found["TorchRuntime"] = TorchRuntime(model, img_size=512).metadata.replace(opset=opset)
    del model
    # real exports: `swinv2-serve export` (export_onnx underneath) and build_all.py (with its ONNX Runtime check)
    assert cli_main(["export", "--model", T, "--img-size", "512", "--no-verify", "--output", str(tmp / "cli")]) == 0
    found["swinv2-serve export"] = read_onnx_metadata(tmp / "cli" / f"{T}_512.onnx")
    code = build_all_module().main(["--recipe", str(recipe(tmp / "t.toml", T, [512])), "--formats", "onnx",
                                    "--root", str(tmp / "build_all"), "--images", str(tmp / "no_images")])
    assert code == 0
    found["build_all.py"] = read_onnx_metadata(tmp / "build_all" / "out" / "rule" / "rule_512.onnx")
    return found


@pytest.mark.slow
def test_tiny_at_512_every_entry_point_writes_the_same_metadata(tiny_512: dict[str, ExportMetadata]) -> None:
    reference = tiny_512["bench"]  # the real export
    assert reference.window_sizes == RULE_AT_512[T] and reference.img_size == (512, 512)
    assert reference == resolve_config(T, img_size=512).metadata(opset=reference.opset)
    differ = {entry: {k: (v, comparable(reference)[k]) for k, v in comparable(meta).items()
                      if v != comparable(reference)[k]}
              for entry, meta in tiny_512.items()}
    assert not any(differ.values()), {entry: fields for entry, fields in differ.items() if fields}
    print(f"{len(tiny_512)} entry points agree: windows {reference.window_sizes}, "
          f"CPB normaliser {reference.pretrained_window_sizes}", file=sys.stderr)
