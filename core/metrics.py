"""Confusion-matrix metrics, computed the way the official Cityscapes evaluator does.

The matrix is accumulated over the whole evaluation set (not averaged per image):
IoU_c = TP / (TP + FP + FN); mIoU = mean over classes with TP + FP + FN > 0 (classes that
never occur in labels nor predictions are NaN and left out); pixel accuracy = correct / valid
pixels, where label 255 is not valid.
"""
import math

import torch
import torch.distributed as dist

from core.labels import CLASS_NAMES, IGNORE_INDEX


class ConfusionMatrix:
    """`mat[t, p]` counts pixels of true class t predicted as p, on the tensors' device.

    One extra column (p = num_classes) counts predictions outside 0..num_classes-1 (for
    example 255 in a label map used as a prediction): wrong for their true class, and no
    class's false positive.
    """

    def __init__(self, num_classes, ignore_index=IGNORE_INDEX):
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.mat = torch.zeros(num_classes, num_classes + 1, dtype=torch.int64)

    def update(self, pred, target):
        """Add a batch of predicted and true class maps (same shape, any batch layout)."""
        if pred.shape != target.shape:
            raise ValueError(f"prediction shape {tuple(pred.shape)} differs from "
                             f"label shape {tuple(target.shape)}")
        n = self.num_classes
        self.mat = self.mat.to(target.device)
        target = target.reshape(-1).long()
        pred = pred.reshape(-1).long().to(target.device)
        valid = (target >= 0) & (target < n)  # drops ignore_index and any unknown label
        pred = torch.where((pred >= 0) & (pred < n), pred, n)
        # invalid pixels go to one extra bin, then dropped (2.5x faster on a CPU than
        # selecting the valid ones by boolean indexing)
        codes = torch.where(valid, target * (n + 1) + pred, n * (n + 1))
        counts = torch.bincount(codes, minlength=n * (n + 1) + 1)
        self.mat += counts[:-1].view(n, n + 1)

    def reduce(self):
        """Sum the matrix over all processes when running under torch.distributed."""
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(self.mat)
        return self

    def compute(self):
        """{'pixel_acc', 'miou', 'iou' (list, NaN for absent classes)} as fractions."""
        n = self.num_classes
        mat = self.mat.double().cpu()
        tp = mat.diag()
        per_true = mat.sum(1)            # TP + FN: every valid pixel of class t
        per_pred = mat[:, :n].sum(0)     # TP + FP: every pixel predicted as p
        union = per_true + per_pred - tp
        iou = torch.where(union > 0, tp / union.clamp(min=1), torch.full_like(tp, math.nan))
        valid_pixels = per_true.sum().item()
        present = ~torch.isnan(iou)
        return {
            "pixel_acc": tp.sum().item() / valid_pixels if valid_pixels else math.nan,
            "miou": iou[present].mean().item() if present.any() else math.nan,
            "iou": iou.tolist(),
        }


def format_table(result, class_names=CLASS_NAMES):
    """Per-class IoU table in percent, then mIoU and pixel accuracy."""
    width = max(len(name) for name in class_names)
    lines = [f"{'class':<{width}}  IoU (%)"]
    for name, iou in zip(class_names, result["iou"], strict=True):
        lines.append(f"{name:<{width}}  {'   n/a' if math.isnan(iou) else f'{100 * iou:6.2f}'}")
    lines.append(f"{'mIoU':<{width}}  {100 * result['miou']:6.2f}")
    lines.append(f"{'pixel acc':<{width}}  {100 * result['pixel_acc']:6.2f}")
    return "\n".join(lines)
