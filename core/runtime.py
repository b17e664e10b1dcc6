"""Run plumbing shared by the training scripts: seed, device, AMP, DDP, loaders, logs, saving.

The scripts stay algorithm listings; everything that is the same for every method lives
in `Run`. Launched by `torchrun`, a run initialises torch.distributed itself (gloo on CPU,
nccl on CUDA): each rank sees its own shard, only rank 0 writes logs and checkpoints.
"""
import contextlib
import json
import os
import platform
import random
import subprocess
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Sampler
from tqdm import tqdm

from core.checkpoint import save_checkpoint


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite: the run stops without overwriting a good checkpoint."""


def seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def select_device(name, index=0):
    """--device auto | cpu | cuda (the GPU `index`, i.e. LOCAL_RANK under torchrun)."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit("--device cuda: no CUDA device is visible to PyTorch")
        return torch.device("cuda", index)
    return torch.device(name)


def git_commit():
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                             cwd=Path(__file__).resolve().parent, timeout=5)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


class EpochSampler(Sampler):
    """Shuffles with a generator seeded by (seed, epoch) and can start mid-epoch.

    The order depends only on the seed and the epoch, never on what ran before, so a resumed
    run sees exactly the batches the uninterrupted run would have seen. Under DDP each rank
    takes every world_size-th index; for training the order is padded to a multiple of
    world_size (as DistributedSampler does), for evaluation it is not (no duplicates).
    """

    def __init__(self, length, shuffle, seed=0, rank=0, world_size=1, pad=True):
        self.length, self.shuffle, self.seed = length, shuffle, seed
        self.rank, self.world_size, self.pad = rank, world_size, pad
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch, start=0):
        """Next iteration yields epoch `epoch`, skipping its first `start` indices of this rank."""
        self.epoch, self.start = epoch, start

    def _indices(self):
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            order = torch.randperm(self.length, generator=g).tolist()
        else:
            order = list(range(self.length))
        if self.pad and self.world_size > 1:
            order += order[: (-len(order)) % self.world_size]
        return order[self.rank::self.world_size]

    def __iter__(self):
        return iter(self._indices()[self.start:])

    def __len__(self):
        return len(self._indices()) - self.start


def set_epoch(loader, epoch, start=0):
    """Point a loader at `epoch` (from batch position `start`), with worker seeds that depend
    only on the seed and the epoch: the same augmentations whether or not the run resumed."""
    loader.sampler.set_epoch(epoch, start=start * loader.batch_size)
    loader.generator.manual_seed(loader.sampler.seed * 100_003 + epoch)


class Stream:
    """Endless batches from a loader, pass after pass (the target domain in UDA training).

    Its position (pass, batches taken) is checkpointed, so a resumed run continues the same
    sequence of target batches.
    """

    def __init__(self, loader):
        self.loader, self.epoch, self.taken, self._it = loader, 0, 0, None

    def next(self):
        if self._it is None:
            set_epoch(self.loader, self.epoch, start=self.taken)
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


class Run:
    """Device, precision, process group, output folder and log of one training run."""

    def __init__(self, args, script):
        self.args, self.script = args, script
        self.rank, self.world_size, self.local_rank = self._init_distributed(args)
        self.is_main = self.rank == 0
        self.device = self._pick_device(args.device)
        # AMP: bf16 where the GPU has it (no scaler needed), else fp16 with a grad scaler;
        # on CPU full precision, as the speed-up there is small and numerics differ.
        self.amp_dtype = None
        if args.amp and self.device.type == "cuda":
            self.amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        self.scaler = torch.amp.GradScaler("cuda") if self.amp_dtype == torch.float16 else None
        self.out = Path(args.out)
        self.log_path = self.out / "metrics.jsonl"
        seed_everything(args.seed + self.rank)

    # -- setup ---------------------------------------------------------------------------
    @staticmethod
    def _init_distributed(args):
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        if world_size == 1:
            return 0, 1, 0
        backend = "nccl" if torch.cuda.is_available() and args.device != "cpu" else "gloo"
        dist.init_process_group(backend)
        return dist.get_rank(), world_size, int(os.environ.get("LOCAL_RANK", "0"))

    def _pick_device(self, name):
        device = select_device(name, self.local_rank)
        if device.type == "cuda":
            torch.cuda.set_device(device)
            torch.backends.cudnn.benchmark = True  # fixed working sizes: pick fast kernels
        return device

    def start_log(self, resumed_from=None):
        """Open metrics.jsonl with the run's description (or note the resume in it)."""
        if not self.is_main:
            return
        if resumed_from is None and (self.out / "last.pth").exists():
            raise SystemExit(f"{self.out} already holds a run (last.pth); continue it with "
                             f"--resume {self.out / 'last.pth'} or choose another --out")
        self.out.mkdir(parents=True, exist_ok=True)
        if resumed_from is not None:
            self.log({"event": "resume", "from": str(resumed_from)})
            return
        self.log_path.unlink(missing_ok=True)
        self.log({"event": "start", "script": self.script, "args": vars(self.args),
                  "seed": self.args.seed, "git_commit": git_commit(),
                  "torch": torch.__version__, "device": self.device_name(),
                  "world_size": self.world_size, "amp": str(self.amp_dtype),
                  "python": platform.python_version()})

    def device_name(self):
        if self.device.type == "cuda":
            return torch.cuda.get_device_name(self.device)
        return f"cpu ({os.cpu_count()} cores)"

    def loader(self, dataset, batch_size, train, workers, stream=0):
        """DataLoader over an EpochSampler; training drops the last incomplete batch.

        `stream` tells apart loaders of one run (source 0, target 1), so that two sets of
        equal length are not shuffled in the same order: each source image then meets a
        different target image every pass.
        """
        sampler = EpochSampler(len(dataset), shuffle=train, seed=self.args.seed * 101 + stream,
                               rank=self.rank, world_size=self.world_size, pad=train)
        if train and len(sampler) < batch_size:
            raise SystemExit(f"--batch-size {batch_size} is larger than the {len(sampler)} "
                             f"training images available to each process")
        return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers,
                          pin_memory=self.device.type == "cuda", drop_last=train,
                          persistent_workers=False,
                          generator=torch.Generator().manual_seed(self.args.seed))

    def prepare(self, module, ddp=True):
        """Move to the device (channels_last if asked) and wrap in DDP when distributed."""
        module = module.to(self.device)
        if self.args.channels_last:
            module = module.to(memory_format=torch.channels_last)
        if ddp and self.world_size > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            module = torch.nn.parallel.DistributedDataParallel(module, device_ids=ids)
        return module

    @staticmethod
    def unwrap(module):
        return module.module if hasattr(module, "module") else module

    # -- per iteration -------------------------------------------------------------------
    def to_device(self, tensor):
        tensor = tensor.to(self.device, non_blocking=True)
        if self.args.channels_last and tensor.dim() == 4:
            tensor = tensor.contiguous(memory_format=torch.channels_last)
        return tensor

    def batch(self, batch):
        """A loader's batch on the device: uint8 images, labels (if any) as int64 class ids."""
        batch = dict(batch)
        batch["image"] = self.to_device(batch["image"])
        if "label" in batch:
            batch["label"] = batch["label"].to(self.device, non_blocking=True).long()
        return batch

    def autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def check_finite(self, loss, iteration, what="loss"):
        if not torch.isfinite(loss.detach()).all():
            raise NonFiniteLossError(
                f"{what} is {loss.item()} at iteration {iteration}; stopping without saving. "
                f"The last good checkpoint is {self.out / 'last.pth'} (try a lower --lr).")

    def backward(self, loss):
        (self.scaler.scale(loss) if self.scaler else loss).backward()

    def step(self, *optimizers):
        """Optimiser steps (through the grad scaler under fp16), then clear the gradients."""
        for opt in optimizers:
            if self.scaler:
                self.scaler.step(opt)
            else:
                opt.step()
        if self.scaler:
            self.scaler.update()
        for opt in optimizers:
            opt.zero_grad(set_to_none=True)

    def progress(self, iterable, desc, total=None):
        return tqdm(iterable, desc=desc, total=total, disable=not self.is_main,
                    dynamic_ncols=True, mininterval=1.0, leave=False)

    # -- per epoch -----------------------------------------------------------------------
    def log(self, record):
        """Append one JSON line to metrics.jsonl (rank 0 only)."""
        if self.is_main:
            with open(self.log_path, "a") as f:
                f.write(json.dumps(record, default=_jsonable) + "\n")

    def save(self, state, is_best):
        """last.pth every epoch, best.pth on a new best validation mIoU; atomic, rank 0."""
        if self.is_main:
            save_checkpoint(state, self.out / "last.pth")
            if is_best:
                save_checkpoint(state, self.out / "best.pth")
        self.barrier()

    def barrier(self):
        if self.world_size > 1:
            dist.barrier()

    def mean_across_ranks(self, value):
        """Average a python float over processes (for logging losses under DDP)."""
        if self.world_size == 1:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return t.item() / self.world_size

    def close(self):
        if self.world_size > 1:
            dist.destroy_process_group()


def _jsonable(value):
    return str(value) if isinstance(value, Path) else repr(value)


class Timer:
    """Wall-clock seconds since creation, for the per-epoch log line."""

    def __init__(self):
        self.t0 = time.perf_counter()

    def seconds(self):
        return round(time.perf_counter() - self.t0, 2)
