"""--group-by-seed: checkpoints of runs that differ only in --seed, folded into one row of
mean and sample standard deviation, as papers report several seeds (evaluate.py)."""
import math
import os
from collections import Counter
from pathlib import Path

import numpy as np

from core.checkpoint import load_checkpoint
from core.cli import SESSION_FLAGS
from core.errors import ConfigError
from core.labels import CLASS_NAMES, NUM_CLASSES
from core.logs import json_text

# Stored arguments that do not change what a run computes, besides its seed: --group-by-seed
# folds checkpoints (of the same file name: best.pth, last.pth) that differ only in these.
NOT_RUN_DEFINING = {"seed", *SESSION_FLAGS}
GROUP_KEYS = ("checkpoints", "seeds", "n", "miou_std", "pixel_acc_std", "iou_std")


def seed_group(path, stored):
    """What runs of one --group-by-seed row share: the checkpoint's file name and every stored
    argument that defines the run."""
    defining = {k: v for k, v in stored.items() if k not in NOT_RUN_DEFINING}
    return Path(path).name, json_text(defining, sort_keys=True)


def check_same_end(paths):
    """--group-by-seed: the runs of a row must have run equally long (a run stopped early would
    pull the mean down). A run's end is the iteration of the last.pth in its checkpoint's folder
    (best.pth may come from any epoch), else of the checkpoint itself."""
    groups = {}
    for path in paths:
        stored = load_checkpoint(path, mmap=True)["args"]
        last = Path(path).parent / "last.pth"
        end = load_checkpoint(last if last.is_file() else path, mmap=True).get("iteration")
        groups.setdefault(seed_group(path, stored), []).append((path, end))
    for runs in groups.values():
        usual, _ = Counter(end for _, end in runs).most_common(1)[0]
        for path, end in runs:
            if end != usual:
                others = [p for p, e in runs if e == usual]
                raise ConfigError(f"--group-by-seed: {path} comes from a run that ended at "
                                  f"iteration {end}, {others[0]} from one that ended at "
                                  f"{usual}: finish it (--resume) or leave it out")


def seed_groups(rows, stored_args):
    """One row per group of runs that differ only in --seed: the mean and sample standard
    deviation (ddof 1, NaN for n = 1) of mIoU, pixel accuracy and each class's IoU (over the
    runs where that class is scored), as papers report several seeds."""
    members = {}
    for row, stored in zip(rows, stored_args, strict=True):
        key = seed_group(row["checkpoint"], stored)
        members.setdefault(key, []).append((row, stored.get("seed")))
    groups = []
    for group in members.values():
        runs = [row for row, _ in group]
        names = [row["checkpoint"] for row in runs]
        per_class = np.array([row["iou"] for row in runs])     # runs x classes
        iou = [mean_std(per_class[:, c]) for c in range(NUM_CLASSES)]
        (miou, miou_std), (acc, acc_std) = (mean_std([row[k] for row in runs])
                                            for k in ("miou", "pixel_acc"))
        groups.append({**runs[0], "checkpoint": brace_names(names), "checkpoints": names,
                       "seeds": [seed for _, seed in group], "n": len(runs),
                       "miou": miou, "miou_std": miou_std, "pixel_acc": acc,
                       "pixel_acc_std": acc_std, "iou": [m for m, _ in iou],
                       "iou_std": dict(zip(CLASS_NAMES, [s for _, s in iou], strict=True))})
    return groups


def mean_std(values):
    """(mean, sample standard deviation) of the values that are not NaN; NaN where undefined."""
    v = np.array([x for x in values if not math.isnan(x)], dtype=np.float64)
    return (float(v.mean()) if v.size else math.nan,
            float(v.std(ddof=1)) if v.size > 1 else math.nan)


def brace_names(names):
    """runs/adv_s1/best.pth, runs/adv_s2/best.pth -> runs/adv_s{1,2}/best.pth (shell style)."""
    if len(names) == 1:
        return names[0]
    head = os.path.commonprefix(names)
    tail = os.path.commonprefix([n[len(head):][::-1] for n in names])[::-1]
    return head + "{" + ",".join(n[len(head):len(n) - len(tail)] for n in names) + "}" + tail
