"""Joint augmentations: alignment of image and label, dtypes, ignore padding, reproducibility."""
import random

import numpy as np
import pytest
import torch
import torch.nn.functional as nnf

from core.transforms import AUGMENTATIONS, build_transforms

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


def assert_aligned(image, label):
    """The relation label = f(image) survives: every interior bright pixel is brighter (max
    channel, which hue rotation preserves) than every interior dark one; padding is 0 / 255."""
    value = image.max(0).values.int()
    bright, dark = interior(label, 1), interior(label, 0)
    assert bright.any() and dark.any()
    assert value[bright].min() > value[dark].max()
    pad = label == 255
    assert (image[:, pad] == 0).all()
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
        assert_aligned(out_image, out_label)


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
