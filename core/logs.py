"""What a run tells its user: metrics.jsonl, the per-epoch line, running loss means, timing.

metrics.jsonl holds one JSON object per line: a first line with the arguments, seed, git
commit, torch version and device, then one line per epoch (losses, LR, val mIoU, pixel
accuracy, seconds), and events such as resumes. NaN is written as null (valid JSON).
"""
import json
import math
import time
from pathlib import Path

import torch


def _plain(value):
    """JSON-safe: NaN/inf -> None, tensors and numpy scalars -> float, Paths -> str."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item") and not isinstance(value, str):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class RunLog:
    """metrics.jsonl of a run; a disabled log (ranks other than 0) writes nothing."""

    def __init__(self, path, enabled=True):
        self.path, self.enabled = Path(path), enabled

    def start(self, record):
        """A new run: a fresh file whose first line describes the run."""
        if self.enabled:
            self.path.unlink(missing_ok=True)
            self.write(record)

    def write(self, record):
        if self.enabled:
            with open(self.path, "a") as f:
                f.write(json.dumps(_plain(record), allow_nan=False) + "\n")

    def records(self):
        if not self.path.is_file():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line]

    def ensure_epoch(self, record):
        """Append an epoch's line unless the file has it (a kill came after its checkpoint)."""
        if any(r.get("epoch") == record["epoch"] for r in self.records()):
            return
        self.write(record)


class LossMeter:
    """Running means of the losses of an epoch (kept as tensors: no sync per iteration)."""

    def __init__(self):
        self.sums, self.count = {}, 0

    def add(self, **losses):
        self.count += 1
        for name, value in losses.items():
            self.sums[name] = self.sums.get(name, 0.0) + value.detach().float()

    def mean(self, name):
        return self.sums[name].item() / max(self.count, 1)

    def postfix(self, *names):
        """Running means for the progress bar, e.g. {'seg': '0.412'}."""
        return {name.removeprefix("loss_"): f"{self.mean(name):.3f}" for name in names}

    def means(self, run):
        """All running means, averaged over processes."""
        return {name: run.mean_across_ranks(self.mean(name)) for name in self.sums}

    def state_dict(self):
        return {"sums": {k: torch.as_tensor(v).detach().cpu() for k, v in self.sums.items()},
                "count": self.count}

    @classmethod
    def from_state(cls, state):
        meter = cls()
        meter.sums, meter.count = dict(state["sums"]), state["count"]
        return meter


class Timer:
    """Wall-clock seconds since creation, for the per-epoch log line."""

    def __init__(self):
        self.t0 = time.perf_counter()

    def seconds(self):
        return round(time.perf_counter() - self.t0, 2)


def epoch_record(epoch, iteration, result, timer, **values):
    """The metrics.jsonl line of an epoch (`epoch` 0-based here, 1-based in the file)."""
    return {"epoch": epoch + 1, "iteration": iteration, **values, "val_miou": result["miou"],
            "val_pixel_acc": result["pixel_acc"], "seconds": timer.seconds()}


def print_epoch(record):
    """epoch 3: lr 0.0213, loss 0.412, val mIoU 41.20, pixel acc 85.10 (212 s)"""
    skip = {"epoch", "iteration", "val_miou", "val_pixel_acc", "seconds"}
    shown = ", ".join(f"{k} {v:.4g}" for k, v in record.items()
                      if k not in skip and isinstance(v, float))
    print(f"epoch {record['epoch']}: {shown}, val mIoU {100 * record['val_miou']:.2f}, "
          f"pixel acc {100 * record['val_pixel_acc']:.2f} ({record['seconds']} s)", flush=True)
