"""`swinv2-serve classify`: top-k labels per image from a running Triton server (HTTP or gRPC)."""

from __future__ import annotations

import argparse
import os

from ..client import Classifier


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("images", nargs="+", help="image files (JPEG, PNG, ...)")
    parser.add_argument("--url", default=None,
                        help="host:port, or several replicas comma-separated (balanced, unanswered requests retried "
                             "on the next); default 127.0.0.1:8000 http / :8001 grpc")
    parser.add_argument("--protocol", choices=["http", "grpc"], default="http")
    parser.add_argument("--model", default="swinv2", help="served model name (NAME, not NAME_image)")
    parser.add_argument("--server-preprocess", action="store_true", help="send encoded bytes to NAME_image")
    parser.add_argument("--top-k", type=int, default=5)
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds per request")


def run(args: argparse.Namespace) -> int:
    url = args.url or ("127.0.0.1:8001" if args.protocol == "grpc" else "127.0.0.1:8000")
    with Classifier(url, args.protocol, args.model, server_preprocess=args.server_preprocess,
                    timeout=args.timeout) as classifier:
        results = classifier.classify(args.images, top_k=args.top_k)
    width = max(len(os.path.basename(p)) for p in args.images)
    print(f"{'image':<{width}}  rank  {'score':>7}  {'class':>5}  label")
    for path, predictions in zip(args.images, results):
        for rank, p in enumerate(predictions, 1):
            name = os.path.basename(path) if rank == 1 else ""
            print(f"{name:<{width}}  {rank:>4}  {p.score:7.4f}  {p.index:>5}  {p.label}")
    return 0
