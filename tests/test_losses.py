import math

import pytest
import torch
import torch.nn.functional as F

from core.losses import (
    bce_domain_loss,
    build_seg_loss,
    charbonnier_entropy,
    class_weights_from_counts,
    focal_loss,
    seg_loss_sum,
)


def test_focal_equals_ce_when_gamma_zero():
    torch.manual_seed(0)
    logits = torch.randn(2, 19, 5, 7)
    target = torch.randint(0, 19, (2, 5, 7))
    target[0, 0, :3] = 255
    ce = F.cross_entropy(logits, target, ignore_index=255)
    assert focal_loss(logits, target, gamma=0.0) == pytest.approx(ce.item(), rel=1e-6)


def test_focal_by_hand():
    # two pixels, two classes: p_t = softmax of the true class
    logits = torch.tensor([[[[2.0, 0.0]], [[0.0, 1.0]]]])  # B=1, C=2, H=1, W=2
    target = torch.tensor([[[0, 0]]])
    p0 = math.exp(2) / (math.exp(2) + 1)
    p1 = 1 / (1 + math.e)
    expected = (-(1 - p0) ** 2 * math.log(p0) - (1 - p1) ** 2 * math.log(p1)) / 2
    assert focal_loss(logits, target, gamma=2.0) == pytest.approx(expected, rel=1e-6)
    alpha = torch.tensor([0.25, 4.0])
    assert focal_loss(logits, target, gamma=2.0, alpha=alpha) == pytest.approx(
        0.25 * expected, rel=1e-6)


def test_focal_lowers_weight_of_easy_pixels():
    logits = torch.tensor([[[[5.0]], [[0.0]]]])
    target = torch.tensor([[[0]]])
    assert focal_loss(logits, target, gamma=2.0) < 1e-3 * F.cross_entropy(logits, target)


def test_weighted_ce_and_weights():
    w = class_weights_from_counts([90, 10, 0])
    assert w[2] == 0 and w[1] > w[0] > 0
    assert w[0] == pytest.approx(1 / math.log(1.02 + 0.9), rel=1e-6)
    logits = torch.randn(1, 3, 4, 4)
    target = torch.randint(0, 2, (1, 4, 4))
    loss = build_seg_loss("weighted-ce", class_weights=w)(logits, target)
    assert loss == pytest.approx(F.cross_entropy(logits, target, weight=w).item(), rel=1e-6)
    with pytest.raises(ValueError, match="--loss"):
        build_seg_loss("dice")


def test_seg_loss_sum_adds_aux_heads():
    crit = build_seg_loss("ce")
    target = torch.randint(0, 19, (1, 4, 4))
    outs = tuple(torch.randn(1, 19, 4, 4) for _ in range(3))
    assert seg_loss_sum(crit, outs, target) == pytest.approx(
        sum(F.cross_entropy(o, target).item() for o in outs), rel=1e-6)


def test_bce_domain_loss():
    d = torch.tensor([[[[0.0, 2.0]]]])
    assert bce_domain_loss(d, 1) == pytest.approx(
        (math.log(2) + math.log(1 + math.exp(-2))) / 2, rel=1e-6)
    assert bce_domain_loss(d, 0) == pytest.approx(
        (math.log(2) + math.log(1 + math.exp(2))) / 2, rel=1e-6)


def test_charbonnier_entropy_formula():
    # uniform prediction: normalised entropy 1 -> (1 + 1e-8)^eta; one-hot-ish: near 0
    uniform = torch.zeros(1, 19, 1, 1)
    assert charbonnier_entropy(uniform, eta=2.0) == pytest.approx((1 + 1e-8) ** 2, rel=1e-6)
    logits = torch.tensor([1.0, 2.0, 0.5]).view(1, 3, 1, 1)
    p = torch.softmax(logits.view(-1), 0)
    h = float(-(p * p.log()).sum() / math.log(3))
    assert charbonnier_entropy(logits, eta=2.0) == pytest.approx((h * h + 1e-8) ** 2, rel=1e-5)
    assert charbonnier_entropy(logits, eta=0.5) == pytest.approx((h * h + 1e-8) ** 0.5, rel=1e-5)
