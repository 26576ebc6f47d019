"""TensorRT engines built where they will run: at container start, on the pod's own GPU, from a recipe.

A `docker build` has no GPU and an engine is bound to the GPU and TensorRT that built it, so a repository
written with ``engine_at_start`` holds ``NAME/model.onnx`` and ``NAME/engine.json`` (this module's
``EngineRecipe``) instead of a plan; the container's entrypoint runs ``swinv2-serve engine --repository DIR``
before tritonserver, which builds every missing ``NAME/1/model.plan``.

Every pod builds the engine ``swinv2-serve export --format trt`` builds: for fp16 the ONNX beside the config is
our fp16 export, whose explicit Casts keep the q/k normalisation, scale, bias, softmax and LayerNorm in FP32,
and the network is built *strongly typed*, so TensorRT runs exactly those types (a plain ``trtexec --fp16`` on
an fp32 ONNX would be free to run them in FP16, where Swin attention is known to overflow). The builder is
``trtexec`` (the serving image has it) or our Python builder where the ``tensorrt`` package is installed. The
timing cache lives on the repository volume, so the second pod builds in a fraction of the time. A file lock
per plan lets pods that share a volume build it once; a plan is written under a temporary name and renamed.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .contract import INPUT_NAME, read_onnx_metadata
from .errors import BackendUnavailableError, ExportError, SwinV2ServeError
from .runtime.engine import BatchProfile, batch_profile
from .tensorrt_build import build_engine, check_engine_precision, resolve_strongly_typed

RECIPE_FILE = "engine.json"
ONNX_FILE = "model.onnx"
PLAN_FILE = "1/model.plan"
BUILDERS = ("trtexec", "python")


@dataclass(frozen=True)
class EngineRecipe:
    """How to build one model's engine: written with the repository, read at container start."""

    onnx: str  # relative to the model's folder
    plan: str
    precision: str
    strongly_typed: bool
    profile: BatchProfile
    input_shape: tuple[int, int, int]  # [3, H, W]
    workspace_gib: float = 4.0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "input_shape": list(self.input_shape), "format": 1}

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = RECIPE_FILE) -> EngineRecipe:
        try:
            profile = data["profile"]
            return cls(onnx=str(data["onnx"]), plan=str(data["plan"]), precision=str(data["precision"]),
                       strongly_typed=bool(data["strongly_typed"]),
                       profile=BatchProfile(int(profile["min"]), int(profile["opt"]), int(profile["max"])),
                       input_shape=tuple(int(d) for d in data["input_shape"]),  # type: ignore[arg-type]
                       workspace_gib=float(data.get("workspace_gib", 4.0)))
        except (KeyError, TypeError, ValueError) as exc:
            raise SwinV2ServeError(f"{source}: not an engine recipe ({exc}); write the repository again") from None


def recipe_for(onnx: str | os.PathLike, precision: str, max_batch: int, workspace_gib: float = 4.0) -> EngineRecipe:
    """The recipe for our ``onnx`` export. fp16 needs the fp16 export (its Casts are the FP32 islands): from an
    fp32 ONNX a command-line build could not keep them, so that is refused with what to do instead."""
    check_engine_precision(precision)
    metadata = read_onnx_metadata(onnx)
    if precision == "fp16" and not metadata.fp16:
        raise ExportError(
            f"{Path(onnx).name} is an fp32 export: an fp16 engine built at start from it would not keep the FP32 "
            "islands. Give the fp16 export (`swinv2-serve export --onnx-fp16`, file *.fp16.onnx), or precision fp32")
    typed = resolve_strongly_typed(precision, metadata.fp16, None)
    return EngineRecipe(onnx=ONNX_FILE, plan=PLAN_FILE, precision=precision, strongly_typed=typed,
                        profile=batch_profile(1, None, max_batch), input_shape=metadata.input_shape,
                        workspace_gib=workspace_gib)


def write_recipe(model_dir: Path, onnx: str | os.PathLike, recipe: EngineRecipe) -> None:
    shutil.copyfile(onnx, model_dir / recipe.onnx)
    (model_dir / RECIPE_FILE).write_text(json.dumps(recipe.to_dict(), indent=2) + "\n", encoding="utf-8")


def recipes(repository: str | os.PathLike) -> list[tuple[Path, EngineRecipe]]:
    """(model folder, recipe) for every model of the repository that is built at start."""
    found = []
    for path in sorted(Path(repository).glob(f"*/{RECIPE_FILE}")):
        found.append((path.parent, EngineRecipe.from_dict(json.loads(path.read_text(encoding="utf-8")), str(path))))
    return found


def trtexec_command(model_dir: Path, recipe: EngineRecipe, plan: Path, timing_cache: Path | None) -> list[str]:
    """The trtexec call that builds what our Python builder builds from the same ONNX."""
    shape = "x".join(str(d) for d in recipe.input_shape)
    p = recipe.profile
    command = ["trtexec", f"--onnx={model_dir / recipe.onnx}", f"--saveEngine={plan}",
               f"--minShapes={INPUT_NAME}:{p.min}x{shape}", f"--optShapes={INPUT_NAME}:{p.opt}x{shape}",
               f"--maxShapes={INPUT_NAME}:{p.max}x{shape}",
               f"--memPoolSize=workspace:{int(recipe.workspace_gib * 1024)}M", "--skipInference"]
    if recipe.strongly_typed:
        command.append("--stronglyTyped")  # the ONNX's own types: FP16 with its FP32 islands
    elif recipe.precision == "fp16":  # not written by recipe_for; kept so a hand-made recipe cannot lose islands
        raise ExportError("an fp16 engine from trtexec needs a strongly typed fp16 ONNX")
    if timing_cache is not None:
        command.append(f"--timingCacheFile={timing_cache}")
    return command


@contextlib.contextmanager
def _exclusive(path: Path) -> Iterator[None]:
    """One builder per plan across processes (pods sharing the volume): an flock on ``<plan>.lock``."""
    with open(path.with_name(path.name + ".lock"), "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def build_missing(repository: str | os.PathLike, *, builder: str = "trtexec", timing_cache: Path | None = None,
                  dry_run: bool = False, log: Any = print) -> list[list[str]]:
    """Build every missing plan of ``repository``; returns the trtexec commands (run, or only shown)."""
    if builder not in BUILDERS:
        raise SwinV2ServeError(f"builder must be one of {', '.join(BUILDERS)}, got {builder!r}")
    commands = []
    for model_dir, recipe in recipes(repository):
        plan = model_dir / recipe.plan
        if plan.is_file():
            log(f"{model_dir.name}: {recipe.plan} exists")
            continue
        partial = plan.with_name(f".{plan.name}.partial")
        command = trtexec_command(model_dir, recipe, partial, timing_cache)
        commands.append(command)
        if dry_run:
            log(" ".join(command))
            continue
        plan.parent.mkdir(parents=True, exist_ok=True)
        with _exclusive(plan):
            if plan.is_file():  # another pod built it while this one waited
                continue
            began = time.monotonic()
            log(f"{model_dir.name}: building {recipe.plan} ({recipe.precision}, batch {recipe.profile.min}.."
                f"{recipe.profile.max}) with {builder}")
            if builder == "trtexec":
                _run_trtexec(command, model_dir)
            else:
                build_engine(model_dir / recipe.onnx, partial, precision=recipe.precision, min_batch=recipe.profile.min,
                             opt_batch=recipe.profile.opt, max_batch=recipe.profile.max,
                             workspace_gib=recipe.workspace_gib, timing_cache=timing_cache,
                             strongly_typed=recipe.strongly_typed)
            os.replace(partial, plan)
            log(f"{model_dir.name}: built in {time.monotonic() - began:.0f}s")
    return commands


def _run_trtexec(command: list[str], model_dir: Path) -> None:
    if shutil.which(command[0]) is None:
        raise BackendUnavailableError("trtexec is not on PATH: build engines in the serving image (its Dockerfile "
                                      "copies trtexec from NGC's TensorRT image) or pass --builder python")
    log_file = model_dir / "trtexec.log"
    with log_file.open("w") as out:
        code = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT).returncode
    if code != 0:
        tail = "\n".join(log_file.read_text(errors="replace").splitlines()[-20:])
        raise ExportError(f"trtexec failed (exit {code}); {log_file}:\n{tail}")


__all__ = ["BUILDERS", "RECIPE_FILE", "EngineRecipe", "build_missing", "recipe_for", "recipes", "trtexec_command",
           "write_recipe"]
