"""BiSeNet (Yu et al., ECCV 2018): a spatial path and a ResNet context path, fused.

We follow the variant most GTA5 -> Cityscapes course code builds on (ooooverflow/BiSeNet,
`model/build_BiSeNet.py`), which the course project's tables and reports used: modules as in
the paper's Fig. 2 (FFM: concat -> conv-BN-ReLU -> pool -> 1x1 -> ReLU -> 1x1 -> sigmoid,
out = f + f * a), the fusion module outputs `num_classes` channels directly, a final 1x1 conv,
and 1x1 auxiliary heads on the 1/16 and 1/32 context features that exist only in training
(loss = main + aux16 + aux32).

Attention refinement module (ARM), two variants with the same weights but different functions:
- default (`arm_bn=False`), the course code: pool -> 1x1 conv -> sigmoid. That code builds a
  BatchNorm for the ARM but never calls it (its line `self.sigmoid(self.bn(x))` is commented
  out); we do not build it. Training works at batch 1.
- `arm_bn=True` (`--arm-bn`), the paper's Fig. 2(b) and CoinCheung/BiSeNet: pool -> 1x1 conv ->
  BN -> sigmoid. The BN sees one pooled value per channel and sample, so training needs a batch
  of at least 2 (PyTorch raises otherwise). With the same trained weights the two differ (an
  audit measured 9.7e-2 relative in the logits, 11% of labels changed). Checkpoints written
  before the option existed used this variant (see `core.models.model_options`).

Parameter counts for 19 classes (all parameters, auxiliary heads included; the ResNet `fc`
layer is dropped because it is never used):
    ResNet-18  12,067,136; 12,068,672 with --arm-bn (the "12.1 M" of the course variant, whose
               code builds the ARM BN though it never calls it, and also keeps the unused
               ImageNet fc, 513,000 more); 12,052,506 without the training-only heads
    ResNet-101 48,746,048; 48,752,192 with --arm-bn (the "48.7 M"; unused fc there: 2,049,000
               more); 48,687,642 without the heads
CoinCheung/BiSeNet (13.3 M for ResNet-18) is a different variant: 3x3 conv-BN-ReLU inside the
ARMs projecting to 128 channels, a 256-channel FFM and 3x3 conv heads with 256/64 mid channels.
Differences from the course code that do not change the function computed (checked against a
transcription of it in tests/test_faithful.py):
- the final 1x1 conv runs at 1/8 scale before upsampling instead of after it (bilinear
  interpolation is an affine combination with weights summing to one, so a per-pixel affine map
  commutes with it: same logits, 64x fewer multiply-adds);
- outputs are resized to the input's exact size, not by a scale factor of 8, so odd sizes work;
- `model(x, upsample=False)` returns every output at 1/8 scale, before that upsampling (FDA's
  entropy loss is computed there).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import resnet18, resnet101

from core.models.logits import upsample_logits

RESNETS = {"resnet18": resnet18, "resnet101": resnet101}


def _resize(x: torch.Tensor, size) -> torch.Tensor:
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class ConvBNReLU(nn.Sequential):
    def __init__(self, in_channels: int, out_channels: int, stride: int = 1):
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 3, stride, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


class SpatialPath(nn.Sequential):
    """Fig. 2(a): three 3x3 stride-2 conv-BN-ReLU layers -> 256 channels at 1/8 scale."""

    out_channels = 256

    def __init__(self):
        super().__init__(ConvBNReLU(3, 64, 2), ConvBNReLU(64, 128, 2), ConvBNReLU(128, 256, 2))


class ResNetFeatures(nn.Module):
    """Context-path backbone: a torchvision ResNet (built with weights=None) without avgpool/fc.

    Returns the 1/16 (layer3) and 1/32 (layer4) features. State-dict keys are torchvision's
    minus 'fc.', so ImageNet weights load unchanged (see core/models/pretrained.py).
    """

    def __init__(self, name: str):
        super().__init__()
        resnet = RESNETS[name](weights=None)
        self.conv1, self.bn1, self.relu, self.maxpool = (
            resnet.conv1, resnet.bn1, resnet.relu, resnet.maxpool)
        self.layer1, self.layer2, self.layer3, self.layer4 = (
            resnet.layer1, resnet.layer2, resnet.layer3, resnet.layer4)
        self.channels = (resnet.fc.in_features // 2, resnet.fc.in_features)  # (1/16, 1/32)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer2(self.layer1(x))
        f16 = self.layer3(x)
        return f16, self.layer4(f16)


class AttentionRefinementModule(nn.Module):
    """Global pool -> 1x1 conv [-> BN] -> sigmoid; re-weights the input's channels.

    bn=False: the course code (its BN is built but never called); bn=True: the paper's
    Fig. 2(b).
    """

    def __init__(self, channels: int, bn: bool = False):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.conv = nn.Conv2d(channels, channels, 1)
        self.bn = nn.BatchNorm2d(channels) if bn else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(self.bn(self.conv(self.pool(x))))


class FeatureFusionModule(nn.Module):
    """Fig. 2(c): concat -> conv-BN-ReLU (f) -> channel attention a (pool, 1x1, ReLU, 1x1,
    sigmoid) -> f + f * a. Here it outputs the class scores directly (course variant)."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv = ConvBNReLU(in_channels, out_channels)
        self.attention = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(out_channels, out_channels, 1),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 1),
            nn.Sigmoid(),
        )

    def forward(self, spatial: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        f = self.conv(torch.cat([spatial, context], dim=1))
        return f + f * self.attention(f)


class BiSeNet(nn.Module):
    """Training mode: (main, aux16, aux32) logits; eval mode: main logits. All at input size,
    or at 1/8 scale with upsample=False. `arm_bn`: the ARM variant (module docstring)."""

    def __init__(self, num_classes: int = 19, backbone: str = "resnet18", arm_bn: bool = False):
        super().__init__()
        self.spatial_path = SpatialPath()
        self.backbone = ResNetFeatures(backbone)
        c16, c32 = self.backbone.channels
        self.arm16 = AttentionRefinementModule(c16, bn=arm_bn)
        self.arm32 = AttentionRefinementModule(c32, bn=arm_bn)
        self.aux16 = nn.Conv2d(c16, num_classes, 1)  # training-only heads
        self.aux32 = nn.Conv2d(c32, num_classes, 1)
        self.ffm = FeatureFusionModule(SpatialPath.out_channels + c16 + c32, num_classes)
        self.classifier = nn.Conv2d(num_classes, num_classes, 1)
        # Everything outside the backbone: Kaiming init, as the course code does.
        for name, m in self.named_modules():
            if name.startswith("backbone"):
                continue
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor, upsample: bool = True):
        spatial = self.spatial_path(x)
        f16, f32 = self.backbone(x)
        tail = f32.mean(dim=(2, 3), keepdim=True)  # global context: pooled tail of the backbone
        c16 = _resize(self.arm16(f16), spatial.shape[-2:])
        c32 = _resize(self.arm32(f32) * tail, spatial.shape[-2:])
        outputs = [self.classifier(self.ffm(spatial, torch.cat([c16, c32], dim=1)))]
        if self.training:
            outputs += [self.aux16(c16), self.aux32(c32)]
        if upsample:   # in float32, as the losses take them (core.models.upsample)
            outputs = [upsample_logits(out, x.shape[-2:]) for out in outputs]
        return tuple(outputs) if self.training else outputs[0]
