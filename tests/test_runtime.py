import argparse

import torch
from torch.utils.data import DataLoader, Dataset

from core.runtime import EpochSampler, Run, Stream, set_epoch


def test_sampler_order_depends_only_on_seed_and_epoch():
    a, b = EpochSampler(20, shuffle=True, seed=3), EpochSampler(20, shuffle=True, seed=3)
    a.set_epoch(2)
    list(b)           # b has been used before; the order must not depend on it
    b.set_epoch(2)
    assert list(a) == list(b)
    b.set_epoch(3)
    assert list(a) != list(b)
    assert sorted(a) == list(range(20))
    a.set_epoch(2, start=5)
    full = EpochSampler(20, shuffle=True, seed=3)
    full.set_epoch(2)
    assert list(a) == list(full)[5:]


def test_sampler_partitions_across_ranks():
    train = [EpochSampler(10, True, seed=1, rank=r, world_size=3, pad=True) for r in range(3)]
    seen = [list(s) for s in train]
    assert all(len(s) == 4 for s in seen)                # padded to 12
    assert set(sum(seen, [])) == set(range(10))
    val = [EpochSampler(10, False, rank=r, world_size=3, pad=False) for r in range(3)]
    assert sorted(sum((list(s) for s in val), [])) == list(range(10))  # no duplicates


class Numbers(Dataset):
    def __len__(self):
        return 7

    def __getitem__(self, i):
        return {"image": torch.tensor(i)}


def make_stream():
    loader = DataLoader(Numbers(), batch_size=2, sampler=EpochSampler(7, True, seed=0),
                        drop_last=True, generator=torch.Generator())
    return Stream(loader)


def test_stream_resumes_the_same_sequence():
    straight = make_stream()
    seq = [straight.next()["image"].tolist() for _ in range(10)]   # crosses 3 passes of 3
    first = make_stream()
    head = [first.next()["image"].tolist() for _ in range(4)]
    resumed = make_stream()
    resumed.load_state_dict(first.state_dict())
    tail = [resumed.next()["image"].tolist() for _ in range(6)]
    assert head + tail == seq
    assert seq[0:3] != seq[3:6]  # a new pass is reshuffled


def test_set_epoch_reseeds_worker_seed():
    loader = make_stream().loader
    set_epoch(loader, 4)
    s1 = loader.generator.initial_seed()
    set_epoch(loader, 4)
    assert loader.generator.initial_seed() == s1


def test_source_and_target_streams_are_shuffled_differently(tmp_path):
    run = Run(argparse.Namespace(device="cpu", amp=False, out=str(tmp_path), seed=0,
                                 channels_last=False), "test")
    source = run.loader(Numbers(), 1, train=True, workers=0, stream=0)
    target = run.loader(Numbers(), 1, train=True, workers=0, stream=1)
    again = run.loader(Numbers(), 1, train=True, workers=0, stream=1)
    assert list(source.sampler) != list(target.sampler) == list(again.sampler)
