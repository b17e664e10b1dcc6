"""train_mpl.py: the Meta Pseudo Labels iteration, the sign of h and its baseline, checkpoints,
resume (CPU)."""
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
    defaults = {"student_source_weight": 1.0, "h_sign": "before-after", "h_baseline_rate": 0.0,
                "mpl_weight": 1.0, "uda_weight": 0.0, "uda_threshold": 0.9, "uda_warmup": 1}
    return argparse.Namespace(**{**defaults, **kw})


def images(seed, n=2, size=(32, 48)):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, *size), generator=g, dtype=torch.uint8)


def labelled(seed, label, names, size=(32, 48)):
    x = images(seed, len(names), size)
    y = label if torch.is_tensor(label) else torch.full((len(names), *x.shape[-2:]), label)
    return {"image": x, "label": y, "name": list(names)}


def measured_pseudo_label_step(run, student, opt_s, labels, fb, args):
    """Steps 2-3 exactly as train_mpl.main runs them: returns h (before its baseline)."""
    before = train_mpl.feedback_loss(run, student, fb)
    run.backward(train_mpl.pseudo_label_loss(student, CE, labels), 0)
    run.step(opt_s)
    return train_mpl.H_SIGN[args.h_sign] * (before - train_mpl.feedback_loss(run, student, fb))


def iteration(run, teacher, student, opt_t, opt_s, src, fb, trg, args, it=0, opt_src=None):
    """One iteration exactly as train_mpl.main's loop runs it (a fresh baseline); returns (h,
    losses, pseudo, strong)."""
    labels = train_mpl.teacher_labels(run, teacher, trg["image"], thresholds=None, seed=it)
    h = measured_pseudo_label_step(run, student, opt_s, labels, fb, args)
    h_baseline = train_mpl.MovingBaseline(args.h_baseline_rate).update(h)
    loss_t, losses = teacher_losses(teacher, labels, fb, h - h_baseline, args, it)
    run.backward(loss_t, it)
    run.step(opt_t)
    if args.student_source_weight > 0:
        loss_source = train_mpl.source_loss(student, CE, src)
        run.backward(args.student_source_weight * loss_source, it)
        run.step(opt_src)
        losses["loss_source"] = loss_source.detach()
    return h, losses, labels["pseudo"], labels["strong"]


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


class LogitsTeacher(nn.Module):
    """A teacher whose logits are a parameter z, the same at every pixel, with only classes A
    and B possible (the others at -1e4 have probability 0): P_T(y^) = softmax(z)[y^]."""

    def __init__(self):
        super().__init__()
        z = torch.full((NUM_CLASSES,), -1e4)
        z[A], z[B] = 0.3, -0.2
        self.z = nn.Parameter(z)

    def forward(self, x):
        return (self.z[None, :, None, None].expand(x.shape[0], -1, *x.shape[2:]),)


def loss_after_plain_sgd_step(student, x, y, fb, lr):
    """The student's CE on B_fb after one SGD step on (x, y), by hand (the independent route)."""
    conv = student.conv
    loss = F.cross_entropy(F.conv2d(normalize(x), conv.weight, conv.bias), y)
    gw, gb = torch.autograd.grad(loss, (conv.weight, conv.bias))
    logits = F.conv2d(normalize(fb["image"]), conv.weight - lr * gw, conv.bias - lr * gb)
    return F.cross_entropy(logits, fb["label"]).detach()


@pytest.mark.parametrize(("sign", "rate", "previous", "factor"), [
    ("before-after", 0.0, 0.0, 1.0), ("after-before", 0.0, 0.0, -1.0),
    ("before-after", 0.01, 0.3, 0.99)], ids=["default", "ablation", "with-baseline"])
def test_expected_teacher_update_is_the_exact_gradient_of_the_students_loss(
        tmp_path, sign, rate, previous, factor):
    """The exact two-label toy. The teacher draws y^ in {A, B} for a one-pixel image with
    P_T = softmax(z); the student takes one SGD step on it; J(z) = E_y^[CE_S'(B_fb)], the
    student's loss after its step. Enumerating y^ gives J's gradient exactly:
    sum_y CE_after(y) grad P_T(y). The teacher's expected gradient, sum_y P_T(y) times the
    gradient of train_mpl's teacher loss (h - baseline) * CE(T, y), equals it with the default
    h = before - after (so the teacher descends the student's loss: here it makes A, the label
    that lowered it, likelier) and its negation with after - before (ascent). A baseline
    updated with h before it is subtracted (the released order) scales it by 1 - rate,
    whatever its previous value: the direction stays exact."""
    run = cpu_run(tmp_path)
    trg = images(1, n=1, size=(1, 1))
    fb = labelled(2, A, ["f1", "f2"], size=(2, 2))
    no_labels = labelled(2, 255, ["f1", "f2"], size=(2, 2))   # the teacher's CE(B_fb): 0
    teacher, args = LogitsTeacher(), mpl_args(h_sign=sign, h_baseline_rate=rate)
    prob = teacher.z.detach().softmax(0)
    expected_update, after = torch.zeros(NUM_CLASSES), {}
    for y in (A, B):
        torch.manual_seed(0)
        student = PixelClassifier().train()
        pseudo = torch.full((1, 1, 1), y)
        after[y] = loss_after_plain_sgd_step(student, trg, pseudo, fb, lr=0.5)
        logits = teacher(normalize(trg))[0]
        labels = {"strong": trg, "strong_logits": logits, "weak_logits": logits.detach(),
                  "pseudo": pseudo}
        h = measured_pseudo_label_step(run, student, torch.optim.SGD(student.parameters(),
                                                                     lr=0.5), labels, fb, args)
        baseline = train_mpl.MovingBaseline(rate)
        baseline.value = torch.tensor(previous)
        teacher.zero_grad()
        teacher_losses(teacher, labels, no_labels, h - baseline.update(h), args)[0].backward()
        expected_update += prob[y] * teacher.z.grad
    z = teacher.z.detach().requires_grad_()
    exact = torch.autograd.grad(after[A] * z.softmax(0)[A] + after[B] * z.softmax(0)[B], z)[0]
    assert after[A] < after[B] and exact[A] < 0 < exact[B]
    assert torch.allclose(expected_update, factor * exact, rtol=1e-4, atol=1e-8)


def test_baseline_is_the_released_moving_average_of_h():
    """b <- b - 0.01 (b - h) from 0, then h - b is used: by hand for h = 1, -2, 0.5."""
    baseline = train_mpl.MovingBaseline(0.01)
    for h, b in ((1.0, 0.01), (-2.0, 0.01 - 0.01 * 2.01), (0.5, -0.0101 + 0.01 * 0.5101)):
        assert baseline.update(torch.tensor(h)).item() == pytest.approx(b, abs=1e-8)
    restored = train_mpl.MovingBaseline(0.01)
    restored.load_state_dict(copy.deepcopy(baseline.state_dict()))
    assert torch.equal(restored.update(torch.tensor(3.0)), baseline.update(torch.tensor(3.0)))


@pytest.mark.parametrize("fb_class", [B, A], ids=["student-loss-rises", "student-loss-falls"])
def test_sign_of_h_moves_the_teacher(tmp_path, monkeypatch, fb_class):
    """The teacher prefers class A everywhere, so its pseudo labels are A. If B_fb is labelled
    B, the student's step on A labels raises its loss on B_fb; labelled A, it lowers it. The
    default h (before - after) must then make the teacher give its own labels less probability
    when the student got worse, more when it got better, than the same update without the
    MPL term (h = 0); after - before does the opposite."""
    monkeypatch.setitem(train_mpl.H_SIGN, "off", 0.0)
    run = cpu_run(tmp_path)
    src, trg = labelled(1, B, ["s1", "s2"]), {"image": images(2)}
    fb = labelled(3, fb_class, ["f1", "f2"])
    prob, raw = {}, {}
    for sign in ("off", "before-after", "after-before"):
        args = mpl_args(h_sign=sign, student_source_weight=0.0)
        teacher, h, pseudo, strong = pixel_pair_iteration(run, src, fb, trg, args)
        assert (pseudo[pseudo != 255] == A).all() and (pseudo != 255).any()
        prob[sign], raw[sign] = prob_of_own_labels(teacher, strong, pseudo), h.item()
    assert raw["off"] == 0.0 and raw["before-after"] == -raw["after-before"] != 0.0
    helped = raw["before-after"] > 0
    assert helped == (fb_class == A)
    if helped:
        assert prob["after-before"] < prob["off"] < prob["before-after"]
    else:
        assert prob["before-after"] < prob["off"] < prob["after-before"]


def test_mpl_weight_zero_trains_the_teacher_without_the_feedback(tmp_path):
    """--mpl-weight 0, the control: the teacher's update no longer depends on h (either sign
    gives the same teacher), while with the default weight the two signs part."""
    run = cpu_run(tmp_path)
    src, trg, fb = labelled(1, B, ["s1", "s2"]), {"image": images(2)}, labelled(3, B, ["f"])
    teachers = {}
    for weight in (0.0, 1.0):
        for sign in ("before-after", "after-before"):
            args = mpl_args(h_sign=sign, mpl_weight=weight, student_source_weight=0.0)
            teacher, h, *_ = pixel_pair_iteration(run, src, fb, trg, args)
            assert h.abs() > 0
            teachers[weight, sign] = torch.cat([p.flatten() for p in teacher.parameters()])
    assert torch.equal(teachers[0.0, "before-after"], teachers[0.0, "after-before"])
    assert not torch.allclose(teachers[1.0, "before-after"], teachers[1.0, "after-before"])


def test_teacher_gets_no_gradient_through_the_student(tmp_path):
    torch.manual_seed(0)
    run = cpu_run(tmp_path)
    teacher, student = PixelClassifier(bias_class=A).train(), PixelClassifier().train()
    src, fb, trg = labelled(1, B, ["s1", "s2"]), labelled(3, 255, ["f"]), {"image": images(2)}
    args = mpl_args(uda_weight=0.0)
    labels = train_mpl.teacher_labels(run, teacher, trg["image"], thresholds=None, seed=0)
    (train_mpl.pseudo_label_loss(student, CE, labels)
     + train_mpl.source_loss(student, CE, src)).backward()
    assert all(p.grad is None for p in teacher.parameters())    # the student's backward
    assert all(p.grad is not None for p in student.parameters())
    # h = 0, no labelled source pixel (B_fb all 255), no UDA: the teacher has nothing to learn
    for h, moved in ((0.0, False), (1.0, True)):
        teacher.zero_grad(set_to_none=True)
        labels = train_mpl.teacher_labels(run, teacher, trg["image"], thresholds=None, seed=0)
        teacher_losses(teacher, labels, fb, torch.tensor(h), args)[0].backward()
        grads = torch.cat([p.grad.flatten() for p in teacher.parameters()])
        assert bool(grads.abs().sum() > 0) == moved


def test_pseudo_labels_and_their_score_come_from_the_strong_view(tmp_path):
    """y^ is the argmax of T(strong), and the MPL term's gradient is that of CE(T(strong), y^)
    (the score function of the input that produced y^), not of the weak view's."""
    torch.manual_seed(0)
    run, teacher = cpu_run(tmp_path), PixelClassifier().train()
    trg, fb = images(7), labelled(3, 255, ["f"])
    keep_all = torch.zeros(NUM_CLASSES)
    labels = train_mpl.teacher_labels(run, teacher, trg, thresholds=keep_all, seed=0)
    pseudo = labels["pseudo"]

    def grads_of_ce(view):
        teacher.zero_grad(set_to_none=True)
        F.cross_entropy(teacher(normalize(view))[0], pseudo).backward()
        return [p.grad.clone() for p in teacher.parameters()]
    with torch.no_grad():
        assert torch.equal(pseudo, teacher(normalize(labels["strong"]))[0].argmax(1))
        assert not torch.equal(pseudo, teacher(normalize(trg))[0].argmax(1))  # views differ
    strong, weak = grads_of_ce(labels["strong"]), grads_of_ce(trg)
    teacher.zero_grad(set_to_none=True)
    teacher_losses(teacher, labels, fb, torch.tensor(1.0), mpl_args())[0].backward()
    for p, s, w in zip(teacher.parameters(), strong, weak, strict=True):
        assert torch.allclose(p.grad, s, atol=1e-6) and not torch.allclose(p.grad, w)


def test_one_iteration_changes_both_networks_and_b_fb_leaves_no_trace(tmp_path):
    torch.manual_seed(0)
    run = cpu_run(tmp_path)
    teacher = build_model("bisenet", NUM_CLASSES, "resnet18").train()
    student = build_model("bisenet", NUM_CLASSES, "resnet18").train()
    opt_t = torch.optim.SGD(teacher.parameters(), lr=0.01, momentum=0.9)
    opt_s = torch.optim.SGD(student.parameters(), lr=0.01, momentum=0.9)
    opt_src = torch.optim.SGD(student.parameters(), lr=0.01, momentum=0.9)
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
                                          mpl_args(uda_weight=1.0, uda_threshold=0.0),
                                          opt_src=opt_src)
    for before, net in ((t0, teacher), (s0, student)):
        assert any(not torch.equal(before[k], v) for k, v in net.state_dict().items()
                   if "weight" in k)
    assert {"loss_source", "loss_t_source", "loss_t_mpl", "loss_t_uda"} <= set(losses)
    assert losses["loss_t_uda"] > 0 and torch.isfinite(h)
    assert strong.shape == trg["image"].shape and strong.dtype == torch.uint8
    assert not torch.equal(strong, trg["image"])          # photometric, same geometry


def test_on_the_fly_thresholds_follow_bdl_and_file_thresholds_apply(tmp_path):
    run = cpu_run(tmp_path)
    torch.manual_seed(0)
    teacher = PixelClassifier().train()
    trg = {"image": images(5, n=2, size=(40, 40))}
    labels = train_mpl.teacher_labels(run, teacher, trg["image"], thresholds=None, seed=0)
    logits, pseudo = labels["strong_logits"].detach(), labels["pseudo"]
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


def test_logged_h_measures_the_pseudo_label_step_alone(tiny_demo, tmp_path, teacher_ckpt):
    """End to end through main, one iteration from --student. Source weight 0: h is the
    student's CE on the first feedback batch before (--student) minus after (the checkpoint)
    its step. Source weight 1: the student also takes its source step (another checkpoint),
    but h is the same, that of the pseudo-label step alone. The baseline moved by 0.01 h."""
    start = tmp_path / "student.pth"
    torch.manual_seed(2)
    student = build_model("bisenet", NUM_CLASSES, "resnet18")
    save_checkpoint({"model": student.state_dict(), "args": {"model": "bisenet",
                                                             "backbone": "resnet18"}}, start)
    logs, states = {}, {}
    for weight in (0, 1):
        out = tmp_path / f"run{weight}"
        args = train_mpl.parse_args(mpl_cli(tiny_demo, out, teacher_ckpt, "--student", start,
                                            "--epochs", 1, "--iters-per-epoch", 1,
                                            "--student-source-weight", weight))
        train_mpl.main(args)
        logs[weight] = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
        states[weight] = load_checkpoint(out / "last.pth")["model"]
    assert logs[1][-1]["h"] == logs[0][-1]["h"]
    assert "loss_source" in logs[1][-1] and "loss_source" not in logs[0][-1]
    assert any(not torch.equal(states[0][k], states[1][k]) for k in states[0])
    source = GTA5(args.source_root, split=args.source_split, size=args.source_size)
    fb = Stream(make_loader(source, 2, args.seed, "feedback", train=True,
                            workers=0)).next()

    def ce(state):
        net = build_model("bisenet", NUM_CLASSES, "resnet18").train()
        net.load_state_dict(state)
        with torch.no_grad():
            return F.cross_entropy(net(normalize(fb["image"]))[0], fb["label"].long(),
                                   ignore_index=255).item()
    log = logs[0]
    assert log[-1]["h"] == pytest.approx(ce(student.state_dict()) - ce(states[0]), abs=1e-5)
    assert log[-1]["h_baseline"] == pytest.approx(0.01 * log[-1]["h"], rel=1e-5)
    assert log[-1]["h_positive"] == float(log[-1]["h"] > 0)
    assert 0 < log[-1]["kept"] <= 1
    assert log[0]["args"]["teacher_model"] == "bisenet"


def test_resumes_exactly_and_evaluates_either_network(tiny_demo, tmp_path, teacher_ckpt,
                                                       capsys):
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
    for part in ("optimizer", "optimizer_source", "optimizer_t"):
        assert a[part]["state"], part
        for k, state in a[part]["state"].items():
            assert torch.equal(state["momentum_buffer"], b[part]["state"][k]["momentum_buffer"])
    for part in ("scheduler", "scheduler_source", "scheduler_t", "source_stream",
                 "target_stream", "fb_stream"):
        assert a[part] == b[part], part
    assert a["h_baseline"]["value"] != 0
    assert torch.equal(a["h_baseline"]["value"], b["h_baseline"]["value"])
    record = a["log_record"]
    assert a["fb_stream"]["taken"] == 2 and record["iteration"] == 2
    assert {**record, "seconds": 0} == {**b["log_record"], "seconds": 0}
    assert {"loss_pseudo", "loss_source", "loss_t_source", "loss_t_mpl", "loss_t_uda", "h",
            "h_baseline", "h_positive", "kept", "lr_t", "val_miou"} <= set(record)

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
    # a run of the earlier script (--h-sign authors/theory) is not continued by this one
    old = dict(a, args={**a["args"], "h_sign": "authors"})
    save_checkpoint(old, tmp_path / "old" / "last.pth")
    with pytest.raises(SystemExit):
        train_mpl.parse_args(["--resume", str(tmp_path / "old" / "last.pth")])
    assert "made by an earlier train_mpl.py" in capsys.readouterr().err


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
