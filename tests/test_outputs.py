"""Issue 24, item 2: every path a script writes goes through one guard (core.outputs).

Every output flag of every script (core.outputs.OUTPUTS, checked complete against the parsers)
is given a user's file, a folder of user files, another run's folder and a folder this user
cannot write: each ends in a one-line error naming the path, with nothing written."""
import json
import os
from pathlib import Path

import pytest
from conftest import tiny_args
from test_flags import SCRIPTS, script_parser

from core import outputs
from core.checkpoint import save_checkpoint
from core.cli import entry
from core.errors import ConfigError, RunFolderError
from core.labels import NUM_CLASSES
from core.models import build_model, model_options

# The flags whose values a script only reads (datasets, checkpoints, labels, settings).
READ_ONLY = {"source_root", "source_split", "target_root", "target_split", "val_root",
             "val_split", "aug", "pretrained", "resume", "pseudo", "teacher", "student",
             "thresholds", "data_root", "split", "ensemble", "checkpoint", "checkpoints",
             "paths", "runs", "backbone"}
ROOT_IGNORES_PERMISSIONS = os.geteuid() == 0


def valued_string_flags(parser):
    """dests of the arguments that take a string (paths among them): no type, no choices."""
    return {a.dest for a in parser._actions
            if a.nargs != 0 and a.type is None and a.choices is None and a.dest != "help"}


def test_every_written_path_is_in_the_list_and_every_listed_flag_exists():
    for name, module in SCRIPTS.items():
        dests = valued_string_flags(script_parser(module))
        listed = {dest for script, dest in outputs.OUTPUTS if script == name}
        unknown = dests - listed - READ_ONLY
        assert not unknown, f"{name}: {sorted(unknown)} neither in core.outputs.OUTPUTS nor " \
                            f"read-only: list each flag that names something written"
        assert listed <= dests, f"{name}: OUTPUTS names flags it does not have"
    assert {script for script, _ in outputs.OUTPUTS} <= set(SCRIPTS)


def test_every_file_output_can_be_replaced_with_overwrite():
    for (name, _), (kind, _) in outputs.OUTPUTS.items():
        if kind == outputs.FILE:
            assert "overwrite" in {a.dest for a in script_parser(SCRIPTS[name])._actions}, name


# --------------------------------------------------------------------------- the cases

def make_teacher(path):
    """A checkpoint in the format of a trained run (random weights): train_mpl's --teacher."""
    stored = {"model": "bisenet", "backbone": "resnet18", "arm_bn": False}
    model = build_model("bisenet", NUM_CLASSES, "resnet18", **model_options(stored))
    save_checkpoint({"model": model.state_dict(), "args": stored}, path)
    return path


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    return make_teacher(tmp_path_factory.mktemp("teacher") / "last.pth")


def command(script, tmp_path, demo, teacher):
    """A command line of `script` that writes nothing but an output flag appended to it
    (argparse takes the last of a repeated flag). The scripts that check their outputs as they
    parse need no real input; the training scripts run up to opening their folders."""
    fresh = tmp_path / "fresh"
    if script in outputs.TRAINING_SCRIPTS:
        argv = tiny_args(demo, fresh, "--epochs", 1, target=script != "train_source")
        return argv + (["--teacher", str(teacher)] if script == "train_mpl" else [])
    if script == "core.prepared":
        return ["--source-root", str(demo.source), "--prepared", str(fresh)]
    return {"evaluate": ["ckpt.pth"], "gen_pseudo": ["ckpt.pth", "--out", str(fresh)],
            "predict": ["ckpt.pth", "photo.png", "--out", str(fresh)],
            "export": ["ckpt.pth", "--out", str(fresh / "m.onnx")],
            "plot_runs": ["run", "--out", str(fresh / "c.png")], "profile_model": []}[script]


def refusal(module, argv, capsys):
    """The one-line error the script ends with (a flag error, or `error: ...` from main)."""
    with pytest.raises(SystemExit) as info:
        entry(module.main, lambda: module.parse_args(argv))
    code = info.value.code
    message = code if isinstance(code, str) else capsys.readouterr().err.strip().splitlines()[-1]
    assert "\n" not in message and "Traceback" not in message
    return message


def snapshot(path):
    if path.is_file():
        return path.read_bytes()
    return {p.relative_to(path): p.read_bytes() if p.is_file() else None
            for p in sorted(path.rglob("*"))} if path.is_dir() else "absent"


def a_file(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("mine")
    return path


def a_folder_of_user_files(tmp_path):
    path = tmp_path / "mine"
    path.mkdir()
    (path / "notes.txt").write_text("mine")
    (path / "photo.png").write_bytes(b"\x89PNG not really")
    return path


def another_runs_folder(tmp_path):
    """A run of another script that saved best.pth and has no last.pth (the issue's case)."""
    path = tmp_path / "other_run"
    path.mkdir()
    (path / "best.pth").write_bytes(b"its weights")
    (path / "metrics.jsonl").write_text(json.dumps({"event": "start", "script": "train_adv"})
                                        + "\n")
    return path


# what is in the way, and the reason given, by the kind of output
FOLDER_IN_THE_WAY = {outputs.FILE: "is a folder: expected the path of a file",
                outputs.FOLDER: "holds other files and no",
                outputs.RUN: "holds files that are not this run's log"}
CASES = {"a user's file": (a_file, {outputs.FILE: "exists: pass --overwrite",
                                    outputs.FOLDER: "is a file: expected a folder",
                                    outputs.RUN: "is a file: expected a run folder"}),
         "a folder of user files": (a_folder_of_user_files, FOLDER_IN_THE_WAY),
         "another run's folder": (another_runs_folder, FOLDER_IN_THE_WAY)}


@pytest.mark.parametrize("script, dest", list(outputs.OUTPUTS),
                         ids=[f"{s} {outputs.flag_name(d)}" for s, d in outputs.OUTPUTS])
def test_an_output_flag_never_writes_into_what_is_not_its_own(script, dest, tmp_path, capsys,
                                                              tiny_demo, teacher):
    module, flag = SCRIPTS[script], outputs.flag_name(dest)
    kind = outputs.OUTPUTS[script, dest][0]
    for case, (make, reasons) in CASES.items():
        home = tmp_path / case.replace(" ", "_").replace("'", "")
        home.mkdir()
        target = make(home)
        before = snapshot(target)
        message = refusal(module, command(script, tmp_path, tiny_demo, teacher)
                          + [flag, str(target)], capsys)
        assert str(target) in message and reasons[kind] in message, (case, message)
        assert snapshot(target) == before, case
    assert not (tmp_path / "fresh").exists()


@pytest.fixture
def locked(tmp_path, monkeypatch):
    """A read-only folder. Root writes into it regardless (permissions do not bind uid 0, as
    in many containers): there os.access is made to answer for it as for any other user, so
    that every flag's refusal is tested as root too."""
    folder = tmp_path / "locked"
    folder.mkdir()
    folder.chmod(0o555)
    if ROOT_IGNORES_PERMISSIONS:
        real = os.access
        monkeypatch.setattr(os, "access", lambda path, mode, **kw: (
            Path(path).absolute() != folder and real(path, mode, **kw)))
    yield folder
    folder.chmod(0o755)


@pytest.mark.parametrize("script, dest", list(outputs.OUTPUTS),
                         ids=[f"{s} {outputs.flag_name(d)}" for s, d in outputs.OUTPUTS])
def test_an_output_in_a_read_only_folder_is_one_line(script, dest, locked, tmp_path, capsys,
                                                     tiny_demo, teacher):
    target = locked / "out"
    message = refusal(SCRIPTS[script], command(script, tmp_path, tiny_demo, teacher)
                      + [outputs.flag_name(dest), str(target)], capsys)
    assert str(target) in message and f"cannot write in {locked}" in message, message
    assert list(locked.iterdir()) == []


# --------------------------------------------------------------------------- what continues

def test_a_folder_marked_as_its_owners_is_continued_and_no_other_owners(tmp_path):
    for owner in outputs.FOLDERS:
        folder = outputs.claim_folder(tmp_path / owner, "--out", owner)
        (folder / "earlier.png").write_bytes(b"an earlier output")
        outputs.check_folder(folder, "--out", owner)              # its own: accepted
        for other in set(outputs.FOLDERS) - {owner}:
            with pytest.raises(ConfigError, match=f"holds other files and no "
                                                  f"{outputs.FOLDERS[other][0]}"):
                outputs.check_folder(folder, "--out", other)
    empty = tmp_path / "empty"
    empty.mkdir()
    outputs.check_folder(empty, "--save-vis", "evaluate")


def test_a_run_folder_continues_only_its_own_run(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / ".lock").write_text("pid 1\n")
    (out / "metrics.jsonl").write_text(json.dumps({"event": "start", "script": "train_fda"}))
    # killed before its first checkpoint: the same script starts it again, another refuses
    outputs.check_run_folder(out, "train_fda", resume=False)
    with pytest.raises(RunFolderError, match="log of a train_fda.py run"):
        outputs.check_run_folder(out, "train_source", resume=False)
    (out / "last.pth").write_bytes(b"weights")
    with pytest.raises(RunFolderError, match=f"continue it with --resume {out / 'last.pth'}"):
        outputs.check_run_folder(out, "train_fda", resume=False)
    outputs.check_run_folder(out, "train_fda", resume=True)


def test_existing_output_files_are_replaced_with_overwrite(tmp_path, capsys):
    existing = tmp_path / "earlier.out"
    existing.write_text("an earlier result")
    for (script, dest), (kind, _) in outputs.OUTPUTS.items():
        if kind == outputs.FILE:
            argv = command(script, tmp_path, None, None) + [outputs.flag_name(dest),
                                                            str(existing)]
            with pytest.raises(SystemExit):
                SCRIPTS[script].parse_args(argv)
            assert f"{existing} exists: pass --overwrite" in capsys.readouterr().err
            assert getattr(SCRIPTS[script].parse_args(argv + ["--overwrite"]), dest) == \
                str(existing)


def test_a_permission_error_while_writing_is_one_line(tmp_path):
    def main(args):
        raise PermissionError(13, "Permission denied", str(tmp_path / "x.png"))
    with pytest.raises(SystemExit) as info:
        entry(main, lambda: None)
    assert info.value.code == f"error: [Errno 13] Permission denied: '{tmp_path / 'x.png'}'"
