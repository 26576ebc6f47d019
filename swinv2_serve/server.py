"""Embedded real Triton Inference Server (PyTriton's bundled ``tritonserver``) for CPU / no-Docker machines.

It serves the same models, tensors and names as a generated repository in NVIDIA's container:

    NAME             input FP32 [3, H, W] -> logits, probs [C]   dynamic batching, labels attached
    NAME_preprocess  image BYTES [1] -> input FP32 [3, H, W]      one request per execute (errors stay per request)
    NAME_image       ensemble NAME_preprocess -> NAME              (Triton's own ensemble scheduler)

PyTriton runs with its *local model store* lifecycle policy: ``bind`` writes each model's config.pbtxt
into the workspace's model store before tritonserver starts, so we own a real Triton model repository and
add what PyTriton's config generator has no field for: ``labels.txt`` + ``label_filename`` (classification
extension), the ``swinv2_serve`` metadata parameter (the client reads preprocessing and labels from it) and
the ensemble. Every config is rewritten through Triton's ``ModelConfig`` protobuf, never by text edits.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import sysconfig
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import numpy as np

from . import repository as repo
from .contract import (
    GRPC_PORT,
    HTTP_PORT,
    IMAGE_INPUT,
    INPUT_NAME,
    LABELS_FILE,
    METADATA_KEY,
    METRICS_PORT,
    OUTPUT_NAMES,
    ExportMetadata,
    model_names,
)
from .errors import ImageDecodeError, ServerError, SwinV2ServeError
from .labels import labels_for, labels_text
from .preprocess import Preprocess
from .runtime import Runtime, load

LOGGER = logging.getLogger("swinv2_serve.server")


@dataclass
class ServerConfig:
    """Where and how the embedded server listens and batches."""

    host: str = "127.0.0.1"
    http_port: int = HTTP_PORT
    grpc_port: int = GRPC_PORT
    metrics_port: int = METRICS_PORT
    max_batch: int = 32
    max_queue_delay_us: int = 2000
    # One instance: PyTriton's extra instances fetch their config from instance 0's handshake socket and fail
    # with "connection refused" when they race its bind/listen (seen on cold starts); images are still batched
    # at NAME, only decoding is serial. (Generated repositories for NVIDIA's Triton keep two: no handshake.)
    preprocess_instances: int = 1
    exit_timeout_s: int = 5
    log_file: str | None = None  # tritonserver's log; None: the console
    log_verbose: int = 0

    @property
    def ports(self) -> dict[str, int]:
        return {"--http-port": self.http_port, "--grpc-port": self.grpc_port, "--metrics-port": self.metrics_port}


@dataclass
class ServedModel:
    """A runtime plus what the server needs to describe it."""

    runtime: Runtime
    labels: list[str] = field(default_factory=list)

    @property
    def metadata(self) -> ExportMetadata:
        return self.runtime.metadata


def ensure_libpython_path() -> None:
    """Put this interpreter's LIBDIR first on LD_LIBRARY_PATH for tritonserver and its python stubs.

    With a pyenv (or any non-system) Python the stub otherwise loads the system libpython and dies with
    ``'_thread.RLock' object has no attribute '_recursion_count'``. tritonserver inherits our environment,
    so setting it here, before PyTriton starts the server, is enough.
    """
    libdir = sysconfig.get_config_var("LIBDIR")
    if not libdir:
        return
    current = os.environ.get("LD_LIBRARY_PATH", "")
    parts = [p for p in current.split(os.pathsep) if p]
    if not parts or parts[0] != libdir:
        os.environ["LD_LIBRARY_PATH"] = os.pathsep.join([libdir, *[p for p in parts if p != libdir]])


def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """``n`` distinct free TCP ports on ``host`` (all held open together, so they differ)."""
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(n)]
        for s in sockets:
            s.bind((host, 0))
        return [int(s.getsockname()[1]) for s in sockets]


def check_ports_free(config: ServerConfig) -> None:
    """A port already taken becomes one line naming it and the flag that changes it."""
    seen: dict[int, str] = {}
    for flag, port in config.ports.items():
        if port in seen:
            raise ServerError(f"{flag} {port} is the same as {seen[port]}: give each endpoint its own port")
        seen[port] = flag
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((config.host, port))
            except OSError as exc:
                raise ServerError(
                    f"port {port} on {config.host} is already in use ({exc.strerror}): "
                    f"stop what is listening there or choose another with {flag}"
                ) from None


def find_repository_model(repository: str | os.PathLike, name: str) -> Path:
    """``--repository DIR``: the NAME model file in a repository written by ``swinv2-serve repository``."""
    model_dir = Path(repository) / name
    if not model_dir.is_dir():
        found = sorted(p.parent.name for p in Path(repository).glob("*/config.pbtxt"))
        raise ServerError(f"no model {name!r} in {repository} (found: {', '.join(found) or 'none'}); pass --name")
    for version in sorted((p for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit()),
                          key=lambda p: int(p.name), reverse=True):
        for filename in ("model.onnx", "model.plan", "model.xml"):  # model.xml: the OpenVINO backend's IR
            if (version / filename).is_file():
                return version / filename
    raise ServerError(f"{model_dir} holds no <version>/model.onnx, model.plan or model.xml")


def _repository_labels(model_file: Path) -> list[str] | None:
    labels_file = model_file.parent.parent / LABELS_FILE
    if labels_file.is_file():
        return [line.strip() for line in labels_file.read_text(encoding="utf-8").splitlines() if line.strip()]
    return None


class EmbeddedServer:
    """Start / stop a real tritonserver serving NAME, NAME_preprocess and NAME_image.

    Use as a context manager (``with EmbeddedServer(...) as server:``) or ``start()`` / ``stop()``;
    ``serve_forever()`` blocks until SIGINT/SIGTERM.
    """

    def __init__(
        self,
        model_path: str | os.PathLike,
        name: str = "swinv2",
        *,
        config: ServerConfig | None = None,
        backend: str | None = None,
        labels: Sequence[str] | None = None,
        runtime_options: dict[str, Any] | None = None,
    ) -> None:
        self.model_path = Path(model_path)
        self.name = name
        self.config = config or ServerConfig()
        self.backend = backend
        self.runtime_options = runtime_options or {}
        self._labels = list(labels) if labels is not None else None
        self._triton: Any = None
        self._model: ServedModel | None = None
        self._stop_lock = threading.Lock()

    # ------------------------------------------------------------------ endpoints
    @property
    def http_url(self) -> str:
        return f"{self.config.host}:{self.config.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{self.config.host}:{self.config.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.config.host}:{self.config.metrics_port}/metrics"

    @property
    def max_batch(self) -> int:
        return self._max_batch()

    @property
    def metadata(self) -> ExportMetadata:
        if self._model is None:
            raise ServerError("server not started")
        return self._model.metadata

    @property
    def pid(self) -> int | None:
        server = getattr(self._triton, "_triton_server", None)
        process = getattr(server, "_tritonserver_running_cmd", None)  # PyTriton keeps no public handle
        return getattr(process, "pid", None)

    # ------------------------------------------------------------------ lifecycle
    def start(self, timeout_s: float = 120.0) -> EmbeddedServer:
        if self._triton is not None:
            return self
        check_ports_free(self.config)
        ensure_libpython_path()
        runtime = load(self.model_path, self.backend, **self.runtime_options)
        self._model = ServedModel(runtime, labels_for(runtime.metadata, self._labels))

        from pytriton.triton import Triton, TritonConfig, TritonLifecyclePolicy

        cfg = self.config
        triton_config = TritonConfig(
            http_address=cfg.host, http_port=cfg.http_port,
            grpc_address=cfg.host, grpc_port=cfg.grpc_port,
            allow_metrics=True, metrics_address=cfg.host, metrics_port=cfg.metrics_port,
            exit_timeout_secs=cfg.exit_timeout_s, log_verbose=cfg.log_verbose, log_file=cfg.log_file,
            strict_readiness=True,
        )
        policy = TritonLifecyclePolicy(launch_triton_on_startup=True, local_model_store=True)
        triton = Triton(config=triton_config, triton_lifecycle_policy=policy)
        self._triton = triton
        try:
            self._bind(triton)
            self._complete_model_store(Path(triton._workspace.model_store_path))
            triton.run()
            self.wait_ready(timeout_s)
        except BaseException:
            self.stop()
            raise
        LOGGER.info("serving %s and %s_image at http %s, grpc %s, metrics %s",
                    self.name, self.name, self.http_url, self.grpc_url, self.metrics_url)
        return self

    def stop(self) -> None:
        with self._stop_lock:
            triton, self._triton = self._triton, None
        if triton is not None:
            with contextlib.suppress(Exception):
                triton.stop()

    def __enter__(self) -> EmbeddedServer:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    def triton_version(self) -> str | None:
        """The running tritonserver's version (from its metadata endpoint), or None."""
        import tritonclient.http as httpclient  # the [serve] extra

        with contextlib.suppress(Exception), contextlib.closing(httpclient.InferenceServerClient(self.http_url)) as c:
            return str(c.get_server_metadata().get("version"))
        return None

    def is_alive(self) -> bool:
        return self._triton is not None and bool(self._triton.is_alive())

    def wait_ready(self, timeout_s: float = 120.0) -> None:
        import tritonclient.http as httpclient

        deadline = time.monotonic() + timeout_s
        names = model_names(self.name)
        with contextlib.closing(httpclient.InferenceServerClient(self.http_url)) as client:
            while True:
                with contextlib.suppress(Exception):
                    if client.is_server_ready() and all(client.is_model_ready(n) for n in names):
                        return
                if self._triton is None or not self._triton.is_alive():
                    raise ServerError("tritonserver exited while starting; see its log above")
                if time.monotonic() > deadline:
                    raise ServerError(f"models {', '.join(names)} not ready after {timeout_s:.0f}s")
                time.sleep(0.2)

    def serve_forever(self) -> None:
        """Block until SIGINT / SIGTERM (or tritonserver dies), then stop cleanly."""
        stop = threading.Event()

        def _handler(signum: int, _frame: FrameType | None) -> None:
            LOGGER.info("%s received, shutting down", signal.Signals(signum).name)
            stop.set()

        previous = {s: signal.signal(s, _handler) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            while not stop.wait(1.0):
                if not self.is_alive():
                    raise ServerError("tritonserver stopped unexpectedly; see its log above")
        finally:
            for sig, old in previous.items():
                signal.signal(sig, old)
            self.stop()

    # ------------------------------------------------------------------ models
    def _max_batch(self) -> int:
        limit = self.config.max_batch
        runtime_max = self._model.runtime.max_batch if self._model else None
        return min(limit, runtime_max) if runtime_max else limit

    def _bind(self, triton: Any) -> None:
        from pytriton.decorators import batch
        from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor

        assert self._model is not None
        runtime = self._model.runtime
        dims = tuple(runtime.input_shape)
        classes = (runtime.num_classes,)
        max_batch = self._max_batch()
        batching = repo.BatchingOptions(max_batch=max_batch, max_queue_delay_us=self.config.max_queue_delay_us)
        tensor_name, pre_name, _ = model_names(self.name)

        @batch
        def infer(input: np.ndarray) -> dict[str, np.ndarray]:  # noqa: A002 (the tensor's name)
            return runtime(input)

        triton.bind(
            model_name=tensor_name,
            infer_func=infer,
            inputs=[Tensor(name=INPUT_NAME, dtype=np.float32, shape=dims)],
            outputs=[Tensor(name=n, dtype=np.float32, shape=classes) for n in OUTPUT_NAMES],
            config=ModelConfig(
                batching=True, max_batch_size=max_batch,
                batcher=DynamicBatcher(max_queue_delay_microseconds=batching.max_queue_delay_us,
                                       preferred_batch_size=batching.preferred),
            ),
            strict=True,
        )
        preprocess = Preprocess.from_metadata(runtime.metadata)
        triton.bind(
            model_name=pre_name,
            infer_func=[_PreprocessFn(preprocess) for _ in range(self.config.preprocess_instances)],
            inputs=[Tensor(name=IMAGE_INPUT, dtype=np.bytes_, shape=(1,))],
            outputs=[Tensor(name=INPUT_NAME, dtype=np.float32, shape=dims)],
            # no dynamic batcher: Triton's default scheduler passes one request per call, so a bad image
            # fails its own request only (PyTriton reports an exception for every request of a call)
            config=ModelConfig(batching=True, max_batch_size=max_batch, batcher=None),
            strict=True,
        )

    def _complete_model_store(self, store: Path) -> None:
        """Labels, metadata parameter and the ensemble, through Triton's ModelConfig schema."""
        assert self._model is not None
        meta, names = self._model.metadata, self._model.labels
        tensor_name, pre_name, ens_name = model_names(self.name)
        parameter = repo.metadata_parameter(meta, names)

        path = store / tensor_name / "config.pbtxt"
        config = repo.parse_config(path.read_text(encoding="utf-8"))
        repo.attach_labels(config)
        repo.set_parameter(config, METADATA_KEY, parameter)
        path.write_text(repo.to_text(config), encoding="utf-8")
        (store / tensor_name / LABELS_FILE).write_text(labels_text(names), encoding="utf-8")

        path = store / pre_name / "config.pbtxt"
        config = repo.parse_config(path.read_text(encoding="utf-8"))
        repo.set_parameter(config, METADATA_KEY, parameter)
        path.write_text(repo.to_text(config), encoding="utf-8")

        ens_dir = store / ens_name
        (ens_dir / "1").mkdir(parents=True, exist_ok=True)
        config = repo.ensemble_config(ens_name, tensor_name, pre_name, meta, names, max_batch=self._max_batch())
        (ens_dir / "config.pbtxt").write_text(repo.to_text(config), encoding="utf-8")
        (ens_dir / LABELS_FILE).write_text(labels_text(names), encoding="utf-8")


class _PreprocessFn:
    """One NAME_preprocess instance: a call gets one request (see _bind), bad bytes fail only it."""

    def __init__(self, preprocess: Preprocess) -> None:
        self.preprocess = preprocess

    def __call__(self, requests: list[Any]) -> list[dict[str, np.ndarray]]:
        responses = []
        for request in requests:
            images = np.asarray(request[IMAGE_INPUT]).reshape(-1)
            arrays = []
            for i, data in enumerate(images):
                try:
                    arrays.append(self.preprocess(bytes(data)))
                except ImageDecodeError as exc:
                    raise ImageDecodeError(f"image {i} of {len(images)}: {exc}") from None
            responses.append({INPUT_NAME: np.stack(arrays)})
        return responses


def interrupt_on_sigterm() -> None:
    """Make SIGTERM behave like Ctrl+C until ``serve_forever`` takes over, so a stop during start-up is clean."""

    def _raise(signum: int, _frame: FrameType | None) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    signal.signal(signal.SIGTERM, _raise)


def serve(
    model_path: str | os.PathLike | None = None,
    name: str = "swinv2",
    *,
    repository: str | os.PathLike | None = None,
    config: ServerConfig | None = None,
    backend: str | None = None,
    runtime_options: dict[str, Any] | None = None,
) -> EmbeddedServer:
    """An unstarted server for ``--onnx PATH`` (any runtime file) or ``--repository DIR``; use ``with``."""
    labels = None
    if repository is not None:
        if model_path is not None:
            raise SwinV2ServeError("give either a model file or a repository, not both")
        model_path = find_repository_model(repository, name)
        labels = _repository_labels(model_path)
    if model_path is None:
        raise SwinV2ServeError("nothing to serve: pass --onnx PATH or --repository DIR")
    if not Path(model_path).is_file():
        raise SwinV2ServeError(f"{model_path}: no such model file; export one with `swinv2-serve export`")
    return EmbeddedServer(model_path, name, config=config, backend=backend, labels=labels,
                          runtime_options=runtime_options)


@contextlib.contextmanager
def running(*args: Any, **kwargs: Any) -> Iterator[EmbeddedServer]:
    """``with running(onnx, name, config=...) as server:`` starts, waits ready, and always stops."""
    server = serve(*args, **kwargs)
    with server:
        yield server


__all__ = ["EmbeddedServer", "ServerConfig", "check_ports_free", "ensure_libpython_path", "free_ports", "running",
           "serve"]
