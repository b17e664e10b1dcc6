import json
import random

import numpy as np
import pytest
import torch

from core import build
from core.checkpoint import (
    load_checkpoint,
    remove_orphaned_temp_files,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from core.errors import CheckpointError
from core.logs import RunLog
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


@pytest.mark.parametrize("optimizer_class, options", [
    (torch.optim.SGD, {"momentum": 0.9, "weight_decay": 1e-2}),
    (torch.optim.Adam, {"betas": (0.9, 0.99), "weight_decay": 1e-2})])
def test_fused_optimisers_update_as_the_per_tensor_ones(optimizer_class, options):
    torch.manual_seed(0)
    fast_net = torch.nn.Linear(4, 3)
    plain_net = torch.nn.Linear(4, 3)
    plain_net.load_state_dict(fast_net.state_dict())
    start = fast_net.weight.detach().clone()
    fast = build.fused(optimizer_class, fast_net.parameters(), lr=0.1, **options)
    plain = optimizer_class(plain_net.parameters(), lr=0.1, foreach=False, **options)
    assert fast.defaults["fused"]            # CPU fused kernels: torch >= 2.4
    for _ in range(3):
        x = torch.randn(5, 4)
        for net, opt in ((fast_net, fast), (plain_net, plain)):
            opt.zero_grad()
            net(x).square().sum().backward()
            opt.step()
    assert not torch.equal(fast_net.weight, start)                    # it did update
    for p, q in zip(fast_net.parameters(), plain_net.parameters(), strict=True):
        torch.testing.assert_close(p, q)


def test_fused_falls_back_to_the_per_tensor_update_where_no_kernel_exists():
    class NoFusedKernel(torch.optim.SGD):     # as torch answers for a device it lacks one for
        def __init__(self, params, fused=None, **options):
            if fused:
                raise RuntimeError("`fused=True` requires all the params to be ...")
            super().__init__(params, **options)

    weight = torch.zeros(3, requires_grad=True)
    opt = build.fused(NoFusedKernel, iter([weight]), lr=0.1, momentum=0.9)
    assert not opt.defaults.get("fused") and opt.param_groups[0]["params"] == [weight]


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


class Payload:
    """An object whose unpickling would run code (here: set a flag)."""
    ran = False

    def __reduce__(self):
        return (setattr, (Payload, "ran", True))


def test_loading_never_runs_code_pickled_in_a_checkpoint(tmp_path):
    path = tmp_path / "shared.pth"
    torch.save({"model": {}, "args": {}, "evil": Payload()}, path)
    with pytest.raises(CheckpointError, match="shared.pth cannot be read"):
        load_checkpoint(path)
    assert Payload.ran is False


def test_rng_state_round_trips_through_a_weights_only_checkpoint(tmp_path):
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    path = tmp_path / "last.pth"
    save_checkpoint({"model": {}, "args": {}, "rng": rng_state()}, path)
    expected = (random.random(), np.random.rand(), np.random.randn(), torch.rand(()).item())
    set_rng_state(load_checkpoint(path)["rng"])
    assert (random.random(), np.random.rand(), np.random.randn(), torch.rand(()).item()) \
        == expected


def test_orphaned_temp_files_of_our_saves_are_removed_and_nothing_else(tmp_path):
    (tmp_path / ".last.pth.abc123.tmp").write_bytes(b"half")
    (tmp_path / ".best.pth.x.tmp").write_bytes(b"half")
    (tmp_path / "notes.tmp").write_text("mine")
    remove_orphaned_temp_files(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.tmp"]


def test_run_log_writes_nan_as_null_and_restores_a_lost_epoch_line(tmp_path):
    log = RunLog(tmp_path / "metrics.jsonl")
    log.start({"event": "start"})
    log.write({"epoch": 1, "val_miou": float("nan"), "loss": torch.tensor(0.5)})
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert json.loads(lines[1]) == {"epoch": 1, "val_miou": None, "loss": 0.5}
    log.ensure_epoch({"epoch": 1, "val_miou": 0.3})           # already there: kept once
    log.ensure_epoch({"epoch": 2, "val_miou": 0.4})           # lost by a kill: written
    assert [r.get("epoch") for r in log.records()] == [None, 1, 2]


def test_checkpoints_of_earlier_versions_with_numpy_state_still_load(tmp_path):
    # earlier versions stored numpy's RNG state (an ndarray) and numpy scalars as they are
    np.random.seed(5)
    old = {"model": {}, "args": {"model": "bisenet"}, "best_miou": np.float64(0.25),
           "rng": {"python": random.getstate(), "numpy": np.random.get_state(),
                   "torch": torch.get_rng_state()}}
    path = tmp_path / "old.pth"
    torch.save(old, path)
    state = load_checkpoint(path)
    assert state["best_miou"] == 0.25
    expected = np.random.rand()
    set_rng_state(state["rng"])
    np.random.seed(0)           # set_rng_state must restore what was saved, not this
    set_rng_state(state["rng"])
    assert np.random.rand() == expected
