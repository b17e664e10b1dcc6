"""Joint augmentations: alignment of image and label, dtypes, ignore padding, reproducibility."""
import random

import numpy as np
import pytest
import torch
import torch.nn.functional as nnf
from torchvision.transforms.v2 import functional as TF

from core.transforms import (
    AUGMENTATIONS,
    BLUR_KERNEL,
    PHOTOMETRIC,
    apply_photometric,
    build_transforms,
)

H, W, BLOCK = 48, 96, 12
BRIGHT, DARK = (220, 180, 160), (40, 60, 30)


def pair(seed=0):
    """A label of random 12x12 blocks of classes 0/1, and an image that is a function of it:
    class 1 bright, class 0 dark. Blocks are random, so a flip changes both."""
    g = torch.Generator().manual_seed(seed)
    blocks = torch.randint(0, 2, (H // BLOCK, W // BLOCK), generator=g, dtype=torch.uint8)
    label = blocks.repeat_interleave(BLOCK, 0).repeat_interleave(BLOCK, 1)
    image = torch.where(label.bool(), torch.tensor(BRIGHT)[:, None, None],
                        torch.tensor(DARK)[:, None, None]).to(torch.uint8)
    return image, label


def interior(label, value, radius=3):
    """Pixels whose whole (2r+1)^2 neighbourhood has label `value` (away from edges, where
    bilinear resampling and blur legitimately mix the two classes)."""
    mask = (label == value).float()[None, None]
    return -nnf.max_pool2d(-mask, 2 * radius + 1, stride=1, padding=radius)[0, 0] == 1


def assert_aligned(image, label, padding_black=True):
    """The relation label = f(image) survives: every interior bright pixel is brighter (max
    channel, which hue rotation preserves) than every interior dark one; padding is 0 / 255
    (the image's 0 only without photometric ops: contrast and blur, which run after the
    geometric ones, may tint it)."""
    value = image.max(0).values.int()
    bright, dark = interior(label, 1), interior(label, 0)
    assert bright.any() and dark.any()
    assert value[bright].min() > value[dark].max()
    pad = label == 255
    assert (image[:, pad] == 0).all() or not padding_black
    assert set(label.unique().tolist()) <= {0, 1, 255}


def test_spec_parsing():
    assert build_transforms("") is None and build_transforms("none") is None
    assert build_transforms(None) is None
    aug = build_transforms(" Scale , flip")
    assert aug.names == ("flip", "scale")
    with pytest.raises(ValueError, match="rotate.*jitter, blur, flip, scale"):
        build_transforms("flip,rotate")
    with pytest.raises(ValueError, match="probability"):
        build_transforms("flip", p=1.5)


def test_flip_is_exact_on_both():
    image, label = pair()
    out_image, out_label = build_transforms("flip", p=1.0)(image, label)
    assert torch.equal(out_image, image.flip(-1)) and torch.equal(out_label, label.flip(-1))
    assert not torch.equal(out_label, label)
    # p = 0: nothing happens
    out_image, out_label = build_transforms(",".join(AUGMENTATIONS), p=0.0)(image, label)
    assert torch.equal(out_image, image) and torch.equal(out_label, label)


@pytest.mark.parametrize("name", ["jitter", "blur"])
def test_photometric_changes_image_only(name):
    image, label = pair(1)
    torch.manual_seed(0)
    out_image, out_label = build_transforms(name, p=1.0)(image, label)
    assert out_image.dtype == torch.uint8 and out_image.shape == image.shape
    assert torch.equal(out_label, label)
    assert not torch.equal(out_image, image)
    assert_aligned(out_image, out_label)


def test_scale_keeps_size_alignment_and_pads_with_ignore():
    image, label = pair(2)
    aug = build_transforms("scale", p=1.0)
    padded = cropped = 0
    for seed in range(12):
        torch.manual_seed(seed)
        out_image, out_label = aug(image, label)
        assert out_image.shape == image.shape and out_label.shape == label.shape
        assert out_image.dtype == torch.uint8 and out_label.dtype == torch.uint8
        assert_aligned(out_image, out_label)
        if (out_label == 255).any():
            padded += 1
        else:
            cropped += 1
    assert padded and cropped  # both branches exercised


def test_all_augmentations_together_stay_aligned():
    aug = build_transforms("flip,jitter,blur,scale", p=1.0)
    for seed in range(8):
        image, label = pair(seed)
        torch.manual_seed(seed)
        out_image, out_label = aug(image, label)
        assert out_image.dtype == torch.uint8 and out_label.dtype == torch.uint8
        assert out_image.shape == (3, H, W) and out_label.shape == (H, W)
        assert_aligned(out_image, out_label, padding_black=False)


def test_label_none_is_passed_through():
    image, _ = pair()
    out_image, out_label = build_transforms("flip,jitter,blur,scale", p=1.0)(image, None)
    assert out_label is None and out_image.shape == image.shape


def test_reproducible_under_torch_seed_only():
    image, label = pair(3)
    aug = build_transforms("flip,jitter,blur,scale", p=0.5)
    runs = []
    for other_seed in (1, 2):
        random.seed(other_seed)  # other generators must not matter
        np.random.seed(other_seed)
        torch.manual_seed(123)
        runs.append([aug(image, label) for _ in range(6)])
    for (a_img, a_lbl), (b_img, b_lbl) in zip(*runs, strict=True):
        assert torch.equal(a_img, b_img) and torch.equal(a_lbl, b_lbl)
    # ...and the draws do vary between calls
    assert len({(img.sum().item(), lbl.sum().item()) for img, lbl in runs[0]}) > 1


def test_probability_is_respected():
    image, label = pair()
    aug = build_transforms("flip", p=0.5)
    torch.manual_seed(0)
    flips = sum(torch.equal(aug(image, label)[1], label.flip(-1)) for _ in range(200))
    assert 70 < flips < 130


def test_crop_takes_aligned_windows_of_the_requested_size():
    torch.manual_seed(0)
    image = torch.arange(12 * 20, dtype=torch.int64).view(1, 12, 20).repeat(3, 1, 1)
    label = (image[0] % 251).to(torch.uint8)
    image = (image % 251).to(torch.uint8)
    crop_only = build_transforms("none", crop=(8, 10))
    corners = set()
    for _ in range(20):
        im, lab = crop_only(image.clone(), label.clone())
        assert im.shape == (3, 8, 10) and lab.shape == (8, 10)
        assert torch.equal(im[0], lab)             # image and label cut at the same place
        corners.add(int(lab[0, 0]))
    assert len(corners) > 3                          # the window moves
    # larger than the image: padded with 0 / 255 around the whole image
    im, lab = build_transforms("flip", p=0.0, crop=(16, 24))(image, label)
    assert im.shape == (3, 16, 24) and (lab == 255).sum() == 16 * 24 - 12 * 20
    assert build_transforms("none") is None
    with pytest.raises(ValueError, match="crop"):
        build_transforms("flip", crop=(0, 4))


# --------------------------------------------------------------------------- on the device

def torchvision_photometric(image, params):
    """One sample's photometric ops by torchvision's functional API (the independent route),
    in float on 0-1 images."""
    b, c, s, h, sigma = params.tolist()
    x = image.float() / 255
    x = TF.adjust_hue(TF.adjust_saturation(TF.adjust_contrast(TF.adjust_brightness(x, b), c),
                                           s), h)
    if sigma > 0:
        k = min(BLUR_KERNEL, 2 * min(x.shape[-2:]) - 1)
        x = TF.gaussian_blur(x, [k, k], [sigma, sigma])
    return x * 255


def test_batched_photometric_equals_torchvision_per_sample():
    """Each sample of a batch gets its own parameters; the result is torchvision's to within
    uint8 rounding (the float results differ by float error only)."""
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (5, 3, 24, 40), dtype=torch.uint8, generator=g)
    params = torch.tensor([[1.0, 1.0, 1.0, 0.0, 0.0],      # neutral: unchanged
                           [1.2, 0.8, 1.1, 0.04, 0.0],     # jitter only
                           [1.0, 1.0, 1.0, 0.0, 1.3],      # blur only
                           [0.8, 1.25, 0.75, -0.05, 2.0],  # both, widest blur
                           [1.1, 0.9, 1.2, -0.02, 0.1]])
    out = apply_photometric(images, params)
    assert out.dtype == torch.uint8 and out.shape == images.shape
    assert torch.equal(out[0], images[0])
    for i in range(len(images)):
        want = torchvision_photometric(images[i], params[i])
        assert (out[i].float() - want).abs().max() <= 0.51, i   # rounding + float error
    assert not torch.equal(out[1], images[1]) and not torch.equal(out[2], images[2])


def test_split_draws_what_call_applies():
    """The workers' part (split) plus apply_photometric on the device is the whole
    augmentation: same geometric result, same draws, whatever route."""
    image, label = pair(4)
    aug = build_transforms("flip,jitter,blur,scale", p=0.7)
    for seed in range(6):
        geo_image, geo_label, params = aug.split(image, label, torch.Generator().manual_seed(seed))
        whole_image, whole_label = aug(image, label, torch.Generator().manual_seed(seed))
        assert torch.equal(geo_label, whole_label)
        assert torch.equal(apply_photometric(geo_image[None], params[None])[0], whole_image)
        assert params.shape == (len(PHOTOMETRIC),)
    assert build_transforms("flip,scale").split(image, label)[2] is None   # nothing to defer
