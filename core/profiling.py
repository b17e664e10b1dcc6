"""Parameter counts, multiply-adds (thop) and model-only latency. Used by profile_model.py.

MACs are multiply-accumulates as thop counts them (convolutions: output elements x in/groups
x kernel area, bias not counted; BatchNorm and pooling counted; functional ops such as
F.interpolate, torch.cat, x * y not counted). FLOPs = 2 x MACs: say which one you quote.
"""
from __future__ import annotations

import copy
import time
import warnings

import numpy as np
import torch
from torch import nn


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(total, trainable) parameter counts."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return total, trainable


def _thop_rules_for_subclasses(model: nn.Module, register_hooks: dict) -> dict:
    """thop looks rules up by exact type, so a subclass of a known leaf layer (our
    FrozenBatchNorm2d) would count as zero: give it its parent's rule."""
    rules = {}
    for m in model.modules():
        kind = type(m)
        if kind in register_hooks or kind in rules or next(m.children(), None) is not None:
            continue
        parent = next((base for base in kind.__mro__[1:] if base in register_hooks), None)
        if parent is not None:
            rules[kind] = register_hooks[parent]
    return rules


def count_macs(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Multiply-adds of one forward pass at `input_shape` (N, C, H, W), eval mode.

    thop runs on a deep copy: it leaves 'total_ops'/'total_params' buffers behind on modules
    it has no rule for, and switches train/eval; the caller's model is not touched.
    """
    with warnings.catch_warnings():  # thop imports distutils' LooseVersion
        warnings.simplefilter("ignore")
        from thop import profile
        from thop.profile import register_hooks

    probe = copy.deepcopy(model).eval()
    param = next(probe.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    x = torch.zeros(input_shape, device=device)
    macs, _ = profile(probe, inputs=(x,), verbose=False,
                      custom_ops=_thop_rules_for_subclasses(probe, register_hooks))
    return int(round(float(macs)))


def measure_latency(model: nn.Module, inputs: torch.Tensor, warmup: int = 10, iters: int = 50,
                    amp: bool = False) -> dict[str, float]:
    """Model-only latency of `model(inputs)` in eval mode under torch.inference_mode.

    Data loading and host-to-device copies are excluded (the inputs are already on the
    device). Each timed iteration is closed by torch.cuda.synchronize on CUDA, so the time is
    the GPU's, not the kernel launches'. `amp`: bfloat16 autocast. The model's train/eval mode
    is restored afterwards. Returns mean/median/p90 in ms and fps = batch / mean.
    """
    cuda = inputs.device.type == "cuda"

    def sync():
        if cuda:
            torch.cuda.synchronize(inputs.device)

    was_training = model.training
    model.eval()
    times = []
    try:
        with torch.inference_mode(), torch.autocast(inputs.device.type, dtype=torch.bfloat16,
                                                    enabled=amp):
            for _ in range(warmup):  # cudnn autotuning, torch.compile, allocator, caches
                model(inputs)
            sync()
            for _ in range(iters):
                start = time.perf_counter()
                model(inputs)
                sync()
                times.append((time.perf_counter() - start) * 1000.0)
    finally:
        model.train(was_training)
    times = np.asarray(times)
    mean = float(times.mean())
    return {"mean_ms": mean, "median_ms": float(np.median(times)),
            "p90_ms": float(np.percentile(times, 90)), "fps": inputs.shape[0] * 1000.0 / mean}
