"""core/profiling.py and profile_model.py: counts, MACs against hand formulas, latency."""
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from core.models import build_discriminator, build_model
from core.profiling import count_macs, count_parameters, measure_latency

ROOT = Path(__file__).resolve().parents[1]


def conv_macs_by_hand(model, height, width):
    """Sum over convs of out_channels x out_h x out_w x (in_channels / groups) x kh x kw,
    following the spatial size through a plain chain of convs (bias adds not counted)."""
    total = 0
    for conv in (m for m in model.modules() if isinstance(m, nn.Conv2d)):
        (kh, kw), (sh, sw), (ph, pw) = conv.kernel_size, conv.stride, conv.padding
        height, width = (height + 2 * ph - kh) // sh + 1, (width + 2 * pw - kw) // sw + 1
        total += conv.out_channels * height * width * conv.in_channels // conv.groups * kh * kw
    return total


def test_count_parameters():
    assert count_parameters(build_discriminator("fcd")) == (2_781_121, 2_781_121)
    total, trainable = count_parameters(build_model("deeplabv2").to("meta"))
    assert (total, trainable) == (43_901_068, 43_795_724)  # frozen BN affine not trainable


@pytest.mark.parametrize("name", ["fcd", "dsc"])
def test_count_macs_matches_hand_formula(name):
    model = build_discriminator(name)
    assert count_macs(model, (1, 19, 96, 160)) == conv_macs_by_hand(model, 96, 160)


def test_discriminator_macs_at_512x1024():
    # Shape-only forward on the meta device: thop's rules only read shapes.
    fcd = count_macs(build_discriminator("fcd").to("meta"), (1, 19, 512, 1024))
    dsc = count_macs(build_discriminator("dsc").to("meta"), (1, 19, 512, 1024))
    assert fcd == 15_439_233_024 == conv_macs_by_hand(build_discriminator("fcd"), 512, 1024)
    assert dsc == 1_067_712_512 == conv_macs_by_hand(build_discriminator("dsc"), 512, 1024)
    assert round(2 * fcd / 1e9, 2) == 30.88 and round(2 * dsc / 1e9, 2) == 2.14


def test_frozen_batchnorm_is_counted_like_batchnorm():
    # thop matches rules by exact type; FrozenBatchNorm2d must not silently count as zero.
    model = build_model("deeplabv2", deeplab_bn="frozen").to("meta").eval()
    macs = count_macs(model, (1, 3, 64, 64))
    conv_macs, bn_macs = [], []

    def hook(module, inputs, out):
        if isinstance(module, nn.BatchNorm2d):
            bn_macs.append(4 * out.numel())  # thop: 2 per element, x2 with affine
        else:
            kh, kw = module.kernel_size
            conv_macs.append(out.numel() * module.in_channels // module.groups * kh * kw)
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.BatchNorm2d)):
            m.register_forward_hook(hook)
    model(torch.empty(1, 3, 64, 64, device="meta"))
    assert len(bn_macs) == 104 and macs == sum(conv_macs) + sum(bn_macs)


def test_profiling_leaves_the_model_untouched():
    torch.manual_seed(0)
    model = build_model("bisenet", backbone="resnet18").train()
    x = torch.randn(2, 3, 64, 96)
    keys = list(model.state_dict())
    model.eval()
    with torch.no_grad():
        before = model(x)
    model.train()
    count_macs(model, (1, 3, 64, 96))
    measure_latency(model, x[:1], warmup=1, iters=2)
    assert model.training
    assert list(model.state_dict()) == keys
    assert not [n for n, _ in model.named_buffers() if "total_" in n]
    assert not any(hasattr(m, "total_ops") for m in model.modules())
    with torch.no_grad():
        after = model.eval()(x)
    assert torch.equal(before, after)


def test_measure_latency_reports():
    model = build_discriminator("dsc")
    result = measure_latency(model, torch.rand(2, 19, 32, 64), warmup=1, iters=3)
    assert set(result) == {"mean_ms", "median_ms", "p90_ms", "fps"}
    assert all(v > 0 for v in result.values())
    assert result["fps"] == pytest.approx(2 * 1000 / result["mean_ms"])


def test_profile_model_script_runs():
    cmd = [sys.executable, "profile_model.py", "--model", "dsc", "--size", "64", "128",
           "--iters", "2", "--warmup", "1", "--device", "cpu"]
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "191,364" in result.stdout and "GFLOPs (2 x MACs)" in result.stdout
    assert "batch 1" in result.stdout
