"""Segmentation networks and discriminators, built by name.

    model = build_model("bisenet", backbone="resnet18", pretrained="imagenet")
    optimizer = torch.optim.SGD(param_groups(model, lr, weight_decay), momentum=0.9)
    outputs = model(images)  # train mode: (main, *aux) at input size; eval mode: main logits
    loss = sum(criterion(out, labels) for out in outputs)
    d = build_discriminator("fcd")
"""
from __future__ import annotations

from torch import nn

from core.errors import ConfigError, PretrainedWeightsError
from core.labels import NUM_CLASSES
from core.models.bisenet import BiSeNet
from core.models.deeplabv2 import DeepLabV2
from core.models.discriminator import DISCRIMINATORS, build_discriminator
from core.models.pretrained import load_backbone_weights

MODEL_NAMES = ("bisenet", "deeplabv2")
BACKBONES = {"bisenet": ("resnet18", "resnet101"), "deeplabv2": ("resnet101",)}  # first: default
DISCRIMINATOR_NAMES = tuple(DISCRIMINATORS)
_MODELS = {"bisenet": BiSeNet, "deeplabv2": DeepLabV2}

__all__ = [
    "BACKBONES", "DISCRIMINATOR_NAMES", "MODEL_NAMES", "PretrainedWeightsError",
    "build_discriminator", "build_model", "param_groups",
]


def build_model(name: str, num_classes: int = NUM_CLASSES, backbone: str | None = None,
                pretrained: str | None = "none") -> nn.Module:
    """`name` in MODEL_NAMES, `backbone` in BACKBONES[name] (None: the first), `pretrained`
    'none' | 'imagenet' | path to a .pth (see core/models/pretrained.py)."""
    if name not in MODEL_NAMES:
        raise ConfigError(f"--model {name} is not available; choose one of "
                          f"{', '.join(MODEL_NAMES)}")
    backbone = backbone or BACKBONES[name][0]
    if backbone not in BACKBONES[name]:
        raise ConfigError(f"--backbone {backbone} is not available for --model {name}; "
                         f"choose {' or '.join(BACKBONES[name])}")
    model = _MODELS[name](num_classes, backbone)
    load_backbone_weights(model.backbone, backbone, pretrained)
    return model


def param_groups(model: nn.Module, lr: float, weight_decay: float) -> list[dict]:
    """Optimiser parameter groups of trainable parameters, each with its own 'lr' (so a poly
    LambdaLR scales them all): DeepLabV2 -> backbone at lr, classifier at 10 x lr; others ->
    one group. Accepts torch.compile / DistributedDataParallel wrappers."""
    model = getattr(model, "_orig_mod", model)
    model = getattr(model, "module", model)
    if hasattr(model, "param_groups"):
        return model.param_groups(lr, weight_decay)
    params = [p for p in model.parameters() if p.requires_grad]
    return [{"params": params, "lr": lr, "weight_decay": weight_decay, "name": "all"}]
