"""Write model_repository/templates/ from code: the configs ``write_repository`` writes today.

The model described: ``swinv2_nano_window4_64`` with a 1000-class head (ImageNet-1k labels), 64 px, exported by
``export_onnx`` (random weights: no config depends on them) and written as ``swinv2`` with ``--max-batch 32``
for GPU instances, i.e.

    swinv2-serve export --model swinv2_nano_window4_64 --num-classes 1000 --output out/
    swinv2-serve repository --onnx out/swinv2_nano_window4_64_64.onnx --name swinv2 --max-batch 32 --output repo/

Only the ``config.pbtxt`` files are kept (weights, labels and the preprocessing model.py are regenerated with
the repository). tests/test_repository.py fails when the committed templates differ from what this writes now;
after a change to the repository writer or the metadata, run

    python model_repository/generate_templates.py
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
if str(REPO) not in sys.path:  # runnable from a checkout without installing
    sys.path.insert(0, str(REPO))

from swinv2_serve.model import create_model  # noqa: E402
from swinv2_serve.onnx_export import export_onnx  # noqa: E402
from swinv2_serve.repository import write_repository  # noqa: E402

MODEL = "swinv2_nano_window4_64"
NUM_CLASSES = 1000
NAME = "swinv2"
MAX_BATCH = 32
DEFAULT_OUTPUT = HERE / "templates"


def generate(output: Path) -> list[Path]:
    """Write ``output/<served model>/config.pbtxt`` for each of the three served models; returns the paths."""
    with tempfile.TemporaryDirectory(prefix="swinv2_templates_") as tmp:
        onnx = export_onnx(create_model(MODEL, num_classes=NUM_CLASSES).eval(), Path(tmp) / f"{MODEL}.onnx",
                           verify=False).path
        repo = write_repository(Path(tmp) / "repo", NAME, onnx=onnx, max_batch=MAX_BATCH, kind="gpu")
        if output.exists():
            shutil.rmtree(output)
        written = []
        for model, config in repo.configs.items():
            target = output / model / "config.pbtxt"
            target.parent.mkdir(parents=True)
            shutil.copyfile(config, target)
            written.append(target)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="replaced as a whole")
    args = parser.parse_args(argv)
    for path in generate(args.output):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
