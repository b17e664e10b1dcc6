"""Segmenters, discriminators and backbone loading (CPU, small odd-sized inputs)."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import resnet18

from core.models import (
    BACKBONES,
    MODEL_NAMES,
    PretrainedWeightsError,
    build_discriminator,
    build_model,
    param_groups,
)
from core.models.deeplabv2 import FrozenBatchNorm2d


@pytest.fixture(scope="module")
def deeplab():
    torch.manual_seed(0)
    return build_model("deeplabv2")


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
    assert len(check_outputs(deeplab, (65, 97), batch=1)) == 1  # batch 1: BN is frozen


def test_bisenet_channels_last_and_bf16_autocast(bisenet18):
    x = torch.randn(1, 3, 67, 93).contiguous(memory_format=torch.channels_last)
    model = bisenet18.eval().to(memory_format=torch.channels_last)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x)
    bisenet18.to(memory_format=torch.contiguous_format)
    assert out.shape == (1, 19, 67, 93) and torch.isfinite(out.float()).all()


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


def test_deeplab_batchnorm_is_frozen(deeplab):
    bns = [m for m in deeplab.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns and all(isinstance(m, FrozenBatchNorm2d) for m in bns)
    stats = [(m.running_mean.clone(), m.running_var.clone()) for m in bns]
    deeplab.train()
    assert deeplab.training and not any(m.training for m in bns)
    deeplab.zero_grad(set_to_none=True)
    (logits,) = deeplab(torch.randn(1, 3, 33, 41) * 5 + 3)
    logits.mean().backward()
    for m, (mean, var) in zip(bns, stats, strict=True):
        assert m.weight.grad is None and m.bias.grad is None
        assert not m.weight.requires_grad and not m.bias.requires_grad
        assert torch.equal(m.running_mean, mean) and torch.equal(m.running_var, var)
    assert deeplab.backbone.conv1.weight.grad is not None
    deeplab.zero_grad(set_to_none=True)


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


def _offline_hub(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "_hub_dir", None, raising=False)  # undo any set_dir

    def no_download(*args, **kwargs):
        raise AssertionError("tried to download")
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_download)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_download)
    return tmp_path / "hub" / "checkpoints"


def test_imagenet_without_cache_fails_clearly(monkeypatch, tmp_path):
    checkpoints = _offline_hub(monkeypatch, tmp_path)
    with pytest.raises(PretrainedWeightsError) as err:
        build_model("bisenet", backbone="resnet18", pretrained="imagenet")
    assert "resnet18-f37072fd.pth" in str(err.value) and str(checkpoints) in str(err.value)
    assert "--pretrained /path" in str(err.value)


def test_imagenet_from_cache(monkeypatch, tmp_path):
    checkpoints = _offline_hub(monkeypatch, tmp_path)
    checkpoints.mkdir(parents=True)
    reference = resnet18(weights=None).state_dict()
    torch.save(reference, checkpoints / "resnet18-f37072fd.pth")
    model = build_model("bisenet", backbone="resnet18", pretrained="imagenet")
    assert torch.equal(model.backbone.layer3[0].conv1.weight, reference["layer3.0.conv1.weight"])
