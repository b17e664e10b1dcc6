"""Domain styles: the domain gap. Same scene in, two global appearances out."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from demo.canvas import value_noise
from demo.palette import (
    BUILDING,
    BUS,
    CAR,
    EGO_VEHICLE,
    GROUND,
    LIGHT,
    PARKING,
    POLE,
    RAIL_TRACK,
    ROAD,
    SIDEWALK,
    SIGN,
    SKY,
    TERRAIN,
    TRAIN,
    TRUCK,
    VEGETATION,
    WALL,
)


@dataclass(frozen=True)
class Style:
    """Global appearance of a domain; each frame jitters these a little."""
    gain: tuple              # colour cast: per-channel multiplier
    exposure: float          # overall brightness multiplier
    saturation: float        # 1 = unchanged, < 1 washes colours out
    contrast: float          # around mid-grey
    gamma: float             # > 1 darkens mid-tones
    black: float             # lifted black level (haze, low-contrast sensor)
    light_gradient: float    # amplitude of a directional illumination gradient
    vignette: float          # darkening towards the corners
    texture: tuple           # ((cell size in px, amplitude), ...): grain of surface texture
    blur: bool               # soft optics (a 3-tap blur)
    noise: float             # sensor noise std (0..1 scale)


# GTA5-like: sunny game render, warm, contrasty and bright, smooth large-scale texture, crisp
# and noise-free. Cityscapes-like: overcast, greenish, darker mid-tones, vignetting, fine grain,
# soft optics, sensor noise. Roughly calibrated on the real sample frames (RGB mean / std at
# 256x128: GTA5 ~130 / ~62, Cityscapes ~66 / ~37; these give ~126 / ~59 and ~77 / ~39), then
# softened on the target side until a small CNN trained on the source kept 35-40% of its source
# mIoU on the target (a harsher target left it at ~10%, with nothing for the methods to build on).
SOURCE_STYLE = Style(gain=(1.06, 1.0, 0.92), exposure=1.05, saturation=1.0, contrast=1.15,
                     gamma=0.9, black=0.0, light_gradient=0.12, vignette=0.0,
                     texture=((14, 0.8),), blur=False, noise=0.0)
TARGET_STYLE = Style(gain=(0.88, 1.0, 0.92), exposure=0.9, saturation=0.85, contrast=1.0,
                     gamma=1.15, black=0.02, light_gradient=0.3, vignette=0.3,
                     texture=((2, 0.7), (5, 0.7)), blur=True, noise=0.02)

# How strongly each label id's surface is textured (vegetation and grass most, sky least).
TEXTURE_AMPLITUDE = np.full(256, 0.08, dtype=np.float32)
for _ids, _amp in (((ROAD, PARKING, RAIL_TRACK), 0.1), ((SIDEWALK, GROUND), 0.1),
                   ((BUILDING, WALL), 0.12), ((VEGETATION,), 0.35), ((TERRAIN,), 0.3),
                   ((SKY,), 0.02), ((CAR, TRUCK, BUS, TRAIN, EGO_VEHICLE), 0.04),
                   ((POLE, LIGHT, SIGN), 0.04)):
    TEXTURE_AMPLITUDE[list(_ids)] = _amp


def soft_focus(img):
    """Separable [1, 2, 1] / 4 blur (a Gaussian of sigma ~0.7 px), edges replicated; cheap."""
    for axis in (0, 1):
        out = img * np.float32(0.5)
        a, b = [slice(None)] * 2, [slice(None)] * 2
        a[axis], b[axis] = slice(1, None), slice(None, -1)
        out[tuple(a)] += np.float32(0.25) * img[tuple(b)]       # neighbour before
        out[tuple(b)] += np.float32(0.25) * img[tuple(a)]       # neighbour after
        for edge in (0, -1):
            e = [slice(None)] * 2
            e[axis] = edge
            out[tuple(e)] += np.float32(0.25) * img[tuple(e)]
        img = out
    return img


def render_style(cv, style, rng):
    """Base colours + label map -> uint8 photo in the domain's style (the whole domain gap)."""
    h, w = cv.label.shape
    # Surface texture: class-dependent strength, domain-dependent grain.
    tex = sum(a * value_noise(rng, h, w, cell) for cell, a in style.texture)
    shading = 1.0 + TEXTURE_AMPLITUDE[cv.label] * tex
    # Illumination: a directional gradient (sun side / shade side) and vignetting.
    ys = np.linspace(-1, 1, h, dtype=np.float32)[:, None]
    xs = np.linspace(-1, 1, w, dtype=np.float32)[None, :]
    angle = rng.uniform(0, 2 * np.pi)
    strength = style.light_gradient * rng.uniform(0.6, 1.2) / 1.4
    light = (1.0 + strength * (np.cos(angle) * xs + np.sin(angle) * ys)) * \
        (1.0 - style.vignette * (xs ** 2 + ys ** 2) / 2)
    shading *= light * (style.exposure * rng.uniform(0.9, 1.1))
    img = cv.color * shading[..., None]
    # Colour: saturation, cast, contrast, gamma, black level (each jittered per frame).
    lum = (img @ np.array([0.299, 0.587, 0.114], dtype=np.float32))[..., None]
    img = lum + style.saturation * rng.uniform(0.9, 1.1) * (img - lum)
    gain = np.asarray(style.gain, dtype=np.float32) * rng.uniform(0.96, 1.04, 3)
    contrast = style.contrast * rng.uniform(0.93, 1.07)
    img = (img * (gain * contrast).astype(np.float32)) + np.float32(0.5 - 0.5 * contrast)
    img = np.clip(img, 0.0, 1.0, out=img) ** np.float32(style.gamma * rng.uniform(0.92, 1.08))
    img = np.float32(style.black) + np.float32(1.0 - style.black) * img
    # Sensor: noise, then optical blur and demosaicing, which also correlate the noise.
    if style.noise > 0:
        img += style.noise * rng.standard_normal(img.shape, dtype=np.float32)
    if style.blur:
        img = soft_focus(img)
    return (np.clip(img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
