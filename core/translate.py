"""Image-level source -> target translation: FDA and LAB colour transfer.

Both functions take float tensors holding raw 0-255 RGB (apply them before mean/std
normalisation), shaped (B, 3, H, W) or (3, H, W), on any device, and return the same dtype.

- `fda_source_to_target`: Fourier Domain Adaptation (Yang & Soatto, CVPR 2020, Eq. 1-3),
  with the paper's centred window (default) or the four-corner window of the authors' torch
  training code (`window="corners"`).
- `lab_transfer`: per-channel mean/std matching in CIELAB (He et al., CVPR 2021, sec. 3.1),
  with our own `rgb_to_lab` / `lab_to_rgb`.
"""
import math

import torch

# ---------------------------------------------------------------------------------------
# FDA
# ---------------------------------------------------------------------------------------


def fda_window(height, width, beta):
    """(h1, h2, w1, w2): the centred low-frequency window [h1:h2, w1:w2] of FDA.

    Reference semantics (the authors' numpy `low_freq_mutate_np`): b = floor(min(H, W) * beta),
    centre (floor(H/2), floor(W/2)) of the fftshift-ed spectrum, window of side 2b + 1.
    The product is taken in Python floats, exactly like numpy's float64, so b matches the
    reference bit for bit (e.g. 512 * 0.09 -> 46).
    """
    if not 0.0 <= beta <= 0.5:
        # beyond 0.5 the reference slices with a negative start and swaps nothing sensible
        raise ValueError(f"FDA beta must be in [0, 0.5], got {beta}")
    b = math.floor(min(height, width) * beta)
    c_h, c_w = height // 2, width // 2
    return c_h - b, c_h + b + 1, c_w - b, c_w + b + 1


FDA_WINDOWS = ("centred", "corners")


def fda_corner_weight(height, width, beta, device=None, dtype=torch.float32):
    """Weight of the target amplitude over the one-sided spectrum (H, W//2 + 1), "corners" FDA.

    The authors' torch function (`FDA_source_to_target` in their utils/__init__.py, the one
    train.py and SStrain.py call) takes b = floor(min(H, W) * beta) and copies four b x b
    blocks of the UNSHIFTED amplitude spectrum: rows [0, b) and [H-b, H) times columns
    [0, b) and [W-b, W). These blocks are not symmetric under k -> -k (row/column H-b and W-b,
    i.e. frequency -b, are in; +b is out), so the mutated spectrum is not Hermitian. They then
    called the old `torch.irfft(..., onesided=False)`, a complex-to-real transform that reads
    only the first W//2 + 1 columns and treats the rest as the conjugate mirror of those.
    What their code computed is therefore, on the one-sided spectrum:
      - columns 1 .. W//2 (except a Nyquist column): weight 1 on rows [0, b) + [H-b, H) of
        columns [0, b) (and [W-b, W) where it reaches W//2, i.e. beta near 0.5), else 0;
        column W-b (frequency -b) is NOT swapped: it is the mirror of column b;
      - the self-mirrored columns 0 (and W/2 for even W), where the transform sees row k and
        row -k of the same column: the real part of the inverse averages the two, so the weight
        is (m(k) + m(-k)) / 2, i.e. 1/2 on rows b and H-b of column 0.
    Spelling out that average (instead of leaving a non-Hermitian column to the FFT library,
    whose behaviour there is undefined) makes the result the same on every backend; on CPU
    it equals torch.fft.irfft2 applied to their mutated spectrum.
    """
    fda_window(height, width, beta)  # validates beta
    b = math.floor(min(height, width) * beta)
    rows = torch.arange(height, device=device)
    cols = torch.arange(width // 2 + 1, device=device)
    in_rows = (rows < b) | (rows >= height - b)
    in_cols = (cols < b) | (cols >= width - b)
    weight = (in_rows[:, None] & in_cols[None, :]).to(dtype)
    self_mirrored = (cols == 0) | (2 * cols == width)
    averaged = (weight + weight[(-rows) % height]) / 2
    return torch.where(self_mirrored[None, :], averaged, weight)


def fda_source_to_target(src, trg, beta, clip=False, *, window="centred"):
    """Give `src` the low-frequency amplitude spectrum of `trg` (Yang & Soatto 2020).

    Eq. (1)-(3) of the paper: with F = fft2 per channel, amplitude A = |F| and phase
    P = angle(F), and M_beta the low-frequency mask,
        x_{s->t} = ifft2( [M_beta * A(x_t) + (1 - M_beta) * A(x_s)] * exp(i P(x_s)) ).

    Two masks (`window`):
      - "centred" (default): the paper's centred (2b+1) x (2b+1) window, b = floor(min(H, W)
        * beta), exactly as the authors' numpy function `FDA_source_to_target_np` (window from
        `fda_window`, mask built in the fftshift-ed frame and ifftshift-ed back, real part of
        the inverse transform). Symmetric under k -> -k, so the inverse is real.
      - "corners": what the authors' torch function `FDA_source_to_target`, used by their
        train.py / SStrain.py and so behind the published numbers, computes: four b x b corner
        blocks of the unshifted spectrum, inverted by the old complex-to-real
        `torch.irfft(onesided=False)` (see `fda_corner_weight` for the exact effective mask:
        column frequencies -(b-1) .. b-1, row frequencies -b .. b-1 for the non-negative
        columns and -(b-1) .. b for the negative ones). At a beta where b = 0 it changes
        nothing (the centred window still swaps the mean colour).

    Args:
        src: float tensor (B, C, H, W) or (C, H, W), raw 0-255 RGB.
        trg: same H and W; batch B (paired) or 1 (one style for the whole batch).
        beta: window size ratio in [0, 0.5]; the paper uses 0.01, 0.05, 0.09.
        clip: clamp the result to [0, 255]. Default False, like the reference: the output
            can leave [0, 255] by a few units; clip at the call site if you need valid pixels.
        window: "centred" or "corners" (keyword only).
    Returns:
        tensor of src's shape and dtype. Computed in float32 (float64 if src is float64).
    """
    if window not in FDA_WINDOWS:
        raise ValueError(f"FDA window must be one of {FDA_WINDOWS}, got {window!r}")
    if not src.is_floating_point():
        raise TypeError(f"fda_source_to_target expects a float tensor, got {src.dtype}")
    squeeze = src.dim() == 3
    if squeeze:
        src = src.unsqueeze(0)
    if trg.dim() == 3:
        trg = trg.unsqueeze(0)
    if src.dim() != 4 or trg.dim() != 4:
        raise ValueError(f"expected (B, C, H, W) tensors, got {tuple(src.shape)} and "
                         f"{tuple(trg.shape)}")
    if src.shape[-2:] != trg.shape[-2:]:
        raise ValueError(f"FDA needs source and target of the same size, got "
                         f"{tuple(src.shape[-2:])} and {tuple(trg.shape[-2:])}")
    if trg.shape[1] != src.shape[1] or trg.shape[0] not in (1, src.shape[0]):
        raise ValueError(f"target {tuple(trg.shape)} does not match source {tuple(src.shape)}: "
                         f"same channels, batch 1 or the source's")

    work = torch.float64 if src.dtype == torch.float64 else torch.float32
    height, width = src.shape[-2:]
    if window == "corners":
        # one-sided spectra: the complex-to-real inverse reads nothing else
        fft_src = torch.fft.rfft2(src.to(work))
        amp_trg = torch.fft.rfft2(trg.to(device=src.device, dtype=work)).abs()
        weight = fda_corner_weight(height, width, beta, device=src.device, dtype=work)
        amp = torch.lerp(fft_src.abs(), amp_trg, weight)
        out = torch.fft.irfft2(torch.polar(amp, fft_src.angle()), s=(height, width))
    else:
        fft_src = torch.fft.fft2(src.to(work))  # over the last two dims
        fft_trg = torch.fft.fft2(trg.to(device=src.device, dtype=work))
        amp_src, pha_src = fft_src.abs(), fft_src.angle()
        amp_trg = fft_trg.abs()

        # The window lives in the centred (fftshift-ed) frame; ifftshift the mask back once
        # instead of shifting both amplitude spectra: ifftshift(fftshift(a)) == a.
        h1, h2, w1, w2 = fda_window(height, width, beta)
        mask = torch.zeros(height, width, dtype=torch.bool, device=src.device)
        mask[h1:h2, w1:w2] = True
        mask = torch.fft.ifftshift(mask, dim=(-2, -1))

        amp = torch.where(mask, amp_trg, amp_src)       # Eq. (3): swap the low-frequency amplitude
        out = torch.fft.ifft2(torch.polar(amp, pha_src)).real  # keep the source phase
    if clip:
        out = out.clamp(0.0, 255.0)
    out = out.to(src.dtype)
    return out.squeeze(0) if squeeze else out


# ---------------------------------------------------------------------------------------
# CIELAB
# ---------------------------------------------------------------------------------------

# Linear sRGB -> CIE XYZ (IEC 61966-2-1, D65).
_RGB_TO_XYZ = (
    (0.4124564, 0.3575761, 0.1804375),
    (0.2126729, 0.7151522, 0.0721750),
    (0.0193339, 0.1191920, 0.9503041),
)
# D65 reference white = XYZ of RGB (1, 1, 1), i.e. the row sums (0.95047, 1.00000, 1.08883):
# taking it from the matrix makes white map to exactly (100, 0, 0).
_WHITE = tuple(sum(row) for row in _RGB_TO_XYZ)
_XYZ_TO_RGB = torch.linalg.inv(torch.tensor(_RGB_TO_XYZ, dtype=torch.float64)).tolist()
_EPS = 216 / 24389    # CIE epsilon (6/29)^3
_KAPPA = 24389 / 27   # CIE kappa (29/3)^3


def _matrix(rows, x):
    return torch.tensor(rows, dtype=x.dtype, device=x.device)


def _apply(matrix, x):
    """Multiply the channel dimension (-3) of x by a 3 x 3 matrix."""
    return torch.einsum("ij,...jhw->...ihw", matrix, x)


def _srgb_to_linear(c):
    # the clamp keeps the unused branch of `where` free of NaN for out-of-range inputs
    return torch.where(c <= 0.04045, c / 12.92, ((c.clamp_min(0.04045) + 0.055) / 1.055) ** 2.4)


def _linear_to_srgb(c):
    return torch.where(c <= 0.0031308, 12.92 * c,
                       1.055 * c.clamp_min(0.0031308) ** (1 / 2.4) - 0.055)


def _lab_f(t):
    return torch.where(t > _EPS, t.clamp_min(_EPS) ** (1 / 3), (_KAPPA * t + 16) / 116)


def _lab_f_inv(f):
    f3 = f ** 3
    return torch.where(f3 > _EPS, f3, (116 * f - 16) / _KAPPA)


def rgb_to_lab(rgb):
    """0-255 sRGB (..., 3, H, W) -> CIE 1976 L*a*b* (L in [0, 100]), D65 white.

    sRGB gamma expansion, linear RGB -> XYZ, normalise by the white, then
    L = 116 f(Y) - 16, a = 500 (f(X) - f(Y)), b = 200 (f(Y) - f(Z)),
    f(t) = t^(1/3) if t > 216/24389 else (24389/27 t + 16) / 116.
    """
    work = torch.float64 if rgb.dtype == torch.float64 else torch.float32
    rgb = rgb.to(work)
    xyz = _apply(_matrix(_RGB_TO_XYZ, rgb), _srgb_to_linear(rgb / 255.0))
    white = torch.tensor(_WHITE, dtype=work, device=rgb.device).view(3, 1, 1)
    fx, fy, fz = _lab_f(xyz / white).unbind(-3)
    return torch.stack((116 * fy - 16, 500 * (fx - fy), 200 * (fy - fz)), dim=-3)


def lab_to_rgb(lab):
    """Inverse of `rgb_to_lab`: L*a*b* (..., 3, H, W) -> 0-255 sRGB, NOT clipped.

    Colours outside the sRGB gamut come back outside [0, 255] (no NaN: the gamma branch
    is extended linearly below 0); clip at the call site.
    """
    work = torch.float64 if lab.dtype == torch.float64 else torch.float32
    lab = lab.to(work)
    big_l, a, b = lab.unbind(-3)
    fy = (big_l + 16) / 116
    f = torch.stack((fy + a / 500, fy, fy - b / 200), dim=-3)
    white = torch.tensor(_WHITE, dtype=work, device=lab.device).view(3, 1, 1)
    xyz = _lab_f_inv(f) * white
    return 255.0 * _linear_to_srgb(_apply(_matrix(_XYZ_TO_RGB, xyz), xyz))


def lab_transfer(src, trg, eps=1e-6):
    """Colour-transfer `src` towards `trg` in CIELAB (He et al. 2021, sec. 3.1).

    Per image and per L/a/b channel, s' = (s - mean_s) / std_s * std_t + mean_t
    (population std over the H x W pixels), then back to sRGB, clipped to [0, 255].

    Args:
        src: float tensor (B, 3, H, W) or (3, H, W), 0-255 RGB.
        trg: (B or 1, 3, H', W'); its size may differ from src (only its statistics are used).
        eps: floor on std_s, so a flat source channel becomes the flat target mean.
    Returns:
        tensor of src's shape and dtype.
    """
    if not src.is_floating_point():
        raise TypeError(f"lab_transfer expects a float tensor, got {src.dtype}")
    if src.shape[-3] != 3 or trg.shape[-3] != 3:
        raise ValueError(f"expected RGB tensors (..., 3, H, W), got {tuple(src.shape)} and "
                         f"{tuple(trg.shape)}")
    if src.dim() == 4 and trg.dim() == 4 and trg.shape[0] not in (1, src.shape[0]):
        raise ValueError(f"target batch {trg.shape[0]} must be 1 or the source's {src.shape[0]}")
    if trg.dim() > src.dim():
        raise ValueError(f"a single source image needs a single target, got {tuple(trg.shape)}")
    lab_s = rgb_to_lab(src)
    lab_t = rgb_to_lab(trg.to(device=src.device))
    mean_s, std_s = lab_s.mean((-2, -1), keepdim=True), lab_s.std((-2, -1), keepdim=True,
                                                                 correction=0)
    mean_t, std_t = lab_t.mean((-2, -1), keepdim=True), lab_t.std((-2, -1), keepdim=True,
                                                                 correction=0)
    lab = (lab_s - mean_s) / std_s.clamp_min(eps) * std_t + mean_t
    return lab_to_rgb(lab).clamp(0.0, 255.0).to(src.dtype)
