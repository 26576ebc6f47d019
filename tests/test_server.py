"""The embedded real Triton server: parity with ONNX Runtime, ensemble, labels, metrics, bad input, shutdown.

One real tritonserver per module on free loopback ports; requests go through tritonclient over real sockets.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from _serving import decompression_bomb_png, export_small_onnx, running_server
from conftest import GOOD_IMAGES
from tritonclient.utils import InferenceServerException

from swinv2_serve.errors import ServerError
from swinv2_serve.labels import imagenet1k_labels
from swinv2_serve.preprocess import Preprocess
from swinv2_serve.runtime import load
from swinv2_serve.server import ServerConfig, free_ports, serve

NAME = "nano"
MAX_BATCH = 8
TOL = 1e-4


@pytest.fixture(scope="module")
def onnx_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_small_onnx(tmp_path_factory.mktemp("model") / "nano.onnx")


@pytest.fixture(scope="module")
def server(onnx_path: Path, tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    with running_server(onnx_path, NAME, MAX_BATCH, tmp_path_factory.mktemp("log")) as running:
        yield running


@pytest.fixture(scope="module")
def direct(onnx_path: Path):  # noqa: ANN201
    return load(onnx_path)


@pytest.fixture(scope="module")
def http(server):  # noqa: ANN001, ANN201
    client = httpclient.InferenceServerClient(server.http_url)
    yield client
    client.close()


@pytest.fixture(scope="module")
def grpc(server):  # noqa: ANN001, ANN201
    client = grpcclient.InferenceServerClient(server.grpc_url)
    yield client
    client.close()


@pytest.fixture(scope="module")
def photos_tensor(direct, photo_paths: list[Path]) -> np.ndarray:  # noqa: ANN001
    return Preprocess.from_metadata(direct.metadata).batch(photo_paths)


def _infer_tensor(lib, client, x: np.ndarray, dtype: str = "FP32", class_count: int = 0):  # noqa: ANN001, ANN202
    tensor = lib.InferInput("input", list(x.shape), dtype)
    tensor.set_data_from_numpy(x)
    outputs = [lib.InferRequestedOutput(n, class_count=class_count) for n in ("logits", "probs")]
    return client.infer(NAME, [tensor], outputs=outputs)


def _infer_image(lib, client, blobs: list[bytes]):  # noqa: ANN001, ANN202
    tensor = lib.InferInput("image", [len(blobs), 1], "BYTES")
    tensor.set_data_from_numpy(np.array(blobs, dtype=np.object_).reshape(-1, 1))
    return client.infer(f"{NAME}_image", [tensor])


def _assert_still_serving(http, photos_tensor: np.ndarray, direct) -> None:  # noqa: ANN001
    result = _infer_tensor(httpclient, http, photos_tensor[:2])
    np.testing.assert_allclose(result.as_numpy("probs"), direct(photos_tensor[:2])["probs"], atol=TOL)


# ------------------------------------------------------------------------------------------ results


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_served_equals_onnxruntime(protocol: str, http, grpc, direct, photos_tensor) -> None:  # noqa: ANN001
    lib, client = (httpclient, http) if protocol == "http" else (grpcclient, grpc)
    result = _infer_tensor(lib, client, photos_tensor)
    expected = direct(photos_tensor)
    for name in ("logits", "probs"):
        diff = float(np.abs(result.as_numpy(name) - expected[name]).max())
        print(f"{protocol} {name}: max |served - onnxruntime| = {diff:.3g}")
        assert diff <= TOL
    assert result.as_numpy("probs").argmax(1).tolist() == expected["probs"].argmax(1).tolist()


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_image_model_matches_client_preprocessing(protocol: str, http, grpc, photo_paths, photos_tensor) -> None:  # noqa: ANN001
    lib, client = (httpclient, http) if protocol == "http" else (grpcclient, grpc)
    blobs = [p.read_bytes() for p in photo_paths]  # grayscale and RGBA included
    assert {"camera_gray.png", "logo_rgba.png"} <= set(GOOD_IMAGES)
    served = _infer_image(lib, client, blobs)
    tensor = _infer_tensor(lib, client, photos_tensor)
    diff = float(np.abs(served.as_numpy("logits") - tensor.as_numpy("logits")).max())
    print(f"{protocol}: max |NAME_image - client preprocessing + NAME| logits = {diff:.3g}")
    assert diff <= TOL


@pytest.mark.parametrize("model", [NAME, f"{NAME}_image"])
def test_classification_extension_returns_labels(model: str, grpc, photo_paths, photos_tensor, direct) -> None:  # noqa: ANN001
    if model == NAME:
        result = _infer_tensor(grpcclient, grpc, photos_tensor, class_count=5)
    else:
        tensor = grpcclient.InferInput("image", [len(photo_paths), 1], "BYTES")
        tensor.set_data_from_numpy(np.array([p.read_bytes() for p in photo_paths], dtype=np.object_).reshape(-1, 1))
        result = grpc.infer(model, [tensor], outputs=[grpcclient.InferRequestedOutput("probs", class_count=5)])
    classes = result.as_numpy("probs")
    assert classes.shape == (len(photo_paths), 5)
    probs = direct(photos_tensor)["probs"]
    names = imagenet1k_labels()
    for row, expected in zip(classes, probs):
        parsed = [entry.decode().split(":", 2) for entry in row]
        indices = [int(i) for _, i, _ in parsed]
        assert indices == np.argsort(-expected)[:5].tolist()
        assert [label for _, _, label in parsed] == [names[i] for i in indices]
        np.testing.assert_allclose([float(s) for s, _, _ in parsed], expected[indices], atol=1e-5)


def test_config_carries_labels_metadata_and_batching(http, server) -> None:  # noqa: ANN001
    config = http.get_model_config(NAME)
    assert config["max_batch_size"] == MAX_BATCH
    assert "dynamic_batching" in config
    assert {o["name"]: o.get("label_filename") for o in config["output"]} == {"logits": "labels.txt",
                                                                              "probs": "labels.txt"}
    assert '"img_size":[64,64]' in config["parameters"]["swinv2_serve"]["string_value"]
    ensemble = http.get_model_config(f"{NAME}_image")
    assert ensemble["platform"] == "ensemble"
    assert [s["model_name"] for s in ensemble["ensemble_scheduling"]["step"]] == [f"{NAME}_preprocess", NAME]


def test_metrics_endpoint_counts_requests(server, http, photos_tensor) -> None:  # noqa: ANN001
    _infer_tensor(httpclient, http, photos_tensor[:1])
    text = urllib.request.urlopen(server.metrics_url, timeout=10).read().decode()
    assert f'nv_inference_request_success{{model="{NAME}",version="1"}}' in text
    assert "nv_inference_queue_duration_us" in text


def test_listens_on_loopback_only(server) -> None:  # noqa: ANN001
    assert server.config.host == "127.0.0.1"
    assert ServerConfig().host == "127.0.0.1"


# ------------------------------------------------------------------------------------------ bad input

BAD_BYTES = {
    "truncated_jpeg": (lambda d: (d / "bad_truncated.jpg").read_bytes(), "corrupt or truncated"),
    "not_an_image": (lambda d: (d / "bad_not_an_image.jpg").read_bytes(), "not a recognised image format"),
    "empty": (lambda d: b"", "empty input"),
    "decompression_bomb": (lambda d: decompression_bomb_png(), "too large"),
}


@pytest.mark.parametrize("case", list(BAD_BYTES))
@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_bad_image_fails_only_its_request(case: str, protocol: str, http, grpc, images_dir, direct,  # noqa: ANN001
                                          photos_tensor) -> None:
    lib, client = (httpclient, http) if protocol == "http" else (grpcclient, grpc)
    make, expected = BAD_BYTES[case]
    with pytest.raises(InferenceServerException) as info:
        _infer_image(lib, client, [make(images_dir)])
    message = str(info.value)
    print(f"{case} over {protocol}: ...{message.strip().splitlines()[-4:] if len(message) > 300 else message}")
    assert expected in message and "Traceback" not in message  # one line saying why
    # a client's mistake is a client error: never a 500 / INTERNAL that monitoring counts and retry policies retry
    assert info.value.status() == ("400" if protocol == "http" else "StatusCode.INVALID_ARGUMENT")
    good = _infer_image(lib, client, [(images_dir / "cat.jpg").read_bytes()])
    assert good.as_numpy("probs").shape == (1, 1000)
    _assert_still_serving(http, photos_tensor, direct)


def test_bad_image_does_not_fail_concurrent_good_requests(http, images_dir) -> None:  # noqa: ANN001
    good = (images_dir / "cat.jpg").read_bytes()
    pending = []
    for i in range(12):
        blob = b"not an image" if i % 3 == 0 else good
        tensor = httpclient.InferInput("image", [1, 1], "BYTES")
        tensor.set_data_from_numpy(np.array([[blob]], dtype=np.object_))
        pending.append((blob is good, http.async_infer(f"{NAME}_image", [tensor])))
    for is_good, request in pending:
        if is_good:
            assert request.get_result().as_numpy("probs").shape == (1, 1000)
        else:
            with pytest.raises(InferenceServerException):
                request.get_result()


BAD_TENSORS = {
    "wrong_dtype": (lambda x: x[:2].astype(np.float64), "FP64", "data-type"),
    "wrong_shape": (lambda x: x[:2, :, :32, :32], "FP32", "shape"),
    "batch_above_max": (lambda x: np.concatenate([x, x])[: MAX_BATCH + 1], "FP32", "batch"),
}


@pytest.mark.parametrize("case", list(BAD_TENSORS))
@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_bad_tensor_fails_only_its_request(case: str, protocol: str, http, grpc, photos_tensor, direct) -> None:  # noqa: ANN001
    lib, client = (httpclient, http) if protocol == "http" else (grpcclient, grpc)
    make, dtype, expected = BAD_TENSORS[case]
    x = np.ascontiguousarray(make(photos_tensor))
    with pytest.raises(InferenceServerException) as info:
        _infer_tensor(lib, client, x, dtype=dtype)
    print(f"{case} over {protocol}: {info.value}")
    assert expected in str(info.value).lower()
    _assert_still_serving(http, photos_tensor, direct)


# ------------------------------------------------------------------------------------------ lifecycle


def test_port_in_use_is_one_clear_error(onnx_path: Path) -> None:
    http, grpc, metrics = free_ports(3)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", grpc))
        taken.listen(1)
        config = ServerConfig(http_port=http, grpc_port=grpc, metrics_port=metrics)
        with pytest.raises(ServerError, match=rf"port {grpc} on 127.0.0.1 is already in use.*--grpc-port"):
            serve(onnx_path, NAME, config=config).start()


def test_cli_serve_stops_cleanly_on_sigterm(onnx_path: Path, tmp_path: Path) -> None:
    http, grpc, metrics = free_ports(3)
    log = tmp_path / "serve.log"
    cmd = [sys.executable, "-m", "swinv2_serve", "serve", "--onnx", str(onnx_path), "--name", "sig",
           "--http-port", str(http), "--grpc-port", str(grpc), "--metrics-port", str(metrics), "--max-batch", "4"]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while True:  # the CLI says "serving ..." once every model is ready
            if "serving sig and sig_image" in log.read_text(errors="replace"):
                break
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, f"server did not become ready: {log.read_text()[-3000:]}"
            time.sleep(0.5)
        assert urllib.request.urlopen(f"http://127.0.0.1:{http}/v2/models/sig_image/ready", timeout=5).status == 200
        children = _children(proc.pid)
        assert children, "no tritonserver child process"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0, log.read_text()[-3000:]
        time.sleep(0.5)
        assert not [pid for pid in children if _alive(pid)], "tritonserver left running after SIGTERM"
        with socket.socket() as probe:  # nothing listens on the port any more (TIME_WAIT aside)
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(("127.0.0.1", http))
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _children(pid: int) -> list[int]:
    import psutil

    return [c.pid for c in psutil.Process(pid).children(recursive=True)]


def _alive(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
