"""Segmenters, discriminators and backbone loading (CPU, small odd-sized inputs)."""
import hashlib
import os
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import resnet18, resnet101

from core.models import (
    BACKBONES,
    MODEL_NAMES,
    PretrainedWeightsError,
    build_discriminator,
    build_model,
    param_groups,
    pretrained,
)
from core.models.deeplabv2 import FrozenBatchNorm2d
from core.models.logits import bilinear_as_matmuls, upsample_logits


@pytest.fixture(scope="module")
def deeplab():
    torch.manual_seed(0)
    return build_model("deeplabv2")


@pytest.fixture(scope="module")
def deeplab_frozen():
    torch.manual_seed(0)
    return build_model("deeplabv2", deeplab_bn="frozen")


@pytest.fixture(scope="module")
def bisenet18():
    torch.manual_seed(0)
    return build_model("bisenet", backbone="resnet18")


@torch.no_grad()  # gradients are tested separately
def check_outputs(model, size, batch):
    x = torch.randn(batch, 3, *size)
    model.train()
    outputs = model(x)
    assert isinstance(outputs, tuple)
    assert all(o.shape == (batch, 19, *size) for o in outputs)
    model.eval()
    out = model(x[:1])
    assert torch.is_tensor(out) and out.shape == (1, 19, *size)
    return outputs


# ---- shapes and the train/eval contract ----

def test_bisenet_r18_shapes_at_odd_size(bisenet18):
    assert len(check_outputs(bisenet18, (250, 330), batch=2)) == 3  # main, aux16, aux32


def test_bisenet_r101_shapes():
    model = build_model("bisenet", backbone="resnet101")
    assert len(check_outputs(model, (49, 67), batch=2)) == 3


def test_deeplab_shapes_returns_1_tuple_in_training(deeplab):
    assert len(check_outputs(deeplab, (65, 97), batch=1)) == 1  # batch 1, as the UDA code


def test_bisenet_channels_last_and_bf16_autocast(bisenet18):
    x = torch.randn(1, 3, 67, 93).contiguous(memory_format=torch.channels_last)
    model = bisenet18.eval().to(memory_format=torch.channels_last)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x)
    bisenet18.to(memory_format=torch.contiguous_format)
    assert out.shape == (1, 19, 67, 93) and torch.isfinite(out.float()).all()


@pytest.mark.parametrize("shape, size", [((2, 19, 18, 32), (144, 256)),   # training, x8
                                         ((2, 19, 5, 8), (144, 256)),     # x32, odd ratio
                                         ((1, 3, 7, 9), (20, 13)),        # non-integer
                                         ((1, 2, 10, 10), (5, 7))])       # downsampling
def test_bilinear_as_matmuls_is_torchs_bilinear_values_and_gradients(shape, size):
    torch.manual_seed(0)
    x = torch.randn(shape).contiguous(memory_format=torch.channels_last).requires_grad_()
    weights = torch.randn(shape[0], shape[1], *size)
    ours = bilinear_as_matmuls(x, size)
    (grad_ours,) = torch.autograd.grad((ours * weights).sum(), x)
    torchs = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
    (grad_torchs,) = torch.autograd.grad((torchs * weights).sum(), x)
    assert torch.allclose(ours, torchs, atol=1e-5)
    assert torch.allclose(grad_ours, grad_torchs, atol=1e-4)


def test_upsample_logits_is_float32_under_bf16_autocast_in_training_and_inference():
    torch.manual_seed(0)
    logits = torch.randn(2, 19, 9, 16).bfloat16()
    expected = F.interpolate(logits.float(), size=(72, 128), mode="bilinear",
                             align_corners=False)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        trained = upsample_logits(logits.clone().requires_grad_(), (72, 128))
        inferred = upsample_logits(logits, (72, 128))
    assert trained.dtype == inferred.dtype == torch.float32
    # both routes interpolate the bf16 logits in float32 (a bf16 product would be further off)
    assert torch.allclose(trained, expected, atol=1e-5)
    assert torch.equal(inferred, expected)


def test_build_errors_name_the_flag():
    expected = "--backbone resnet18 is not available for --model deeplabv2; choose resnet101"
    with pytest.raises(ValueError, match=expected):
        build_model("deeplabv2", backbone="resnet18")
    with pytest.raises(ValueError, match="--backbone resnet50"):
        build_model("bisenet", backbone="resnet50")
    with pytest.raises(ValueError, match="--model unet .*bisenet, deeplabv2"):
        build_model("unet")
    assert set(BACKBONES) == set(MODEL_NAMES)


# ---- parameter counts ----

def test_discriminator_parameter_counts_and_output():
    counts = {name: sum(p.numel() for p in build_discriminator(name).parameters())
              for name in ("fcd", "dsc")}
    assert counts == {"fcd": 2_781_121, "dsc": 191_364}
    for name in ("fcd", "dsc"):
        assert build_discriminator(name)(torch.rand(2, 19, 64, 128)).shape == (2, 1, 2, 4)
    with pytest.raises(ValueError, match="fcd, dsc"):
        build_discriminator("patchgan")


def test_dsc_is_depthwise_then_pointwise():
    convs = [m for m in build_discriminator("dsc").modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 10
    for depthwise, pointwise in zip(convs[::2], convs[1::2], strict=True):
        assert depthwise.groups == depthwise.in_channels == depthwise.out_channels
        assert depthwise.kernel_size == (4, 4) and depthwise.stride == (2, 2)
        assert pointwise.kernel_size == (1, 1) and pointwise.bias is not None


def test_segmenter_parameter_counts(deeplab, bisenet18):
    assert sum(p.numel() for p in deeplab.parameters()) == 43_901_068
    assert sum(p.numel() for p in deeplab.parameters() if p.requires_grad) == 43_795_724
    assert sum(p.numel() for p in bisenet18.parameters()) == 12_067_136
    # --arm-bn adds the attention refinement modules' BatchNorm: 2 x (256 + 512)
    with_bn = build_model("bisenet", backbone="resnet18", arm_bn=True)
    assert sum(p.numel() for p in with_bn.parameters()) == 12_068_672


# ---- DeepLabV2 specifics ----

def test_deeplab_logits_are_65x129_at_512x1024():
    model = build_model("deeplabv2").to("meta")  # shapes only, no arithmetic
    seen = []
    model.classifier.register_forward_hook(lambda m, i, out: seen.append(tuple(out.shape)))
    out = model.eval()(torch.empty(1, 3, 512, 1024, device="meta"))
    assert seen == [(1, 19, 65, 129)] and out.shape == (1, 19, 512, 1024)


def test_deeplab_classifier_sums_all_four_branches(deeplab):
    clf = deeplab.classifier
    feature = torch.randn(1, 2048, 9, 13)
    with torch.no_grad():
        expected = sum(F.conv2d(feature, c.weight, c.bias, padding=c.padding,
                                dilation=c.dilation) for c in clf.conv2d_list)
        torch.testing.assert_close(clf(feature), expected)
        before = clf(feature)
        for conv in clf.conv2d_list:  # perturbing any branch changes the output
            conv.bias.add_(1.0)
            assert not torch.allclose(clf(feature), before)
            conv.bias.sub_(1.0)
    assert [c.dilation for c in clf.conv2d_list] == [(6, 6), (12, 12), (18, 18), (24, 24)]


def capture_batchnorm(model, bn, x, seed=3):
    """Give `bn` random running statistics and affine parameters, run `model` on `x` (in the
    mode it is in, with a backward pass) and return (bn's input, bn's output, its statistics
    before the pass)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        bn.running_mean.copy_(torch.randn(bn.num_features, generator=gen))
        bn.running_var.copy_(torch.rand(bn.num_features, generator=gen) + 0.5)
        bn.weight.copy_(torch.rand(bn.num_features, generator=gen) + 0.5)
        bn.bias.copy_(torch.randn(bn.num_features, generator=gen))
    before = (bn.running_mean.clone(), bn.running_var.clone())
    seen = []
    handle = bn.register_forward_hook(lambda m, i, out: seen.append((i[0].detach().clone(),
                                                                     out.detach().clone())))
    model.zero_grad(set_to_none=True)
    out = model(x)
    (out[0] if isinstance(out, tuple) else out).mean().backward()
    handle.remove()
    (inp, output), = seen
    return inp, output, before


def by_hand(x, mean, var, bn):
    """(x - mean) / sqrt(var + eps) * weight + bias, per channel."""
    shape = (1, -1, 1, 1)
    return ((x - mean.view(shape)) / torch.sqrt(var.view(shape) + bn.eps)
            * bn.weight.detach().view(shape) + bn.bias.detach().view(shape))


def check_affine_never_trains(model):
    bns = [m for m in model.backbone.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(bns) == 104
    grouped = {id(p) for g in param_groups(model, 2.5e-4, 5e-4) for p in g["params"]}
    for m in bns:
        for p in (m.weight, m.bias):
            assert not p.requires_grad and p.grad is None and id(p) not in grouped
    assert model.backbone.conv1.weight.grad is not None and id(model.backbone.conv1.weight) \
        in grouped


def test_deeplab_batchnorm_uses_batch_statistics_in_train_mode(deeplab):
    """The default (deeplab_bn="train"): as AdaptSegNet / FDA / BDL run it, plain BatchNorm in
    training mode at batch 1 normalises the image with its own statistics and moves the
    running statistics towards them (momentum 0.1, unbiased variance); the affine
    parameters never train. Eval mode uses the running statistics."""
    bn = deeplab.backbone.layer3[5].bn2
    assert type(bn) is nn.BatchNorm2d and deeplab.backbone.bn == "train"
    x = torch.randn(1, 3, 25, 33) * 2 + 1
    inp, out, (mean0, var0) = capture_batchnorm(deeplab.train(), bn, x)
    assert bn.training
    mean, var = inp.mean(dim=(0, 2, 3)), inp.var(dim=(0, 2, 3), unbiased=False)
    count = inp.numel() / inp.shape[1]
    torch.testing.assert_close(out, by_hand(inp, mean, var, bn), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(bn.running_mean, 0.9 * mean0 + 0.1 * mean)
    torch.testing.assert_close(bn.running_var, 0.9 * var0 + 0.1 * var * count / (count - 1))
    # the same through F.batch_norm(training=True), on copies of the old statistics
    rm, rv = mean0.clone(), var0.clone()
    expected = F.batch_norm(inp, rm, rv, bn.weight, bn.bias, training=True, momentum=0.1,
                            eps=bn.eps)
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close((bn.running_mean, bn.running_var), (rm, rv))
    # not what the stored statistics give
    assert not torch.allclose(out, by_hand(inp, mean0, var0, bn), atol=1e-2)
    check_affine_never_trains(deeplab)
    # eval mode: the running statistics, left as they are
    inp, out, (mean0, var0) = capture_batchnorm(deeplab.eval(), bn, x)
    torch.testing.assert_close(out, by_hand(inp, mean0, var0, bn), rtol=1e-4, atol=1e-4)
    assert torch.equal(bn.running_mean, mean0) and torch.equal(bn.running_var, var0)
    deeplab.zero_grad(set_to_none=True)


def test_deeplab_frozen_batchnorm_keeps_the_running_statistics(deeplab_frozen):
    """deeplab_bn="frozen" (Caffe's use_global_stats): the running statistics in training
    too, never updated. Same state-dict keys as the default: either loads the other's
    checkpoints (and torchvision's ResNet-101, fc aside)."""
    model = deeplab_frozen
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert all(isinstance(m, FrozenBatchNorm2d) for m in bns)
    bn = model.backbone.layer3[5].bn2
    x = torch.randn(1, 3, 25, 33) * 2 + 1
    inp, out, (mean0, var0) = capture_batchnorm(model.train(), bn, x)
    assert model.training and not any(m.training for m in bns)
    torch.testing.assert_close(out, by_hand(inp, mean0, var0, bn), rtol=1e-4, atol=1e-4)
    assert torch.equal(bn.running_mean, mean0) and torch.equal(bn.running_var, var0)
    check_affine_never_trains(model)
    with torch.device("meta"):     # keys and shapes only
        default, reference = build_model("deeplabv2"), resnet101()
    assert list(default.state_dict()) == list(model.state_dict())
    assert {f"backbone.{k}" for k in reference.state_dict() if not k.startswith("fc.")} == \
        {k for k in model.state_dict() if k.startswith("backbone.")}
    assert sum(p.numel() for p in model.parameters()) == 43_901_068


@torch.no_grad()
def test_deeplab_from_random_weights_needs_batch_statistics(deeplab, deeplab_frozen):
    """Why `--pretrained none` can work with the default and not with frozen statistics: with
    random weights the stored statistics (mean 0, variance 1) normalise nothing, and 101
    layers of unnormalised activations blow the logits up; batch statistics keep them at
    the scale of a normalised network."""
    x = torch.randn(1, 3, 25, 33)
    scale = {bn: model.train()(x)[0].abs().max().item()        # both random (seed 0)
             for bn, model in (("train", deeplab), ("frozen", deeplab_frozen))}
    assert scale["train"] < 50 and scale["frozen"] > 1000, scale


def test_deeplab_bn_option_errors():
    with pytest.raises(ValueError, match="'batch'"):
        build_model("deeplabv2", deeplab_bn="batch")
    with pytest.raises(ValueError, match="deeplab_bn is an option of --model deeplabv2"):
        build_model("bisenet", deeplab_bn="frozen")


def test_param_groups(deeplab, bisenet18):
    groups = param_groups(deeplab, lr=2.5e-4, weight_decay=5e-4)
    assert [g["lr"] for g in groups] == [2.5e-4, 2.5e-3]
    ids = [id(p) for g in groups for p in g["params"]]
    trainable = [id(p) for p in deeplab.parameters() if p.requires_grad]
    assert sorted(ids) == sorted(trainable) and len(set(ids)) == len(ids)
    assert {id(p) for p in groups[1]["params"]} == {id(p) for p in deeplab.classifier.parameters()}
    # Each group keeps its ratio under a poly schedule.
    opt = torch.optim.SGD(groups, lr=2.5e-4, momentum=0.9)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: (1 - i / 10) ** 0.9)
    opt.step()
    sched.step()
    assert opt.param_groups[1]["lr"] == pytest.approx(10 * opt.param_groups[0]["lr"])

    (group,) = param_groups(bisenet18, lr=0.025, weight_decay=1e-4)
    assert group["lr"] == 0.025 and len(group["params"]) == len(list(bisenet18.parameters()))


# ---- BiSeNet gradients ----

def test_bisenet_backward_reaches_every_parameter(bisenet18):
    bisenet18.train().zero_grad(set_to_none=True)
    x, target = torch.randn(2, 3, 64, 96), torch.randint(0, 19, (2, 64, 96))
    loss = sum(F.cross_entropy(out, target) for out in bisenet18(x))
    loss.backward()
    no_grad = [n for n, p in bisenet18.named_parameters()
               if p.grad is None or not p.grad.abs().sum() > 0]
    assert no_grad == []
    bisenet18.zero_grad(set_to_none=True)


# ---- pretrained weights ----

def test_torchvision_state_dict_loads_into_backbone(tmp_path):
    reference = resnet18(weights=None).state_dict()  # includes fc.*, which is skipped
    torch.save(reference, tmp_path / "r18.pth")
    model = build_model("bisenet", backbone="resnet18", pretrained=str(tmp_path / "r18.pth"))
    loaded = model.backbone.state_dict()
    assert set(loaded) == {k for k in reference if not k.startswith("fc.")}
    for key, value in loaded.items():
        assert torch.equal(value, reference[key]), key


def test_torchvision_r101_file_loads_into_deeplab(tmp_path, deeplab):
    torch.manual_seed(1)
    state = {k: torch.randn_like(v.float()) if v.is_floating_point() else v
             for k, v in deeplab.backbone.state_dict().items()}
    state["fc.weight"], state["fc.bias"] = torch.randn(1000, 2048), torch.randn(1000)  # skipped
    torch.save(state, tmp_path / "r101.pth")
    model = build_model("deeplabv2", pretrained=str(tmp_path / "r101.pth"))
    for key, value in model.backbone.state_dict().items():
        assert torch.equal(value, state[key]), key  # the Caffe init file: tests/test_faithful.py


def test_file_that_does_not_fit_names_file_and_keys(tmp_path):
    state = resnet18(weights=None).state_dict()
    state["conv1.weight"] = torch.zeros(64, 3, 3, 3)
    del state["layer4.1.bn2.bias"]
    state["head.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "odd.pth")
    with pytest.raises(PretrainedWeightsError) as err:
        build_model("bisenet", pretrained=str(tmp_path / "odd.pth"))
    message = str(err.value)
    for part in ("odd.pth", "layer4.1.bn2.bias", "head.weight", "conv1.weight"):
        assert part in message
    torch.save({"not": "tensors"}, tmp_path / "junk.pth")
    with pytest.raises(PretrainedWeightsError, match="junk.pth"):
        build_model("bisenet", pretrained=str(tmp_path / "junk.pth"))
    with pytest.raises(PretrainedWeightsError, match="no such file"):
        build_model("bisenet", pretrained=str(tmp_path / "missing.pth"))


def _hub(monkeypatch, tmp_path):
    """An empty torch hub cache under tmp_path; returns its checkpoints folder."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "_hub_dir", None, raising=False)  # undo any set_dir
    return tmp_path / "hub" / "checkpoints"


def _offline_hub(monkeypatch, tmp_path):
    def no_download(*args, **kwargs):
        raise AssertionError("tried to download")
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_download)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_download)
    return _hub(monkeypatch, tmp_path)


def _serve_weights(monkeypatch, folder, state, name_hash=None):
    """Save `state` as torchvision names its files, `resnet18-<first 10 hex digits of the
    file's SHA-256>.pth` (or `name_hash`), and point resnet18's ImageNet URL at it (file://,
    which urllib, and so torch.hub's downloader, reads like http). Returns the file."""
    folder.mkdir(parents=True)
    raw = folder / "raw.pth"
    torch.save(state, raw)
    digest = hashlib.sha256(raw.read_bytes()).hexdigest()
    served = raw.rename(folder / f"resnet18-{name_hash or digest[:10]}.pth")
    monkeypatch.setitem(pretrained.IMAGENET_WEIGHTS, "resnet18",
                        SimpleNamespace(url=served.as_uri()))
    return served


def test_imagenet_downloads_missing_weights_into_the_hub_cache(monkeypatch, tmp_path):
    checkpoints = _hub(monkeypatch, tmp_path / "home")
    torch.manual_seed(2)
    reference = resnet18(weights=None).state_dict()
    served = _serve_weights(monkeypatch, tmp_path / "server", reference)
    model = build_model("bisenet", backbone="resnet18", pretrained="imagenet")
    cached = checkpoints / served.name
    assert cached.read_bytes() == served.read_bytes() and os.listdir(checkpoints) == [
        served.name]
    for key, value in model.backbone.state_dict().items():
        assert torch.equal(value, reference[key]), key
    # the next run reads the cache and downloads nothing
    _offline_hub(monkeypatch, tmp_path / "home")
    again = build_model("bisenet", backbone="resnet18", pretrained="imagenet")
    assert torch.equal(again.backbone.conv1.weight, reference["conv1.weight"])


def test_imagenet_download_checks_the_hash_in_the_file_name(monkeypatch, tmp_path):
    checkpoints = _hub(monkeypatch, tmp_path / "home")
    served = _serve_weights(monkeypatch, tmp_path / "server", resnet18().state_dict(),
                            name_hash="0123456789")      # not this file's SHA-256 prefix
    with pytest.raises(PretrainedWeightsError, match="SHA-256") as err:
        build_model("bisenet", backbone="resnet18", pretrained="imagenet")
    assert served.name in str(err.value) and not (checkpoints / served.name).exists()


def test_imagenet_offline_fails_in_one_line(monkeypatch, tmp_path):
    checkpoints = _hub(monkeypatch, tmp_path)
    url = "file:///nonexistent/weights/resnet18-f37072fd.pth"   # fails as an offline fetch
    monkeypatch.setitem(pretrained.IMAGENET_WEIGHTS, "resnet18", SimpleNamespace(url=url))
    with pytest.raises(PretrainedWeightsError) as err:
        build_model("bisenet", backbone="resnet18", pretrained="imagenet")
    message = str(err.value)
    assert "resnet18-f37072fd.pth" in message and str(checkpoints) in message
    assert url in message and "--pretrained /path" in message
    assert "\n" not in message and "Traceback" not in message
    assert err.value.__cause__ is None and err.value.__suppress_context__
    assert not checkpoints.exists() or os.listdir(checkpoints) == []


def test_imagenet_weights_come_from_torchvision():
    assert pretrained.IMAGENET_WEIGHTS["resnet18"].url == \
        "https://download.pytorch.org/models/resnet18-f37072fd.pth"
    assert pretrained.IMAGENET_WEIGHTS["resnet101"].url == \
        "https://download.pytorch.org/models/resnet101-63fe2227.pth"


def test_imagenet_from_cache(monkeypatch, tmp_path):
    checkpoints = _offline_hub(monkeypatch, tmp_path)
    checkpoints.mkdir(parents=True)
    reference = resnet18(weights=None).state_dict()
    torch.save(reference, checkpoints / "resnet18-f37072fd.pth")
    model = build_model("bisenet", backbone="resnet18", pretrained="imagenet")
    assert torch.equal(model.backbone.layer3[0].conv1.weight, reference["layer3.0.conv1.weight"])
