"""`swinv2-serve optimize`: the choice logic (pure, with fabricated measurements) and the whole loop on a tiny
config (build, fidelity gate, profiling, repository, the embedded Triton serving it). Speed is never asserted."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
from _serving import write_digit_pngs

from swinv2_serve.cli import main
from swinv2_serve.errors import SwinV2ServeError
from swinv2_serve.optimize import OptimizeConfig, choose, parse_candidate, preferred_batch_sizes
from swinv2_serve.optimize.choice import (
    CHOSEN,
    NOT_RUNNABLE,
    REFUSED,
    CandidateResult,
    Fidelity,
    assign_verdicts,
    instance_count,
    queue_delay_us,
)
from swinv2_serve.optimize.profile import spread
from swinv2_serve.optimize.run import run_optimize
from swinv2_serve.optimize.search import tile

MODEL = "swinv2_nano_window4_64"
CANDIDATE_KEYS = {"backend", "precision", "path", "fidelity", "latency_ms", "throughput_img_s", "verdict"}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def fabricated(name: str, p50: float | None, img_s: float | None, passed: bool = True,
               deployable: bool = True) -> CandidateResult:
    backend, precision = name.split()
    fidelity = Fidelity(1.0 if passed else 0.9, 0.01, 0, passed, 100, () if passed else ("top-1 agreement 90%",))
    return CandidateResult(backend, precision, deployable=deployable, fidelity=fidelity,
                           latency_ms=None if p50 is None else {"p50": p50, "p99": p50 * 1.2},
                           throughput_img_s=img_s)


# -- the choice, with fabricated measurements ------------------------------------------------------------------
def test_a_candidate_that_fails_the_gate_is_never_chosen_however_fast() -> None:
    results = [fabricated("onnxruntime fp32", 70.0, 14.0), fabricated("openvino int8", 5.0, 400.0, passed=False),
               fabricated("openvino bf16", 40.0, 25.0)]
    for objective in ("latency", "throughput"):
        chosen = choose(results, objective)
        assert chosen is results[2] and chosen.passed


def test_a_faster_passing_candidate_is_always_chosen() -> None:
    rng = random.Random(0)
    names = ["onnxruntime fp32", "openvino fp32", "openvino bf16", "openvino int8", "tensorrt fp16", "torch bf16"]
    for _ in range(300):
        results = [fabricated(n, rng.uniform(1, 100), rng.uniform(1, 100), passed=rng.random() < 0.7,
                              deployable=not n.startswith("torch")) for n in names]
        eligible = [r for r in results if r.passed and r.deployable]
        keys = (("latency", lambda r: r.latency_ms["p50"]), ("throughput", lambda r: -r.throughput_img_s))
        for objective, key in keys:
            chosen = choose(results, objective)
            if not eligible:
                assert chosen is None
                continue
            assert chosen is min(eligible, key=key)
            faster = [r for r in eligible if key(r) < key(chosen)]
            assert not faster


def test_unprofiled_and_undeployable_candidates_are_not_chosen_and_ties_keep_the_order() -> None:
    results = [fabricated("torch bf16", 1.0, 999.0, deployable=False), fabricated("openvino bf16", None, None),
               fabricated("onnxruntime fp32", 50.0, 20.0), fabricated("openvino fp32", 50.0, 20.0)]
    chosen = choose(results, "latency")
    assert chosen is results[2]
    assign_verdicts(results, chosen, "latency")
    assert [r.verdict for r in results] == ["passed", "passed", CHOSEN, "passed"]
    assert "in-process" in results[0].reason and "not profiled" in results[1].reason
    assert choose([fabricated("openvino int8", 5.0, 400.0, passed=False)], "latency") is None


def test_repository_settings_come_from_the_measurements() -> None:
    assert preferred_batch_sizes({1: 30.0, 2: 33.0, 4: 34.0, 8: 34.5}) == [2, 8]
    assert preferred_batch_sizes({1: 30.0, 2: 29.0, 4: 28.0}) == [1]  # batching does not pay: no waiting for it
    assert preferred_batch_sizes({1: 10.0, 2: 19.0, 4: 30.0, 8: 29.5}) == [4]
    assert preferred_batch_sizes({}) == []
    assert queue_delay_us("latency", 30.0) == 0 and queue_delay_us("throughput", 30.0) == 7500
    assert instance_count(2, 2) == 1 and instance_count(16, 4) == 4 and instance_count(1, 4) == 1


def test_helpers() -> None:
    assert spread([10.0, 11.0, 10.5]) == pytest.approx(0.1) and spread([3.0]) == 0.0
    x = np.arange(3, dtype=np.float32)[:, None]
    assert tile(x, 7)[:, 0].tolist() == [0, 1, 2, 0, 1, 2, 0]
    assert parse_candidate("openvino/int8").name == "openvino int8"
    assert parse_candidate("torch/fp32/compile").variant == "compile"
    with pytest.raises(SwinV2ServeError, match="unknown candidate"):
        parse_candidate("openvino/fp16")
    assert OptimizeConfig(images=Path("."), output=Path("o"), max_batch=8).batches() == [1, 2, 4, 8]
    assert OptimizeConfig(images=Path("."), output=Path("o"), max_batch=6).batches() == [1, 2, 4, 6]


# -- the whole loop on a tiny config ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_digit_pngs(tmp_path_factory.mktemp("digits"), per_class=4)  # 40 images: 8 checked, 32 calibrate


@pytest.fixture(scope="module")
def optimized(digits: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("openvino")
    pytest.importorskip("nncf")
    pytest.importorskip("pytriton")
    out = tmp_path_factory.mktemp("optimize") / "out"
    # --max-rel-error 1e-4 refuses every reduced precision (int8 and bf16 differ by ~1e-2): the gate at work
    code = main(["optimize", "--model", MODEL, "--images", str(digits), "--max-batch", "2", "--threads", "2",
                 "--budget-s", "10", "--max-rel-error", "1e-4", "--no-progress", "--output", str(out),
                 "--candidates", "onnxruntime/fp32", "openvino/fp32", "openvino/int8", "torch/fp32", "tensorrt/fp16"])
    assert code == 0
    return out


def test_optimize_json_records_every_candidate(optimized: Path) -> None:
    data = json.loads((optimized / "optimize.json").read_text())
    assert {"machine", "versions", "resolutions"} <= set(data) and data["machine"]["cpu"]
    assert data["versions"]["openvino"] and data["objective"] == "latency"
    res = data["resolutions"]["64"]
    by_name = {c["name"]: c for c in res["candidates"]}
    assert list(by_name) == ["onnxruntime fp32", "openvino fp32", "openvino int8", "torch fp32", "tensorrt fp16"]
    for c in res["candidates"]:
        assert set(c) >= CANDIDATE_KEYS
    trt = by_name["tensorrt fp16"]
    if trt["verdict"] == NOT_RUNNABLE:  # no GPU / TensorRT here: listed with the reason, not dropped
        assert trt["reason"] and trt["fidelity"] is None and trt["latency_ms"] is None
    int8 = by_name["openvino int8"]
    assert int8["verdict"] == REFUSED and not int8["fidelity"]["passed"] and int8["latency_ms"] is None
    assert "max relative logit error" in int8["reason"] and Path(int8["path"]).is_file()
    for name in ("onnxruntime fp32", "openvino fp32", "torch fp32"):
        c = by_name[name]
        assert c["fidelity"]["passed"] and c["fidelity"]["top1_agreement"] == 1.0 and c["fidelity"]["nonfinite"] == 0
        assert 0 < c["latency_ms"]["p50"] <= c["latency_ms"]["p99"] and c["throughput_img_s"] > 0
        assert set(c["profile"]["throughput_img_s"]) == {"1", "2"}


def test_the_chosen_one_is_the_fastest_passing_and_loads(optimized: Path, digits: Path) -> None:
    from swinv2_serve.runtime import load

    data = json.loads((optimized / "optimize.json").read_text())
    res = data["resolutions"]["64"]
    chosen = res["chosen"]
    assert chosen["verdict"] == CHOSEN and chosen["fidelity"]["passed"]
    passing = [c for c in res["candidates"] if c["fidelity"] and c["fidelity"]["passed"] and c["deployable"]]
    assert chosen["latency_ms"]["p50"] == min(c["latency_ms"]["p50"] for c in passing)
    assert [c["name"] for c in res["candidates"] if c["verdict"] == CHOSEN] == [chosen["name"]]
    runtime = load(chosen["path"], backend=chosen["backend"], precision=chosen["precision"])
    from swinv2_serve.preprocess import Preprocess, image_files

    x = Preprocess.from_metadata(runtime.metadata).batch(image_files(digits)[:2])
    assert runtime(x)["logits"].shape == (2, 10)


def test_repository_is_served_and_equals_the_chosen_runtime(optimized: Path) -> None:
    from swinv2_serve.repository import parse_config

    data = json.loads((optimized / "optimize.json").read_text())
    repo = data["resolutions"]["64"]["repository"]
    assert repo["name"] == "swinv2" and repo["max_batch"] == 2 and repo["instances"] >= 1
    config = parse_config((optimized / "repository" / "swinv2" / "config.pbtxt").read_text())
    assert config.max_batch_size == 2 and list(config.dynamic_batching.preferred_batch_size) == \
        repo["preferred_batch_sizes"]
    assert len(config.model_warmup) == 2
    assert {p.name for p in (optimized / "repository").iterdir()} == {"swinv2", "swinv2_preprocess", "swinv2_image"}
    check = repo["served_check"]
    assert check["equal"] and check["image"]["equal"] and check["max_abs_diff"] <= check["limit"]
    assert "--repository" in repo["serve_command"] and "--name swinv2" in repo["serve_command"]


def test_report_and_plots(optimized: Path) -> None:
    text = (optimized / "optimize.md").read_text()
    assert "| candidate | top-1 agreement" in text and "**Chosen:" in text and "Not runnable here" in text
    for png in ("latency.png", "throughput.png"):
        assert (optimized / png).read_bytes()[:8] == PNG_MAGIC
    assert not [p for p in optimized.parent.iterdir() if ".partial-" in p.name]


def test_an_interrupted_run_leaves_nothing(digits: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import swinv2_serve.optimize.run as run_module

    def interrupted(*_args: object, **_kwargs: object) -> None:
        (tmp_path / f".out.partial-{__import__('os').getpid()}" / "repository" / "half").mkdir(parents=True)
        raise KeyboardInterrupt

    monkeypatch.setattr(run_module, "search", interrupted)
    config = OptimizeConfig(images=digits, output=tmp_path / "out", model=MODEL, progress=False)
    with pytest.raises(KeyboardInterrupt):
        run_optimize(config)
    assert list(tmp_path.iterdir()) == []


def test_bad_arguments_are_one_line_errors(digits: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "file").write_text("x")
    for args, message in (
        (["--model", MODEL, "--images", str(tmp_path / "nope")], "not a directory"),
        (["--model", MODEL, "--images", str(digits), "--fidelity-threshold", "1.5"], "fidelity-threshold"),
        (["--images", str(digits)], "--model NAME and/or --checkpoint"),
    ):
        assert main(["optimize", *args, "--output", str(tmp_path / "o")]) == 2
        assert message in capsys.readouterr().err
    assert main(["optimize", "--model", MODEL, "--images", str(digits), "--output", str(tmp_path / "taken")]) == 2
    assert "--overwrite" in capsys.readouterr().err


def test_int8_recipes_pick_layers_by_structure(tmp_path: Path) -> None:
    ov = pytest.importorskip("openvino")
    from _serving import export_small_onnx

    from swinv2_serve.openvino_int8 import AMX_RECIPE, Int8Recipe, attention_matmuls, linear_channels, linear_layers

    model = ov.Core().read_model(str(export_small_onnx(tmp_path / "nano.onnx")))
    blocks = 5  # nano: depths (1, 1, 2, 1)
    scores, values = attention_matmuls(model)
    kinds = linear_layers(model)
    assert len(scores) == len(values) == blocks and not set(scores) & set(values)
    assert len(kinds["proj"]) == len(kinds["fc2"]) == blocks
    assert all("proj" in n for n in kinds["proj"]) and all("fc2" in n for n in kinds["fc2"])
    assert set(Int8Recipe().ignored(model)) == set(scores + values)  # the product's default: attention in float
    assert Int8Recipe(attention="values").ignored(model) == sorted(scores)
    channels = linear_channels(model)
    stage0 = min(channels[name] for name in kinds["proj"])  # nano: 32, 64, 128, 256 channels by stage
    first_stage = {name for name, width in channels.items() if width <= stage0}  # (+ the 10-class head)
    ignored = set(Int8Recipe(float_stages=1).ignored(model))
    assert len(first_stage) >= 4 and first_stage <= ignored and set(channels) - first_stage - ignored
    assert set(kinds["proj"]) <= set(AMX_RECIPE.ignored(model))
    with pytest.raises(SwinV2ServeError):
        Int8Recipe(float_linears=("qkv",))
