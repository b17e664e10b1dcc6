"""FDA against an independent numpy transcription of the authors' reference, and LAB transfer."""
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from core.translate import fda_source_to_target, lab_to_rgb, lab_transfer, rgb_to_lab

BETAS = (0.0, 0.01, 0.05, 0.09, 0.3)


def fda_reference(src, trg, beta):
    """FDA's numpy reference (Yang & Soatto 2020, their code), for one (C, H, W) image."""
    out = np.empty_like(src, dtype=np.float64)
    h, w = src.shape[-2:]
    b = int(np.floor(min(h, w) * beta))
    c_h, c_w = int(np.floor(h / 2.0)), int(np.floor(w / 2.0))
    for ch in range(src.shape[0]):
        f_src, f_trg = np.fft.fft2(src[ch]), np.fft.fft2(trg[ch])
        amp_src, pha_src = np.abs(f_src), np.angle(f_src)
        a_src, a_trg = np.fft.fftshift(amp_src), np.fft.fftshift(np.abs(f_trg))
        a_src[c_h - b:c_h + b + 1, c_w - b:c_w + b + 1] = a_trg[c_h - b:c_h + b + 1,
                                                                c_w - b:c_w + b + 1]
        amp = np.fft.ifftshift(a_src)
        out[ch] = np.real(np.fft.ifft2(amp * np.exp(1j * pha_src)))
    return out


def random_images(shape, seed):
    return np.random.default_rng(seed).uniform(0, 255, size=shape)


@pytest.mark.parametrize("size", [(32, 48), (33, 47), (31, 30)])
def test_fda_matches_numpy_reference(size):
    src = random_images((2, 3, *size), 0)
    trg = random_images((2, 3, *size), 1)
    for beta in BETAS:
        out = fda_source_to_target(torch.from_numpy(src), torch.from_numpy(trg), beta)
        assert out.dtype == torch.float64 and out.shape == src.shape
        for i in range(2):
            np.testing.assert_allclose(out[i].numpy(), fda_reference(src[i], trg[i], beta),
                                       rtol=0, atol=1e-9)


def test_fda_float32_batch_broadcast_and_single_image():
    src = random_images((3, 3, 24, 40), 2)
    trg = random_images((1, 3, 24, 40), 3)
    out = fda_source_to_target(torch.tensor(src, dtype=torch.float32),
                               torch.tensor(trg, dtype=torch.float32), 0.09)
    assert out.dtype == torch.float32
    for i in range(3):
        np.testing.assert_allclose(out[i].numpy(), fda_reference(src[i], trg[0], 0.09), atol=2e-3)
    single = fda_source_to_target(torch.from_numpy(src[0]), torch.from_numpy(trg[0]), 0.09)
    np.testing.assert_allclose(single.numpy(), fda_reference(src[0], trg[0], 0.09), atol=1e-9)


def test_fda_beta_zero_swaps_only_the_mean_colour():
    src = torch.from_numpy(random_images((2, 3, 20, 28), 4))
    trg = torch.from_numpy(random_images((2, 3, 20, 28), 5)) * 0.5  # different mean
    out = fda_source_to_target(src, trg, 0.0)
    expected = src - src.mean((-2, -1), keepdim=True) + trg.mean((-2, -1), keepdim=True)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-9)


def test_fda_identity_when_target_is_source():
    src = torch.from_numpy(random_images((2, 3, 17, 22), 6))
    for beta in BETAS:
        torch.testing.assert_close(fda_source_to_target(src, src.clone(), beta), src,
                                   rtol=0, atol=1e-9)


def test_fda_spectrum_outside_window_untouched_inside_is_target():
    h, w, beta = 30, 44, 0.1
    src = torch.from_numpy(random_images((1, 3, h, w), 7))
    trg = torch.from_numpy(random_images((1, 3, h, w), 8))
    out = fda_source_to_target(src, trg, beta)
    amp = torch.fft.fftshift(torch.fft.fft2(out).abs(), dim=(-2, -1))
    amp_src = torch.fft.fftshift(torch.fft.fft2(src).abs(), dim=(-2, -1))
    amp_trg = torch.fft.fftshift(torch.fft.fft2(trg).abs(), dim=(-2, -1))
    b = math.floor(min(h, w) * beta)
    window = torch.zeros(h, w, dtype=torch.bool)
    window[h // 2 - b:h // 2 + b + 1, w // 2 - b:w // 2 + b + 1] = True
    assert window.sum() == (2 * b + 1) ** 2
    # the window is symmetric under k -> -k, so the new spectrum stays Hermitian, its inverse
    # is real, and taking the real part changes no amplitude
    torch.testing.assert_close(amp[..., ~window], amp_src[..., ~window], rtol=1e-9, atol=1e-6)
    torch.testing.assert_close(amp[..., window], amp_trg[..., window], rtol=1e-9, atol=1e-6)
    phase = torch.fft.fft2(out).angle()
    assert not torch.allclose(phase, torch.fft.fft2(trg).angle())


def test_fda_rejects_bad_input():
    with pytest.raises(ValueError):
        fda_source_to_target(torch.zeros(1, 3, 16, 16), torch.zeros(1, 3, 16, 18), 0.01)
    with pytest.raises(ValueError):
        fda_source_to_target(torch.zeros(2, 3, 16, 16), torch.zeros(3, 3, 16, 16), 0.01)
    with pytest.raises(ValueError):
        fda_source_to_target(torch.zeros(1, 3, 16, 16), torch.zeros(1, 3, 16, 16), 0.6)
    with pytest.raises(TypeError):
        fda_source_to_target(torch.zeros(1, 3, 16, 16, dtype=torch.uint8),
                             torch.zeros(1, 3, 16, 16), 0.01)


def test_fda_clip_option():
    src = torch.from_numpy(random_images((1, 3, 32, 32), 9))
    trg = torch.full((1, 3, 32, 32), 250.0, dtype=torch.float64)
    raw = fda_source_to_target(src, trg, 0.05)
    assert raw.max() > 255  # the reference does not clip: bright target pushes values out
    clipped = fda_source_to_target(src, trg, 0.05, clip=True)
    torch.testing.assert_close(clipped, raw.clamp(0, 255))


def rgb_pixel(r, g, b, dtype=torch.float64):
    return torch.tensor([r, g, b], dtype=dtype).view(3, 1, 1)


def test_rgb_to_lab_known_values():
    white = rgb_to_lab(rgb_pixel(255, 255, 255)).flatten()
    torch.testing.assert_close(white, torch.tensor([100.0, 0, 0], dtype=torch.float64),
                               rtol=0, atol=1e-3)
    black = rgb_to_lab(rgb_pixel(0, 0, 0)).flatten()
    torch.testing.assert_close(black, torch.zeros(3, dtype=torch.float64), rtol=0, atol=1e-6)
    # published values (e.g. Lindbloom's calculator, sRGB D65)
    red = rgb_to_lab(rgb_pixel(255, 0, 0)).flatten()
    torch.testing.assert_close(red, torch.tensor([53.2408, 80.0925, 67.2032], dtype=torch.float64),
                               rtol=0, atol=2e-3)
    blue = rgb_to_lab(rgb_pixel(0, 0, 255)).flatten()
    torch.testing.assert_close(blue,
                               torch.tensor([32.2970, 79.1875, -107.8602], dtype=torch.float64),
                               rtol=0, atol=2e-3)
    # a mid grey is neutral and L* follows the CIE formula for its luminance
    grey = rgb_to_lab(rgb_pixel(128, 128, 128)).flatten()
    y = ((128 / 255 + 0.055) / 1.055) ** 2.4
    torch.testing.assert_close(grey, torch.tensor([116 * y ** (1 / 3) - 16, 0, 0],
                                                  dtype=torch.float64), rtol=0, atol=1e-6)


def test_lab_round_trip():
    rgb = torch.from_numpy(random_images((2, 3, 40, 50), 10))
    torch.testing.assert_close(lab_to_rgb(rgb_to_lab(rgb)), rgb, rtol=0, atol=1e-8)
    # float32: the XYZ -> RGB matrix cancels large terms for dark channels next to bright
    # ones, so a few pixels are off by ~2e-3 (far below one grey level); the mean is ~2e-5
    rgb32 = rgb.float()
    err = (lab_to_rgb(rgb_to_lab(rgb32)) - rgb32).abs()
    assert err.max() < 5e-3 and err.mean() < 1e-4
    # dark pixels exercise the linear segments of both the sRGB and Lab curves
    dark = rgb * 0.02
    torch.testing.assert_close(lab_to_rgb(rgb_to_lab(dark)), dark, rtol=0, atol=1e-8)


def test_lab_to_rgb_out_of_gamut_is_finite():
    lab = torch.tensor([50.0, 120.0, -120.0], dtype=torch.float64).view(3, 1, 1)
    rgb = lab_to_rgb(lab)
    assert torch.isfinite(rgb).all() and (rgb.min() < 0 or rgb.max() > 255)


def smooth_image(seed, lab_mean, lab_spread, size=(48, 64)):
    """A smooth, low-chroma image built in LAB, well inside the sRGB gamut, so that a
    transfer between two such images needs no clipping."""
    rng = np.random.default_rng(seed)
    yy, xx = np.meshgrid(np.linspace(0, 1, size[0]), np.linspace(0, 1, size[1]), indexing="ij")
    chans = [lab_mean[c] + lab_spread[c] * np.sin(2 * np.pi * (
        rng.uniform(0.5, 2) * xx + rng.uniform(0.5, 2) * yy + rng.uniform())) for c in range(3)]
    rgb = lab_to_rgb(torch.from_numpy(np.stack(chans)))
    assert 0 <= rgb.min() and rgb.max() <= 255
    return rgb


def test_lab_transfer_matches_target_statistics():
    src = torch.stack([smooth_image(0, (45, 5, -10), (15, 8, 6)),
                       smooth_image(1, (60, -8, 12), (10, 5, 9))])
    trg = torch.stack([smooth_image(2, (55, 10, 5), (8, 4, 10)),
                       smooth_image(3, (40, -5, -5), (12, 9, 5))])
    out = lab_transfer(src, trg)
    assert out.shape == src.shape and out.dtype == src.dtype
    assert 0 < out.min() and out.max() < 255  # nothing clipped: the statistics must match
    lab_out, lab_trg = rgb_to_lab(out), rgb_to_lab(trg)
    torch.testing.assert_close(lab_out.mean((-2, -1)), lab_trg.mean((-2, -1)), rtol=0, atol=1e-6)
    torch.testing.assert_close(lab_out.std((-2, -1), correction=0),
                               lab_trg.std((-2, -1), correction=0), rtol=0, atol=1e-6)
    # the source's structure survives: a per-channel affine map in LAB, not a copy of trg
    lab_src = rgb_to_lab(src)
    for c in range(3):
        corr = torch.corrcoef(torch.stack([lab_src[0, c].flatten(), lab_out[0, c].flatten()]))
        assert corr[0, 1] > 1 - 1e-9


def test_lab_transfer_broadcast_identity_and_flat_channel():
    src = smooth_image(4, (50, 0, 10), (10, 5, 5)).unsqueeze(0).repeat(2, 1, 1, 1).float()
    torch.testing.assert_close(lab_transfer(src, src), src, rtol=0, atol=1e-2)
    trg = smooth_image(5, (60, 5, -5), (8, 6, 4)).unsqueeze(0).float()
    out = lab_transfer(src, trg)  # one target for the whole batch
    torch.testing.assert_close(out[0], out[1])
    flat = torch.full((1, 3, 8, 8), 77.0)
    res = lab_transfer(flat, trg)
    assert torch.isfinite(res).all()
    # a flat source becomes the target's mean LAB colour
    expected = lab_to_rgb(rgb_to_lab(trg).mean((-2, -1), keepdim=True)).clamp(0, 255)
    torch.testing.assert_close(res, expected.expand_as(res), rtol=0, atol=1e-3)


def test_lab_transfer_rejects_bad_input():
    with pytest.raises(ValueError):
        lab_transfer(torch.zeros(1, 4, 8, 8), torch.zeros(1, 3, 8, 8))
    with pytest.raises(ValueError):
        lab_transfer(torch.zeros(2, 3, 8, 8), torch.zeros(3, 3, 8, 8))


# --- optional: real frames ------------------------------------------------------------------

def _shared_data():
    root = os.environ.get("SEGDA_SHARED_DATA")
    if not root:
        pytest.skip("SEGDA_SHARED_DATA not set")
    src = Path(root) / "gta5_samples" / "images" / "fda_source.png"
    trg = sorted((Path(root) / "cityscapes_samples" / "leftImg8bit" / "train").rglob("*.png"))
    if not src.is_file() or not trg:
        pytest.skip(f"sample frames not found under {root}")
    return src, trg[0]


def _load_rgb(path, size):
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB").resize(size, Image.BICUBIC), dtype=np.float32)


def test_fda_and_lab_on_real_frames():
    src_path, trg_path = _shared_data()
    size = (256, 128)  # (W, H): small enough to keep the test fast, even H/W as in training
    src = _load_rgb(src_path, size).transpose(2, 0, 1).copy()
    trg = _load_rgb(trg_path, size).transpose(2, 0, 1).copy()
    for beta in (0.01, 0.05, 0.09):
        out = fda_source_to_target(torch.from_numpy(src)[None], torch.from_numpy(trg)[None], beta)
        np.testing.assert_allclose(out[0].numpy(), fda_reference(src, trg, beta), atol=5e-3)
    lab = lab_transfer(torch.from_numpy(src)[None], torch.from_numpy(trg)[None])
    mean_out = rgb_to_lab(lab).mean((-2, -1))
    mean_trg = rgb_to_lab(torch.from_numpy(trg)[None]).mean((-2, -1))
    # real photos clip somewhat, so only a loose check of the luminance
    assert abs(mean_out[0, 0] - mean_trg[0, 0]) < 3.0
