"""train_mpl.py: the Meta Pseudo Labels iteration, the sign of h, checkpoints, resume (CPU)."""
import argparse
import copy
import json

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_args
from torch import nn

import evaluate
import train_mpl
from core.checkpoint import load_checkpoint, save_checkpoint
from core.datasets import GTA5
from core.errors import CheckpointError
from core.evaluation import load_model
from core.labels import CLASS_NAMES, NUM_CLASSES
from core.losses import build_seg_loss
from core.models import build_model, model_options
from core.runtime import Run
from core.sampling import Stream, make_loader
from core.transforms import normalize

CE = build_seg_loss("ce")   # the project's: 0, not NaN, for a batch with no labelled pixel
A, B = 13, 0        # car, road: the teacher's favourite class, and another one


class PixelClassifier(nn.Module):
    """A 1x1 conv, no BatchNorm: a network whose every output is computable by hand. In
    training mode it returns a tuple of outputs, as the project's networks do."""

    def __init__(self, bias_class=None):
        super().__init__()
        self.conv = nn.Conv2d(3, NUM_CLASSES, 1)
        if bias_class is not None:
            with torch.no_grad():     # class `bias_class` everywhere, probability ~0.5
                self.conv.weight *= 0.1
                self.conv.bias[bias_class] += 3.0

    def forward(self, x):
        out = self.conv(x)
        return (out,) if self.training else out


def cpu_run(tmp_path):
    return Run(argparse.Namespace(device="cpu", amp=False, out=str(tmp_path), seed=0,
                                  channels_last=False), "test")


def mpl_args(**kw):
    defaults = {"student_source_weight": 1.0, "h_sign": "authors", "mpl_weight": 1.0,
                "uda_weight": 0.0, "uda_threshold": 0.9, "uda_warmup": 1}
    return argparse.Namespace(**{**defaults, **kw})


def images(seed, n=2, size=(32, 48)):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, *size), generator=g, dtype=torch.uint8)


def labelled(seed, label, names):
    x = images(seed, len(names))
    y = label if torch.is_tensor(label) else torch.full((len(names), *x.shape[-2:]), label)
    return {"image": x, "label": y, "name": list(names)}


def iteration(run, teacher, student, opt_t, opt_s, src, fb, trg, args, it=0):
    """One iteration exactly as train_mpl.main's loop runs it; returns (h, losses, pseudo,
    strong)."""
    labels = train_mpl.teacher_labels(run, teacher, trg["image"], thresholds=None, seed=it)
    before = train_mpl.feedback_loss(run, student, fb)
    loss, losses = student_losses(student, labels, src, fb, args)
    loss.backward()
    opt_s.step()
    opt_s.zero_grad(set_to_none=True)
    h = train_mpl.H_SIGN[args.h_sign] * (train_mpl.feedback_loss(run, student, fb) - before)
    loss_t, losses_t = teacher_losses(teacher, labels, fb, h, args, it)
    loss_t.backward()
    losses.update(losses_t)
    opt_t.step()
    opt_t.zero_grad(set_to_none=True)
    return h, losses, labels["pseudo"], labels["strong"]


def student_losses(student, labels, src, fb, args):
    return train_mpl.student_losses(student, CE, labels, src, fb,
                                    source_weight=args.student_source_weight)


def teacher_losses(teacher, labels, fb, h, args, it=0):
    return train_mpl.teacher_losses(
        teacher, CE, labels, fb, h, mpl_weight=args.mpl_weight,
        uda_weight=args.uda_weight * min(1.0, (it + 1) / args.uda_warmup),
        uda_threshold=args.uda_threshold)


def pixel_pair_iteration(run, src, fb, trg, args):
    """One iteration of a fresh teacher (class A everywhere) and student, the same nets on
    every call, SGD lr 0.5; returns (teacher, h, pseudo, strong)."""
    torch.manual_seed(0)
    teacher, student = PixelClassifier(bias_class=A).train(), PixelClassifier().train()
    opt_t = torch.optim.SGD(teacher.parameters(), lr=0.5)
    opt_s = torch.optim.SGD(student.parameters(), lr=0.5)
    h, _, pseudo, strong = iteration(run, teacher, student, opt_t, opt_s, src, fb, trg, args)
    return teacher, h, pseudo, strong


def prob_of_own_labels(teacher, strong, pseudo):
    """Mean probability the teacher gives its pseudo labels (kept pixels) on the strong view."""
    with torch.no_grad():
        p = teacher(normalize(strong))[0].softmax(1).gather(1, pseudo.clamp(max=18)[:, None])
    return p[:, 0][pseudo != 255].mean().item()


@pytest.mark.parametrize("fb_class", [B, A], ids=["student-loss-rises", "student-loss-falls"])
def test_sign_of_h_moves_the_teacher(tmp_path, monkeypatch, fb_class):
    """The teacher prefers class A everywhere, so its pseudo labels are A. If B_fb is labelled
    B, the student's step on A labels raises its loss on B_fb (after - before > 0); labelled
    A, it lowers it. Appendix A's h (before - after, `theory`) must then make the teacher give
    its own labels less probability when the student got worse, more when it got better,
    than the same update without the MPL term (h = 0); the authors' sign does the opposite.
    Flipping a sign anywhere in the chain (measurement, H_SIGN, the teacher's loss) fails."""
    monkeypatch.setitem(train_mpl.H_SIGN, "off", 0.0)
    run = cpu_run(tmp_path)
    src, trg = labelled(1, B, ["s1", "s2"]), {"image": images(2)}
    fb = labelled(3, fb_class, ["f1", "f2"])
    prob, raw = {}, {}
    for sign in ("off", "authors", "theory"):
        args = mpl_args(h_sign=sign, student_source_weight=0.0)
        teacher, h, pseudo, strong = pixel_pair_iteration(run, src, fb, trg, args)
        assert (pseudo[pseudo != 255] == A).all() and (pseudo != 255).any()
        prob[sign], raw[sign] = prob_of_own_labels(teacher, strong, pseudo), h.item()
    assert raw["off"] == 0.0 and raw["authors"] == -raw["theory"] != 0.0
    rose = raw["authors"] > 0           # authors' h = after - before
    assert rose == (fb_class == B)
    if rose:
        assert prob["theory"] < prob["off"] < prob["authors"]
    else:
        assert prob["authors"] < prob["off"] < prob["theory"]


def test_mpl_weight_zero_trains_the_teacher_without_the_feedback(tmp_path):
    """--mpl-weight 0, the control: the teacher's update no longer depends on h (either sign
    gives the same teacher), while with the default weight the two signs part."""
    run = cpu_run(tmp_path)
    src, trg, fb = labelled(1, B, ["s1", "s2"]), {"image": images(2)}, labelled(3, B, ["f"])
    teachers = {}
    for weight in (0.0, 1.0):
        for sign in ("authors", "theory"):
            args = mpl_args(h_sign=sign, mpl_weight=weight, student_source_weight=0.0)
            teacher, h, *_ = pixel_pair_iteration(run, src, fb, trg, args)
            assert h.abs() > 0
            teachers[weight, sign] = torch.cat([p.flatten() for p in teacher.parameters()])
    assert torch.equal(teachers[0.0, "authors"], teachers[0.0, "theory"])
    assert not torch.allclose(teachers[1.0, "authors"], teachers[1.0, "theory"])


def test_teacher_gets_no_gradient_through_the_student(tmp_path):
    torch.manual_seed(0)
    run = cpu_run(tmp_path)
    teacher, student = PixelClassifier(bias_class=A).train(), PixelClassifier().train()
    src, fb, trg = labelled(1, B, ["s1", "s2"]), labelled(3, 255, ["f"]), {"image": images(2)}
    args = mpl_args(uda_weight=0.0)
    labels = train_mpl.teacher_labels(run, teacher, trg["image"], thresholds=None, seed=0)
    student_losses(student, labels, src, fb, args)[0].backward()
    assert all(p.grad is None for p in teacher.parameters())    # the student's backward
    assert all(p.grad is not None for p in student.parameters())
    # h = 0, no labelled source pixel (B_fb all 255), no UDA: the teacher has nothing to learn
    for h, moved in ((0.0, False), (1.0, True)):
        teacher.zero_grad(set_to_none=True)
        teacher_losses(teacher, labels, fb, torch.tensor(h), args)[0].backward()
        grads = torch.cat([p.grad.flatten() for p in teacher.parameters()])
        assert bool(grads.abs().sum() > 0) == moved


def test_one_iteration_changes_both_networks_and_b_fb_leaves_no_trace(tmp_path):
    torch.manual_seed(0)
    run = cpu_run(tmp_path)
    teacher = build_model("bisenet", NUM_CLASSES, "resnet18").train()
    student = build_model("bisenet", NUM_CLASSES, "resnet18").train()
    opt_t = torch.optim.SGD(teacher.parameters(), lr=0.01, momentum=0.9)
    opt_s = torch.optim.SGD(student.parameters(), lr=0.01, momentum=0.9)
    size = (64, 96)
    src = {"image": images(1, size=size), "label": torch.randint(0, 19, (2, *size)),
           "name": ["a", "b"]}
    fb = {"image": images(3, size=size), "label": torch.randint(0, 19, (2, *size)),
          "name": ["c", "d"]}
    trg = {"image": images(4, size=size)}
    # feedback_loss: the student's CE on B_fb in training mode, running statistics untouched
    buffers = {k: v.clone() for k, v in student.state_dict().items() if "running" in k}
    with torch.no_grad():
        logits = copy.deepcopy(student)(normalize(fb["image"]))[0]
    expected = F.cross_entropy(logits, fb["label"]).item()
    assert train_mpl.feedback_loss(run, student, fb).item() == pytest.approx(expected, rel=1e-5)
    assert all(torch.equal(student.state_dict()[k], v) for k, v in buffers.items())

    t0 = {k: v.clone() for k, v in teacher.state_dict().items()}
    s0 = {k: v.clone() for k, v in student.state_dict().items()}
    h, losses, pseudo, strong = iteration(run, teacher, student, opt_t, opt_s, src, fb, trg,
                                          mpl_args(uda_weight=1.0, uda_threshold=0.0))
    for before, net in ((t0, teacher), (s0, student)):
        assert any(not torch.equal(before[k], v) for k, v in net.state_dict().items()
                   if "weight" in k)
    assert {"loss_pseudo", "loss_source", "loss_t_source", "loss_t_mpl", "loss_t_uda"} \
        <= set(losses)
    assert losses["loss_t_uda"] > 0 and torch.isfinite(h)
    assert strong.shape == trg["image"].shape and strong.dtype == torch.uint8
    assert not torch.equal(strong, trg["image"])          # photometric, same geometry


def test_student_ignores_source_images_that_are_also_in_b_fb(tmp_path):
    torch.manual_seed(0)
    student = PixelClassifier().train()
    src = labelled(1, torch.randint(0, 19, (2, 32, 48)), ["x", "shared"])
    fb = labelled(3, 5, ["shared", "y"])
    pseudo = torch.full((2, 32, 48), 255)          # no pseudo-labelled pixel: source CE only
    _, losses = student_losses(student, {"strong": images(4), "pseudo": pseudo}, src, fb,
                               mpl_args())
    with torch.no_grad():
        expected = F.cross_entropy(student(normalize(src["image"][:1]))[0], src["label"][:1])
    assert losses["loss_source"].item() == pytest.approx(expected.item(), rel=1e-5)


def test_on_the_fly_thresholds_follow_bdl_and_file_thresholds_apply(tmp_path):
    run = cpu_run(tmp_path)
    torch.manual_seed(0)
    teacher = PixelClassifier().train()
    trg = {"image": images(5, n=2, size=(40, 40))}
    labels = train_mpl.teacher_labels(run, teacher, trg["image"], thresholds=None, seed=0)
    logits, pseudo = labels["weak_logits"], labels["pseudo"]
    prob, label = logits.softmax(1).max(1)
    assert label.unique().numel() > 3
    for c in label.unique().tolist():   # BDL: the median of the class's probabilities, cap 0.9
        p, q = prob[label == c], pseudo[label == c]
        s = p.sort().values
        exact = min(s[min(round(0.5 * len(s)), len(s) - 1)].item(), 0.9)
        assert ((q == c) | (q == 255)).all()
        assert (q[p >= exact] == c).all()                   # all the official rule keeps
        assert (p[q == c] >= exact - 1.01e-4).all()         # and at most a bin (1e-4) more
        assert (q == 255).any()
    given = torch.full((NUM_CLASSES,), 0.0)
    given[label.flatten()[0]] = 1.01                      # that class is never kept
    pseudo = train_mpl.teacher_labels(run, teacher, trg["image"], thresholds=given,
                                      seed=0)["pseudo"]
    assert torch.equal(pseudo, torch.where(given[label] <= prob, label, 255))


def test_strong_view_is_reproducible_from_its_seed(tmp_path):
    run = cpu_run(tmp_path)
    teacher = PixelClassifier().train()
    trg = {"image": images(6)}
    views = [train_mpl.teacher_labels(run, teacher, trg["image"], thresholds=None,
                                      seed=seed)["strong"] for seed in (1, 1, 2)]
    assert torch.equal(views[0], views[1]) and not torch.equal(views[0], views[2])


# --------------------------------------------------------------------------- the script

@pytest.fixture(scope="module")
def teacher_ckpt(tmp_path_factory):
    """A trained run's checkpoint as the teacher (here: random weights in that format)."""
    path = tmp_path_factory.mktemp("teacher") / "last.pth"
    stored = {"model": "bisenet", "backbone": "resnet18", "arm_bn": False}
    torch.manual_seed(1)
    model = build_model("bisenet", NUM_CLASSES, "resnet18", **model_options(stored))
    save_checkpoint({"model": model.state_dict(), "args": stored}, path)
    return path


def mpl_cli(demo, out, teacher, *extra):
    """tiny_args at 32x64 (BiSeNet's smallest input), batch 2: two networks, six passes."""
    sizes = [f"--{d}-size" for d in ("source", "target", "val")]
    return tiny_args(demo, out, "--teacher", teacher, "--batch-size", 2, *extra, target=True) \
        + [x for flag in sizes for x in (flag, "32", "64")]


def test_logged_h_is_the_feedback_loss_after_minus_before(tiny_demo, tmp_path, teacher_ckpt):
    """End to end through main: h recomputed from the student before (--student) and after
    (the checkpoint) its single step, on the first feedback batch."""
    start = tmp_path / "student.pth"
    torch.manual_seed(2)
    student = build_model("bisenet", NUM_CLASSES, "resnet18")
    save_checkpoint({"model": student.state_dict(), "args": {"model": "bisenet",
                                                             "backbone": "resnet18"}}, start)
    out = tmp_path / "run"
    args = train_mpl.parse_args(mpl_cli(tiny_demo, out, teacher_ckpt, "--student", start,
                                        "--epochs", 1, "--iters-per-epoch", 1))
    train_mpl.main(args)
    source = GTA5(args.source_root, split=args.source_split, size=args.source_size)
    fb = Stream(make_loader(source, 2, args.seed, "feedback", train=True,
                            workers=0)).next()

    def ce(state):
        net = build_model("bisenet", NUM_CLASSES, "resnet18").train()
        net.load_state_dict(state)
        with torch.no_grad():
            return F.cross_entropy(net(normalize(fb["image"]))[0], fb["label"].long(),
                                   ignore_index=255).item()
    after = ce(load_checkpoint(out / "last.pth")["model"])
    log = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert log[-1]["h"] == pytest.approx(after - ce(student.state_dict()), abs=1e-5)
    assert log[-1]["h_positive"] == float(log[-1]["h"] > 0)
    assert 0 < log[-1]["kept"] <= 1
    assert log[0]["args"]["teacher_model"] == "bisenet"


def test_resumes_exactly_and_evaluates_either_network(tiny_demo, tmp_path, teacher_ckpt):
    common = ["--epochs", 2, "--iters-per-epoch", 1, "--uda-warmup", 3]
    straight, split = tmp_path / "straight", tmp_path / "split"
    train_mpl.main(train_mpl.parse_args(mpl_cli(tiny_demo, straight, teacher_ckpt, *common)))
    train_mpl.main(train_mpl.parse_args(mpl_cli(tiny_demo, split, teacher_ckpt, *common,
                                                "--stop-after", 1)))
    train_mpl.main(train_mpl.parse_args(mpl_cli(tiny_demo, split, teacher_ckpt, *common,
                                                "--resume", split / "last.pth")))
    a, b = load_checkpoint(straight / "last.pth"), load_checkpoint(split / "last.pth")
    for part in ("model", "teacher"):
        for key in a[part]:
            assert torch.equal(a[part][key], b[part][key]), (part, key)
    for part in ("optimizer", "optimizer_t"):
        for k, state in a[part]["state"].items():
            assert torch.equal(state["momentum_buffer"], b[part]["state"][k]["momentum_buffer"])
    for part in ("scheduler", "scheduler_t", "source_stream", "target_stream", "fb_stream"):
        assert a[part] == b[part], part
    record = a["log_record"]
    assert a["fb_stream"]["taken"] == 2 and record["iteration"] == 2
    assert {**record, "seconds": 0} == {**b["log_record"], "seconds": 0}
    assert {"loss_pseudo", "loss_source", "loss_t_source", "loss_t_mpl", "loss_t_uda", "h",
            "h_positive", "kept", "lr_t", "val_miou"} <= set(record)

    student, _, _ = load_model(straight / "last.pth", torch.device("cpu"))
    teacher, size, stored = load_model(straight / "last.pth", torch.device("cpu"),
                                       net="teacher")
    assert all(torch.equal(v, a["teacher"][k]) for k, v in teacher.state_dict().items())
    assert all(torch.equal(v, a["model"][k]) for k, v in student.state_dict().items())
    assert size == tuple(stored["val_size"])
    with pytest.raises(CheckpointError, match="holds no teacher"):
        load_model(teacher_ckpt, torch.device("cpu"), net="teacher")
    evaluate.main(evaluate.parse_args([str(straight / "last.pth"), "--net", "teacher",
                                       "--workers", "0", "--json", str(tmp_path / "t.json")]))
    assert json.loads((tmp_path / "t.json").read_text())["checkpoint"].endswith("(teacher)")


def test_bad_teacher_and_thresholds_are_one_line_errors(tiny_demo, tmp_path, teacher_ckpt,
                                                        capsys):
    bad = tmp_path / "thresholds.json"
    bad.write_text(json.dumps({"classes": {"road": {"threshold": 0.5}}}))
    cases = [([], "--teacher CKPT is required"),
             (["--teacher", tmp_path / "none.pth"], "none.pth does not exist"),
             (["--teacher", teacher_ckpt, "--thresholds", bad], f"--thresholds {bad}")]
    for extra, message in cases:
        with pytest.raises(SystemExit):
            train_mpl.parse_args(tiny_args(tiny_demo, tmp_path / "x", *extra, target=True))
        assert message in capsys.readouterr().err
    good = tmp_path / "good.json"
    good.write_text(json.dumps({"classes": {n: {"threshold": i / 100}
                                            for i, n in enumerate(CLASS_NAMES)}}))
    args = train_mpl.parse_args(mpl_cli(tiny_demo, tmp_path / "y", teacher_ckpt,
                                        "--thresholds", good))
    assert args.class_thresholds == [i / 100 for i in range(NUM_CLASSES)]
