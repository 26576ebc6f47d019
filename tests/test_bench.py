"""`swinv2-serve bench` on a tiny config: it runs and writes well-formed results. Speed is never asserted."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from _serving import write_digit_pngs

from swinv2_serve import create_model, resolve_config
from swinv2_serve.bench.budget import budget_reason, estimate_memory_bytes
from swinv2_serve.bench.report import CSV_FIELDS, EXPORT_FIELDS
from swinv2_serve.bench.runners import precision_unavailable_reason
from swinv2_serve.cli import main
from swinv2_serve.verification import Comparison, compare

MODEL = "swinv2_nano_window4_64"
SIZES = (64, 96)
BATCHES = (1, 2)
COMPARE_SIZE = 64  # one resolution with timm peers keeps the test short (each export is a fresh interpreter)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
WORK = "workdir"  # the openvino bench keeps its exports here (--workdir), for the recomputation


@pytest.fixture(scope="module")
def bench_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("onnxruntime")
    pytest.importorskip("matplotlib")
    out = tmp_path_factory.mktemp("bench")
    compare = ["--compare", "timm", "--compare-img-size", str(COMPARE_SIZE)] if _has_timm() else []
    code = main(["bench", "--model", MODEL, "--img-size", *map(str, SIZES), "--batch", *map(str, BATCHES),
                 "--backend", "torch", "onnxruntime", "tensorrt", "--threads", "1", "--warmup", "1", "--iters", "2",
                 "--no-progress", "--output", str(out), *compare])
    assert code == 0
    return out


def _has_timm() -> bool:
    import importlib.util

    return importlib.util.find_spec("timm") is not None


def _rows(bench_dir: Path) -> list[dict[str, str]]:
    with (bench_dir / "results.csv").open(newline="") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == CSV_FIELDS
        return list(reader)


def test_csv_has_every_cell_with_ordered_percentiles(bench_dir: Path) -> None:
    rows = _rows(bench_dir)
    ok = [r for r in rows if r["status"] == "ok" and r["impl"] == "ours"]
    cells = {(int(r["img_size"]), int(r["batch"]), r["backend"]) for r in ok}
    assert cells == {(s, b, k) for s in SIZES for b in BATCHES for k in ("torch", "onnxruntime")}
    for r in (r for r in rows if r["status"] == "ok"):
        p50, p90, p99 = float(r["p50_ms"]), float(r["p90_ms"]), float(r["p99_ms"])
        assert 0 < float(r["min_ms"]) <= p50 <= p90 <= p99 <= float(r["max_ms"])
        assert float(r["images_per_s"]) > 0 and int(r["iters"]) == 2
        assert r["precision"] == "fp32" and r["model"] == MODEL
    assert {int(r["window_size"]) for r in ok} == {4, 6}  # the window scales with the image (4 @ 64 -> 6 @ 96)


def test_unavailable_tensorrt_is_reported_with_a_reason(bench_dir: Path) -> None:
    from swinv2_serve.runtime import available_backends

    trt = [r for r in _rows(bench_dir) if r["backend"] == "tensorrt"]
    assert len(trt) == len(SIZES) * len(BATCHES)
    assert all(r["status"] in ("skipped", "error") and r["reason"] for r in trt)
    report = json.loads((bench_dir / "results.json").read_text())
    if available_backends()["tensorrt"] is not None:
        assert report["skipped"]["tensorrt"] == available_backends()["tensorrt"]
        assert "tensorrt" in (bench_dir / "results.md").read_text()


def test_json_has_machine_facts_method_and_exports(bench_dir: Path) -> None:
    report = json.loads((bench_dir / "results.json").read_text())
    machine = report["machine"]
    assert machine["cpu"] and machine["cores"] >= 1 and machine["threads"] == 1 and "gpu" in machine
    assert machine["python"] and machine["libraries"]["torch"] and machine["libraries"]["onnxruntime"]
    assert report["config"]["model"] == MODEL and report["config"]["img_sizes"] == list(SIZES)
    assert {"latency", "percentiles", "export_memory"} <= set(report["method"])
    assert len(report["results"]) == len(_rows(bench_dir))
    ours = [e for e in report["exports"] if e["impl"] == "ours"]
    assert [e["img_size"] for e in ours] == list(SIZES)
    for e in report["exports"]:
        assert e["status"] == "ok" and e["seconds"] > 0 and e["nodes"] > 0 and e["size_mb"] > 0
        assert e["peak_rss_mb"] >= e["rss_increase_mb"] >= 0
    with (bench_dir / "exports.csv").open(newline="") as f:
        assert csv.DictReader(f).fieldnames == EXPORT_FIELDS


def test_timm_compare_gives_paired_rows(bench_dir: Path) -> None:
    if not _has_timm():
        pytest.skip("timm not installed: no standard-export peer")
    rows = [r for r in _rows(bench_dir) if r["status"] == "ok"]
    assert not [r for r in rows if r["impl"] == "timm" and int(r["img_size"]) != COMPARE_SIZE]
    for size in (COMPARE_SIZE,):
        for batch in BATCHES:
            for backend in ("torch", "onnxruntime"):
                pair = {r["impl"]: r for r in rows if (int(r["img_size"]), int(r["batch"]), r["backend"])
                        == (size, batch, backend)}
                assert set(pair) == {"ours", "timm"}, (size, batch, backend)
                ours, peer = pair["ours"], pair["timm"]
                assert float(ours["ratio_vs_timm"]) == pytest.approx(
                    float(ours["p50_ms"]) / float(peer["p50_ms"]), rel=1e-2, abs=1e-3)
                assert float(ours["max_abs_logit_diff_vs_timm"]) < 1e-3  # same weights, same function
    assert "ours/timm" in (bench_dir / "results.md").read_text()
    assert {e["impl"] for e in json.loads((bench_dir / "results.json").read_text())["exports"]} == {"ours", "timm"}


def test_plots_are_real_pngs(bench_dir: Path) -> None:
    for name in ("latency_vs_resolution.png", "throughput_vs_batch.png"):
        data = (bench_dir / name).read_bytes()
        assert data[:8] == PNG_MAGIC and len(data) > 10_000, name


def test_budgets_skip_instead_of_crashing() -> None:
    cfg = resolve_config("swinv2_tiny_window8_256", img_size=1536)
    assert cfg.window_size[0] == 48
    assert estimate_memory_bytes(cfg, 32) > 100 * 2**30  # 1536 px at batch 32: far beyond a CPU box
    assert "estimated peak memory" in budget_reason(cfg, 32, None, 24.0)
    assert "--max-pixels-per-batch" in budget_reason(cfg, 1, 1024 * 1024, 24.0)
    small = create_model(MODEL).cfg
    assert budget_reason(small, 2, 1024 * 1024, 24.0) is None


def test_budget_skipped_cells_are_recorded(tmp_path: Path) -> None:
    code = main(["bench", "--model", MODEL, "--batch", "1", "4", "--backend", "torch", "--iters", "1",
                 "--warmup", "0", "--max-pixels-per-batch", str(2 * 64 * 64), "--no-plots", "--no-progress",
                 "--output", str(tmp_path)])
    assert code == 0
    rows = list(csv.DictReader((tmp_path / "results.csv").open()))
    status = {int(r["batch"]): (r["status"], r["reason"]) for r in rows}
    assert status[1][0] == "ok"
    assert status[4][0] == "skipped" and "--max-pixels-per-batch" in status[4][1]


def test_bad_arguments_are_one_line_errors(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["bench", "--output", str(tmp_path)]) == 2
    assert "--model" in capsys.readouterr().err
    assert main(["bench", "--model", "no_such_model", "--output", str(tmp_path)]) == 2
    assert "unknown model" in capsys.readouterr().err


# -- openvino: ours (OpenVINORuntime) vs timm's standard ONNX export compiled by OpenVINO ------------------------
@pytest.fixture(scope="module")
def openvino_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("openvino")
    if not _has_timm():
        pytest.skip("timm not installed: no standard-export peer")
    out = tmp_path_factory.mktemp("bench_openvino")
    digits = write_digit_pngs(tmp_path_factory.mktemp("calibration"), per_class=5)
    code = main(["bench", "--model", MODEL, "--batch", "1", "2", "--backend", "openvino", "--precision", "fp32",
                 "bf16", "int8", "--calibration", str(digits), "--compare", "timm", "--threads", "1", "--warmup", "1",
                 "--iters", "2", "--no-plots", "--no-progress", "--output", str(out), "--workdir", str(out / WORK)])
    assert code == 0
    return out


def _openvino_pairs(bench_dir: Path, precision: str) -> dict[tuple[int, str], dict[str, str]]:
    rows = [r for r in _rows(bench_dir) if r["backend"] == "openvino" and r["precision"] == precision]
    return {(int(r["batch"]), r["impl"]): r for r in rows}


def _recomputed_vs_fp32(bench_dir: Path, precision: str) -> dict[int, Comparison]:
    """The bench's fidelity columns recomputed from what it leaves behind: our ONNX (and int8 IR) in --workdir and
    the seed of its inputs. It draws one standard-normal batch per cell, in batch order, shared by all precisions,
    and compares each reduced precision with OpenVINO fp32 of the same ONNX on that batch (first outputs)."""
    from swinv2_serve.runtime import load

    report = json.loads((bench_dir / "results.json").read_text())
    (onnx,) = (bench_dir / WORK).glob(f"{MODEL}_*_ours.onnx")
    (int8,) = (bench_dir / WORK).glob(f"{MODEL}_*_ours_int8.xml")
    options = {"threads": 1, "hint": "latency", "fidelity": "off"}  # as the bench's runners
    reference = load(onnx, "openvino", precision="fp32", **options)
    candidate = load(int8, "openvino", **options) if precision == "int8" else \
        load(onnx, "openvino", precision=precision, **options)
    rng = np.random.default_rng(report["config"]["seed"])
    batches = [rng.standard_normal((b, *reference.input_shape), dtype=np.float32) for b in (1, 2)]
    return {len(x): compare(reference(x)["logits"], candidate(x)["logits"]) for x in batches}


def _assert_fidelity_columns_recompute(pairs: dict[tuple[int, str], dict[str, str]], bench_dir: Path,
                                       precision: str) -> None:
    recomputed = _recomputed_vs_fp32(bench_dir, precision)
    for batch in (1, 2):
        ours = pairs[(batch, "ours")]
        assert float(ours["top1_agreement_vs_fp32"]) == recomputed[batch].top1_agreement, batch
        assert float(ours["max_rel_logit_err_vs_fp32"]) == pytest.approx(recomputed[batch].max_rel_error, abs=2e-6)
        assert float(ours["max_rel_logit_err_vs_fp32"]) > 0  # it really ran reduced precision, not fp32
        assert not pairs[(batch, "timm")]["top1_agreement_vs_fp32"]  # only our rows carry the columns


def _assert_ok_pairs(pairs: dict[tuple[int, str], dict[str, str]], max_diff: float) -> None:
    assert set(pairs) == {(b, impl) for b in (1, 2) for impl in ("ours", "timm")}
    for (batch, impl), r in pairs.items():
        assert r["status"] == "ok", r["reason"]
        assert 0 < float(r["p50_ms"]) <= float(r["max_ms"]) and float(r["images_per_s"]) > 0
        if impl == "ours":
            assert float(r["ratio_vs_timm"]) > 0
            assert float(r["max_abs_logit_diff_vs_timm"]) < max_diff, (batch, r["max_abs_logit_diff_vs_timm"])


def test_openvino_fp32_with_timm_peer(openvino_dir: Path) -> None:
    pairs = _openvino_pairs(openvino_dir, "fp32")
    _assert_ok_pairs(pairs, max_diff=1e-3)  # same weights, same function, both in fp32
    assert not pairs[(1, "ours")]["top1_agreement_vs_fp32"]  # only reduced-precision rows carry it
    report = json.loads((openvino_dir / "results.json").read_text())
    # openvino alone still exports both graphs (ours for OpenVINORuntime, timm's for its peer)
    assert {(e["impl"], e["status"]) for e in report["exports"]} == {("ours", "ok"), ("timm", "ok")}
    assert report["machine"]["libraries"]["openvino"]
    assert "| openvino | fp32 |" in (openvino_dir / "results.md").read_text()


def test_openvino_bf16_with_timm_peer_and_fp32_reference(openvino_dir: Path) -> None:
    from swinv2_serve.runtime.openvino_backend import cpu_capabilities

    if "BF16" not in cpu_capabilities():
        pytest.skip("this CPU has no bf16 (OpenVINO capabilities lack BF16): the bench skips these cells")
    pairs = _openvino_pairs(openvino_dir, "bf16")
    _assert_ok_pairs(pairs, max_diff=0.1)  # bf16 vs bf16: both round, not to the same values (~1e-2 here)
    _assert_fidelity_columns_recompute(pairs, openvino_dir, "bf16")
    for batch in (1, 2):
        assert float(pairs[(batch, "ours")]["max_rel_logit_err_vs_fp32"]) < 0.1
    assert "Reduced precision vs fp32" in (openvino_dir / "results.md").read_text()


def test_openvino_int8_with_timm_peer_quantized_alike(openvino_dir: Path) -> None:
    pairs = _openvino_pairs(openvino_dir, "int8")
    _assert_ok_pairs(pairs, max_diff=1.0)  # two graphs quantized separately: close, not equal
    _assert_fidelity_columns_recompute(pairs, openvino_dir, "int8")
    for batch in (1, 2):
        assert float(pairs[(batch, "ours")]["max_rel_logit_err_vs_fp32"]) < 0.3


def test_openvino_precision_skip_reasons() -> None:
    assert precision_unavailable_reason("openvino", "fp32", []) is None
    assert precision_unavailable_reason("openvino", "bf16", ["FP32", "BF16"]) is None
    why = precision_unavailable_reason("openvino", "bf16", ["FP32", "INT8"])
    assert why and "no bf16 support" in why and "not run as fp32" in why
    assert "not fp16" in (precision_unavailable_reason("openvino", "fp16", ["BF16"]) or "")
    assert "fp32 export" in (precision_unavailable_reason("onnxruntime", "bf16") or "")
    assert "needs --calibration" in (precision_unavailable_reason("openvino", "int8", ["INT8"]) or "")
    assert precision_unavailable_reason("openvino", "int8", ["INT8"], Path("images")) is None
    assert "not int8" in (precision_unavailable_reason("torch", "int8") or "")


def test_unavailable_openvino_is_skipped_with_a_reason(tmp_path: Path) -> None:
    from swinv2_serve.runtime import available_backends

    reason = available_backends()["openvino"]
    if reason is None:
        pytest.skip("openvino is available here: its skip path is the probe's reason, checked where it is missing")
    code = main(["bench", "--model", MODEL, "--backend", "openvino", "--iters", "1", "--warmup", "0", "--no-plots",
                 "--no-progress", "--output", str(tmp_path)])
    assert code == 0
    rows = list(csv.DictReader((tmp_path / "results.csv").open()))
    assert rows and all(r["status"] == "skipped" and r["reason"] == reason for r in rows)
