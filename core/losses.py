"""Losses: segmentation (CE, focal, class-weighted CE), adversarial BCE, target entropy.

Every segmentation loss is a mean over the labelled pixels, and 0 (not NaN) for a batch
with none (AdaptSegNet's CrossEntropy2d does the same), so one all-ignore label cannot stop
a run.
"""
import math

import torch
import torch.nn.functional as F

from core.errors import ConfigError
from core.labels import IGNORE_INDEX, NUM_CLASSES

SEG_LOSSES = ("ce", "focal", "weighted-ce")


def cross_entropy(logits, target, weight=None, ignore_index=IGNORE_INDEX):
    """Pixel cross-entropy, (weighted) mean over labelled pixels; 0 when there are none."""
    valid = target != ignore_index
    total = F.cross_entropy(logits.float(), target, weight=None if weight is None else
                            weight.to(logits.device), ignore_index=ignore_index, reduction="sum")
    if weight is None:
        norm = valid.sum().clamp(min=1).float()
    else:
        norm = weight.to(logits.device)[target[valid]].sum().clamp(min=1e-12)
    return total / norm


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
        return lambda logits, target: cross_entropy(logits, target, ignore_index=ignore_index)
    if name == "focal":
        return lambda logits, target: focal_loss(
            logits, target, gamma=gamma, alpha=class_weights, ignore_index=ignore_index)
    if name == "weighted-ce":
        if class_weights is None:
            raise ValueError("--loss weighted-ce needs class weights from label counts")
        return lambda logits, target: cross_entropy(logits, target, class_weights, ignore_index)
    raise ConfigError(f"unknown --loss {name!r}; choose one of {', '.join(SEG_LOSSES)}")


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


def label_counts(dataset, max_images=500):
    """Labelled pixels per class over (an evenly spaced subset of) a dataset."""
    step = max(1, len(dataset) // max_images)
    counts = torch.zeros(NUM_CLASSES, dtype=torch.int64)
    for i in range(0, len(dataset), step):
        label = dataset[i]["label"].reshape(-1).long()
        counts += torch.bincount(label[label < NUM_CLASSES], minlength=NUM_CLASSES)
    return counts


def build_criterion(args, train_set):
    """--loss ce | focal | weighted-ce; class weights come from the source label frequencies."""
    weights = None
    if args.loss == "weighted-ce":
        weights = class_weights_from_counts(label_counts(train_set))
    return build_seg_loss(args.loss, gamma=args.focal_gamma, class_weights=weights)
