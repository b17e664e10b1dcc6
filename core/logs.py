"""What a run tells its user: metrics.jsonl, the per-epoch line, running loss means, timing.

metrics.jsonl holds one JSON object per line: a first line with the arguments, seed, git
commit, torch version and device, then one line per epoch (losses, LR, val mIoU, pixel
accuracy, seconds), and events such as resumes. Every JSON the project writes goes through
`json_text` (strict JSON: NaN and infinities as null); a last line cut short by a kill is
dropped on resume (`RunLog.repair`) and skipped when read (`read_jsonl`).
Optionally (`RunLog(..., tensorboard=True)`) the lines that carry an iteration are mirrored
to a TensorBoard event file in the run folder.
"""
import json
import math
import os
import subprocess
import time
from pathlib import Path

import torch

from core.errors import ConfigError, DataError

TENSORBOARD_MISSING = ("--tensorboard needs the tensorboard package: pip install tensorboard "
                       "(or -r requirements-extras.txt)")
EVENT_FILE_GLOB = "events.out.tfevents.*"
NOT_SCALARS = ("epoch", "iteration", "event")


def _summary_writer_class():
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # torch.utils.tensorboard imports the tensorboard package
        raise ConfigError(TENSORBOARD_MISSING) from None
    return SummaryWriter


def tensorboard_scalars(record):
    """The TensorBoard scalars of a metrics.jsonl record: {tag: value}.

    Tags are the record's keys: as they are for an epoch line (no "event": "val_miou",
    "val_pixel_acc", "loss_seg", "lr", "seconds"), prefixed by the event otherwise
    ("train/loss_seg", "train/lr" for the --log-every lines). "epoch", "iteration" and "event"
    are not scalars; neither is anything that is not a number (None, i.e. NaN, included).
    """
    prefix = f"{record['event']}/" if record.get("event") else ""
    return {f"{prefix}{key}": value for key, value in _plain(record).items()
            if key not in NOT_SCALARS and isinstance(value, int | float)
            and not isinstance(value, bool)}


def _plain(value):
    """JSON-safe: NaN/inf -> None, tensors and numpy values -> numbers (lists), Paths -> str."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "tolist") and not isinstance(value, str):   # tensors, numpy
        return _plain(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def json_text(obj, indent=None, sort_keys=False):
    """`obj` as strict JSON (RFC 8259; NaN and infinities become null): the one way the project
    writes JSON, so that every JSON parser reads what it writes."""
    return json.dumps(_plain(obj), indent=indent, sort_keys=sort_keys, allow_nan=False)


def write_json(path, obj):
    """`obj` as strict JSON in `path` (its folder made if missing), through a temp file and a
    rename: a kill never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json_text(obj, indent=2) + "\n")
    os.replace(tmp, path)


def read_jsonl(path):
    """The records of a JSON-lines file such as metrics.jsonl. A last line without its newline
    that is not JSON was cut by a kill mid-write: it is left out. Any other line that is not
    JSON is a DataError naming the file and the line."""
    lines = Path(path).read_text(errors="replace").split("\n")
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as e:
            if number == len(lines):        # no newline after it: cut short by a kill
                break
            raise DataError(f"{path}, line {number}: not a JSON line ({e.msg})") from None
    return records


def git_commit():
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                             cwd=Path(__file__).resolve().parent, timeout=5)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


class RunLog:
    """metrics.jsonl of a run; a disabled log (ranks other than 0) writes nothing.

    tensorboard=True mirrors every record that has an "iteration" (the --log-every lines, the
    epoch lines) to a TensorBoard event file in the run folder (the folder of `path`): one
    scalar per number, named as `tensorboard_scalars` says (e.g. "val_miou" for the epoch
    lines, "train/loss_seg" for the --log-every lines), at step = the record's iteration.
    The event file is flushed after each epoch line; call `close()` at the end of the run.
    Without the tensorboard package the constructor raises ConfigError, on every rank.

    Sessions: `start()` (a new run) removes the folder's old event files with the old
    metrics.jsonl. A resumed session calls `open_tensorboard(purge_step=k + 1)`, k being the
    iteration of the checkpoint it resumes from, before it writes anything with an iteration
    (`ensure_epoch` included): TensorBoard then discards what the killed session logged at
    steps >= k + 1, which this session logs again, so every curve has one point per step.
    If no session was opened, the first record with an iteration opens one with purge_step =
    that iteration (right for the --log-every lines; an epoch line restored by `ensure_epoch`
    at k would also purge the killed session's --log-every point at k).
    """

    def __init__(self, path, enabled=True, tensorboard=False):
        self.path, self.enabled = Path(path), enabled
        self.tensorboard = tensorboard
        self._summary_writer = _summary_writer_class() if tensorboard else None
        self._writer = None

    def start(self, record):
        """A new run: a fresh file whose first line describes the run."""
        if self.enabled:
            self.path.unlink(missing_ok=True)
            if self.tensorboard:
                self.close()
                for old in self.path.parent.glob(EVENT_FILE_GLOB):
                    old.unlink(missing_ok=True)
            self.write(record)

    def open_tensorboard(self, purge_step=None):
        """Start this session's event file. purge_step: the first iteration this session
        will log (a resumed session: its checkpoint's iteration + 1); TensorBoard discards the
        steps >= purge_step of the earlier files in the folder. No-op without tensorboard, on
        a disabled log, or when this session's file is already open."""
        if self.tensorboard and self.enabled and self._writer is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._writer = self._summary_writer(log_dir=str(self.path.parent),
                                                purge_step=purge_step)

    def write(self, record):
        if self.enabled:
            with open(self.path, "a") as f:
                f.write(json_text(record) + "\n")
            if self.tensorboard and record.get("iteration") is not None:
                self._mirror(record)

    def _mirror(self, record):
        step = int(record["iteration"])
        self.open_tensorboard(purge_step=step)
        for tag, value in tensorboard_scalars(record).items():
            self._writer.add_scalar(tag, value, global_step=step)
        if "epoch" in record and not record.get("event"):
            self._writer.flush()

    def close(self):
        """Flush and close the event file (a later write opens a new one)."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def records(self):
        return read_jsonl(self.path) if self.path.is_file() else []

    def repair(self):
        """A kill mid-write can leave the last line cut short (no newline at its end): drop it,
        or end it where it is whole JSON, so that the next record starts a line of its own."""
        if not self.enabled or not self.path.is_file():
            return
        data = self.path.read_bytes()
        if not data or data.endswith(b"\n"):
            return
        start = data.rfind(b"\n") + 1
        try:
            json.loads(data[start:])
        except ValueError:          # JSONDecodeError, or bytes cut inside a UTF-8 character
            os.truncate(self.path, start)
            print(f"note: dropped the last line of {self.path}, cut short by a kill",
                  flush=True)
        else:
            with open(self.path, "ab") as f:
                f.write(b"\n")

    def ensure_epoch(self, record):
        """Append an epoch's line unless the file has it (a kill came after its checkpoint).
        Only epoch lines count: the --log-every lines ("event": "train") carry an "epoch" too."""
        if any(r.get("epoch") == record["epoch"] and not r.get("event") for r in self.records()):
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


def print_stopped(args, script, time_limit_hit):
    """The line a session stopped by a limit ends with: which limit, and how to continue."""
    if time_limit_hit:
        limit = f"--time-limit {args.time_limit}"
    elif args.stop_after and args.stop_after < args.epochs:
        limit = f"--stop-after {args.stop_after} (of {args.epochs} epochs)"
    else:
        return
    print(f"this session stopped at {limit}; continue the run with: python {script}.py "
          f"--resume {Path(args.out) / 'last.pth'}", flush=True)


def print_epoch(record):
    """epoch 3: lr 0.0213, loss 0.412, val mIoU 41.20, pixel acc 85.10 (212 s)"""
    skip = {"epoch", "iteration", "val_miou", "val_pixel_acc", "seconds"}
    shown = ", ".join(f"{k} {v:.4g}" for k, v in record.items()
                      if k not in skip and isinstance(v, float))
    print(f"epoch {record['epoch']}: {shown}, val mIoU {100 * record['val_miou']:.2f}, "
          f"pixel acc {100 * record['val_pixel_acc']:.2f} ({record['seconds']} s)", flush=True)
