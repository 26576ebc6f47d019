"""Helpers for the serving tests: a small exported model, free loopback ports, a running embedded server."""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

MODEL = "swinv2_nano_window4_64"


def export_small_onnx(path: Path, seed: int = 0) -> Path:
    """nano @ 64 px with perturbed weights (so predictions are not flat), exported with the package's exporter."""
    import torch
    from conftest import perturb_

    from swinv2_serve import create_model

    torch.manual_seed(seed)
    model = perturb_(create_model(MODEL, num_classes=1000), scale=0.05, seed=seed).eval()
    from swinv2_serve.onnx_export import export_onnx

    export_onnx(model, path)
    return path


def decompression_bomb_png(width: int = 100_000, height: int = 100_000) -> bytes:
    """A ~100-byte PNG whose header declares width x height pixels (10 gigapixels by default)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    idat = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


@contextmanager
def running_server(onnx_path: Path, name: str, max_batch: int, log_dir: Path) -> Iterator[Any]:
    """A real embedded Triton server on free loopback ports, its log in ``log_dir``; always stopped."""
    from swinv2_serve.server import ServerConfig, free_ports, serve

    http, grpc, metrics = free_ports(3)
    config = ServerConfig(http_port=http, grpc_port=grpc, metrics_port=metrics, max_batch=max_batch,
                          log_file=str(log_dir / "tritonserver.log"))
    with serve(onnx_path, name, config=config) as server:
        yield server


def write_digit_pngs(root: Path, per_class: int) -> Path:
    """``per_class`` of scikit-learn's digits per class as 64 px PNGs in ``root/<digit>/`` (real images)."""
    from PIL import Image

    from swinv2_serve.train.digits import digit_images

    images, labels = digit_images(64)
    counts: dict[int, int] = {}
    for array, label in zip(images, labels):
        if counts.get(int(label), 0) < per_class:
            (root / str(label)).mkdir(parents=True, exist_ok=True)
            Image.fromarray(array).save(root / str(label) / f"{counts.get(int(label), 0)}.png")
            counts[int(label)] = counts.get(int(label), 0) + 1
    return root
