"""Deterministic data order: samplers, streams, per-sample augmentation seeds."""
import torch
from torch.utils.data import Dataset

from core.sampling import (
    PassSampler,
    Stream,
    make_loader,
    sample_seed,
)


def indices(sampler):
    return [i for i, _ in sampler]


def test_sampler_order_depends_only_on_seed_stream_and_epoch():
    a, b = PassSampler(20, shuffle=True, seed=3), PassSampler(20, shuffle=True, seed=3)
    a.set_pass(2)
    list(b)           # b has been used before; the order must not depend on it
    b.set_pass(2)
    assert list(a) == list(b)
    b.set_pass(3)
    assert indices(a) != indices(b)
    assert sorted(indices(a)) == list(range(20))
    a.set_pass(2, start=5)
    full = PassSampler(20, shuffle=True, seed=3)
    full.set_pass(2)
    assert list(a) == list(full)[5:]
    other_stream = PassSampler(20, shuffle=True, seed=3, role="target")
    other_stream.set_pass(2)
    assert indices(other_stream) != indices(full)


def test_sample_seeds_differ_by_epoch_and_sample_and_not_by_position():
    s = PassSampler(6, shuffle=True, seed=1)
    s.set_pass(0)
    first = dict(s)
    s.set_pass(1)
    second = dict(s)
    assert len(set(first.values())) == 6                       # one seed per sample
    assert all(first[i] != second[i] for i in range(6))         # a new draw each pass
    assert first == {i: sample_seed(1, "source", 0, i) for i in range(6)}


def test_sampler_partitions_across_ranks():
    train = [PassSampler(10, True, seed=1, rank=r, world_size=3, pad=True) for r in range(3)]
    seen = [indices(s) for s in train]
    assert all(len(s) == 4 for s in seen)                # padded to 12
    assert set(sum(seen, [])) == set(range(10))
    assert all(s.samples_per_pass() == 4 for s in train)
    val = [PassSampler(10, False, rank=r, world_size=3, pad=False) for r in range(3)]
    assert sorted(sum((indices(s) for s in val), [])) == list(range(10))  # no duplicates


class Draws(Dataset):
    """Each item is a random number drawn from the generator the sample's seed gives."""

    def __len__(self):
        return 7

    def __getitem__(self, index):
        i, seed = index
        g = torch.Generator().manual_seed(seed)
        return {"image": torch.tensor(i), "draw": torch.rand((), generator=g)}


def run_stream(n, workers=0, state=None):
    stream = Stream(make_loader(Draws(), 2, seed=0, role="source", train=True,
                                workers=workers))
    if state:
        stream.load_state_dict(state)
    out = [stream.next() for _ in range(n)]
    return [(b["image"].tolist(), b["draw"].tolist()) for b in out], stream.state_dict()


def test_stream_resumes_the_same_batches_and_draws_mid_pass():
    straight, _ = run_stream(10)                  # 3 batches a pass: crosses 3 passes
    head, state = run_stream(4)
    tail, _ = run_stream(6, state=state)
    assert head + tail == straight
    assert straight[0:3] != straight[3:6]          # a new pass is reshuffled and redrawn


def test_draws_do_not_depend_on_the_number_of_workers():
    assert run_stream(7, workers=0)[0] == run_stream(7, workers=2)[0]


def test_source_and_target_streams_are_shuffled_differently():
    def order(stream):
        loader = make_loader(Draws(), 1, seed=0, role=stream, train=True, workers=0)
        return indices(loader.sampler)
    assert order("source") != order("target") == order("target")
    assert len(Stream(make_loader(Draws(), 2, seed=0, role="source", train=True, workers=0))) == 3


class MixedSizes(Dataset):
    """Labelled frames of two sizes, interleaved (GTA5's few odd-sized frames, scaled down)."""
    sizes = [(12, 20), (12, 20), (10, 18), (12, 20), (10, 18), (12, 20), (12, 20)]

    def __len__(self):
        return len(self.sizes)

    def __getitem__(self, index):
        i = index[0] if isinstance(index, tuple) else index
        g = torch.Generator().manual_seed(i)
        h, w = self.sizes[i]
        return {"image": torch.randint(0, 256, (3, h, w), generator=g, dtype=torch.uint8),
                "label": torch.randint(0, 4, (h, w), generator=g, dtype=torch.uint8),
                "name": str(i)}


class MeanColourLogits(torch.nn.Module):
    """A fixed 'segmenter': per-pixel class logits from the colours, at output stride 2."""

    def forward(self, x, upsample=False):
        logits = torch.stack([x[:, 0], x[:, 1], x[:, 2], x.mean(1)], dim=1)
        return torch.nn.functional.avg_pool2d(logits, 2)


def test_evaluation_batches_group_frames_of_one_size_and_score_as_one_by_one():
    from core.evaluation import evaluate
    loader = make_loader(MixedSizes(), 3, 0, "eval", train=False, workers=0)
    groups = list(loader)
    assert [[tuple(b["image"].shape) for b in group] for group in groups] == [
        [(2, 3, 12, 20), (1, 3, 10, 18)], [(2, 3, 12, 20), (1, 3, 10, 18)], [(1, 3, 12, 20)]]
    assert [name for group in groups for b in group for name in b["name"]] == [
        "0", "1", "2", "3", "5", "4", "6"]
    one_by_one = make_loader(MixedSizes(), 1, 0, "eval", train=False, workers=0)
    model, cpu = MeanColourLogits(), torch.device("cpu")
    batched = evaluate([model], [(8, 12)], loader, cpu, 4).mat
    single = evaluate([model], [(8, 12)], one_by_one, cpu, 4).mat
    assert batched.sum() == sum(h * w for h, w in MixedSizes.sizes)
    assert torch.equal(batched, single)
