"""Load test of the embedded Triton server: >= 10 000 requests from 16 concurrent clients over gRPC and HTTP.

    .venv/bin/python benchmarks/load_test.py [--requests 12000] [--clients 16] [--out benchmarks/raw/load.json]

Starts `swinv2-serve serve` (a real tritonserver) on free loopback ports with swinv2_nano_window4_64 at
64 px, then:
  1. load: REQUESTS requests (half gRPC, half HTTP; every 4th one an encoded photo to NAME_image, the rest
     client-preprocessed tensors to NAME) from CLIENTS threads, each with its own tritonclient: failures,
     throughput, p50/p99 latency, server RSS (python + tritonserver + stubs) before and after;
  2. dynamic batching: the same single-image gRPC requests at concurrency 1 and 8, side by side, with the
     average executed batch size from Triton's Prometheus metrics.
Bounded loops, loopback only; the server is always stopped.
"""

from __future__ import annotations

import argparse
import contextlib
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
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
IMAGES = Path(os.environ.get("SWINV2_SERVE_IMAGES", REPO.parent / "shared" / "images"))
PHOTOS = ["astronaut.jpg", "cat.jpg", "coffee.jpg", "rocket.jpg", "hubble.jpg", "motorcycle.png", "camera_gray.png",
          "logo_rgba.png"]
NAME = "load"


def export_model(path: Path) -> Path:
    from swinv2_serve import create_model, export_onnx

    export_onnx(create_model("swinv2_nano_window4_64", num_classes=1000).eval(), path)
    return path


def tree_rss_mb(pid: int) -> float:
    import psutil

    root = psutil.Process(pid)
    procs = [root, *root.children(recursive=True)]
    total = 0
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            total += p.memory_info().rss
    return total / 2**20


def metrics(url: str) -> dict[str, float]:
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    out: dict[str, float] = {}
    for key in ("nv_inference_request_success", "nv_inference_request_failure", "nv_inference_exec_count",
                "nv_inference_count"):
        m = re.search(rf'^{key}{{model="{NAME}",version="1"}} (\S+)$', text, re.M)
        out[key] = float(m.group(1)) if m else 0.0
    return out


class Worker(threading.Thread):
    """One client: its own tritonclient connection, `count` sequential requests, latencies recorded."""

    def __init__(self, protocol: str, url: str, count: int, tensors: np.ndarray, blobs: list[bytes],
                 image_every: int) -> None:
        super().__init__(daemon=True)
        self.protocol, self.url, self.count = protocol, url, count
        self.tensors, self.blobs, self.image_every = tensors, blobs, image_every
        self.latencies: list[float] = []
        self.failures: list[str] = []

    def run(self) -> None:
        if self.protocol == "grpc":
            import tritonclient.grpc as lib

            client = lib.InferenceServerClient(self.url)
        else:
            import tritonclient.http as lib

            client = lib.InferenceServerClient(self.url, connection_timeout=60, network_timeout=60)
        outputs = [lib.InferRequestedOutput("probs")]
        try:
            for i in range(self.count):
                if self.image_every and i % self.image_every == self.image_every - 1:
                    model, x = f"{NAME}_image", lib.InferInput("image", [1, 1], "BYTES")
                    x.set_data_from_numpy(np.array([[self.blobs[i % len(self.blobs)]]], dtype=np.object_))
                else:
                    model, x = NAME, lib.InferInput("input", [1, *self.tensors.shape[1:]], "FP32")
                    x.set_data_from_numpy(self.tensors[i % len(self.tensors)][None])
                start = time.perf_counter()
                try:
                    result = client.infer(model, [x], outputs=outputs)
                    if result.as_numpy("probs").shape != (1, 1000):
                        raise RuntimeError("bad output shape")
                except Exception as exc:  # noqa: BLE001 (counted and reported)
                    self.failures.append(str(exc)[:200])
                self.latencies.append(time.perf_counter() - start)
        finally:
            client.close()


def run_phase(protocol: str, url: str, clients: int, total: int, tensors: np.ndarray, blobs: list[bytes],
              image_every: int) -> dict:
    per = [total // clients + (1 if i < total % clients else 0) for i in range(clients)]
    workers = [Worker(protocol, url, n, tensors, blobs, image_every) for n in per]
    start = time.perf_counter()
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=1800)
    wall = time.perf_counter() - start
    lat = np.array([t for w in workers for t in w.latencies]) * 1e3
    failures = [f for w in workers for f in w.failures]
    return {"protocol": protocol, "clients": clients, "requests": int(lat.size), "failures": len(failures),
            "first_failures": failures[:3], "wall_s": round(wall, 2), "throughput_rps": round(lat.size / wall, 1),
            "p50_ms": round(float(np.percentile(lat, 50)), 2), "p99_ms": round(float(np.percentile(lat, 99)), 2)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=12000, help="total load requests (half per protocol)")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--batching-requests", type=int, default=1500, help="requests per concurrency level")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "raw" / "load.json")
    args = parser.parse_args()

    from swinv2_serve.contract import read_onnx_metadata
    from swinv2_serve.preprocess import Preprocess
    from swinv2_serve.server import free_ports

    work = Path(tempfile.mkdtemp(prefix="swinv2_load_"))
    onnx = export_model(work / "nano.onnx")
    paths = [IMAGES / p for p in PHOTOS]
    tensors = Preprocess.from_metadata(read_onnx_metadata(onnx)).batch(paths)
    blobs = [p.read_bytes() for p in paths]
    http, grpc, metrics_port = free_ports(3)
    cmd = [sys.executable, "-m", "swinv2_serve", "serve", "--onnx", str(onnx), "--name", NAME,
           "--http-port", str(http), "--grpc-port", str(grpc), "--metrics-port", str(metrics_port),
           "--max-batch", "32", "--log-file", str(work / "tritonserver.log")]
    log = open(work / "serve.log", "wb")  # noqa: SIM115
    server = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
    report: dict = {"model": "swinv2_nano_window4_64 @ 64px, fp32, onnxruntime CPU", "cpus": os.cpu_count()}
    try:
        deadline = time.monotonic() + 180
        while "serving load and load_image" not in (work / "serve.log").read_text(errors="replace"):
            if server.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"server did not start:\n{(work / 'serve.log').read_text()[-3000:]}")
            time.sleep(0.5)
        report["rss_mb_before"] = round(tree_rss_mb(server.pid), 1)
        load = []
        for protocol, port in (("grpc", grpc), ("http", http)):
            phase = run_phase(protocol, f"127.0.0.1:{port}", args.clients, args.requests // 2, tensors, blobs, 4)
            print(json.dumps(phase), flush=True)
            load.append(phase)
        report["load"] = load
        report["rss_mb_after"] = round(tree_rss_mb(server.pid), 1)
        batching = []
        for clients in (1, 8):
            before = metrics(metrics_url)
            phase = run_phase("grpc", f"127.0.0.1:{grpc}", clients, args.batching_requests, tensors, blobs, 0)
            after = metrics(metrics_url)
            executions = after["nv_inference_exec_count"] - before["nv_inference_exec_count"]
            phase["avg_executed_batch"] = round((after["nv_inference_count"] - before["nv_inference_count"])
                                                / max(executions, 1), 2)
            print(json.dumps(phase), flush=True)
            batching.append(phase)
        report["dynamic_batching"] = batching
        report["speedup_c8_vs_c1"] = round(batching[1]["throughput_rps"] / batching[0]["throughput_rps"], 2)
        report["server_metrics"] = metrics(metrics_url)
    finally:
        if server.poll() is None:
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait()
        log.close()
    report["server_exit_code"] = server.returncode
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    failures = sum(p["failures"] for p in report["load"] + report["dynamic_batching"])
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
