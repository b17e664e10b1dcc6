"""Losses: segmentation (CE, focal, class-weighted CE), STDC detail, adversarial BCE, target
entropy.

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
    """Sum of the criterion over the main and auxiliary outputs (BiSeNet: main + aux16 + aux32),
    plus STDC's detail loss when the outputs carry detail logits (`outputs.detail`, see
    core/models/stdc.py TrainOutputs): STDC-Seg's loss = main + aux8 + aux16 + detail, all
    weighted 1 as in the authors' train.py. Applied to pseudo labels, the detail target is
    their boundaries, those of the ignored (255) regions included, as for source labels."""
    loss = sum(criterion(logits, target) for logits in outputs)
    detail = getattr(outputs, "detail", None)
    if detail is not None:
        loss = loss + detail_loss(detail, target)
    return loss


# STDC detail guidance (Fan et al. 2021, sec. 3.2 "Detail Guidance of Low-level Features";
# the authors' loss/detail_loss.py).
LAPLACIAN = ((-1.0, -1.0, -1.0), (-1.0, 8.0, -1.0), (-1.0, -1.0, -1.0))
DETAIL_STRIDES, DETAIL_FUSE = (1, 2, 4), (0.6, 0.3, 0.1)


def detail_target(labels):
    """STDC's binary detail ground truth (N x 1 x H x W) from train-id labels (N x H x W).

    As the authors compute it: the Laplacian of the label map taken as numbers (255 included;
    zero padding, so image borders of classes > 0 count as edges) at strides 1, 2 and 4,
    clamped at 0, upsampled (nearest) to full size and binarised (> 0.1); the three fused
    with weights 0.6, 0.3, 0.1 and binarised again (> 0.1). A pixel that is an edge only at
    stride 4 scores exactly 0.1 and is dropped, so the target is the stride-1 or stride-2
    boundary. Here the fuse weights are constants. (The authors' are an nn.Parameter,
    loss/detail_loss.py, whose gradient the thresholding makes zero, but optimizer_loss.py
    puts it in an SGD group with weight decay 5e-4, so they shrink, to 0.21 of these values
    over their 60k-iteration schedule. Edges at stride 2 but not at stride 1 then leave
    their target once 0.3 (0.4 with a stride-4 edge too) times that factor falls to 0.1, from
    about iteration 28.8k (41.4k): their late target is the stride-1 boundary alone. Not
    reproduced.)
    """
    x = labels[:, None].float()
    kernel = torch.tensor(LAPLACIAN, device=x.device).view(1, 1, 3, 3)
    fused = torch.zeros_like(x)
    for stride, weight in zip(DETAIL_STRIDES, DETAIL_FUSE, strict=True):
        edges = F.conv2d(x, kernel, stride=stride, padding=1).clamp(min=0)
        edges = F.interpolate(edges, size=x.shape[-2:], mode="nearest")
        fused = fused + weight * (edges > 0.1).float()
    return (fused > 0.1).float()


def dice_loss(probs, target, smooth=1.0):
    """1 - (2 sum(p g) + 1) / (sum p + sum g + 1) per image, averaged over the batch: the
    authors' dice_loss_func (plain sums, smooth 1), the code behind the paper's results."""
    p, g = probs.flatten(1), target.flatten(1)
    return (1 - (2 * (p * g).sum(1) + smooth) / (p.sum(1) + g.sum(1) + smooth)).mean()


def detail_loss(detail_logits, labels):
    """L_detail = L_dice + L_bce (Fan et al. 2021, sec. 3.2), weight 1, between the detail
    head's logits, upsampled bilinearly (align_corners=True) to the label size, and
    detail_target(labels). In float32 even under autocast (exact Laplacian of the ids)."""
    with torch.autocast(detail_logits.device.type, enabled=False):
        target = detail_target(labels)
        logits = F.interpolate(detail_logits.float(), size=target.shape[-2:],
                               mode="bilinear", align_corners=True)
        bce = F.binary_cross_entropy_with_logits(logits, target)
        return bce + dice_loss(torch.sigmoid(logits), target)


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
