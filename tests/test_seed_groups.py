"""evaluate.py --group-by-seed: runs that differ only in --seed fold into one row of mean,
sample standard deviation and n; any other difference keeps runs apart."""
import json
import math
import warnings

import numpy as np
import pytest
import torch

import evaluate
from core import seed_groups
from core.checkpoint import save_checkpoint
from core.labels import CLASS_NAMES
from core.models import build_model, model_options


@pytest.fixture(scope="module")
def runs(tiny_demo, tmp_path_factory):
    """Four checkpoints of the same recipe: seeds 1, 2, 3 (the seed draws the initial weights),
    and seed 1 with another learning rate. Stored args as a training script stores them."""
    root = tmp_path_factory.mktemp("runs")
    paths = []
    for name, seed, lr in (("s1", 1, 0.025), ("s2", 2, 0.025), ("s3", 3, 0.025),
                           ("lr_s1", 1, 0.01)):
        out = root / name
        args = {"model": "bisenet", "backbone": "resnet18", "pretrained": "none",
                "val_root": str(tiny_demo.target), "val_size": (64, 128), "lr": lr,
                "epochs": 1, "seed": seed, "out": str(out), "resume": None, "workers": 0,
                "device": "auto"}
        torch.manual_seed(seed)
        model = build_model("bisenet", 19, "resnet18", "none", **model_options(args))
        for m in model.modules():    # eval-mode statistics that differ from seed to seed
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.3, 0.3)
        save_checkpoint({"model": model.state_dict(), "args": args}, out / "best.pth")
        paths.append(str(out / "best.pth"))
    return paths


def nan_equal(a, b):
    """a: a score read from the JSON (null where undefined), b: the expected value (NaN)."""
    return (a is None and math.isnan(b)) or a == pytest.approx(b, rel=1e-12, abs=1e-15)


def test_seed_groups_are_mean_std_n_of_the_single_runs(runs, tmp_path, capsys):
    common = ["--workers", "0", "--device", "cpu"]
    evaluate.main(evaluate.parse_args([*runs, *common, "--json", str(tmp_path / "one.json")]))
    single = json.loads((tmp_path / "one.json").read_text())
    capsys.readouterr()
    evaluate.main(evaluate.parse_args([*runs, *common, "--group-by-seed", "--markdown",
                                       "--json", str(tmp_path / "groups.json")]))
    printed = capsys.readouterr().out
    groups = json.loads((tmp_path / "groups.json").read_text())

    assert [g["n"] for g in groups] == [3, 1]
    seeds, other = groups
    assert seeds["checkpoints"] == runs[:3] and seeds["seeds"] == [1, 2, 3]
    assert seeds["checkpoint"] == runs[0].replace("/s1/", "/s{1,2,3}/")
    assert other["checkpoints"] == runs[3:] and other["checkpoint"] == runs[3]
    for key in ("miou", "pixel_acc"):
        values = np.array([r[key] for r in single[:3]])
        assert len(set(values)) > 1                          # the seeds really differ
        assert seeds[key] == pytest.approx(values.mean(), rel=1e-12)
        assert seeds[f"{key}_std"] == pytest.approx(values.std(ddof=1), rel=1e-9)
        assert other[key] == single[3][key] and other[f"{key}_std"] is None   # JSON null
    per_class = np.array([[r["iou"][c] for c in CLASS_NAMES] for r in single[:3]],
                         dtype=np.float64)                       # null -> NaN
    with warnings.catch_warnings():   # a class no run scores: its mean is NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        means, stds = np.nanmean(per_class, 0), np.nanstd(per_class, 0, ddof=1)
    for c, name in enumerate(CLASS_NAMES):
        assert nan_equal(seeds["iou"][name], means[c])
        scored = int((~np.isnan(per_class[:, c])).sum())
        assert nan_equal(seeds["iou_std"][name], stds[c] if scored > 1 else math.nan)

    row = (f"| {seeds['checkpoint']} | 1, 2, 3 | 3 | 64x128 | "
           f"{100 * seeds['pixel_acc']:.2f} ± {100 * seeds['pixel_acc_std']:.2f} | "
           f"{100 * seeds['miou']:.2f} ± {100 * seeds['miou_std']:.2f} |")
    assert row in printed
    assert f"| {runs[3]} | 1 | 1 | 64x128 | {100 * other['pixel_acc']:.2f} | " in printed


def test_group_by_seed_refuses_an_ensemble(runs, capsys):
    with pytest.raises(SystemExit):
        evaluate.parse_args([runs[0], "--ensemble", *runs[1:], "--group-by-seed"])
    assert "--group-by-seed scores each checkpoint on its own" in capsys.readouterr().err


def test_brace_names():
    assert seed_groups.brace_names(["runs/a_s1/best.pth", "runs/a_s22/best.pth"]) == \
        "runs/a_s{1,22}/best.pth"
    assert seed_groups.brace_names(["x/best.pth"]) == "x/best.pth"
