"""Accuracy per format on a labelled folder: the same images through eager, ONNX, OpenVINO, TensorRT and a server.

``labelled_folder(DIR, class_names)`` reads three layouts:

- class sub-folders named like the model's classes (``digits/3/x.png``) or by class index (``7/``);
- the ImageNet validation layout: WordNet synset folders (``n01440764/``) mapped to a 1k (or 21 841-class) head
  through the synset lists shipped with the package (``labels.synsets_for``);
- a flat folder plus a ground-truth file, one ``FILE LABEL`` or ``FILE,LABEL`` per line, the label a class
  name, a synset or a class index (Kaggle's ``LOC_val_solution.csv`` reads as is).

``evaluate(data, candidates)`` runs every candidate on the same images, one pass each and batch by batch (memory
stays flat for 50 000 images but for the reference's logits, kept for the comparisons: on disk beyond 1 GiB), each
through its model's own ``Preprocess`` (the one image path); unreadable images are skipped and counted. A row has
top-1 / top-5 (per class in the JSON), and against the reference row (the fp32 eager model when there is one) its
accuracy delta, its top-1 agreement and its largest logit difference.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from .contract import BACKEND_PRECISIONS
from .errors import DatasetError, ImageDecodeError, SwinV2ServeError
from .labels import labels_for, synsets_for
from .preprocess import Preprocess, image_files
from .runtime import Runtime, load
from .runtime.openvino_backend import is_quantized, require_openvino
from .verification import Comparison, compare

SYNSET = re.compile(r"n\d{8}")
DEFAULT_BATCH = 32
TOP_K = 5


# -- labelled folders ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LabelledFolder:
    """Image files and the model class index of each, as one layout of a folder tells them."""

    root: Path
    layout: str  # class-names | imagenet-synsets | class-indices | ground-truth
    files: tuple[Path, ...]
    targets: tuple[int, ...]
    class_names: tuple[str, ...]  # the model's, index order
    unmapped: tuple[str, ...] = ()  # folders / ground-truth lines that name no class of the model (not evaluated)

    def __post_init__(self) -> None:
        if not self.files:
            raise DatasetError(f"{self.root}: no labelled images to evaluate ({self.layout} layout)")

    def subset(self, limit: int | None, seed: int = 0) -> LabelledFolder:
        """A seeded random ``limit`` of the images (in file order), e.g. for a quick look at a big set."""
        if limit is None or limit >= len(self.files):
            return self
        keep = np.sort(np.random.default_rng(seed).choice(len(self.files), size=limit, replace=False))
        return replace(self, files=tuple(self.files[i] for i in keep), targets=tuple(self.targets[i] for i in keep))


def class_tables(class_names: Sequence[str]) -> list[tuple[str, dict[str, int]]]:
    """(layout, name -> class index) for each way a folder or label can name a class, in order of preference."""
    by_name: dict[str, int] = {}
    for index, name in enumerate(class_names):
        by_name.setdefault(name, index)  # duplicate names (ImageNet-22k homonyms): the first
    synsets = synsets_for(len(class_names)) or ()
    return [("class-names", by_name), ("imagenet-synsets", {s: i for i, s in enumerate(synsets)}),
            ("class-indices", {str(i): i for i in range(len(class_names))})]


def folder_classes(names: Sequence[str], class_names: Sequence[str]) -> tuple[str, dict[str, int]]:
    """The layout that maps the most folder names to classes, and its mapping (folders it cannot map left out)."""
    layout, table = max(class_tables(class_names), key=lambda entry: sum(n in entry[1] for n in names))
    return layout, {n: table[n] for n in names if n in table}


def _no_classes(root: Path, names: Sequence[str], class_names: Sequence[str]) -> DatasetError:
    shown = ", ".join(list(names)[:4]) + (" ..." if len(names) > 4 else "")
    return DatasetError(f"{root}: none of its folders ({shown}) names a class of the model (classes like "
                        f"{', '.join(class_names[:3])}; or a WordNet synset of an ImageNet head, or a class index)")


def labelled_folder(root: str | Path, class_names: Sequence[str], *, ground_truth: str | Path | None = None
                    ) -> LabelledFolder:
    """Image files under ``root`` with their class indices (see the module doc for the layouts)."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root} is not a directory")
    class_names = tuple(class_names)
    if ground_truth is not None:
        return _from_ground_truth(root, Path(ground_truth), class_names)
    folders = {d.name: image_files(d) for d in sorted(root.iterdir()) if d.is_dir()}
    folders = {name: files for name, files in folders.items() if files}
    if not folders:
        raise DatasetError(f"{root} has no class sub-folders with images: use DIR/<class>/*.jpg, ImageNet's "
                           "DIR/n01440764/*.JPEG, or a flat folder with --ground-truth FILE")
    layout, mapping = folder_classes(list(folders), class_names)
    if not mapping:
        raise _no_classes(root, list(folders), class_names)
    files = [(f, mapping[name]) for name, paths in folders.items() if name in mapping for f in paths]
    unmapped = tuple(f"{name}/ ({len(paths)} images)" for name, paths in folders.items() if name not in mapping)
    return LabelledFolder(root, layout, tuple(f for f, _ in files), tuple(t for _, t in files), class_names,
                          unmapped)


def _label_index(label: str, tables: list[tuple[str, dict[str, int]]]) -> int | None:
    return next((table[label] for _, table in tables if label in table), None)


def _from_ground_truth(root: Path, truth: Path, class_names: tuple[str, ...]) -> LabelledFolder:
    if not truth.is_file():
        raise DatasetError(f"ground truth {truth}: no such file")
    tables = class_tables(class_names)
    present = image_files(root, recursive=False)
    by_name = {p.name: p for p in present} | {p.stem: p for p in present}
    files: list[tuple[Path, int]] = []
    unmapped: list[str] = []
    for number, line in enumerate(truth.read_text(encoding="utf-8").splitlines(), 1):
        fields = [f.strip() for f in (line.split(",", 1) if "," in line else line.split(None, 1))]
        if not line.strip() or line.lstrip().startswith("#") or len(fields) < 2 or not fields[1]:
            continue
        index = _label_index(fields[1].split()[0], tables)
        if index is None:
            if number > 1:  # the first line may be a header (ImageId,PredictionString)
                unmapped.append(f"{truth.name}:{number}: {fields[1].split()[0]!r} is no class of the model")
            continue
        path = by_name.get(fields[0]) or by_name.get(Path(fields[0]).name)
        if path is None:
            unmapped.append(f"{truth.name}:{number}: {fields[0]} not found in {root}")
            continue
        files.append((path, index))
    return LabelledFolder(root, "ground-truth", tuple(f for f, _ in files), tuple(t for _, t in files), class_names,
                          tuple(unmapped))


def folder_targets(root: str | Path, files: Sequence[Path], class_names: Sequence[str]) -> np.ndarray | None:
    """The class index of each file from its class folder under ``root`` (-1 where the folder names no class),
    or None when no folder names a class (an unlabelled calibration folder)."""
    root = Path(root)
    names = [p.relative_to(root).parts[0] if len(p.relative_to(root).parts) > 1 else "" for p in map(Path, files)]
    _, mapping = folder_classes(sorted(set(names) - {""}), class_names)
    if not mapping:
        return None
    return np.array([mapping.get(name, -1) for name in names], dtype=np.int64)


def read_images(files: Sequence[Path], preprocess: Preprocess) -> tuple[np.ndarray, list[Path], list[str]]:
    """Files -> float32 [B, 3, H, W] of those that decode, those files, and "name: reason" for the others."""
    arrays, kept, unreadable = [], [], []
    for path in files:
        try:
            arrays.append(preprocess(path))
            kept.append(Path(path))
        except ImageDecodeError as exc:
            unreadable.append(f"{Path(path).name}: {exc}")
    stacked = np.stack(arrays) if arrays else np.zeros((0, 3, *preprocess.img_size), dtype=np.float32)
    return stacked, kept, unreadable


# -- what is evaluated -----------------------------------------------------------------------------------------
@dataclass
class Candidate:
    """One row: a model in some format and precision, as a function from preprocessed images to logits."""

    name: str  # "onnxruntime fp32" ...
    backend: str
    precision: str
    source: str  # file, checkpoint or URL
    predict: Callable[[np.ndarray], np.ndarray]  # float32 [B, 3, H, W] -> logits [B, C]
    preprocess: Preprocess
    num_classes: int
    labels: tuple[str, ...] = ()  # class names in index order (what folder names are matched against)
    note: str = ""
    close: Callable[[], None] = field(default=lambda: None)


def runtime_candidate(runtime: Runtime, source: str, *, name: str | None = None, backend: str | None = None,
                      note: str = "") -> Candidate:
    """Any ``Runtime`` as a row (its ``logits`` splits batches to the engine's max batch)."""
    backend = backend or runtime.backend
    return Candidate(name=name or f"{backend} {runtime.precision}", backend=backend, precision=runtime.precision,
                     source=source, predict=runtime.logits, preprocess=Preprocess.from_metadata(runtime.metadata),
                     num_classes=runtime.num_classes, labels=tuple(labels_for(runtime.metadata)), note=note,
                     close=runtime.close)


def eager_candidates(model: Any, source: str, precisions: Sequence[str] = ("fp32",)) -> list[Candidate]:
    """The train-time model itself (no deploy form) under torch, fp32 first (the reference), then the others torch
    runs (autocast fp16/bf16)."""
    wanted = ["fp32", *[p for p in precisions if p != "fp32" and p in BACKEND_PRECISIONS["torch"]]]
    rows = []
    for precision in dict.fromkeys(wanted):
        runtime = load(model, "torch", precision=precision, deploy=False)
        rows.append(runtime_candidate(runtime, source, name=f"eager {precision}", backend="eager"))
    return rows


def file_candidates(path: str | Path, backend: str, precisions: Sequence[str] = ("fp32",), *,
                    threads: int | None = None) -> list[Candidate]:
    """Rows for one exported file: ONNX Runtime runs it as written (fp32, or fp16 for an fp16 export); OpenVINO an
    fp32 model at each requested fp32/bf16, an int8 IR as int8; TensorRT a plan at its build precision. OpenVINO's
    load-time fidelity gate is off here: this measures, ``quantize``/``serve`` gate."""
    options: dict[str, Any] = {"threads": threads} if threads and backend in ("onnxruntime", "openvino") else {}
    if backend == "openvino":
        options["fidelity"] = "off"
        if _is_int8_ir(path):
            return [runtime_candidate(load(path, backend, **options), str(path), name="openvino int8")]
        wanted = [p for p in precisions if p in ("fp32", "bf16")] or ["fp32"]
        return [_openvino_row(path, precision, options) for precision in dict.fromkeys(wanted)]
    runtime = load(path, backend, **options)
    precision = "fp16" if runtime.metadata.fp16 and backend == "onnxruntime" else runtime.precision
    return [runtime_candidate(runtime, str(path), name=f"{backend} {precision}")]


def _is_int8_ir(path: str | Path) -> bool:
    return Path(path).suffix == ".xml" and is_quantized(require_openvino().Core().read_model(str(path)))


def _openvino_row(path: str | Path, precision: str, options: dict[str, Any]) -> Candidate:
    runtime = load(path, "openvino", precision=precision, **options)
    note = "" if runtime.precision == precision else f"{precision} requested; this CPU ran {runtime.precision}"
    return runtime_candidate(runtime, str(path), name=f"openvino {runtime.precision}", note=note)


# -- tallies ---------------------------------------------------------------------------------------------------
def merge_comparisons(parts: Sequence[Comparison]) -> Comparison:
    """One ``Comparison`` over several batches (maxima of maxima, agreement weighted by samples)."""
    samples = sum(c.samples for c in parts)
    if not samples:
        return compare(np.zeros((0, 1)), np.zeros((0, 1)))
    return Comparison(samples=samples, max_abs_diff=max(c.max_abs_diff for c in parts),
                      max_rel_error=max(c.max_rel_error for c in parts),
                      top1_agreement=sum(c.top1_agreement * c.samples for c in parts) / samples,
                      nonfinite=sum(c.nonfinite for c in parts),
                      reference_scale=max(c.reference_scale for c in parts))


@dataclass
class _Tally:
    num_classes: int
    top1: int = 0
    top5: int = 0
    seconds: float = 0.0
    comparisons: list[Comparison] = field(default_factory=list)
    per_class: np.ndarray = field(init=False)  # [C, 2]: images, top-1 correct

    def __post_init__(self) -> None:
        self.per_class = np.zeros((self.num_classes, 2), dtype=np.int64)

    def add(self, logits: np.ndarray, targets: np.ndarray) -> None:
        k = min(TOP_K, logits.shape[1])
        top = np.argsort(-logits, axis=1, kind="stable")[:, :k]
        hit1 = top[:, 0] == targets
        self.top1 += int(hit1.sum())
        self.top5 += int((top == targets[:, None]).any(axis=1).sum())
        np.add.at(self.per_class, (targets, 0), 1)
        np.add.at(self.per_class, (targets, 1), hit1.astype(np.int64))


@dataclass(frozen=True)
class Row:
    """One format's result on the evaluated images."""

    name: str
    backend: str
    precision: str
    source: str
    images: int
    top1: float
    top5: float
    delta_top1: float  # against the reference row
    delta_top5: float
    agreement: Comparison  # logits against the reference row's on the same images
    seconds: float  # inference only (client round trips included for a server)
    per_class: dict[str, dict[str, float]]
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["agreement"] = self.agreement.to_dict()
        out["images_per_s"] = round(self.images / self.seconds, 1) if self.seconds else None
        return out


@dataclass(frozen=True)
class EvaluationReport:
    data: dict[str, Any]  # root, layout, images, evaluated, skipped, unmapped
    reference: str
    rows: list[Row]

    def to_dict(self) -> dict[str, Any]:
        return {"data": self.data, "reference": self.reference, "rows": [r.to_dict() for r in self.rows]}

    def markdown(self) -> str:
        return markdown_table(self)


def _row(candidate: Candidate, tally: _Tally, images: int, reference: _Tally, names: Sequence[str]) -> Row:
    top1, top5 = tally.top1 / images, tally.top5 / images
    per_class = {names[i]: {"images": int(n), "top1": round(float(c / n), 6)}
                 for i, (n, c) in enumerate(tally.per_class) if n}
    return Row(name=candidate.name, backend=candidate.backend, precision=candidate.precision, source=candidate.source,
               images=images, top1=top1, top5=top5, delta_top1=top1 - reference.top1 / images,
               delta_top5=top5 - reference.top5 / images, agreement=merge_comparisons(tally.comparisons),
               seconds=tally.seconds, per_class=per_class, note=candidate.note)


def _relative(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


class _ReferenceLogits:
    """The reference row's logits of every evaluated image, for the other rows to compare with (on disk when big)."""

    IN_MEMORY = 1 << 30

    def __init__(self, images: int, classes: int) -> None:
        self._tmp: Any = None
        if images * classes * 4 <= self.IN_MEMORY:
            self.values = np.empty((images, classes), dtype=np.float32)
        else:
            import tempfile

            self._tmp = tempfile.TemporaryDirectory(prefix="swinv2-evaluate-")
            self.values = np.lib.format.open_memmap(Path(self._tmp.name) / "reference.npy", mode="w+",
                                                    dtype=np.float32, shape=(images, classes))

    def close(self) -> None:
        self.values = np.empty((0, 0), dtype=np.float32)
        if self._tmp is not None:
            self._tmp.cleanup()


def _pass(candidate: Candidate, data: LabelledFolder, indices: Sequence[int], batch_size: int, progress: bool,
          skipped: dict[int, str] | None) -> Any:
    """Batches of (positions among the evaluated images, preprocessed inputs, targets) of one candidate's pass;
    the first pass finds the unreadable files (``skipped``), later ones read only the others."""
    done = 0
    with tqdm(total=len(indices), unit="img", desc=candidate.name, disable=not progress) as bar:
        for start in range(0, len(indices), max(1, batch_size)):
            arrays, targets = [], []
            for i in indices[start:start + batch_size]:
                try:
                    arrays.append(candidate.preprocess(data.files[i]))
                except ImageDecodeError as exc:
                    if skipped is None:
                        raise
                    reason = str(exc).splitlines()[0].removeprefix(f"{data.files[i]}: ")
                    skipped[i] = f"{_relative(data.files[i], data.root)}: {reason}"
                    continue
                targets.append(data.targets[i])
            bar.update(min(batch_size, len(indices) - start))
            if arrays:
                yield slice(done, done + len(arrays)), np.stack(arrays), np.asarray(targets, dtype=np.int64)
                done += len(arrays)


def evaluate(data: LabelledFolder, candidates: Sequence[Candidate], *, reference: int = 0,
             batch_size: int = DEFAULT_BATCH, progress: bool = True) -> EvaluationReport:
    """Top-1 / top-5 of every candidate on ``data``, against ``candidates[reference]``: one full pass per
    candidate, the reference first (so each row's images/s is its own, undisturbed by the others' threads)."""
    if not candidates:
        raise SwinV2ServeError("nothing to evaluate: give a checkpoint/model, --onnx, --ir, --plan or --url")
    widths = {c.num_classes for c in candidates} | {len(data.class_names)}
    if len(widths) != 1:
        raise SwinV2ServeError("the models to compare have different class counts: "
                               + ", ".join(f"{c.name} {c.num_classes}" for c in candidates))
    classes = len(data.class_names)
    tallies = [_Tally(classes) for _ in candidates]
    skipped: dict[int, str] = {}  # file index -> why it was not read
    reference_logits = _ReferenceLogits(len(data.files), classes)
    try:
        for position in [reference, *[i for i in range(len(candidates)) if i != reference]]:
            first = position == reference
            indices = [i for i in range(len(data.files)) if i not in skipped]
            for rows, x, targets in _pass(candidates[position], data, indices, batch_size, progress,
                                          skipped if first else None):
                logits = _predict(candidates[position], x, tallies[position])
                tallies[position].add(logits, targets)
                if first:
                    reference_logits.values[rows] = logits
                tallies[position].comparisons.append(compare(reference_logits.values[rows], logits))
    finally:
        reference_logits.close()
    evaluated = len(data.files) - len(skipped)
    if not evaluated:
        raise DatasetError(f"{data.root}: none of the {len(data.files)} images could be read")
    rows_out = [_row(c, t, evaluated, tallies[reference], data.class_names) for c, t in zip(candidates, tallies)]
    summary = {"root": str(data.root), "layout": data.layout, "classes": classes, "images": len(data.files),
               "evaluated": evaluated, "skipped": len(skipped), "skipped_files": list(skipped.values()),
               "unmapped": list(data.unmapped)}
    return EvaluationReport(data=summary, reference=candidates[reference].name, rows=rows_out)


def _predict(candidate: Candidate, x: np.ndarray, tally: _Tally) -> np.ndarray:
    began = time.perf_counter()
    logits = np.asarray(candidate.predict(x), dtype=np.float32)
    tally.seconds += time.perf_counter() - began
    if logits.shape != (len(x), candidate.num_classes):
        raise SwinV2ServeError(f"{candidate.name} returned logits of shape {list(logits.shape)} for {len(x)} images")
    return logits


# -- reports ---------------------------------------------------------------------------------------------------
def _pct(value: float) -> str:
    return f"{100 * value:.2f}"


def _delta(value: float) -> str:
    return "0" if value == 0 else f"{100 * value:+.2f}"


def markdown_table(report: EvaluationReport) -> str:
    """The rows as a markdown table, with a line about the data and one per note."""
    d = report.data
    head = (f"{d['evaluated']} images of {d['classes']} classes ({d['layout']} layout) under `{d['root']}`; "
            f"{d['skipped']} unreadable skipped" + (f"; {len(d['unmapped'])} folders/entries name no class"
                                                    if d["unmapped"] else "") + ".")
    lines = [head, "", f"| format | top-1 % | top-5 % | Δ top-1 | Δ top-5 | top-1 agreement with {report.reference} "
             "| max abs Δ logit | images/s |", "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for row in report.rows:
        speed = f"{row.images / row.seconds:.0f}" if row.seconds else "-"
        lines.append(f"| {row.name} | {_pct(row.top1)} | {_pct(row.top5)} | {_delta(row.delta_top1)} | "
                     f"{_delta(row.delta_top5)} | {_pct(row.agreement.top1_agreement)} % | "
                     f"{row.agreement.max_abs_diff:.2g} | {speed} |")
    lines += [f"\n{row.name}: {row.note}" for row in report.rows if row.note]
    return "\n".join(lines) + "\n"


__all__ = ["Candidate", "EvaluationReport", "LabelledFolder", "Row", "class_tables", "eager_candidates", "evaluate",
           "file_candidates", "folder_classes", "folder_targets", "labelled_folder", "markdown_table",
           "merge_comparisons", "read_images", "runtime_candidate"]
