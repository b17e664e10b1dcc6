"""train_source.py and evaluate.py as a user runs them, on a tiny demo pair (CPU)."""
import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import ROOT, tiny_args
from PIL import Image

import evaluate
import train_source
from core.checkpoint import load_checkpoint, save_checkpoint
from core.cli import entry
from core.datasets import GTA5, Cityscapes
from core.evaluation import load_model
from core.metrics import ConfusionMatrix
from core.transforms import normalize


def read_log(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def weights(path):
    return torch.load(path, weights_only=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def trained(tiny_demo, tmp_path_factory):
    """A BiSeNet-R18 trained for a few dozen iterations on the demo source."""
    out = tmp_path_factory.mktemp("runs") / "source"
    train_source.main(train_source.parse_args(tiny_args(tiny_demo, out, "--epochs", 8,
                                                        "--lr", 0.01)))
    return out


def test_training_lowers_loss_and_learns_the_source(trained, tiny_demo):
    log = read_log(trained)
    assert log[0]["event"] == "start" and log[0]["args"]["model"] == "bisenet"
    assert {"seed", "git_commit", "torch", "device"} <= set(log[0])
    epochs = log[1:]
    assert [e["epoch"] for e in epochs] == list(range(1, 9))
    assert epochs[-1]["loss"] < 0.6 * epochs[0]["loss"]
    # held-out source frames: far above chance, i.e. the best constant guess (predicting the
    # class c everywhere scores IoU freq_c on c, 0 elsewhere)
    model, size, _ = load_model(trained / "best.pth", torch.device("cpu"))
    cm, counts = ConfusionMatrix(19), torch.zeros(19)
    for item in GTA5(tiny_demo.source, split=tiny_demo.source_val_list, size=(64, 128)):
        with torch.no_grad():
            cm.update(model(normalize(item["image"][None].float())).argmax(1)[0], item["label"])
        counts += torch.bincount(item["label"][item["label"] < 19].long(), minlength=19)
    chance = (counts.max() / counts.sum() / (counts > 0).sum()).item()
    assert cm.compute()["miou"] > 5 * chance


def test_evaluate_matches_independent_confusion_matrix(trained, tiny_demo, tmp_path, capsys):
    ckpt = trained / "best.pth"
    evaluate.main(evaluate.parse_args([str(ckpt), "--json", str(tmp_path / "one.json"),
                                       "--workers", "0", "--batch-size", "1",
                                       "--save-vis", str(tmp_path / "vis")]))
    printed = capsys.readouterr().out
    result = json.loads((tmp_path / "one.json").read_text())
    # independent route: image by image, logits upsampled in one step from the output stride
    # to the full label size (AdaptSegNet's evaluation)
    model, size, _ = load_model(ckpt, torch.device("cpu"))
    cm = ConfusionMatrix(19)
    for item in Cityscapes(tiny_demo.target, split="val", size=None):
        image = F.interpolate(item["image"][None].float(), size=size, mode="bilinear",
                              antialias=True, align_corners=False)
        with torch.no_grad():
            logits = F.interpolate(model(normalize(image), upsample=False),
                                   size=item["label"].shape,
                                   mode="bilinear", align_corners=False)
        cm.update(logits.argmax(1)[0], item["label"])
    assert result["miou"] == pytest.approx(cm.compute()["miou"], abs=1e-6)
    assert f"{100 * result['miou']:6.2f}" in printed
    assert "input 64x128 (HxW), logits upsampled to labels 256x512" in printed
    assert len(list((tmp_path / "vis").glob("*.png"))) == 4
    # the ensemble of a checkpoint with itself is that checkpoint
    evaluate.main(evaluate.parse_args([str(ckpt), "--ensemble", str(ckpt), "--workers", "0",
                                       "--json", str(tmp_path / "ens.json")]))
    ens = json.loads((tmp_path / "ens.json").read_text())
    assert ens["miou"] == result["miou"] and ens["iou"] == result["iou"]


def test_evaluate_writes_each_rows_panels_apart(trained, tmp_path):
    """Several checkpoints with --save-vis: one subfolder per row, none overwritten by the
    next row's panels of the same frames; the folder can be written again."""
    other = tmp_path / "other.pth"          # the trained network with its classifier zeroed
    state = load_checkpoint(trained / "last.pth")
    state["model"] = {k: v.zero_() if k.startswith("classifier") else v
                      for k, v in state["model"].items()}
    save_checkpoint(state, other)
    argv = [str(trained / "last.pth"), str(other), "--workers", "0", "--vis-count", "2",
            "--save-vis", str(tmp_path / "vis")]
    for _ in range(2):                      # the second time into its own earlier folder
        evaluate.main(evaluate.parse_args(argv))
    rows = [sorted((tmp_path / "vis" / row).glob("*.png")) for row in ("row1", "row2")]
    assert [p.name for p in rows[0]] == [p.name for p in rows[1]] and len(rows[0]) == 2
    for a, b in zip(*rows, strict=True):    # same image | label, different predictions
        a, b = np.asarray(Image.open(a)), np.asarray(Image.open(b))
        third = a.shape[1] // 3
        assert np.array_equal(a[:, :2 * third], b[:, :2 * third])
        assert not np.array_equal(a[:, 2 * third:], b[:, 2 * third:])


def test_resume_continues_exactly(tiny_demo, tmp_path):
    extra = ("--epochs", 2, "--aug", "flip,scale,jitter", "--aug-p", 0.7)
    straight, split = tmp_path / "straight", tmp_path / "split"
    train_source.main(train_source.parse_args(tiny_args(tiny_demo, straight, *extra)))
    train_source.main(train_source.parse_args(tiny_args(tiny_demo, split, *extra,
                                                        "--stop-after", 1)))
    assert weights(split / "last.pth")["epoch"] == 0
    train_source.main(train_source.parse_args(tiny_args(
        tiny_demo, split, *extra, "--resume", split / "last.pth")))
    a, b = weights(straight / "last.pth"), weights(split / "last.pth")
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    assert a["optimizer"]["state"].keys() == b["optimizer"]["state"].keys()
    for k, v in a["optimizer"]["state"].items():
        assert torch.equal(v["momentum_buffer"], b["optimizer"]["state"][k]["momentum_buffer"])
    assert a["scheduler"] == b["scheduler"]
    assert a["log_record"]["val_miou"] == b["log_record"]["val_miou"]
    assert [e.get("event") for e in read_log(split)] == ["start", None, "resume", None]


def test_nan_loss_stops_without_touching_the_last_checkpoint(tiny_demo, tmp_path, monkeypatch):
    out = tmp_path / "nan"
    train_source.main(train_source.parse_args(tiny_args(tiny_demo, out, "--epochs", 3,
                                                        "--stop-after", 1)))
    before = (out / "last.pth").read_bytes()
    real = train_source.seg_loss_sum
    monkeypatch.setattr(train_source, "seg_loss_sum",
                        lambda *a: real(*a) * float("nan"))
    args = train_source.parse_args(tiny_args(tiny_demo, out, "--epochs", 3,
                                             "--resume", out / "last.pth"))
    with pytest.raises(SystemExit, match=f"nan at iteration 4.*{out / 'last.pth'}"):
        entry(train_source.main, lambda: args)
    assert (out / "last.pth").read_bytes() == before


def test_bad_input_gives_clear_errors(tiny_demo, tmp_path, capsys):
    with pytest.raises(SystemExit):
        train_source.parse_args(tiny_args(tiny_demo, tmp_path / "x", "--model", "deeplabv2",
                                          "--backbone", "resnet18"))
    assert "--backbone resnet18 is not available for --model deeplabv2" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        train_source.parse_args(["--val-root", str(tiny_demo.target)])
    assert "--source-root is required" in capsys.readouterr().err
    args = train_source.parse_args(tiny_args(tiny_demo, tmp_path / "x") + [
        "--source-root", str(tmp_path / "nowhere")])
    with pytest.raises(SystemExit, match="nowhere"):
        entry(train_source.main, lambda: args)
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"not a checkpoint")
    with pytest.raises(SystemExit, match="corrupt.pth cannot be read"):
        entry(evaluate.main, lambda: evaluate.parse_args([str(corrupt)]))


def test_checkpoint_of_another_model_is_refused(trained, tmp_path):
    state = weights(trained / "best.pth")
    state["args"]["backbone"] = "resnet101"
    other = tmp_path / "other.pth"
    save_checkpoint(state, other)
    with pytest.raises(SystemExit, match="does not fit the network"):
        entry(evaluate.main, lambda: evaluate.parse_args([str(other), "--workers", "0"]))


def test_torchrun_two_processes(tiny_demo, tmp_path):
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master_port", str(free_port()), str(ROOT / "train_source.py"),
           *tiny_args(tiny_demo, out, "--epochs", 2, "--batch-size", 2, "--aug", "flip")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == [".lock", "best.pth", "last.pth",
                                                     "metrics.jsonl"]
    log = read_log(out)
    assert [e.get("event") for e in log] == ["start", None, None]       # one writer
    assert log[0]["world_size"] == 2
    # Validation under torchrun scores exactly the saved network: the score reduced over
    # both ranks equals a single-process evaluation of last.pth (same threads, one image a
    # time, as validation feeds them).
    result = tmp_path / "eval.json"
    proc = subprocess.run([sys.executable, str(ROOT / "evaluate.py"), str(out / "last.pth"),
                           "--json", str(result), "--workers", "0"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(result.read_text())["miou"] == log[-1]["val_miou"]
