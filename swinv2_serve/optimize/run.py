"""``run_optimize(OptimizeConfig) -> OptimizeReport``: search every resolution, deploy the winners, report.

Everything is written into a hidden folder beside ``output`` and renamed to ``output`` only at the end, so an
interrupted or failed run leaves no half-written repository (and an earlier ``output`` stays as it was until
the new one is complete).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..checkpoint import load_or_create
from ..config import resolve_config
from ..deploy import resize_model
from ..machine import machine_facts, usable_cores
from ..model import SwinV2
from .choice import assign_verdicts
from .config import OptimizeConfig
from .package import serve_command, served_check, write_winner
from .plots import plot_latency, plot_throughput
from .report import markdown, report_json
from .search import ResolutionResult, search

REPOSITORY, JSON_FILE, MARKDOWN_FILE = "repository", "optimize.json", "optimize.md"
PLOTS = ("latency.png", "throughput.png")
RESERVE = 0.1  # of the budget, kept for the repository and the served check (at most RESERVE_S)
RESERVE_S = 30.0


@dataclass
class OptimizeReport:
    output: Path
    data: dict[str, Any]
    resolutions: list[ResolutionResult]

    @property
    def chosen(self) -> dict[str, Any]:
        """img size -> chosen candidate (or None)."""
        return {img: res["chosen"] for img, res in self.data["resolutions"].items()}


class Progress:
    """One line per step on stderr, with the seconds since the start."""

    def __init__(self, enabled: bool) -> None:
        self.enabled, self.start = enabled, time.perf_counter()

    def __call__(self, message: str) -> None:
        if self.enabled:
            print(f"optimize [{time.perf_counter() - self.start:6.1f}s] {message}", file=sys.stderr, flush=True)


def served_name(config: OptimizeConfig, img: int) -> str:
    return config.name if len(config.img_sizes) <= 1 else f"{config.name}_{img}"


def models_at_resolutions(config: OptimizeConfig) -> list[SwinV2]:
    base = load_or_create(config.model, config.checkpoint, perturb_seed=None if config.checkpoint else config.seed)
    sizes = config.img_sizes or [base.cfg.img_size[0]]
    out = []
    for img in sizes:
        cfg = resolve_config(base.cfg, img_size=img)
        out.append(base if cfg == base.cfg else resize_model(base, img_size=cfg.img_size, window_size=cfg.window_size))
    return out


def _relocate(res: ResolutionResult, tmp: Path, final: Path) -> None:
    """Paths recorded inside the temporary folder -> where they will be after the rename."""
    def move(path: str | None) -> str | None:
        if path is None:
            return None
        with contextlib.suppress(ValueError):
            return str(final / Path(path).relative_to(tmp))
        return path

    for r in res.results:
        r.path = move(r.path)
    res.onnx = Path(move(str(res.onnx)) or res.onnx)


def _publish(tmp: Path, output: Path) -> None:
    """Rename ``tmp`` to ``output``; an existing ``output`` is replaced only now, after everything was written."""
    old = None
    if output.exists():
        old = output.parent / f".{output.name}.old-{os.getpid()}"
        output.rename(old)
    tmp.rename(output)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def deploy_winners(config: OptimizeConfig, resolutions: list[ResolutionResult], tmp: Path, final: Path,
                   threads: int, say: Progress) -> None:
    cores = usable_cores()
    for res in resolutions:
        assign_verdicts(res.results, res.chosen, config.objective)
        if res.chosen is None:
            say(f"{res.img_size}px: no candidate passed the gate and can be served: nothing deployed")
            continue
        name = served_name(config, res.img_size)
        say(f"{res.img_size}px: chosen {res.chosen.name}; writing repository model {name}")
        repo = write_winner(tmp / REPOSITORY, name, res.chosen, res.onnx, objective=config.objective,
                            max_batch=config.max_batch, threads=threads, cores=cores, workdir=tmp / str(res.img_size))
        repo["serve_command"] = serve_command(final / REPOSITORY, name, res.chosen, threads, config.images.resolve())
        if config.serve_check:
            say(f"{res.img_size}px: serving {tmp / REPOSITORY} with the embedded Triton to compare its logits")
            try:
                assert res.check is not None
                repo["served_check"] = served_check(tmp / REPOSITORY, name, res.chosen, threads, res.check,
                                                    config.images, tmp / f"tritonserver_{res.img_size}.log",
                                                    config.max_batch)
            except Exception as exc:  # noqa: BLE001 - recorded and reported; the run still fails below
                repo["served_check"] = {"error": f"{type(exc).__name__}: {exc}"[:500], "equal": False}
            say(f"{res.img_size}px: served == direct: {repo['served_check'].get('equal')}")
        res.repository = repo


def run_optimize(config: OptimizeConfig, argv: list[str] | None = None) -> OptimizeReport:
    """The whole run (see the package docstring); the result is in ``config.output`` only if it completes."""
    config.validate()
    started = time.perf_counter()
    deadline = started + config.budget_s - min(RESERVE_S, RESERVE * config.budget_s)
    say = Progress(config.progress)
    threads = config.threads or usable_cores()
    torch.set_num_threads(threads)
    machine = machine_facts(threads)
    final = config.output.resolve()
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".{final.name}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    resolutions: list[ResolutionResult] = []
    try:
        models = models_at_resolutions(config)
        say(f"{models[0].cfg.name} at {', '.join(str(m.cfg.img_size[0]) for m in models)} px, objective "
            f"{config.objective}, {threads} threads, budget {config.budget_s:.0f}s; load average {os.getloadavg()}")
        resolutions = search(config, models, tmp, threads, say, deadline)
        for res in resolutions:  # free the runtimes before the server loads its own copy
            res.close()
        deploy_winners(config, resolutions, tmp, final, threads, say)
        for res in resolutions:
            _relocate(res, tmp, final)
        plots = [plot(resolutions, tmp / name).name for plot, name in zip((plot_latency, plot_throughput), PLOTS)]
        data = report_json(config, models[0].cfg.name, machine, resolutions, str(final / REPOSITORY),
                           time.perf_counter() - started, argv or sys.argv)
        (tmp / JSON_FILE).write_text(json.dumps(data, indent=2, default=str), encoding="utf-8")
        (tmp / MARKDOWN_FILE).write_text(markdown(data, resolutions, plots), encoding="utf-8")
        _publish(tmp, final)
    except BaseException:
        for res in resolutions:
            res.close()
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    say(f"wrote {final / MARKDOWN_FILE}, {final / JSON_FILE} and {final / REPOSITORY} in "
        f"{time.perf_counter() - started:.0f}s")
    return OptimizeReport(final, data, resolutions)
