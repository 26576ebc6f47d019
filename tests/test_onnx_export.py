"""export_onnx(): the graph runs in ONNX Runtime with eager's (and timm's) logits, and describes itself."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from conftest import perturb_

from swinv2_serve import create_model
from swinv2_serve.contract import read_onnx_metadata
from swinv2_serve.deploy import DeployAttention, to_deploy
from swinv2_serve.errors import ExportError
from swinv2_serve.onnx_export import export_onnx
from swinv2_serve.runtime import OnnxRuntime

REQUIRED_METADATA = {"model", "img_size", "window_sizes", "pretrained_window_sizes", "num_classes", "mean", "std",
                     "interpolation", "crop_pct"}


def _ops(path: Path) -> set[str]:
    return {node.op_type for node in onnx.load(str(path)).graph.node}


def test_export_contract(tmp_path: Path) -> None:
    model = perturb_(create_model("swinv2_nano_window4_64")).eval()
    result = export_onnx(model, tmp_path / "nano.onnx")
    assert result.max_abs_diff is not None and result.max_abs_diff < 1e-4
    proto = onnx.load(str(result.path))
    onnx.checker.check_model(proto)
    assert [i.name for i in proto.graph.input] == ["input"]
    assert [o.name for o in proto.graph.output] == ["logits", "probs"]
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [3, 64, 64]  # batch dynamic, rest static
    assert max(op.version for op in proto.opset_import if op.domain in ("", "ai.onnx")) >= 17
    ops = _ops(result.path)
    assert "Sigmoid" not in ops and "Relu" not in ops  # the CPB meta-network is gone
    assert "LayerNormalization" in ops
    meta = read_onnx_metadata(result.path).to_dict()  # the JSON every reader sees
    assert set(meta) >= REQUIRED_METADATA
    assert meta["img_size"] == [64, 64] and meta["num_classes"] == 10
    runtime = OnnxRuntime(result.path)
    x = np.random.default_rng(0).standard_normal((5, 3, 64, 64), dtype=np.float32)
    out = runtime(x)
    np.testing.assert_allclose(out["probs"].sum(1), 1.0, atol=1e-5)
    with torch.no_grad():
        np.testing.assert_allclose(out["logits"], model(torch.from_numpy(x)).numpy(), atol=1e-4)


def test_export_at_new_resolution_records_transfer(tmp_path: Path) -> None:
    model = perturb_(create_model("swinv2_nano_window4_64")).eval()
    result = export_onnx(model, tmp_path / "nano96.onnx", img_size=96, window_size=6)
    meta = json.loads(next(p.value for p in onnx.load(str(result.path)).metadata_props if p.key == "swinv2_serve"))
    assert meta["img_size"] == [96, 96]
    assert meta["window_sizes"] == [6, 6, 6, 3]
    assert meta["pretrained_window_sizes"] == [4, 4, 4, 2]
    assert result.max_abs_diff < 1e-4


def test_fp16_keeps_fp32_islands_and_agrees(tmp_path: Path, photo_paths: list[Path]) -> None:
    from swinv2_serve.preprocess import Preprocess

    model = perturb_(create_model("swinv2_nano_window4_64", num_classes=1000), 0.05).eval()
    result = export_onnx(model, tmp_path / "nano16.onnx", fp16=True)
    proto = onnx.load(str(result.path))
    assert proto.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT  # I/O stays FP32
    assert proto.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    casts = [n for n in proto.graph.node if n.op_type == "Cast"]
    assert len(casts) > 20
    fp32, fp16 = OnnxRuntime(export_onnx(model, tmp_path / "nano32.onnx").path), OnnxRuntime(result.path)
    photos = Preprocess.from_config(model.cfg).batch(photo_paths)
    big = np.random.default_rng(1).standard_normal((16, 3, 64, 64), dtype=np.float32) * 30  # large activations
    for x in (photos, big):
        a, b = fp32(x)["logits"], fp16(x)["logits"]
        assert np.isfinite(b).all()
        assert (a.argmax(1) == b.argmax(1)).mean() >= 0.9
        assert np.abs(a - b).max() < 0.05 * np.abs(a).max()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"img_size": 66}, "not a multiple of the patch size"),
        ({"img_size": 16}, "too small"),
        ({"img_size": 64, "window_size": 32}, "larger than the first feature map"),
    ],
)
def test_bad_geometry_is_a_clear_error(tmp_path: Path, kwargs: dict, message: str) -> None:
    model = create_model("swinv2_nano_window4_64")
    with pytest.raises(ValueError, match=message):
        export_onnx(model, tmp_path / "bad.onnx", verify=False, **kwargs)


def test_old_opset_refused(tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="opset"):
        export_onnx(create_model("swinv2_nano_window4_64"), tmp_path / "x.onnx", opset=13)


def test_verify_without_onnxruntime_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if the package were not installed
    with pytest.raises(Exception, match="onnxruntime is not installed"):
        export_onnx(create_model("swinv2_nano_window4_64"), tmp_path / "x.onnx", fp16=True)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "kwargs"),
    [
        ("swinv2_tiny_window8_256", {}),
        ("swinv2_small_window16_256", {}),
        ("swinv2_tiny_window8_256", {"img_size": 512, "window_size": 16}),
    ],
)
def test_onnx_matches_eager_and_timm(tmp_path: Path, name: str, kwargs: dict) -> None:
    timm = pytest.importorskip("timm")
    model = perturb_(create_model(name, **kwargs), 0.02).eval()
    cfg = model.cfg
    reference = timm.create_model(
        name, pretrained=False, img_size=cfg.img_size, window_size=cfg.window_size[0],
        pretrained_window_sizes=tuple(h for h, _ in cfg.cpb_normalisers),
    ).eval()
    reference.load_state_dict(model.state_dict())
    result = export_onnx(model, tmp_path / f"{name}.onnx")  # verifies vs eager at batch 1 and 3 internally
    assert result.max_abs_diff < 1e-4
    runtime = OnnxRuntime(result.path)
    for batch in (1, 3):
        x = torch.randn(batch, 3, *cfg.img_size)
        got = runtime(x.numpy())["logits"]
        with torch.no_grad():
            np.testing.assert_allclose(got, reference(x).numpy(), atol=1e-4)
            np.testing.assert_allclose(got, model(x).numpy(), atol=1e-4)


def test_compact_tables_stay_compact_in_the_file(tmp_path: Path) -> None:
    """Large windows: tables stay [heads, 2W-1, 2W-1] in the file, not dense [heads, N, N] constants per block."""
    model = perturb_(create_model("swinv2_nano_window4_64", img_size=256, window_size=32)).eval()  # N = 1024
    deploy = to_deploy(model, dense_limit=0)
    result = export_onnx(deploy, tmp_path / "big_window.onnx")
    weights = sum(p.numel() * p.element_size() for p in deploy.parameters())
    dense = sum(m.num_heads * m.n * m.n * 4 for m in deploy.modules() if isinstance(m, DeployAttention))
    assert dense > 8 * 2**20  # what dense tables would add
    assert result.size_bytes < weights + 2**20, (result.size_bytes, weights)
    x = torch.randn(2, 3, 256, 256)
    with torch.no_grad():
        np.testing.assert_allclose(OnnxRuntime(result.path)(x.numpy())["logits"], model(x).numpy(), atol=1e-4)
