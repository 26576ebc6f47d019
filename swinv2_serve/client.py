"""Classify images through Triton (embedded server or NVIDIA's container) over HTTP or gRPC.

``Classifier(url, protocol, model).classify(images, top_k)`` -> one list of ``Prediction`` per image.
Client-side preprocessing uses the shared ``Preprocess`` built from the served model's own metadata
(the ``swinv2_serve`` config parameter); ``server_preprocess=True`` sends encoded bytes to ``NAME_image``
instead. Labels come from the server. Batches are split to the model's ``max_batch_size`` and sent
concurrently (tritonclient's async API); every failure becomes a ``ServerError`` that says what to do.

``url`` may name several replicas (``"h1:8001,h2:8001"`` or a list; a name with several addresses counts
as all of them): requests go round-robin, and one that was certainly not answered (refused, reset, 503,
UNAVAILABLE) is sent again to the next replica (``endpoints``). A client error is never retried.
"""

from __future__ import annotations

import io
import os
import re
import time
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from http.client import HTTPException
from typing import Any

import numpy as np
from PIL import Image

from .contract import ENSEMBLE_SUFFIX, IMAGE_INPUT, INPUT_NAME, METADATA_KEY, OUTPUT_NAMES, ExportMetadata
from .endpoints import EndpointPool, RetryPolicy, expand, is_retryable, parse_endpoints
from .errors import ServerError, SwinV2ServeError
from .labels import labels_for
from .preprocess import ImageLike, Preprocess, load_image

PROTOCOLS = ("http", "grpc")
HEALTH_TIMEOUT_S = 2.0
_ERROR_LINE = re.compile(r"^\s*(?:[\w.]+\.)?(\w+(?:Error|Exception)): (.+)$")
_STATUS = re.compile(r"^\[(?:StatusCode\.)?(\w+)\]\s*")  # tritonclient's "[400] ..." / "[StatusCode.X] ..."
_ENSEMBLE = re.compile(r"^in ensemble '[^']*',\s*")


@dataclass(frozen=True)
class Prediction:
    index: int
    label: str
    score: float


def explain(exc: BaseException) -> str:
    """Triton's error text as one line: the status, then what went wrong (python tracebacks cut to their last
    line, the "[StatusCode...]" and "in ensemble '...'" wrappers folded)."""
    text = str(exc)
    lines = [m for m in (_ERROR_LINE.match(line) for line in text.splitlines()) if m]
    useful = [m for m in lines if m.group(1) not in ("TritonModelException", "InferenceServerException")]
    if useful:
        text = f"{useful[-1].group(1)}: {useful[-1].group(2)}"
    text = " ".join(text.split())
    status = _STATUS.match(text)
    if status:
        text = text[status.end():]
    text = _ENSEMBLE.sub("", text)[:500]
    code = status.group(1) if status else ""
    return f"({'HTTP ' if code.isdigit() else ''}{code}) {text}" if code else text


@dataclass
class _Request:
    """One chunk in flight: the endpoints it may still try, and the handle of its current attempt."""

    batch: np.ndarray
    class_count: int
    plan: Iterator[tuple[str, float]]
    endpoint: str = ""
    handle: Any = None
    errors: list[str] = field(default_factory=list)


class Classifier:
    """A client for NAME (tensor input) or NAME_image (bytes input) on one or several Triton replicas."""

    def __init__(
        self,
        url: str | Sequence[str] = "127.0.0.1:8000",
        protocol: str = "http",
        model: str = "swinv2",
        *,
        server_preprocess: bool = False,
        timeout: float = 30.0,
        concurrency: int = 4,
        retry: RetryPolicy | None = None,
    ) -> None:
        if protocol not in PROTOCOLS:
            raise SwinV2ServeError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
        self.endpoints = [address for endpoint in parse_endpoints(url) for address in expand(endpoint)]
        self.url = ",".join(self.endpoints)
        self.protocol = protocol
        self.timeout = float(timeout)
        self.concurrency = max(1, int(concurrency))
        self.server_preprocess = server_preprocess
        self.model = model[: -len(ENSEMBLE_SUFFIX)] if model.endswith(ENSEMBLE_SUFFIX) else model
        self.target = f"{self.model}{ENSEMBLE_SUFFIX}" if server_preprocess else self.model
        probe = self._ready if len(self.endpoints) > 1 else None  # one replica: nowhere else to send
        self.pool = EndpointPool(self.endpoints, retry or RetryPolicy(), probe)
        self._clients: dict[str, Any] = {}
        self._lib = self._library()
        config = self._model_config(self.target, self._first_ready())
        self.max_batch = int(config.get("max_batch_size", 0)) or 1
        self.metadata = self._metadata(config)
        self.labels = labels_for(self.metadata)
        self.preprocess = Preprocess.from_metadata(self.metadata)

    # ------------------------------------------------------------------ connection
    def _library(self) -> Any:
        try:
            if self.protocol == "http":
                import gevent  # tritonclient.http runs on gevent: connection failures are handled here, not printed
                import tritonclient.http as lib

                hub = gevent.get_hub()
                hub.NOT_ERROR = (*hub.NOT_ERROR, ConnectionError, HTTPException)
                return lib
            import tritonclient.grpc as lib

            return lib
        except ImportError as exc:
            raise ServerError("tritonclient is not installed: pip install 'swinv2-serve[client]'") from exc

    def _client(self, endpoint: str) -> Any:
        client = self._clients.get(endpoint)
        if client is None:
            try:
                if self.protocol == "http":
                    client = self._lib.InferenceServerClient(endpoint, concurrency=self.concurrency,
                                                             connection_timeout=self.timeout,
                                                             network_timeout=self.timeout)
                else:
                    client = self._lib.InferenceServerClient(endpoint)
            except Exception as exc:  # bad URL syntax and the like
                raise ServerError(f"cannot create a {self.protocol} client for {endpoint}: {explain(exc)}") from None
            self._clients[endpoint] = client
        return client

    def _first_ready(self) -> str:
        """The first endpoint whose server is live and has the model ready (others may join later)."""
        not_live, not_ready = [], []
        for endpoint in self.endpoints:
            client = self._client(endpoint)
            try:
                live = client.is_server_live(**self._timeout_kw(health=True))
            except Exception:
                live = False
            if not live:
                not_live.append(endpoint)
                self.pool.mark_down(endpoint)
                continue
            try:
                if client.is_model_ready(self.target, **self._timeout_kw(health=True)):
                    return endpoint
            except Exception:
                pass
            not_ready.append(endpoint)
        if not_ready:
            raise ServerError(
                f"model {self.target!r} is not ready on {', '.join(not_ready)}: check the name (served models are "
                f"NAME and NAME_image; `swinv2-serve serve --name {self.model}`) or wait until the server has "
                "loaded it"
            )
        port_hint = "--grpc-port" if self.protocol == "grpc" else "--http-port"
        raise ServerError(
            f"no server at {self.url} ({self.protocol}) — start one with "
            f"`swinv2-serve serve --onnx MODEL.onnx --name {self.model}` (or check the URL / {port_hint})"
        )

    def _ready(self, endpoint: str) -> bool:
        """The replica's own readiness (``/v2/health/ready``): False while it starts or drains."""
        try:
            return bool(self._client(endpoint).is_server_ready(**self._timeout_kw(health=True)))
        except Exception:  # noqa: BLE001 - unreachable counts as not ready
            return False

    def _timeout_kw(self, health: bool = False) -> dict[str, Any]:
        if self.protocol == "grpc":
            return {"client_timeout": min(self.timeout, HEALTH_TIMEOUT_S) if health else self.timeout}
        return {}

    def _model_config(self, model: str, endpoint: str) -> dict[str, Any]:
        client = self._client(endpoint)
        try:
            if self.protocol == "grpc":
                return dict(client.get_model_config(model, as_json=True, client_timeout=self.timeout)["config"])
            return dict(client.get_model_config(model))
        except Exception as exc:
            raise ServerError(f"cannot read the config of model {model!r} at {endpoint}: {explain(exc)}") from None

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
        clients, self._clients = getattr(self, "_clients", {}), {}
        for client in clients.values():
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

    def _send(self, endpoint: str, batch: np.ndarray, class_count: int) -> Any:
        """Send one request to ``endpoint`` without waiting; the handle's ``result(timeout)`` waits for it."""
        inputs, outputs = self._inputs(batch), self._outputs(class_count)
        client = self._client(endpoint)
        if self.protocol == "http":  # gevent pool of `concurrency` connections; results read on this thread
            request = client.async_infer(self.target, inputs, outputs=outputs, timeout=int(self.timeout * 1e6))
            return _HttpPending(request)
        future: Future = Future()

        def _done(result: Any, error: Exception | None) -> None:
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(result)

        client.async_infer(self.target, inputs, _done, outputs=outputs, client_timeout=self.timeout)
        return future

    def _submit(self, batch: np.ndarray, class_count: int) -> _Request:
        request = _Request(batch, class_count, self.pool.attempts())
        self._next_attempt(request)
        return request

    def _next_attempt(self, request: _Request) -> bool:
        """Send ``request`` to the next endpoint of its plan (after its backoff pause); False when none is left."""
        step = next(request.plan, None)
        if step is None:
            return False
        request.endpoint, pause = step
        if pause:
            time.sleep(pause)
        try:
            request.handle = self._send(request.endpoint, request.batch, request.class_count)
        except Exception as exc:  # noqa: BLE001 - a send that fails at once is an attempt like any other
            request.handle = _Failed(exc)
        return True

    def _run(self, batch: np.ndarray, class_count: int = 0) -> list[Any]:
        """Split to max_batch, keep at most `concurrency` requests in flight, results in order."""
        chunks = [batch[i : i + self.max_batch] for i in range(0, len(batch), self.max_batch)]
        results: list[Any] = [None] * len(chunks)
        pending: list[tuple[int, _Request]] = []
        for i, chunk in enumerate(chunks):
            pending.append((i, self._submit(chunk, class_count)))
            if len(pending) >= self.concurrency:
                j, request = pending.pop(0)
                results[j] = self._result(request)
        for j, request in pending:
            results[j] = self._result(request)
        return results

    def _result(self, request: _Request) -> Any:
        """Wait for ``request``, sending it on to the next replica while it was certainly not answered."""
        while True:
            try:
                result = request.handle.result(timeout=self.timeout + 5.0)
            except TimeoutError:
                raise ServerError(f"no answer from {request.endpoint} within {self.timeout:.0f}s "
                                  "(raise timeout=)") from None
            except Exception as exc:
                if not is_retryable(exc):
                    raise ServerError(f"{self.target} on {request.endpoint} refused the request: "
                                      f"{explain(exc)}") from None
                self.pool.mark_down(request.endpoint)
                request.errors.append(f"{request.endpoint}: {explain(exc)}")
                if not self._next_attempt(request):
                    raise ServerError(f"no replica answered {self.target} after {len(request.errors)} attempts "
                                      f"({'; '.join(request.errors[-3:])})") from None
                continue
            self.pool.mark_up(request.endpoint)
            return result

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


class _Failed:
    """The handle of a send that failed at once: its result raises what the send raised."""

    def __init__(self, error: BaseException) -> None:
        self.error = error

    def result(self, timeout: float | None = None) -> Any:
        raise self.error


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
