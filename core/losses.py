"""Losses: segmentation (CE, focal, class-weighted CE), adversarial BCE, target entropy."""
import math

import torch
import torch.nn.functional as F

from core.labels import IGNORE_INDEX

SEG_LOSSES = ("ce", "focal", "weighted-ce")


def focal_loss(logits, target, gamma=2.0, alpha=None, ignore_index=IGNORE_INDEX):
    """Focal loss (Lin et al. 2017, Eq. 5): FL = -alpha_t (1 - p_t)^gamma log p_t.

    Averaged over non-ignored pixels; gamma = 0 and no alpha give plain cross-entropy.
    `alpha` is an optional per-class weight tensor.
    """
    log_p = F.log_softmax(logits.float(), dim=1)
    valid = target != ignore_index
    safe_target = torch.where(valid, target, 0).unsqueeze(1)
    log_pt = log_p.gather(1, safe_target).squeeze(1)
    loss = -((1 - log_pt.exp()) ** gamma) * log_pt
    if alpha is not None:
        loss = loss * alpha.to(loss.device)[safe_target.squeeze(1)]
    return loss[valid].sum() / valid.sum().clamp(min=1)


def class_weights_from_counts(counts, eps=1.02):
    """Class weights for imbalance, 1 / ln(eps + frequency) (ENet, Paszke et al. 2016, 5.2).

    `counts` holds the number of labelled pixels per class; absent classes get weight 0.
    """
    counts = torch.as_tensor(counts, dtype=torch.float64)
    freq = counts / counts.sum().clamp(min=1)
    weights = 1.0 / torch.log(eps + freq)
    return torch.where(counts > 0, weights, torch.zeros_like(weights)).float()


def build_seg_loss(name, gamma=2.0, class_weights=None, ignore_index=IGNORE_INDEX):
    """Segmentation criterion `loss(logits, target)` for --loss ce | focal | weighted-ce."""
    if name == "ce":
        return lambda logits, target: F.cross_entropy(
            logits.float(), target, ignore_index=ignore_index)
    if name == "focal":
        return lambda logits, target: focal_loss(
            logits, target, gamma=gamma, alpha=class_weights, ignore_index=ignore_index)
    if name == "weighted-ce":
        if class_weights is None:
            raise ValueError("--loss weighted-ce needs class weights from label counts")
        return lambda logits, target: F.cross_entropy(
            logits.float(), target, weight=class_weights.to(logits.device),
            ignore_index=ignore_index)
    raise ValueError(f"unknown --loss {name!r}; choose one of {', '.join(SEG_LOSSES)}")


def seg_loss_sum(criterion, outputs, target):
    """Sum of the criterion over the main and auxiliary outputs (BiSeNet: main + aux16 + aux32)."""
    return sum(criterion(logits, target) for logits in outputs)


def bce_domain_loss(d_logits, domain_label):
    """BCE-with-logits of discriminator outputs against a constant domain label (0 or 1)."""
    return F.binary_cross_entropy_with_logits(
        d_logits.float(), torch.full_like(d_logits, float(domain_label), dtype=torch.float32))


def charbonnier_entropy(logits, eta=2.0):
    """FDA's entropy loss on target predictions (Yang & Soatto 2020, Eq. 4 and their code).

    H = -(p log p).sum(classes) / ln(C) per pixel, normalised to [0, 1];
    L_ent = mean((H^2 + 1e-8)^eta).
    """
    log_p = F.log_softmax(logits.float(), dim=1)
    entropy = -(log_p.exp() * log_p).sum(1) / math.log(logits.shape[1])
    return ((entropy ** 2 + 1e-8) ** eta).mean()
