"""Resizing a network's class logits to a label's size, the one way every path does it."""
import torch
import torch.nn.functional as F


def upsample_logits(logits: torch.Tensor, size) -> torch.Tensor:
    """Bilinear (align_corners=False), in float32: under bf16 autocast the losses and the
    softmax want float32 anyway, and on a CPU bf16 bilinear's backward was the slowest op of a
    training step. The layout stays the network's (channels_last or not: the same speed within
    noise, benchmarks/bench_train_overheads.py)."""
    return F.interpolate(logits.float(), size=tuple(size), mode="bilinear", align_corners=False)
