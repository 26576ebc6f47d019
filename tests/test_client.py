"""Classifier over a real embedded Triton server: inputs, batching, server-side preprocessing, errors, CLI."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from _serving import export_small_onnx, running_server
from PIL import Image

from swinv2_serve.cli import main
from swinv2_serve.client import Classifier, Prediction
from swinv2_serve.errors import ServerError
from swinv2_serve.preprocess import Preprocess
from swinv2_serve.runtime import load
from swinv2_serve.server import free_ports

NAME = "cnano"
MAX_BATCH = 4


@pytest.fixture(scope="module")
def onnx_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_small_onnx(tmp_path_factory.mktemp("model") / "nano.onnx", seed=1)


@pytest.fixture(scope="module")
def server(onnx_path: Path, tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    with running_server(onnx_path, NAME, MAX_BATCH, tmp_path_factory.mktemp("log")) as running:
        yield running


@pytest.fixture(scope="module", params=["http", "grpc"])
def classifier(request: pytest.FixtureRequest, server):  # noqa: ANN001, ANN201
    url = server.http_url if request.param == "http" else server.grpc_url
    with Classifier(url, request.param, NAME, concurrency=3) as client:
        yield client


@pytest.fixture(scope="module")
def expected(onnx_path: Path, photo_paths: list[Path]) -> np.ndarray:
    runtime = load(onnx_path)
    return runtime(Preprocess.from_metadata(runtime.metadata).batch(photo_paths))["probs"]


def _top(predictions: list[Prediction]) -> list[int]:
    return [p.index for p in predictions]


def test_classify_paths_top_k_best_first(classifier: Classifier, photo_paths, expected) -> None:  # noqa: ANN001
    results = classifier.classify(photo_paths, top_k=5)
    assert len(results) == len(photo_paths)
    for predictions, probs in zip(results, expected):
        assert _top(predictions) == np.argsort(-probs)[:5].tolist()
        scores = [p.score for p in predictions]
        assert scores == sorted(scores, reverse=True)
        np.testing.assert_allclose(scores, probs[_top(predictions)], atol=1e-5)
        assert predictions[0].label == classifier.labels[predictions[0].index]


def test_every_input_kind_gives_the_same_answer(classifier: Classifier, images_dir: Path) -> None:
    path = images_dir / "logo_rgba.png"  # RGBA: PIL and array paths must composite like the bytes path
    pil = Image.open(path)
    pil.load()
    array = np.asarray(pil)
    answers = [classifier.classify(x, top_k=3)[0] for x in (path, str(path), path.read_bytes(), pil, array)]
    assert all(_top(a) == _top(answers[0]) for a in answers)


def test_batches_larger_than_max_batch_are_split(classifier: Classifier, photo_paths, expected) -> None:  # noqa: ANN001
    assert classifier.max_batch == MAX_BATCH
    images = (photo_paths * 2)[:11]  # 3 requests: 4 + 4 + 3
    results = classifier.classify(images, top_k=1)
    assert [r[0].index for r in results] == [int(expected[i % len(photo_paths)].argmax()) for i in range(11)]
    x = classifier.prepare(images)
    out = classifier.infer(x)
    assert out["probs"].shape == (11, 1000)
    np.testing.assert_allclose(out["probs"][:8], expected, atol=1e-4)


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_server_side_preprocessing_agrees(server, protocol: str, photo_paths, expected) -> None:  # noqa: ANN001
    url = server.http_url if protocol == "http" else server.grpc_url
    with Classifier(url, protocol, NAME, server_preprocess=True) as client:
        assert client.target == f"{NAME}_image"
        results = client.classify(photo_paths, top_k=5)
    for predictions, probs in zip(results, expected):
        assert _top(predictions) == np.argsort(-probs)[:5].tolist()


def test_bad_image_through_server_is_a_clear_error(server, images_dir: Path) -> None:  # noqa: ANN001
    with Classifier(server.grpc_url, "grpc", NAME, server_preprocess=True) as client:
        with pytest.raises(ServerError, match=r"refused the request: \(INVALID_ARGUMENT\) image 0 of 1: .* corrupt"):
            client.classify((images_dir / "bad_truncated.jpg").read_bytes())
        assert client.classify(images_dir / "cat.jpg")[0]  # still serving


def test_no_server_is_a_clear_error() -> None:
    (port,) = free_ports(1)
    for protocol in ("http", "grpc"):
        with pytest.raises(ServerError, match=rf"no server at 127.0.0.1:{port} .*swinv2-serve serve"):
            Classifier(f"127.0.0.1:{port}", protocol, NAME, timeout=3)


def test_unknown_model_is_a_clear_error(server) -> None:  # noqa: ANN001
    with pytest.raises(ServerError, match=r"model 'nope' is not ready .*check the name"):
        Classifier(server.http_url, "http", "nope")


def test_cli_prints_a_table(server, photo_paths, capsys: pytest.CaptureFixture[str]) -> None:  # noqa: ANN001
    code = main(["classify", "--url", server.grpc_url, "--protocol", "grpc", "--model", NAME, "--top-k", "3",
                 *map(str, photo_paths[:2])])
    out = capsys.readouterr().out.splitlines()
    assert code == 0
    assert out[0].split()[:3] == ["image", "rank", "score"]
    assert len(out) == 1 + 2 * 3 and out[1].startswith(photo_paths[0].name)


def test_cli_no_server_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    (port,) = free_ports(1)
    assert main(["classify", "--url", f"127.0.0.1:{port}", "x.jpg"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no server at" in err


def test_png_encoding_of_arrays_is_lossless() -> None:  # no server: encoding is client-side only
    from swinv2_serve.client import encode

    array = (np.arange(48 * 40 * 3) % 251).astype(np.uint8).reshape(48, 40, 3)
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(encode(array)))), array)
