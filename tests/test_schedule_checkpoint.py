import pytest
import torch

from core.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from core.schedule import poly_scheduler


def test_poly_values_for_every_group():
    w = torch.nn.Parameter(torch.zeros(1))
    v = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([{"params": [w], "lr": 0.01}, {"params": [v], "lr": 0.1}], lr=0.01)
    sched = poly_scheduler(opt, max_iters=100, power=0.9)
    seen = {}
    for i in range(100):
        seen[i] = [g["lr"] for g in opt.param_groups]
        opt.step()
        sched.step()
    assert seen[0] == pytest.approx([0.01, 0.1])
    assert seen[50] == pytest.approx([0.01 * 0.5 ** 0.9, 0.1 * 0.5 ** 0.9])
    assert seen[99] == pytest.approx([0.01 * 0.01 ** 0.9, 0.1 * 0.01 ** 0.9])
    assert [g["lr"] for g in opt.param_groups] == [0.0, 0.0]


def test_poly_resumes_on_the_same_curve():
    def make():
        p = torch.nn.Parameter(torch.zeros(1))
        opt = torch.optim.SGD([p], lr=1.0)
        return opt, poly_scheduler(opt, 10)
    opt, sched = make()
    for _ in range(4):
        opt.step()
        sched.step()
    opt2, sched2 = make()
    opt2.load_state_dict(opt.state_dict())
    sched2.load_state_dict(sched.state_dict())
    assert opt2.param_groups[0]["lr"] == pytest.approx((1 - 4 / 10) ** 0.9)


def test_atomic_save_and_clear_errors(tmp_path):
    path = tmp_path / "run" / "last.pth"
    save_checkpoint({"model": {"w": torch.ones(2)}, "args": {"model": "bisenet"}}, path)
    assert load_checkpoint(path)["model"]["w"].sum() == 2
    assert [p.name for p in path.parent.iterdir()] == ["last.pth"]  # no temp file left
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(path.read_bytes()[:50])
    with pytest.raises(CheckpointError, match="corrupt.pth"):
        load_checkpoint(corrupt)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pth")
    foreign = tmp_path / "weights.pth"
    torch.save({"conv.weight": torch.ones(1)}, foreign)
    with pytest.raises(CheckpointError, match="not a training checkpoint"):
        load_checkpoint(foreign)


def test_failed_save_keeps_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "last.pth"
    save_checkpoint({"model": {}, "args": {}, "epoch": 1}, path)

    def broken_save(obj, f):
        f.write(b"partial")
        raise KeyboardInterrupt  # killed mid-write
    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint({"model": {}, "args": {}, "epoch": 2}, path)
    monkeypatch.undo()
    assert load_checkpoint(path)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pth"]
