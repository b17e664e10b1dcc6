"""Backbone initialisation: `--pretrained none | imagenet | /path/to/file.pth`. Never downloads.

- 'imagenet': torchvision's ImageNet weights (IMAGENET1K_V1) read from the torch hub cache,
  `torch.hub.get_dir()/checkpoints/<file name of the weights' URL>`. Absent (offline) -> a
  PretrainedWeightsError saying which file to put where.
- a path: a torchvision ResNet state dict, or the DeepLab initialisation file that the
  DeepLab-v2 UDA codebases distribute (keys 'Scale.conv1.weight', ..., 'Scale.layer5.*').
  'Scale.' is stripped; the classifiers ('layer5', 'fc') are skipped; every other backbone key
  must be present with the right shape, and nothing else may be there.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn
from torchvision.models import ResNet18_Weights, ResNet101_Weights

from core.errors import PretrainedWeightsError

IMAGENET_WEIGHTS = {
    "resnet18": ResNet18_Weights.IMAGENET1K_V1,
    "resnet101": ResNet101_Weights.IMAGENET1K_V1,
}
SKIPPED_PREFIXES = ("layer5.", "fc.")  # DeepLab ASPP classifier, ImageNet classifier


def imagenet_weights_file(backbone: str) -> Path:
    """Where torchvision would cache the ImageNet weights of `backbone`."""
    url = IMAGENET_WEIGHTS[backbone].url
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)


def load_backbone_weights(module: nn.Module, backbone: str, pretrained: str | None) -> Path | None:
    """Load `pretrained` into `module` (the model's backbone). Returns the file used, or None."""
    if pretrained in (None, "none"):
        return None
    if pretrained == "imagenet":
        path = imagenet_weights_file(backbone)
        if not path.is_file():
            raise PretrainedWeightsError(
                f"--pretrained imagenet: {backbone} weights are not in the torch hub cache and "
                f"nothing is downloaded. Put {path.name} (from {IMAGENET_WEIGHTS[backbone].url}) "
                f"at {path}, or pass --pretrained /path/to/weights.pth")
    else:
        path = Path(pretrained)
        if not path.is_file():
            raise PretrainedWeightsError(
                f"--pretrained {pretrained}: no such file (expected 'none', 'imagenet' or the "
                "path to a .pth state dict)")
    state = backbone_state_dict(_read_state_dict(path))
    _check_fits(module, state, path, backbone)
    module.load_state_dict(state, strict=False)  # strictness checked above, with a clear message
    return path


def backbone_state_dict(state: dict) -> dict:
    """Keys as the backbone names them: 'Scale.' stripped, classifier keys dropped."""
    out = {}
    for key, value in state.items():
        key = key.removeprefix("Scale.")
        if not key.startswith(SKIPPED_PREFIXES):
            out[key] = value
    return out


def _read_state_dict(path: Path) -> dict:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle, zip and weights_only errors all mean "not a state dict"
        raise PretrainedWeightsError(f"cannot read {path} as a state dict: {e}") from e
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise PretrainedWeightsError(f"{path} is not a state dict (a dict of tensors)")
    return state


def _check_fits(module: nn.Module, state: dict, path: Path, backbone: str) -> None:
    own = {k: v for k, v in module.state_dict().items() if not k.endswith("num_batches_tracked")}
    given = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    missing = [k for k in own if k not in given]
    unexpected = [k for k in given if k not in own]
    reshaped = [f"{k} {tuple(given[k].shape)} vs {tuple(own[k].shape)}"
                for k in own if k in given and given[k].shape != own[k].shape]
    if missing or unexpected or reshaped:
        problems = [f"{len(keys)} {what} ({_few(keys)})" for what, keys in
                    (("missing keys", missing), ("unexpected keys", unexpected),
                     ("keys with another shape, file vs model", reshaped)) if keys]
        raise PretrainedWeightsError(
            f"{path} does not fit the {backbone} backbone: " + "; ".join(problems))


def _few(keys: list[str]) -> str:
    return ", ".join(keys[:3]) + (", ..." if len(keys) > 3 else "")
