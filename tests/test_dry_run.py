"""--dry-run on every training script: everything built and every file checked, the plan
printed, exit 0, and the run folder never created or written (a resumed run's neither)."""
import os

import pytest
from conftest import tiny_args
from test_structure import teacher_checkpoint

import train_adv
import train_fda
import train_mpl
import train_source
from core.cli import entry

SCRIPTS = {"train_source": train_source, "train_adv": train_adv, "train_fda": train_fda,
           "train_mpl": train_mpl}
BATCH, EPOCHS, POLY = 4, 3, 30


def script_args(name, demo, out, tmp_path, *extra):
    target = name != "train_source"
    if name == "train_mpl":
        extra = ("--teacher", teacher_checkpoint(tmp_path / "teacher.pth"), *extra)
    return tiny_args(demo, out, "--batch-size", BATCH, *extra, target=target)


def dry_run(module, argv, capsys):
    """Run the script as its command line does; returns what it printed (it must exit 0)."""
    with pytest.raises(SystemExit) as info:
        entry(module.main, lambda: module.parse_args(argv + ["--dry-run"]))
    assert info.value.code in (0, None), info.value.code
    return capsys.readouterr().out


def counts(demo):
    """Images of each set, counted from the files: the list, the split folders."""
    source = len((demo.source_train_list).read_text().split())
    target = len(list((demo.target / "leftImg8bit" / "train").rglob("*_leftImg8bit.png")))
    val = len(list((demo.target / "leftImg8bit" / "val").rglob("*_leftImg8bit.png")))
    return source, target, val


@pytest.mark.parametrize("name", SCRIPTS)
def test_dry_run_prints_the_data_and_the_plan_and_writes_nothing(name, tiny_demo, tmp_path,
                                                                 capsys):
    out = tmp_path / "run"
    text = dry_run(SCRIPTS[name], script_args(name, tiny_demo, out, tmp_path, "--epochs",
                                              EPOCHS, "--poly-iters", POLY), capsys)
    source, target, val = counts(tiny_demo)
    assert f"source: {source} images; {source} label files sampled" in text
    assert f"val: {val} images; {val} label files sampled" in text
    assert (f"target: {target} images (labels not read)" in text) == (name != "train_source")
    per_epoch = source // BATCH                  # the last partial batch is dropped
    assert (f"plan: {per_epoch} iterations per epoch x {EPOCHS} epochs = "
            f"{per_epoch * EPOCHS} iterations; poly LR horizon {POLY}") in text
    assert "no unknown id" in text and not out.exists()


@pytest.mark.parametrize("name", SCRIPTS)
def test_dry_run_makes_no_prepared_copy(name, tiny_demo, tmp_path, capsys):
    """--prepared DIR: the real run makes the copies there; a dry run neither makes nor
    claims the folder, and says so once per set the run would prepare."""
    prepared = tmp_path / "prepared"
    text = dry_run(SCRIPTS[name], script_args(name, tiny_demo, tmp_path / "run", tmp_path,
                                              "--prepared", prepared), capsys)
    sets = 1 if name == "train_source" else 2            # the source; the target's images
    assert text.count(f"--dry-run: --prepared {prepared} not touched") == sets
    assert not prepared.exists() and "plan:" in text


def test_dry_run_of_a_resumed_run_leaves_its_folder_as_it_was(tiny_demo, tmp_path, capsys):
    out = tmp_path / "run"
    argv = tiny_args(tiny_demo, out, "--batch-size", BATCH, "--epochs", 2, "--stop-after", 1)
    train_source.main(train_source.parse_args(argv))
    before = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in out.iterdir()}
    text = dry_run(train_source, ["--resume", str(out / "last.pth")], capsys)
    per_epoch = counts(tiny_demo)[0] // BATCH
    assert f"this session: iterations {per_epoch} to {2 * per_epoch}" in text
    assert {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in out.iterdir()} == before


def test_dry_run_refuses_what_the_run_would_refuse(tiny_demo, tmp_path, capsys):
    """An --out that holds another run fails the dry run too, and still nothing is written."""
    out = tmp_path / "busy"
    out.mkdir()
    (out / "last.pth").write_bytes(b"another run")
    with pytest.raises(SystemExit) as info:
        entry(train_source.main,
              lambda: train_source.parse_args(tiny_args(tiny_demo, out, "--dry-run")))
    assert "already holds a run" in str(info.value.code)
    assert os.listdir(out) == ["last.pth"]
