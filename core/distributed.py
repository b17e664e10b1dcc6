"""Several processes (torchrun): starting the process group, and what the ranks share.

A run launched by `torchrun --nproc_per_node N` initialises torch.distributed itself (gloo
on CPU, nccl on CUDA); a plain `python script.py` is one process, whatever its environment.
"""
import os

import torch
import torch.distributed as dist

from core.checkpoint import unwrap
from core.errors import ConfigError

LAUNCH_VARIABLES = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def init_distributed(device_flag):
    """(rank, world size, local rank) of this process; joins the process group under
    torchrun. WORLD_SIZE > 1 without torchrun is refused at once: the group would wait
    forever for processes that nobody started."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return 0, 1, 0
    if not dist.is_torchelastic_launched():
        found = " ".join(f"{k}={os.environ[k]}" for k in LAUNCH_VARIABLES if k in os.environ)
        raise ConfigError(f"{found} set, but this process was not started by torchrun "
                          f"(no TORCHELASTIC_RUN_ID): left over from another session? "
                          f"unset {' '.join(LAUNCH_VARIABLES)} for one process, or launch "
                          f"with `torchrun --nproc_per_node {world_size} ...`")
    backend = "nccl" if torch.cuda.is_available() and device_flag != "cpu" else "gloo"
    dist.init_process_group(backend)
    return dist.get_rank(), world_size, int(os.environ.get("LOCAL_RANK", "0"))


def broadcast_buffers(module):
    """Give every rank rank 0's BatchNorm statistics (before validating).

    DDP broadcasts buffers from rank 0 at the start of each training forward, and each rank
    then updates its copy with its own batch: after the last step the ranks hold different
    running statistics, and rank 0's are the ones saved. Validation must score the saved
    network on every rank.
    """
    for buffer in unwrap(module).buffers():
        dist.broadcast(buffer, src=0)


def mean_over_processes(value, world_size, device):
    """A python float (logged losses) or a tensor (MPL's h) averaged over the processes."""
    if torch.is_tensor(value):
        total = value.detach().clone()
        dist.all_reduce(total)
        return total / world_size
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.item() / world_size
