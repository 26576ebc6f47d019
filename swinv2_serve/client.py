"""Classify images through Triton (embedded server or NVIDIA's container) over HTTP or gRPC.

``Classifier(url, protocol, model).classify(images, top_k)`` -> one list of ``Prediction`` per image.
Client-side preprocessing uses the shared ``Preprocess`` built from the served model's own metadata
(the ``swinv2_serve`` config parameter); ``server_preprocess=True`` sends encoded bytes to ``NAME_image``
instead. Labels come from the server. Batches are split to the model's ``max_batch_size`` and sent
concurrently (tritonclient's async API); every failure becomes a ``ServerError`` that says what to do.
"""

from __future__ import annotations

import io
import os
import re
from collections.abc import Iterable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from .contract import ENSEMBLE_SUFFIX, IMAGE_INPUT, INPUT_NAME, METADATA_KEY, OUTPUT_NAMES, ExportMetadata
from .errors import ServerError, SwinV2ServeError
from .labels import labels_for
from .preprocess import ImageLike, Preprocess, load_image

PROTOCOLS = ("http", "grpc")
_ERROR_LINE = re.compile(r"^\s*(?:[\w.]+\.)?(\w+(?:Error|Exception)): (.+)$")


@dataclass(frozen=True)
class Prediction:
    index: int
    label: str
    score: float


def explain(exc: Exception) -> str:
    """Triton's error text, shortened to the line that says what went wrong (python tracebacks included)."""
    text = str(exc)
    lines = [m for m in (_ERROR_LINE.match(line) for line in text.splitlines()) if m]
    useful = [m for m in lines if m.group(1) not in ("TritonModelException", "InferenceServerException")]
    if useful:
        prefix = text.split("Failed to process")[0].strip() if "in ensemble" in text else ""
        detail = f"{useful[-1].group(1)}: {useful[-1].group(2)}"
        return f"{prefix} {detail}".strip() if prefix else detail
    return " ".join(text.split())[:500]


class Classifier:
    """A client for NAME (tensor input) or NAME_image (bytes input) on a Triton server."""

    def __init__(
        self,
        url: str = "127.0.0.1:8000",
        protocol: str = "http",
        model: str = "swinv2",
        *,
        server_preprocess: bool = False,
        timeout: float = 30.0,
        concurrency: int = 4,
    ) -> None:
        if protocol not in PROTOCOLS:
            raise SwinV2ServeError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
        self.url = re.sub(r"^\w+://", "", url)
        self.protocol = protocol
        self.timeout = float(timeout)
        self.concurrency = max(1, int(concurrency))
        self.server_preprocess = server_preprocess
        self.model = model[: -len(ENSEMBLE_SUFFIX)] if model.endswith(ENSEMBLE_SUFFIX) else model
        self.target = f"{self.model}{ENSEMBLE_SUFFIX}" if server_preprocess else self.model
        self._lib, self._client = self._connect()
        config = self._model_config(self.target)
        self.max_batch = int(config.get("max_batch_size", 0)) or 1
        self.metadata = self._metadata(config)
        self.labels = labels_for(self.metadata)
        self.preprocess = Preprocess.from_metadata(self.metadata)

    # ------------------------------------------------------------------ connection
    def _connect(self) -> tuple[Any, Any]:
        try:
            if self.protocol == "http":
                import tritonclient.http as lib

                client = lib.InferenceServerClient(
                    self.url, concurrency=self.concurrency, connection_timeout=self.timeout,
                    network_timeout=self.timeout,
                )
            else:
                import tritonclient.grpc as lib

                client = lib.InferenceServerClient(self.url)
        except ImportError as exc:
            raise ServerError("tritonclient is not installed: pip install 'swinv2-serve[client]'") from exc
        except Exception as exc:  # bad URL syntax and the like
            raise ServerError(f"cannot create a {self.protocol} client for {self.url}: {explain(exc)}") from None
        try:
            live = client.is_server_live(**self._timeout_kw(health=True))
        except Exception:
            live = False
        if not live:
            client.close()
            port_hint = "--grpc-port" if self.protocol == "grpc" else "--http-port"
            raise ServerError(
                f"no server at {self.url} ({self.protocol}) — start one with "
                f"`swinv2-serve serve --onnx MODEL.onnx --name {self.model}` (or check the URL / {port_hint})"
            )
        try:
            ready = client.is_model_ready(self.target, **self._timeout_kw(health=True))
        except Exception:
            ready = False
        if not ready:
            client.close()
            raise ServerError(
                f"model {self.target!r} is not ready on {self.url}: check the name (served models are NAME and "
                f"NAME_image; `swinv2-serve serve --name {self.model}`) or wait until the server has loaded it"
            )
        return lib, client

    def _timeout_kw(self, health: bool = False) -> dict[str, Any]:
        if self.protocol == "grpc":
            return {"client_timeout": self.timeout}
        return {}

    def _model_config(self, model: str) -> dict[str, Any]:
        try:
            if self.protocol == "grpc":
                return dict(self._client.get_model_config(model, as_json=True, client_timeout=self.timeout)["config"])
            return dict(self._client.get_model_config(model))
        except Exception as exc:
            raise ServerError(f"cannot read the config of model {model!r} at {self.url}: {explain(exc)}") from None

    def _metadata(self, config: dict[str, Any]) -> ExportMetadata:
        parameter = config.get("parameters", {}).get(METADATA_KEY)
        if not parameter:
            raise ServerError(
                f"model {self.target!r} carries no '{METADATA_KEY}' parameter: serve it with `swinv2-serve serve` "
                "or write its repository with `swinv2-serve repository`"
            )
        raw = parameter.get("string_value") or parameter.get("stringValue")
        return ExportMetadata.from_json(raw, f"model {self.target!r} on {self.url}")

    def close(self) -> None:
        client, self._client = getattr(self, "_client", None), None
        if client is not None:
            client.close()

    def __enter__(self) -> Classifier:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # ------------------------------------------------------------------ inference
    def _inputs(self, batch: np.ndarray) -> list[Any]:
        if self.server_preprocess:
            tensor = self._lib.InferInput(IMAGE_INPUT, list(batch.shape), "BYTES")
        else:
            tensor = self._lib.InferInput(INPUT_NAME, list(batch.shape), "FP32")
        if self.protocol == "http":
            tensor.set_data_from_numpy(batch, binary_data=True)
        else:
            tensor.set_data_from_numpy(batch)
        return [tensor]

    def _outputs(self, class_count: int) -> list[Any]:
        """Both raw outputs, or with class_count > 0 only Triton's top-k ``score:index:label`` of probs."""
        names = ("probs",) if class_count else OUTPUT_NAMES
        extra = {"binary_data": True} if self.protocol == "http" else {}
        return [self._lib.InferRequestedOutput(n, class_count=class_count, **extra) for n in names]

    def _submit(self, batch: np.ndarray, class_count: int) -> Any:
        """Send one request without waiting; the returned handle's ``result(timeout)`` waits for it."""
        inputs, outputs = self._inputs(batch), self._outputs(class_count)
        if self.protocol == "http":  # gevent pool of `concurrency` connections; results read on this thread
            request = self._client.async_infer(self.target, inputs, outputs=outputs, timeout=int(self.timeout * 1e6))
            return _HttpPending(request)
        future: Future = Future()

        def _done(result: Any, error: Exception | None) -> None:
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(result)

        self._client.async_infer(self.target, inputs, _done, outputs=outputs, client_timeout=self.timeout)
        return future

    def _run(self, batch: np.ndarray, class_count: int = 0) -> list[Any]:
        """Split to max_batch, keep at most `concurrency` requests in flight, results in order."""
        chunks = [batch[i : i + self.max_batch] for i in range(0, len(batch), self.max_batch)]
        results: list[Any] = [None] * len(chunks)
        pending: list[tuple[int, Any]] = []
        for i, chunk in enumerate(chunks):
            pending.append((i, self._submit(chunk, class_count)))
            if len(pending) >= self.concurrency:
                j, fut = pending.pop(0)
                results[j] = self._result(fut)
        for j, fut in pending:
            results[j] = self._result(fut)
        return results

    def _result(self, future: Any) -> Any:
        try:
            return future.result(timeout=self.timeout + 5.0)
        except TimeoutError:
            raise ServerError(f"no answer from {self.url} within {self.timeout:.0f}s (raise timeout=)") from None
        except Exception as exc:
            raise ServerError(f"{self.target} on {self.url} refused the request: {explain(exc)}") from None

    def infer(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """float32 [B, 3, H, W] (or [B, 1] encoded bytes with server_preprocess) -> {"logits", "probs"}."""
        if len(batch) == 0:
            raise SwinV2ServeError("empty batch: nothing to classify")
        results = self._run(batch)
        return {n: np.concatenate([r.as_numpy(n) for r in results]) for n in OUTPUT_NAMES}

    def prepare(self, images: Iterable[ImageLike]) -> np.ndarray:
        """Images -> the request tensor: normalised float32 [B,3,H,W], or encoded bytes [B,1] for NAME_image."""
        if self.server_preprocess:
            return np.array([[encode(image)] for image in images], dtype=np.object_).reshape(-1, 1)
        return self.preprocess.batch(images)

    def classify(self, images: ImageLike | Sequence[ImageLike], top_k: int = 5) -> list[list[Prediction]]:
        """Top-k predictions (best first) per image, labels from the server (classification extension)."""
        items = [images] if _is_single(images) else list(images)  # type: ignore[arg-type]
        if not items:
            return []
        top_k = max(1, min(int(top_k), len(self.labels)))
        results = self._run(self.prepare(items), class_count=top_k)
        classes = np.concatenate([r.as_numpy("probs") for r in results]).reshape(len(items), top_k)
        return [[parse_class(entry) for entry in row] for row in classes]


class _HttpPending:
    """tritonclient.http's InferAsyncRequest with a Future-like ``result``."""

    def __init__(self, request: Any) -> None:
        self.request = request

    def result(self, timeout: float | None = None) -> Any:
        try:
            return self.request.get_result(timeout=timeout)
        except Exception as exc:
            if "timeout" in type(exc).__name__.lower():
                raise TimeoutError from exc
            raise


def parse_class(entry: bytes | str) -> Prediction:
    """Triton's classification string ``score:index:label`` -> Prediction (labels may hold ':')."""
    text = entry.decode("utf-8") if isinstance(entry, bytes) else str(entry)
    score, index, *label = text.split(":", 2)
    return Prediction(index=int(index), label=label[0] if label else str(index), score=float(score))


def encode(image: ImageLike) -> bytes:
    """Encoded bytes for NAME_image: files and bytes as they are, PIL images / arrays as lossless PNG."""
    if isinstance(image, (bytes, bytearray, memoryview)):
        return bytes(image)
    if isinstance(image, (str, os.PathLike)):
        try:
            with open(image, "rb") as f:
                return f.read()
        except OSError as exc:
            raise SwinV2ServeError(f"{os.fspath(image)}: {exc.strerror}") from None
    pil = image if isinstance(image, Image.Image) else load_image(image)
    buffer = io.BytesIO()
    pil.save(buffer, format="PNG")
    return buffer.getvalue()


def _is_single(images: Any) -> bool:
    if isinstance(images, np.ndarray):
        return images.ndim in (2, 3)
    return isinstance(images, (str, os.PathLike, bytes, bytearray, memoryview, Image.Image))
