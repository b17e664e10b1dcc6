"""Checkpoints and run folders: written atomically, loaded without running code, locked.

One dict holds everything: the networks, their optimisers and schedulers, the grad scaler,
the data-stream positions, the epoch and iteration, the best score, the RNG states, the
script and its arguments (so a checkpoint describes itself and evaluate.py can rebuild the
model from it), and the epoch's log line (so a kill between the save and the log loses
nothing). Only plain types and tensors are stored, so `torch.load(weights_only=True)` reads
it: loading a checkpoint someone shared never executes code.
"""
import errno
import fcntl
import os
import random
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

from core.errors import CheckpointError, RunFolderError

TMP_SUFFIX = ".tmp"
# numpy arrays and scalars of plain dtypes (checkpoints of earlier versions hold numpy's RNG
# state and scores as such): rebuilding them runs no code, so weights_only may allow them.
_np_core = getattr(np, "_core", None) or np.core
NUMPY_GLOBALS = [_np_core.multiarray._reconstruct, _np_core.multiarray.scalar, np.ndarray,
                 np.dtype, *{type(np.dtype(t)) for t in (np.uint32, np.int64, np.float64)}]


# --------------------------------------------------------------------------- files

def save_checkpoint(state, path):
    """Write `state` to `path` through a temp file and a rename: a kill never leaves half a file,
    and a full disk leaves the previous file as it was, with a one-line CheckpointError."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        failure = _os_error(e)
        if failure is None:
            raise
        kept = f"the previous {path.name} is unchanged" if path.exists() else \
            f"no {path.name} was written"
        cure = "; free some space" if failure.errno in NO_SPACE else ""
        free = shutil.disk_usage(path.parent).free
        raise CheckpointError(f"cannot write checkpoint {path}: {failure.strerror or failure} "
                              f"({free:,} bytes free in {path.parent}); {kept}{cure}") from e


# A full disk or quota: the two errors that more free space cures.
NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


def _os_error(error):
    """The OSError behind a failed write, or None. torch.save reports one met while writing
    its zip archive as a RuntimeError ('[enforce fail at inline_container.cc ...]') whose
    context is the OSError."""
    while error is not None:
        if isinstance(error, OSError):
            return error
        error = error.__cause__ or error.__context__
    return None


def remove_orphaned_temp_files(folder, names=("last.pth", "best.pth")):
    """Temp files that a killed save_checkpoint left behind (ours only: `.NAME.*.tmp`)."""
    for name in names:
        for tmp in Path(folder).glob(f".{name}.*{TMP_SUFFIX}"):
            tmp.unlink(missing_ok=True)


def load_checkpoint(path, map_location="cpu", mmap=False):
    """Read a checkpoint of this project, with an error that names the file.

    weights_only=True: tensors and plain containers only, never pickled code.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        with torch.serialization.safe_globals(NUMPY_GLOBALS):
            state = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except Exception as e:  # truncated, not a torch file, holds objects other than tensors...
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise CheckpointError(f"checkpoint {path} cannot be read ({type(e).__name__}: "
                              f"{first}); is it a file written by this project's training "
                              "scripts? (objects other than tensors and plain types are "
                              "refused: loading them could run code)") from e
    if not isinstance(state, dict) or "model" not in state or "args" not in state:
        raise CheckpointError(f"{path} is not a training checkpoint of this project "
                              "(expected a dict with 'model' and 'args')")
    return state


def load_weights(module, state_dict, path, what="model"):
    """load_state_dict with an error that says which checkpoint did not fit which network."""
    try:
        module.load_state_dict(state_dict)
    except RuntimeError as e:
        first = str(e).splitlines()[:4]
        raise CheckpointError(f"the {what} in {path} does not fit the network built from its "
                              f"arguments: " + " ".join(first)) from e


# --------------------------------------------------------------------------- RNG states

def seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_state():
    """Every RNG a training run draws from, as tensors and plain types (weights_only-safe)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"python": random.getstate(),
             "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss),
                       float(gauss)],
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state):
    python = state["python"]
    random.setstate((python[0], tuple(python[1]), python[2]))
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    keys = keys.numpy() if torch.is_tensor(keys) else keys     # (earlier versions: ndarray)
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# --------------------------------------------------------------------------- run folder

def unwrap(module):
    """The network inside a DistributedDataParallel (or torch.compile) wrapper."""
    module = getattr(module, "_orig_mod", module)
    return module.module if hasattr(module, "module") else module


def lock_folder(folder):
    """An exclusive lock on folder/.lock for this process's lifetime (freed by the OS when the
    process dies, even by kill -9). A second run on the same folder is refused."""
    handle = open(Path(folder) / ".lock", "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        owner = handle.read().strip() or "another process"
        handle.close()
        raise RunFolderError(f"{folder} is in use by another run ({owner}); wait for it to "
                             f"finish or choose another --out") from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()}\n")
    handle.flush()
    return handle


MIN_FREE_BYTES = 1 << 30


def check_free_space(folder, need=None):
    """Refuse to start with under 1 GiB free where checkpoints go (found at the first save,
    a full disk would cost a whole epoch)."""
    need = MIN_FREE_BYTES if need is None else need
    free = shutil.disk_usage(folder).free
    if free < need:
        raise RunFolderError(f"only {free / 2**20:.0f} MiB free in {folder}: checkpoints need "
                             f"about 1 GiB; free some space or choose another --out")
