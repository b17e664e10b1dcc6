"""Joint image + label augmentations for training, chosen by a short spec such as 'flip,scale'.

    aug = build_transforms("flip,jitter,blur,scale", p=0.5)
    image, label = aug(image, label)   # uint8 3xHxW, uint8 HxW (or None) -> same types and sizes

Each augmentation fires independently with probability p. Photometric ones (jitter, blur) run
first and touch the image only; geometric ones (flip, scale) run last on both, so the padding
added by `scale` stays exactly 0 in the image and 255 (ignore) in the label.

All randomness comes from torch's global generator (never `random` or numpy), which the
dataset reseeds per sample (`core.sampling.sample_seed`), so a draw depends only on the seed,
the epoch and the sample, whatever the number of workers or a resume.

The pixel operations that run on the device after batching live here too: `normalize`
(ImageNet statistics, what every backbone here expects) and `resize_images`.
"""
import math

import torch
import torch.nn.functional as NF
from torchvision.transforms.v2 import functional as F

from core.errors import ConfigError
from core.labels import IGNORE_INDEX

# ImageNet statistics on the 0-1 scale (what torchvision's pretrained backbones expect).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

AUGMENTATIONS = ("jitter", "blur", "flip", "scale")  # in the order they are applied

# Modest ranges: strong enough to regularise, not so strong that GTA5 stops looking like a road.
BRIGHTNESS = CONTRAST = SATURATION = (0.75, 1.25)  # multiplicative factors
HUE = (-0.05, 0.05)  # fraction of the hue circle
BLUR_SIGMA = (0.1, 2.0)  # pixels
SCALE = (0.75, 1.5)


def _uniform(g, lo, hi):
    return lo + (hi - lo) * torch.rand((), generator=g).item()


def _randint(g, n):
    """Uniform integer in [0, n]."""
    return int(torch.randint(n + 1, (), generator=g)) if n > 0 else 0


def _jitter(image, g):
    image = F.adjust_brightness(image, _uniform(g, *BRIGHTNESS))
    image = F.adjust_contrast(image, _uniform(g, *CONTRAST))
    image = F.adjust_saturation(image, _uniform(g, *SATURATION))
    return F.adjust_hue(image, _uniform(g, *HUE))


def _blur(image, g):
    sigma = _uniform(g, *BLUR_SIGMA)
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


def _random_window(image, label, height, width, g):
    """A random height x width window: cropped where the image is larger, padded (image 0,
    label 255) where it is smaller."""
    offsets = []
    for n_src, n_dst in zip(image.shape[-2:], (height, width), strict=True):
        if n_src >= n_dst:
            offsets.append((_randint(g, n_src - n_dst), 0, n_dst))
        else:
            offsets.append((0, _randint(g, n_dst - n_src), n_src))
    image = _crop_or_pad(image, height, width, offsets, 0)
    if label is not None:
        label = _crop_or_pad(label, height, width, offsets, IGNORE_INDEX)
    return image, label


def _scale(image, label, g):
    height, width = image.shape[-2:]
    s = _uniform(g, *SCALE)
    new = [max(1, round(height * s)), max(1, round(width * s))]
    image = F.resize(image, new, interpolation=F.InterpolationMode.BILINEAR, antialias=True)
    if label is not None:
        # NEAREST_EXACT samples at pixel centres like bilinear does; torch's plain NEAREST is
        # shifted by up to a pixel, which would misalign label and image.
        label = F.resize(label[None], new, interpolation=F.InterpolationMode.NEAREST_EXACT)[0]
    return _random_window(image, label, height, width, g)  # back to the working size


class JointAugment:
    """Apply the named augmentations, each with probability p, to (image, label); then, if
    `crop` (H, W) is given, always take a random crop of that size (as FDA's code crops
    1024x512 out of GTA5 at 1280x720)."""

    def __init__(self, names, p=0.5, crop=None):
        self.names = tuple(n for n in AUGMENTATIONS if n in names)
        self.p, self.crop = p, crop

    def __call__(self, image, label=None, generator=None):
        """`generator`: the torch.Generator to draw from (default: torch's global one)."""
        g = generator
        fires = {n: torch.rand((), generator=g).item() < self.p for n in self.names}
        if fires.get("jitter"):
            image = _jitter(image, g)
        if fires.get("blur"):
            image = _blur(image, g)
        if fires.get("flip"):
            image = image.flip(-1)
            label = None if label is None else label.flip(-1)
        if fires.get("scale"):
            image, label = _scale(image, label, g)
        if self.crop is not None:
            image, label = _random_window(image, label, *self.crop, g)
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
        raise ConfigError(f"--aug: unknown augmentation(s) {unknown} in {spec!r}: valid names are "
                         f"{', '.join(AUGMENTATIONS)} (comma-separated), or 'none'")
    if not 0.0 <= p <= 1.0:
        raise ConfigError(f"--aug-p: augmentation probability must be in [0, 1], got {p}")
    if crop is not None and (len(crop) != 2 or min(crop) < 1):
        raise ConfigError(f"--crop: crop size must be two positive integers (H W), got {crop}")
    return JointAugment(names, p, tuple(crop) if crop is not None else None)


# --------------------------------------------------------------------------- on the device

def _stats(x):
    if x.ndim not in (3, 4) or x.shape[-3] != 3:
        raise ValueError(f"expected a 3 x H x W or B x 3 x H x W RGB tensor, got shape "
                         f"{tuple(x.shape)}")
    # Built on the input's device so that normalising a CUDA batch never touches the host.
    mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float32, device=x.device).view(3, 1, 1) * 255
    std = torch.tensor(IMAGENET_STD, dtype=torch.float32, device=x.device).view(3, 1, 1) * 255
    return mean, std


def normalize(images):
    """0-255 RGB (uint8 or float, 3xHxW or Bx3xHxW, any device) -> float32 ImageNet-normalised."""
    mean, std = _stats(images)
    return (images.to(torch.float32) - mean) / std


def denormalize(images):
    """Inverse of `normalize`: float32 0-255 RGB (not clipped, not rounded)."""
    mean, std = _stats(images)
    return images.to(torch.float32) * std + mean


def resize_images(images, size):
    """Resize a batch of 0-255 images to (H, W), bilinear with antialiasing when shrinking."""
    if tuple(images.shape[-2:]) == tuple(size):
        return images.float()
    return NF.interpolate(images.float(), size=size, mode="bilinear", align_corners=False,
                          antialias=True)
