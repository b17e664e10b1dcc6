"""--save-every, --time-limit and --log-every: mid-epoch checkpoints that resume exactly
(core.runtime.Run.log_and_save, the one place that saves)."""
import json

import pytest
import torch
from conftest import tiny_args

import core.runtime
import train_adv
import train_source


def records(out):
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


def same_weights(a, b, parts=("model",)):
    a, b = torch.load(a, weights_only=True), torch.load(b, weights_only=True)
    for part in parts:
        for key in a[part]:
            assert torch.equal(a[part][key], b[part][key]), (part, key)
    return a, b


@pytest.fixture(scope="module")
def straight(tiny_demo, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "straight"
    train_source.main(train_source.parse_args(tiny_args(
        tiny_demo, out, "--epochs", 2, "--aug", "flip,jitter", "--log-every", 2)))
    return out


def test_time_limit_saves_mid_epoch_stops_and_resumes_exactly(straight, tiny_demo, tmp_path):
    out = tmp_path / "limited"
    # a limit already reached: the session saves after its first step and stops cleanly
    train_source.main(train_source.parse_args(tiny_args(
        tiny_demo, out, "--epochs", 2, "--aug", "flip,jitter", "--log-every", 2,
        "--time-limit", 1e-6)))
    state = torch.load(out / "last.pth", weights_only=True)
    assert (state["epoch"], state["iteration"]) == (-1, 1)
    assert state["meter"]["count"] == 1                    # the epoch's running losses
    assert not (out / "best.pth").exists()
    train_source.main(train_source.parse_args(["--resume", str(out / "last.pth")]))
    a, b = same_weights(straight / "last.pth", out / "last.pth")
    assert a["log_record"]["loss"] == b["log_record"]["loss"]     # the epoch mean too

    def epochs(run):      # epoch lines without their wall-clock seconds
        return [{k: v for k, v in r.items() if k != "seconds"}
                for r in records(run) if "event" not in r]
    assert epochs(out) == epochs(straight)


def test_save_every_writes_mid_epoch_checkpoints_that_resume_exactly(tiny_demo, tmp_path,
                                                                     monkeypatch):
    common = tiny_args(tiny_demo, tmp_path / "x", "--epochs", 1, "--iters-per-epoch", 4,
                       "--batch-size", 2, target=True) + ["--disc", "dsc"]
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    train_adv.main(train_adv.parse_args(common + ["--out", str(straight)]))
    saved = []
    real = core.runtime.save_checkpoint

    def dies_at_second_save(state, path):
        saved.append(state["iteration"])
        if len(saved) == 2:
            raise KeyboardInterrupt("killed")     # while writing iteration 4's checkpoint
        return real(state, path)
    monkeypatch.setattr(core.runtime, "save_checkpoint", dies_at_second_save)
    with pytest.raises(KeyboardInterrupt):
        train_adv.main(train_adv.parse_args(common + ["--out", str(killed), "--save-every", "2"]))
    monkeypatch.undo()
    assert saved == [2, 4]
    assert torch.load(killed / "last.pth", weights_only=True)["iteration"] == 2
    train_adv.main(train_adv.parse_args(["--resume", str(killed / "last.pth")]))
    same_weights(straight / "last.pth", killed / "last.pth", ("model", "disc"))


def test_log_every_writes_running_losses(straight):
    train = [r for r in records(straight) if r.get("event") == "train"]
    assert [(r["epoch"], r["iteration"]) for r in train] == [(1, 2), (1, 4), (2, 6), (2, 8)]
    assert all(r["loss"] > 0 and r["lr"] > 0 for r in train[:3])
    epoch_1 = next(r for r in records(straight) if r.get("epoch") == 1 and "event" not in r)
    assert train[1]["loss"] == pytest.approx(epoch_1["loss"])   # mean over the whole epoch
