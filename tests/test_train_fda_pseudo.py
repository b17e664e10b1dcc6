"""train_fda.py, gen_pseudo.py and the self-training round on a tiny demo pair (CPU)."""
import json
import shutil

import numpy as np
import pytest
import torch
from conftest import tiny_args
from PIL import Image

import gen_pseudo
import train_fda
from core.datasets import Cityscapes, PseudoLabelDataset
from core.evaluation import load_model, predict_probs
from core.models import build_model
from core.translate import fda_source_to_target


@pytest.fixture(scope="module")
def fda_run(tiny_demo, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "fda"
    train_fda.main(train_fda.parse_args(tiny_args(
        tiny_demo, out, "--beta", 0.05, "--epochs", 2, "--iters-per-epoch", 3, target=True)))
    return out


def test_fda_run_logs_entropy_and_checkpoints(fda_run):
    log = [json.loads(x) for x in (fda_run / "metrics.jsonl").read_text().splitlines()]
    assert log[0]["args"]["beta"] == 0.05 and log[0]["args"]["translate"] == "fda"
    assert all({"loss_seg", "loss_ent", "val_miou"} <= set(e) for e in log[1:])
    assert (fda_run / "best.pth").exists() and (fda_run / "last.pth").exists()


def fda_step_grads(tmp_path, monkeypatch=None, **overrides):
    """Segmenter gradients after one step of FDA's losses from a fixed model and batch (at
    iteration 0: ent_start > 0 switches the entropy off)."""
    settings = {"translate": "fda", "beta": 0.09, "eta": 2.0, "ent_weight": 0.5,
                "ent_start": 0, "lambda_pseudo": 1.0, "pseudo": None, **overrides}
    torch.manual_seed(0)
    model = build_model("bisenet", 19, "resnet18").train()
    g = torch.Generator().manual_seed(1)
    source = {"image": torch.randint(0, 256, (2, 3, 64, 96), dtype=torch.uint8, generator=g),
              "label": torch.randint(0, 19, (2, 64, 96), generator=g)}
    target = {"image": torch.randint(0, 256, (2, 3, 32, 48), dtype=torch.uint8, generator=g)}
    total, losses = train_fda.fda_losses(
        model, torch.nn.CrossEntropyLoss(), source, target, method=settings["translate"],
        beta=settings["beta"], eta=settings["eta"], lambda_pseudo=settings["lambda_pseudo"],
        ent_weight=settings["ent_weight"] if settings["ent_start"] <= 0 else 0.0)
    total.backward()
    return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]), \
        losses


def test_train_step_translates_source_and_adds_weighted_entropy(tmp_path, monkeypatch):
    seen = {}
    real = train_fda.fda_source_to_target

    def spy(src, trg, beta, **window):
        seen["beta"], seen["shapes"] = beta, (src.shape, trg.shape)
        return real(src, trg, beta, **window)
    monkeypatch.setattr(train_fda, "fda_source_to_target", spy)
    with_ent, losses = fda_step_grads(tmp_path)
    assert seen["beta"] == 0.09
    assert seen["shapes"][0] == seen["shapes"][1] == (2, 3, 64, 96)  # target resized to source
    assert {"loss_seg", "loss_ent"} <= set(losses)
    # L = CE + w * L_ent (FDA Eq. 5): the entropy term's gradient scales with w, and
    # --ent-start switches it off before that iteration.
    before_start, _ = fda_step_grads(tmp_path, ent_start=1)
    doubled, _ = fda_step_grads(tmp_path, ent_weight=1.0)
    ent_part = with_ent - before_start
    assert ent_part.abs().max() > 1e-6
    torch.testing.assert_close(doubled - before_start, 2 * ent_part, rtol=1e-3, atol=1e-6)
    no_weight, _ = fda_step_grads(tmp_path, ent_weight=0.0)
    torch.testing.assert_close(no_weight, before_start, rtol=0, atol=0)


def test_translate_is_fda_of_the_raw_pixels():
    src = torch.rand(1, 3, 16, 24) * 255
    trg = torch.rand(1, 3, 16, 24) * 255
    assert torch.allclose(train_fda.translate(src, trg, method="fda", beta=0.1),
                          fda_source_to_target(src, trg, 0.1))


def exact_thresholds(models, sizes, images, quantile, cap):
    """Independent route: every probability in memory, sorted, index round(q * n)."""
    per_class = [[] for _ in range(19)]
    for item in images:
        probs = predict_probs(models, sizes, item["image"][None], sizes[0])
        prob, label = probs.max(1)
        for c in range(19):
            per_class[c].append(prob[label == c].numpy())
    out = []
    for values in per_class:
        x = np.sort(np.concatenate(values))
        out.append(0.0 if len(x) == 0 else min(cap, x[min(int(np.round(len(x) * quantile)),
                                                          len(x) - 1)]))
    return np.array(out)


def test_gen_pseudo_thresholds_files_and_self_training(fda_run, tiny_demo, tmp_path, capsys):
    ckpt = fda_run / "best.pth"
    out = tmp_path / "pseudo"
    gen_pseudo.main(gen_pseudo.parse_args([str(ckpt), "--out", str(out), "--workers", "0",
                                           "--quantile", "0.66"]))
    assert "threshold" in capsys.readouterr().out
    report = json.loads((out / "thresholds.json").read_text())
    model, size, _ = load_model(ckpt, torch.device("cpu"))
    images = Cityscapes(tiny_demo.target, split="train", size=(64, 128), labelled=False)
    exact = exact_thresholds([model], [size], images, 0.66, 0.9)
    got = np.array([c["threshold"] for c in report["classes"].values()])
    assert np.all(np.abs(got - exact) <= 1e-3)
    # one PNG per target image, paired by name, uint8 train ids or 255
    pairs = PseudoLabelDataset(images, out)
    assert len(list(out.rglob("*.png"))) == len(images) == 8
    for item in pairs:
        values = set(np.unique(item["label"].numpy()).tolist())
        assert values <= set(range(19)) | {255}
    # palette PNGs: pixel values are the train ids, the palette their Cityscapes colours
    first = Image.open(next(out.rglob("*.png")))
    assert first.mode == "P" and first.getpalette()[:6] == [128, 64, 128, 244, 35, 232]
    # an ensemble of the same model twice (a copy: a file named twice counts once) writes the
    # same labels as the model alone
    twice, copy = tmp_path / "twice", tmp_path / "copy.pth"
    shutil.copyfile(ckpt, copy)
    gen_pseudo.main(gen_pseudo.parse_args([str(ckpt), "--ensemble", str(copy), "--out",
                                           str(twice), "--workers", "0", "--quantile", "0.66"]))
    assert json.loads((twice / "thresholds.json").read_text())["checkpoints"] == [str(ckpt),
                                                                                  str(copy)]
    for png in out.rglob("*.png"):
        a = np.asarray(Image.open(png))
        b = np.asarray(Image.open(twice / png.relative_to(out)))
        assert np.array_equal(a, b)
    # the self-training round reads them
    st = tmp_path / "st"
    train_fda.main(train_fda.parse_args(tiny_args(
        tiny_demo, st, "--pseudo", out, "--epochs", 1, "--iters-per-epoch", 2, target=True)))
    log = [json.loads(x) for x in (st / "metrics.jsonl").read_text().splitlines()]
    assert "loss_pseudo" in log[-1]


def test_lab_variant_runs(tiny_demo, tmp_path):
    out = tmp_path / "lab"
    train_fda.main(train_fda.parse_args(tiny_args(
        tiny_demo, out, "--translate", "lab", "--epochs", 1, "--iters-per-epoch", 2,
        target=True)))
    assert (out / "best.pth").exists()
