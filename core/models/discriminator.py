"""Output-space discriminators: AdaptSegNet's and a depthwise-separable light version.

Both take class probabilities (N x num_classes x H x W, the softmax of upsampled segmentation
logits) and return one logit per patch at 1/32 scale (N x 1 x H/32 x W/32); no sigmoid, use
BCE-with-logits.
"""
from __future__ import annotations

from torch import nn


def conv4x4(in_channels: int, out_channels: int) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 4, stride=2, padding=1)


class FCDiscriminator(nn.Module):
    """AdaptSegNet (Tsai et al., CVPR 2018, sec. 3.2 and 4.1 "Discriminator"): five 4x4
    stride-2 convs, channels C -> 64 -> 128 -> 256 -> 512 -> 1, LeakyReLU(0.2) after the first
    four, no normalisation. 2,781,121 parameters for 19 classes. Module names (conv1..conv4,
    classifier) match the reference code, so its checkpoints load."""

    def __init__(self, num_classes: int = 19, ndf: int = 64, conv=conv4x4):
        super().__init__()
        self.conv1 = conv(num_classes, ndf)
        self.conv2 = conv(ndf, ndf * 2)
        self.conv3 = conv(ndf * 2, ndf * 4)
        self.conv4 = conv(ndf * 4, ndf * 8)
        self.classifier = conv(ndf * 8, 1)
        self.leaky_relu = nn.LeakyReLU(0.2, inplace=True)

    def forward(self, x):
        for conv in (self.conv1, self.conv2, self.conv3, self.conv4):
            x = self.leaky_relu(conv(x))
        return self.classifier(x)


class SeparableConv2d(nn.Module):
    """Depthwise 4x4 stride-2 conv (groups = in channels, bias) then pointwise 1x1 (bias), no
    activation between them (MobileNet's factorisation, Howard et al. 2017)."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.depthwise = nn.Conv2d(in_channels, in_channels, 4, stride=2, padding=1,
                                   groups=in_channels)
        self.pointwise = nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x):
        return self.pointwise(self.depthwise(x))


class DSCDiscriminator(FCDiscriminator):
    """The light discriminator: FCDiscriminator with every conv depthwise-separable.
    191,364 parameters for 19 classes (14.5x fewer than FCD), 1.07 vs 15.44 G multiply-adds
    at 512x1024."""

    def __init__(self, num_classes: int = 19, ndf: int = 64):
        super().__init__(num_classes, ndf, conv=SeparableConv2d)


DISCRIMINATORS = {"fcd": FCDiscriminator, "dsc": DSCDiscriminator}


def build_discriminator(name: str, num_classes: int = 19) -> nn.Module:
    """'fcd' (AdaptSegNet) or 'dsc' (depthwise-separable)."""
    if name not in DISCRIMINATORS:
        raise ValueError(
            f"unknown discriminator {name!r}; choose one of {', '.join(DISCRIMINATORS)}")
    return DISCRIMINATORS[name](num_classes)
