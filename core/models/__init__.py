"""Segmentation networks and discriminators, built by name.

    model = build_model("bisenet", backbone="resnet18", pretrained="imagenet",
                        **model_options(args))   # the architecture options a run records
    optimizer = torch.optim.SGD(param_groups(model, lr, weight_decay), momentum=0.9)
    outputs = model(images)  # train mode: (main, *aux) at input size; eval mode: main logits
    loss = seg_loss_sum(criterion, outputs, labels)  # + STDC's detail loss (outputs.detail)
    logits = model(images, upsample=False)  # the same at the network's output stride (1/8)
    d = build_discriminator("fcd")
"""
from __future__ import annotations

from torch import nn

from core.errors import ConfigError, PretrainedWeightsError
from core.labels import NUM_CLASSES
from core.models.bisenet import BiSeNet
from core.models.deeplabv2 import DeepLabV2
from core.models.discriminator import DISCRIMINATORS, build_discriminator
from core.models.logits import upsample_logits
from core.models.pretrained import load_backbone_weights
from core.models.stdc import STDCSeg, TrainOutputs

MODEL_NAMES = ("bisenet", "deeplabv2", "stdc")
BACKBONES = {"bisenet": ("resnet18", "resnet101"), "deeplabv2": ("resnet101",),
             "stdc": ("stdc1", "stdc2")}  # first: default
DISCRIMINATOR_NAMES = tuple(DISCRIMINATORS)
# Architecture options a run's arguments record (--arm-bn; DeepLabV2's stride placement and
# BatchNorm statistics; STDC's optimiser groups), with the value that checkpoints written
# before the option existed were trained with.
OPTIONS_OF_OLDER_CHECKPOINTS = {"bisenet": {"arm_bn": True},
                                "deeplabv2": {"resnet_style": "caffe", "deeplab_bn": "frozen"},
                                "stdc": {"stdc_groups": "all"}}

__all__ = [
    "BACKBONES", "DISCRIMINATOR_NAMES", "MODEL_NAMES", "PretrainedWeightsError",
    "build_discriminator", "build_model", "model_options", "param_groups", "resolve_backbone",
    "upsample",
]


def resolve_backbone(name: str, backbone: str | None) -> str:
    """The backbone for --model `name` (None: its default), or a ConfigError naming both."""
    if name not in MODEL_NAMES:
        raise ConfigError(f"--model {name} is not available; choose one of "
                          f"{', '.join(MODEL_NAMES)}")
    backbone = backbone or BACKBONES[name][0]
    if backbone not in BACKBONES[name]:
        raise ConfigError(f"--backbone {backbone} is not available for --model {name}; "
                          f"choose {' or '.join(BACKBONES[name])}")
    return backbone


def build_model(name: str, num_classes: int = NUM_CLASSES, backbone: str | None = None,
                pretrained: str | None = "none", *, arm_bn: bool = False,
                resnet_style: str = "pytorch", deeplab_bn: str = "train",
                stdc_groups: str = "authors") -> nn.Module:
    """`name` in MODEL_NAMES, `backbone` in BACKBONES[name] (None: the first), `pretrained`
    'none' | 'imagenet' | path to a .pth or an STDC .tar (see core/models/pretrained.py).

    `arm_bn` (BiSeNet only): BatchNorm in the attention refinement modules, the paper's
    variant; False is the course code's (core/models/bisenet.py). `resnet_style` (DeepLabV2
    only): 'pytorch' puts a bottleneck's stride in its 3x3 conv, where torchvision's weights
    expect it; 'caffe' in the first 1x1 conv. `deeplab_bn` (DeepLabV2 only): 'train' uses
    batch statistics in train mode, as the DeepLab UDA code bases do; 'frozen' always the
    running ones (core/models/deeplabv2.py). `stdc_groups` (STDC only): the optimiser groups
    that `param_groups` gives, 'authors' (their get_params: backbone BN affine never trained,
    BN without weight decay) or 'all' (every parameter, all with weight decay;
    core/models/stdc.py).
    """
    backbone = resolve_backbone(name, backbone)
    if deeplab_bn != "train" and name != "deeplabv2":
        raise ConfigError(f"deeplab_bn is an option of --model deeplabv2, not {name}")
    if stdc_groups != "authors" and name != "stdc":
        raise ConfigError(f"stdc_groups is an option of --model stdc, not {name}")
    if name == "bisenet":
        if resnet_style != "pytorch":
            raise ConfigError(f"BiSeNet's ResNet is torchvision's ('pytorch' style), not "
                              f"{resnet_style!r}")
        model = BiSeNet(num_classes, backbone, arm_bn=arm_bn)
    elif name == "stdc":
        if arm_bn or resnet_style != "pytorch":
            raise ConfigError("--model stdc has no ResNet and always has BN in its ARMs: "
                              "arm_bn and resnet_style do not apply")
        model = STDCSeg(num_classes, backbone, groups=stdc_groups)
    else:
        if arm_bn:
            raise ConfigError("--arm-bn is an option of --model bisenet, not deeplabv2")
        model = DeepLabV2(num_classes, backbone, style=resnet_style, bn=deeplab_bn)
    load_backbone_weights(model.backbone, backbone, pretrained)
    return model


def model_options(args) -> dict:
    """build_model's architecture options recorded in a run's arguments (an argparse Namespace
    or a checkpoint's stored dict). An option that a checkpoint predates takes the value that
    checkpoint was trained with (OPTIONS_OF_OLDER_CHECKPOINTS), not today's default."""
    stored = args if isinstance(args, dict) else vars(args)
    return {key: stored.get(key, old)
            for key, old in OPTIONS_OF_OLDER_CHECKPOINTS[stored["model"]].items()}


def upsample(outputs, size):
    """Outputs of `model(x, upsample=False)` (a tuple of logits) resized to `size` the way the
    networks resize them themselves (upsample_logits: bilinear, align_corners=False, float32).
    STDC's detail logits (`outputs.detail`) are kept as they are: the detail loss resizes them
    itself."""
    resized = tuple(upsample_logits(out, size) for out in outputs)
    detail = getattr(outputs, "detail", None)
    return resized if detail is None else TrainOutputs(resized, detail)


def param_groups(model: nn.Module, lr: float, weight_decay: float) -> list[dict]:
    """Optimiser parameter groups of trainable parameters, each with its own 'lr' (so a poly
    LambdaLR scales them all): DeepLabV2 -> backbone at lr, classifier at 10 x lr; STDC ->
    backbone and context path at lr, FFM and heads at 10 x lr, each split into weight decay
    and none (stdc_groups 'authors'); BiSeNet -> one group.
    Accepts torch.compile / DistributedDataParallel wrappers."""
    model = getattr(model, "_orig_mod", model)
    model = getattr(model, "module", model)
    if hasattr(model, "param_groups"):
        return model.param_groups(lr, weight_decay)
    params = [p for p in model.parameters() if p.requires_grad]
    return [{"params": params, "lr": lr, "weight_decay": weight_decay, "name": "all"}]
