import sys
from pathlib import Path

# The scripts and `core` live at the repository root; make them importable from tests.
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny_demo(tmp_path_factory):
    """A small demo pair in the real layouts (GTA5-style source, Cityscapes-style target)."""
    from demo import DemoPaths, generate_demo
    root = tmp_path_factory.mktemp("demo") / "demo"
    generate_demo(root, seed=0, n_source=20, n_target_train=8, n_target_val=4)
    return DemoPaths.of(root)


def tiny_args(demo, out, *extra, target=False):
    """Command-line arguments for a fast CPU run of a training script on the tiny demo."""
    args = ["--source-root", str(demo.source), "--source-split", str(demo.source_train_list),
            "--val-root", str(demo.target), "--source-size", "64", "128",
            "--val-size", "64", "128", "--pretrained", "none", "--workers", "0",
            "--batch-size", "4", "--out", str(out)]
    if target:
        args += ["--target-root", str(demo.target), "--target-size", "64", "128"]
    return args + [str(e) for e in extra]
