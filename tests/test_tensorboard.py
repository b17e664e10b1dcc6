"""RunLog's TensorBoard mirror: the scalars equal metrics.jsonl, a resume leaves one point per
step, and a missing package is a ConfigError."""
import importlib.util
import json
import math
import sys

import pytest

from core.errors import ConfigError
from core.logs import RunLog

needs_tensorboard = pytest.mark.skipif(importlib.util.find_spec("tensorboard") is None,
                                       reason="tensorboard is not installed")


def read_events(folder):
    """{tag: [(step, value), ...]} as TensorBoard reads the folder (all points kept)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def expected_from_jsonl(path):
    """The curves metrics.jsonl describes, read independently of core.logs: per record kind
    the last line of each iteration wins (what a resumed session wrote again), train lines
    as "train/<key>", epoch lines as "<key>", null values left out."""
    last = {}
    for line in path.read_text().splitlines():
        record = json.loads(line)
        if "iteration" in record:
            last[(record.get("event"), record["iteration"])] = record
    curves = {}
    for (event, step), record in sorted(last.items(), key=lambda kv: kv[0][1]):
        for key, value in record.items():
            if key in ("epoch", "iteration", "event") or value is None:
                continue
            tag = f"train/{key}" if event == "train" else key
            curves.setdefault(tag, []).append((step, value))
    return curves


def assert_same_curves(events, expected):
    assert sorted(events) == sorted(expected)
    for tag, points in expected.items():
        assert [s for s, _ in events[tag]] == [s for s, _ in points], tag
        assert [v for _, v in events[tag]] == pytest.approx([v for _, v in points], rel=1e-6), tag


def train_line(it, loss):
    return {"event": "train", "epoch": (it - 1) // 8 + 1, "iteration": it, "lr": 0.01 - it * 1e-4,
            "loss_seg": loss}


def epoch_line(epoch, it, miou):
    return {"epoch": epoch, "iteration": it, "lr": 0.01 - it * 1e-4, "loss_seg": 0.5 / epoch,
            "val_miou": miou, "val_pixel_acc": 0.5 + miou / 2, "seconds": 12.25 * epoch}


@needs_tensorboard
def test_scalars_equal_metrics_jsonl(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    path = run / "metrics.jsonl"
    # an earlier attempt in the same folder: start() must drop its events with its jsonl
    stale = RunLog(path, tensorboard=True)
    stale.start({"event": "start"})
    stale.write(epoch_line(1, 4, 0.99))
    stale.close()

    log = RunLog(path, tensorboard=True)
    log.start({"event": "start", "args": {"lr": 0.01}})
    for it in range(2, 9, 2):
        log.write(train_line(it, float("nan") if it == 4 else 1.0 / it))
    log.write(epoch_line(1, 8, 0.25))
    log.write({"event": "discriminator", "params": 1000})  # no iteration: not mirrored
    for it in range(10, 17, 2):
        log.write(train_line(it, 1.0 / it))
    log.write(epoch_line(2, 16, 0.375))
    # no close(): the epoch line flushed the event file
    events = read_events(run)
    epochs = [r for r in log.records() if "epoch" in r and "event" not in r]
    assert events["val_miou"] == [(r["iteration"], pytest.approx(r["val_miou"])) for r in epochs]
    assert [s for s, _ in events["val_miou"]] == [8, 16]

    log.close()
    events = read_events(run)
    assert_same_curves(events, expected_from_jsonl(path))
    assert [s for s, _ in events["train/loss_seg"]] == [2, 6, 8, 10, 12, 14, 16]  # NaN left out
    assert "epoch" not in events and "train/epoch" not in events
    assert len(list(run.glob("events.out.tfevents.*"))) == 1


RESUMES = {
    # checkpoint at iteration 8 (end of epoch 1); the killed session had logged 10 too
    "from-checkpoint": dict(purge_step=9, epoch_line_written=True, again=[10, 12, 14, 16]),
    # the brief's simulation: the new session logs from 8 on, its epoch line included
    "re-log-from-8": dict(purge_step=8, epoch_line_written=True, again=[8, 10, 12]),
    # killed between last.pth and the epoch line: ensure_epoch restores it at 8
    "lost-epoch-line": dict(purge_step=9, epoch_line_written=False, again=[10, 12]),
    # no open_tensorboard call: the first line with an iteration (10) opens with that purge
    "implicit-open": dict(purge_step=None, epoch_line_written=True, again=[10, 12]),
}


@needs_tensorboard
@pytest.mark.parametrize("case", list(RESUMES))
def test_resume_leaves_one_point_per_step(tmp_path, case):
    purge_step, epoch_line_written, again = RESUMES[case].values()
    path = tmp_path / "metrics.jsonl"
    killed = RunLog(path, tensorboard=True)
    killed.start({"event": "start"})
    for it in range(2, 11, 2):
        killed.write(train_line(it, 100.0 + it))
        if it == 8 and epoch_line_written:
            killed.write(epoch_line(1, 8, 0.125))
    killed.close()  # the worst case: everything the killed session logged reached the disk

    resumed = RunLog(path, tensorboard=True)
    resumed.write({"event": "resume", "from": "last.pth"})
    if purge_step is None:
        purge_step = again[0]
    else:
        resumed.open_tensorboard(purge_step=purge_step)
    resumed.ensure_epoch(epoch_line(1, 8, 0.125))
    for it in again:
        resumed.write(train_line(it, 200.0 + it))
        if it == 8:
            resumed.write(epoch_line(1, 8, 0.25))
        if it == 16:
            resumed.write(epoch_line(2, 16, 0.5))
    resumed.close()

    events = read_events(tmp_path)
    for tag, points in events.items():
        steps = [s for s, _ in points]
        assert len(steps) == len(set(steps)), f"{tag}: {steps}"
    loss = dict(events["train/loss_seg"])
    assert sorted(loss) == sorted(set(range(2, 11, 2)) | set(again))
    for step, value in loss.items():
        assert value == (200.0 + step if step >= purge_step else 100.0 + step)
    assert_same_curves(events, expected_from_jsonl(path))
    assert 8 in dict(events["val_miou"])


@needs_tensorboard
def test_without_purge_the_killed_sessions_points_stay(tmp_path):
    """The control for the test above: a second session opened with no purge_step repeats
    steps, which is what purge_step prevents."""
    path = tmp_path / "metrics.jsonl"
    first = RunLog(path, tensorboard=True)
    first.write(train_line(10, 1.0))
    first.close()
    second = RunLog(path, tensorboard=True)
    second.open_tensorboard(purge_step=None)
    second.write(train_line(10, 2.0))
    second.close()
    assert [s for s, _ in read_events(tmp_path)["train/loss_seg"]] == [10, 10]


@needs_tensorboard
def test_disabled_log_and_flag_off_write_no_event_file(tmp_path):
    for kwargs in ({"enabled": False, "tensorboard": True}, {"tensorboard": False}):
        log = RunLog(tmp_path / "metrics.jsonl", **kwargs)
        log.open_tensorboard(purge_step=3)
        log.write(epoch_line(1, 8, 0.5))
        log.close()
    assert not list(tmp_path.glob("events.out.tfevents.*"))


def test_missing_tensorboard_is_a_config_error(tmp_path, monkeypatch):
    # None in sys.modules makes `from torch.utils.tensorboard import ...` raise ImportError
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    for enabled in (True, False):  # every rank fails alike, none waits at a barrier
        with pytest.raises(ConfigError) as info:
            RunLog(tmp_path / "metrics.jsonl", enabled=enabled, tensorboard=True)
        assert str(info.value) == ("--tensorboard needs the tensorboard package: pip install "
                                   "tensorboard (or -r requirements-extras.txt)")
    log = RunLog(tmp_path / "metrics.jsonl")  # without the flag nothing is imported
    log.write(epoch_line(1, 8, 0.5))
    assert math.isclose(log.records()[0]["val_miou"], 0.5)


def test_ensure_epoch_looks_at_epoch_lines_only(tmp_path):
    """A --log-every line of epoch 1 is no epoch line: a lost epoch line is still restored."""
    log = RunLog(tmp_path / "metrics.jsonl")
    log.write(train_line(8, 0.5))
    log.ensure_epoch(epoch_line(1, 8, 0.25))
    log.ensure_epoch(epoch_line(1, 8, 0.25))
    assert [r.get("event") for r in log.records()] == ["train", None]


@needs_tensorboard
def test_a_training_run_with_tensorboard_matches_its_metrics_and_resumes_without_duplicates(
        tiny_demo, tmp_path):
    """train_source.py --tensorboard, killed after epoch 1 (--stop-after) and resumed: the
    event file's val_miou equals metrics.jsonl's, one point per epoch."""
    from conftest import tiny_args

    import train_source
    out = tmp_path / "run"
    argv = tiny_args(tiny_demo, out, "--epochs", 2, "--tensorboard", "--log-every", 2)
    train_source.main(train_source.parse_args(argv + ["--stop-after", "1"]))
    train_source.main(train_source.parse_args(["--resume", str(out / "last.pth")]))
    epochs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    epochs = [r for r in epochs if "val_miou" in r]
    assert [r["epoch"] for r in epochs] == [1, 2]
    events = read_events(out)
    assert events["val_miou"] == [(r["iteration"], pytest.approx(r["val_miou"], abs=1e-6))
                                  for r in epochs]
    steps = [step for step, _ in events["train/loss"]]
    assert steps == sorted(set(steps)) and len(steps) > 1
