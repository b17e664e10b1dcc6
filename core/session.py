"""What one session of a run does besides training: when it logs, saves and stops.

    session = Session(args, run, parts)
    for epoch in range(start.epoch, session.last_epoch):
        ...
            session.after_step(epoch, i, iteration, meter, scheduler, best_miou)
            if session.out_of_time():             # --time-limit: saved just before
                break

Notebook services (Colab, Kaggle) end sessions after a fixed time: --time-limit makes the
run save and stop cleanly before that, and --resume continues it mid-epoch, exactly.
"""
import time

import torch
import torch.distributed as dist

from core.checkpoint import checkpoint_state

# Time kept in reserve before --time-limit: a few of the slowest steps seen, plus a save.
SLOWEST_STEPS_KEPT = 3
SAVE_SECONDS_GUESS = 30.0


class Session:
    def __init__(self, args, run, parts):
        self.args, self.run, self.parts = args, run, parts
        self.last_epoch = min(args.epochs, args.stop_after or args.epochs)
        self.log_every = getattr(args, "log_every", None)
        self.save_every = getattr(args, "save_every", None)
        limit = getattr(args, "time_limit", None)
        self.deadline = None if limit is None else time.monotonic() + 60 * limit
        self._last, self._slowest, self._stop = time.monotonic(), 0.0, False

    def after_step(self, epoch, step, iteration, meter, scheduler, best_miou):
        """After optimiser step `iteration` (step `step` of `epoch`): the running losses to
        metrics.jsonl every --log-every steps; last.pth every --save-every steps, and before
        --time-limit, as a mid-epoch checkpoint that --resume continues exactly."""
        self.log_iteration(epoch, iteration, meter, scheduler)
        if self.save_due(iteration + 1):
            state = checkpoint_state(self.run, self.args, self.parts, epoch - 1, iteration + 1,
                                     best_miou, step=step + 1, meter=meter)
            self.run.save(state, is_best=False)

    def log_iteration(self, epoch, iteration, meter, scheduler):
        """Every --log-every steps a metrics.jsonl line with the epoch's running loss means
        (training curves; all processes take part in averaging them)."""
        if self.log_every and (iteration + 1) % self.log_every == 0:
            self.run.log.write({"event": "train", "epoch": epoch + 1, "iteration": iteration + 1,
                                "lr": scheduler.get_last_lr()[0], **meter.means(self.run)})

    def save_due(self, steps_done):
        """True when a mid-epoch checkpoint is due: every --save-every steps, or because
        --time-limit is near (then the session stops right after saving)."""
        now = time.monotonic()
        self._slowest, self._last = max(self._slowest, now - self._last), now
        if self.deadline is not None and not self._stop:
            reserve = SLOWEST_STEPS_KEPT * self._slowest + SAVE_SECONDS_GUESS
            self._stop = self._agreed(now + reserve >= self.deadline)
            if self._stop:
                return True
        return bool(self.save_every) and steps_done % self.save_every == 0

    def out_of_time(self):
        return self._stop

    def _agreed(self, flag):
        """Every process stops together (rank 0's clock decides)."""
        if self.run.world_size == 1:
            return flag
        t = torch.tensor([float(flag)], device=self.run.device)
        dist.broadcast(t, src=0)
        return bool(t.item())
