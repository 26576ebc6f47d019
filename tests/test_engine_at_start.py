"""Engines built at container start: the recipe a repository carries and the exact command each pod runs.

No GPU here: the trtexec build itself cannot run, so its command is checked (``--dry-run``) against what the
Python builder decides for the same ONNX, and a missing trtexec is a clear error that writes nothing.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import perturb_

from swinv2_serve import create_model
from swinv2_serve.cli import main
from swinv2_serve.engine_at_start import RECIPE_FILE, EngineRecipe, build_missing, recipes
from swinv2_serve.errors import BackendUnavailableError, ExportError
from swinv2_serve.onnx_export import export_onnx
from swinv2_serve.repository import parse_config, write_repository
from swinv2_serve.tensorrt_build import resolve_strongly_typed

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def exports(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    model = perturb_(create_model("swinv2_nano_window4_64")).eval()
    out = tmp_path_factory.mktemp("engine_at_start")
    torch.manual_seed(0)
    return (export_onnx(model, out / "nano.onnx", verify=False).path,
            export_onnx(model, out / "nano.fp16.onnx", fp16=True, verify=False).path)


def test_fp16_repository_carries_the_fp16_export_and_a_strongly_typed_recipe(exports, tmp_path: Path) -> None:
    fp32, fp16 = exports
    repo = write_repository(tmp_path, "nano", onnx=fp16, engine_at_start=True, max_batch=8)
    assert parse_config(repo.configs["nano"].read_text()).platform == "tensorrt_plan"
    assert (tmp_path / "nano" / "model.onnx").read_bytes() == fp16.read_bytes()  # the Casts are the FP32 islands
    assert not (tmp_path / "nano" / "1" / "model.plan").exists()
    [(model_dir, recipe)] = recipes(tmp_path)
    assert model_dir == tmp_path / "nano" and recipe.precision == "fp16" and recipe.input_shape == (3, 64, 64)
    # the same decision the Python builder (swinv2-serve export --format trt) makes for this ONNX
    assert recipe.strongly_typed is resolve_strongly_typed("fp16", onnx_fp16=True, requested=None) is True
    assert (recipe.profile.min, recipe.profile.max) == (1, 8)
    assert EngineRecipe.from_dict(json.loads((model_dir / RECIPE_FILE).read_text())) == recipe


def test_dry_run_is_the_exact_trtexec_command(exports, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_repository(tmp_path, "nano", onnx=exports[1], engine_at_start=True, max_batch=8)
    cache = tmp_path / ".timing_cache"
    assert main(["engine", "--repository", str(tmp_path), "--timing-cache", str(cache), "--dry-run"]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    plan = tmp_path / "nano" / "1" / ".model.plan.partial"
    assert line.split() == [
        "trtexec", f"--onnx={tmp_path / 'nano' / 'model.onnx'}", f"--saveEngine={plan}",
        "--minShapes=input:1x3x64x64", "--optShapes=input:4x3x64x64", "--maxShapes=input:8x3x64x64",
        "--memPoolSize=workspace:4096M", "--skipInference", "--stronglyTyped", f"--timingCacheFile={cache}",
    ]
    assert "--fp16" not in line  # a plain FP16 flag would let TensorRT run the normalisations in FP16
    assert not list((tmp_path / "nano" / "1").iterdir())  # a dry run builds nothing


def test_fp16_from_an_fp32_export_is_refused(exports, tmp_path: Path) -> None:
    with pytest.raises(ExportError, match=r"fp32 export.*would not keep the FP32 islands.*--onnx-fp16"):
        write_repository(tmp_path, "nano", onnx=exports[0], engine_at_start=True)
    assert not (tmp_path / "nano").exists()  # a refused repository leaves no half-written model
    repo = write_repository(tmp_path, "nano", onnx=exports[0], engine_at_start=True, engine_precision="fp32")
    [(_, recipe)] = recipes(repo.root)
    assert recipe.precision == "fp32" and not recipe.strongly_typed


@pytest.mark.skipif(shutil.which("trtexec") is not None, reason="trtexec is installed here")
def test_without_trtexec_says_where_to_build(exports, tmp_path: Path) -> None:
    write_repository(tmp_path, "nano", onnx=exports[1], engine_at_start=True, max_batch=4)
    with pytest.raises(BackendUnavailableError, match="trtexec is not on PATH"):
        build_missing(tmp_path, log=lambda _: None)
    assert not (tmp_path / "nano" / "1" / "model.plan").exists()
    assert main(["engine", "--repository", str(tmp_path)]) == 2  # one line on stderr, exit 2


def test_the_entrypoint_runs_it_before_tritonserver() -> None:
    entrypoint = (REPO / "docker" / "entrypoint.sh").read_text()
    build = entrypoint.index('swinv2-serve engine --repository "${REPO}" --timing-cache "${REPO}/.timing_cache"')
    assert build < entrypoint.index('exec tritonserver --model-repository="${REPO}"')
    assert "trtexec --onnx" not in entrypoint and "--fp16" not in entrypoint  # the recipe decides, in one place


def test_the_serving_image_needs_no_torch_or_onnx_for_it() -> None:
    """The serving image installs the wheel with numpy and Pillow only: `swinv2-serve engine` must import there."""
    import subprocess
    import sys

    code = "import sys, swinv2_serve.cli, swinv2_serve.commands.engine; print(sorted({'torch', 'onnx', " \
           "'onnxruntime', 'tritonclient'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stdout + out.stderr
