"""OpenVINO backend: parity with ONNX Runtime, bf16 decision and fidelity check, IR, repository config, real server."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("openvino")

from _serving import export_small_onnx  # noqa: E402
from tritonclient.grpc import model_config_pb2 as mc  # noqa: E402

from swinv2_serve.preprocess import Preprocess  # noqa: E402
from swinv2_serve.repository import parse_config, write_repository  # noqa: E402
from swinv2_serve.runtime import available_backends, load  # noqa: E402
from swinv2_serve.runtime.openvino_backend import (  # noqa: E402
    check_inputs_for,
    convert_to_ir,
    cpu_capabilities,
    resolve_precision,
)
from swinv2_serve.verification import (  # noqa: E402
    FIDELITY_THRESHOLD,
    FidelityError,
    enforce,
    fidelity_tolerance,
    judge,
)

HAS_BF16 = "BF16" in cpu_capabilities()


@pytest.fixture(scope="module")
def onnx_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_small_onnx(tmp_path_factory.mktemp("ov") / "nano.onnx")


@pytest.fixture(scope="module")
def ort(onnx_path: Path):  # noqa: ANN201
    return load(onnx_path, "onnxruntime")


@pytest.fixture(scope="module")
def photos(ort, photo_paths: list[Path]) -> np.ndarray:  # noqa: ANN001
    return Preprocess.from_metadata(ort.metadata).batch(photo_paths)


def test_registered_and_available() -> None:
    assert available_backends()["openvino"] is None


def test_fp32_matches_onnxruntime(onnx_path: Path, ort, photos: np.ndarray) -> None:  # noqa: ANN001
    runtime = load(onnx_path, "openvino", precision="fp32", threads=2)
    assert runtime.precision == "fp32"
    assert runtime.compiled.get_property("INFERENCE_PRECISION_HINT").to_string() == "f32"
    for x in (photos, photos[:1], np.random.default_rng(0).standard_normal((5, 3, 64, 64), dtype=np.float32)):
        got, want = runtime(x), ort(x)
        assert np.abs(got["logits"] - want["logits"]).max() < 1e-4
        assert np.abs(got["probs"] - want["probs"]).max() < 1e-5
    assert runtime.metadata == ort.metadata


def test_ir_carries_metadata_and_bounded_batch(onnx_path: Path, ort, photos: np.ndarray, tmp_path: Path) -> None:  # noqa: ANN001
    xml = convert_to_ir(onnx_path, tmp_path / "ir" / "model.xml")
    assert xml.with_suffix(".bin").is_file()
    runtime = load(xml, max_batch=4, cache_dir=tmp_path / "cache")  # backend from the .xml suffix
    assert runtime.backend == "openvino" and runtime.metadata == ort.metadata
    assert np.abs(runtime(photos[:4])["logits"] - ort(photos[:4])["logits"]).max() < 1e-4
    with pytest.raises(Exception, match="max batch 4"):
        runtime(photos)
    assert any((tmp_path / "cache").iterdir())


@pytest.mark.parametrize(("requested", "caps", "expected", "says"), [
    ("bf16", ["FP32", "BF16", "INT8"], "bf16", None),
    ("bf16", ["FP32", "INT8"], "fp32", "no bf16 support"),
    ("fp32", ["FP32"], "fp32", None),
])
def test_precision_decision(requested: str, caps: list[str], expected: str, says: str | None) -> None:
    precision, message = resolve_precision(requested, caps)
    assert precision == expected
    assert (message is None) if says is None else (says in message and "running fp32" in message)


def test_precision_decision_rejects_unknown() -> None:
    with pytest.raises(Exception, match="fp32, bf16"):
        resolve_precision("fp16", ["FP32"])


def test_fidelity_report_refuses_and_warns(caplog: pytest.LogCaptureFixture) -> None:
    ref = np.eye(4, 10, dtype=np.float32) * 5
    flipped = ref.copy()
    flipped[0, 0], flipped[0, 1] = 0.0, 5.0  # one of four top-1s moves
    report = judge("bf16", ref, flipped, fidelity_tolerance())
    assert report.comparison.top1_agreement == 0.75 and not report.passed
    with pytest.raises(FidelityError, match=r"top-1 agreement 75\.0%.*serve fp32"):
        enforce(report, "refuse", "m.onnx", "serve fp32")
    enforce(report, "warn", "m.onnx", "serve fp32")
    assert "LOW FIDELITY" in caplog.text
    nan = ref.copy()
    nan[1, 3] = np.nan
    assert not judge("bf16", ref, nan, fidelity_tolerance()).passed
    assert judge("bf16", ref, ref + 1e-3, fidelity_tolerance()).passed


@pytest.mark.skipif(not HAS_BF16, reason="this CPU has no bf16 (OpenVINO capabilities lack BF16)")
def test_bf16_agrees_on_photos(onnx_path: Path, ort, photos: np.ndarray) -> None:  # noqa: ANN001
    # The expected outcome on a bf16 CPU with these weights (measured: OpenVINO 2026.4, AVX512-BF16/AMX): bf16 keeps
    # the top-1 of all 8 photos (max |logit diff| 0.03; the smallest fp32 top-1 margin is 0.027), so the load-time
    # check passes. A refusal here means bf16 numerics changed: look at the flipped photo before relaxing this.
    runtime = load(onnx_path, "openvino", precision="bf16", threads=2, check_inputs=photos)
    assert runtime.precision == "bf16" and runtime.fidelity is not None and runtime.fidelity.passed
    assert runtime.fidelity.comparison.samples == len(photos) and runtime.fidelity.comparison.top1_agreement == 1.0
    got, want = runtime(photos)["logits"], ort(photos)["logits"]
    assert np.isfinite(got).all()
    assert got.argmax(1).tolist() == want.argmax(1).tolist()
    assert np.abs(got - want).max() > 1e-4  # it really ran bf16: fp32 OpenVINO is within 1e-4 of ONNX Runtime


@pytest.mark.skipif(not HAS_BF16, reason="this CPU has no bf16 (OpenVINO capabilities lack BF16)")
def test_bf16_is_refused_on_inputs_it_flips(onnx_path: Path) -> None:
    # Noise has tiny top-1 margins: bf16 flips a few of 64 seeded inputs (1 measured here). The load-time check
    # runs batches of 8, so the check set is the whole batch of 8 that holds a flip, with the same numerics.
    fp32 = load(onnx_path, "openvino", precision="fp32", threads=2)
    bf16 = load(onnx_path, "openvino", precision="bf16", threads=2, fidelity="off")
    pool = check_inputs_for(fp32.input_shape, samples=64, seed=0)
    blocks = [pool[i:i + 8] for i in range(0, len(pool), 8)]
    agreement = [float((fp32(b)["logits"].argmax(1) == bf16(b)["logits"].argmax(1)).mean()) for b in blocks]
    flipped = [i for i, a in enumerate(agreement) if a < FIDELITY_THRESHOLD]
    assert flipped, f"bf16 kept the top-1 of all 64 noise inputs (per batch: {agreement}); pick a larger pool"
    block = flipped[0]
    with pytest.raises(FidelityError, match=rf"top-1 agreement {agreement[block]:.1%} on 8 inputs.*serve fp32"):
        load(onnx_path, "openvino", precision="bf16", threads=2, check_inputs=blocks[block])
    loud = load(onnx_path, "openvino", precision="bf16", threads=2, fidelity="warn", check_inputs=blocks[block])
    assert loud.fidelity is not None and loud.fidelity.comparison.top1_agreement == agreement[block]


@pytest.mark.skipif(HAS_BF16, reason="this CPU has bf16: the fallback path is covered by test_precision_decision")
def test_bf16_falls_back_without_cpu_support(onnx_path: Path) -> None:
    assert load(onnx_path, "openvino", precision="bf16").precision == "fp32"


def test_repository_openvino_config(onnx_path: Path, tmp_path: Path) -> None:
    from swinv2_serve.repository import OpenVINOOptions

    repo = write_repository(tmp_path / "repo", "nano", onnx=onnx_path, backend="openvino", max_batch=8,
                            openvino=OpenVINOOptions(precision="fp32", threads=2))
    config = parse_config(repo.configs["nano"].read_text())
    assert config.backend == "openvino" and not config.platform
    assert config.default_model_filename == "model.xml"
    assert [g.kind for g in config.instance_group] == [mc.ModelInstanceGroup.KIND_CPU]
    assert config.parameters["INFERENCE_NUM_THREADS"].string_value == "2"
    assert config.parameters["PERFORMANCE_HINT"].string_value == "LATENCY"
    assert "HINT_BF16" not in config.parameters
    assert (tmp_path / "repo" / "nano" / "1" / "model.bin").is_file()
    runtime = load(tmp_path / "repo" / "nano" / "1" / "model.xml")
    assert runtime.input_shape == (3, 64, 64)


def test_the_embedded_server_runs_a_repository_as_its_config_asks(onnx_path: Path, tmp_path: Path) -> None:
    from swinv2_serve.repository import OpenVINOOptions
    from swinv2_serve.server import find_repository_model, repository_runtime_options

    for precision, expected in (("fp32", {"hint": "latency", "threads": 2}),
                                ("bf16", {"hint": "latency", "threads": 2, "precision": "bf16"})):
        if precision == "bf16" and not HAS_BF16:
            continue
        write_repository(tmp_path / precision, "nano", onnx=onnx_path, backend="openvino", openvino=OpenVINOOptions(
            precision=precision, threads=2, fidelity="warn"))
        model_file = find_repository_model(tmp_path / precision, "nano")
        assert repository_runtime_options(model_file) == expected  # HINT_BF16 / threads, as Triton's backend reads
        assert load(model_file, **repository_runtime_options(model_file), fidelity="off").precision == precision


def test_repository_openvino_refuses_plan(onnx_path: Path, tmp_path: Path) -> None:
    with pytest.raises(Exception, match="needs --onnx"):
        write_repository(tmp_path / "r", "nano", onnx=onnx_path, plan=onnx_path, backend="openvino")


def test_server_openvino_round_trip(onnx_path: Path, ort, photos: np.ndarray, photo_paths: list[Path],
                                    tmp_path: Path) -> None:  # noqa: ANN001
    import tritonclient.http as httpclient

    from swinv2_serve.server import ServerConfig, free_ports, serve

    http, grpc, metrics = free_ports(3)
    config = ServerConfig(http_port=http, grpc_port=grpc, metrics_port=metrics, max_batch=8,
                          log_file=str(tmp_path / "triton.log"))
    precision = "bf16" if HAS_BF16 else "fp32"
    with serve(onnx_path, "nano", config=config, backend="openvino",
               runtime_options={"precision": precision, "threads": 2, "fidelity": "warn"}) as server:
        client = httpclient.InferenceServerClient(server.http_url)
        tensor = httpclient.InferInput("input", list(photos.shape), "FP32")
        tensor.set_data_from_numpy(photos)
        served = client.infer("nano", [tensor]).as_numpy("logits")
        image = httpclient.InferInput("image", [1, 1], "BYTES")
        image.set_data_from_numpy(np.array([[photo_paths[1].read_bytes()]], dtype=object))
        from_bytes = client.infer("nano_image", [image]).as_numpy("logits")
        client.close()
    want = ort(photos)["logits"]
    assert float((served.argmax(1) == want.argmax(1)).mean()) >= FIDELITY_THRESHOLD
    assert from_bytes.argmax(1)[0] == want[1].argmax()


@pytest.mark.skipif(not HAS_BF16, reason="this CPU has no bf16 (OpenVINO capabilities lack BF16)")
def test_bf16_fidelity_checked_on_an_image_folder(onnx_path: Path, images_dir: Path,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    runtime = load(onnx_path, "openvino", precision="bf16", threads=2, fidelity="warn", check_inputs=images_dir)
    assert runtime.fidelity is not None
    assert runtime.fidelity.comparison.samples == 8  # the 8 good photos, not random inputs
    assert "skipped bad_truncated.jpg" in caplog.text and "skipped bad_not_an_image.jpg" in caplog.text
    with pytest.raises(Exception, match="no readable images"):
        load(onnx_path, "openvino", precision="bf16", check_inputs=images_dir / "missing")
