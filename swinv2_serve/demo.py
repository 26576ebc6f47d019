"""The main job end to end on this machine (``make demo``): train -> export -> repository -> serve -> classify -> bench.

Everything is real: a SwinV2 trained on scikit-learn's digits (or a checkpoint you give), exported through
the deploy form to ONNX at two resolutions, a Triton model repository, the embedded Triton server,
the Python client over HTTP and gRPC, and a latency sweep across the resolutions.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .bench import BenchConfig, markdown_report, run_bench, write_report
from .checkpoint import load_model
from .client import Classifier
from .errors import SwinV2ServeError
from .onnx_export import export_onnx
from .preprocess import image_files
from .repository import write_repository
from .server import ServerConfig, free_ports, running
from .train.digits import run_digits_demo

DEMO_NAME = "digits"


@contextmanager
def step(index: int, total: int, title: str) -> Iterator[None]:
    print(f"\n[{index}/{total}] {title}", flush=True)
    began = time.perf_counter()
    yield
    print(f"      done in {time.perf_counter() - began:.1f}s", flush=True)


def holdout_images(folder: Path, per_class: int) -> list[tuple[Path, str]]:
    """(path, true label) pairs from a class-per-subfolder tree, ``per_class`` of each class."""
    pairs: list[tuple[Path, str]] = []
    for class_dir in sorted(p for p in folder.iterdir() if p.is_dir()):
        files = image_files(class_dir, recursive=False)
        pairs += [(f, class_dir.name) for f in files[:per_class]]
    return pairs


def print_predictions(rows: list[tuple[str, str]], title: str) -> None:
    width = max(len(name) for name, _ in rows)
    print(f"  {title}")
    for name, text in rows:
        print(f"    {name.ljust(width)}  {text}")


def _format_top(predictions: list[Any]) -> str:
    return "  ".join(f"{p.label}:{p.score:.2f}" for p in predictions)


def run_demo(
    output: str | Path,
    *,
    images: str | Path | None = None,
    checkpoint: str | Path | None = None,
    per_class: int = 20,
    bench: bool = True,
) -> dict[str, Any]:
    """Run the whole chain; returns (and writes ``output/demo_summary.json``) what it measured."""
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    summary: dict[str, Any] = {}
    began = time.perf_counter()
    total = 6 if bench else 5

    with step(1, total, "train a SwinV2 on scikit-learn's digits" if checkpoint is None else f"use {checkpoint}"):
        if checkpoint is None:
            metrics = run_digits_demo(output / "train")
            checkpoint = output / "train" / "checkpoint.pt"
            summary["train"] = {k: metrics.get(k) for k in ("val_top1", "total_s", "epochs") if k in metrics}
            print(f"      val_top1 {metrics.get('val_top1')}")
        checkpoint = Path(checkpoint)
        if not checkpoint.is_file():
            raise SwinV2ServeError(f"checkpoint {checkpoint} not found: train one with `swinv2-serve train` or drop "
                                   "CHECKPOINT= to train the digits demo")
        model = load_model(checkpoint)
        holdout_dir = checkpoint.parent / "holdout"

    native = model.cfg.img_size[0]
    sizes = [native, native + native // 2]
    with step(2, total, f"export the deploy form to ONNX at {sizes[0]}px and {sizes[1]}px (verified in ONNX Runtime)"):
        exports = {}
        for img in sizes:  # the window scales with the image (resolve_config's rule)
            result = export_onnx(model, output / "onnx" / f"{DEMO_NAME}_{img}.onnx", img_size=img)
            exports[img] = result
            print(f"      {result.path.name}: {result.nodes} nodes, {result.size_bytes / 2**20:.1f} MiB, "
                  f"windows {result.window_sizes}, max |ONNX - eager| {result.max_abs_diff:.1e}")
        summary["export"] = {img: r.summary() for img, r in exports.items()}

    repository = output / "repository"
    with step(3, total, f"write a Triton model repository at {repository}"):
        for img in sizes:
            name = DEMO_NAME if img == native else f"{DEMO_NAME}_{img}"
            write_repository(repository, name, onnx=exports[img].path, kind="cpu", max_batch=16)
            print(f"      {name}/, {name}_preprocess/, {name}_image/")

    http_port, grpc_port, metrics_port = free_ports(3)
    config = ServerConfig(http_port=http_port, grpc_port=grpc_port, metrics_port=metrics_port, max_batch=16,
                          log_file=str(output / "tritonserver.log"))
    with step(4, total, f"serve {DEMO_NAME} with the embedded Triton server (HTTP :{config.http_port}, "
                        f"gRPC :{config.grpc_port}, metrics :{config.metrics_port}) and classify"), \
            running(repository=repository, name=DEMO_NAME, config=config) as server:
        summary["classify"] = _classify(server, holdout_dir, Path(images) if images else None, per_class)
    print("      server stopped")

    if bench:
        with step(5, total, f"latency across resolutions {sizes} (torch, ONNX Runtime, Triton gRPC)"):
            summary["bench"] = _bench(checkpoint, sizes, output / "bench")

    summary["total_s"] = round(time.perf_counter() - began, 1)
    (output / "demo_summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    with step(total, total, "summary"):
        print(f"      wrote {output / 'demo_summary.json'}; total {summary['total_s']}s")
    return summary


def _classify(server: Any, holdout_dir: Path, images: Path | None, per_class: int) -> dict:
    # The bad photos are expected to fail: the client prints their one-line errors, so PyTriton's server-side
    # tracebacks for them would only look like a crash here (a real server keeps logging them).
    logging.getLogger("pytriton").setLevel(logging.CRITICAL)
    # HTTP with client-side preprocessing; gRPC with server-side preprocessing (the NAME_image ensemble)
    with Classifier(server.http_url, "http", DEMO_NAME) as http, \
            Classifier(server.grpc_url, "grpc", DEMO_NAME, server_preprocess=True) as grpc:
        return _classify_with(http, grpc, holdout_dir, images, per_class)


def _classify_with(http: Any, grpc: Any, holdout_dir: Path, images: Path | None, per_class: int) -> dict:
    results: dict[str, Any] = {}
    if holdout_dir.is_dir():
        pairs = holdout_images(holdout_dir, per_class)
        paths = [p for p, _ in pairs]
        truth = [label for _, label in pairs]
        for protocol, client in (("http", http), ("grpc", grpc)):
            predictions = client.classify(paths, top_k=3)
            correct = sum(p[0].label == t for p, t in zip(predictions, truth))
            results[f"holdout_top1_{protocol}"] = round(correct / len(pairs), 4)
            print(f"      held-out digits over {protocol.upper()}: {correct}/{len(pairs)} correct "
                  f"(top-1 {correct / len(pairs):.3f})")
        shown = [(f"{p.parent.name}/{p.name} (true {t})", _format_top(pred))
                 for (p, t), pred in list(zip(pairs, predictions))[:: max(1, len(pairs) // 6)][:6]]
        print_predictions(shown, "top-3 for a few held-out digits (gRPC, server-side preprocessing):")
    if images is not None and images.is_dir():
        rows = []
        for path in image_files(images, recursive=False):
            for protocol, client in (("http", http), ("grpc", grpc)):
                try:
                    text = _format_top(client.classify(path, top_k=3)[0])
                except SwinV2ServeError as exc:  # bad images: a clear error, the server keeps serving
                    text = f"error: {str(exc).splitlines()[0][:90]}"
                rows.append((f"{path.name} [{protocol}]", text))
        print_predictions(rows, f"photos from {images} (a digits model: labels are digits, errors are expected for "
                                "the bad files):")
        results["photos"] = dict(rows)
    return results


def _bench(checkpoint: Path, sizes: list[int], output: Path) -> dict:
    config = BenchConfig(checkpoint=checkpoint, img_sizes=sizes, batches=[1, 8],
                         backends=["torch", "onnxruntime", "triton-grpc"], min_time=1.0, min_iters=10,
                         max_time=10.0, output=output, progress=True)
    report = run_bench(config)
    files = write_report(report, output)
    print(markdown_report(report))
    for kind, path in files.items():
        print(f"      {kind}: {path}")
    return {"files": files}
