"""Joint image + label augmentations for training, chosen by a short spec such as 'flip,scale'.

    aug = build_transforms("flip,jitter,blur,scale", p=0.5)
    image, label = aug(image, label)   # uint8 3xHxW, uint8 HxW (or None) -> same types and sizes

Each augmentation fires independently with probability p. Photometric ones (jitter, blur) run
first and touch the image only; geometric ones (flip, scale) run last on both, so the padding
added by `scale` stays exactly 0 in the image and 255 (ignore) in the label.

All randomness comes from torch's global generator (never `random` or numpy): the DataLoader
seeds it per worker and a checkpoint can save it, which makes augmented runs reproducible.
Normalisation is not an augmentation: it happens on the device (`normalize`, re-exported here).
"""
import math

import torch
from torchvision.transforms.v2 import functional as F

from core.datasets import IMAGENET_MEAN, IMAGENET_STD, denormalize, normalize
from core.labels import IGNORE_INDEX

__all__ = ["AUGMENTATIONS", "JointAugment", "build_transforms",
           "IMAGENET_MEAN", "IMAGENET_STD", "normalize", "denormalize"]

AUGMENTATIONS = ("jitter", "blur", "flip", "scale")  # in the order they are applied

# Modest ranges: strong enough to regularise, not so strong that GTA5 stops looking like a road.
BRIGHTNESS = CONTRAST = SATURATION = (0.75, 1.25)  # multiplicative factors
HUE = (-0.05, 0.05)  # fraction of the hue circle
BLUR_SIGMA = (0.1, 2.0)  # pixels
SCALE = (0.75, 1.5)


def _uniform(lo, hi):
    return lo + (hi - lo) * torch.rand(()).item()


def _randint(n):
    """Uniform integer in [0, n]."""
    return int(torch.randint(n + 1, ())) if n > 0 else 0


def _jitter(image):
    image = F.adjust_brightness(image, _uniform(*BRIGHTNESS))
    image = F.adjust_contrast(image, _uniform(*CONTRAST))
    image = F.adjust_saturation(image, _uniform(*SATURATION))
    return F.adjust_hue(image, _uniform(*HUE))


def _blur(image):
    sigma = _uniform(*BLUR_SIGMA)
    k = 2 * math.ceil(3 * sigma) + 1  # covers +-3 sigma
    # Reflect padding needs k // 2 < the image side: only bites on tiny images.
    k = min(k, 2 * min(image.shape[-2:]) - 1)
    return F.gaussian_blur(image, [k, k], [sigma, sigma])


def _crop_or_pad(x, height, width, offsets, fill):
    """Place x on a height x width canvas of `fill`, cropping where x is larger."""
    (sy, dy, h), (sx, dx, w) = offsets
    out = torch.full((*x.shape[:-2], height, width), fill, dtype=x.dtype, device=x.device)
    out[..., dy:dy + h, dx:dx + w] = x[..., sy:sy + h, sx:sx + w]
    return out


def _random_window(image, label, height, width):
    """A random height x width window: cropped where the image is larger, padded (image 0,
    label 255) where it is smaller."""
    offsets = []
    for n_src, n_dst in zip(image.shape[-2:], (height, width), strict=True):
        if n_src >= n_dst:
            offsets.append((_randint(n_src - n_dst), 0, n_dst))
        else:
            offsets.append((0, _randint(n_dst - n_src), n_src))
    image = _crop_or_pad(image, height, width, offsets, 0)
    if label is not None:
        label = _crop_or_pad(label, height, width, offsets, IGNORE_INDEX)
    return image, label


def _scale(image, label):
    height, width = image.shape[-2:]
    s = _uniform(*SCALE)
    new = [max(1, round(height * s)), max(1, round(width * s))]
    image = F.resize(image, new, interpolation=F.InterpolationMode.BILINEAR, antialias=True)
    if label is not None:
        # NEAREST_EXACT samples at pixel centres like bilinear does; torch's plain NEAREST is
        # shifted by up to a pixel, which would misalign label and image.
        label = F.resize(label[None], new, interpolation=F.InterpolationMode.NEAREST_EXACT)[0]
    return _random_window(image, label, height, width)  # back to the working size


class JointAugment:
    """Apply the named augmentations, each with probability p, to (image, label); then, if
    `crop` (H, W) is given, always take a random crop of that size (as FDA's code crops
    1024x512 out of GTA5 at 1280x720)."""

    def __init__(self, names, p=0.5, crop=None):
        self.names = tuple(n for n in AUGMENTATIONS if n in names)
        self.p, self.crop = p, crop

    def _fires(self):
        return torch.rand(()).item() < self.p

    def __call__(self, image, label=None):
        if "jitter" in self.names and self._fires():
            image = _jitter(image)
        if "blur" in self.names and self._fires():
            image = _blur(image)
        if "flip" in self.names and self._fires():
            image = image.flip(-1)
            label = None if label is None else label.flip(-1)
        if "scale" in self.names and self._fires():
            image, label = _scale(image, label)
        if self.crop is not None:
            image, label = _random_window(image, label, *self.crop)
        return image, label

    def __repr__(self):
        return f"JointAugment({','.join(self.names)}, p={self.p}, crop={self.crop})"


def build_transforms(spec, p=0.5, crop=None):
    """'flip,jitter,blur,scale' (any subset, any order) -> JointAugment; '' / 'none' and no
    crop -> None. `crop` (H, W): a random crop of that size after the augmentations."""
    names = [n.strip().lower() for n in (spec or "").split(",") if n.strip()]
    if names == ["none"]:
        names = []
    if not names and crop is None:
        return None
    unknown = [n for n in names if n not in AUGMENTATIONS]
    if unknown:
        raise ValueError(f"unknown augmentation(s) {unknown} in {spec!r}: valid names are "
                         f"{', '.join(AUGMENTATIONS)} (comma-separated), or 'none'")
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"augmentation probability must be in [0, 1], got {p}")
    if crop is not None and (len(crop) != 2 or min(crop) < 1):
        raise ValueError(f"crop size must be two positive integers (H W), got {crop}")
    return JointAugment(names, p, tuple(crop) if crop is not None else None)
