"""train_adv.py: the AdaptSegNet iteration, its checkpoints and the demo runs (CPU)."""
import argparse
import json
import shutil

import pytest
import torch
from conftest import tiny_args

import train_adv
from core.models import build_discriminator, build_model
from core.runtime import Run


def cpu_run(tmp_path):
    args = argparse.Namespace(device="cpu", amp=False, out=str(tmp_path), seed=0,
                              channels_last=False)
    return Run(args, "test")


def step(*optimizers):
    for opt in optimizers:
        opt.step()
        opt.zero_grad(set_to_none=True)


def adv_args(lambda_adv=0.001):
    return argparse.Namespace(lambda_adv=lambda_adv, lambda_pseudo=1.0, pseudo=None)


def segmenter_step(run, model, disc, criterion, src, trg, args, it=0):
    return train_adv.segmenter_step(run, model, disc, criterion, src, trg, it=it,
                                    lambda_adv=args.lambda_adv,
                                    lambda_pseudo=args.lambda_pseudo)


def batch(seed, labelled=True, size=(64, 96)):
    g = torch.Generator().manual_seed(seed)
    b = {"image": torch.randint(0, 256, (2, 3, *size), generator=g, dtype=torch.uint8)}
    if labelled:
        b["label"] = torch.randint(0, 19, (2, *size), generator=g)
    return b


def snapshot(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def changed(before, module):
    return any(not torch.equal(before[k], v) for k, v in module.state_dict().items())


def test_one_iteration_updates_both_and_step2_leaves_d_alone(tmp_path):
    torch.manual_seed(0)
    run = cpu_run(tmp_path)
    model, disc = build_model("bisenet", 19, "resnet18").train(), build_discriminator("dsc")
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    opt_d = torch.optim.Adam(disc.parameters(), lr=1e-4, betas=(0.9, 0.99))
    args = adv_args()
    criterion = torch.nn.CrossEntropyLoss(ignore_index=255)
    m0, d0 = snapshot(model), snapshot(disc)

    # the domains' working sizes differ, as GTA5's and Cityscapes' do
    probs, losses = segmenter_step(
        run, model, disc, criterion, batch(1), batch(2, labelled=False, size=(48, 80)), args)
    src_prob, trg_prob = probs["source"], probs["target"]
    # step 2 passed gradients through D to the segmenter, never into D
    assert all(p.grad is None for p in disc.parameters())
    assert not changed(d0, disc)
    assert all(p.requires_grad for p in disc.parameters())  # switched back on for step 3
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    assert src_prob.shape == (2, 19, 64, 96) and trg_prob.shape == (2, 19, 48, 80)
    assert not src_prob.requires_grad and not trg_prob.requires_grad
    # L_adv = BCE(D(P_t), source label 0) = mean softplus(D logits), computed independently
    with torch.no_grad():
        expected = torch.nn.functional.softplus(disc(trg_prob)).mean()
    assert losses["loss_adv"].item() == pytest.approx(expected.item(), rel=1e-5)

    seg_grads = [p.grad.clone() for p in model.parameters()]
    d_losses = train_adv.discriminator_step(run, disc, src_prob, trg_prob, it=0)
    assert all(torch.equal(g, p.grad) for g, p in zip(seg_grads, model.parameters(),
                                                      strict=True))  # D step: no leak
    assert all(p.grad is not None for p in disc.parameters())
    # D's accuracy on each domain, by hand: source maps called source (logit < 0), target
    # maps called target (logit > 0)
    with torch.no_grad():
        acc_src = (disc(src_prob) < 0).float().mean().item()
        acc_trg = (disc(trg_prob) > 0).float().mean().item()
    assert d_losses["d_acc_source"].item() == acc_src
    assert d_losses["d_acc_target"].item() == acc_trg
    step(opt, opt_d)
    assert changed(m0, model) and changed(d0, disc)


def test_adversarial_step_makes_target_maps_look_like_source_to_d(tmp_path):
    """Step 2 (AdaptSegNet Eq. 4): the segmenter moves so that D calls target maps 'source'
    (label 0, i.e. lower D logits). Swapping the domain labels makes D's logits rise."""
    run = cpu_run(tmp_path)
    torch.manual_seed(0)
    model, disc = build_model("bisenet", 19, "resnet18").train(), build_discriminator("fcd")
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    target = batch(2, labelled=False)

    def d_on_target():   # train mode, as in the step (batch statistics, not running ones)
        with torch.no_grad():
            main = model(train_adv.normalize(target["image"]))[0]
            return disc(main.softmax(1)).mean().item()

    def zero_seg_loss(logits, labels):        # isolate the adversarial term
        return 0.0 * logits.sum()
    before = d_on_target()
    for i in range(3):
        segmenter_step(run, model, disc, zero_seg_loss, batch(1), target,
                       adv_args(lambda_adv=1.0), it=i)
        step(opt)
    assert d_on_target() < before - 1e-4
    assert all(p.grad is None for p in disc.parameters())


def test_discriminator_learns_on_a_fixed_pair(tmp_path):
    torch.manual_seed(0)
    run = cpu_run(tmp_path)
    disc = build_discriminator("dsc")
    opt_d = torch.optim.Adam(disc.parameters(), lr=1e-3, betas=(0.9, 0.99))
    # frozen segmenter: fixed softmax maps that differ in their class statistics
    src = torch.softmax(torch.randn(2, 19, 64, 64) + 3 * torch.eye(19)[0].view(1, 19, 1, 1), 1)
    trg = torch.softmax(torch.randn(2, 19, 64, 64) + 3 * torch.eye(19)[5].view(1, 19, 1, 1), 1)
    losses = []
    for _ in range(60):  # DSC sits near ln 2 for ~20 steps, then learns
        losses.append(train_adv.discriminator_step(run, disc, src, trg, it=0)["loss_d"].item())
        step(opt_d)
    assert losses[-1] < 0.2 * losses[0]
    final = train_adv.discriminator_step(run, disc, src, trg, it=0)
    assert final["d_acc_source"] > 0.9 and final["d_acc_target"] > 0.9


def unlabelled_target(demo, tmp_path):
    """A copy of the demo target with no label files at all for its train split."""
    root = tmp_path / "target"
    shutil.copytree(demo.target / "leftImg8bit" / "train", root / "leftImg8bit" / "train")
    return root


@pytest.mark.parametrize("disc", ["dsc", "fcd"])
def test_runs_on_unlabelled_target_and_resumes_exactly(tiny_demo, tmp_path, disc):
    target = unlabelled_target(tiny_demo, tmp_path)
    common = tiny_args(tiny_demo, tmp_path / "x", target=True) + [
        "--target-root", str(target), "--disc", disc, "--epochs", "2",
        "--iters-per-epoch", "2", "--aug", "flip", "--batch-size", "2"]
    straight, split = tmp_path / "straight", tmp_path / "split"
    train_adv.main(train_adv.parse_args(common + ["--out", str(straight)]))
    train_adv.main(train_adv.parse_args(common + ["--out", str(split), "--stop-after", "1"]))
    train_adv.main(train_adv.parse_args(common + ["--out", str(split), "--resume",
                                                  str(split / "last.pth")]))
    a = torch.load(straight / "last.pth", weights_only=True)
    b = torch.load(split / "last.pth", weights_only=True)
    for part in ("model", "disc"):
        for key in a[part]:
            assert torch.equal(a[part][key], b[part][key]), (part, key)
    for part in ("optimizer", "optimizer_d"):
        for k, state in a[part]["state"].items():
            for name, value in state.items():
                assert torch.equal(torch.as_tensor(value),
                                   torch.as_tensor(b[part]["state"][k][name])), (part, name)
    assert a["target_stream"] == b["target_stream"] and a["source_stream"] == b["source_stream"]
    log = [json.loads(x) for x in (straight / "metrics.jsonl").read_text().splitlines()]
    profile = next(e for e in log if e.get("event") == "discriminator")
    assert profile["params"] == {"dsc": 191_364, "fcd": 2_781_121}[disc]
    epoch = log[-1]
    assert {"loss_seg", "loss_adv", "loss_d", "d_acc_source", "d_acc_target",
            "val_miou"} <= set(epoch)
