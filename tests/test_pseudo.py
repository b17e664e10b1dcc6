"""Streaming class-wise thresholds against the official sorted-array rule, written in numpy."""
import numpy as np
import pytest
import torch

from core.pseudo import ProbHistogram, apply_thresholds

C = 5


def official_thresholds(prob, label, num_classes, quantile, cap):
    """The BDL / FDA scripts: sort each class's probabilities, take x[round(q * n)], cap."""
    thres = []
    for c in range(num_classes):
        x = prob[label == c]
        if len(x) == 0:
            thres.append(0.0)
            continue
        x = np.sort(x)
        thres.append(x[min(int(np.round(len(x) * quantile)), len(x) - 1)])
    thres = np.array(thres)
    thres[thres > cap] = cap
    return thres


def random_predictions(seed, batches=4, shape=(2, 16, 24), absent=(3,)):
    """Per-class skewed probabilities, streamed in several batches; classes in `absent` never
    appear, and class 4 is predicted by exactly one pixel."""
    rng = np.random.default_rng(seed)
    probs, labels = [], []
    for _ in range(batches):
        label = rng.choice([c for c in range(C) if c not in absent and c != 4], size=shape)
        prob = rng.beta(2 + label, 2, size=shape).astype(np.float32)  # a different law per class
        probs.append(prob)
        labels.append(label)
    labels[1][0, 3, 5], probs[1][0, 3, 5] = 4, np.float32(0.4321)
    return probs, labels


def streamed_histogram(probs, labels, **kwargs):
    hist = ProbHistogram(num_classes=C, **kwargs)
    for prob, label in zip(probs, labels, strict=True):
        hist.update(torch.from_numpy(prob), torch.from_numpy(label))
    return hist


@pytest.mark.parametrize("quantile", [0.5, 0.66])
def test_thresholds_match_official_rule(quantile):
    probs, labels = random_predictions(0)
    hist = streamed_histogram(probs, labels)
    all_prob, all_label = np.concatenate([p.ravel() for p in probs]), np.concatenate(
        [lab.ravel() for lab in labels])
    exact = official_thresholds(all_prob, all_label, C, quantile, cap=1.0)
    got = hist.thresholds(quantile=quantile, cap=1.0).numpy()
    assert got.dtype == np.float32 and got.shape == (C,)
    np.testing.assert_allclose(got, exact, rtol=0, atol=1e-3)
    assert (got <= exact).all()  # lower bin edge: never above the exact value ...
    present = exact > 0
    # ... and keeps no more than the pixels within one bin width below it
    assert (exact[present] - got[present] < 1 / hist.bins).all()
    for c in range(C):  # every pixel the official rule keeps is kept
        x = all_prob[all_label == c]
        assert (x >= exact[c]).sum() <= (x >= got[c]).sum()


def test_cap_absent_class_and_single_pixel():
    probs, labels = random_predictions(1)
    hist = streamed_histogram(probs, labels)
    thr = hist.thresholds(quantile=0.5, cap=0.6)
    assert thr[3] == 0.0                      # absent: 0, as the official scripts
    assert abs(thr[4].item() - 0.4321) < 1e-3 and thr[4] <= 0.4321  # n = 1 -> that pixel
    assert thr.max() <= 0.6 and (thr == torch.tensor(0.6)).any()      # classes with high medians
    # q = 0.66 on one pixel: round(0.66) = 1 is past the end; clamped to the last element
    assert abs(hist.thresholds(quantile=0.66)[4].item() - 0.4321) < 1e-3


def test_rounding_is_half_to_even_like_numpy():
    # 3 pixels of class 0 at q = 0.5: np.round(1.5) = 2 -> the largest; 5 at q = 0.5: round(2.5)
    # = 2 -> the median (Python's round(2.5) is 2 as well; floor(x + 0.5) would give 3)
    hist = ProbHistogram(num_classes=2)
    hist.update(torch.tensor([[0.1, 0.2, 0.3]]), torch.tensor([[0, 0, 0]]))
    assert abs(hist.thresholds()[0].item() - 0.3) < 1e-3
    hist.update(torch.tensor([[0.4, 0.5]]), torch.tensor([[0, 0]]))
    assert abs(hist.thresholds()[0].item() - 0.3) < 1e-3


def test_edges_probability_one_and_ignored_labels():
    hist = ProbHistogram(num_classes=2, bins=10)
    prob = torch.tensor([[1.0, 0.3, 0.0, 0.95, 0.5]])
    label = torch.tensor([[0, 0, 1, 255, 1]])
    hist.update(prob, label)
    assert hist.counts.sum() == 4  # the 255 pixel is skipped
    assert hist.counts[0, 9] == 1 and hist.counts[0, 3] == 1  # 1.0 in the last bin; 0.3 exact
    assert hist.counts[1, 0] == 1 and hist.counts[1, 5] == 1
    # bin edges are exact float32 values: 0.3 sits at the lower edge of its bin, not below
    assert hist.thresholds(quantile=0.0, cap=1.0)[0] == np.float32(0.3)


def test_kept_fraction_merge_and_state_dict():
    probs, labels = random_predictions(2)
    hist = streamed_histogram(probs, labels)
    thr = hist.thresholds(quantile=0.5, cap=0.9)
    all_prob = np.concatenate([p.ravel() for p in probs])
    all_label = np.concatenate([lab.ravel() for lab in labels])
    kept = hist.kept_fraction(thr)
    for c in (0, 1, 2, 4):
        x = all_prob[all_label == c]
        assert kept[c].item() == pytest.approx((x >= thr[c].item()).mean())
    assert torch.isnan(kept[3])
    # two half-streams merged == one stream (what an all-reduce of `counts` does)
    first, second = streamed_histogram(probs[:2], labels[:2]), streamed_histogram(probs[2:],
                                                                                  labels[2:])
    assert torch.equal(first.merge(second).counts, hist.counts)
    restored = ProbHistogram(num_classes=C)
    restored.load_state_dict(hist.state_dict())
    assert torch.equal(restored.thresholds(), hist.thresholds())
    with pytest.raises(ValueError):
        ProbHistogram(num_classes=C, bins=100).load_state_dict(hist.state_dict())


def test_apply_thresholds_hand_made():
    label = torch.tensor([[0, 1, 2], [2, 255, 1]])
    prob = torch.tensor([[0.50, 0.20, 0.89], [0.91, 0.99, 0.70]])
    thresholds = torch.tensor([0.5, 0.3, 0.9])
    out = apply_thresholds(label, prob, thresholds)
    assert out.dtype == torch.uint8
    # 0.50 >= 0.5 kept; 0.20 < 0.3 dropped; 0.89 < 0.9 dropped; 0.91 kept; 255 stays; 0.7 kept
    assert out.tolist() == [[0, 255, 255], [2, 255, 1]]


def test_end_to_end_against_official_labels():
    probs, labels = random_predictions(3)
    hist = streamed_histogram(probs, labels)
    thr = hist.thresholds(quantile=0.66, cap=0.9)
    all_prob = np.concatenate([p.ravel() for p in probs])
    all_label = np.concatenate([lab.ravel() for lab in labels])
    exact = official_thresholds(all_prob, all_label, C, 0.66, cap=0.9)
    for prob, label in zip(probs, labels, strict=True):
        ours = apply_thresholds(torch.from_numpy(label), torch.from_numpy(prob), thr).numpy()
        official = label.copy()
        for c in range(C):
            official[(prob < exact[c]) * (label == c)] = 255
        # identical except pixels within one bin width below the exact threshold
        differ = ours != official
        assert (official[differ] == 255).all()
        assert (exact[label[differ]] - prob[differ] < 1 / hist.bins).all()
