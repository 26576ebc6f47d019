"""`swinv2-serve serve`: a real Triton Inference Server (embedded, via PyTriton) for NAME and NAME_image."""

from __future__ import annotations

import argparse
import logging
import tempfile
from pathlib import Path

from ..contract import RUNTIME_BACKENDS
from ..server import ServerConfig, Terminated, interrupt_on_sigterm, serve


def add_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--onnx", metavar="PATH",
                        help="exported model (.onnx; OpenVINO .xml, e.g. from `quantize`; .plan/.pt with --backend)")
    source.add_argument("--repository", metavar="DIR", help="a repository written by `swinv2-serve repository`")
    parser.add_argument("--backend", choices=RUNTIME_BACKENDS, help="runtime (default: from the file suffix)")
    parser.add_argument("--precision", help="runtime precision where the backend has a choice (fp32, fp16, bf16; "
                                            "an int8 IR runs int8)")
    parser.add_argument("--fidelity", choices=["refuse", "warn", "off"],
                        help="openvino bf16/int8: refuse (default) / warn / skip when top-1 agreement with fp32 < 99%%")
    parser.add_argument("--fidelity-images", metavar="DIR",
                        help="openvino bf16: check agreement on these images (default: seeded random inputs)")
    parser.add_argument("--name", default="swinv2", help="served model name (also NAME_image); default swinv2")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default loopback only)")
    parser.add_argument("--http-port", type=int, default=8000)
    parser.add_argument("--grpc-port", type=int, default=8001)
    parser.add_argument("--metrics-port", type=int, default=8002)
    parser.add_argument("--max-batch", type=int, default=32, help="max batch of the dynamic batcher")
    parser.add_argument("--max-queue-delay-us", type=int, default=2000, help="dynamic batching wait (us)")
    parser.add_argument("--threads", type=int, help="intra-op threads of the runtime (default: all cores)")
    parser.add_argument("--preprocess-instances", type=int, default=2, help="image decoder instances (default 2)")
    parser.add_argument("--log-file", help="tritonserver's log (default: a file in the temp folder, named on start; "
                                           "'-' for the console)")
    parser.add_argument("--drain-s", type=float, default=2.0,
                        help="on SIGTERM/Ctrl+C: seconds with readiness off, still answering, before stopping")
    parser.add_argument("--exit-timeout-s", type=int, default=5,
                        help="then tritonserver's wait for requests in flight (its --exit-timeout-secs)")


def _log_file(args: argparse.Namespace) -> str | None:
    """tritonserver's own log goes to a file unless asked for on the console: on a CPU machine it reports the
    missing CUDA driver at every start, which reads as a failure and is not one."""
    if args.log_file == "-":
        return None
    return args.log_file or str(Path(tempfile.gettempdir()) / f"swinv2-serve-{args.name}-{args.http_port}.log")


def run(args: argparse.Namespace) -> int:
    interrupt_on_sigterm()

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("pytriton").setLevel(logging.WARNING)
    options = {}
    if args.threads:
        options["threads"] = args.threads
    if args.precision:
        options["precision"] = args.precision
    if args.fidelity:
        options["fidelity"] = args.fidelity
    if args.fidelity_images:
        options["check_inputs"] = args.fidelity_images
    config = ServerConfig(
        host=args.host, http_port=args.http_port, grpc_port=args.grpc_port, metrics_port=args.metrics_port,
        max_batch=args.max_batch, max_queue_delay_us=args.max_queue_delay_us,
        preprocess_instances=args.preprocess_instances, log_file=_log_file(args), drain_s=args.drain_s,
        exit_timeout_s=args.exit_timeout_s,
    )
    server = serve(args.onnx, args.name, repository=args.repository, config=config, backend=args.backend,
                   runtime_options=options)
    try:
        server.start()
    except Terminated:  # SIGTERM while starting: a requested stop (start() has stopped what it started)
        print("stopped before serving (SIGTERM during start-up)", flush=True)
        return 0
    print(f"serving {args.name} and {args.name}_image: http {server.http_url}  grpc {server.grpc_url}  "
          f"metrics {server.metrics_url}  (Ctrl+C or SIGTERM: drain {args.drain_s:g}s, then stop)", flush=True)
    if config.log_file:
        print(f"tritonserver log: {config.log_file}", flush=True)
    server.serve_forever()
    print("stopped", flush=True)
    return 0
