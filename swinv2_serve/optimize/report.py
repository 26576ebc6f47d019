"""optimize.json (the record) and optimize.md (the same, for people)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .._version import __version__
from .choice import NOT_RUNNABLE, CandidateResult
from .config import OptimizeConfig
from .search import FP32_MAX_REL, ResolutionResult

METHOD = {
    "fidelity": "each candidate's logits on the held-out images (never used for int8 calibration) against the model "
                "in PyTorch fp32 eager: top-1 agreement, max relative error (per image max|x - ref| / max|ref|, max "
                "over images), NaN/Inf count; fp32 candidates must also keep max relative error <= "
                f"{FP32_MAX_REL}; an int8 IR must also pass the check quantize_int8 recorded in it",
    "latency": "batch 1, one held-out image; every passing candidate called round-robin (timing.measure, start "
               "rotated each round, untimed cooldown before each call) in windows of 10 rounds until the p50s of "
               "the last 3 windows are within 10% of each other for every candidate (stable: p50/p99 over those "
               "windows) or its time share ends (not stable: p50/p99 over every window)",
    "throughput": "batch sweep 1, 2, 4 ... max_batch, interleaved the same way; images/s = batch / mean latency; "
                  "throughput_img_s is the best over the sweep",
    "choice": "among candidates that passed, were profiled and have a Triton repository form: lowest batch-1 p50 "
              "(latency) or highest images/s (throughput); a tie goes to the earlier candidate",
    "repository": "preferred batch sizes: the smallest batch within 5% of the best measured throughput and the best "
                  "one; instances: usable cores // threads; queue delay: 0 (latency) or a quarter of the batch-1 p50 "
                  "(throughput); warm-up: random batch 1 and zeros at max batch",
}


def report_json(config: OptimizeConfig, model: str, machine: dict[str, Any], resolutions: Sequence[ResolutionResult],
                repository: str, seconds: float, argv: Sequence[str]) -> dict[str, Any]:
    return {
        "command": list(argv),
        "model": model,
        "checkpoint": None if config.checkpoint is None else str(config.checkpoint),
        "weights": "checkpoint" if config.checkpoint else f"random, perturbed N(0, 0.02) (seed {config.seed})",
        "objective": config.objective,
        "max_batch": config.max_batch,
        "threads": machine["threads"],
        "fidelity_threshold": config.fidelity_threshold,
        "max_rel_error": config.max_rel_error,
        "budget_s": config.budget_s,
        "images": str(config.images),
        "machine": machine,
        "versions": {"swinv2_serve": __version__, **machine["libraries"], "tritonserver": machine.get("tritonserver")},
        "resolutions": {str(r.img_size): resolution_json(r) for r in resolutions},
        "repository": repository,
        "seconds": round(seconds, 1),
        "method": METHOD,
    }


def resolution_json(res: ResolutionResult) -> dict[str, Any]:
    return {
        "img_size": res.img_size,
        "window_size": res.window_size,
        "onnx": str(res.onnx),
        "check_images": res.check_images,
        "calibration_images": res.calibration_images,
        "candidates": [r.to_dict() for r in res.results],
        "chosen": None if res.chosen is None else res.chosen.to_dict(),
        "repository": res.repository,
        "seconds": round(res.seconds, 1),
    }


def _f(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def candidate_row(r: CandidateResult) -> str:
    fid = r.fidelity
    agree = "-" if fid is None else f"{fid.top1_agreement:.1%}"
    rel = "-" if fid is None else f"{fid.max_rel_error:.3g}"
    bad = "-" if fid is None else str(fid.nonfinite)
    p50 = None if r.latency_ms is None else r.latency_ms["p50"]
    p99 = None if r.latency_ms is None else r.latency_ms["p99"]
    verdict = f"**{r.verdict}**" if r.verdict == "chosen" else r.verdict
    why = f": {r.reason}" if r.reason and r.verdict != "chosen" else ""
    cells = [r.name, agree, rel, bad, _f(p50), _f(p99), _f(r.throughput_img_s, 2), verdict + why]
    return "| " + " | ".join(cells) + " |"


def resolution_markdown(res: ResolutionResult) -> list[str]:
    lines = [f"## {res.img_size} px (window {res.window_size})", "",
             f"Checked on {res.check_images} held-out images; int8 calibrated on {res.calibration_images} others.", "",
             "| candidate | top-1 agreement | max rel error | NaN/Inf | p50 ms (b1) | p99 ms (b1) | best img/s "
             "| verdict |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    lines += [candidate_row(r) for r in res.results if r.verdict != NOT_RUNNABLE]
    curves = [r for r in res.results if r.profile.get("throughput_img_s")]
    if curves:
        batches = sorted({int(b) for r in curves for b in r.profile["throughput_img_s"]})
        lines += ["", "Throughput (images/s) against batch:", "",
                  "| candidate | " + " | ".join(f"b{b}" for b in batches) + " | stable b1 |",
                  "| --- | " + " | ".join("---:" for _ in batches) + " | --- |"]
        for r in curves:
            curve = r.profile["throughput_img_s"]
            batch1 = r.profile.get("batch1", {})
            stable = (f"{'yes' if batch1.get('stable') else 'no'} ({batch1.get('windows', '?')} windows, "
                      f"n={batch1.get('n')})")
            lines.append(f"| {r.name} | " + " | ".join(_f(curve.get(str(b)), 2) for b in batches) + f" | {stable} |")
    skipped = [r for r in res.results if r.verdict == NOT_RUNNABLE]
    if skipped:
        lines += ["", "Not runnable here:", ""] + [f"- {r.name}: {r.reason}" for r in skipped]
    lines.append("")
    if res.chosen is None:
        lines += ["**No candidate passed the fidelity gate and could be served: nothing was deployed.**", ""]
        return lines
    c = res.chosen
    assert c.latency_ms is not None
    lines += [f"**Chosen: {c.name}**: p50 {c.latency_ms['p50']:.1f} ms at batch 1, {c.throughput_img_s:.2f} images/s "
              f"at best; `{c.path}`", ""]
    repo = res.repository
    if repo:
        lines += [f"Repository model `{repo['name']}` ({repo['backend']} {repo['precision']}): max batch "
                  f"{repo['max_batch']}, {repo['instances']} instance(s), preferred batch sizes "
                  f"{repo['preferred_batch_sizes']}, queue delay {repo['max_queue_delay_us']} us; "
                  f"warm-up {', '.join(repo['warmup'])}.", "", f"    {repo['serve_command']}", ""]
        check = repo.get("served_check")
        if check:
            lines.append(_served_line(check))
            lines.append("")
    return lines


def _served_line(check: dict[str, Any]) -> str:
    if "error" in check:
        return f"Served check FAILED: {check['error']}"
    parts = [f"{check['inputs']} tensors to NAME: max |served - direct| {check['max_abs_diff']:.3g}"]
    if "image" in check:
        image = check["image"]
        parts.append(f"one encoded image ({image['file']}) to NAME_image: {image['max_abs_diff']:.3g}")
    verdict = "equal" if check["equal"] else "NOT EQUAL"
    return (f"Served by the embedded Triton from this repository vs the chosen file loaded directly: "
            f"{'; '.join(parts)} -> {verdict} (limit {check['limit']:.3g}, top-1 identical: {check['top1_equal']}).")


def markdown(data: dict[str, Any], resolutions: Sequence[ResolutionResult], plots: Sequence[str]) -> str:
    m = data["machine"]
    libs = ", ".join(f"{k} {v}" for k, v in data["versions"].items() if v)
    gate = (f"top-1 agreement with PyTorch fp32 eager >= {data['fidelity_threshold']:.1%} on the held-out images, "
            f"no NaN/Inf; fp32 paths also max relative error <= {FP32_MAX_REL}"
            + (f"; reduced precisions max relative error <= {data['max_rel_error']}" if data["max_rel_error"] else ""))
    lines = [f"# swinv2-serve optimize: {data['model']}, objective {data['objective']}", "",
             f"- weights: {data['checkpoint'] or data['weights']}",
             f"- machine: {m['cpu']}, {m['cores_usable']} usable cores, {m['threads']} threads, "
             f"GPU: {m['gpu'] or 'none'}; "
             f"VNNI {m['vnni']}; flags {' '.join(m['cpu_flags'])}",
             f"- load average at start: {m.get('load_average_at_start')}",
             f"- versions: {libs}",
             f"- images: `{data['images']}`; fidelity gate: {gate}",
             f"- repository: `{data['repository']}`; {data['seconds']:.0f} s in all", ""]
    for res in resolutions:
        lines += resolution_markdown(res)
    lines += [f"![{p}]({p})" for p in plots]
    lines += ["", "How it was measured:", ""] + [f"- {k}: {v}" for k, v in data["method"].items()] + [""]
    return "\n".join(lines)
