"""Resizing a network's class logits to a label's size, the one way every path does it."""
import torch
import torch.nn.functional as F


def upsample_logits(logits: torch.Tensor, size) -> torch.Tensor:
    """Bilinear (align_corners=False), in float32: under bf16 autocast the losses and the
    softmax want float32 anyway. The layout stays the network's (channels_last or not).

    Training on a CPU takes the same interpolation as two matrix products: PyTorch's bilinear
    backward is the slowest op of a CPU training step, and the products' backward is twice as
    fast (benchmarks/bench_train_overheads.py). Inference, and any GPU, keep F.interpolate,
    the faster one there."""
    logits = logits.float()
    if logits.requires_grad and logits.device.type == "cpu":
        return bilinear_as_matmuls(logits, size)
    return F.interpolate(logits, size=tuple(size), mode="bilinear", align_corners=False)


def bilinear_as_matmuls(x: torch.Tensor, size) -> torch.Tensor:
    """F.interpolate(x, size, mode="bilinear", align_corners=False) as rows @ x @ columns.T,
    equal to it up to float rounding; in float32 whatever the autocast."""
    rows = interpolation_matrix(x.shape[-2], size[0], x.device)
    columns = interpolation_matrix(x.shape[-1], size[1], x.device)
    with torch.autocast(x.device.type, enabled=False):
        return rows @ (x @ columns.T)


def interpolation_matrix(n_in: int, n_out: int, device) -> torch.Tensor:
    """(n_out, n_in) weights of 1-D linear interpolation with align_corners=False, PyTorch's
    convention for an output size: output i samples input coordinate (i + 0.5) * n_in / n_out
    - 0.5, clamped at 0, between its two neighbours (the last one repeated at the border)."""
    coord = ((torch.arange(n_out, dtype=torch.float64) + 0.5) * (n_in / n_out) - 0.5).clamp(min=0)
    low = coord.floor().long().clamp(max=n_in - 1)
    high = (low + 1).clamp(max=n_in - 1)
    frac = coord - low
    weights = torch.zeros(n_out, n_in, dtype=torch.float64)
    out = torch.arange(n_out)
    weights.index_put_((out, low), 1 - frac, accumulate=True)
    weights.index_put_((out, high), frac, accumulate=True)
    return weights.to(device, torch.float32)
