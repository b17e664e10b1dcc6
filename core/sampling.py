"""Deterministic data order: which sample a run sees when, and with which random draws.

Everything here depends only on the run's seed, the loader's role, the pass over the data and
the position in it, never on what ran before: a run resumed from a checkpoint, or run with
another number of loader workers, sees exactly the same batches with the same augmentations.

    source_stream = Stream(make_loader(source_set, 8, seed, "source", train=True))
    src_batch = source_stream.next()        # endless: pass after pass, reshuffled each pass
"""
import os
import time

import torch
from torch.utils.data import DataLoader, Dataset, Sampler, default_collate

from core.errors import ConfigError

# The random draws of one run are told apart by their role, mixed into the seed: two sets of
# equal length are not shuffled alike (each source image then meets a different target image
# every pass), and MPL's strong views draw apart from every loader.
ROLES = ("source", "target", "eval", "feedback", "strong_view")
# Seed mixing: large primes keep (seed, role, pass, index) combinations apart.
ROLE_STRIDE = 1_000_003
PASS_STRIDE = 100_003
# Key of the per-item loading time in timed training batches (see TimedItems).
LOAD_SECONDS = "load_seconds"


def order_seed(seed, role, pass_index):
    """Seed of the shuffle of one pass over the data of the loader with `role`."""
    return (seed * ROLE_STRIDE + ROLES.index(role)) * PASS_STRIDE + pass_index


def sample_seed(seed, role, pass_index, index):
    """Seed of the augmentation draws of sample `index` in pass `pass_index`."""
    return order_seed(seed, role, pass_index) * PASS_STRIDE + index


class PassSampler(Sampler):
    """Yields (sample index, augmentation seed) pairs in an order fixed by (seed, role, pass).

    It can start mid-pass (`start`). Under DDP each rank takes every world_size-th sample;
    for training the order is padded to a multiple of world_size (as DistributedSampler does),
    for evaluation it is not (no duplicates). The datasets accept these pairs as indices and
    reseed their augmentation generator from the second element.
    """

    def __init__(self, length, shuffle, seed=0, role="source", rank=0, world_size=1, pad=True):
        self.length, self.shuffle, self.seed, self.role = length, shuffle, seed, role
        self.rank, self.world_size, self.pad = rank, world_size, pad
        self.pass_index, self.start = 0, 0

    def set_pass(self, pass_index, start=0):
        """Next iteration yields pass `pass_index`, skipping its first `start` samples of this
        rank."""
        self.pass_index, self.start = pass_index, start

    def _indices(self):
        if self.shuffle:
            g = torch.Generator().manual_seed(order_seed(self.seed, self.role, self.pass_index))
            order = torch.randperm(self.length, generator=g).tolist()
        else:
            order = list(range(self.length))
        if self.pad and self.world_size > 1:
            order += order[: (-len(order)) % self.world_size]
        return order[self.rank::self.world_size]

    def __iter__(self):
        for i in self._indices()[self.start:]:
            yield i, sample_seed(self.seed, self.role, self.pass_index, i)

    def samples_per_pass(self):
        """Samples this rank sees in one whole pass."""
        n = self.length
        if self.pad and self.world_size > 1:
            n += (-n) % self.world_size
        return len(range(self.rank, n, self.world_size))

    def __len__(self):
        return self.samples_per_pass() - self.start


def make_loader(dataset, batch_size, seed, role, train, workers, rank=0, world_size=1,
                pin_memory=False):
    """DataLoader over a PassSampler; training shuffles and drops the last partial batch,
    evaluation yields lists of same-size batches (batches_by_size). Worker processes are kept
    from one pass to the next (a Stream starts a new pass every epoch or so, validation runs
    every epoch; restarting workers costs seconds)."""
    sampler = PassSampler(len(dataset), shuffle=train, seed=seed, role=role, rank=rank,
                           world_size=world_size, pad=train)
    if train and len(sampler) < batch_size:
        raise ConfigError(f"--batch-size {batch_size} is larger than the {len(sampler)} "
                          f"training images available to each process")
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers,
                      pin_memory=pin_memory, drop_last=train,
                      collate_fn=None if train else batches_by_size,
                      persistent_workers=workers > 0)


def batches_by_size(items):
    """Evaluation's collate: a list of batches, one per image size among `items` (frames kept
    at their native size may differ, GTA5's do), in the order the sizes first appear."""
    groups = {}
    for item in items:
        groups.setdefault(tuple(item["image"].shape), []).append(item)
    return [default_collate(group) for group in groups.values()]


class Stream:
    """Endless batches from a training loader, pass after pass.

    Its position (pass, batches taken) is checkpointed, so a resumed run continues the same
    sequence of batches, also from the middle of a pass.
    """

    def __init__(self, loader):
        self.loader, self.passes, self.taken, self._it = loader, 0, 0, None

    def __len__(self):
        """Batches in one whole pass (the last partial batch is dropped)."""
        return self.loader.sampler.samples_per_pass() // self.loader.batch_size

    def next(self):
        if self._it is None:
            self.loader.sampler.set_pass(self.passes, start=self.taken * self.loader.batch_size)
            self._it = iter(self.loader)
        try:
            batch = next(self._it)
        except StopIteration:
            self.passes, self.taken, self._it = self.passes + 1, 0, None
            return self.next()
        self.taken += 1
        return batch

    def state_dict(self):
        return {"passes": self.passes, "taken": self.taken}

    def load_state_dict(self, state):
        passes = state["passes"] if "passes" in state else state["epoch"]   # (earlier name)
        self.passes, self.taken, self._it = passes, state["taken"], None


class TimedItems(Dataset):
    """A training set whose items also carry `load_seconds`: the CPU time of their loading
    (decode, resize, augmentation) in the thread that loads them, i.e. the loader worker.
    Run.to_device takes it out of the batch again."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, index):
        start = time.thread_time()
        item = self.dataset[index]
        return {**item, LOAD_SECONDS: time.thread_time() - start}


class LoadTimer:
    """CPU seconds of loading per training iteration (CUDA runs: whether the GPU waits for
    data). The run wraps its training sets (`wrap`), takes each batch's seconds out (`take`),
    counts `iterations`, and prints `report()` at the start and after every epoch."""

    def __init__(self, args):
        self.batch_size, self.workers = args.batch_size, args.workers
        self.prepared = getattr(args, "prepared", None)
        self.timed, self.seconds, self.iterations = [], 0.0, 0

    def wrap(self, dataset):
        self.timed.append(TimedItems(dataset))
        return self.timed[-1]

    def take(self, batch):
        """Remove the batch's per-item loading times (a dict batch, changed in place)."""
        self.seconds += float(batch.pop(LOAD_SECONDS).sum())

    def report(self):
        """data: 0.74 CPU-s of loading per iteration (last epoch); 4 workers on 2 cores ...
        Then starts counting anew."""
        if self.iterations and self.seconds:
            per_iter, how = self.seconds / self.iterations, "last epoch"
        else:   # first epoch of this session: time two samples of each training set here
            per_iter, how = 0.0, "2 samples of each training set"
            for timed in self.timed:
                n = min(2, len(timed))
                start = time.process_time()
                for i in range(n):
                    timed.dataset[(i, i)]
                per_iter += (time.process_time() - start) / n * self.batch_size
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (
            os.cpu_count() or 1)
        rate = min(max(self.workers, 1), cores) / max(per_iter, 1e-9)
        hint = "" if self.prepared else "; --prepared DIR loads faster"
        print(f"data: {per_iter:.2g} CPU-s of loading per iteration ({how}); {self.workers} "
              f"worker(s) on {cores} cores supply at most {rate:.1f} it/s: a bar near that "
              f"rate means the GPU waits for data{hint}", flush=True)
        self.seconds, self.iterations = 0.0, 0
