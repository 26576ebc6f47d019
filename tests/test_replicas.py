"""Replicas that lose nothing: real `swinv2-serve serve` processes, SIGKILL and SIGTERM under load (loopback only).

A short version of benchmarks/fault_test.py, which records the full run (3 replicas, 16 clients, >= 6000
requests). Every answer is compared with ONNX Runtime run directly on the same input.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

from swinv2_serve.cli import main
from swinv2_serve.client import Classifier
from swinv2_serve.errors import ServerError
from swinv2_serve.server import free_ports

REPO = Path(__file__).resolve().parents[1]
pytest.importorskip("pytriton", reason="the embedded Triton server needs nvidia-pytriton ([serve] extra)")


def fault_test():  # noqa: ANN201 - the benchmark script, imported as a module
    if "fault_test" not in sys.modules:
        spec = importlib.util.spec_from_file_location("fault_test", REPO / "benchmarks" / "fault_test.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules["fault_test"] = module
        spec.loader.exec_module(module)
    return sys.modules["fault_test"]


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory, images_dir: Path):  # noqa: ANN201
    ft = fault_test()
    onnx = ft.export_model(tmp_path_factory.mktemp("replicas") / "nano.onnx")
    return onnx, ft.inputs_for(onnx, images_dir)


@pytest.mark.slow
def test_sigkill_and_sigterm_under_load_lose_nothing(model, tmp_path: Path) -> None:  # noqa: ANN001
    ft = fault_test()
    onnx, inputs = model
    report = ft.FaultReport(replicas=2, clients=4)
    with ft.replicas(onnx, tmp_path, 2) as group:
        outcomes = ft.run_faults(group, inputs, clients=4, requests=300, report=report, rolling=[1])
        bad = ft.run_bad_requests(group, inputs, count=2)
    print({name: (p["requests"], p["lost"], p["p50_ms"]) for name, p in report.phases.items()}, report.rolling, bad)
    assert report.total["requests"] >= 300 and len(outcomes) == report.total["requests"]
    assert report.total["lost"] == 0, report.total["first_errors"]
    assert report.phases["during_kill"]["requests"] > 0 and report.phases["rolling_restart"]["requests"] > 0
    # SIGTERM: drained, then a clean exit that leaves no tritonserver or python-backend process behind
    assert [(r["exit_code"], r["processes_left"]) for r in report.rolling] == [(0, 0)]
    # served answers equal the runtime run directly on the same input (same ONNX, same thread count)
    assert report.total["max_abs_diff_vs_direct"] < 1e-4 and report.total["top1_agreement_vs_direct"] == 1.0
    # a bad photo is the client's error: 400 / INVALID_ARGUMENT, seen once by the servers, never retried
    assert bad["codes"] == {"http": ["400"], "grpc": ["INVALID_ARGUMENT"]}
    assert bad["retried"] == 0 and bad["good_correct"] == bad["good_sent"]


def test_one_dead_endpoint_is_skipped(model, tmp_path: Path, images_dir: Path) -> None:  # noqa: ANN001
    ft = fault_test()
    onnx, inputs = model
    (dead,) = free_ports(1)
    with ft.replicas(onnx, tmp_path, 1) as (replica,):
        for protocol, url in (("grpc", replica.grpc), ("http", replica.http)):
            with Classifier(f"127.0.0.1:{dead},{url}", protocol, ft.NAME) as client:
                got = np.concatenate([client.infer(inputs.tensors[i:i + 1])["logits"] for i in range(6)])
                assert np.abs(got - inputs.expected[:6]).max() < 1e-4  # every request answered, wherever it went
            with Classifier(url, protocol, ft.NAME, server_preprocess=True) as client, \
                    pytest.raises(ServerError, match=r"refused the request: \((HTTP 400|INVALID_ARGUMENT)\)"):
                client.infer(np.array([[b"not an image"]], dtype=np.object_))
        # the CLI takes the same comma-separated list
        assert main(["classify", "--url", f"127.0.0.1:{dead},{replica.grpc}", "--protocol", "grpc", "--model",
                     ft.NAME, str(images_dir / "cat.jpg")]) == 0
    with pytest.raises(ServerError, match="no server at"):
        Classifier(f"127.0.0.1:{dead}", "grpc", ft.NAME)
