"""Latency / throughput sweeps with timm as the peer: ``run_bench(BenchConfig(...)) -> BenchReport``.

``results`` (what is asked and recorded) < ``budget``, ``peers`` (timm), ``exports`` (child processes),
``candidates`` (the product paths, built once: shared with ``optimize``) < ``runners`` < ``sweep`` <
``report``/``plots``; timing itself is ``swinv2_serve.timing``.
"""

from .budget import estimate_memory_bytes
from .peers import export_timm_standard, timm_model
from .report import load_report, markdown_report, write_report
from .results import BACKENDS, COMPARE, BenchConfig, BenchReport, BenchResult, ExportRecord
from .sweep import run_bench

__all__ = ["BACKENDS", "COMPARE", "BenchConfig", "BenchReport", "BenchResult", "ExportRecord", "estimate_memory_bytes",
           "export_timm_standard", "load_report", "markdown_report", "run_bench", "timm_model", "write_report"]
