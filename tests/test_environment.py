"""The environment fails loudly, and nothing is lost (issue 24, item 6): a full disk while
saving, a stale WORLD_SIZE without torchrun, a diverging network other than the segmenter."""
import errno
import io
import os
import re
import subprocess
import sys
import time

import pytest
import torch
from conftest import ROOT, tiny_args
from test_robustness import fails
from test_train_mpl import mpl_cli, teacher_ckpt  # noqa: F401 (a fixture)
from test_train_source import free_port

import train_adv
import train_fda
import train_mpl
import train_source
from core import checkpoint
from core.checkpoint import save_checkpoint
from core.errors import CheckpointError

SMALL = ("--source-size", 32, 64, "--val-size", 32, 64)     # BiSeNet's smallest input
SCRIPTS = {"train_source": train_source, "train_adv": train_adv, "train_fda": train_fda,
           "train_mpl": train_mpl}


# --------------------------------------------------------------------------- full disk

class FullDisk(io.RawIOBase):
    """A file on a disk that fills after `room` bytes."""

    def __init__(self, f, room):
        self.f, self.room = f, room

    def writable(self):
        return True

    def write(self, data):
        if len(data) > self.room:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.room -= len(data)
        return self.f.write(data)


def fill_the_disk_after(monkeypatch, room):
    """torch.save writes into a FullDisk: torch itself turns the OSError into its RuntimeError
    ('[enforce fail at inline_container.cc ...]'), as on a real full disk."""
    real = torch.save
    monkeypatch.setattr(checkpoint.torch, "save", lambda obj, f: real(obj, FullDisk(f, room)))


@pytest.mark.parametrize("room", [0, 2000], ids=["at-once", "mid-file"])
def test_full_disk_keeps_the_previous_checkpoint_and_says_so_in_one_line(tmp_path, monkeypatch,
                                                                          room):
    path = tmp_path / "last.pth"
    save_checkpoint({"w": torch.zeros(3)}, path)
    before = path.read_bytes()
    fill_the_disk_after(monkeypatch, room)
    with pytest.raises(CheckpointError) as info:
        save_checkpoint({"w": torch.ones(10_000)}, path)
    message = str(info.value)
    assert "\n" not in message
    assert re.fullmatch(rf"cannot write checkpoint {re.escape(str(path))}: No space left on "
                        rf"device \([\d,]+ bytes free in {re.escape(str(tmp_path))}\); the "
                        r"previous last\.pth is unchanged; free some space", message), message
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pth"]     # no temp file left
    with pytest.raises(CheckpointError, match="no best.pth was written"):
        save_checkpoint({"w": torch.ones(10_000)}, tmp_path / "best.pth")


def test_other_save_failures_keep_their_traceback(tmp_path, monkeypatch):
    def broken(obj, f):
        raise TypeError("cannot pickle this")
    monkeypatch.setattr(checkpoint.torch, "save", broken)
    with pytest.raises(TypeError, match="cannot pickle"):     # a bug: not hidden as disk full
        save_checkpoint({}, tmp_path / "last.pth")
    assert list(tmp_path.iterdir()) == []


def test_full_disk_during_training_ends_in_one_line_and_keeps_last_pth(tiny_demo, tmp_path,
                                                                        monkeypatch):
    out = tmp_path / "run"
    small = (*SMALL, "--epochs", 2, "--iters-per-epoch", 1)
    train_source.main(train_source.parse_args(tiny_args(tiny_demo, out, *small, "--stop-after", 1)))
    before = {name: (out / name).read_bytes() for name in ("last.pth", "best.pth")}
    fill_the_disk_after(monkeypatch, 4096)
    fails(train_source.main, train_source.parse_args,
          tiny_args(tiny_demo, out, *small, "--resume", out / "last.pth"),
          rf"cannot write checkpoint {re.escape(str(out))}/(best|last)\.pth: No space left .* "
          r"bytes free .*unchanged")
    assert {name: (out / name).read_bytes() for name in before} == before
    assert not list(out.glob(".*.tmp"))


# --------------------------------------------------------------------------- stale WORLD_SIZE

STALE = {"WORLD_SIZE": "2", "RANK": "0", "MASTER_ADDR": "127.0.0.1"}


def without_torchrun(env):
    return {k: v for k, v in env.items() if not k.startswith("TORCHELASTIC_")}


def test_stale_world_size_without_torchrun_stops_at_once(tiny_demo, tmp_path):
    """A plain `python train_source.py` with torchrun's variables left over: before, it waited
    forever for a second process; now one line naming them, well within a minute."""
    env = {**without_torchrun(os.environ), **STALE, "MASTER_PORT": str(free_port()),
           "OMP_NUM_THREADS": "1"}
    started = time.monotonic()
    proc = subprocess.run([sys.executable, str(ROOT / "train_source.py"),
                           *tiny_args(tiny_demo, tmp_path / "run", "--epochs", 1)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert time.monotonic() - started < 60
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    (line,) = [x for x in proc.stderr.splitlines() if x.startswith("error: ")]
    for name in ("WORLD_SIZE=2", "RANK=0", "MASTER_ADDR=127.0.0.1", "MASTER_PORT", "torchrun"):
        assert name in line, line


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_training_script_refuses_a_stale_world_size(script, tiny_demo, tmp_path,
                                                          monkeypatch, teacher_ckpt):  # noqa: F811
    for name in [k for k in os.environ if k.startswith("TORCHELASTIC_")]:
        monkeypatch.delenv(name)
    for name, value in {**STALE, "MASTER_PORT": str(free_port())}.items():
        monkeypatch.setenv(name, value)
    module = SCRIPTS[script]
    argv = mpl_cli(tiny_demo, tmp_path / "run", teacher_ckpt) if script == "train_mpl" else \
        tiny_args(tiny_demo, tmp_path / "run", target=script != "train_source")
    fails(module.main, module.parse_args, argv,
          "WORLD_SIZE=2 RANK=0 MASTER_ADDR=127.0.0.1 MASTER_PORT=.* not started by torchrun")
    assert not (tmp_path / "run").exists()          # stopped before touching --out


# --------------------------------------------------------------------------- divergence

def diverge(monkeypatch, script, factor, plus=0.0):
    """Make one network's loss (loss * factor + plus) diverge: the segmenter's (train_source,
    train_fda), the discriminator's (train_adv: its target term, which only D's step
    computes), the teacher's (train_mpl)."""
    def bend(real):
        def bent(*args, **kwargs):
            out = real(*args, **kwargs)
            if isinstance(out, tuple):              # (total, logged terms)
                return out[0] * factor + plus, {k: v * factor + plus for k, v in out[1].items()}
            return out * factor + plus
        return bent
    if script == "train_adv":
        real = train_adv.bce_domain_loss
        monkeypatch.setattr(train_adv, "bce_domain_loss", lambda logits, label: (
            bend(real) if label == train_adv.TARGET_LABEL else real)(logits, label))
    elif script == "train_mpl":
        monkeypatch.setattr(train_mpl, "teacher_losses", bend(train_mpl.teacher_losses))
    else:
        module = SCRIPTS[script]
        monkeypatch.setattr(module, "seg_loss_sum", bend(module.seg_loss_sum))


# script -> (the loss named, its learning-rate flag)
CULPRITS = {"train_source": ("loss", "--lr"), "train_fda": ("loss", "--lr"),
            "train_adv": ("loss_d", "--lr-d"), "train_mpl": ("the teacher's loss", "--lr-teacher")}
MEAN_CULPRITS = {"train_source": ("loss", "--lr"), "train_fda": ("loss_seg", "--lr"),
                 "train_adv": ("loss_d", "--lr-d"), "train_mpl": ("loss_t_", "--lr-teacher")}


def script_args(script, demo, out, teacher, *extra):
    """One iteration an epoch at BiSeNet's smallest input (32 x 64)."""
    if script == "train_mpl":
        return mpl_cli(demo, out, teacher, "--iters-per-epoch", 1, *extra)
    if script == "train_source":
        return tiny_args(demo, out, "--iters-per-epoch", 1, *SMALL, *extra)
    return tiny_args(demo, out, "--iters-per-epoch", 1, *SMALL, *extra, target=True) + [
        "--target-size", "32", "64"]


@pytest.mark.parametrize("script", SCRIPTS)
def test_a_nan_loss_names_the_loss_and_its_own_lr_flag(script, tiny_demo, tmp_path, monkeypatch,
                                                       teacher_ckpt):  # noqa: F811
    diverge(monkeypatch, script, float("nan"))
    name, flag = CULPRITS[script]
    module = SCRIPTS[script]
    fails(module.main, module.parse_args,
          script_args(script, tiny_demo, tmp_path / "run", teacher_ckpt, "--epochs", 1),
          rf"^error: {name} is nan at iteration 0; .*\(try a lower {flag}\)$")


@pytest.mark.parametrize("script", SCRIPTS)
def test_an_exploding_epoch_mean_names_the_loss_and_its_own_lr_flag(script, tiny_demo, tmp_path,
                                                                    monkeypatch,
                                                                    teacher_ckpt):  # noqa: F811
    diverge(monkeypatch, script, 1.0, plus=5e4)     # finite: caught at the epoch end
    name, flag = MEAN_CULPRITS[script]
    module = SCRIPTS[script]
    fails(module.main, module.parse_args,
          script_args(script, tiny_demo, tmp_path / "run", teacher_ckpt, "--epochs", 1),
          rf"^error: mean {name}\w* of epoch 1 is .*diverged.*\(try a lower {flag}\)$")
    assert not (tmp_path / "run" / "last.pth").exists()
