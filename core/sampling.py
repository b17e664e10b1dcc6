"""Deterministic data order: which sample a run sees when, and with which random draws.

Everything here depends only on the run's seed, the epoch (pass) and the position in it,
never on what ran before: a run resumed from a checkpoint, or run with another number of
loader workers, sees exactly the same batches with exactly the same augmentations.

    source_stream = Stream(make_loader(source_set, 8, seed, stream=SOURCE_STREAM, train=True))
    src_batch = source_stream.next()        # endless: pass after pass, reshuffled each pass
"""
import torch
from torch.utils.data import DataLoader, Sampler

from core.errors import ConfigError

# Loaders of one run are told apart by a stream number mixed into their seed, so that two
# sets of equal length are not shuffled alike (each source image then meets a different
# target image every pass).
SOURCE_STREAM, TARGET_STREAM, EVAL_STREAM = 0, 1, 2
# Seed mixing: large primes keep (seed, stream, epoch, index) combinations apart.
STREAM_STRIDE = 1_000_003
EPOCH_STRIDE = 100_003


def order_seed(seed, stream, epoch):
    """Seed of the shuffle of one pass (`epoch`) of one loader (`stream`)."""
    return (seed * STREAM_STRIDE + stream) * EPOCH_STRIDE + epoch


def sample_seed(seed, stream, epoch, index):
    """Seed of the augmentation draws of sample `index` in pass `epoch`."""
    return order_seed(seed, stream, epoch) * EPOCH_STRIDE + index


class EpochSampler(Sampler):
    """Yields (sample index, augmentation seed) pairs in an order fixed by (seed, stream, epoch).

    It can start mid-pass (`start`). Under DDP each rank takes every world_size-th sample;
    for training the order is padded to a multiple of world_size (as DistributedSampler does),
    for evaluation it is not (no duplicates). The datasets accept these pairs as indices and
    reseed their augmentation generator from the second element.
    """

    def __init__(self, length, shuffle, seed=0, stream=0, rank=0, world_size=1, pad=True):
        self.length, self.shuffle, self.seed, self.stream = length, shuffle, seed, stream
        self.rank, self.world_size, self.pad = rank, world_size, pad
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch, start=0):
        """Next iteration yields pass `epoch`, skipping its first `start` samples of this rank."""
        self.epoch, self.start = epoch, start

    def _indices(self):
        if self.shuffle:
            g = torch.Generator().manual_seed(order_seed(self.seed, self.stream, self.epoch))
            order = torch.randperm(self.length, generator=g).tolist()
        else:
            order = list(range(self.length))
        if self.pad and self.world_size > 1:
            order += order[: (-len(order)) % self.world_size]
        return order[self.rank::self.world_size]

    def __iter__(self):
        for i in self._indices()[self.start:]:
            yield i, sample_seed(self.seed, self.stream, self.epoch, i)

    def samples_per_pass(self):
        """Samples this rank sees in one whole pass."""
        n = self.length
        if self.pad and self.world_size > 1:
            n += (-n) % self.world_size
        return len(range(self.rank, n, self.world_size))

    def __len__(self):
        return self.samples_per_pass() - self.start


def make_loader(dataset, batch_size, seed, stream, train, workers, rank=0, world_size=1,
                pin_memory=False, persistent_workers=False):
    """DataLoader over an EpochSampler; training shuffles and drops the last partial batch.

    persistent_workers: keep the worker processes from one pass to the next (a Stream starts
    a new pass every epoch or so; restarting workers costs seconds)."""
    sampler = EpochSampler(len(dataset), shuffle=train, seed=seed, stream=stream, rank=rank,
                           world_size=world_size, pad=train)
    if train and len(sampler) < batch_size:
        raise ConfigError(f"--batch-size {batch_size} is larger than the {len(sampler)} "
                          f"training images available to each process")
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers,
                      pin_memory=pin_memory, drop_last=train,
                      persistent_workers=persistent_workers and workers > 0)


class Stream:
    """Endless batches from a training loader, pass after pass.

    Its position (pass, batches taken) is checkpointed, so a resumed run continues the same
    sequence of batches, also from the middle of a pass.
    """

    def __init__(self, loader):
        self.loader, self.epoch, self.taken, self._it = loader, 0, 0, None

    def __len__(self):
        """Batches in one whole pass (the last partial batch is dropped)."""
        return self.loader.sampler.samples_per_pass() // self.loader.batch_size

    def next(self):
        if self._it is None:
            self.loader.sampler.set_epoch(self.epoch, start=self.taken * self.loader.batch_size)
            self._it = iter(self.loader)
        try:
            batch = next(self._it)
        except StopIteration:
            self.epoch, self.taken, self._it = self.epoch + 1, 0, None
            return self.next()
        self.taken += 1
        return batch

    def state_dict(self):
        return {"epoch": self.epoch, "taken": self.taken}

    def load_state_dict(self, state):
        self.epoch, self.taken, self._it = state["epoch"], state["taken"], None
