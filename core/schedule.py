"""Poly learning-rate schedule, stepped once per iteration."""
import torch


def poly_factor(iteration, max_iters, power=0.9):
    """(1 - i / max)^power: the factor DeepLab and the UDA papers apply to every base LR."""
    return (1 - min(iteration, max_iters) / max_iters) ** power


def poly_scheduler(optimizer, max_iters, power=0.9):
    """LambdaLR scaling each parameter group's own base LR (classifier 10x stays 10x).

    `scheduler.step()` after each optimiser step; its state_dict (the iteration count) is
    checkpointed so that a resumed run continues the same curve.
    """
    if max_iters < 1:
        raise ValueError(f"poly schedule needs at least one iteration, got {max_iters}")
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda i: poly_factor(i, max_iters, power))
