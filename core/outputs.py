"""One guard for every path the scripts write: an output must be new, an empty folder, or this
script's own earlier output being continued. Anything else (a user's file or folder, another
run's folder, a place this user cannot write) is refused before anything is written, with a
one-line error that names the path.

`OUTPUTS` lists every output flag of every script and what it names (tests/test_outputs.py
walks the parsers to keep the list complete):

    file    evaluate --json, export and plot_runs --out: never a folder; an existing file is
            replaced only with --overwrite
    folder  evaluate --save-vis, predict and gen_pseudo --out, --prepared: new, empty, or
            holding its owner's marker file (written when the folder is claimed)
    run     a training script's --out: new or empty; a run of the same script that saved no
            checkpoint yet (its log alone) starts again; a run with last.pth continues only
            with --resume (checked as core.runtime.Run opens the folder)

    outputs.check_outputs(parser, args, "evaluate")       # at parse time: a flag error
    folder = outputs.claim_folder(path, "--save-vis", "evaluate")   # before the first write
"""
import fnmatch
import json
import os
from pathlib import Path

from core.errors import ConfigError, RunFolderError
from core.logs import write_json

FILE, FOLDER, RUN = "file", "folder", "run"
TRAINING_SCRIPTS = ("train_source", "train_adv", "train_fda", "train_mpl")
# (script, flag dest) -> (kind, owner): a folder holds its owner's marker file (FOLDERS);
# the prepared copies are one owner's, whichever script makes them.
OUTPUTS = {
    **{(script, "out"): (RUN, None) for script in TRAINING_SCRIPTS},
    **{(script, "prepared"): (FOLDER, "prepared")
       for script in (*TRAINING_SCRIPTS, "core.prepared")},
    ("evaluate", "json"): (FILE, None),
    ("evaluate", "save_vis"): (FOLDER, "evaluate"),
    ("gen_pseudo", "out"): (FOLDER, "gen_pseudo"),
    ("predict", "out"): (FOLDER, "predict"),
    ("export", "out"): (FILE, None),
    ("plot_runs", "out"): (FILE, None),
}
# owner -> (marker file, what its folders hold, who writes them)
FOLDERS = {
    "prepared": ("prepared.json", "prepared copies", "core/prepared/"),
    "evaluate": ("evaluate.json", "evaluation panels", "evaluate.py"),
    "gen_pseudo": ("gen_pseudo.json", "pseudo labels", "gen_pseudo.py"),
    "predict": ("predict.json", "predictions", "predict.py"),
}
# What a run writes in its folder besides checkpoints: a run killed before its first
# checkpoint leaves these alone (TensorBoard event files, a killed save's temp files).
RUN_LOG_FILES = ("metrics.jsonl", ".lock", "events.out.tfevents.*", ".last.pth.*.tmp",
                 ".best.pth.*.tmp")


def flag_name(dest):
    return "--" + dest.replace("_", "-")


def check_outputs(parser, args, script):
    """Parse time: every file and folder output `script` was given, checked; a refusal is the
    parser's one-line error (a training run's folder is checked as it is opened)."""
    for (owner_script, dest), (kind, owner) in OUTPUTS.items():
        value = getattr(args, dest, None)
        if owner_script != script or value is None or kind == RUN:
            continue
        try:
            if kind == FILE:
                check_file(Path(value), flag_name(dest), getattr(args, "overwrite", False))
            else:
                check_folder(Path(value), flag_name(dest), owner)
        except ConfigError as e:
            parser.error(str(e))


def check_writable(folder, flag, path):
    """The nearest existing folder at or above `folder` must let this user create files in it
    (the missing ones below it are made)."""
    folder = Path(folder).absolute()
    while not os.path.lexists(folder):
        folder = folder.parent
    if not folder.is_dir():
        raise ConfigError(f"{flag} {path}: {folder} is a file, not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ConfigError(f"{flag} {path}: cannot write in {folder} (permission denied)")


def check_file(path, flag, overwrite=False):
    """A file to write: never a folder, an existing file only with --overwrite."""
    if path.is_dir():
        raise ConfigError(f"{flag} {path} is a folder: expected the path of a file to write")
    if path.exists() and not overwrite:
        raise ConfigError(f"{flag} {path} exists: pass --overwrite to replace it, or choose "
                          f"another path")
    check_writable(path.parent, flag, path)


def check_folder(path, flag, owner):
    """A folder to write into: new, empty, or holding `owner`'s marker (its earlier output)."""
    marker, what, writer = FOLDERS[owner]
    if os.path.lexists(path) and not path.is_dir():
        raise ConfigError(f"{flag} {path} is a file: expected a folder for the {what}")
    others = [p.name for p in _entries(path)
              if p.name != marker and not p.name.startswith(f".{marker}.tmp")]
    if others and not (path / marker).is_file():
        raise ConfigError(f"{flag} {path} holds other files and no {marker} ({writer} did not "
                          f"write {others[0]}): it is not a folder of {what}; choose a new or "
                          f"empty folder")
    check_writable(path, flag, path)


def claim_folder(path, flag, owner, content=None):
    """check_folder, then make the folder and mark it as `owner`'s (content: the marker's)."""
    path = Path(path)
    check_folder(path, flag, owner)
    marker, what, writer = FOLDERS[owner]
    path.mkdir(parents=True, exist_ok=True)
    if not (path / marker).is_file():
        write_json(path / marker, content or {
            "written_by": writer, "note": f"a folder of {what}: {writer} may write here "
                                          f"again; it writes into no other folder"})
    return path


def check_run_folder(out, script, resume):
    """A training run's --out, as the run opens it: new, empty, its own run being resumed, or
    a run of `script` that saved no checkpoint yet (started again)."""
    if os.path.lexists(out) and not out.is_dir():
        raise RunFolderError(f"--out {out} is a file: expected a run folder")
    check_writable(out, "--out", out)
    if resume:      # the checkpoint's own folder (core.cli refuses an --out of another)
        return
    if (out / "last.pth").exists():
        raise RunFolderError(f"{out} already holds a run (last.pth); continue it with --resume "
                             f"{out / 'last.pth'} or choose another --out")
    others = sorted(p.name for p in _entries(out)
                    if not any(fnmatch.fnmatch(p.name, f) for f in RUN_LOG_FILES))
    if others:
        raise RunFolderError(f"--out {out} holds files that are not this run's log "
                             f"({', '.join(others[:3])}{', ...' if len(others) > 3 else ''}): "
                             f"another run's, or yours; choose a new or empty folder")
    logged = _logged_script(out / "metrics.jsonl")
    if logged not in (None, script):
        raise RunFolderError(f"--out {out} holds the log of a {logged}.py run: choose a new "
                             f"or empty folder")


def _entries(folder):
    return list(folder.iterdir()) if folder.is_dir() else []


def _logged_script(log):
    """The script named by a metrics.jsonl's first line; None if there is none to read."""
    try:
        with open(log) as f:
            return json.loads(f.readline()).get("script")
    except (OSError, ValueError, AttributeError):
        return None
