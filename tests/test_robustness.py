"""Issue 10: runs that survive real datasets, kills, shared folders and untrusted checkpoints.

One test (or more) per numbered case; docs/robustness.md lists them with their outcomes.
"""
import json
import re
import shutil

import numpy as np
import pytest
import torch
from conftest import tiny_args
from PIL import Image

import evaluate
import gen_pseudo
import profile_model
import train_adv
import train_fda
import train_source
from core import checkpoint, runtime
from core.cli import entry, one_line
from core.errors import DataError
from core.runtime import lock_folder


def run_source(demo, out, *extra):
    train_source.main(train_source.parse_args(tiny_args(demo, out, *extra)))


def records(out):
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


def fails(main, parse, argv, match):
    """The script ends with a one-line `error: ...` (SystemExit) that matches."""
    with pytest.raises(SystemExit) as info:
        entry(main, lambda: parse(argv))
    message = str(info.value.code)
    assert message.startswith("error: ") and "\n" not in message, message
    assert re.search(match, message), message


@pytest.fixture(scope="module")
def one_epoch(tiny_demo, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "one"
    run_source(tiny_demo, out, "--epochs", 2, "--stop-after", 1)
    return out


# -- 2. a resume continues the same run, by the same script, in the same folder ----------

def test_resume_into_another_folder_is_refused(one_epoch, tiny_demo, tmp_path, capsys):
    other = tmp_path / "other"
    run_source(tiny_demo, other, "--epochs", 1)
    before = (other / "last.pth").read_bytes()
    with pytest.raises(SystemExit):
        train_source.parse_args(["--resume", str(one_epoch / "last.pth"), "--out", str(other)])
    assert "continues the run in" in capsys.readouterr().err
    assert (other / "last.pth").read_bytes() == before


def test_resume_by_another_script_is_refused(one_epoch, capsys):
    with pytest.raises(SystemExit):
        train_fda.parse_args(["--resume", str(one_epoch / "last.pth")])
    assert "made by train_source.py, not train_fda.py" in capsys.readouterr().err


# -- 6. flags that change the run are refused on resume; session flags apply -------------

@pytest.mark.parametrize("flag", [("--lr", "0.1"), ("--batch-size", "2"), ("--seed", "1"),
                                  ("--epochs", "5")])
def test_resume_refuses_flags_that_change_the_run(one_epoch, capsys, flag):
    with pytest.raises(SystemExit):
        train_source.parse_args(["--resume", str(one_epoch / "last.pth"), *flag])
    err = capsys.readouterr().err
    assert f"changes {flag[0]} {flag[1]}" in err and "the run has" in err


def test_resume_keeps_the_run_and_takes_session_flags(one_epoch):
    args = train_source.parse_args(["--resume", str(one_epoch / "last.pth"), "--workers", "2"])
    assert args.workers == 2 and args.epochs == 2 and args.out == str(one_epoch.resolve())
    assert args.stop_after is None           # a session flag of the earlier session is gone


# -- 3. kills between the writes leave a consistent folder ---------------------------------

def test_kill_between_best_and_last_then_resume_gives_the_straight_run(tiny_demo, tmp_path,
                                                                       monkeypatch):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    run_source(tiny_demo, straight, "--epochs", 2)
    run_source(tiny_demo, killed, "--epochs", 2, "--stop-after", 1)
    real = runtime.save_checkpoint

    def dies_before_last(state, path):
        if path.name == "last.pth":
            raise KeyboardInterrupt("killed")
        real(state, path)
    monkeypatch.setattr(runtime, "save_checkpoint", dies_before_last)
    (killed / ".last.pth.x1.tmp").write_bytes(b"half a file")       # what a kill leaves
    with pytest.raises(KeyboardInterrupt):
        train_source.main(train_source.parse_args(["--resume", str(killed / "last.pth")]))
    monkeypatch.undo()
    train_source.main(train_source.parse_args(["--resume", str(killed / "last.pth")]))
    for name in ("last.pth", "best.pth"):
        a = torch.load(straight / name, weights_only=True)
        b = torch.load(killed / name, weights_only=True)
        assert a["epoch"] == b["epoch"]
        assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"]), name
    assert not list(killed.glob("*.tmp")) and not list(killed.glob(".*.tmp"))
    epochs = [r["epoch"] for r in records(killed) if "epoch" in r]
    assert epochs == [1, 2]                  # each epoch logged once


def test_kill_after_the_checkpoint_before_the_log_line(tiny_demo, tmp_path, monkeypatch):
    out = tmp_path / "run"

    real = runtime.Run._save

    def dies(self, done, record=None, is_best=False):   # right after the epoch's checkpoint
        real(self, done, record, is_best)
        if record is not None:
            raise KeyboardInterrupt("killed")
    monkeypatch.setattr(runtime.Run, "_save", dies)
    with pytest.raises(KeyboardInterrupt):
        run_source(tiny_demo, out, "--epochs", 2)
    monkeypatch.undo()
    assert [r.get("epoch") for r in records(out)] == [None]          # line lost by the kill
    train_source.main(train_source.parse_args(["--resume", str(out / "last.pth")]))
    assert [r["epoch"] for r in records(out) if "epoch" in r] == [1, 2]


# -- 4. one run per folder -----------------------------------------------------------------

def test_second_run_on_a_locked_folder_is_refused(tiny_demo, tmp_path):
    out = tmp_path / "busy"
    out.mkdir()
    holder = lock_folder(out)                # another run holds it
    try:
        fails(train_source.main, train_source.parse_args,
              tiny_args(tiny_demo, out, "--epochs", 1), "in use by another run")
    finally:
        holder.close()
    assert not (out / "last.pth").exists() and not (out / "metrics.jsonl").exists()


# -- 5. checkpoints never run code ---------------------------------------------------------

class Payload:
    ran = False

    def __reduce__(self):
        return (setattr, (Payload, "ran", True))


def test_evaluate_and_gen_pseudo_refuse_pickled_code(one_epoch, tmp_path):
    state = torch.load(one_epoch / "last.pth", weights_only=True)
    state["args"]["evil"] = Payload()
    shared = tmp_path / "shared.pth"
    torch.save(state, shared)
    fails(evaluate.main, evaluate.parse_args, [str(shared)], "shared.pth cannot be read")
    fails(gen_pseudo.main, gen_pseudo.parse_args, [str(shared), "--out", str(tmp_path / "p")],
          "shared.pth cannot be read")
    with pytest.raises(SystemExit):
        train_source.parse_args(["--resume", str(shared)])
    assert Payload.ran is False


# -- 9. same augmentations whatever the workers, resumed mid-pass --------------------------

def test_fda_resume_mid_pass_with_workers_and_aug_is_exact(tiny_demo, tmp_path):
    common = ("--epochs", 2, "--iters-per-epoch", 3, "--aug", "flip,jitter,scale",
              "--batch-size", 2)
    straight, split = tmp_path / "straight", tmp_path / "split"
    train_fda.main(train_fda.parse_args(tiny_args(tiny_demo, straight, *common, target=True)))
    train_fda.main(train_fda.parse_args(tiny_args(
        tiny_demo, split, *common, "--stop-after", 1, target=True)
        + ["--workers", "2"]))
    train_fda.main(train_fda.parse_args(["--resume", str(split / "last.pth"), "--workers", "1"]))
    a = torch.load(straight / "last.pth", weights_only=True)
    b = torch.load(split / "last.pth", weights_only=True)
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert a["source_stream"] == b["source_stream"] and a["target_stream"] == b["target_stream"]


# -- 10. what would fail after an epoch fails at start -------------------------------------

def test_broken_validation_image_and_full_disk_fail_before_training(tiny_demo, tmp_path,
                                                                    monkeypatch):
    val = tmp_path / "val"
    shutil.copytree(tiny_demo.target / "leftImg8bit" / "val", val / "leftImg8bit" / "val")
    shutil.copytree(tiny_demo.target / "gtFine" / "val", val / "gtFine" / "val")
    bad = sorted((val / "leftImg8bit" / "val").rglob("*.png"))[0]
    bad.write_bytes(b"")
    out = tmp_path / "run"
    fails(train_source.main, train_source.parse_args,
          tiny_args(tiny_demo, out, "--epochs", 1) + ["--val-root", str(val)], str(bad.name))
    assert not (out / "last.pth").exists()
    monkeypatch.setattr(checkpoint, "MIN_FREE_BYTES", 1 << 60)
    fails(train_source.main, train_source.parse_args,
          tiny_args(tiny_demo, tmp_path / "full", "--epochs", 1), "MiB free in")


@pytest.mark.parametrize("argv", [("--val-size", "0", "64"), ("--stop-after", "0"),
                                  ("--epochs", "0"), ("--batch-size", "0")])
def test_sizes_and_counts_below_one_are_flag_errors(tiny_demo, tmp_path, capsys, argv):
    with pytest.raises(SystemExit):
        train_source.parse_args(tiny_args(tiny_demo, tmp_path / "x") + list(argv))
    assert f"argument {argv[0]}: expected an integer >= 1" in capsys.readouterr().err


# -- 11. labels with no valid pixel --------------------------------------------------------

def test_all_ignore_labels_are_refused_by_training_and_evaluation(one_epoch, tiny_demo,
                                                                  tmp_path):
    src = tmp_path / "gta5"
    shutil.copytree(tiny_demo.source, src)
    for label in (src / "labels").glob("*.png"):            # unknown id 200 everywhere
        Image.fromarray(np.full((288, 512), 200, np.uint8)).save(label)
    out = tmp_path / "run"
    # at start (issue 24), not after training to a loss of 0: tests/test_label_checks.py
    fails(train_source.main, train_source.parse_args,
          tiny_args(tiny_demo, out, "--epochs", 1, "--workers", 0)
          + ["--source-root", str(src), "--source-split", str(src / "train.txt")],
          r"source labels hold nothing to learn: .* ids found: 200")
    assert not out.exists()
    val = tmp_path / "val"
    shutil.copytree(tiny_demo.target, val)
    for label in (val / "gtFine" / "val").rglob("*_labelIds.png"):
        Image.fromarray(np.zeros((256, 512), np.uint8)).save(label)      # all void
    fails(evaluate.main, evaluate.parse_args,
          [str(one_epoch / "last.pth"), "--data-root", str(val), "--workers", "0"],
          "no labelled pixel")


# -- 12. a diverged run never becomes best.pth ---------------------------------------------

def test_exploding_loss_stops_without_best(tiny_demo, tmp_path, monkeypatch):
    real = train_source.seg_loss_sum
    monkeypatch.setattr(train_source, "seg_loss_sum", lambda *a: real(*a) + 5e4)
    out = tmp_path / "run"
    fails(train_source.main, train_source.parse_args, tiny_args(tiny_demo, out, "--epochs", 1),
          "diverged.*no checkpoint was written yet")
    assert not (out / "best.pth").exists() and not (out / "last.pth").exists()


# -- 13. DeepLabV2 cannot train from random weights ----------------------------------------

def test_deeplab_from_scratch_is_refused_with_the_reason(tiny_demo, tmp_path, capsys):
    """Only with fully frozen statistics: the default trains BatchNorm on batch statistics,
    which random weights can work with."""
    with pytest.raises(SystemExit):
        train_source.parse_args(tiny_args(tiny_demo, tmp_path / "x", "--model", "deeplabv2",
                                          "--deeplab-bn", "frozen"))
    assert "BatchNorm is frozen" in capsys.readouterr().err
    args = train_source.parse_args(tiny_args(tiny_demo, tmp_path / "x", "--model", "deeplabv2"))
    assert args.deeplab_bn == "train"
    with pytest.raises(SystemExit):
        train_source.parse_args(tiny_args(tiny_demo, tmp_path / "x", "--deeplab-bn", "frozen"))
    assert "--deeplab-bn is an option of --model deeplabv2, not bisenet" in \
        capsys.readouterr().err


# -- 14. smaller cases ---------------------------------------------------------------------

def test_loader_worker_errors_are_one_line(tiny_demo, tmp_path):
    src = tmp_path / "gta5"
    shutil.copytree(tiny_demo.source, src)
    names = (src / "train.txt").read_text().split()
    image = src / "images" / f"{names[0]}.png"
    image.write_bytes(image.read_bytes()[:200])       # header fine, pixel data cut off
    fails(train_source.main, train_source.parse_args,
          tiny_args(tiny_demo, tmp_path / "run", "--epochs", 1)
          + ["--source-root", str(src), "--source-split", str(src / "train.txt"),
             "--workers", "1"], f"cannot decode image file .*{names[0]}.png")


def test_one_line_strips_a_worker_traceback():
    error = DataError("Caught DataError in DataLoader worker process 0.\nOriginal Traceback "
                      "(most recent call last):\n  File x\nDataError: cannot decode a.png")
    assert one_line(error) == "cannot decode a.png"


def test_sync_bn_without_a_gpu_is_a_clear_error(tiny_demo, tmp_path):
    fails(train_source.main, train_source.parse_args,
          tiny_args(tiny_demo, tmp_path / "run", "--sync-bn", "--device", "cpu"),
          "--sync-bn .* needs --device cuda")


def test_crop_larger_than_the_image_and_tiny_discriminator_input(tiny_demo, tmp_path, capsys):
    with pytest.raises(SystemExit):
        train_source.parse_args(tiny_args(tiny_demo, tmp_path / "x", "--crop", 100, 100))
    assert "--crop 100 100 is larger than the source working size 64 128" in \
        capsys.readouterr().err
    with pytest.raises(SystemExit):
        train_adv.parse_args(tiny_args(tiny_demo, tmp_path / "x", target=True)
                             + ["--target-size", "16", "32"])
    assert "at least 32 pixels, got 16" in capsys.readouterr().err


@pytest.mark.parametrize("argv,message", [
    (["--cap", "-1"], "argument --cap: expected a number in [0, 1], got -1"),
    (["--bins", "0"], "argument --bins: expected an integer >= 1"),
])
def test_gen_pseudo_flag_errors(one_epoch, tmp_path, capsys, argv, message):
    with pytest.raises(SystemExit):
        gen_pseudo.parse_args([str(one_epoch / "last.pth"), "--out", str(tmp_path / "p"), *argv])
    assert message in capsys.readouterr().err


def test_gen_pseudo_never_writes_into_a_file_or_a_users_folder(one_epoch, tmp_path, capsys):
    a_file = tmp_path / "notes.txt"
    a_file.write_text("mine")
    with pytest.raises(SystemExit):
        gen_pseudo.parse_args([str(one_epoch / "last.pth"), "--out", str(a_file)])
    assert "is a file" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        gen_pseudo.parse_args([str(one_epoch / "last.pth"), "--out", str(tmp_path)])
    assert "did not write" in capsys.readouterr().err
    assert a_file.read_text() == "mine"


@pytest.mark.parametrize("argv,message", [
    (["--num-classes", "0"], "argument --num-classes: expected an integer >= 1"),
    (["--iters", "0"], "argument --iters: expected an integer >= 1"),
    (["--size", "8", "8"], "at least 32 32"),
    (["--device", "tpu"], "argument --device: invalid choice"),
])
def test_profile_model_flag_errors(capsys, argv, message):
    with pytest.raises(SystemExit):
        profile_model.parse_args(argv)
    assert message in capsys.readouterr().err
