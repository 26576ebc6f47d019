"""A sweep's results as files: CSV, JSON (with machine facts and skip reasons), Markdown tables and PNG plots."""

from __future__ import annotations

import csv
import dataclasses
import json
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from .plots import plot_latency_vs_resolution, plot_throughput_vs_batch
from .results import BACKENDS, OURS, TIMM, BenchReport, BenchResult, ExportRecord

CSV_FIELDS = [f.name for f in dataclasses.fields(BenchResult)]
EXPORT_FIELDS = [f.name for f in dataclasses.fields(ExportRecord)]


def write_report(report: BenchReport, output: Path, *, plots: bool = True) -> dict[str, str]:
    output.mkdir(parents=True, exist_ok=True)
    files = {"csv": output / "results.csv", "exports_csv": output / "exports.csv", "json": output / "results.json",
             "markdown": output / "results.md"}
    _write_csv(files["csv"], CSV_FIELDS, [asdict(r) for r in report.results])
    _write_csv(files["exports_csv"], EXPORT_FIELDS, [asdict(e) for e in report.exports])
    files["markdown"].write_text(markdown_report(report), encoding="utf-8")
    if plots:
        files["latency_png"] = plot_latency_vs_resolution(report.results, output / "latency_vs_resolution.png")
        files["throughput_png"] = plot_throughput_vs_batch(report.results, output / "throughput_vs_batch.png")
    report.files = {k: str(v) for k, v in files.items()}
    files["json"].write_text(json.dumps({**report.to_json(), "files": report.files}, indent=2), encoding="utf-8")
    return report.files


def load_report(path: Path) -> BenchReport:
    """A report back from its results.json (to re-render tables and plots without measuring again)."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    return BenchReport(config=data["config"], machine=data["machine"],
                       results=[BenchResult(**r) for r in data["results"]],
                       exports=[ExportRecord(**e) for e in data["exports"]], skipped=data["skipped"],
                       seconds=data.get("seconds", 0.0))


def _write_csv(path: Path, fields: list[str], rows: list[dict[str, Any]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows({k: ("" if v is None else v) for k, v in row.items()} for row in rows)


def _fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def wide_table(results: Sequence[BenchResult]) -> list[str]:
    """Resolution x backend: one row per (img, batch, precision), ``p50 / p99 ms, img/s`` per backend column."""
    ok = [r for r in results if r.status == "ok"]
    labels = sorted({r.label for r in ok}, key=lambda lab: (BACKENDS.index(lab.split()[0])
                                                            if lab.split()[0] in BACKENDS else 99, lab))
    if not labels:
        return []
    lines = ["| img (window) | batch | precision | " + " | ".join(labels) + " |",
             "| ---: | ---: | --- | " + " | ".join("---:" for _ in labels) + " |"]
    cells = {(r.img_size, r.batch, r.precision, r.label): r for r in ok}
    for img, window, batch, precision in sorted({(r.img_size, r.window_size, r.batch, r.precision) for r in ok}):
        row = []
        for label in labels:
            r = cells.get((img, batch, precision, label))
            row.append("-" if r is None else f"{_fmt(r.p50_ms)} / {_fmt(r.p99_ms)} ms, {_fmt(r.images_per_s, 2)}/s")
        lines.append(f"| {img} ({window}) | {batch} | {precision} | " + " | ".join(row) + " |")
    return lines


def markdown_report(report: BenchReport) -> str:
    """Tables: resolution x backend, the long form with n, ours/timm pairs, exports, skips, machine."""
    ok = [r for r in report.results if r.status == "ok"]
    wide = wide_table(report.results)
    head = ["### p50 / p99 latency and images/s per resolution and backend", "", *wide, ""] if wide else []
    lines = ["| img | window | batch | backend | precision | p50 ms | p90 ms | p99 ms | img/s | n |",
             "| ---: | ---: | ---: | --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    for r in sorted(ok, key=lambda r: (r.img_size, r.batch, r.backend, r.impl != OURS, r.precision)):
        lines.append(f"| {r.img_size} | {r.window_size} | {r.batch} | {r.label} | {r.precision} | {_fmt(r.p50_ms)} | "
                     f"{_fmt(r.p90_ms)} | {_fmt(r.p99_ms)} | {_fmt(r.images_per_s, 2)} | {r.iters} |")
    out = [*head, "### All measured cells (n = samples per runner)", "", *lines, ""]
    pairs = [r for r in ok if r.ratio_vs_timm is not None]
    if pairs:
        peers = {(r.img_size, r.batch, r.backend, r.precision): r for r in ok if r.impl == TIMM}
        out += ["### Ours vs timm (same weights, same loop, interleaved)", "",
                "| img | batch | backend | precision | ours p50 ms | timm p50 ms | ours/timm | max abs logit diff |",
                "| ---: | ---: | --- | --- | ---: | ---: | ---: | ---: |"]
        for r in sorted(pairs, key=lambda r: (r.backend, r.img_size, r.batch, r.precision)):
            peer = peers[(r.img_size, r.batch, r.backend, r.precision)]
            out.append(f"| {r.img_size} | {r.batch} | {r.backend} | {r.precision} | {_fmt(r.p50_ms)} | "
                       f"{_fmt(peer.p50_ms)} | **{r.ratio_vs_timm:.3f}** | {r.max_abs_logit_diff_vs_timm:.2g} |")
        out.append("")
    reduced = [r for r in ok if r.top1_agreement_vs_fp32 is not None]
    if reduced:
        out += ["### Reduced precision vs fp32 (ours, same backend, same input batch)", "",
                "| img | batch | backend | precision | top-1 agreement | max rel logit error |",
                "| ---: | ---: | --- | --- | ---: | ---: |"]
        out += [f"| {r.img_size} | {r.batch} | {r.backend} | {r.precision} | {r.top1_agreement_vs_fp32:.0%} | "
                f"{r.max_rel_logit_err_vs_fp32:.2g} |"
                for r in sorted(reduced, key=lambda r: (r.backend, r.img_size, r.batch, r.precision))]
        out.append("")
    if report.exports:
        out += ["### Export time and peak memory (one child process per export)", "",
                "| img | window | impl | seconds | peak RSS MB | RSS increase MB | nodes | size MB |",
                "| ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: |"]
        for e in report.exports:
            out.append(f"| {e.img_size} | {e.window_size} | {e.impl} | {_fmt(e.seconds)} | {_fmt(e.peak_rss_mb, 0)} | "
                       f"{_fmt(e.rss_increase_mb, 0)} | {e.nodes if e.nodes is not None else '-'} | "
                       f"{_fmt(e.size_mb)} |" + (f" {e.status}: {e.reason}" if e.status != "ok" else ""))
        out.append("")
    skipped = _skip_summary(report)
    if skipped:
        out += ["### Skipped", "", *[f"- {s}" for s in skipped], ""]
    m = report.machine
    libs = ", ".join(f"{k} {v}" for k, v in m["libraries"].items() if v)
    out += ["### Machine", "",
            f"- CPU: {m['cpu']} ({m['cores_usable']} usable cores), threads {m['threads']}, "
            f"memory {m.get('memory_gb', '?')} GB, GPU: {m['gpu'] or 'none'}",
            f"- load average at start: {m.get('load_average_at_start')}",
            f"- python {m['python']}; {libs}; tritonserver {m.get('tritonserver') or 'not started'}", ""]
    return "\n".join(out)


def _skip_summary(report: BenchReport) -> list[str]:
    seen: dict[str, list[str]] = {}
    for r in report.results:
        if r.status in ("skipped", "error"):
            where = f"{r.img_size}px b{r.batch}"
            seen.setdefault(f"{r.backend} {r.precision} ({r.status}): {r.reason}", []).append(where)
    for name, reason in report.skipped.items():
        if name == TIMM:
            seen.setdefault(f"--compare timm: {reason}", [])
    return [f"{what}" + (f" — {', '.join(dict.fromkeys(where))}" if where else "") for what, where in seen.items()]
