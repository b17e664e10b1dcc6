"""The --demo runs as a user types them (shortened with --epochs / --iters-per-epoch)."""
import json
import os
import subprocess
import sys

import pytest
from conftest import ROOT

import core.cli
import train_source
from core.cli import MODEL_DEFAULTS
from core.precision import mixed_precision_is_native

SHORT = ["--epochs", "1", "--iters-per-epoch", "2", "--workers", "0"]


@pytest.fixture(scope="module")
def demo_env(tmp_path_factory):
    """The --demo pair generated in a temporary folder, never in the repository's data/."""
    return {**os.environ, "SEGDA_DEMO_ROOT": str(tmp_path_factory.mktemp("demo") / "demo")}


def run(env, *cmd):
    proc = subprocess.run([sys.executable, *map(str, cmd)], cwd=ROOT, capture_output=True,
                          text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


@pytest.mark.parametrize("script,extra", [
    ("train_adv.py", ["--disc", "dsc"]),
    ("train_adv.py", ["--disc", "fcd"]),
    ("train_fda.py", ["--beta", "0.01"]),
])
def test_demo_runs_end_to_end(script, extra, tmp_path, demo_env):
    out = tmp_path / "run"
    printed = run(demo_env, script, "--demo", *extra, *SHORT, "--out", out)
    assert "val mIoU" in printed
    start = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert start["args"]["demo"] and start["args"]["pretrained"] == "none"
    native = mixed_precision_is_native("auto")      # the demo's precision, said and stored
    assert start["args"]["amp"] is native
    assert ("mixed precision (--amp) on this" in printed) is native
    assert tuple(start["args"]["target_size"]) == (128, 256)
    printed = run(demo_env, "evaluate.py", out / "last.pth", "--workers", "0")
    assert "input 128x256 (HxW), logits upsampled to labels 256x512" in printed


def test_explicit_flags_win_over_demo_settings_and_model_defaults(tiny_demo, monkeypatch):
    # --demo points the folders at demo.DEMO_ROOT (generated only when a run starts).
    monkeypatch.setattr(core.cli, "DEMO_ROOT", tiny_demo.root)
    args = train_source.parse_args(["--demo", "--epochs", "3", "--lr", "0.01"])
    assert (args.epochs, args.lr, args.batch_size, args.pretrained) == (3, 0.01, 8, "none")
    assert args.source_size == (144, 256) and args.source_root == str(tiny_demo.source)
    args = train_source.parse_args(["--demo", "--model", "stdc"])
    assert args.epochs == 10 and args.pretrained == "none"
    assert args.lr == MODEL_DEFAULTS["stdc"]["lr"] != MODEL_DEFAULTS["bisenet"]["lr"]
