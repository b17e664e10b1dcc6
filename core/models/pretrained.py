"""Backbone initialisation: `--pretrained none | imagenet | /path/to/file.pth`.

- 'imagenet': torchvision's ImageNet weights (IMAGENET1K_V1) read from the torch hub cache,
  `torch.hub.get_dir()/checkpoints/<file name of the weights' URL>`, where torchvision keeps
  them. Absent -> downloaded there by torch.hub's own loader (load_state_dict_from_url with
  check_hash: the file name's '-<hex>.pth' part is the start of its SHA-256, checked before
  the file is kept). Offline (the download fails) -> a one-line PretrainedWeightsError saying
  which file to put where. torchvision's ResNets are v1.5 (a bottleneck's stride in its 3x3
  conv); DeepLabV2 puts its strides there too (its `style`).
- a path: a torchvision ResNet state dict. Its 'fc.' classifier is skipped; every backbone key
  must be present with the right shape, and nothing else may be there.
- STDC (`--model stdc`): the authors' ImageNet checkpoints (MichaelFan01/STDC-Seg, README),
  STDCNet813M_73.91.tar (stdc1) and STDCNet1446_76.47.tar (stdc2): torch files (not tar
  archives) holding {"state_dict": ...} with the classifier network's keys, published on
  Google Drive and Baidu Yun (links in that README), which a script cannot fetch: 'imagenet'
  reads that file from the same hub cache folder, where it must be put by hand; a path may
  name it anywhere. Its ImageNet tail (conv_last, fc, bn, linear; STDC-Seg runs with
  use_conv_last off) and the x2..x32 stage aliases of `features` are skipped; the same fit
  check applies to the `features.*` keys.

Refused: the Caffe-converted DeepLab initialisation file that the DeepLab-v2 UDA code bases
distribute (keys 'Scale.conv1.weight', ..., 'Scale.layer5.*'). Those weights expect BGR input
on the 0-255 scale minus the mean (104.00, 116.67, 122.68) with no division by a std, and
their BatchNorm statistics are frozen at that scale; every model here is fed ImageNet-
normalised RGB (`core.transforms.normalize`), about 58x smaller with R and B swapped. Loading
the file would start training from a network that sees the wrong input.
"""
from __future__ import annotations

import os
from pathlib import Path
from urllib.error import URLError

import torch
from torch import nn
from torchvision.models import ResNet18_Weights, ResNet101_Weights

from core.errors import PretrainedWeightsError

IMAGENET_WEIGHTS = {
    "resnet18": ResNet18_Weights.IMAGENET1K_V1,
    "resnet101": ResNet101_Weights.IMAGENET1K_V1,
}
SKIPPED_PREFIXES = ("fc.",)  # the ImageNet classifier
STDC_FILES = {"stdc1": "STDCNet813M_73.91.tar", "stdc2": "STDCNet1446_76.47.tar"}
STDC_SOURCE = ("the STDC-Seg authors' Google Drive / Baidu Yun folders, linked from the README "
               "of github.com/MichaelFan01/STDC-Seg")
STDC_SKIPPED_PREFIXES = ("conv_last.", "fc.", "bn.", "linear.",   # the ImageNet tail
                         "x2.", "x4.", "x8.", "x16.", "x32.")     # aliases of features.*
CAFFE_DEEPLAB_PREFIXES = ("Scale.", "layer5.")  # the DeepLab init file's keys (refused)


def imagenet_weights_file(backbone: str) -> Path:
    """Where torchvision would cache the ImageNet weights of `backbone` (STDC: the authors'
    file, in the same folder)."""
    if backbone in STDC_FILES:
        return Path(torch.hub.get_dir()) / "checkpoints" / STDC_FILES[backbone]
    url = IMAGENET_WEIGHTS[backbone].url
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)


def load_backbone_weights(module: nn.Module, backbone: str, pretrained: str | None) -> Path | None:
    """Load `pretrained` into `module` (the model's backbone). Returns the file used, or None."""
    if pretrained in (None, "none"):
        return None
    if pretrained == "imagenet":
        path = imagenet_weights_file(backbone)
        if not path.is_file() and backbone in STDC_FILES:
            raise PretrainedWeightsError(
                f"--pretrained imagenet: {backbone} weights are not in the torch hub cache and "
                f"cannot be downloaded by a script. Put {path.name} (from {STDC_SOURCE}) "
                f"at {path}, or pass --pretrained /path/to/{path.name}")
        if not path.is_file():
            download_imagenet_weights(backbone, path)
    else:
        path = Path(pretrained)
        if not path.is_file():
            raise PretrainedWeightsError(
                f"--pretrained {pretrained}: no such file (expected 'none', 'imagenet' or the "
                "path to a .pth state dict)")
    state = _read_state_dict(path)
    if any(key.startswith(CAFFE_DEEPLAB_PREFIXES) for key in state):
        raise PretrainedWeightsError(
            f"--pretrained {path}: this is a Caffe-converted DeepLab initialisation ('Scale.' "
            "/ 'layer5.' keys), whose weights expect BGR 0-255 input minus the mean (104.00, "
            "116.67, 122.68) with no std; every model here is fed ImageNet-normalised RGB. Use "
            "--pretrained imagenet (torchvision's ResNet-101) or a torchvision state dict")
    state = backbone_state_dict(state, backbone)
    _check_fits(module, state, path, backbone)
    module.load_state_dict(state, strict=False)  # strictness checked above, with a clear message
    return path


def download_imagenet_weights(backbone: str, path: Path) -> None:
    """Fetch torchvision's ImageNet weights of `backbone` into the hub cache file `path` with
    torch.hub's loader (progress bar, SHA-256 prefix check; a failed or corrupt download
    leaves no file behind). Offline: a one-line PretrainedWeightsError."""
    url = IMAGENET_WEIGHTS[backbone].url
    try:
        torch.hub.load_state_dict_from_url(url, model_dir=str(path.parent), map_location="cpu",
                                           progress=True, check_hash=True, weights_only=True)
    except (URLError, OSError) as e:   # URLError is an OSError; both: no file came
        reason = " ".join(str(getattr(e, "reason", e)).split())
        raise PretrainedWeightsError(
            f"--pretrained imagenet: {backbone} weights are not in the torch hub cache and "
            f"could not be downloaded from {url} ({reason}). Put {path.name} at {path}, or "
            "pass --pretrained /path/to/weights.pth") from None
    except RuntimeError as e:
        if "invalid hash value" not in str(e):
            raise
        raise PretrainedWeightsError(
            f"--pretrained imagenet: the file downloaded from {url} does not match the SHA-256 "
            f"prefix in its name (a corrupt or altered download; nothing was kept). Try again, "
            f"or put a good copy of {path.name} at {path}") from None


def backbone_state_dict(state: dict, backbone: str = "resnet18") -> dict:
    """The backbone's part of a torchvision ResNet or an STDC ImageNet state dict (classifier
    keys dropped)."""
    skipped = STDC_SKIPPED_PREFIXES if backbone in STDC_FILES else SKIPPED_PREFIXES
    return {key: value for key, value in state.items() if not key.startswith(skipped)}


def _read_state_dict(path: Path) -> dict:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle, zip and weights_only errors all mean "not a state dict"
        raise PretrainedWeightsError(f"cannot read {path} as a state dict: {e}") from e
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]  # the STDC authors' checkpoint format
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
