"""One training run's machinery: process group, device, precision, run folder and its log.

    run = Run(args, "train_source")      # torchrun-aware: rank, device, AMP, seeds, folder lock
    model = run.place(build_model(...))   # on the device (channels_last), in DDP when distributed
    with run.autocast(): loss = ...
    run.scaler.scale(loss).backward()
    run.scaler.step(optimizer); run.scaler.update(); optimizer.zero_grad(set_to_none=True)

Launched by `torchrun`, a run initialises torch.distributed itself (gloo on CPU, nccl on
CUDA): each rank sees its own shard of the data; only rank 0 writes the log and checkpoints.
"""
import contextlib
import fcntl
import math
import os
import platform
import random
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import Dataset
from tqdm import tqdm

from core.checkpoint import remove_orphaned_temp_files, save_checkpoint, unwrap
from core.errors import ConfigError, NonFiniteLossError, RunFolderError
from core.logs import RunLog, print_epoch
from core.sampling import EVAL_STREAM, make_loader

# An epoch whose mean loss passes this has diverged (cross-entropy over 19 classes starts
# near ln 19 = 2.9): it is never saved as best.pth, and the run stops.
DIVERGED_LOSS = 1e3
# Key of the per-item loading time in timed training batches (see TimedItems).
LOAD_SECONDS = "load_seconds"


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
            raise ConfigError("--device cuda: no CUDA device is visible to PyTorch")
        return torch.device("cuda", index)
    if name != "cpu":
        raise ConfigError(f"--device {name}: expected auto, cpu or cuda")
    return torch.device("cpu")


def git_commit():
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                             cwd=Path(__file__).resolve().parent, timeout=5)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def check_finite(loss, iteration, out):
    """Stop before a NaN/inf loss reaches the weights (and so any checkpoint)."""
    if not torch.isfinite(loss.detach()).all():
        last = Path(out) / "last.pth"
        where = (f"the last good checkpoint is {last}" if last.is_file()
                 else "no checkpoint was written yet")
        raise NonFiniteLossError(f"loss is {loss.item()} at iteration {iteration}; stopping "
                                 f"without saving; {where} (try a lower --lr)")


def check_divergence(losses, epoch, out):
    """An epoch whose mean losses are non-finite or exploded is never saved or validated."""
    for name, value in losses.items():
        if not math.isfinite(value) or abs(value) > DIVERGED_LOSS:
            last = Path(out) / "last.pth"
            where = (f"the last good checkpoint is {last}" if last.is_file()
                     else "no checkpoint was written yet")
            raise NonFiniteLossError(f"mean {name} of epoch {epoch + 1} is {value:.4g}: the "
                                     f"run diverged; stopping without saving; {where} (try a "
                                     f"lower --lr)")
    return losses


def report_data(run, train_set, val_set):
    """Before the first epoch: every validation file must open (a broken one would surface
    only after an epoch of training), and labels not the size of their image are named."""
    if not run.is_main:
        return
    val_set.verify_readable()
    mismatched = train_set.size_mismatches()
    if mismatched:
        print(f"note: {len(mismatched)} label(s) of {train_set.root} differ in size from their "
              f"image; both are resized to the working size independently: "
              + ", ".join(mismatched[:10]) + (" ..." if len(mismatched) > 10 else ""),
              flush=True)


class Run:
    """Device, precision, process group, output folder and log of one training run."""

    def __init__(self, args, script):
        self.args, self.script = args, script
        self.rank, self.world_size, self.local_rank = self._init_distributed(args)
        self.is_main = self.rank == 0
        self.device = select_device(args.device, self.local_rank)
        if getattr(args, "sync_bn", False) and self.device.type != "cuda":
            raise ConfigError("--sync-bn synchronises BatchNorm statistics between GPUs "
                              "(torchrun with NCCL); it needs --device cuda")
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
            torch.backends.cudnn.benchmark = True  # fixed working sizes: pick fast kernels
        # AMP: bf16 where the GPU has it (no loss scaling needed), else fp16 with a grad
        # scaler; on CPU full precision. A disabled scaler passes everything through.
        self.amp_dtype = None
        if args.amp and self.device.type == "cuda":
            self.amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        self.scaler = torch.amp.GradScaler(self.device.type,
                                           enabled=self.amp_dtype == torch.float16)
        self.out = Path(args.out)
        self.log = RunLog(self.out / "metrics.jsonl", enabled=self.is_main)
        self._lock = None
        # On CUDA each epoch starts with the loaders' CPU seconds per iteration: whether the
        # GPU waits for data. `train_loader` then times the loading of every item.
        self.time_loading = self.device.type == "cuda"
        self._timed, self._load_seconds, self._load_iters = [], 0.0, 0
        seed_everything(args.seed + self.rank)

    @staticmethod
    def _init_distributed(args):
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        if world_size == 1:
            return 0, 1, 0
        backend = "nccl" if torch.cuda.is_available() and args.device != "cpu" else "gloo"
        dist.init_process_group(backend)
        return dist.get_rank(), world_size, int(os.environ.get("LOCAL_RANK", "0"))

    # -- the run folder ------------------------------------------------------------------
    def open_folder(self):
        """Lock --out for this run, check it holds no other run, and start (or continue) the
        log. Rank 0 only; the other ranks wait."""
        if self.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            self._lock = lock_folder(self.out)
            remove_orphaned_temp_files(self.out)
            if not self.args.resume and (self.out / "last.pth").exists():
                raise RunFolderError(
                    f"{self.out} already holds a run (last.pth); continue it with --resume "
                    f"{self.out / 'last.pth'} or choose another --out")
            check_free_space(self.out)
            if self.args.resume:
                self.log.write({"event": "resume", "from": str(self.args.resume)})
            else:
                self.log.start({"event": "start", "script": self.script,
                                "args": vars(self.args), "seed": self.args.seed,
                                "git_commit": git_commit(), "torch": torch.__version__,
                                "device": self.device_name(), "world_size": self.world_size,
                                "amp": str(self.amp_dtype),
                                "python": platform.python_version()})
        self.barrier()

    def restore_log(self, record):
        """After a kill between a checkpoint and its log line: write the line it holds."""
        if self.is_main and record is not None:
            self.log.ensure_epoch(record)

    def device_name(self):
        if self.device.type == "cuda":
            return torch.cuda.get_device_name(self.device)
        return f"cpu ({os.cpu_count()} cores)"

    # -- data and models -----------------------------------------------------------------
    def train_loader(self, dataset, stream):
        """Shuffled training batches of --batch-size (per process) from this rank's shard.

        On CUDA: pinned memory, workers kept from pass to pass, items timed (TimedItems)."""
        cuda = self.device.type == "cuda"
        if self.time_loading:
            dataset = TimedItems(dataset)
            self._timed.append(dataset)
        return make_loader(dataset, self.args.batch_size, self.args.seed, stream, train=True,
                           workers=self.args.workers, rank=self.rank,
                           world_size=self.world_size, pin_memory=cuda, persistent_workers=cuda)

    def val_loader(self, dataset, batch_size=1):
        """This rank's shard of the validation set, in order, no sample twice."""
        return make_loader(dataset, batch_size, self.args.seed, EVAL_STREAM, train=False,
                           workers=self.args.workers, rank=self.rank,
                           world_size=self.world_size, pin_memory=self.device.type == "cuda")

    def place(self, module, ddp=True):
        """Move to the device (channels_last if asked); wrap in DDP when distributed."""
        module = module.to(self.device)
        if self.args.channels_last:
            module = module.to(memory_format=torch.channels_last)
        if ddp and self.world_size > 1:
            if getattr(self.args, "sync_bn", False) and self.args.model != "deeplabv2":
                # (DeepLabV2's BatchNorm is frozen: there are no batch statistics to sync)
                module = torch.nn.SyncBatchNorm.convert_sync_batchnorm(module)
            ids = [self.device.index] if self.device.type == "cuda" else None
            module = torch.nn.parallel.DistributedDataParallel(module, device_ids=ids)
        return module

    def batch_to_device(self, batch):
        """A loader's batch on the device: uint8 images, labels (if any) as int64 class ids."""
        batch = dict(batch)
        seconds = batch.pop(LOAD_SECONDS, None)
        if seconds is not None:
            self._load_seconds += float(seconds.sum())
        batch["image"] = batch["image"].to(self.device, non_blocking=True)
        if self.args.channels_last:
            batch["image"] = batch["image"].contiguous(memory_format=torch.channels_last)
        if "label" in batch:
            batch["label"] = batch["label"].to(self.device, non_blocking=True).long()
        return batch

    def progress(self, iters, epoch, first=0):
        """The steps `first`..iters-1 of one epoch, with a progress bar (rank 0) shown after
        the loading line."""
        if self._timed and self.is_main:
            self.report_loading()
        self._load_seconds, self._load_iters = 0.0, iters
        return tqdm(range(first, iters), desc=f"epoch {epoch + 1}/{self.args.epochs}",
                    initial=first, total=iters,
                    disable=not self.is_main, dynamic_ncols=True, mininterval=1.0, leave=False)

    def report_loading(self):
        """data: 0.74 CPU-s of loading per iteration (last epoch); 4 workers on 2 cores ..."""
        if self._load_iters and self._load_seconds:
            per_iter, how = self._load_seconds / self._load_iters, "last epoch"
        else:   # first epoch of this session: time two samples of each training set here
            per_iter, how = 0.0, "2 samples of each training set"
            for timed in self._timed:
                n = min(2, len(timed))
                start = time.process_time()
                for i in range(n):
                    timed.dataset[(i, i)]
                per_iter += (time.process_time() - start) / n * self.args.batch_size
        workers = self.args.workers
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (
            os.cpu_count() or 1)
        rate = min(max(workers, 1), cores) / max(per_iter, 1e-9)
        hint = "" if getattr(self.args, "prepared", None) else "; --prepared DIR loads faster"
        print(f"data: {per_iter:.2g} CPU-s of loading per iteration ({how}); {workers} "
              f"worker(s) on {cores} cores supply at most {rate:.1f} it/s: a bar near that "
              f"rate means the GPU waits for data{hint}", flush=True)

    def autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    # -- epoch end -----------------------------------------------------------------------
    def sync_buffers(self, module):
        """Give every rank rank 0's BatchNorm statistics before validating.

        DDP broadcasts buffers from rank 0 at the start of each training forward, and each
        rank then updates its copy with its own batch: after the last step the ranks hold
        different running statistics, and rank 0's are the ones saved. Validation must score
        the saved network on every rank.
        """
        if self.world_size > 1:
            for buffer in unwrap(module).buffers():
                dist.broadcast(buffer, src=0)

    def save(self, state, is_best):
        """best.pth (on a new best) first, then last.pth; atomic; rank 0.

        In this order a kill leaves either both written, or last.pth one epoch behind
        (the resumed run repeats that epoch and writes best.pth again), never a stale best.
        """
        if self.is_main:
            if is_best:
                save_checkpoint(state, self.out / "best.pth")
            save_checkpoint(state, self.out / "last.pth")
        self.barrier()

    def log_epoch(self, record):
        """Append the epoch's line to metrics.jsonl (after its checkpoint) and print it."""
        if self.is_main:
            self.log.write(record)
            print_epoch(record)

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
        if self._lock is not None:
            self._lock.close()
            self._lock = None


class TimedItems(Dataset):
    """A training set whose items also carry `load_seconds`: the CPU time of their loading
    (decode, resize, augmentation) in the thread that loads them, i.e. the loader worker.
    Run.batch_to_device takes it out of the batch again."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, index):
        start = time.thread_time()
        item = self.dataset[index]
        return {**item, LOAD_SECONDS: time.thread_time() - start}


def lock_folder(folder):
    """An exclusive lock on folder/.lock for this process's lifetime (freed by the OS when the
    process dies, even by kill -9). A second run on the same folder is refused."""
    handle = open(Path(folder) / ".lock", "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        owner = handle.read().strip() or "another process"
        handle.close()
        raise RunFolderError(f"{folder} is in use by another run ({owner}); wait for it to "
                             f"finish or choose another --out") from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()}\n")
    handle.flush()
    return handle


MIN_FREE_BYTES = 1 << 30


def check_free_space(folder, need=None):
    """Refuse to start with under 1 GiB free where checkpoints go (found at the first save,
    a full disk would cost a whole epoch)."""
    need = MIN_FREE_BYTES if need is None else need
    free = shutil.disk_usage(folder).free
    if free < need:
        raise RunFolderError(f"only {free / 2**20:.0f} MiB free in {folder}: checkpoints need "
                             f"about 1 GiB; free some space or choose another --out")
