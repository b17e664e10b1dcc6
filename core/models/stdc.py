"""STDC-Seg (Fan et al., CVPR 2021, "Rethinking BiSeNet for Real-time Semantic Segmentation").

BiSeNet without its spatial path: an STDC backbone's own 1/8 features play that part, and a
detail head, used only in training, teaches them to see boundaries (sec. 3.2). The network is
the authors' (MichaelFan01/STDC-Seg: nets/stdcnet.py, models/model_stages.py), rewritten here
with plain BatchNorm2d instead of InPlace-ABN:

- backbone: STDCNet813 (`stdc1`, stages of [2, 2, 2] STDC modules) or STDCNet1446 (`stdc2`,
  [4, 5, 3]); base 64; two 3x3 stride-2 conv-BN-ReLU (32 and 64 channels, 1/2 and 1/4), then
  three stages of concatenating STDC modules with 4 blocks each (256, 512, 1024 channels at
  1/8, 1/16, 1/32). `use_conv_last` off, so the ImageNet tail (conv_last, fc, bn, linear) is
  not built. Key names are the official checkpoint's (`features.<i>....`).
- context path: ARM(1024->128) on the 1/32 features plus a global-average tail
  (pool -> 1x1 conv-BN-ReLU to 128), nearest upsampling, 3x3 conv-BN-ReLU; ARM(512->128) on
  the 1/16 features plus that, nearest upsampling to 1/8, 3x3 conv-BN-ReLU.
  ARM = 3x3 conv-BN-ReLU, then pool -> 1x1 conv -> BN -> sigmoid re-weighting its channels.
- FFM(256 + 128 -> 256) fuses the backbone's 1/8 features with the context path; main head =
  3x3 conv-BN-ReLU(256) + 1x1 conv to the classes.
- training only: auxiliary heads (3x3 conv-BN-ReLU(64) + 1x1) on the 1/8 and 1/16 context
  features, and the detail head (the same with 1 output channel) on the backbone's 1/8
  features, trained against Laplacian boundaries of the labels (core/losses.py, detail_loss).
  The authors' class also builds detail heads at 1/2, 1/4 and 1/16 that their STDC-Seg runs
  do not use (use_boundary_8 only); they are not built here.

Parameters for 19 classes. Taking part in inference (backbone, context path, FFM, main head):
    STDC1  8,275,104     STDC2 12,305,568     (the counts of the authors' network)
Training-only heads add 2 x 75,072 (aux) + 147,648 (detail) = 297,792, so the module holds
8,572,896 (STDC1) and 12,603,360 (STDC2) parameters in all; checkpoints hold them all.

Optimiser groups (`groups`, see `STDCSeg.param_groups`): 'authors' (the default) gives the
optimiser what the authors' get_params gives it (models/model_stages.py, optimizer_loss.py):
conv weights with weight decay, the BatchNorm parameters of the context path, FFM and heads
without, FFM and heads at 10x the learning rate; the backbone's BatchNorm affine parameters
(plain nn.BatchNorm2d in their nets/stdcnet.py, which their get_params does not pick up,
unlike the InPlaceABNSync layers of model_stages.py) are never trained: they keep their
ImageNet values (58 tensors for STDC1, 106 for STDC2; their class also builds an ImageNet
tail not built here, whose 4 BatchNorm tensors it leaves out too). Here those tensors have
requires_grad False, which gives the same updates. 'all' (the project's grouping before the
option existed): every parameter trained, all with weight decay, the same 1x / 10x split.

Train mode returns `TrainOutputs` (see below); eval mode the main logits; both at input size,
or at the heads' own scale with `upsample=False` (main and aux8 at 1/8, aux16 at 1/16; resize
them with core.models.upsample). One difference from the authors' code: segmentation logits
are upsampled bilinearly with align_corners=False, like the project's other networks and
core.models.upsample, where the authors use True (sampling positions differ by under half a
pixel of the 1/8 map; it would matter only for their Cityscapes-trained weights, which are
not loaded here). The detail loss
keeps their align_corners=True. As in BiSeNet, the ARMs' and the global tail's BatchNorm see
one pooled value per channel and sample: training needs a batch of at least 2.
"""
from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from core.models.logits import upsample_logits

# Backbone name -> STDC modules per stage (STDCNet813 and STDCNet1446 of the authors' code).
STAGE_DEPTHS = {"stdc1": (2, 2, 2), "stdc2": (4, 5, 3)}
BASE = 64
BLOCKS = 4  # conv blocks per STDC module
GROUPINGS = ("authors", "all")  # optimiser groups: their get_params / every parameter


class TrainOutputs(tuple):
    """Train-mode outputs: the segmentation logits (main, aux8, aux16) at input size, as a
    tuple, carrying the detail head's logits (N x 1 x H/8 x W/8) as `.detail`.

    Why a tuple with an attribute rather than a fourth element: every training script sums
    its criterion over the tuple (`seg_loss_sum(criterion, outputs, labels)`) and uses
    `outputs[0]` as the prediction (the discriminator's softmax, the entropy loss). With the
    detail logits outside the tuple both uses stay right unchanged, and `seg_loss_sum` adds
    the detail loss whenever `outputs.detail` is there: no script needs STDC-specific code.
    DistributedDataParallel (without find_unused_parameters) returns the object untouched.
    """

    def __new__(cls, logits, detail):
        outputs = super().__new__(cls, logits)
        outputs.detail = detail
        return outputs


def conv_bn_relu(in_channels: int, out_channels: int, kernel: int = 3,
                 stride: int = 1) -> nn.Sequential:
    """Conv (no bias) -> BatchNorm -> ReLU, children named conv / bn / relu (the official
    checkpoint's ConvX key names)."""
    return nn.Sequential(OrderedDict(
        conv=nn.Conv2d(in_channels, out_channels, kernel, stride, kernel // 2, bias=False),
        bn=nn.BatchNorm2d(out_channels),
        relu=nn.ReLU(inplace=True),
    ))


# --------------------------------------------------------------------------- backbone

class STDCModule(nn.Module):
    """Short-Term Dense Concatenate module (Fan et al. 2021, sec. 3.1), "cat" type.

    Four blocks: a 1x1 conv to C/2, then 3x3 convs to C/4, C/8, C/8; the output concatenates
    all four (C/2 + C/4 + C/8 + C/8 = C channels). With stride 2, a depthwise 3x3 stride-2
    conv + BN after the first block does the downsampling, and the first block's output is
    average-pooled (3x3, stride 2) before joining the concatenation.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        c = out_channels
        widths = [c // 2, c // 4, c // 8, c // 8]
        self.stride = stride
        self.conv_list = nn.ModuleList(
            [conv_bn_relu(in_channels, widths[0], kernel=1)]
            + [conv_bn_relu(widths[i - 1], widths[i]) for i in range(1, BLOCKS)])
        if stride == 2:
            self.avd_layer = nn.Sequential(
                nn.Conv2d(c // 2, c // 2, 3, 2, 1, groups=c // 2, bias=False),
                nn.BatchNorm2d(c // 2))
            self.skip = nn.AvgPool2d(3, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        first = self.conv_list[0](x)
        out = self.avd_layer(first) if self.stride == 2 else first
        outs = []
        for conv in self.conv_list[1:]:
            out = conv(out)
            outs.append(out)
        if self.stride == 2:
            first = self.skip(first)
        return torch.cat([first, *outs], dim=1)


class STDCNet(nn.Module):
    """STDC1 / STDC2 feature extractor: returns the 1/8, 1/16 and 1/32 features (256, 512 and
    1024 channels). `features` holds every layer, named as in the official checkpoints."""

    def __init__(self, name: str):
        super().__init__()
        depths = STAGE_DEPTHS[name]
        layers = [conv_bn_relu(3, BASE // 2, stride=2), conv_bn_relu(BASE // 2, BASE, stride=2)]
        in_channels = BASE
        for stage, depth in enumerate(depths):
            out_channels = BASE * 4 * 2 ** stage
            for j in range(depth):
                layers.append(STDCModule(in_channels, out_channels, stride=2 if j == 0 else 1))
                in_channels = out_channels
        self.features = nn.Sequential(*layers)
        self.stage_ends = [2 + sum(depths[:i + 1]) for i in range(3)]  # 1/8, 1/16, 1/32
        self.channels = tuple(BASE * 4 * 2 ** s for s in range(3))  # (256, 512, 1024)
        for m in self.modules():   # the authors' init_params (ImageNet training)
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        feats, start = [], 0
        for end in self.stage_ends:
            x = self.features[start:end](x)
            feats.append(x)
            start = end
        return tuple(feats)


# --------------------------------------------------------------------------- decoder

class AttentionRefinementModule(nn.Module):
    """STDC-Seg's ARM: 3x3 conv-BN-ReLU to `out_channels`, then channel attention
    (global pool -> 1x1 conv -> BN -> sigmoid) multiplies its output."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv = conv_bn_relu(in_channels, out_channels)
        self.attention = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(out_channels, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feat = self.conv(x)
        return feat * self.attention(feat)


class FeatureFusionModule(nn.Module):
    """Concat -> 1x1 conv-BN-ReLU (f) -> attention a (pool, 1x1 to C/4, ReLU, 1x1 to C,
    sigmoid; no biases) -> f + f * a."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv = conv_bn_relu(in_channels, out_channels, kernel=1)
        self.attention = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(out_channels, out_channels // 4, 1, bias=False),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels // 4, out_channels, 1, bias=False),
            nn.Sigmoid(),
        )

    def forward(self, spatial: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        f = self.conv(torch.cat([spatial, context], dim=1))
        return f + f * self.attention(f)


def seg_head(in_channels: int, mid_channels: int, out_channels: int) -> nn.Sequential:
    """The authors' BiSeNetOutput: 3x3 conv-BN-ReLU, then a 1x1 conv without bias."""
    return nn.Sequential(conv_bn_relu(in_channels, mid_channels),
                         nn.Conv2d(mid_channels, out_channels, 1, bias=False))


class STDCSeg(nn.Module):
    """Training mode: TrainOutputs((main, aux8, aux16), detail); eval mode: main logits.
    Segmentation logits at input size (or unresized with upsample=False), detail logits at
    1/8."""

    CONTEXT = 128   # context-path width

    def __init__(self, num_classes: int = 19, backbone: str = "stdc1", groups: str = "authors"):
        super().__init__()
        if groups not in GROUPINGS:
            raise ValueError(f"STDC optimiser groups {groups!r}: expected one of {GROUPINGS}")
        self.groups = groups
        self.backbone = STDCNet(backbone)
        c8, c16, c32 = self.backbone.channels
        self.arm16 = AttentionRefinementModule(c16, self.CONTEXT)
        self.arm32 = AttentionRefinementModule(c32, self.CONTEXT)
        self.global_context = conv_bn_relu(c32, self.CONTEXT, kernel=1)
        self.head32 = conv_bn_relu(self.CONTEXT, self.CONTEXT)
        self.head16 = conv_bn_relu(self.CONTEXT, self.CONTEXT)
        self.ffm = FeatureFusionModule(c8 + self.CONTEXT, 256)
        self.classifier = seg_head(256, 256, num_classes)
        self.aux8 = seg_head(self.CONTEXT, 64, num_classes)    # training-only heads
        self.aux16 = seg_head(self.CONTEXT, 64, num_classes)
        self.detail = seg_head(c8, 64, 1)
        # Outside the backbone: kaiming_normal_(a=1), as the authors' init_weight (no biases).
        for name, m in self.named_modules():
            if isinstance(m, nn.Conv2d) and not name.startswith("backbone"):
                nn.init.kaiming_normal_(m.weight, a=1)
        if groups == "authors":   # the backbone's BN affine parameters are never trained
            for m in self.backbone.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.weight.requires_grad_(False)
                    m.bias.requires_grad_(False)

    def forward(self, x: torch.Tensor, upsample: bool = True):
        f8, f16, f32 = self.backbone(x)
        # context path (the authors' ContextPath.forward): 1/32 -> 1/16 -> 1/8
        tail = self.global_context(f32.mean(dim=(2, 3), keepdim=True))
        c16 = self.head32(F.interpolate(self.arm32(f32) + tail, size=f16.shape[-2:],
                                        mode="nearest"))
        c8 = self.head16(F.interpolate(self.arm16(f16) + c16, size=f8.shape[-2:],
                                       mode="nearest"))
        outputs = [self.classifier(self.ffm(f8, c8))]
        if self.training:
            outputs += [self.aux8(c8), self.aux16(c16)]
        if upsample:   # in float32, as the losses take them (core.models.upsample)
            outputs = [upsample_logits(out, x.shape[-2:]) for out in outputs]
        if not self.training:
            return outputs[0]
        return TrainOutputs(outputs, detail=self.detail(f8))

    def inference_modules(self) -> list[nn.Module]:
        """The modules that take part in inference (the training-only heads left out)."""
        return [self.backbone, self.arm16, self.arm32, self.global_context, self.head32,
                self.head16, self.ffm, self.classifier]

    def param_groups(self, lr: float, weight_decay: float) -> list[dict]:
        """Backbone and context path at `lr`; FFM and all heads at 10 x `lr`, as the authors'
        optimizer does (lr_mul for the FeatureFusionModule and BiSeNetOutput children of their
        BiSeNet; the detail head is a BiSeNetOutput too).

        'authors' (MichaelFan01/STDC-Seg, models/model_stages.py get_params and
        optimizer_loss.py): in each part, conv weights with `weight_decay`; the BatchNorm
        parameters of the context path, FFM and heads (InPlaceABNSync there) with weight
        decay 0; the backbone's BatchNorm (plain nn.BatchNorm2d there) in no group. Their
        convs have no biases (a bias would go without decay). Four groups.
        'all': every parameter with `weight_decay`, in two groups (1x, 10x).
        """
        slow = [self.arm16, self.arm32, self.global_context, self.head32, self.head16]
        fast = [self.ffm, self.classifier, self.aux8, self.aux16, self.detail]
        if self.groups == "all":
            fast_ids = {id(p) for m in fast for p in m.parameters()}
            return [
                {"params": [p for p in self.parameters() if id(p) not in fast_ids], "lr": lr,
                 "weight_decay": weight_decay, "name": "backbone+context"},
                {"params": [p for m in fast for p in m.parameters()], "lr": 10 * lr,
                 "weight_decay": weight_decay, "name": "ffm+heads"},
            ]
        # the backbone contributes its conv weights only
        backbone_convs = [m.weight for m in self.backbone.modules() if isinstance(m, nn.Conv2d)]
        groups = []
        for name, modules, scale, decay in (("backbone+context", slow, 1, backbone_convs),
                                            ("ffm+heads", fast, 10, [])):
            no_decay = []
            for module in modules:
                for m in module.modules():
                    if isinstance(m, nn.Conv2d | nn.Linear):
                        decay.append(m.weight)
                        no_decay += [] if m.bias is None else [m.bias]
                    elif isinstance(m, nn.BatchNorm2d):
                        no_decay += [m.weight, m.bias]
            groups += [{"params": decay, "lr": scale * lr, "weight_decay": weight_decay,
                        "name": name},
                       {"params": no_decay, "lr": scale * lr, "weight_decay": 0.0,
                        "name": f"{name} (BN, no decay)"}]
        return groups
