"""DeepLab-v2 with ResNet-101 (Chen et al., TPAMI 2017), as the DeepLab UDA codebases build it,
with the strides where the ImageNet weights we load expect them.

- Backbone: ResNet-101 with max-pool in ceil_mode and output stride 8 by dilation (layer3
  rate 2, layer4 rate 4, every block of the layer). A 512x1024 input gives 65x129 logits.
- Where the stride of a downsampling bottleneck sits (`style`, the names mmcv uses):
  'caffe', the original DeepLab/Caffe ResNet the UDA code bases build, puts it in the first
  1x1 conv; 'pytorch' (the default) puts it in the 3x3 conv, as torchvision's ResNet-101 v1.5
  weights, the only initialisation this project loads (core/models/pretrained.py), expect.
  Same parameters and output size; only layer2's first block computes differently (its 1x1
  conv runs at 1/4 scale, then the 3x3 conv strides). A checkpoint records the style
  (`core.models.model_options`); those written before the option existed used 'caffe'.
- Classifier: ASPP-L (sec. 3.3, Fig. 4/7): four 3x3 convs with rates 6/12/18/24 on the same
  feature, their class scores SUMMED. (AdaptSegNet's `Classifier_Module`, copied widely, has a
  `return` inside its loop and sums only the first two branches; not reproduced here.)
- BatchNorm (`bn`): the affine parameters never train (requires_grad False, left out of
  `param_groups`), as in AdaptSegNet (model/deeplab_multi.py), FDA (model/deeplab.py) and BDL.
  'train' (the default) is what those code bases run: plain nn.BatchNorm2d under
  model.train(), so at their batch size 1 each image is normalised with its own statistics
  and the running statistics follow the source and target images seen (eval mode uses the
  running statistics, as usual). 'frozen' always uses the stored running statistics, in
  training too (Caffe's `use_global_stats`), and never updates them. Same parameters and
  state-dict keys either way; a checkpoint records which (`core.models.model_options`), those
  written before the option existed used 'frozen'.
- Optimiser: the classifier at 10x the backbone's learning rate (see `param_groups`).

Parameters for 19 classes: 43,901,068 (backbone 42,500,160 of which 105,344 are the BN affine
parameters that never train; classifier 4 x 350,227).
"""
from __future__ import annotations

import torch
from torch import nn

from core.models.logits import upsample_logits

RESNET_STYLES = ("pytorch", "caffe")  # stride in the 3x3 conv / in the first 1x1 conv
BN_MODES = ("train", "frozen")  # batch statistics in train mode / always the running ones


class FrozenBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d with frozen affine parameters that stays in eval mode under model.train()
    (`bn="frozen"`): it always normalises with its running statistics and never updates them.

    A subclass rather than torchvision.ops.FrozenBatchNorm2d so that the affine parameters stay
    parameters (state-dict keys and the 43.9 M parameter count match the reference code).
    """

    def __init__(self, num_features: int):
        super().__init__(num_features)
        self.weight.requires_grad_(False)
        self.bias.requires_grad_(False)

    def train(self, mode: bool = True):
        return super().train(False)


def batchnorm(num_features: int, bn: str = "train") -> nn.BatchNorm2d:
    """The backbone's BatchNorm. 'train': nn.BatchNorm2d whose affine parameters do not train,
    as AdaptSegNet's deeplab_multi.py builds it (`requires_grad = False` on the BN parameters
    of every layer, model.train() in training); 'frozen': FrozenBatchNorm2d."""
    if bn == "frozen":
        return FrozenBatchNorm2d(num_features)
    layer = nn.BatchNorm2d(num_features)
    layer.weight.requires_grad_(False)
    layer.bias.requires_grad_(False)
    return layer


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, dilation: int = 1,
                 downsample: nn.Module | None = None, style: str = "pytorch", bn: str = "train"):
        super().__init__()
        stride_1x1, stride_3x3 = (stride, 1) if style == "caffe" else (1, stride)
        self.conv1 = nn.Conv2d(inplanes, planes, 1, stride=stride_1x1, bias=False)
        self.bn1 = batchnorm(planes, bn)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride_3x3, padding=dilation,
                               dilation=dilation, bias=False)
        self.bn2 = batchnorm(planes, bn)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = batchnorm(planes * 4, bn)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class DeepLabResNet(nn.Module):
    """ResNet-101 at output stride 8. State-dict keys match torchvision's ResNet (minus 'fc.')."""

    def __init__(self, layers=(3, 4, 23, 3), style: str = "pytorch", bn: str = "train"):
        super().__init__()
        if style not in RESNET_STYLES:
            raise ValueError(f"ResNet style {style!r}: expected one of {RESNET_STYLES}")
        if bn not in BN_MODES:
            raise ValueError(f"DeepLabV2 BatchNorm {bn!r}: expected one of {BN_MODES}")
        self.style, self.bn = style, bn
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = batchnorm(64, bn)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=True)
        self.inplanes = 64
        self.layer1 = self._make_layer(64, layers[0])
        self.layer2 = self._make_layer(128, layers[1], stride=2)
        self.layer3 = self._make_layer(256, layers[2], dilation=2)
        self.layer4 = self._make_layer(512, layers[3], dilation=4)
        self.out_channels = self.inplanes
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def _make_layer(self, planes: int, blocks: int, stride: int = 1, dilation: int = 1):
        downsample = None
        if stride != 1 or self.inplanes != planes * Bottleneck.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * Bottleneck.expansion, 1, stride=stride,
                          bias=False),
                batchnorm(planes * Bottleneck.expansion, self.bn),
            )
        layers = [Bottleneck(self.inplanes, planes, stride, dilation, downsample, self.style,
                             self.bn)]
        self.inplanes = planes * Bottleneck.expansion
        layers += [Bottleneck(self.inplanes, planes, dilation=dilation, bn=self.bn)
                   for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


class ASPPClassifier(nn.Module):
    """ASPP-L (Chen et al. 2017, sec. 3.3): sum of four dilated 3x3 convs (rates 6/12/18/24).

    `conv2d_list` keeps the reference code's name, so 'layer5.conv2d_list.N.*' keys map onto it.
    """

    def __init__(self, in_channels: int, num_classes: int, rates=(6, 12, 18, 24)):
        super().__init__()
        self.conv2d_list = nn.ModuleList(
            nn.Conv2d(in_channels, num_classes, 3, padding=r, dilation=r) for r in rates)
        for conv in self.conv2d_list:  # N(0, 0.01) as in the reference code
            nn.init.normal_(conv.weight, 0.0, 0.01)
            nn.init.zeros_(conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv2d_list[0](x)
        for conv in self.conv2d_list[1:]:
            out = out + conv(x)  # all four branches, outside any early return
        return out


class DeepLabV2(nn.Module):
    """Training mode: a 1-tuple (logits,); eval mode: logits. Upsampled (bilinear,
    align_corners=False) from 1/8 to the input size, or left at 1/8 with upsample=False.
    `style`: where the backbone's strides sit; `bn`: 'train' | 'frozen' BatchNorm statistics
    (module docstring)."""

    def __init__(self, num_classes: int = 19, backbone: str = "resnet101",
                 style: str = "pytorch", bn: str = "train"):
        super().__init__()
        if backbone != "resnet101":
            raise ValueError(f"DeepLabV2 is built on resnet101, not {backbone}")
        self.backbone = DeepLabResNet(style=style, bn=bn)
        self.classifier = ASPPClassifier(self.backbone.out_channels, num_classes)

    def forward(self, x: torch.Tensor, upsample: bool = True):
        logits = self.classifier(self.backbone(x))
        if upsample:
            logits = upsample_logits(logits, x.shape[-2:])
        return (logits,) if self.training else logits

    def param_groups(self, lr: float, weight_decay: float) -> list[dict]:
        """Backbone at `lr`, classifier at 10 x `lr` (DeepLab UDA recipe); the BN affine
        parameters (requires_grad False) left out, as AdaptSegNet's get_1x_lr_params_NOscale
        leaves them out."""
        def trainable(module):
            return [p for p in module.parameters() if p.requires_grad]
        return [
            {"params": trainable(self.backbone), "lr": lr, "weight_decay": weight_decay,
             "name": "backbone"},
            {"params": trainable(self.classifier), "lr": 10 * lr, "weight_decay": weight_decay,
             "name": "classifier"},
        ]
