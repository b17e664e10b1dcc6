import math

import numpy as np
import pytest
import torch

from core.metrics import ConfusionMatrix, format_table


def numpy_scores(preds, targets, n, ignore=255):
    """Independent route: per-pixel python counting, no bincount."""
    mat = np.zeros((n, n), dtype=np.int64)
    for p, t in zip(np.concatenate([x.ravel() for x in preds]),
                    np.concatenate([x.ravel() for x in targets]), strict=True):
        if t != ignore:
            mat[t, p] += 1
    tp = np.diag(mat)
    union = mat.sum(0) + mat.sum(1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, tp / union, np.nan)
    return tp.sum() / mat.sum(), np.nanmean(iou), iou


def test_hand_computed_matrix():
    # 3 classes; labels row by row, one ignored pixel; class 2 never appears anywhere.
    target = torch.tensor([[0, 0, 1], [1, 1, 255]])
    pred = torch.tensor([[0, 1, 1], [0, 1, 2]])
    cm = ConfusionMatrix(3)
    cm.update(pred, target)
    r = cm.compute()
    # valid pixels: 5, correct: (0,0),(1,1),(1,1) -> 3
    assert r["pixel_acc"] == pytest.approx(3 / 5)
    # class 0: TP 1, FP 1 (a 1 predicted 0), FN 1 -> 1/3; class 1: TP 2, FP 1, FN 1 -> 2/4
    assert r["iou"][0] == pytest.approx(1 / 3)
    assert r["iou"][1] == pytest.approx(2 / 4)
    # class 2: predicted only on an ignored pixel -> TP+FP+FN = 0 -> NaN, left out of the mean
    assert math.isnan(r["iou"][2])
    assert r["miou"] == pytest.approx((1 / 3 + 1 / 2) / 2)


def test_absent_class_predicted_counts_as_zero():
    target = torch.tensor([0, 0, 0, 0])
    pred = torch.tensor([0, 0, 1, 1])
    cm = ConfusionMatrix(3)
    cm.update(pred, target)
    r = cm.compute()
    assert r["iou"][1] == 0.0  # false positives only: in the mean with IoU 0
    assert math.isnan(r["iou"][2])
    assert r["miou"] == pytest.approx((0.5 + 0.0) / 2)


def test_matches_independent_numpy_over_batches():
    g = np.random.default_rng(0)
    n = 19
    preds, targets = [], []
    cm = ConfusionMatrix(n)
    for _ in range(4):  # accumulate over several batches of a 4-D-ish layout
        t = g.integers(0, n - 3, size=(2, 9, 11))  # classes 16..18 never in labels
        t[g.random(t.shape) < 0.1] = 255
        noise = g.integers(0, n - 1, t.shape)
        p = np.where(g.random(t.shape) < 0.6, np.where(t == 255, 0, t), noise)
        preds.append(p)
        targets.append(t)
        cm.update(torch.from_numpy(p), torch.from_numpy(t))
    acc, miou, iou = numpy_scores(preds, targets, n)
    r = cm.compute()
    assert r["pixel_acc"] == pytest.approx(acc)
    assert r["miou"] == pytest.approx(miou)
    np.testing.assert_allclose(np.array(r["iou"]), iou, equal_nan=True)


def test_out_of_range_prediction_is_wrong_but_no_false_positive():
    cm = ConfusionMatrix(2)
    cm.update(torch.tensor([255, 1]), torch.tensor([0, 1]))
    r = cm.compute()
    assert r["pixel_acc"] == pytest.approx(0.5)
    assert r["iou"] == [0.0, 1.0]


def test_shape_mismatch_and_table():
    cm = ConfusionMatrix(19)
    with pytest.raises(ValueError, match="shape"):
        cm.update(torch.zeros(2, 3), torch.zeros(3, 2))
    cm.update(torch.zeros(4, dtype=torch.long), torch.zeros(4, dtype=torch.long))
    table = format_table(cm.compute())
    assert "road" in table and "100.00" in table and "n/a" in table
