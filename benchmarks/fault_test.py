"""Replicas that lose nothing when one dies: N `swinv2-serve serve` processes (each a real Triton), M clients.

    .venv/bin/python benchmarks/fault_test.py [--replicas 3] [--clients 16] [--requests 6000] \\
        [--json benchmarks/results/fault_test.json] [--plot benchmarks/results/fault_test.png]

Every client thread holds one ``Classifier`` per mode (HTTP and gRPC; client-preprocessed tensors to NAME and
encoded photos to NAME_image) over all replica endpoints: the client balances across them, skips replicas
that are not ready, and retries only what cannot have been answered (refused/reset, HTTP 503, gRPC
UNAVAILABLE). While the load runs:

  1. steady state with every replica up;
  2. SIGKILL one replica mid-run, restart it at once, and time how long it takes to be ready again;
  3. a rolling restart: SIGTERM each replica in turn (it drains: readiness off, answers what was sent, exits 0),
     restart it, wait until it is ready;
  4. bad photos (truncated, not an image) sent to NAME_image: each must fail once with HTTP 400 /
     INVALID_ARGUMENT and never be retried (Triton's own failure counters, summed over the replicas, grow by
     exactly the number sent), while the good requests around them all succeed.

Every answer is checked against ONNX Runtime run directly on the same input (max |diff|, top-1). Requests
lost = good requests that ended in an error. Then the same load with 1, 2 and 3 replicas for the throughput
record (2 cores here: no scaling is expected; the point is correctness). Loopback only, bounded loops.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
IMAGES = Path(os.environ.get("SWINV2_SERVE_IMAGES", REPO.parent / "shared" / "images"))
NAME = "fault"
MODES = ("http-tensor", "grpc-tensor", "http-image", "grpc-image")
BAD_PHOTOS = ("bad_truncated.jpg", "bad_not_an_image.jpg")


# -- replicas ------------------------------------------------------------------------------------------------
class Replica:
    """One `swinv2-serve serve` process on its own loopback ports, restartable on the same ports."""

    def __init__(self, onnx: Path, workdir: Path, index: int, ports: Sequence[int], drain_s: float = 2.0) -> None:
        self.onnx, self.workdir, self.index = onnx, workdir, index
        self.http_port, self.grpc_port, self.metrics_port = ports
        self.drain_s = drain_s
        self.process: subprocess.Popen | None = None
        self.out = workdir / f"replica{index}.out"

    @property
    def http(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    @property
    def grpc(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def start(self) -> None:
        cmd = [sys.executable, "-m", "swinv2_serve", "serve", "--onnx", str(self.onnx), "--name", NAME,
               "--http-port", str(self.http_port), "--grpc-port", str(self.grpc_port),
               "--metrics-port", str(self.metrics_port), "--threads", "1", "--max-batch", "8",
               "--max-queue-delay-us", "0", "--drain-s", str(self.drain_s),
               "--log-file", str(self.workdir / f"tritonserver{self.index}.log")]
        with self.out.open("ab") as out:
            self.process = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)

    def wait_ready(self, timeout_s: float = 180.0) -> float:
        """Seconds until the server answers ready (and its process said it is serving)."""
        began = time.monotonic()
        while time.monotonic() - began < timeout_s:
            if self.process is None or self.process.poll() is not None:
                raise RuntimeError(f"replica {self.index} exited:\n{self.out.read_text(errors='replace')[-2000:]}")
            with contextlib.suppress(OSError):
                urllib.request.urlopen(f"http://{self.http}/v2/health/ready", timeout=2)
                return time.monotonic() - began
            time.sleep(0.1)
        raise RuntimeError(f"replica {self.index} not ready after {timeout_s:.0f}s")

    def kill(self) -> None:
        """SIGKILL the server and its tritonserver child at once, and wait until every one of them is gone."""
        assert self.process is not None
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()
        deadline = time.monotonic() + 30
        with contextlib.suppress(ProcessLookupError):
            while time.monotonic() < deadline:
                os.killpg(self.process.pid, 0)  # raises once the group is empty
                time.sleep(0.05)

    def terminate(self, timeout_s: float = 60.0) -> int:
        """SIGTERM (as Kubernetes sends it) and the exit status."""
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=timeout_s)

    def leftovers(self, wait_s: float = 5.0) -> int:
        """Processes of this replica's group still running (tritonserver, python-backend stubs) ``wait_s`` after it
        exited (zombies, already dead, do not count)."""
        assert self.process is not None
        deadline = time.monotonic() + wait_s
        while True:
            count = 0
            for stat in Path("/proc").glob("[0-9]*/stat"):
                with contextlib.suppress(OSError, ValueError, IndexError):
                    fields = stat.read_text().rsplit(")", 1)[1].split()
                    count += fields[0] != "Z" and int(fields[2]) == self.process.pid
            if count == 0 or time.monotonic() > deadline:
                return count
            time.sleep(0.1)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(Exception):
                self.terminate(30)
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def requests_seen(self, model: str) -> float:
        """Requests ``model`` received here, answered or failed (Triton's counters; 0 where the replica is down).

        An error response of a python model counts as a success in ``nv_inference_request_success``, so this
        counts every request the model saw: a retried request would be seen twice.
        """
        try:
            text = urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5).read().decode()
        except OSError:
            return 0.0
        pattern = rf'^nv_inference_request_(?:success|failure){{model="{model}"[^}}]*}} (\S+)$'
        return sum(float(v) for v in re.findall(pattern, text, re.M))


@contextlib.contextmanager
def replicas(onnx: Path, workdir: Path, count: int, drain_s: float = 2.0) -> Iterator[list[Replica]]:
    from swinv2_serve.server import free_ports

    workdir.mkdir(parents=True, exist_ok=True)
    ports = free_ports(3 * count)
    group = [Replica(onnx, workdir, i, ports[3 * i:3 * i + 3], drain_s) for i in range(count)]
    try:
        for replica in group:
            replica.start()
        for replica in group:
            replica.wait_ready()
        yield group
    finally:
        for replica in group:
            replica.stop()


# -- load --------------------------------------------------------------------------------------------------------
@dataclass
class Outcome:
    start: float  # seconds since the load began
    latency_ms: float
    mode: str
    ok: bool
    error: str = ""
    max_abs_diff: float = 0.0
    top1_agrees: bool = True


@dataclass
class Inputs:
    """Photos, their client-side tensors, and the logits ONNX Runtime gives for them directly."""

    blobs: list[bytes]
    tensors: np.ndarray
    expected: np.ndarray


def inputs_for(onnx: Path, images: Path = IMAGES) -> Inputs:
    from swinv2_serve.contract import read_onnx_metadata
    from swinv2_serve.preprocess import Preprocess, image_files
    from swinv2_serve.runtime import load

    paths = [p for p in image_files(images, recursive=False) if p.name not in BAD_PHOTOS]
    tensors = Preprocess.from_metadata(read_onnx_metadata(onnx)).batch(paths)
    expected = load(onnx, "onnxruntime", threads=1).logits(tensors)
    return Inputs([p.read_bytes() for p in paths], tensors, expected)


class Load:
    """``clients`` threads sending one request at a time, round-robin over the modes, until stopped."""

    def __init__(self, urls: dict[str, list[str]], inputs: Inputs, clients: int, limit: int | None = None) -> None:
        self.urls, self.inputs, self.clients, self.limit = urls, inputs, clients, limit
        self.outcomes: list[Outcome] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._count = itertools.count()
        self._threads: list[threading.Thread] = []
        self.began = 0.0

    def __enter__(self) -> Load:
        self.began = time.monotonic()
        self._threads = [threading.Thread(target=self._client, args=(i,), daemon=True) for i in range(self.clients)]
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=120)

    def done(self) -> bool:
        return self._stop.is_set() or (self.limit is not None and len(self.outcomes) >= self.limit)

    def wait(self, count: int, timeout_s: float = 600.0) -> None:
        """Until ``count`` requests in all have finished."""
        deadline = time.monotonic() + timeout_s
        while len(self.outcomes) < count and time.monotonic() < deadline:
            time.sleep(0.05)

    def _client(self, index: int) -> None:
        from swinv2_serve.client import Classifier

        classifiers = {}
        for mode in MODES:
            protocol, kind = mode.split("-")
            classifiers[mode] = Classifier(self.urls[protocol], protocol, NAME, server_preprocess=kind == "image",
                                           concurrency=1, timeout=60.0)
        for i in itertools.count(index):
            if self.done():
                break
            n = next(self._count)
            if self.limit is not None and n >= self.limit:
                break
            mode = MODES[i % len(MODES)]
            k = n % len(self.inputs.blobs)
            x = np.array([[self.inputs.blobs[k]]], dtype=np.object_) if mode.endswith("image") \
                else self.inputs.tensors[k:k + 1]
            began = time.monotonic()
            try:
                logits = classifiers[mode].infer(x)["logits"][0]
                want = self.inputs.expected[k]
                outcome = Outcome(began - self.began, (time.monotonic() - began) * 1e3, mode, True,
                                  max_abs_diff=float(np.abs(logits - want).max()),
                                  top1_agrees=bool(logits.argmax() == want.argmax()))
            except Exception as exc:  # noqa: BLE001 - a lost request, recorded with its reason
                outcome = Outcome(began - self.began, (time.monotonic() - began) * 1e3, mode, False, str(exc)[:300])
            with self._lock:
                self.outcomes.append(outcome)
        for classifier in classifiers.values():
            classifier.close()


def summary(outcomes: Sequence[Outcome], wall_s: float | None = None) -> dict:
    if not outcomes:
        return {"requests": 0}
    ok = [o for o in outcomes if o.ok]
    lat = np.array([o.latency_ms for o in ok]) if ok else np.zeros(1)
    span = wall_s or (max(o.start + o.latency_ms / 1e3 for o in outcomes) - min(o.start for o in outcomes))
    lost = [o for o in outcomes if not o.ok]
    return {"requests": len(outcomes), "lost": len(lost), "first_errors": sorted({o.error for o in lost})[:3],
            "p50_ms": round(float(np.percentile(lat, 50)), 1), "p99_ms": round(float(np.percentile(lat, 99)), 1),
            "throughput_rps": round(len(ok) / max(span, 1e-9), 1),
            "max_abs_diff_vs_direct": max((o.max_abs_diff for o in ok), default=0.0),
            "top1_agreement_vs_direct": round(sum(o.top1_agrees for o in ok) / max(len(ok), 1), 4),
            "by_mode": {m: sum(o.mode == m for o in outcomes) for m in MODES}}


# -- the scenario ------------------------------------------------------------------------------------------------
@dataclass
class Event:
    at: float
    what: str


@dataclass
class FaultReport:
    replicas: int
    clients: int
    phases: dict[str, dict] = field(default_factory=dict)
    events: list[Event] = field(default_factory=list)
    rejoin_s: float = 0.0
    rolling: list[dict] = field(default_factory=list)
    bad_requests: dict = field(default_factory=dict)
    scaling: list[dict] = field(default_factory=list)
    total: dict = field(default_factory=dict)


def urls_of(group: Sequence[Replica]) -> dict[str, list[str]]:
    return {"http": [r.http for r in group], "grpc": [r.grpc for r in group]}


def run_faults(group: list[Replica], inputs: Inputs, clients: int, requests: int, report: FaultReport,
               log: Callable[[str], None] = print, rolling: Sequence[int] | None = None) -> list[Outcome]:
    """Steady state, SIGKILL + restart of replica 0, steady state, then a rolling restart (of the replicas in
    ``rolling``, default all), under one continuous load of at least ``requests`` requests."""
    phase_size = max(requests // 4, clients * 4)
    marks: dict[str, tuple[float, float]] = {}
    with Load(urls_of(group), inputs, clients) as load:
        def mark(what: str) -> float:
            at = time.monotonic() - load.began
            report.events.append(Event(round(at, 2), what))
            log(f"  {at:7.1f}s  {what}  ({len(load.outcomes)} requests so far)")
            return at

        load.wait(phase_size)
        t0 = mark(f"SIGKILL replica 0 (pid {group[0].process.pid})")
        marks["before"] = (0.0, t0)
        group[0].kill()
        group[0].start()
        report.rejoin_s = round(group[0].wait_ready(), 2)
        mark(f"replica 0 ready again ({report.rejoin_s}s after restart)")
        load.wait(len(load.outcomes) + phase_size // 2)
        t2 = mark("kill phase over")
        marks["during_kill"] = (t0, t2)
        load.wait(len(load.outcomes) + phase_size)
        t3 = mark("rolling restart begins")
        marks["after_kill"] = (t2, t3)
        for replica in (group[i] for i in (range(len(group)) if rolling is None else rolling)):
            began = time.monotonic()
            code = replica.terminate()
            stopped = time.monotonic() - began
            left = replica.leftovers()
            mark(f"replica {replica.index} SIGTERM: exit {code} after {stopped:.1f}s")
            replica.start()
            ready = replica.wait_ready()
            mark(f"replica {replica.index} ready again ({ready:.1f}s)")
            report.rolling.append({"replica": replica.index, "exit_code": code, "stop_s": round(stopped, 2),
                                   "ready_s": round(ready, 2), "processes_left": left})
        t4 = mark("rolling restart over")
        marks["rolling_restart"] = (t3, t4)
        load.wait(max(requests, len(load.outcomes) + clients * 4))
        marks["after_rolling"] = (t4, time.monotonic() - load.began)
    outcomes = load.outcomes
    for name, (a, b) in marks.items():
        report.phases[name] = summary([o for o in outcomes if a <= o.start < b], b - a) | {"seconds": round(b - a, 1)}
    report.total = summary(outcomes)
    return outcomes


def run_bad_requests(group: list[Replica], inputs: Inputs, count: int = 8) -> dict:
    """Bad photos to NAME_image between good requests: 400 / INVALID_ARGUMENT, never retried, nothing else lost."""
    from swinv2_serve.client import Classifier
    from swinv2_serve.errors import ServerError

    bad = [(IMAGES / name).read_bytes() for name in BAD_PHOTOS]
    before = sum(r.requests_seen(f"{NAME}_preprocess") for r in group)
    answers: dict[str, list[str]] = {"http": [], "grpc": []}
    good = 0
    for protocol in ("http", "grpc"):
        with Classifier(urls_of(group)[protocol], protocol, NAME, server_preprocess=True) as client:
            for i in range(count):
                try:
                    client.infer(np.array([[bad[i % len(bad)]]], dtype=np.object_))
                    answers[protocol].append("accepted (wrong)")
                except ServerError as exc:
                    answers[protocol].append(str(exc))
                k = i % len(inputs.blobs)
                got = client.infer(np.array([[inputs.blobs[k]]], dtype=np.object_))["logits"][0]
                good += int(np.array_equal(got.argmax(), inputs.expected[k].argmax()))
    time.sleep(0.5)
    after = sum(r.requests_seen(f"{NAME}_preprocess") for r in group)
    codes = {p: sorted({("400" if "(HTTP 400)" in a else "INVALID_ARGUMENT" if "(INVALID_ARGUMENT)" in a else a[:80])
                        for a in answers[p]}) for p in answers}
    seen, sent = int(after - before), 4 * count  # bad and good photos alike pass NAME_preprocess once each
    return {"bad_sent": 2 * count, "good_sent": 2 * count, "preprocess_requests_seen": seen, "retried": seen - sent,
            "codes": codes, "good_correct": good, "example": answers["grpc"][0][:200]}


def run_scaling(onnx: Path, workdir: Path, inputs: Inputs, clients: int, seconds: float, max_replicas: int,
                log: Callable[[str], None] = print) -> list[dict]:
    out = []
    for count in range(1, max_replicas + 1):
        with replicas(onnx, workdir / f"scale{count}", count) as group, \
                Load(urls_of(group), inputs, clients) as load:
            time.sleep(seconds)
        row = {"replicas": count} | summary(load.outcomes, seconds)
        log(f"  {count} replica(s): {row['throughput_rps']} req/s, p50 {row['p50_ms']} ms, lost {row['lost']}")
        out.append(row)
    return out


def plot(outcomes: Sequence[Outcome], events: Sequence[Event], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(11, 4.2))
    for mode, color in zip(MODES, ("tab:blue", "tab:orange", "tab:green", "tab:red")):
        pts = [(o.start, o.latency_ms) for o in outcomes if o.mode == mode and o.ok]
        if pts:
            ax.scatter(*zip(*pts), s=3, alpha=0.5, color=color, label=mode)
    lost = [(o.start, o.latency_ms) for o in outcomes if not o.ok]
    if lost:
        ax.scatter(*zip(*lost), s=30, marker="x", color="black", label=f"lost ({len(lost)})")
    for event in events:
        ax.axvline(event.at, color="grey", lw=0.8, ls="--")
        ax.text(event.at, 0.02, event.what, rotation=90, fontsize=6, va="bottom", transform=ax.get_xaxis_transform())
    ax.set_yscale("log")
    ax.set_xlabel("seconds since the load began")
    ax.set_ylabel("latency (ms, log)")
    ax.set_title(f"{len(outcomes)} requests, {sum(not o.ok for o in outcomes)} lost: SIGKILL + restart, then a "
                 "rolling restart (dashed: events)")
    ax.legend(fontsize=7, markerscale=3, loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def export_model(path: Path) -> Path:
    import torch

    from swinv2_serve import create_model, export_onnx

    torch.manual_seed(0)
    model = create_model("swinv2_nano_window4_64", num_classes=1000).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)  # off its init, so top-1 checks mean something
    export_onnx(model, path)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replicas", type=int, default=3)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--requests", type=int, default=6000, help="at least this many requests under faults")
    parser.add_argument("--scaling-seconds", type=float, default=20.0, help="per replica count (0: skip)")
    parser.add_argument("--json", type=Path, default=REPO / "benchmarks" / "results" / "fault_test.json")
    parser.add_argument("--plot", type=Path, default=REPO / "benchmarks" / "results" / "fault_test.png")
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="swinv2_faults_"))
    onnx = export_model(work / "nano.onnx")
    inputs = inputs_for(onnx)
    report = FaultReport(replicas=args.replicas, clients=args.clients)
    print(f"{args.replicas} replicas, {args.clients} clients, >= {args.requests} requests (workdir {work})")
    with replicas(onnx, work, args.replicas) as group:
        outcomes = run_faults(group, inputs, args.clients, args.requests, report)
        report.bad_requests = run_bad_requests(group, inputs)
    if args.scaling_seconds > 0:
        print("throughput with 1..N replicas (same load):")
        report.scaling = run_scaling(onnx, work, inputs, args.clients, args.scaling_seconds, args.replicas)
    data = {"method": __doc__, "machine": {"cpus": os.cpu_count(), "load_average": os.getloadavg()},
            **asdict(report)}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(data, indent=2))
    plot(outcomes, report.events, args.plot)
    print(json.dumps({k: v for k, v in data.items() if k != "method"}, indent=2))
    lost = report.total["lost"] + sum(p["lost"] for p in report.scaling)
    bad = report.bad_requests
    bad_ok = bad["retried"] == 0 and bad["good_correct"] == bad["good_sent"] and bad["codes"] == \
        {"http": ["400"], "grpc": ["INVALID_ARGUMENT"]}
    clean = all(r["exit_code"] == 0 and r["processes_left"] == 0 for r in report.rolling)
    return 0 if lost == 0 and bad_ok and clean else 1


if __name__ == "__main__":
    sys.exit(main())
