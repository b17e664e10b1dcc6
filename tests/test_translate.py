"""FDA against independent transcriptions of the authors' two functions (numpy: centred
window; torch: four corner blocks), and LAB transfer."""
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from core.translate import (
    fda_corner_weight,
    fda_source_to_target,
    lab_to_rgb,
    lab_transfer,
    rgb_to_lab,
)

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


# --- FDA, "corners": the authors' torch function (utils/__init__.py, used by train.py) --------
#
# Their code calls torch.rfft / torch.irfft, removed in torch 1.8. We emulate them with torch.fft:
#   torch.rfft(x, signal_ndim=2, onesided=False) == torch.view_as_real(torch.fft.fft2(x)) for a
#   real x (the full two-sided spectrum, real and imaginary parts in a last dim of 2).
#   torch.irfft(X, signal_ndim=2, onesided=False, signal_sizes=(H, W)) was a complex-to-real
#   (C2R) transform that used ONLY the first W//2 + 1 columns of X and ignored the others, i.e.
#   torch.fft.irfft2(X[..., :W//2 + 1], s=(H, W)), NOT torch.fft.ifft2(X).real. Evidence:
#   - torch <= 1.7 ATen: mkl/SpectralOps.cpp `_fft_mkl` (CPU, the path their train.py took:
#     it calls FDA_source_to_target on the loader's CPU tensors, before .cuda()) sets up a
#     DFTI_REAL backward transform with DFTI_CONJUGATE_EVEN_STORAGE = DFTI_COMPLEX_COMPLEX,
#     which reads the conjugate-even half (W//2 + 1 columns) through the full tensor's
#     strides; cuda/SpectralOps.cu `_fft_cufft` says "Slice when twosided complex-to-real":
#     `if (complex_input && !complex_output && !onesided) input = input.narrow(signal_ndim, 0,
#     infer_ft_real_to_complex_onesided_size(...))` before its cuFFT C2R plan;
#   - the torch.irfft docstring: the input "should contain values following conjugate symmetry
#     ... even if onesided is True, often symmetry on some part is still needed. When this
#     requirement is not satisfied, the behavior of irfft() is undefined."
#   The four corner blocks are NOT symmetric under k -> -k (frequency -b is in, +b is out), so
#   the mutated spectrum is not Hermitian and the two emulations differ (asserted below). On
#   the kept half, torch.fft.irfft2 (CPU, MKL build) computes the real part of the inverse of
#   the half completed by its conjugate mirror (checked to 1e-16 on random non-Hermitian
#   halves); in the self-mirrored column 0 that averages rows k and -k (pytorch issue #154496
#   reports the same symmetrisation by cuFFT in 2-D). core.translate spells that average out.


def old_rfft_twosided(x):
    """torch.rfft(x, signal_ndim=2, onesided=False) of torch <= 1.7."""
    return torch.view_as_real(torch.fft.fft2(x))


def old_irfft_twosided(spectrum, signal_sizes):
    """torch.irfft(spectrum, signal_ndim=2, onesided=False, signal_sizes=...): C2R on the half."""
    height, width = signal_sizes
    half = torch.view_as_complex(spectrum.contiguous())[..., :width // 2 + 1]
    return torch.fft.irfft2(half, s=(height, width))


def full_inverse_real_part(spectrum, signal_sizes):
    """The other reading of irfft(onesided=False), shown to be NOT what the old code computed."""
    return torch.fft.ifft2(torch.view_as_complex(spectrum.contiguous())).real


def authors_torch_fda(src_img, trg_img, L, inverse=old_irfft_twosided, buffer=torch.float):
    """Transcription of their extract_ampl_phase / low_freq_mutate / FDA_source_to_target.

    `buffer` is the dtype of their recomposed spectrum (torch.float, i.e. float32, in their
    code); float64 here keeps the comparison at float64 rounding.
    """
    fft_src = old_rfft_twosided(src_img.clone())
    fft_trg = old_rfft_twosided(trg_img.clone())

    def ampl_phase(f):
        return torch.sqrt(f[..., 0] ** 2 + f[..., 1] ** 2), torch.atan2(f[..., 1], f[..., 0])

    amp_src, pha_src = ampl_phase(fft_src.clone())
    amp_trg, _ = ampl_phase(fft_trg.clone())

    amp = amp_src.clone()
    _, _, h, w = amp.size()
    b = (np.floor(np.amin((h, w)) * L)).astype(int)
    amp[:, :, 0:b, 0:b] = amp_trg[:, :, 0:b, 0:b]              # top left
    amp[:, :, 0:b, w - b:w] = amp_trg[:, :, 0:b, w - b:w]      # top right
    amp[:, :, h - b:h, 0:b] = amp_trg[:, :, h - b:h, 0:b]      # bottom left
    amp[:, :, h - b:h, w - b:w] = amp_trg[:, :, h - b:h, w - b:w]  # bottom right

    fft_new = torch.zeros(fft_src.size(), dtype=buffer)
    fft_new[..., 0] = torch.cos(pha_src) * amp
    fft_new[..., 1] = torch.sin(pha_src) * amp
    return inverse(fft_new, list(src_img.shape[-2:]))


CORNER_SIZES = [(32, 48), (33, 47), (31, 30), (30, 31), (128, 200), (129, 201)]
CORNER_BETAS = (0.0, 0.01, 0.05, 0.09, 0.3, 0.5)


@pytest.mark.parametrize("size", CORNER_SIZES)
def test_fda_corners_matches_authors_torch_function(size):
    src = torch.from_numpy(random_images((2, 3, *size), 20))
    trg = torch.from_numpy(random_images((2, 3, *size), 21))
    for beta in CORNER_BETAS:
        out = fda_source_to_target(src, trg, beta, window="corners")
        assert out.dtype == torch.float64 and out.shape == src.shape
        expected = authors_torch_fda(src, trg, beta, buffer=torch.float64)
        torch.testing.assert_close(out, expected, rtol=0, atol=1e-9)
        b = math.floor(min(size) * beta)
        if b > 0:  # b = 0: corners swaps nothing, centred still swaps the mean colour
            centred = fda_source_to_target(src, trg, beta)
            assert (out - centred).abs().mean() > 0.1


def test_fda_corners_float32_like_their_code():
    src = torch.from_numpy(random_images((2, 3, 64, 96), 22)).float()
    trg = torch.from_numpy(random_images((1, 3, 64, 96), 23)).float()
    out = fda_source_to_target(src, trg, 0.09, window="corners")
    assert out.dtype == torch.float32
    # their code: float32 input, float32 (torch.float) spectrum buffer; paired batches
    expected = authors_torch_fda(src, trg.expand_as(src), 0.09)
    torch.testing.assert_close(out, expected, rtol=0, atol=2e-3)
    single = fda_source_to_target(src[1], trg[0], 0.09, window="corners")
    torch.testing.assert_close(single, out[1], rtol=0, atol=1e-4)


def test_fda_corners_the_old_irfft_reading_matters():
    """With b > 0 the mutated spectrum is not Hermitian: ifft2().real would give another image."""
    src = torch.from_numpy(random_images((1, 3, 40, 60), 24))
    trg = torch.from_numpy(random_images((1, 3, 40, 60), 25))
    ours = fda_source_to_target(src, trg, 0.1, window="corners")
    c2r = authors_torch_fda(src, trg, 0.1, buffer=torch.float64)
    other = authors_torch_fda(src, trg, 0.1, inverse=full_inverse_real_part, buffer=torch.float64)
    torch.testing.assert_close(ours, c2r, rtol=0, atol=1e-9)
    assert (ours - other).abs().max() > 1.0


def signed(k, n):
    return k if k <= n // 2 else k - n


@pytest.mark.parametrize("size", [(30, 44), (31, 45)])
def test_fda_corners_effective_window_in_the_spectrum(size):
    """The corner FDA, read in frequencies (no inverse transform in the expectation): target
    amplitude at column frequencies 1..b-1 with rows -b..b-1, at -(b-1)..-1 with rows
    -(b-1)..b, at column 0 with rows -(b-1)..b-1 and the average of both amplitudes at rows
    +-b; the source amplitude everywhere else (column -b included, although their slices
    copy it: the C2R transform reads it from column +b)."""
    h, w = size
    beta = 0.1
    b = math.floor(min(h, w) * beta)
    assert b == 3
    src = torch.from_numpy(random_images((1, 3, h, w), 26))
    trg = torch.from_numpy(random_images((1, 3, h, w), 27))
    out = fda_source_to_target(src, trg, beta, window="corners")
    amp_src, amp_trg = torch.fft.fft2(src).abs(), torch.fft.fft2(trg).abs()
    expected = amp_src.clone()
    for k1 in range(h):
        for k2 in range(w):
            f1, f2 = signed(k1, h), signed(k2, w)
            if (1 <= f2 <= b - 1 and -b <= f1 <= b - 1) or (
                    -(b - 1) <= f2 <= -1 and -(b - 1) <= f1 <= b) or (
                    f2 == 0 and abs(f1) <= b - 1):
                expected[..., k1, k2] = amp_trg[..., k1, k2]
            elif f2 == 0 and abs(f1) == b:
                expected[..., k1, k2] = (amp_src[..., k1, k2] + amp_trg[..., k1, k2]) / 2
    torch.testing.assert_close(torch.fft.fft2(out).abs(), expected, rtol=1e-9, atol=1e-6)
    # the phase stays the source's
    phase_diff = torch.angle(torch.fft.fft2(out) * torch.fft.fft2(src).conj())
    assert phase_diff.abs().max() < 1e-6


def test_fda_corner_weight_values():
    # beta 0.5 on an even width reaches the Nyquist column through the [W-b, W) block
    weight = fda_corner_weight(7, 6, 0.5, dtype=torch.float64)
    assert weight.shape == (7, 4)
    # b = 3: rows 0,1,2 and 4,5,6 (not 3); columns 0,1,2 and 3 (= W - b)
    rows = torch.tensor([1, 1, 1, 0, 1, 1, 1], dtype=torch.float64)
    torch.testing.assert_close(weight[:, 1], rows)
    torch.testing.assert_close(weight[:, 2], rows)
    # self-mirrored columns 0 and W/2: row k averaged with row -k; row 3 pairs with row 4
    averaged = torch.tensor([1, 1, 1, 0.5, 0.5, 1, 1], dtype=torch.float64)
    torch.testing.assert_close(weight[:, 0], averaged)
    torch.testing.assert_close(weight[:, 3], averaged)
    assert fda_corner_weight(40, 60, 0.01).sum() == 0  # b = 0


def test_fda_corners_beta_below_one_pixel_is_identity():
    src = torch.from_numpy(random_images((2, 3, 32, 48), 28))
    trg = torch.from_numpy(random_images((2, 3, 32, 48), 29))
    torch.testing.assert_close(fda_source_to_target(src, trg, 0.01, window="corners"), src,
                               rtol=0, atol=1e-9)


def test_fda_rejects_unknown_window():
    with pytest.raises(ValueError, match="window"):
        fda_source_to_target(torch.zeros(1, 3, 16, 16), torch.zeros(1, 3, 16, 16), 0.01,
                             window="center")
    with pytest.raises(ValueError):
        fda_source_to_target(torch.zeros(1, 3, 16, 16), torch.zeros(1, 3, 16, 16), 0.6,
                             window="corners")


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
        corners = fda_source_to_target(torch.from_numpy(src)[None], torch.from_numpy(trg)[None],
                                       beta, window="corners")
        expected = authors_torch_fda(torch.from_numpy(src)[None], torch.from_numpy(trg)[None], beta)
        torch.testing.assert_close(corners, expected, rtol=0, atol=2e-3)
        # the two windows give visibly different pictures (4.2 grey levels at 1024x512, 0.01)
        assert (corners - out).abs().mean() > 0.5
    lab = lab_transfer(torch.from_numpy(src)[None], torch.from_numpy(trg)[None])
    mean_out = rgb_to_lab(lab).mean((-2, -1))
    mean_trg = rgb_to_lab(torch.from_numpy(trg)[None]).mean((-2, -1))
    # real photos clip somewhat, so only a loose check of the luminance
    assert abs(mean_out[0, 0] - mean_trg[0, 0]) < 3.0
