"""Issue 11: where the project follows the course code and the papers' official code.

- BiSeNet's default network computes what the course code (ooooverflow/BiSeNet) computes,
  checked against a transcription of that code fed the same weights; --arm-bn gives the
  paper's attention refinement module instead.
- DeepLabV2: the Caffe DeepLab init file is refused; the strides sit where torchvision's
  weights expect them, and checkpoints record where (older ones: the Caffe layout); the
  BatchNorm statistics are the batch's in train mode (the UDA code bases') or frozen, and
  checkpoints record which (older ones: frozen). STDC: older checkpoints keep the optimiser
  grouping they were trained with.
- FDA: source crops of the target size, so the window is 5/25/46 at the default sizes; the
  entropy loss on the logits at the network's output stride; the poly horizon.
"""
import math

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_args
from torch import nn
from torchvision.models import resnet18, resnet101

import train_fda
from core import build
from core.checkpoint import save_checkpoint
from core.errors import ConfigError
from core.evaluation import load_model
from core.losses import cross_entropy, seg_loss_sum
from core.models import PretrainedWeightsError, build_model, model_options
from core.schedule import poly_scheduler
from core.translate import fda_window

# --------------------------------------------------------------------------- course BiSeNet
# A transcription of ooooverflow/BiSeNet, model/build_BiSeNet.py and build_contextpath.py
# (ResNet-18 context path), module names and forward as there.


class ConvBlock(nn.Module):
    def __init__(self, in_channels, out_channels, kernel_size=3, stride=2, padding=1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=kernel_size,
                               stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU()

    def forward(self, input):
        return self.relu(self.bn(self.conv1(input)))


class SpatialPathCourse(nn.Module):
    def __init__(self):
        super().__init__()
        self.convblock1 = ConvBlock(3, 64)
        self.convblock2 = ConvBlock(64, 128)
        self.convblock3 = ConvBlock(128, 256)

    def forward(self, input):
        return self.convblock3(self.convblock2(self.convblock1(input)))


class ContextPathCourse(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = resnet18(weights=None)

    def forward(self, input):
        f = self.features
        x = f.maxpool(f.relu(f.bn1(f.conv1(input))))
        feature3 = f.layer3(f.layer2(f.layer1(x)))
        feature4 = f.layer4(feature3)
        tail = torch.mean(feature4, 3, keepdim=True)
        tail = torch.mean(tail, 2, keepdim=True)
        return feature3, feature4, tail


class ARMCourse(nn.Module):
    def __init__(self, in_channels, out_channels):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=1)
        self.bn = nn.BatchNorm2d(out_channels)      # built ...
        self.sigmoid = nn.Sigmoid()
        self.avgpool = nn.AdaptiveAvgPool2d(output_size=(1, 1))

    def forward(self, input):
        x = self.conv(self.avgpool(input))
        x = self.sigmoid(x)                          # ... but never called
        return torch.mul(input, x)


class FFMCourse(nn.Module):
    def __init__(self, num_classes, in_channels):
        super().__init__()
        self.convblock = ConvBlock(in_channels, num_classes, stride=1)
        self.conv1 = nn.Conv2d(num_classes, num_classes, kernel_size=1)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(num_classes, num_classes, kernel_size=1)
        self.sigmoid = nn.Sigmoid()
        self.avgpool = nn.AdaptiveAvgPool2d(output_size=(1, 1))

    def forward(self, input_1, input_2):
        feature = self.convblock(torch.cat((input_1, input_2), dim=1))
        x = self.sigmoid(self.conv2(self.relu(self.conv1(self.avgpool(feature)))))
        return torch.add(torch.mul(feature, x), feature)


class BiSeNetCourse(nn.Module):
    def __init__(self, num_classes):
        super().__init__()
        self.saptial_path = SpatialPathCourse()
        self.context_path = ContextPathCourse()
        self.attention_refinement_module1 = ARMCourse(256, 256)
        self.attention_refinement_module2 = ARMCourse(512, 512)
        self.supervision1 = nn.Conv2d(256, num_classes, kernel_size=1)
        self.supervision2 = nn.Conv2d(512, num_classes, kernel_size=1)
        self.feature_fusion_module = FFMCourse(num_classes, 1024)
        self.conv = nn.Conv2d(num_classes, num_classes, kernel_size=1)

    def forward(self, input):
        sx = self.saptial_path(input)
        cx1, cx2, tail = self.context_path(input)
        cx1 = self.attention_refinement_module1(cx1)
        cx2 = self.attention_refinement_module2(cx2)
        cx2 = torch.mul(cx2, tail)
        cx1 = F.interpolate(cx1, size=sx.size()[-2:], mode="bilinear")
        cx2 = F.interpolate(cx2, size=sx.size()[-2:], mode="bilinear")
        cx = torch.cat((cx1, cx2), dim=1)
        if self.training:
            cx1_sup = F.interpolate(self.supervision1(cx1), size=input.size()[-2:],
                                    mode="bilinear")
            cx2_sup = F.interpolate(self.supervision2(cx2), size=input.size()[-2:],
                                    mode="bilinear")
        result = self.feature_fusion_module(sx, cx)
        result = F.interpolate(result, scale_factor=8, mode="bilinear")
        result = self.conv(result)
        if self.training:
            return result, cx1_sup, cx2_sup
        return result


COURSE_TO_OURS = (  # prefix of a course-code key -> prefix of ours
    ("saptial_path.convblock1.conv1.", "spatial_path.0.0."),
    ("saptial_path.convblock1.bn.", "spatial_path.0.1."),
    ("saptial_path.convblock2.conv1.", "spatial_path.1.0."),
    ("saptial_path.convblock2.bn.", "spatial_path.1.1."),
    ("saptial_path.convblock3.conv1.", "spatial_path.2.0."),
    ("saptial_path.convblock3.bn.", "spatial_path.2.1."),
    ("context_path.features.", "backbone."),
    ("attention_refinement_module1.", "arm16."),
    ("attention_refinement_module2.", "arm32."),
    ("supervision1.", "aux16."),
    ("supervision2.", "aux32."),
    ("feature_fusion_module.convblock.conv1.", "ffm.conv.0."),
    ("feature_fusion_module.convblock.bn.", "ffm.conv.1."),
    ("feature_fusion_module.conv1.", "ffm.attention.1."),
    ("feature_fusion_module.conv2.", "ffm.attention.3."),
    ("conv.", "classifier."),
)


def course_model_with_weights_of(ours):
    """The course network holding `ours`' weights; returns it and the keys left unset."""
    course = BiSeNetCourse(19)
    mine = ours.state_dict()
    state, unset = course.state_dict(), []
    for key in state:
        ours_key = next((new + key[len(old):] for old, new in COURSE_TO_OURS
                         if key.startswith(old)), None)
        if ours_key in mine:
            state[key] = mine[ours_key].clone()
        else:
            unset.append(key)
    course.load_state_dict(state)
    return course, unset


def randomise_batchnorm(model, seed):
    """Non-trivial BN affine parameters and running statistics, so eval mode tests them."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.weight.data = 1 + 0.2 * torch.randn(n, generator=g)
            m.bias.data = 0.1 * torch.randn(n, generator=g)
            m.running_mean = 0.1 * torch.randn(n, generator=g)
            m.running_var = 0.5 + torch.rand(n, generator=g)


def relative_error(a, b):
    return ((a - b).norm() / b.norm()).item()


@pytest.fixture(scope="module")
def bisenet_pair():
    """Our default BiSeNet-R18 and the --arm-bn variant holding the same weights."""
    torch.manual_seed(0)
    default = build_model("bisenet", backbone="resnet18")
    randomise_batchnorm(default, seed=1)
    with_bn = build_model("bisenet", backbone="resnet18", arm_bn=True)
    missing, unexpected = with_bn.load_state_dict(default.state_dict(), strict=False)
    assert unexpected == [] and all(".bn." in k for k in missing)  # only the ARM BN is new
    randomise_batchnorm(with_bn.arm16, seed=2)
    randomise_batchnorm(with_bn.arm32, seed=3)
    return default, with_bn


def test_default_bisenet_equals_the_course_code(bisenet_pair):
    default, with_bn = bisenet_pair
    course, unset = course_model_with_weights_of(default)
    # everything but the ImageNet fc and the ARM BN (built, never called) comes from ours
    assert {k.rsplit(".", 1)[0] for k in unset} == {
        "context_path.features.fc", "attention_refinement_module1.bn",
        "attention_refinement_module2.bn"}
    # the same course network holding the --arm-bn variant's ARM BN weights too
    course_bn, _ = course_model_with_weights_of(with_bn)
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        for model in (default, course, with_bn, course_bn):
            model.eval()
        assert relative_error(default(x), course(x)) < 1e-5
        assert relative_error(with_bn(x), course(x)) > 1e-3      # the paper's ARM differs
        assert torch.equal(course_bn(x), course(x))              # that BN is never called
        for model in (default, course, with_bn):
            model.train()
        ours, theirs = default(x), course(x)
        assert len(ours) == len(theirs) == 3                      # main, aux16, aux32
        for a, b in zip(ours, theirs, strict=True):
            assert relative_error(a, b) < 1e-5
        assert relative_error(with_bn(x)[0], theirs[0]) > 1e-3


def test_default_bisenet_trains_at_batch_1_and_arm_bn_cannot():
    torch.manual_seed(0)
    model = build_model("bisenet", backbone="resnet18").train()
    x, y = torch.randn(1, 3, 64, 96), torch.zeros(1, 64, 96, dtype=torch.long)
    y[..., 48:] = 5                                    # left half road, right half pole
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    losses = []
    for _ in range(5):
        loss = seg_loss_sum(cross_entropy, model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        build_model("bisenet", backbone="resnet18", arm_bn=True).train()(x)


def test_arm_bn_flag_is_parsed_recorded_and_rebuilt(tmp_path, bisenet_pair):
    roots = ["--source-root", "s", "--target-root", "t"]
    args = train_fda.parse_args(roots)
    assert args.arm_bn is False and model_options(args) == {"arm_bn": False}
    args = train_fda.parse_args(roots + ["--arm-bn"])
    assert model_options(args) == {"arm_bn": True}
    with pytest.raises(SystemExit):     # parser error: --arm-bn is a BiSeNet option
        train_fda.parse_args(roots + ["--arm-bn", "--model", "deeplabv2"])
    with pytest.raises(ConfigError, match="--arm-bn"):
        build_model("deeplabv2", arm_bn=True)
    # load_model rebuilds the variant the checkpoint records; older ones applied the BN
    default, with_bn = bisenet_pair
    x = torch.randn(1, 3, 64, 96)
    for model, recorded in ((default, {"arm_bn": False}), (with_bn, {"arm_bn": True}),
                            (with_bn, {})):
        path = tmp_path / f"ckpt{len(recorded)}{recorded.get('arm_bn')}.pth"
        save_checkpoint({"model": model.state_dict(), "args": {
            "model": "bisenet", "backbone": "resnet18", "val_size": [64, 96], **recorded}}, path)
        rebuilt, _, _ = load_model(path, torch.device("cpu"))
        with torch.no_grad():   # (rebuilt in its own memory layout: equal to float rounding)
            assert relative_error(rebuilt(x), model.eval()(x)) < 1e-5


def test_resuming_a_checkpoint_older_than_the_options_keeps_its_network(tmp_path):
    roots = ["--source-root", "s", "--target-root", "t", "--out", str(tmp_path)]
    for model in ("bisenet", "deeplabv2", "stdc"):
        stored = vars(train_fda.parse_args(roots + ["--model", model]))
        assert stored["resnet_style"] == "pytorch"               # recorded for new runs
        for option in ("arm_bn", "resnet_style", "deeplab_bn", "stdc_groups"):
            stored.pop(option, None)                              # as written before them
        path = tmp_path / f"{model}.pth"
        save_checkpoint({"model": {}, "args": stored, "script": "train_fda"}, path)
        resumed = train_fda.parse_args(["--resume", str(path)])
        assert model_options(resumed) == {
            "bisenet": {"arm_bn": True},
            "deeplabv2": {"resnet_style": "caffe", "deeplab_bn": "frozen"},
            "stdc": {"stdc_groups": "all"}}[model]


# --------------------------------------------------------------------------- DeepLabV2

@pytest.fixture(scope="module")
def torchvision_r101():
    torch.manual_seed(0)
    reference = resnet101(weights=None).eval()
    randomise_batchnorm(reference, seed=4)
    return reference


def test_caffe_deeplab_init_file_is_refused(tmp_path, torchvision_r101):
    state = {f"Scale.{k}": v for k, v in torchvision_r101.state_dict().items()
             if not k.startswith("fc.")}
    state["Scale.layer5.conv2d_list.0.weight"] = torch.zeros(21, 2048, 3, 3)
    torch.save(state, tmp_path / "DeepLab_init.pth")
    with pytest.raises(PretrainedWeightsError, match=r"DeepLab_init\.pth.*BGR 0-255.*104\.00"):
        build_model("deeplabv2", pretrained=str(tmp_path / "DeepLab_init.pth"))


def test_deeplab_strides_sit_where_torchvision_weights_expect_them(tmp_path, torchvision_r101):
    torch.save(torchvision_r101.state_dict(), tmp_path / "r101.pth")
    x = torch.randn(1, 3, 65, 97)   # odd sizes where ceil_mode max-pool = torchvision's
    r = torchvision_r101
    with torch.no_grad():
        expected = r.layer2(r.layer1(r.maxpool(r.relu(r.bn1(r.conv1(x))))))
    for style, matches in (("pytorch", True), ("caffe", False)):
        model = build_model("deeplabv2", pretrained=str(tmp_path / "r101.pth"),
                            resnet_style=style).eval()
        b = model.backbone
        first = b.layer2[0]
        strides = (first.conv1.stride, first.conv2.stride)
        assert strides == (((1, 1), (2, 2)) if style == "pytorch" else ((2, 2), (1, 1)))
        with torch.no_grad():
            got = b.layer2(b.layer1(b.maxpool(b.relu(b.bn1(b.conv1(x))))))
        assert got.shape == expected.shape
        assert (relative_error(got, expected) < 1e-5) == matches, style
    assert build_model("deeplabv2").backbone.layer2[0].conv2.stride == (2, 2)  # the default


def test_checkpoint_records_the_deeplab_layout_and_load_model_uses_it(tmp_path):
    x = torch.randn(1, 3, 41, 57)
    # new runs record 'pytorch'; a checkpoint older than the option was trained in 'caffe'
    for style, recorded in (("pytorch", {"resnet_style": "pytorch"}), ("caffe", {})):
        torch.manual_seed(0)
        model = build_model("deeplabv2", resnet_style=style).eval()
        path = tmp_path / f"{style}{len(recorded)}.pth"
        save_checkpoint({"model": model.state_dict(), "args": {
            "model": "deeplabv2", "backbone": "resnet101", "val_size": [41, 57], **recorded}},
            path)
        rebuilt, _, _ = load_model(path, torch.device("cpu"))
        assert rebuilt.backbone.style == style
        with torch.no_grad():
            assert torch.equal(rebuilt(x), model(x))


def test_checkpoint_records_the_deeplab_batchnorm_and_load_model_uses_it(tmp_path):
    """deeplab_bn is recorded like resnet_style; a checkpoint older than the option trained
    with frozen statistics and is rebuilt so (it matters once training resumes: evaluation
    uses the running statistics either way)."""
    torch.manual_seed(0)
    state = build_model("deeplabv2").state_dict()   # the same keys for both
    for bn, recorded in (("train", {"deeplab_bn": "train"}), ("frozen", {"deeplab_bn":
                         "frozen"}), ("frozen", {})):
        path = tmp_path / f"{bn}{len(recorded)}.pth"
        save_checkpoint({"model": state, "args": {
            "model": "deeplabv2", "backbone": "resnet101", "val_size": [41, 57],
            "resnet_style": "pytorch", **recorded}}, path)
        rebuilt, _, stored = load_model(path, torch.device("cpu"))
        assert model_options(stored)["deeplab_bn"] == bn == rebuilt.backbone.bn
        bns = [m for m in rebuilt.modules() if isinstance(m, nn.BatchNorm2d)]
        assert len(bns) == 104 and not any(m.training for m in bns)   # eval mode
        rebuilt.train()           # batch statistics in training for 'train' only
        assert all(m.training == (bn == "train") for m in bns)


# --------------------------------------------------------------------------- FDA

def window_half_size(height, width, beta):
    h1, h2, _, _ = fda_window(height, width, beta)
    return (h2 - h1 - 1) // 2


def test_fda_translates_target_size_crops_by_default():
    args = train_fda.parse_args(["--source-root", "s", "--target-root", "t"])
    assert args.source_size == (720, 1280) and args.target_size == (512, 1024)
    assert tuple(args.crop) == (512, 1024)
    assert [window_half_size(*args.crop, b) for b in (0.01, 0.05, 0.09)] == [5, 25, 46]
    # the full 720x1280 frame would give a window 1.41x larger
    assert [window_half_size(720, 1280, b) for b in (0.01, 0.05, 0.09)] == [7, 36, 64]
    given = train_fda.parse_args(["--source-root", "s", "--target-root", "t",
                                  "--crop", "600", "1200"])
    assert tuple(given.crop) == (600, 1200)                      # an explicit crop stays
    same = train_fda.parse_args(["--source", "cityscapes", "--source-root", "s",
                                 "--target-root", "t"])
    assert same.crop is None                                     # nothing to crop


def test_fda_source_batches_have_the_target_size(tiny_demo, tmp_path):
    args = train_fda.parse_args(tiny_args(tiny_demo, tmp_path / "run", target=True) + [
        "--source-size", "72", "128"])
    assert tuple(args.crop) == (64, 128) == tuple(args.target_size)
    assert build.source_dataset(args)[0]["image"].shape == (3, 64, 128)


def entropy_by_hand(logits, eta=2.0):
    p = logits.double().softmax(1)
    h = -(p * p.log()).sum(1) / math.log(19)
    return ((h ** 2 + 1e-8) ** eta).mean().item()


def test_fda_entropy_is_taken_on_the_logits_before_upsampling(tmp_path):
    torch.manual_seed(0)
    model = build_model("bisenet", 19, "resnet18").train()
    head_outputs = []     # the main head's logits, before the network upsamples them
    model.classifier.register_forward_hook(lambda m, i, out: head_outputs.append(out.detach()))
    source = {"image": torch.randint(0, 256, (2, 3, 64, 96), dtype=torch.uint8),
              "label": torch.randint(0, 19, (2, 64, 96))}
    target = {"image": torch.randint(0, 256, (2, 3, 64, 96), dtype=torch.uint8),
              "label": torch.randint(0, 19, (2, 64, 96))}
    _, losses = train_fda.fda_losses(model, cross_entropy, source, target, method="fda",
                                     beta=0.01, eta=2.0, ent_weight=0.005, lambda_pseudo=1.0)
    native = head_outputs[-1]                                     # the target forward's
    assert native.shape == (2, 19, 8, 12)                         # 1/8 scale
    assert losses["loss_ent"].item() == pytest.approx(entropy_by_hand(native), rel=1e-5)
    upsampled = F.interpolate(native, size=(64, 96), mode="bilinear", align_corners=False)
    assert entropy_by_hand(upsampled) != pytest.approx(entropy_by_hand(native), rel=1e-3)
    # the pseudo-label CE still sees logits at the label's size
    with torch.no_grad():
        outputs = model(train_fda.normalize(target["image"]))
    expected = seg_loss_sum(cross_entropy, outputs, target["label"])
    assert losses["loss_pseudo"].item() == pytest.approx(expected.item(), rel=1e-5)


# --------------------------------------------------------------------------- poly horizon

def lr_after(args, iters_per_epoch, steps):
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=1.0)
    sched = poly_scheduler(opt, build.poly_horizon(args, iters_per_epoch))
    for _ in range(steps):
        opt.step()
        sched.step()
    return opt.param_groups[0]["lr"]


def test_poly_horizon_can_outlast_the_run():
    roots = ["--source-root", "s", "--target-root", "t", "--epochs", "3"]
    # AdaptSegNet's run: 150k steps of a 250k-step schedule ends at 0.44x the base LR
    official = train_fda.parse_args(roots + ["--poly-iters", "250"])
    assert build.poly_horizon(official, 50) == 250
    assert lr_after(official, 50, 150) == pytest.approx((1 - 150 / 250) ** 0.9)
    assert round(lr_after(official, 50, 150), 2) == 0.44
    default = train_fda.parse_args(roots)                   # decays to 0 at the run's end
    assert build.poly_horizon(default, 50) == 150 and lr_after(default, 50, 150) == 0.0
