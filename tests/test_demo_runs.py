"""The --demo runs as a user types them (shortened with --epochs / --iters-per-epoch)."""
import json
import subprocess
import sys

import pytest
from conftest import ROOT

SHORT = ["--epochs", "1", "--iters-per-epoch", "2", "--workers", "0"]


def run(*cmd):
    proc = subprocess.run([sys.executable, *map(str, cmd)], cwd=ROOT, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


@pytest.mark.parametrize("script,extra", [
    ("train_adv.py", ["--disc", "dsc"]),
    ("train_adv.py", ["--disc", "fcd"]),
    ("train_fda.py", ["--beta", "0.01"]),
])
def test_demo_runs_end_to_end(script, extra, tmp_path):
    out = tmp_path / "run"
    printed = run(script, "--demo", *extra, *SHORT, "--out", out)
    assert "val mIoU" in printed
    start = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert start["args"]["demo"] and start["args"]["pretrained"] == "none"
    assert tuple(start["args"]["target_size"]) == (128, 256)
    printed = run("evaluate.py", out / "best.pth", "--workers", "0")
    assert "input 128x256 (HxW), logits upsampled to labels 256x512" in printed
