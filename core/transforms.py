"""Joint image + label augmentations for training, chosen by a short spec such as 'flip,scale'.

    aug = build_transforms("flip,jitter,blur,scale", p=0.5)
    image, label = aug(image, label)   # uint8 3xHxW, uint8 HxW (or None) -> same types and sizes

Each augmentation fires independently with probability p. Geometric ones (flip, scale) act on
image and label alike (the padding added by `scale` is 0 in the image, 255 = ignore in the
label); photometric ones (jitter, blur) touch the image only and run after them. In training
the loader's workers do the geometric part and only draw the photometric parameters
(`JointAugment.split`): the batch carries them and `apply_photometric` runs them batched on
the device after the transfer (core.runtime.Run.to_device), where they cost little; hue
rotation alone took ~180 ms per 1280x720 frame in a worker.

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


# The photometric parameters of one sample, as `split` draws them and the batch carries them:
# neutral values (1, 1, 1, 0, 0) where an augmentation did not fire; sigma 0 = no blur.
PHOTOMETRIC = ("brightness", "contrast", "saturation", "hue", "sigma")
NEUTRAL = (1.0, 1.0, 1.0, 0.0, 0.0)
BLUR_KERNEL = 2 * math.ceil(3 * BLUR_SIGMA[1]) + 1  # +-3 sigma of the widest blur


def _draw_photometric(fires, g):
    params = list(NEUTRAL)
    if fires.get("jitter"):
        params[:4] = [_uniform(g, *BRIGHTNESS), _uniform(g, *CONTRAST),
                      _uniform(g, *SATURATION), _uniform(g, *HUE)]
    if fires.get("blur"):
        params[4] = _uniform(g, *BLUR_SIGMA)
    return torch.tensor(params, dtype=torch.float32)


def _per_sample(values):
    return values.view(-1, 1, 1, 1)


def _grey(x):
    """ITU-R 601 luma, as torchvision's rgb_to_grayscale (B x 1 x H x W)."""
    return (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).unsqueeze(1)


def _rotate_hue(x, shift):
    """Hue rotated by `shift` (fractions of the circle, one per sample), through HSV as
    torchvision's adjust_hue does."""
    top, _ = x.max(1)
    low = x.min(1).values
    chroma = top - low
    safe = torch.where(chroma > 0, chroma, torch.ones_like(chroma))
    r, g, b = x.unbind(1)
    hue = torch.where(top == r, ((g - b) / safe) % 6,
                      torch.where(top == g, (b - r) / safe + 2, (r - g) / safe + 4))
    hue = torch.where(chroma > 0, hue / 6, torch.zeros_like(hue))
    hue = (hue + shift.view(-1, 1, 1)) % 1.0
    # back to RGB: channel n = V - C * clamp(min(k, 4 - k), 0, 1), k = (n + 6 H) mod 6
    n = torch.tensor([5.0, 3.0, 1.0], device=x.device).view(1, 3, 1, 1)
    k = (n + hue.unsqueeze(1) * 6) % 6
    return top.unsqueeze(1) - chroma.unsqueeze(1) * torch.clamp(torch.minimum(k, 4 - k), 0, 1)


def _gaussian_kernel(sigma, half, channels):
    """Normalised Gaussian taps -half..half, one row per sample and channel."""
    taps = torch.arange(-half, half + 1, dtype=torch.float32, device=sigma.device)
    kernel = torch.exp(-0.5 * (taps / sigma.view(-1, 1).clamp_min(1e-6)) ** 2)
    return (kernel / kernel.sum(1, keepdim=True)).repeat_interleave(channels, 0)


def _gaussian_blur(x, sigma):
    """Separable Gaussian blur, each sample with its own sigma (> 0), on a fixed
    BLUR_KERNEL-tap kernel with reflect padding (torchvision's gaussian_blur at that size)."""
    batch, channels, height, width = x.shape
    # reflect padding needs half < the side: a narrower kernel on tiny images
    half_y, half_x = (min(BLUR_KERNEL // 2, side - 1) for side in (height, width))
    planes = x.reshape(1, batch * channels, height, width)
    planes = NF.pad(planes, (half_x, half_x, half_y, half_y), mode="reflect")
    k_y = _gaussian_kernel(sigma, half_y, channels).view(-1, 1, 2 * half_y + 1, 1)
    k_x = _gaussian_kernel(sigma, half_x, channels).view(-1, 1, 1, 2 * half_x + 1)
    planes = NF.conv2d(NF.conv2d(planes, k_y, groups=batch * channels), k_x,
                       groups=batch * channels)
    return planes.view(batch, channels, height, width)


def _jitter(x, p):
    """Brightness, contrast, saturation, hue (torchvision's order and formulas), per sample."""
    x = (x * _per_sample(p[:, 0])).clamp(0, 1)
    mean = _grey(x).mean(dim=(-3, -2, -1), keepdim=True)
    x = (_per_sample(p[:, 1]) * x + (1 - _per_sample(p[:, 1])) * mean).clamp(0, 1)
    x = (_per_sample(p[:, 2]) * x + (1 - _per_sample(p[:, 2])) * _grey(x)).clamp(0, 1)
    return _rotate_hue(x, p[:, 3])


def apply_photometric(images, params):
    """Jitter and blur of a batch of uint8 B x 3 x H x W images, each sample with its own row
    of `params` (B x 5, PHOTOMETRIC; neutral rows are left alone); computed in float32 on
    the images' device, rounded back to uint8."""
    p = params.to(device=images.device, dtype=torch.float32)
    jittered = (p[:, :4] != p.new_tensor(NEUTRAL[:4])).any(1).nonzero().flatten()
    blurred = (p[:, 4] > 0).nonzero().flatten()
    if len(jittered) == 0 and len(blurred) == 0:
        return images
    x = images.float() / 255
    if len(jittered):
        x[jittered] = _jitter(x[jittered], p[jittered])
    if len(blurred):
        x[blurred] = _gaussian_blur(x[blurred], p[blurred, 4])
    return (x * 255).round().clamp(0, 255).to(torch.uint8)


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

    def split(self, image, label=None, generator=None):
        """The geometric part applied, the photometric one drawn: (image, label, params), with
        params a PHOTOMETRIC vector for `apply_photometric` (None without jitter and blur).
        `generator`: the torch.Generator to draw from (default: torch's global one)."""
        g = generator
        fires = {n: torch.rand((), generator=g).item() < self.p for n in self.names}
        params = None
        if "jitter" in self.names or "blur" in self.names:
            params = _draw_photometric(fires, g)
        if fires.get("flip"):
            image = image.flip(-1)
            label = None if label is None else label.flip(-1)
        if fires.get("scale"):
            image, label = _scale(image, label, g)
        if self.crop is not None:
            image, label = _random_window(image, label, *self.crop, g)
        return image, label, params

    def __call__(self, image, label=None, generator=None):
        """All of it at once, on one image: `split`, then `apply_photometric`."""
        image, label, params = self.split(image, label, generator)
        if params is not None:
            image = apply_photometric(image[None], params[None])[0]
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
