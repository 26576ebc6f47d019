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
import secrets
import signal
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from types import FrameType
from typing import Any

import numpy as np

from . import repository as repo
from .contract import (
    GRPC_PORT,
    HTTP_PORT,
    INPUT_NAME,
    LABELS_FILE,
    METADATA_KEY,
    METRICS_PORT,
    OUTPUT_NAMES,
    ExportMetadata,
    model_names,
)
from .errors import ServerError, SwinV2ServeError
from .host import check_ports_free, descendants, ensure_libpython_path, free_ports, kill
from .labels import labels_for, labels_text
from .machine import nvidia_driver_present
from .runtime import Runtime, load

LOGGER = logging.getLogger("swinv2_serve.server")
READINESS_MODEL = "swinv2_serve_readiness"  # unloaded first on SIGTERM: /v2/health/ready turns false
READINESS_OFF_TIMEOUT_S = 10.0


@dataclass
class ServerConfig:
    """Where and how the embedded server listens and batches."""

    host: str = "127.0.0.1"
    http_port: int = HTTP_PORT
    grpc_port: int = GRPC_PORT
    metrics_port: int = METRICS_PORT
    max_batch: int = 32
    max_queue_delay_us: int = 2000
    preprocess_instances: int = 2  # python-backend instances decoding images (NAME_preprocess)
    exit_timeout_s: int = 5  # tritonserver's own wait for requests in flight once it stops
    drain_s: float = 2.0  # on SIGTERM: readiness off this long, still serving, before tritonserver stops
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


def repository_runtime_options(model_file: Path) -> dict[str, Any]:
    """What the model's ``config.pbtxt`` asks of its runtime, for the OpenVINO backend (bf16, threads, hint):
    the embedded server runs an ``optimize``/``repository`` winner as NVIDIA's container would."""
    config_path = model_file.parent.parent / "config.pbtxt"
    if not config_path.is_file():
        return {}
    config = repo.parse_config(config_path.read_text(encoding="utf-8"))
    if config.backend != "openvino":
        return {}
    params = {key: value.string_value for key, value in config.parameters.items()}
    options: dict[str, Any] = {"hint": params.get("PERFORMANCE_HINT", "LATENCY").lower()}
    if params.get("HINT_BF16", "").upper() == "YES":
        options["precision"] = "bf16"
    if params.get("INFERENCE_NUM_THREADS", "").isdigit():
        options["threads"] = int(params["INFERENCE_NUM_THREADS"])
    return options


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
        check_ports_free(self.config.ports, self.config.host)
        ensure_libpython_path()
        runtime = load(self.model_path, self.backend, **self.runtime_options)
        self._model = ServedModel(runtime, labels_for(runtime.metadata, self._labels))

        from pytriton.triton import Triton, TritonConfig, TritonLifecyclePolicy, TritonSecurityConfig

        cfg = self.config
        triton_config = TritonConfig(
            http_address=cfg.host, http_port=cfg.http_port,
            grpc_address=cfg.host, grpc_port=cfg.grpc_port,
            allow_metrics=True, metrics_address=cfg.host, metrics_port=cfg.metrics_port,
            exit_timeout_secs=cfg.exit_timeout_s, log_verbose=cfg.log_verbose, log_file=cfg.log_file,
            strict_readiness=True,
            # without an NVIDIA GPU, GPU metrics only make tritonserver print "Failed to initialize NVML"
            allow_gpu_metrics=nvidia_driver_present(),
        )
        policy = TritonLifecyclePolicy(launch_triton_on_startup=True, local_model_store=True)
        self._token = secrets.token_urlsafe(24)  # the repository API (load/unload) is ours to use
        triton = Triton(config=triton_config, triton_lifecycle_policy=policy,
                        security_config=TritonSecurityConfig(access_token=self._token))
        self._triton = triton
        try:
            self._bind(triton)
            self._complete_model_store(Path(triton._workspace.model_store_path))
            triton.run()
            self.wait_ready(timeout_s)
        except BaseException:
            self.stop()
            raise
        LOGGER.debug("serving %s and %s_image at http %s, grpc %s, metrics %s",
                    self.name, self.name, self.http_url, self.grpc_url, self.metrics_url)
        return self

    def stop(self) -> None:
        tree = descendants(self.pid) if self.pid else []
        with self._stop_lock:
            triton, self._triton = self._triton, None
        if triton is not None:
            LOGGER.info("stopping tritonserver (SIGINT: it prints 'Signal (2) received.', finishes the requests "
                        "in flight within %ss and exits)", self.config.exit_timeout_s)
            with contextlib.suppress(Exception):
                triton.stop()
        # a python-backend stub can outlive a tritonserver that gave up waiting for it (seen after rolling
        # restarts under load): nothing of this server may keep running, or holding memory, once it has stopped
        reaped = [pid for pid in tree if kill(pid)]
        if reaped:
            LOGGER.info("stopped %d python-backend process(es) tritonserver left behind", len(reaped))

    def drain(self) -> None:
        """Turn readiness off and keep serving for ``config.drain_s``: load balancers, Kubernetes and our client
        stop sending here while what was sent is answered. ``stop()`` then lets Triton finish and exit."""
        import tritonclient.http as httpclient

        if self._triton is None:
            return
        began = time.monotonic()
        with contextlib.closing(httpclient.InferenceServerClient(self.http_url)) as client:
            try:
                client.unload_model(READINESS_MODEL, headers={"triton-access-token": self._token})
                while client.is_server_ready() and time.monotonic() - began < READINESS_OFF_TIMEOUT_S:
                    time.sleep(0.05)
            except Exception as exc:  # noqa: BLE001 - a server that cannot drain still stops
                LOGGER.warning("could not turn readiness off (%s): stopping without a drain window", exc)
                return
        LOGGER.info("draining: readiness off after %.2fs; answering what arrives for %.1fs, then stopping",
                    time.monotonic() - began, self.config.drain_s)
        time.sleep(self.config.drain_s)

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
        """Block until SIGINT / SIGTERM (or tritonserver dies), then drain and stop cleanly (exit status 0)."""
        stop = threading.Event()

        def _handler(signum: int, _frame: FrameType | None) -> None:
            LOGGER.info("%s received, shutting down gracefully", signal.Signals(signum).name)
            stop.set()

        previous = {s: signal.signal(s, _handler) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            while not stop.wait(1.0):
                if not self.is_alive():
                    raise ServerError("tritonserver stopped unexpectedly; see its log above")
        finally:
            for sig, old in previous.items():
                signal.signal(sig, old)
            self.drain()
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

        # NAME_preprocess: the same python-backend model a generated repository ships (not a PyTriton binding),
        # so bad bytes get the same INVALID_ARG answer here as in NVIDIA's container
        batching = repo.BatchingOptions(max_batch=self._max_batch(),
                                        preprocess_instances=self.config.preprocess_instances)
        config = repo.preprocess_config(pre_name, meta, names, batching=batching)
        (store / pre_name / "1").mkdir(parents=True, exist_ok=True)
        (store / pre_name / "config.pbtxt").write_text(repo.to_text(config), encoding="utf-8")
        (store / pre_name / "1" / "model.py").write_text(repo.preprocess_model_source(), encoding="utf-8")

        self._write_readiness_model(store)

        ens_dir = store / ens_name
        (ens_dir / "1").mkdir(parents=True, exist_ok=True)
        config = repo.ensemble_config(ens_name, tensor_name, pre_name, meta, names, max_batch=self._max_batch())
        (ens_dir / "config.pbtxt").write_text(repo.to_text(config), encoding="utf-8")
        (ens_dir / LABELS_FILE).write_text(labels_text(names), encoding="utf-8")


    @staticmethod
    def _write_readiness_model(store: Path) -> None:
        """The drain switch (``data/triton_readiness_model.py``): loaded with the others, unloaded by ``drain``."""
        mc = repo.model_config_schema()
        config = mc.ModelConfig(name=READINESS_MODEL, backend="python", max_batch_size=0)
        config.input.append(mc.ModelInput(name="unused", data_type=mc.TYPE_BOOL, dims=[1]))
        config.output.append(mc.ModelOutput(name="ready", data_type=mc.TYPE_BOOL, dims=[1]))
        config.instance_group.append(mc.ModelInstanceGroup(count=1, kind=mc.ModelInstanceGroup.KIND_CPU))
        (store / READINESS_MODEL / "1").mkdir(parents=True, exist_ok=True)
        (store / READINESS_MODEL / "config.pbtxt").write_text(repo.to_text(config), encoding="utf-8")
        source = resources.files("swinv2_serve").joinpath("data", "triton_readiness_model.py").read_text()
        (store / READINESS_MODEL / "1" / "model.py").write_text(source, encoding="utf-8")


class Terminated(KeyboardInterrupt):
    """SIGTERM before ``serve_forever`` took over: a requested stop, not an error."""


def interrupt_on_sigterm() -> None:
    """Make SIGTERM raise ``Terminated`` until ``serve_forever`` takes over, so a stop during start-up is clean."""

    def _raise(signum: int, _frame: FrameType | None) -> None:
        raise Terminated(signal.Signals(signum).name)

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
        runtime_options = {**repository_runtime_options(model_path), **(runtime_options or {})}  # flags win
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


__all__ = ["EmbeddedServer", "ServerConfig", "free_ports", "running", "serve"]
