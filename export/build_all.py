"""Build every target of an export recipe (export/targets.toml): ONNX per resolution, TensorRT engines per precision.

ONNX export runs anywhere. TensorRT engines are built in the NGC TensorRT container whose release
matches the Triton serving container (export/README.md): an engine runs only on the TensorRT version
and GPU model that built it, and its sidecar (``<plan>.json``) says which.

    python export/build_all.py [--recipe export/targets.toml] [--formats onnx trt] [--only NAME ...] [--dry-run]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # runnable from a checkout without installing
    sys.path.insert(0, str(REPO))

from swinv2_serve.checkpoint import load_or_create  # noqa: E402
from swinv2_serve.config import get_config, resolve_config  # noqa: E402
from swinv2_serve.errors import SwinV2ServeError  # noqa: E402
from swinv2_serve.onnx_export import export_onnx  # noqa: E402
from swinv2_serve.preprocess import image_files  # noqa: E402
from swinv2_serve.runtime.engine import BatchProfile, batch_profile  # noqa: E402
from swinv2_serve.runtime.tensorrt_backend import require_tensorrt, tensorrt_unavailable_reason  # noqa: E402
from swinv2_serve.tensorrt_build import TensorRTOptions, build_verified, check_engine_precision  # noqa: E402

log = logging.getLogger("build_all")
DEFAULT_RECIPE = REPO / "export" / "targets.toml"
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_]*$")  # also a valid Triton model name
TARGET_KEYS = {"name", "model", "checkpoint", "resolutions", "windows", "precisions", "min_batch", "opt_batch",
               "max_batch", "workspace_gib", "opset", "timing_cache", "output"}
DEFAULT_KEYS = TARGET_KEYS - {"name", "model", "checkpoint", "resolutions", "windows"}


@dataclass(frozen=True)
class Target:
    name: str
    model: str
    checkpoint: str
    resolutions: tuple[int, ...]
    windows: dict[int, int]
    precisions: tuple[str, ...]
    profile: BatchProfile
    workspace_gib: float
    opset: int
    timing_cache: str | None
    output: str

    def onnx_path(self, root: Path, resolution: int, fp16: bool = False) -> Path:
        return root / self.output / self.name / f"{self.name}_{resolution}{'.fp16' if fp16 else ''}.onnx"

    def plan_path(self, root: Path, resolution: int, precision: str) -> Path:
        return root / self.output / self.name / f"{self.name}_{resolution}.{precision}.plan"


@dataclass
class Recipe:
    targets: list[Target] = field(default_factory=list)


def _target(raw: dict[str, Any], defaults: dict[str, Any], index: int) -> tuple[Target | None, list[str]]:
    where = f"target #{index + 1} ({raw.get('name', '?')})"
    problems = [f"{where}: unknown key {k!r}" for k in sorted(set(raw) - TARGET_KEYS)]
    merged = {**defaults, **raw}
    for key in ("name", "model", "checkpoint", "resolutions"):
        if key not in merged:
            problems.append(f"{where}: missing {key!r}")
    if problems:
        return None, problems
    name, model = str(merged["name"]), str(merged["model"])
    if not NAME_RE.match(name):
        problems.append(f"{where}: name must be lower-case letters, digits and '_' (a Triton model name)")
    try:
        base = get_config(model)
    except ValueError as exc:
        return None, [f"{where}: {exc}"]
    resolutions = merged["resolutions"]
    if not isinstance(resolutions, list) or not resolutions or not all(isinstance(r, int) for r in resolutions):
        return None, [f"{where}: resolutions must be a non-empty list of integers, got {resolutions!r}"]
    windows = {int(k): int(v) for k, v in dict(merged.get("windows", {})).items()}
    for r in windows:
        if r not in resolutions:
            problems.append(f"{where}: windows names resolution {r}, which is not in resolutions {resolutions}")
    stride = base.patch_size * 2 ** (base.num_stages - 1)
    for r in resolutions:
        if r % stride:
            problems.append(f"{where}: resolution {r} is not a multiple of {stride} (patch {base.patch_size} x "
                            f"{base.num_stages - 1} downsamplings); try {max(stride, round(r / stride) * stride)}")
            continue
        try:
            resolve_config(model, img_size=r, window_size=windows.get(r))
        except ValueError as exc:
            problems.append(f"{where}: resolution {r}: {exc}")
    if len(set(resolutions)) != len(resolutions):
        problems.append(f"{where}: repeated resolutions {resolutions}")
    precisions = merged.get("precisions", ["fp16"])
    for p in precisions:
        try:
            check_engine_precision(p)
        except SwinV2ServeError as exc:
            problems.append(f"{where}: {exc}")
    try:
        profile = batch_profile(int(merged.get("min_batch", 1)), merged.get("opt_batch"),
                                int(merged.get("max_batch", 32)))
    except SwinV2ServeError as exc:
        problems.append(f"{where}: {exc}")
        profile = BatchProfile(1, 1, 1)
    checkpoint = merged["checkpoint"]
    if not isinstance(checkpoint, str) or not checkpoint:
        problems.append(f"{where}: checkpoint must be a path or \"random\"")
    if problems:
        return None, problems
    return Target(
        name=name, model=model, checkpoint=checkpoint, resolutions=tuple(resolutions), windows=windows,
        precisions=tuple(precisions), profile=profile, workspace_gib=float(merged.get("workspace_gib", 4.0)),
        opset=int(merged.get("opset", 17)), timing_cache=merged.get("timing_cache"),
        output=str(merged.get("output", "build/export")),
    ), []


def load_recipe(path: str | os.PathLike = DEFAULT_RECIPE) -> Recipe:
    """Parse and validate a recipe; one ``SwinV2ServeError`` lists every problem found."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise SwinV2ServeError(f"{path}: no such recipe") from None
    except tomllib.TOMLDecodeError as exc:
        raise SwinV2ServeError(f"{path}: not valid TOML ({exc})") from None
    defaults = data.get("defaults", {})
    problems = [f"[defaults]: unknown key {k!r}" for k in sorted(set(defaults) - DEFAULT_KEYS)]
    problems += [f"unknown top-level key {k!r}" for k in sorted(set(data) - {"defaults", "target"})]
    recipe = Recipe()
    for i, raw in enumerate(data.get("target", [])):
        target, found = _target(raw, defaults, i)
        problems += found
        if target is not None:
            recipe.targets.append(target)
    names = [t.name for t in recipe.targets]
    problems += [f"target name {n!r} is used twice" for n in sorted({n for n in names if names.count(n) > 1})]
    if not data.get("target"):
        problems.append("no [[target]] entries")
    if problems:
        raise SwinV2ServeError(f"{path}: invalid recipe:\n  " + "\n  ".join(problems))
    return recipe


def _load_model(target: Target) -> Any:
    """The target's model at its trained resolution; each export resizes it (``resolve_config``'s window rule)."""
    if target.checkpoint == "random":
        return load_or_create(target.model)
    path = Path(os.path.expandvars(target.checkpoint))
    path = path if path.is_absolute() else REPO / path
    if "$" in str(path) or not path.is_file():
        raise SwinV2ServeError(f"{target.name}: checkpoint {path} not found (set SWINV2_CHECKPOINTS, see "
                               "export/README.md)")
    return load_or_create(target.model, path)


def build(recipe: Recipe, *, formats: set[str], root: Path, images: list[Path], dry_run: bool) -> list[dict]:
    """Run every job; returns one manifest entry per artefact written."""
    from tqdm.auto import tqdm

    jobs = [(t, r) for t in recipe.targets for r in t.resolutions]
    manifest: list[dict] = []
    if dry_run:
        for t, r in jobs:
            print(f"{t.name} @ {r}: {t.onnx_path(root, r).relative_to(root)}"
                  + "".join(f", {t.plan_path(root, r, p).relative_to(root)}" for p in t.precisions if "trt" in formats))
        return manifest
    if "trt" in formats:
        require_tensorrt()
        reason = tensorrt_unavailable_reason()
        if reason:
            raise SwinV2ServeError(reason)
    bar = tqdm(jobs, desc="export", unit="resolution")
    models: dict[str, Any] = {}
    for target, resolution in bar:
        bar.set_postfix_str(f"{target.name}@{resolution}")
        if target.name not in models:
            models[target.name] = _load_model(target)
        model = models[target.name]
        geometry = {"img_size": resolution, "window_size": target.windows.get(resolution)}
        onnx32 = target.onnx_path(root, resolution)
        start = time.monotonic()
        result = export_onnx(model, onnx32, opset=target.opset, **geometry)
        manifest.append({"target": target.name, "resolution": resolution, "format": "onnx", "path": str(onnx32),
                         "max_abs_diff": result.max_abs_diff, "seconds": round(time.monotonic() - start, 1)})
        if "fp16" in target.precisions and "trt" in formats:
            export_onnx(model, target.onnx_path(root, resolution, fp16=True), opset=target.opset, fp16=True,
                        **geometry)
        if "trt" not in formats:
            continue
        for precision in target.precisions:
            opts = TensorRTOptions(precision=precision, profile=target.profile, workspace_gib=target.workspace_gib,
                                   timing_cache=(root / target.timing_cache) if target.timing_cache else None)
            source = target.onnx_path(root, resolution, fp16=precision == "fp16")
            plan = target.plan_path(root, resolution, precision)
            info = build_verified(source, plan, opts, images, reference_onnx=onnx32)
            manifest.append({"target": target.name, "resolution": resolution, "format": "trt", "path": str(plan),
                             "precision": precision, "gpu": info.gpu_name, "tensorrt": info.tensorrt_version,
                             **_verification_figures(info.verification),
                             "seconds": info.build_seconds})
    return manifest


def _verification_figures(verification: dict[str, Any] | None) -> dict[str, float]:
    """max |diff| over photos and random inputs, and the decisive top-1 agreement (photos where given)."""
    assert verification is not None
    sets = [verification[k] for k in ("photos", "random") if k in verification]
    return {"max_abs_diff": max(v["max_abs_diff"] for v in sets), "top1_agreement": sets[0]["top1_agreement"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", type=Path, default=DEFAULT_RECIPE)
    parser.add_argument("--formats", nargs="+", choices=["onnx", "trt"], default=["onnx"])
    parser.add_argument("--only", nargs="+", metavar="NAME", help="build only these targets")
    parser.add_argument("--root", type=Path, default=REPO, help="outputs are relative to this (default: the repo)")
    parser.add_argument("--images", type=Path, default=REPO.parent / "shared" / "images",
                        help="photos engines are verified on (plus random inputs)")
    parser.add_argument("--dry-run", action="store_true", help="validate the recipe and list what would be built")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    try:
        recipe = load_recipe(args.recipe)
        if args.only:
            unknown = sorted(set(args.only) - {t.name for t in recipe.targets})
            if unknown:
                raise SwinV2ServeError(f"--only: no targets named {unknown} in {args.recipe}")
            recipe.targets = [t for t in recipe.targets if t.name in args.only]
        images = image_files(args.images, recursive=False) if args.images.is_dir() else []  # bad ones skipped
        manifest = build(recipe, formats=set(args.formats), root=args.root, images=images, dry_run=args.dry_run)
    except SwinV2ServeError as exc:
        print(f"build_all: error: {exc}", file=sys.stderr)
        return 2
    if manifest:
        out = args.root / recipe.targets[0].output / "manifest.json"
        out.write_text(json.dumps(manifest, indent=2) + "\n")
        for entry in manifest:
            print(f"{entry['format']:4} {entry.get('precision', 'fp32'):4} {entry['path']}  "
                  f"max|diff| {entry['max_abs_diff']:.2g}")
        print(f"manifest: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
