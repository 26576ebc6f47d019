"""The Runtime interface: ONNX Runtime and torch backends against eager, input checks, backend registry."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import perturb_

from swinv2_serve import create_model, runtime
from swinv2_serve.errors import BackendUnavailableError, SwinV2ServeError
from swinv2_serve.onnx_export import export_onnx
from swinv2_serve.preprocess import Preprocess
from swinv2_serve.runtime import OnnxRuntime, Runtime, TorchRuntime, available_backends, load
from swinv2_serve.runtime.onnxruntime_backend import ort_providers

NANO = "swinv2_nano_window4_64"
ATOL = 1e-4


@pytest.fixture(scope="module")
def nano_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return perturb_(create_model(NANO)).eval()


@pytest.fixture(scope="module")
def nano_onnx(nano_model: torch.nn.Module, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("onnx") / "nano.onnx"
    export_onnx(nano_model, path)
    return path


@pytest.fixture(scope="module")
def inputs(nano_model: torch.nn.Module, photo_paths: list[Path]) -> np.ndarray:
    photos = Preprocess.from_config(nano_model.cfg).batch(photo_paths)
    noise = np.random.default_rng(0).standard_normal((3, 3, 64, 64)).astype(np.float32)
    return np.concatenate([photos, noise])


def eager(model: torch.nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy()


def test_onnxruntime_matches_eager(nano_model, nano_onnx, inputs) -> None:
    rt = load(nano_onnx)
    assert isinstance(rt, OnnxRuntime) and rt.backend == "onnxruntime"
    assert rt.input_shape == (3, 64, 64) and rt.metadata.model == NANO and rt.num_classes == 10
    out = rt(inputs)
    np.testing.assert_allclose(out["logits"], eager(nano_model, inputs), atol=ATOL, rtol=0)
    np.testing.assert_allclose(out["probs"].sum(1), 1.0, atol=1e-5)


def test_onnxruntime_options_agree(nano_model, nano_onnx, inputs) -> None:
    rt = OnnxRuntime(nano_onnx, providers=["cpu"], threads=1, optimization="basic", max_batch=16)
    assert rt.providers == ["CPUExecutionProvider"] and rt.max_batch == 16
    np.testing.assert_allclose(rt(inputs)["logits"], eager(nano_model, inputs), atol=ATOL, rtol=0)
    with pytest.raises(SwinV2ServeError, match="optimization must be one of"):
        OnnxRuntime(nano_onnx, optimization="max")


def test_ort_provider_names_and_options() -> None:
    names, opts = ort_providers(["tensorrt", ("cuda", {"device_id": 1}), "cpu"],
                                {"TensorrtExecutionProvider": {"trt_fp16_enable": True}})
    assert names == ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    assert opts == [{"trt_fp16_enable": "True"}, {"device_id": 1}, {}]
    assert ort_providers(None) == (["CPUExecutionProvider"], [{}])


def test_ort_gpu_provider_refused_where_missing(nano_onnx) -> None:
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("onnxruntime-gpu is installed here")
    with pytest.raises(BackendUnavailableError, match="CUDAExecutionProvider.*not available"):
        OnnxRuntime(nano_onnx, providers=["cuda", "cpu"])


def test_torch_runtime_deploy_matches_eager(nano_model, inputs) -> None:
    rt = load(nano_model)  # a module: torch backend, deploy form
    assert isinstance(rt, TorchRuntime) and type(rt.module).__name__ == "DeploySwinV2"
    assert rt.input_shape == (3, 64, 64) and rt.metadata.num_classes == 10
    np.testing.assert_allclose(rt(inputs)["logits"], eager(nano_model, inputs), atol=ATOL, rtol=0)
    train_time = TorchRuntime(nano_model, deploy=False)
    assert train_time.module is nano_model
    np.testing.assert_allclose(train_time(inputs)["logits"], eager(nano_model, inputs), atol=ATOL, rtol=0)


def test_torch_runtime_from_checkpoint(nano_model, inputs, tmp_path) -> None:
    from swinv2_serve.checkpoint import save_checkpoint

    path = tmp_path / "nano.pt"
    save_checkpoint(nano_model, path)
    rt = load(path)
    assert rt.backend == "torch"
    np.testing.assert_allclose(rt(inputs)["logits"], eager(nano_model, inputs), atol=ATOL, rtol=0)


@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_torch_runtime_autocast_close(nano_model, inputs, dtype) -> None:
    ref = eager(nano_model, inputs)
    out = TorchRuntime(nano_model, precision=dtype)(inputs)
    assert out["logits"].dtype == np.float32 and np.isfinite(out["logits"]).all()
    scale = np.abs(ref).max()
    assert np.abs(out["logits"] - ref).max() < 0.1 * scale  # reduced precision, same answers broadly
    with pytest.raises(SwinV2ServeError, match="torch runs fp32 / fp16 / bf16, not int8"):
        TorchRuntime(nano_model, precision="int8")


@pytest.mark.slow
def test_torch_runtime_compiled_matches_eager(nano_model, inputs) -> None:
    rt = TorchRuntime(nano_model, compile=True)
    np.testing.assert_allclose(rt(inputs)["logits"], eager(nano_model, inputs), atol=ATOL, rtol=0)


def test_torch_runtime_cuda_refused_without_gpu(nano_model) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU")
    with pytest.raises(BackendUnavailableError, match="no CUDA GPU"):
        TorchRuntime(nano_model, device="cuda")


@pytest.mark.parametrize(
    ("x", "message"),
    [
        (np.zeros((2, 3, 64, 64), np.float64), "must be float32, got float64"),
        (np.zeros((3, 64, 64), np.float32), r"must be \[B, 3, 64, 64\], got \[3, 64, 64\]"),
        (np.zeros((2, 3, 32, 32), np.float32), r"must be \[B, 3, 64, 64\], got \[2, 3, 32, 32\]"),
        (np.zeros((2, 1, 64, 64), np.float32), r"must be \[B, 3, 64, 64\]"),
        (np.zeros((0, 3, 64, 64), np.float32), "batch is empty"),
        (np.zeros((5, 3, 64, 64), np.float32), "batch 5 exceeds this model's max batch 4"),
        ([[0.0]], "must be a numpy array, got list"),
    ],
)
def test_check_input_errors(nano_onnx, x, message) -> None:
    rt = OnnxRuntime(nano_onnx, max_batch=4)
    with pytest.raises(SwinV2ServeError, match=message):
        rt(x)


def test_check_input_accepts_non_contiguous(nano_model, nano_onnx, inputs) -> None:
    x = np.asfortranarray(inputs)
    np.testing.assert_allclose(load(nano_onnx)(x)["logits"], eager(nano_model, inputs), atol=ATOL, rtol=0)


def test_load_errors(nano_onnx, tmp_path) -> None:
    with pytest.raises(SwinV2ServeError, match="no such model file"):
        load(tmp_path / "missing.onnx")
    odd = tmp_path / "model.bin2"
    odd.write_bytes(b"x")
    with pytest.raises(SwinV2ServeError, match="cannot tell the backend"):
        load(odd)
    with pytest.raises(SwinV2ServeError, match="unknown backend 'tvm'"):
        load(nano_onnx, backend="tvm")


def test_available_backends_reports_reasons() -> None:
    backends = available_backends()
    assert set(backends) >= {"onnxruntime", "torch", "tensorrt"}
    assert backends["onnxruntime"] is None and backends["torch"] is None
    if importlib.util.find_spec("tensorrt") is None:
        assert "tensorrt is not installed" in backends["tensorrt"]
        assert "nvcr.io/nvidia/tensorrt" in backends["tensorrt"]
    elif not torch.cuda.is_available():
        assert backends["tensorrt"] and "GPU" in backends["tensorrt"]


def test_tensorrt_backend_refuses_cleanly_here(tmp_path) -> None:
    if available_backends()["tensorrt"] is None:
        pytest.skip("TensorRT and a GPU are available here (covered by tests/test_tensorrt.py)")
    plan = tmp_path / "model.plan"
    plan.write_bytes(b"not an engine")
    with pytest.raises(BackendUnavailableError, match="TensorRT|GPU|tensorrt"):
        load(plan)


def test_registry_is_the_extension_point(nano_onnx) -> None:
    class Doubled(OnnxRuntime):
        backend = "doubled"

        def run(self, x):
            out = super().run(x)
            return {k: 2 * v for k, v in out.items()}

    runtime.register_backend(runtime.Backend("doubled", Doubled, "test backend", (".dbl",)))
    try:
        assert available_backends()["doubled"] is None and "doubled" in runtime.REGISTRY
        rt = load(nano_onnx, backend="doubled")
        assert isinstance(rt, Runtime) and rt.backend == "doubled"
        x = np.zeros((1, 3, 64, 64), np.float32)
        np.testing.assert_allclose(rt(x)["probs"].sum(), 2.0, atol=1e-5)
    finally:
        runtime.REGISTRY.pop("doubled")
