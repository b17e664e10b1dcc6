"""Class-wise confidence thresholds for self-training pseudo labels (BDL, Li et al. CVPR 2019).

The official BDL / FDA scripts predict the whole target set, keep every max-probability in
memory, and per class c take the value at index round(q * n_c) of the sorted probabilities of
the n_c pixels predicted c (BDL q = 0.5; FDA's `getSudoLabel_multi.py` q = 0.66), capped at
0.9; pixels with prob < threshold[label] become 255. That is ~25 GB for Cityscapes train.
`ProbHistogram` gets the thresholds from a per-class histogram in constant memory. They are
not the same: each is the lower edge of the bin holding the exact order statistic, so up to one
bin width (1e-4 by default) below it, and the pseudo labels keep a superset of the official
pixels (the extra ones lie within that bin):

    hist = ProbHistogram()
    for logits in predictions:                 # first pass over the target set
        prob, label = logits.softmax(1).max(1)
        hist.update(prob, label)
    thresholds = hist.thresholds(quantile=0.5, cap=0.9)
    pseudo = apply_thresholds(label, prob, thresholds)   # second pass (or cached labels)

Several processes: `torch.distributed.all_reduce(hist.counts)` (or `hist.merge(other)`).
"""
import json

import torch

from core.errors import ConfigError
from core.labels import CLASS_NAMES, IGNORE_INDEX, NUM_CLASSES


class ProbHistogram:
    """Per-class histogram of the max softmax probability of the pixels predicted as that class.

    `counts[c, j]` is the number of pixels with label c and prob in bin j, where bin j is
    [edges[j], edges[j+1]) with edges = j / bins rounded to float32 (the last bin includes
    1.0). Pixels are binned with `torch.bucketize` against these exact float32 edges, so
    "prob >= edges[j]" holds for every pixel in bins >= j with no rounding surprises.

    Threshold rule (see `thresholds`): we return the LOWER edge of the bin that holds the
    exact sorted-array value. Hence threshold <= exact value < threshold + 1/bins: every pixel
    the official rule keeps is kept, plus only pixels within one bin width (1e-4 by default)
    below the exact value. Exact for float32/float16/bfloat16 probabilities; float64 inputs
    are rounded to float32 first.
    """

    def __init__(self, num_classes=NUM_CLASSES, bins=10000, device=None):
        self.num_classes = num_classes
        self.bins = bins
        self.counts = torch.zeros(num_classes, bins, dtype=torch.long, device=device)
        self._edges = None  # float32 bin edges, cached on counts' device

    @property
    def edges(self):
        """bins + 1 float32 edges j / bins, on the device of `counts`."""
        if self._edges is None or self._edges.device != self.counts.device:
            self._edges = (torch.arange(self.bins + 1, dtype=torch.float64) / self.bins).to(
                device=self.counts.device, dtype=torch.float32)
        return self._edges

    @torch.no_grad()
    def update(self, prob, label):
        """Add a batch: prob (B, H, W) max softmax in [0, 1], label (B, H, W) its argmax.

        Pixels whose label is outside 0..num_classes-1 (e.g. 255) are skipped. Counting
        happens on the tensors' device; `counts` moves there on the first call.
        """
        if prob.shape != label.shape:
            raise ValueError(f"prob {tuple(prob.shape)} and label {tuple(label.shape)} differ")
        if self.counts.device != prob.device:
            self.counts = self.counts.to(prob.device)
        prob, label = prob.reshape(-1).float(), label.reshape(-1).to(prob.device).long()
        valid = (label >= 0) & (label < self.num_classes)
        prob, label = prob[valid], label[valid]
        # bucketize(right=True) = number of edges <= p, so edges[j] <= p < edges[j+1] -> j
        bin_idx = (torch.bucketize(prob, self.edges, right=True) - 1).clamp_(0, self.bins - 1)
        flat = label * self.bins + bin_idx
        self.counts += torch.bincount(flat, minlength=self.num_classes * self.bins).view_as(
            self.counts)

    def thresholds(self, quantile=0.5, cap=0.9):
        """Per-class threshold, float32 tensor [num_classes] on the device of `counts`.

        For the n_c probabilities of class c sorted ascending, the official value is
        sorted[k] with k = round(quantile * n_c) (numpy's round-half-to-even, computed in
        float64 as numpy does), clamped to n_c - 1 (FDA's q = 0.66 would index past the end
        for n_c = 1). We return the lower edge of the bin holding sorted[k] (see the class
        docstring), then min(threshold, cap).

        A class with no pixel gets 0, as in the official scripts (`if len(x) == 0:
        thres.append(0)`): nothing to filter on this set, and on other images that class is
        kept whole.
        """
        n = self.counts.sum(1)
        k = torch.round(n.double() * quantile).long().clamp(max=n - 1).clamp(min=0)
        # first bin whose cumulative count exceeds k, i.e. the bin holding sorted[k]
        cum = self.counts.cumsum(1)
        j = torch.searchsorted(cum, k.unsqueeze(1), right=True).squeeze(1).clamp(max=self.bins - 1)
        thr = self.edges[j].clamp(max=cap)
        return torch.where(n > 0, thr, torch.zeros_like(thr))

    def kept_fraction(self, thresholds):
        """Per class, the share of its predicted pixels with prob >= thresholds[c].

        Exact when the threshold is a bin edge (as those from `thresholds` are, and cap 0.9
        with the default bins); otherwise the bin that holds the threshold is counted as
        dropped, a lower bound. NaN for a class with no pixel.
        """
        thr = thresholds.to(device=self.counts.device, dtype=torch.float32)
        kept_bins = self.edges[:-1].unsqueeze(0) >= thr.unsqueeze(1)  # (C, bins)
        kept = (self.counts * kept_bins).sum(1)
        return kept.double() / self.counts.sum(1).double()

    def merge(self, other):
        """Add another histogram's counts (e.g. gathered from another process)."""
        if other.counts.shape != self.counts.shape:
            raise ValueError(f"histogram shapes differ: {tuple(other.counts.shape)} vs "
                             f"{tuple(self.counts.shape)}")
        self.counts += other.counts.to(self.counts.device)
        return self

    def state_dict(self):
        return {"num_classes": self.num_classes, "bins": self.bins, "counts": self.counts.cpu()}

    def load_state_dict(self, state):
        if (state["num_classes"], state["bins"]) != (self.num_classes, self.bins):
            raise ValueError(f"state has {state['num_classes']} classes x {state['bins']} bins, "
                             f"this histogram {self.num_classes} x {self.bins}")
        self.counts = state["counts"].to(device=self.counts.device, dtype=torch.long).clone()


def apply_thresholds(label, prob, thresholds, ignore_index=IGNORE_INDEX):
    """Pseudo label: `label` as uint8, with `ignore_index` where prob < thresholds[label].

    Labels already outside 0..C-1 (e.g. 255) become `ignore_index` too. Shapes of label and
    prob match (any shape); thresholds is a [C] tensor (from `ProbHistogram.thresholds`).
    """
    thresholds = torch.as_tensor(thresholds, device=label.device)
    label = label.long()
    valid = (label >= 0) & (label < thresholds.numel())
    thr = thresholds[label.clamp(0, thresholds.numel() - 1)]
    keep = valid & (prob.to(label.device) >= thr)
    return torch.where(keep, label, torch.full_like(label, ignore_index)).to(torch.uint8)


def read_thresholds(path):
    """The per-class thresholds (train-id order) of a thresholds.json written by gen_pseudo.py:
    {"classes": {name: {"threshold": t, ...}, ...}, ...}."""
    try:
        with open(path) as f:
            classes = json.load(f)["classes"]
        return [float(classes[c]["threshold"]) for c in CLASS_NAMES]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ConfigError(f"--thresholds {path}: not a readable thresholds.json of "
                          f"gen_pseudo.py ({type(e).__name__}: {e})") from e
