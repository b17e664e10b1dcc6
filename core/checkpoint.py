"""Checkpoints that are written atomically and restore a run exactly.

One dict holds everything: the networks, their optimisers and schedulers, the grad scaler,
the iteration and epoch, the best score, the RNG states and the run's arguments (so that a
checkpoint describes itself and evaluate.py can rebuild the model from it).
"""
import os
import random
import tempfile
from pathlib import Path

import numpy as np
import torch


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read or does not fit the run."""


def save_checkpoint(state, path):
    """Write `state` to `path` through a temp file and a rename: a kill never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_checkpoint(path, map_location="cpu"):
    """Read a checkpoint written by save_checkpoint, with an error that names the file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as e:  # truncated, not a torch file, ...
        raise CheckpointError(f"checkpoint {path} cannot be read ({type(e).__name__}: {e}); "
                              "is it a file written by this project's training scripts?") from e
    if not isinstance(state, dict) or "model" not in state or "args" not in state:
        raise CheckpointError(f"{path} is not a training checkpoint of this project "
                              "(expected a dict with 'model' and 'args')")
    return state


def rng_state():
    """Every RNG a training run draws from (python, numpy, torch CPU and CUDA)."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(),
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state):
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def load_weights(module, state_dict, path, what="model"):
    """load_state_dict with an error that says which checkpoint did not fit which network."""
    try:
        module.load_state_dict(state_dict)
    except RuntimeError as e:
        first = str(e).splitlines()[:4]
        raise CheckpointError(f"the {what} in {path} does not fit the network built from its "
                              f"arguments: " + " ".join(first)) from e
