"""TensorRT engines: everything that needs no GPU is tested here for real; engine builds need TensorRT + a GPU.

TensorRT is never faked: where it (or a CUDA GPU) is missing, the ``gpu`` tests skip with the reason.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import perturb_

from swinv2_serve import create_model, tensorrt_build
from swinv2_serve.commands._tensorrt_options import add_tensorrt_arguments, tensorrt_options_from_args
from swinv2_serve.config import resolve_config
from swinv2_serve.errors import BackendUnavailableError, ExportError, SwinV2ServeError
from swinv2_serve.runtime.engine import (
    BatchProfile,
    EngineCompatibilityError,
    EngineInfo,
    TensorSpec,
    batch_profile,
    check_engine_compatibility,
    default_opt_batch,
    read_sidecar,
    sidecar_path,
    write_sidecar,
)
from swinv2_serve.runtime.tensorrt_backend import tensorrt_unavailable_reason
from swinv2_serve.tensorrt_build import TensorRTOptions, build_verified, default_plan_path, resolve_strongly_typed

REPO = Path(__file__).resolve().parents[1]
TRT_REASON = tensorrt_unavailable_reason()
needs_trt = pytest.mark.skipif(TRT_REASON is not None, reason=f"needs TensorRT 10 and a CUDA GPU: {TRT_REASON}")


# -- batch profile -------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("min_b", "max_b", "opt"), [(1, 32, 16), (1, 1, 1), (1, 2, 1), (1, 8, 4), (1, 48, 16),
                                                     (1, 5, 2), (20, 32, 20), (4, 4, 4)])
def test_default_opt_batch(min_b, max_b, opt) -> None:
    assert default_opt_batch(min_b, max_b) == opt
    assert batch_profile(min_b, None, max_b) == BatchProfile(min_b, opt, max_b)


def test_batch_profile_shapes() -> None:
    assert batch_profile(1, 8, 32).shapes((3, 256, 256)) == ((1, 3, 256, 256), (8, 3, 256, 256), (32, 3, 256, 256))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((0, None, 8), "min batch must be >= 1"),
        ((8, None, 4), "max batch 4 is smaller than min batch 8"),
        ((1, 64, 32), "opt batch 64 must lie between min batch 1 and max batch 32"),
        ((4, 2, 32), "opt batch 2 must lie between"),
        ((1, None, 2.5), "max batch must be an integer"),
        ((True, None, 4), "min batch must be an integer"),
    ],
)
def test_batch_profile_rejects(args, message) -> None:
    with pytest.raises(SwinV2ServeError, match=message):
        batch_profile(*args)


# -- precision / typing ---------------------------------------------------------------------------------------
def test_precision_checks() -> None:
    assert tensorrt_build.check_engine_precision("fp16") == "fp16"
    with pytest.raises(SwinV2ServeError, match="int8 is not supported.*calibration"):
        tensorrt_build.check_engine_precision("int8")
    with pytest.raises(SwinV2ServeError, match="tensorrt runs fp32 / fp16, not bf16"):
        tensorrt_build.check_engine_precision("bf16")


def test_strongly_typed_resolution() -> None:
    assert resolve_strongly_typed("fp16", onnx_fp16=True, requested=None) is True  # the ONNX Casts rule
    assert resolve_strongly_typed("fp16", onnx_fp16=False, requested=None) is False  # FP16 flag + FP32 islands
    assert resolve_strongly_typed("fp32", onnx_fp16=False, requested=None) is False
    assert resolve_strongly_typed("fp32", onnx_fp16=False, requested=True) is True
    assert resolve_strongly_typed("fp16", onnx_fp16=True, requested=False) is False
    with pytest.raises(SwinV2ServeError, match="engine would be fp32"):
        resolve_strongly_typed("fp16", onnx_fp16=False, requested=True)
    with pytest.raises(SwinV2ServeError, match="exported in fp16"):
        resolve_strongly_typed("fp32", onnx_fp16=True, requested=None)


# -- sidecar ----------------------------------------------------------------------------------------------------
def make_info(**changes) -> EngineInfo:
    info = EngineInfo(
        plan="nano.fp16.plan",
        tensorrt_version="10.3.0",
        gpu_name="NVIDIA A10G",
        compute_capability=(8, 6),
        precision="fp16",
        batch_profile=BatchProfile(1, 16, 32),
        inputs=(TensorSpec("input", (-1, 3, 256, 256), "float32"),),
        outputs=(TensorSpec("logits", (-1, 1000), "float32"), TensorSpec("probs", (-1, 1000), "float32")),
        flags={"strongly_typed": True, "version_compatible": False, "hardware_compatibility_level": "NONE"},
        metadata=resolve_config("swinv2_tiny_window8_256").metadata(fp16=True, opset=17),
        onnx_sha256="ab" * 32,
        build_seconds=12.5,
    )
    return EngineInfo(**{**info.__dict__, **changes})


def test_sidecar_round_trip(tmp_path) -> None:
    info = make_info(verification={"max_abs_diff": 0.01, "top1_agreement": 1.0})
    plan = tmp_path / "nano.fp16.plan"
    path = write_sidecar(info, plan)
    assert path == tmp_path / "nano.fp16.plan.json" == sidecar_path(plan)
    data = json.loads(path.read_text())  # plain JSON other tools (the Triton repository writer) read
    assert data["format"] == 1 and data["compute_capability"] == "8.6"
    assert data["batch_profile"] == {"min": 1, "opt": 16, "max": 32}
    assert data["inputs"] == [{"name": "input", "shape": [-1, 3, 256, 256], "dtype": "float32"}]
    assert data["metadata"]["model"] == "swinv2_tiny_window8_256"
    assert read_sidecar(plan) == info


def test_sidecar_errors(tmp_path) -> None:
    plan = tmp_path / "x.plan"
    with pytest.raises(SwinV2ServeError, match="x.plan.json not found"):
        read_sidecar(plan)
    sidecar_path(plan).write_text('{"plan": "x.plan"}')
    with pytest.raises(SwinV2ServeError, match="not a valid engine sidecar"):
        read_sidecar(plan)
    sidecar_path(plan).write_text(json.dumps({**make_info().to_dict(), "format": 99}))
    with pytest.raises(SwinV2ServeError, match="format 99 is newer"):
        read_sidecar(plan)


# -- engine / machine compatibility ---------------------------------------------------------------------------
def test_same_version_and_gpu_is_compatible() -> None:
    check_engine_compatibility(make_info(), "10.3.0", "NVIDIA A10G", "8.6")
    check_engine_compatibility(make_info().to_dict(), "10.3.0", "nvidia  a10g", (8, 6))  # dicts, spacing, case


@pytest.mark.parametrize(
    ("trt_version", "gpu", "cc", "message"),
    [
        ("10.4.0", "NVIDIA A10G", "8.6", "TensorRT versions differ"),
        ("10.3.0", "NVIDIA L4", "8.9", "GPUs differ"),
        ("10.3.0", "NVIDIA A100-SXM4-80GB", "8.0", "GPUs differ"),
    ],
)
def test_plain_engine_refuses_other_version_or_gpu(trt_version, gpu, cc, message) -> None:
    with pytest.raises(EngineCompatibilityError, match=message) as err:
        check_engine_compatibility(make_info(), trt_version, gpu, cc, plan="nano.fp16.plan")
    text = str(err.value)
    assert "nano.fp16.plan was built with TensorRT 10.3.0 on NVIDIA A10G (compute capability 8.6)" in text
    assert f"this is TensorRT {trt_version} on {gpu}" in text and "rebuild" in text


def test_version_compatible_engine() -> None:
    info = make_info(flags={"version_compatible": True})
    check_engine_compatibility(info, "10.3.0", "NVIDIA A10G", "8.6")
    check_engine_compatibility(info, "10.8.0.43", "NVIDIA A10G", "8.6")
    for version in ("10.2.0", "11.0.0"):
        with pytest.raises(EngineCompatibilityError, match="version-compatible engine runs on TensorRT 10.x"):
            check_engine_compatibility(info, version, "NVIDIA A10G", "8.6")


def test_hardware_compatible_engine() -> None:
    ampere_plus = make_info(flags={"hardware_compatibility_level": "AMPERE_PLUS"})
    for gpu, cc in (("NVIDIA H100 80GB HBM3", "9.0"), ("NVIDIA L4", "8.9"), ("NVIDIA A100", "8.0")):
        check_engine_compatibility(ampere_plus, "10.3.0", gpu, cc)
    with pytest.raises(EngineCompatibilityError, match="needs compute capability 8.0 or newer"):
        check_engine_compatibility(ampere_plus, "10.3.0", "Tesla T4", "7.5")
    with pytest.raises(EngineCompatibilityError, match="TensorRT versions differ"):
        check_engine_compatibility(ampere_plus, "10.5.0", "NVIDIA L4", "8.9")
    same_cc = make_info(flags={"hardware_compatibility_level": "SAME_COMPUTE_CAPABILITY"})
    check_engine_compatibility(same_cc, "10.3.0", "NVIDIA RTX A6000", "8.6")
    with pytest.raises(EngineCompatibilityError, match="compute capabilities differ"):
        check_engine_compatibility(same_cc, "10.3.0", "NVIDIA L4", "8.9")


def test_bad_compute_capability() -> None:
    with pytest.raises(SwinV2ServeError, match="must look like '8.6'"):
        check_engine_compatibility(make_info(), "10.3.0", "NVIDIA A10G", "86")


# -- verification logic (pure numpy, and real runtimes: ONNX Runtime vs torch) --------------------------------
def test_verify_runtime_with_real_backends(photo_paths, tmp_path) -> None:
    from swinv2_serve.onnx_export import export_onnx
    from swinv2_serve.runtime import OnnxRuntime, TorchRuntime

    model = perturb_(create_model("swinv2_nano_window4_64")).eval()
    export_onnx(model, tmp_path / "nano.onnx", verify=False)
    reference = OnnxRuntime(tmp_path / "nano.onnx")
    tolerance = tensorrt_build.DEFAULT_TOLERANCE["fp32"]
    result = tensorrt_build.verify_runtime(TorchRuntime(model, max_batch=3), reference, tolerance,
                                           [*photo_paths, tmp_path / "missing.jpg"], random_inputs=4)
    assert result.photos is not None and result.random is not None and result.passed
    assert result.photos.comparison.samples == len(photo_paths)  # the unreadable file is skipped, not fatal
    assert result.random.comparison.samples == 4
    assert result.decisive is result.photos and result.photos.comparison.top1_agreement == 1.0
    assert max(v.comparison.max_abs_diff for v in (result.photos, result.random)) < 1e-4
    strict = tensorrt_build.verify_runtime(TorchRuntime(model, precision="bf16", max_batch=3), reference,
                                           dataclasses.replace(tolerance, atol=1e-6, rtol=0.0), photo_paths,
                                           random_inputs=2)
    assert not strict.passed and "max |logit diff|" in strict.decisive.failures[0]  # bf16 is not within 1e-6


# -- CLI options ------------------------------------------------------------------------------------------------
def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="swinv2-serve export")
    add_tensorrt_arguments(p)
    return p


def test_cli_defaults() -> None:
    opts = tensorrt_options_from_args(parser().parse_args([]))
    assert opts.precision == "fp16" and opts.profile == BatchProfile(1, 16, 32)
    assert opts.workspace_gib == 4.0 and opts.strongly_typed is None and not opts.version_compatible
    assert opts.bounds == tensorrt_build.DEFAULT_TOLERANCE["fp16"]
    argv = ("--precision FP32 --min-batch 2 --opt-batch 4 --max-batch 8 --workspace-gib 1.5 --timing-cache t.cache "
            "--version-compatible --hardware-compatible --no-strongly-typed --min-top1 0.5 --max-abs-diff-rtol 0.2")
    opts = tensorrt_options_from_args(parser().parse_args(argv.split(" ")))
    assert opts.precision == "fp32" and opts.profile == BatchProfile(2, 4, 8) and opts.workspace_gib == 1.5
    assert opts.timing_cache == Path("t.cache") and opts.version_compatible and opts.hardware_compatible
    assert opts.strongly_typed is False and opts.tolerance.min_top1 == 0.5 and opts.tolerance.rtol == 0.2


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ("--precision int8", "int8 is not supported .it needs a calibration set.: use fp16 or fp32"),
        ("--precision tf32", "unknown precision 'tf32'"),
        ("--precision bf16", "tensorrt runs fp32 / fp16, not bf16"),
        ("--max-batch 0", "--max-batch: must be >= 1, got 0"),
        ("--min-batch two", "--min-batch: expected a whole number, got 'two'"),
        ("--workspace-gib -1", "--workspace-gib: must be > 0"),
        ("--min-top1 1.5", r"--min-top1: must be in \(0, 1\]"),
    ],
)
def test_cli_parse_errors(argv, message, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        parser().parse_args(argv.split())
    assert exit_info.value.code == 2
    assert re.search(message, capsys.readouterr().err)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ("--min-batch 8 --max-batch 4", "--min-batch/--opt-batch/--max-batch: max batch 4 is smaller than min batch 8"),
        ("--opt-batch 64 --max-batch 32", "opt batch 64 must lie between min batch 1 and max batch 32"),
        ("--min-batch 8 --opt-batch 4 --max-batch 16", "opt batch 4 must lie between min batch 8"),
    ],
)
def test_cli_profile_errors(argv, message) -> None:
    with pytest.raises(SwinV2ServeError, match=message):
        tensorrt_options_from_args(parser().parse_args(argv.split()))


def test_default_plan_path() -> None:
    assert default_plan_path("out/nano_256.onnx", "fp16") == Path("out/nano_256.fp16.plan")
    assert default_plan_path("out/nano_256.fp16.onnx", "fp16") == Path("out/nano_256.fp16.plan")


def test_build_without_tensorrt_says_where_to_run(tmp_path) -> None:
    if TRT_REASON is None:
        pytest.skip("TensorRT and a GPU are available here")
    bad = parser().parse_args(["--min-batch", "8", "--max-batch", "4"])
    with pytest.raises(SwinV2ServeError, match="max batch 4 is smaller"):  # argument errors come first
        tensorrt_options_from_args(bad)
    with pytest.raises(BackendUnavailableError, match=r"nvcr.io/nvidia/tensorrt:<release>-py3 with --gpus all"):
        build_verified(tmp_path / "m.onnx", tmp_path / "m.plan", tensorrt_options_from_args(parser().parse_args([])))
    assert not list(tmp_path.iterdir())  # nothing written


def test_gpu_info_without_gpu() -> None:
    from swinv2_serve.runtime.cuda import gpu_info

    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU")
    with pytest.raises(BackendUnavailableError, match="no CUDA GPU visible|cuda-python is not installed"):
        gpu_info()


# -- no TensorRT 8 API, the TensorRT 10 one (read from the parsed code: names in comments or strings do not count)
DEPRECATED = {
    "build_engine": "builder.build_engine (use build_serialized_network)",
    "max_workspace_size": "max_workspace_size (use set_memory_pool_limit)",
    "get_binding_index": "binding indices (use the name-based tensor API)",
    "get_binding_shape": "binding indices (use the name-based tensor API)",
    "binding_is_input": "binding indices (use the name-based tensor API)",
    "num_bindings": "binding indices (use the name-based tensor API)",
    "execute_async_v2": "execute_async_v2 (use execute_async_v3)",
    "execute_v2": "execute_v2 (use execute_async_v3)",
    "execute": "execute (use execute_async_v3)",
    "EXPLICIT_BATCH": "NetworkDefinitionCreationFlag.EXPLICIT_BATCH (the only mode in TensorRT 10)",
    "max_batch_size": "implicit batch (use an optimisation profile)",
    "set_binding_shape": "binding shapes (use context.set_input_shape)",
    "set_shape_input": "binding shapes (use context.set_input_shape)",
}
TRT_SOURCES = ["swinv2_serve/tensorrt_build.py", "swinv2_serve/runtime/tensorrt_backend.py",
               "swinv2_serve/runtime/engine.py", "swinv2_serve/runtime/cuda.py", "export/build_all.py"]


def attributes_used(source: str) -> dict[str, int]:
    """Attribute names the code reads (``x.name`` and ``getattr(x, "name")``) -> first line."""
    used: dict[str, int] = {}
    for node in ast.walk(ast.parse((REPO / source).read_text())):
        if isinstance(node, ast.Attribute):
            used.setdefault(node.attr, node.lineno)
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "getattr"
              and len(node.args) > 1 and isinstance(node.args[1], ast.Constant)):
            used.setdefault(str(node.args[1].value), node.lineno)
    return used


def test_attributes_used_reads_code_not_text(tmp_path) -> None:
    source = tmp_path / "probe.py"
    source.write_text('# context.execute_v2(b)\nx = "builder.build_engine"\ncontext.execute_async_v3(s)\n'
                      'getattr(trt, "IProgressMonitor")\n')
    used = attributes_used(str(source))
    assert used == {"execute_async_v3": 3, "IProgressMonitor": 4}


@pytest.mark.parametrize("source", TRT_SOURCES)
def test_no_deprecated_tensorrt8_calls(source) -> None:
    used = attributes_used(source)
    found = [f"{what}: line {used[name]}" for name, what in DEPRECATED.items() if name in used]
    assert not found, f"{source} uses TensorRT 8 API: {found}"


def test_tensorrt10_api_is_used() -> None:
    used = {name for source in TRT_SOURCES for name in attributes_used(source)}
    for call in ("build_serialized_network", "set_memory_pool_limit", "create_optimization_profile",
                 "get_error", "execute_async_v3", "set_input_shape", "set_tensor_address",
                 "get_tensor_name", "num_io_tensors", "STRONGLY_TYPED", "OBEY_PRECISION_CONSTRAINTS",
                 "set_timing_cache", "VERSION_COMPATIBLE", "AMPERE_PLUS", "IProgressMonitor",
                 "deserialize_cuda_engine", "get_tensor_profile_shape"):
        assert call in used, call


# -- real engines (TensorRT 10 + GPU) --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def nano_onnx_pair(tmp_path_factory) -> tuple[Path, Path]:
    from swinv2_serve.onnx_export import export_onnx

    model = perturb_(create_model("swinv2_nano_window4_64")).eval()
    out = tmp_path_factory.mktemp("trt")
    export_onnx(model, out / "nano.onnx")
    export_onnx(model, out / "nano.fp16.onnx", fp16=True)
    return out / "nano.onnx", out / "nano.fp16.onnx"


@pytest.mark.gpu
@needs_trt
@pytest.mark.parametrize(("which", "precision", "typed"), [(0, "fp32", False), (0, "fp16", False),
                                                          (1, "fp16", True)])
def test_build_and_run_engine(nano_onnx_pair, photo_paths, tmp_path, which, precision, typed) -> None:
    from swinv2_serve.runtime import TensorRTRuntime, load

    onnx_path = nano_onnx_pair[which]
    plan = tmp_path / f"nano.{precision}.plan"
    cache = tmp_path / "timing.cache"
    info = tensorrt_build.build_engine(onnx_path, plan, precision=precision, max_batch=8, timing_cache=cache)
    assert plan.is_file() and cache.is_file() and read_sidecar(plan) == info
    assert info.flags["strongly_typed"] is typed and info.batch_profile == BatchProfile(1, 4, 8)
    assert [t.name for t in info.inputs] == ["input"] and {t.name for t in info.outputs} == {"logits", "probs"}
    result = tensorrt_build.verify_engine(plan, onnx_path, tensorrt_build.DEFAULT_TOLERANCE[precision], photo_paths)
    assert result.passed, [v.summary() for v in (result.photos, result.random) if v is not None]
    with load(plan) as rt:
        assert isinstance(rt, TensorRTRuntime) and rt.max_batch == 8
        for batch in (1, 3, 8):
            out = rt(np.zeros((batch, 3, 64, 64), np.float32))
            assert out["logits"].shape == (batch, 10) and np.isfinite(out["logits"]).all()
        with pytest.raises(SwinV2ServeError, match="exceeds this model's max batch 8"):
            rt(np.zeros((9, 3, 64, 64), np.float32))


@pytest.mark.gpu
@needs_trt
def test_build_verified_refuses_a_failing_engine(nano_onnx_pair, photo_paths, tmp_path) -> None:
    onnx_path = nano_onnx_pair[1]
    args = parser().parse_args(["--max-batch", "4", "--max-abs-diff-rtol", "1e-12"])  # fp16 never meets this
    plan = tmp_path / "nano.fp16.plan"
    with pytest.raises(ExportError, match="refusing to write"):
        build_verified(onnx_path, plan, tensorrt_options_from_args(args), photo_paths)
    assert not list(tmp_path.iterdir())
    info = build_verified(onnx_path, plan, TensorRTOptions(profile=BatchProfile(1, 2, 4)), photo_paths)
    assert plan.is_file() and info.verification["photos"]["top1_agreement"] >= 0.95


@pytest.mark.gpu
@needs_trt
def test_engine_refuses_mismatched_sidecar(nano_onnx_pair, tmp_path) -> None:
    from swinv2_serve.runtime import load

    plan = tmp_path / "nano.fp32.plan"
    info = tensorrt_build.build_engine(nano_onnx_pair[0], plan, precision="fp32", max_batch=2)
    write_sidecar(EngineInfo(**{**info.__dict__, "gpu_name": "Some Other GPU"}), plan)
    with pytest.raises(EngineCompatibilityError, match="GPUs differ"):
        load(plan)


# -- export recipe -------------------------------------------------------------------------------------------------
def build_all_module():
    import importlib.util
    import sys

    if "build_all" not in sys.modules:  # dataclasses look their module up in sys.modules
        spec = importlib.util.spec_from_file_location("build_all", REPO / "export" / "build_all.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules["build_all"] = module
        spec.loader.exec_module(module)
    return sys.modules["build_all"]


def test_recipe_targets_are_valid() -> None:
    from swinv2_serve.config import list_models, resolve_config

    recipe = build_all_module().load_recipe()
    assert recipe.targets and len({t.name for t in recipe.targets}) == len(recipe.targets)
    for target in recipe.targets:
        assert target.model in list_models()
        assert set(target.precisions) <= {"fp32", "fp16"}
        assert 1 <= target.profile.min <= target.profile.opt <= target.profile.max
        for r in target.resolutions:
            cfg = resolve_config(target.model, img_size=r, window_size=target.windows.get(r))
            assert cfg.img_size == (r, r) and r % 32 == 0
            assert all(h % wh == 0 for (h, _), (wh, _) in zip(cfg.stage_resolutions, cfg.stage_windows)), (target, r)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ('model = "swinv2_tiny_window8_256"\ncheckpoint = "random"\nresolutions = [256]', "missing 'name'"),
        ('name = "a"\nmodel = "swinv2_tinyy"\ncheckpoint = "random"\nresolutions = [256]', "unknown model"),
        ('name = "a"\nmodel = "swinv2_tiny_window8_256"\ncheckpoint = "random"\nresolutions = [250]',
         "resolution 250 is not a multiple of 32"),
        ('name = "a"\nmodel = "swinv2_tiny_window8_256"\ncheckpoint = "random"\nresolutions = [256]\n'
         'windows = { "384" = 12 }', "windows names resolution 384"),
        ('name = "a"\nmodel = "swinv2_tiny_window8_256"\ncheckpoint = "random"\nresolutions = [256]\n'
         'precisions = ["int8"]', "precision int8 is not supported"),
        ('name = "a"\nmodel = "swinv2_tiny_window8_256"\ncheckpoint = "random"\nresolutions = [256]\n'
         "min_batch = 8\nmax_batch = 4", "max batch 4 is smaller than min batch 8"),
        ('name = "A b"\nmodel = "swinv2_tiny_window8_256"\ncheckpoint = "random"\nresolutions = [256]',
         "name must be lower-case"),
        ('name = "a"\nmodel = "swinv2_tiny_window8_256"\ncheckpoint = "random"\nresolutions = [256]\nbatch = 3',
         "unknown key 'batch'"),
    ],
)
def test_recipe_errors(tmp_path, body, message) -> None:
    path = tmp_path / "targets.toml"
    path.write_text(f"[[target]]\n{body}\n")
    with pytest.raises(SwinV2ServeError, match=message):
        build_all_module().load_recipe(path)


def test_build_all_dry_run_and_trt_refusal(tmp_path, capsys) -> None:
    module = build_all_module()
    assert module.main(["--dry-run", "--only", "nano_smoke", "--formats", "onnx", "trt"]) == 0
    out = capsys.readouterr().out
    assert "nano_smoke_64.onnx" in out and "nano_smoke_128.fp16.plan" in out
    assert module.main(["--only", "nope"]) == 2
    if TRT_REASON is not None:
        assert module.main(["--only", "nano_smoke", "--formats", "onnx", "trt", "--root", str(tmp_path)]) == 2
        assert "nvcr.io/nvidia/tensorrt" in capsys.readouterr().err
        assert not list(tmp_path.iterdir())  # refused before any work
