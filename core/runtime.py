"""One training run from start to end: device, precision, data streams, run folder, log,
checkpoints, resume, and when to stop.

    run = Run(args, "train_source")     # torchrun-aware: rank, device, AMP, seeds
    stream = run.stream(source_set, "source")          # endless batches, resumable
    model = run.place(build_model(...))  # on the device; in DDP when distributed
    start, stop = run.begin(parts, iters_per_epoch)    # open --out; --resume: load `parts`
    for it in run.progress(range(start, stop)):
        with run.autocast(): loss = ...
        run.backward(loss, it)           # stops on a NaN/inf loss before it reaches the weights
        run.step(optimizer)
        val = validate(...) if run.epoch_ends(it) else None
        if run.log_and_save(it, {"loss": loss}, val, lr=...):   # True: --time-limit reached
            break

`log_and_save` is the one place that writes checkpoints: last.pth (and best.pth on a new
best) after each epoch's validation, and mid-epoch every --save-every iterations or just before
--time-limit, so that --resume continues any of them exactly.

Launched by `torchrun`, a run initialises torch.distributed itself (gloo on CPU, nccl on
CUDA): each rank sees its own shard of the data; only rank 0 writes the log and checkpoints.
"""
import contextlib
import math
import os
import platform
import time
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm import tqdm

from core.checkpoint import (
    check_free_space,
    load_checkpoint,
    load_weights,
    lock_folder,
    remove_orphaned_temp_files,
    rng_state,
    save_checkpoint,
    seed_everything,
    set_rng_state,
    unwrap,
)
from core.datacheck import check_datasets, print_plan
from core.distributed import broadcast_buffers, init_distributed, mean_over_processes
from core.errors import CheckpointError, ConfigError, NonFiniteLossError
from core.evaluation import select_device
from core.logs import LossMeter, RunLog, Timer, git_commit, print_epoch, print_stopped
from core.outputs import check_run_folder
from core.precision import amp_dtype, set_memory_format
from core.sampling import LoadTimer, Stream, make_loader
from core.transforms import apply_photometric

# An epoch whose mean loss passes this has diverged (cross-entropy over 19 classes starts
# near ln 19 = 2.9): it is never saved as best.pth, and the run stops.
DIVERGED_LOSS = 1e3
# --time-limit keeps in reserve a few of the slowest steps seen, plus a save.
SLOWEST_STEPS_KEPT = 3
SAVE_SECONDS_GUESS = 30.0


class Run:
    """Everything one training run has besides its networks and losses, from start to end."""

    def __init__(self, args, script):
        self.args, self.script = args, script
        self.rank, self.world_size, self.local_rank = init_distributed(args.device)
        self.is_main = self.rank == 0
        self.device = select_device(args.device, self.local_rank)
        if getattr(args, "sync_bn", False) and self.device.type != "cuda":
            raise ConfigError("--sync-bn synchronises BatchNorm statistics between GPUs "
                              "(torchrun with NCCL); it needs --device cuda")
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
            torch.backends.cudnn.benchmark = True  # fixed working sizes: pick fast kernels
        # --amp: bf16 where the GPU or CPU has it (no loss scaling needed), else fp16 with a
        # grad scaler on CUDA. A disabled scaler passes everything through.
        self.amp_dtype = amp_dtype(self.device, args.amp)
        self.scaler = torch.amp.GradScaler(self.device.type,
                                           enabled=self.amp_dtype == torch.float16)
        self.out = Path(args.out)
        self.log = RunLog(self.out / "metrics.jsonl", enabled=self.is_main,
                          tensorboard=getattr(args, "tensorboard", False))
        self._lock = None
        # On CUDA each epoch ends with the loaders' CPU seconds per iteration: whether the
        # GPU waits for data (`stream` times the loading of every item).
        self.loading = LoadTimer(args) if self.device.type == "cuda" else None
        if getattr(args, "demo", False):
            self._make_demo()
            if self.is_main and self.amp_dtype is not None:   # (core.cli: --demo's default)
                print(f"--demo: {str(self.amp_dtype).removeprefix('torch.')} mixed precision "
                      f"(--amp) on this {self.device.type.upper()}; --no-amp for float32",
                      flush=True)
        seed_everything(args.seed + self.rank)

    def _make_demo(self):
        """--demo: the built-in pair, generated (rank 0) the first time a run needs it."""
        from demo import ensure_demo  # the renderer, only for runs that use it
        if self.is_main:
            ensure_demo()
        self.barrier()

    # -- data and networks ---------------------------------------------------------------
    def stream(self, dataset, role):
        """Endless shuffled training batches of --batch-size (per process) from this rank's
        shard; `role` ('source', 'target', 'feedback') keeps two loaders' orders apart.

        Workers are kept from pass to pass; on CUDA: pinned memory, items timed (TimedItems)."""
        cuda = self.device.type == "cuda"
        if self.loading:
            dataset = self.loading.wrap(dataset)
        return Stream(make_loader(dataset, self.args.batch_size, self.args.seed, role,
                                  train=True, workers=self.args.workers, rank=self.rank,
                                  world_size=self.world_size, pin_memory=cuda))

    def val_loader(self, dataset):
        """This rank's shard of the validation set, in order, no sample twice, in batches of
        --batch-size (frames of one size together)."""
        return make_loader(dataset, self.args.batch_size, self.args.seed, "eval", train=False,
                           workers=self.args.workers, rank=self.rank,
                           world_size=self.world_size, pin_memory=self.device.type == "cuda")

    def check_data(self, train_set, val_set, target_set=None):
        """Before the first step (rank 0): every file opens, labels have their image's shape
        and classes to learn (core.datacheck; --dry-run prints what it found)."""
        if self.is_main:
            check_datasets({"source": train_set, "target": target_set, "val": val_set},
                           dry_run=getattr(self.args, "dry_run", False))

    def place(self, module, ddp=True):
        """Move to the device, in channels_last where that is faster (--channels-last,
        core.precision); wrap in DDP when distributed."""
        module = set_memory_format(module.to(self.device), self.device, self.amp_dtype,
                                   self.args.channels_last)
        if ddp and self.world_size > 1:
            frozen = getattr(self.args, "deeplab_bn", "frozen") == "frozen"
            if getattr(self.args, "sync_bn", False) and not (self.args.model == "deeplabv2"
                                                             and frozen):
                # (--deeplab-bn frozen: no batch statistics to sync)
                module = torch.nn.SyncBatchNorm.convert_sync_batchnorm(module)
            ids = [self.device.index] if self.device.type == "cuda" else None
            module = torch.nn.parallel.DistributedDataParallel(module, device_ids=ids)
        return module

    def to_device(self, batch):
        """A loader's batch on the device: uint8 images, labels (if any) as int64 class ids."""
        batch = dict(batch)
        if self.loading:
            self.loading.take(batch)
        batch["image"] = batch["image"].to(self.device, non_blocking=True)
        if "photometric" in batch:   # --aug jitter/blur: drawn in the workers, applied here
            batch["image"] = apply_photometric(batch["image"], batch.pop("photometric"))
        if "label" in batch:
            batch["label"] = batch["label"].to(self.device, non_blocking=True).long()
        return batch

    # -- one optimisation step -----------------------------------------------------------
    def autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    # Logged loss name -> flag of the learning rate that moves it, as backward was told;
    # names not in it: --lr. (Replaced, never changed in place: a class-level default.)
    _lr_flags = {}

    def backward(self, loss, it, name="loss", lr_flag="--lr", logged=None):
        """Gradients of `loss` (scaled under fp16 AMP). A NaN/inf loss stops the run here,
        before it reaches the weights and so any checkpoint, naming the loss (`name`) and
        `lr_flag`, the flag of the learning rate of the network it trains. `logged`: the
        names its terms are logged under (default `name`): an epoch mean of theirs that
        explodes (_check_divergence) names `lr_flag` too."""
        for key in (name,) if logged is None else logged:
            if self._lr_flags.get(key) != lr_flag:
                self._lr_flags = {**self._lr_flags, key: lr_flag}
        if not torch.isfinite(loss.detach()).all():
            raise NonFiniteLossError(f"{name} is {loss.item()} at iteration {it}; stopping "
                                     f"without saving; {self._last_good()} (try a lower "
                                     f"{lr_flag})")
        self.scaler.scale(loss).backward()

    def step(self, *optimizers):
        """One update of each optimiser from its gradients, which are then cleared."""
        for optimizer in optimizers:
            self.scaler.step(optimizer)
        self.scaler.update()
        for optimizer in optimizers:
            optimizer.zero_grad(set_to_none=True)

    def _last_good(self):
        last = self.out / "last.pth"
        return f"the last good checkpoint is {last}" if last.is_file() else \
            "no checkpoint was written yet"

    # -- the run's lifetime --------------------------------------------------------------
    def begin(self, parts, iters_per_epoch):
        """Open --out and, with --resume, restore every part (networks, optimisers,
        schedulers, streams), the RNGs and the running losses. Returns (start, stop): the
        iteration to continue from and the one this session ends at (--epochs, --stop-after).

        `parts` maps checkpoint keys to objects with state_dict/load_state_dict. --dry-run:
        all is built and checked by now: print the plan, exit 0 before --out is touched."""
        self.parts, self.iters_per_epoch = parts, iters_per_epoch
        if getattr(self.args, "dry_run", False):
            if self.is_main:
                print_plan(self.args, self.script, iters_per_epoch)
            if self.world_size > 1:
                dist.destroy_process_group()
            raise SystemExit(0)
        self.open_folder()
        start, self.best_miou, self.meter = 0, -1.0, LossMeter()
        if self.args.resume:
            start = self._restore(self.args.resume)
        epochs = min(self.args.epochs, self.args.stop_after or self.args.epochs)
        limit = getattr(self.args, "time_limit", None)
        self._deadline = None if limit is None else time.monotonic() + 60 * limit
        self._last_step, self._slowest, self._stop = time.monotonic(), 0.0, False
        self._timer = Timer()
        self._end = epochs * iters_per_epoch
        return start, self._end

    def _restore(self, path):
        """Load a checkpoint's states into the parts; returns its iteration. (Its script and
        arguments were checked against the command line when they were parsed: core.cli.)"""
        state = load_checkpoint(path)
        for name, part in self.parts.items():
            if name not in state:
                raise CheckpointError(f"{path} has no '{name}' state: it was written by "
                                      f"another script ({', '.join(sorted(state))})")
            if isinstance(part, torch.nn.Module):
                load_weights(unwrap(part), state[name], path, what=name)
            else:
                part.load_state_dict(state[name])
        if self.scaler and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"])
        # TensorBoard: what the killed session logged after this checkpoint is dropped
        self.log.open_tensorboard(purge_step=state["iteration"] + 1)
        if self.is_main and state.get("log_record") is not None:
            self.log.ensure_epoch(state["log_record"])   # a kill came before its log line
        self.best_miou = float(state["best_miou"])
        start = state["iteration"]
        if start % self.iters_per_epoch and state.get("meter"):   # mid-epoch: its losses
            self.meter = LossMeter.from_state(state["meter"])
        return start

    def progress(self, iterations):
        """The iterations with a progress bar (rank 0), after the data-loading line."""
        if self.loading and self.is_main:
            self.loading.report()
        self._bar = tqdm(iterations, desc=self.script, initial=iterations.start,
                         total=iterations.stop, disable=not self.is_main, dynamic_ncols=True,
                         mininterval=1.0, leave=False)
        return self._bar

    def epoch_ends(self, it):
        """True after the last iteration of an epoch: time to validate."""
        return (it + 1) % self.iters_per_epoch == 0

    def log_and_save(self, it, losses, val=None, **values):
        """After iteration `it`: add its losses to the epoch's means; every --log-every
        iterations a metrics.jsonl line. At an epoch end (`val`, the validation result) the
        epoch's line, best.pth on a new best and last.pth; mid-epoch, last.pth every
        --save-every iterations or just before --time-limit. Returns True when this session
        must stop (--time-limit), after saving. `values`: the LRs and such, logged as given."""
        self._done = done = it + 1
        self.meter.add(**losses)
        if self.loading:
            self.loading.iterations += 1
        self._bar.set_postfix(self.meter.postfix(*list(self.meter.sums)[:3]))
        if self.log_every_due(done):
            self.log.write({"event": "train", "epoch": it // self.iters_per_epoch + 1,
                            "iteration": done, **values, **self.meter.means(self)})
        time_is_up = self._time_is_up()
        if val is not None:
            self._end_epoch(done, val, values)
        elif time_is_up or (self.args.save_every and done % self.args.save_every == 0):
            self._save(done)
        return time_is_up

    def log_every_due(self, done):
        return bool(self.args.log_every) and done % self.args.log_every == 0

    def _end_epoch(self, done, val, values):
        """Epoch line, checkpoints (best.pth first: a kill between the two leaves last.pth one
        epoch behind, never a stale best), then the line in metrics.jsonl and on screen."""
        losses = self._check_divergence(self.meter.means(self), done // self.iters_per_epoch)
        is_best = val["miou"] > self.best_miou
        self.best_miou = max(self.best_miou, val["miou"])
        record = {"epoch": done // self.iters_per_epoch, "iteration": done, **values, **losses,
                  "val_miou": val["miou"], "val_pixel_acc": val["pixel_acc"],
                  "seconds": self._timer.seconds()}
        self._save(done, record, is_best)
        if self.is_main:
            self.log.write(record)
            self._bar.clear()
            print_epoch(record)
            if self.loading:
                self.loading.report()
        self.meter, self._timer = LossMeter(), Timer()

    def _check_divergence(self, losses, epoch):
        """An epoch whose mean losses are non-finite or exploded is never saved."""
        for name, value in losses.items():
            if not math.isfinite(value) or abs(value) > DIVERGED_LOSS:
                raise NonFiniteLossError(f"mean {name} of epoch {epoch} is {value:.4g}: the "
                                         f"run diverged; stopping without saving; "
                                         f"{self._last_good()} (try a lower "
                                         f"{self._lr_flags.get(name, '--lr')})")
        return losses

    def _save(self, done, record=None, is_best=False):
        """Every part's state (networks unwrapped from DDP), the RNGs and the arguments, after
        `done` iterations; mid-epoch also the epoch's running losses. Rank 0 writes."""
        if self.is_main:
            state = {name: unwrap(part).state_dict() for name, part in self.parts.items()}
            state.update(scaler=self.scaler.state_dict(), iteration=done,
                         epoch=done // self.iters_per_epoch - 1,   # last finished, 0-based
                         best_miou=float(self.best_miou), rng=rng_state(), script=self.script,
                         args=vars(self.args), log_record=record,
                         meter=None if record else self.meter.state_dict())
            if is_best:
                save_checkpoint(state, self.out / "best.pth")
            save_checkpoint(state, self.out / "last.pth")
        self.barrier()

    def _time_is_up(self):
        """--time-limit: True once the slowest steps seen and a save no longer fit in it
        (every process stops together: rank 0's clock decides)."""
        now = time.monotonic()
        self._slowest, self._last_step = max(self._slowest, now - self._last_step), now
        if self._deadline is None or self._stop:
            return self._stop
        flag = now + SLOWEST_STEPS_KEPT * self._slowest + SAVE_SECONDS_GUESS >= self._deadline
        if self.world_size > 1:
            t = torch.tensor([float(flag)], device=self.device)
            dist.broadcast(t, src=0)
            flag = bool(t.item())
        self._stop = flag
        return flag

    # -- the run folder ------------------------------------------------------------------
    def open_folder(self):
        """Check that --out holds no other run (core.outputs), lock it for this run, and start
        (or continue: a line cut by a kill dropped) the log. Rank 0 only; the others wait."""
        if self.is_main:
            check_run_folder(self.out, self.script, resume=bool(self.args.resume))
            self.out.mkdir(parents=True, exist_ok=True)
            self._lock = lock_folder(self.out)
            remove_orphaned_temp_files(self.out)
            check_free_space(self.out)
            if self.args.resume:
                self.log.repair()
                self.log.write({"event": "resume", "from": str(self.args.resume)})
            else:
                self.log.start({"event": "start", "script": self.script,
                                "args": vars(self.args), "seed": self.args.seed,
                                "git_commit": git_commit(), "torch": torch.__version__,
                                "device": self.device_name(), "world_size": self.world_size,
                                "amp": str(self.amp_dtype),
                                "python": platform.python_version()})
        self.barrier()

    def device_name(self):
        if self.device.type == "cuda":
            return torch.cuda.get_device_name(self.device)
        return f"cpu ({os.cpu_count()} cores)"

    # -- processes -----------------------------------------------------------------------
    def sync_buffers(self, module):
        """Every rank takes rank 0's BatchNorm statistics (core.distributed)."""
        if self.world_size > 1:
            broadcast_buffers(module)

    def barrier(self):
        if self.world_size > 1:
            dist.barrier()

    def mean_across_ranks(self, value):
        """A float or tensor averaged over the processes."""
        if self.world_size == 1:
            return value
        return mean_over_processes(value, self.world_size, self.device)

    def close(self):
        if self.is_main:    # a session ended by --stop-after or --time-limit says so
            print_stopped(self.args, self.script, time_limit_hit=getattr(self, "_stop", False)
                          and self._done < self._end)
        self.log.close()
        if self.world_size > 1:
            dist.destroy_process_group()
        if self._lock is not None:
            self._lock.close()
            self._lock = None
