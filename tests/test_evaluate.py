"""`swinv2-serve evaluate`: labelled-folder layouts, the accuracy arithmetic, an ImageNet-layout folder of real
photos, the label-aware int8 gate, and the digits demo's model in every format on this machine, the embedded
Triton server included, in one table."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import BAD_IMAGES, perturb_
from PIL import Image

from swinv2_serve.cli import main as cli_main
from swinv2_serve.errors import DatasetError
from swinv2_serve.evaluate import (
    Candidate,
    LabelledFolder,
    evaluate,
    folder_targets,
    labelled_folder,
    markdown_table,
)
from swinv2_serve.labels import imagenet1k_labels, imagenet1k_synsets, imagenet22k_synsets, labels_for
from swinv2_serve.preprocess import Preprocess
from swinv2_serve.verification import AccuracyCheck, FidelityError, accuracy_check, enforce

# real photos filed under plausible ImageNet-1k synsets (the ILSVRC validation layout); two bad files are among them
SYNSETS = {"cat.jpg": "n02123045", "coffee.jpg": "n07920052", "rocket.jpg": "n04266014", "hubble.jpg": "n04044716",
           "motorcycle.png": "n03791053", "camera_gray.png": "n04069434", "astronaut.jpg": "n04266014",
           "logo_rgba.png": "n06596364", BAD_IMAGES[0]: "n02123045", BAD_IMAGES[1]: "n07920052"}
TINY = Preprocess(img_size=(8, 8), mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), interpolation="bilinear", crop_pct=1.0)


@pytest.fixture
def imagenet_dir(images_dir: Path, tmp_path: Path) -> Path:
    root = tmp_path / "val"
    for name, synset in SYNSETS.items():
        (root / synset).mkdir(parents=True, exist_ok=True)
        shutil.copy(images_dir / name, root / synset / name)
    (root / "not_a_class").mkdir()
    shutil.copy(images_dir / "cat.jpg", root / "not_a_class" / "cat.jpg")
    return root


def _pngs(root: Path, per_class: dict[str, int]) -> Path:
    for name, count in per_class.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            Image.new("RGB", (8, 8), (20 * i, 40, 60)).save(root / name / f"{i}.png")
    return root


# -- layouts ---------------------------------------------------------------------------------------------------
def test_shipped_synsets_and_22k_names() -> None:
    assert imagenet1k_synsets()[:2] == ("n01440764", "n01443537") and imagenet1k_labels()[0].startswith("tench")
    assert len(imagenet22k_synsets()) == 21841 and len(labels_for(21841)) == 21841
    assert labels_for(21841)[imagenet22k_synsets().index("n01440764")] == imagenet1k_labels()[0]


def test_imagenet_synset_folders_map_to_the_1k_head(imagenet_dir: Path) -> None:
    data = labelled_folder(imagenet_dir, labels_for(1000))
    assert data.layout == "imagenet-synsets" and data.unmapped == ("not_a_class/ (1 images)",)
    by_file = {f.name: data.class_names[t] for f, t in zip(data.files, data.targets)}
    assert by_file["cat.jpg"] == "tabby, tabby cat" and by_file["coffee.jpg"] == "espresso"
    assert len(data.files) == 10  # the bad files are labelled too: evaluate skips and counts them


def test_class_names_indices_and_ground_truth(tmp_path: Path) -> None:
    named = labelled_folder(_pngs(tmp_path / "a", {"cat": 2, "dog": 1, "extra": 1}), ["dog", "cat"])
    assert named.layout == "class-names" and sorted(named.targets) == [0, 1, 1] and len(named.unmapped) == 1
    indexed = labelled_folder(_pngs(tmp_path / "b", {"3": 1, "999": 1}), labels_for(1000))
    assert indexed.layout == "class-indices" and sorted(indexed.targets) == [3, 999]
    flat = tmp_path / "flat"
    flat.mkdir()
    for i in range(3):
        Image.new("RGB", (8, 8)).save(flat / f"ILSVRC2012_val_{i:08d}.JPEG")
    truth = tmp_path / "LOC_val_solution.csv"  # Kaggle's format: a header, stems, synset first in the second field
    truth.write_text("ImageId,PredictionString\nILSVRC2012_val_00000000,n01443537 1 2 3 4\n"
                     "ILSVRC2012_val_00000001.JPEG 7\nILSVRC2012_val_00000002,n99999999 0 0 1 1\nmissing,n01440764\n")
    gt = labelled_folder(flat, labels_for(1000), ground_truth=truth)
    assert gt.layout == "ground-truth" and list(gt.targets) == [1, 7] and len(gt.unmapped) == 2
    with pytest.raises(DatasetError, match=r"none of its folders \(cat, dog, extra\) names a class of the model"):
        labelled_folder(tmp_path / "a", ["zebra"])
    with pytest.raises(DatasetError, match="no class sub-folders with images"):
        labelled_folder(flat, ["zebra"])
    files = sorted((tmp_path / "a").rglob("*.png"))
    assert list(folder_targets(tmp_path / "a", files, ["dog", "cat"])) == [1, 1, 0, -1]
    assert folder_targets(tmp_path / "a", files, ["zebra"]) is None


# -- the arithmetic ----------------------------------------------------------------------------------------------
def _scores(first: int, second: int, classes: int = 6) -> np.ndarray:
    """Logits that rank ``first``, then ``second``, then the rest."""
    rest = [c for c in range(classes) if c not in (first, second)]
    row = np.zeros(classes, dtype=np.float32)
    row[[first, second, *rest]] = np.arange(classes, 0, -1)
    return row


def test_top1_top5_deltas_agreement_and_bad_images(tmp_path: Path, images_dir: Path) -> None:
    root = tmp_path / "d"
    for c in range(6):  # each image's red value is its id: a candidate's answer is a function of its input
        (root / str(c)).mkdir(parents=True)
        for i in range(2):
            Image.new("RGB", (8, 8), (10 * (2 * c + i), 0, 0)).save(root / str(c) / f"{i}.png")
    shutil.copy(images_dir / BAD_IMAGES[0], root / "0" / "bad.jpg")
    data = labelled_folder(root, [str(c) for c in range(6)])

    def candidate(name: str, right: bool) -> Candidate:
        def predict(x: np.ndarray) -> np.ndarray:
            ids = np.rint((x[:, 0, 0, 0] * 0.5 + 0.5) * 255 / 10).astype(int)
            truth = ids // 2
            return np.stack([_scores(t, (t + 1) % 6) if right else _scores((t + 1) % 6, t) for t in truth])
        return Candidate(name=name, backend="test", precision="fp32", source="-", predict=predict, preprocess=TINY,
                         num_classes=6)

    report = evaluate(data, [candidate("right", True), candidate("second best", False)], batch_size=4,
                      progress=False)
    ref, other = report.rows
    assert report.data["skipped"] == 1 and report.data["evaluated"] == 12
    assert report.data["skipped_files"][0].startswith("0/bad.jpg: corrupt or truncated image")
    assert (ref.top1, ref.top5, other.top1, other.top5) == (1.0, 1.0, 0.0, 1.0)
    assert other.delta_top1 == -1.0 and other.agreement.top1_agreement == 0.0 and ref.agreement.max_abs_diff == 0
    assert other.per_class["3"] == {"images": 2, "top1": 0.0} and other.agreement.samples == 12
    table = markdown_table(report)
    assert "| second best | 0.00 | 100.00 | -100.00 | 0 | 0.00 % |" in table and "1 unreadable skipped" in table
    assert json.loads(json.dumps(report.to_dict()))["rows"][1]["per_class"]["0"]["images"] == 2
    with pytest.raises(DatasetError):
        LabelledFolder(root, "class-names", (), (), ("0",))


def test_accuracy_gate() -> None:
    targets = np.array([0, 1, 2, 3])
    ref = np.eye(4, dtype=np.float32)
    worse = ref.copy()
    worse[3] = [0, 0, 1, 0]
    check = accuracy_check("int8", ref, worse, targets, max_drop=0.2)
    assert isinstance(check, AccuracyCheck) and check.drop == 0.25 and not check.passed
    with pytest.raises(FidelityError, match=r"int8: top-1 75.00% vs fp32 100.00% on 4 labelled images \(drop 25.00 "
                                            r"points, limit 20.00\) -> FAILED"):
        enforce(check, "refuse", "m.xml", "serve fp32")
    enforce(check, "warn", "m.xml", "serve fp32")
    assert accuracy_check("int8", ref, worse, targets, max_drop=0.25).passed
    assert accuracy_check("int8", ref, worse, targets).passed  # measured, not gated


def test_int8_gate_needs_labels(tmp_path: Path) -> None:
    from swinv2_serve.openvino_int8 import CalibrationSet, check_targets

    root = _pngs(tmp_path / "c", {"a": 2, "b": 2})
    files = tuple(sorted(root.rglob("*.png")))
    data = CalibrationSet(calibration=np.zeros((0,)), check=np.zeros((0,)), unreadable=(), check_files=files)
    assert list(check_targets(root, data, ["b", "a"], 0.01)) == [1, 1, 0, 0]
    assert check_targets(root, data, ["x", "y"], None) is None
    with pytest.raises(DatasetError, match=r"an accuracy gate needs labelled check images: no folder under .* names "
                                           r"a class of the model \(like x, y\)"):
        check_targets(root, data, ["x", "y"], 0.01)


# -- real models -----------------------------------------------------------------------------------------------
def test_cli_on_an_imagenet_layout_folder(imagenet_dir: Path, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    """Random weights (accuracy means nothing): the synset mapping, bad files counted, ORT and OpenVINO fp32
    equal to eager."""
    pytest.importorskip("openvino")
    from swinv2_serve import create_model
    from swinv2_serve.checkpoint import save_checkpoint
    from swinv2_serve.onnx_export import export_onnx

    model = perturb_(create_model("swinv2_nano_window4_64", num_classes=1000), scale=0.05, seed=1).eval()
    checkpoint = save_checkpoint(model, tmp_path / "nano.pt")
    onnx = export_onnx(model, tmp_path / "nano.onnx").path
    out = tmp_path / "out"
    assert cli_main(["evaluate", "--data", str(imagenet_dir), "--checkpoint", str(checkpoint), "--onnx", str(onnx),
                     "--ir", str(onnx), "--json", str(out / "e.json"), "--markdown", str(out / "e.md"),
                     "--no-progress", "--threads", "2"]) == 0
    printed = capsys.readouterr().out
    result = json.loads((out / "e.json").read_text())
    assert result["data"]["layout"] == "imagenet-synsets" and result["data"]["skipped"] == 2
    assert result["data"]["evaluated"] == 8 and result["data"]["unmapped"] == ["not_a_class/ (1 images)"]
    rows = {r["name"]: r for r in result["rows"]}
    assert list(rows) == ["eager fp32", "onnxruntime fp32", "openvino fp32"]
    assert set(rows["eager fp32"]["per_class"]) == {"tabby, tabby cat", "espresso", "space shuttle",
                                                     "radio telescope, radio reflector", "motor scooter, scooter",
                                                     "reflex camera", "comic book"}
    for name in ("onnxruntime fp32", "openvino fp32"):
        assert rows[name]["agreement"]["top1_agreement"] == 1.0 and rows[name]["agreement"]["max_abs_diff"] < 1e-4
        assert (rows[name]["top1"], rows[name]["top5"]) == (rows["eager fp32"]["top1"], rows["eager fp32"]["top5"])
    assert "| eager fp32 |" in printed and (out / "e.md").read_text().startswith("# swinv2-serve evaluate")


@pytest.fixture(scope="module")
def digits_formats(digits_demo_run: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The digits demo's model: its 360 validation images as class folders; ONNX fp32 / fp16; an int8 IR
    calibrated on training images (labelled: the accuracy gate is on, one point at most)."""
    from swinv2_serve.checkpoint import load_model
    from swinv2_serve.onnx_export import export_onnx
    from swinv2_serve.openvino_int8 import quantize_int8
    from swinv2_serve.train.digits import split_digits

    root = tmp_path_factory.mktemp("digits_eval")
    train, val = split_digits()
    for folder, items in (("val", val), ("calibration", train[:240])):
        for i, (array, label) in enumerate(items):
            (root / folder / str(label)).mkdir(parents=True, exist_ok=True)
            Image.fromarray(array).save(root / folder / str(label) / f"{i}.png")
    model = load_model(digits_demo_run / "checkpoint.pt")
    fp32 = export_onnx(model, root / "digits.onnx").path
    fp16 = export_onnx(model, root / "digits.fp16.onnx", fp16=True).path
    int8 = quantize_int8(fp32, root / "calibration", root / "digits_int8.xml", threads=2, max_accuracy_drop=0.01)
    assert int8.accuracy is not None and int8.accuracy.samples == 48 and int8.accuracy.passed
    print(f"int8 gate: {int8.report.summary()}; {int8.accuracy.summary()}")
    return {"checkpoint": digits_demo_run / "checkpoint.pt", "val": root / "val", "fp32": fp32, "fp16": fp16,
            "int8": int8.xml, "root": root}


@pytest.mark.slow
def test_digits_every_format_and_the_server(digits_formats: dict[str, Path], tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("pytriton")
    from _serving import running_server

    from swinv2_serve.runtime.openvino_backend import cpu_capabilities

    f = digits_formats
    out = f["root"] / "report"
    with running_server(f["fp32"], "digits", max_batch=32, log_dir=tmp_path) as server:
        code = cli_main(["evaluate", "--data", str(f["val"]), "--checkpoint", str(f["checkpoint"]),
                         "--onnx", str(f["fp32"]), str(f["fp16"]), "--ir", str(f["fp32"]), str(f["int8"]),
                         "--precision", "fp32", "bf16", "--url", server.grpc_url, "--protocol", "grpc",
                         "--name", "digits", "--threads", "2", "--no-progress",
                         "--json", str(out / "digits.json"), "--markdown", str(out / "digits.md")])
    assert code == 0
    print(capsys.readouterr().out)
    rows = {r["name"]: r for r in json.loads((out / "digits.json").read_text())["rows"]}
    bf16 = "BF16" in cpu_capabilities()
    expected = ["eager fp32", "eager bf16", "onnxruntime fp32", "onnxruntime fp16",
                "openvino fp32", "openvino bf16" if bf16 else "openvino fp32", "openvino int8", "served digits (grpc)"]
    assert list(rows) == list(dict.fromkeys(expected)) or not bf16
    eager = rows["eager fp32"]
    assert eager["images"] == 360 and eager["top1"] > 0.9  # the model really learned digits
    for name in ("onnxruntime fp32", "served digits (grpc)"):  # "exactly": the same predictions, logits ~1e-6
        row = rows[name]
        assert row["agreement"]["top1_agreement"] == 1.0 and row["agreement"]["max_abs_diff"] < 1e-4, name
        assert (row["top1"], row["top5"], row["per_class"]) == (eager["top1"], eager["top5"], eager["per_class"])
    for name, row in rows.items():
        assert row["agreement"]["nonfinite"] == 0 and abs(row["delta_top1"]) <= 0.02, name
