"""Synthetic demo domain pair: procedural street scenes in a GTA5-like and a Cityscapes-like style.

    python -m core.demo                     # make data/demo (once) and print what it holds
    python -m core.demo --root /tmp/demo --seed 3 --force

Why it exists: a new user should see the whole story of the project in minutes on a CPU: a
network trained on the source loses on the target, and the adaptation methods win some of it
back. So the gap is of the kind those methods act on (docs: shared reference `demo.md`):

- ONE scene distribution (layout, object shapes, per-class base colours) for both domains;
  the domains differ in their global appearance (`render_style`: colour cast, saturation,
  contrast and gamma, an illumination gradient and vignette, blur, sensor noise, texture
  grain). A per-class colour permutation would be a gap no global method could close, so
  there is none.
- A moderate label-distribution shift (`SOURCE_PRIOR` / `TARGET_PRIOR`: more parked cars and
  fewer people in the target), which is what output-space alignment reacts to.
- The real folder layouts, so the real loaders read it: GTA5 `images/00001.png` with palette
  labels whose index is the Cityscapes label id, and Cityscapes `leftImg8bit` / `gtFine`
  `_labelIds.png` files.

Geometry, in one paragraph: a pinhole camera at height 1 (one unit is about 1.5 m) looks
along a straight street. A ground point at depth z projects to row `y_h + f / z` and a lateral
offset X to column `x_v + X * f / z`, so at depth z one world unit is `q = f / z` pixels.
Every drawing function works from (X, z, size in units) and that single scale `q`; facades
and the ground are drawn per pixel from the inverse mapping, objects as small sprites painted
far to near. Label ids and base colours are always painted with the same mask, so the label
is exact by construction.

Each frame's RNG is `np.random.default_rng([seed, stream, index])` with stream 0 = source,
1 = target train, 2 = target val: a frame does not depend on the counts or generation order.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from core.labels import (
    CLASS_NAMES,
    IGNORE_INDEX,
    NUM_CLASSES,
    PALETTE,
    TRAIN_LABEL_IDS,
    VOID_COLORS,
    ids_to_trainids,
)

FORMAT_VERSION = 1  # bump whenever the generated pictures change, so ensure_demo regenerates
DEMO_ROOT = Path(__file__).resolve().parent.parent / "data" / "demo"

SOURCE_SIZE = (288, 512)  # H x W: GTA-like 16:9
TARGET_SIZE = (256, 512)  # Cityscapes 2:1
SOURCE_VAL_FRACTION = 0.2
TARGET_TRAIN_CITIES = ("demotown", "demoville")
TARGET_VAL_CITIES = ("democity",)
STREAM_SOURCE, STREAM_TARGET_TRAIN, STREAM_TARGET_VAL = 0, 1, 2

# Cityscapes label ids, looked up by class name so they cannot drift from core.labels.
LABEL_ID = dict(zip(CLASS_NAMES, TRAIN_LABEL_IDS, strict=True))
ROAD, SIDEWALK, BUILDING = LABEL_ID["road"], LABEL_ID["sidewalk"], LABEL_ID["building"]
WALL, FENCE, POLE = LABEL_ID["wall"], LABEL_ID["fence"], LABEL_ID["pole"]
LIGHT, SIGN = LABEL_ID["traffic light"], LABEL_ID["traffic sign"]
VEGETATION, TERRAIN, SKY = LABEL_ID["vegetation"], LABEL_ID["terrain"], LABEL_ID["sky"]
PERSON, RIDER, CAR = LABEL_ID["person"], LABEL_ID["rider"], LABEL_ID["car"]
TRUCK, BUS, TRAIN = LABEL_ID["truck"], LABEL_ID["bus"], LABEL_ID["train"]
MOTORCYCLE, BICYCLE = LABEL_ID["motorcycle"], LABEL_ID["bicycle"]
# Void ids that real frames contain too; they map to ignore (255) in train ids.
EGO_VEHICLE, STATIC, GROUND, PARKING, RAIL_TRACK = 1, 4, 6, 9, 10


# ---------------------------------------------------------------------------------------------
# Per-domain scene statistics: the label-distribution shift lives here and only here.
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ScenePrior:
    """Expected object counts per frame; the shapes and colours are shared by both domains."""
    moving_cars: float      # Poisson mean, cars in the lanes
    parked_cars: float      # Poisson mean per side, cars along the kerb
    persons: float          # Poisson mean, pedestrians
    riders: float           # Poisson mean, cyclists and motorcyclists
    parked_bikes: float     # Poisson mean, bicycles standing on the pavement
    trees: float            # Poisson mean per side
    p_truck: float          # probability of a truck in the frame
    p_bus: float
    p_tram: float
    p_parking_strip: float  # probability per side that the verge is a parking strip (void)


# Target: more (parked) cars and fewer people, as in Cityscapes compared with GTA5.
SOURCE_PRIOR = ScenePrior(moving_cars=2.5, parked_cars=1.0, persons=5.0, riders=1.4,
                          parked_bikes=0.6, trees=1.5, p_truck=0.45, p_bus=0.35, p_tram=0.15,
                          p_parking_strip=0.1)
TARGET_PRIOR = ScenePrior(moving_cars=3.0, parked_cars=2.5, persons=2.5, riders=0.9,
                          parked_bikes=0.8, trees=2.0, p_truck=0.3, p_bus=0.25, p_tram=0.15,
                          p_parking_strip=0.25)


# ---------------------------------------------------------------------------------------------
# Per-class base colours (sRGB 0..255), shared by both domains; each instance jitters them.
# Realistic rather than the Cityscapes palette: several classes are grey, so the network has
# to use shape and context, not only colour.
# ---------------------------------------------------------------------------------------------

ASPHALT = (92, 90, 94)
LANE_PAINT = (222, 222, 212)
PAVING = (156, 148, 140)
KERB = (178, 174, 168)
GRASS = (118, 138, 62)
BARE_GROUND = (128, 112, 92)
FACADES = ((160, 122, 98), (188, 176, 152), (124, 124, 130), (180, 154, 120), (142, 88, 72),
           (204, 200, 190), (150, 160, 170))
GLASS = (58, 68, 84)
CONCRETE = (168, 162, 150)
FENCE_METAL = (96, 100, 92)
METAL = (112, 112, 118)
LIGHT_HOUSING = (38, 40, 38)
FOLIAGE = ((64, 98, 38), (78, 112, 44), (52, 84, 40), (92, 118, 52))
BARK = (74, 62, 48)
SKY_ZENITH, SKY_HORIZON, CLOUD = (92, 140, 204), (186, 204, 222), (236, 238, 242)
SKIN = ((224, 182, 150), (190, 140, 110), (140, 96, 70), (96, 66, 48))
CLOTHES = ((40, 44, 60), (150, 30, 34), (40, 70, 130), (200, 200, 196), (70, 90, 60),
           (30, 30, 32), (180, 140, 60), (120, 70, 110))
TROUSERS = ((36, 40, 56), (28, 28, 30), (90, 84, 76), (60, 70, 100))
CAR_PAINT = ((168, 24, 28), (34, 44, 120), (222, 222, 224), (32, 32, 34), (150, 152, 158),
             (62, 84, 64), (120, 110, 96), (200, 190, 160))
TRUCK_PAINT = ((206, 206, 202), (186, 70, 36), (44, 64, 124), (220, 180, 40))
BUS_PAINT = ((214, 184, 40), (34, 118, 70), (186, 36, 36), (226, 228, 228))
TRAM_PAINT = ((226, 226, 216), (196, 40, 44))
BIKE_PAINT = ((40, 40, 48), (170, 30, 30), (30, 60, 140), (200, 200, 200))
MOTO_PAINT = ((30, 30, 34), (180, 30, 30), (40, 60, 150), (220, 130, 30))
SIGN_RED, SIGN_BLUE, SIGN_WHITE, SIGN_YELLOW = (196, 30, 34), (30, 72, 168), (236, 236, 232), \
    (226, 186, 34)
STATIC_PAINT = ((60, 80, 60), (90, 90, 96), (150, 110, 60))


def rgb(color):
    """0..255 colour -> float32 RGB in 0..1 (the canvas works in floats)."""
    return np.asarray(color, dtype=np.float32) / 255.0


def jitter(rng, color, amount=0.08):
    """A base colour with a per-instance brightness and slight per-channel variation."""
    c = rgb(color) * (1.0 + amount * rng.standard_normal())
    c = c + 0.5 * amount * rng.standard_normal(3).astype(np.float32) * c
    return np.clip(c, 0.0, 1.0).astype(np.float32)


def pick(rng, options):
    return options[int(rng.integers(len(options)))]


# ---------------------------------------------------------------------------------------------
# Canvas and shape primitives. Each primitive returns (window, mask) over a clipped bounding
# box; `Canvas.fill` paints the label id and the colour through the same mask.
# ---------------------------------------------------------------------------------------------

class Canvas:
    """Label ids and linear base colours of one frame, painted together so they always agree."""

    def __init__(self, h, w):
        self.h, self.w = h, w
        self.label = np.zeros((h, w), dtype=np.uint8)            # 0 = unlabelled (void)
        self.color = np.zeros((h, w, 3), dtype=np.float32)

    def window(self, x0, y0, x1, y1):
        """Pixels whose centres may lie in [x0, x1) x [y0, y1): slices and centre coordinates."""
        i0, i1 = max(int(np.floor(y0)), 0), min(int(np.ceil(y1)) + 1, self.h)
        j0, j1 = max(int(np.floor(x0)), 0), min(int(np.ceil(x1)) + 1, self.w)
        if i0 >= i1 or j0 >= j1:
            return None
        ys = (np.arange(i0, i1, dtype=np.float32) + 0.5)[:, None]
        xs = (np.arange(j0, j1, dtype=np.float32) + 0.5)[None, :]
        return (slice(i0, i1), slice(j0, j1)), ys, xs

    def fill(self, shape, label_id, color):
        """Paint a shape: colour is one RGB triple or an array over the shape's window."""
        if shape is None:
            return
        (sl, _, _), mask = shape
        self.label[sl][mask] = label_id
        self.color[sl][mask] = np.broadcast_to(color, mask.shape + (3,))[mask]

    def shade(self, shape, factor):
        """Scale the colour under a shape (shadows, highlights); the label is unchanged."""
        if shape is None:
            return
        (sl, _, _), mask = shape
        self.color[sl][mask] *= factor


def _shape(win, mask):
    return None if win is None or not mask.any() else (win, mask)


def rect(cv, x0, y0, x1, y1):
    win = cv.window(x0, y0, x1, y1)
    if win is None:
        return None
    _, ys, xs = win
    return _shape(win, (ys >= y0) & (ys < y1) & (xs >= x0) & (xs < x1))


def ellipse(cv, cx, cy, rx, ry):
    win = cv.window(cx - rx, cy - ry, cx + rx, cy + ry)
    if win is None or rx <= 0 or ry <= 0:
        return None
    _, ys, xs = win
    return _shape(win, ((xs - cx) / rx) ** 2 + ((ys - cy) / ry) ** 2 <= 1.0)


def ring(cv, cx, cy, r_out, r_in):
    win = cv.window(cx - r_out, cy - r_out, cx + r_out, cy + r_out)
    if win is None or r_out <= 0:
        return None
    _, ys, xs = win
    d2 = (xs - cx) ** 2 + (ys - cy) ** 2
    return _shape(win, (d2 <= r_out ** 2) & (d2 >= r_in ** 2))


def segment(cv, x0, y0, x1, y1, width):
    """Thick line (capsule) from (x0, y0) to (x1, y1); limbs, frames, poles, arms."""
    r = max(width, 0.5) / 2.0  # at least one pixel wide, so thin parts stay visible nearby
    win = cv.window(min(x0, x1) - r, min(y0, y1) - r, max(x0, x1) + r, max(y0, y1) + r)
    if win is None:
        return None
    _, ys, xs = win
    dx, dy = x1 - x0, y1 - y0
    t = np.clip(((xs - x0) * dx + (ys - y0) * dy) / max(dx * dx + dy * dy, 1e-9), 0.0, 1.0)
    return _shape(win, (xs - x0 - t * dx) ** 2 + (ys - y0 - t * dy) ** 2 <= r * r)


def polygon(cv, points):
    """Convex polygon, vertices in either winding order."""
    p = np.asarray(points, dtype=np.float32)
    win = cv.window(p[:, 0].min(), p[:, 1].min(), p[:, 0].max(), p[:, 1].max())
    if win is None:
        return None
    _, ys, xs = win
    nxt = np.roll(p, -1, axis=0)
    cross = [(b[0] - a[0]) * (ys - a[1]) - (b[1] - a[1]) * (xs - a[0])
             for a, b in zip(p, nxt, strict=True)]
    inside = np.all([c >= 0 for c in cross], axis=0) | np.all([c <= 0 for c in cross], axis=0)
    return _shape(win, inside)


# ---------------------------------------------------------------------------------------------
# Scene layout: everything a frame shows, sampled before anything is drawn.
# ---------------------------------------------------------------------------------------------

@dataclass
class Side:
    """One side of the street: kerb line, pavement and the facades along it, in depth segments."""
    sign: float               # -1 left, +1 right
    kerb: float               # lateral position of the kerb (road edge), signed
    pavement: float           # pavement width (units)
    verge: float              # strip between pavement and facades (units)
    verge_label: int          # TERRAIN, GROUND or PARKING
    z_edges: np.ndarray       # depth boundaries of the facade segments, ascending
    kinds: list               # per segment: 'building', 'trees', 'open'
    heights: np.ndarray       # per segment height (units)
    colors: np.ndarray        # per segment base colour
    window_pitch: np.ndarray  # per segment window spacing along the street (units)
    front: list               # per segment: None, 'wall', 'fence' or 'hedge' in front
    front_heights: np.ndarray
    front_colors: np.ndarray

    @property
    def facade(self):
        return self.kerb + self.sign * (self.pavement + self.verge)


@dataclass
class Thing:
    """An object standing on the ground at lateral X and depth z, drawn by DRAWERS[kind]."""
    kind: str
    X: float
    z: float
    params: dict = field(default_factory=dict)


@dataclass
class Scene:
    """Everything one frame shows, in world units; drawing only reads it."""
    h: int
    w: int
    horizon: float            # y_h, row of the horizon
    x_v: float                # column of the vanishing point
    f: float                  # focal length in pixels
    lane_width: float
    lane_lines: list          # lateral positions of lane markings (dashed)
    left: Side
    right: Side
    z_end: float              # where the street ends (cross facade) or fades out
    cross: list | None        # blocks across the street end: (X0, X1, height, colour, kind)
    crosswalk: float | None   # depth of a zebra crossing
    rails: bool               # tram rails in the middle of the road
    hood: float               # ego-vehicle bonnet height as a fraction of H (0 = none)
    hood_color: np.ndarray
    things: list

    def q(self, z):
        return self.f / z


def sample_side(rng, sign, kerb, prior, z_end):
    pavement = rng.uniform(1.2, 2.6)
    verge = rng.choice([0.0, rng.uniform(0.5, 2.5)], p=[0.45, 0.55])
    verge_label = PARKING if rng.random() < prior.p_parking_strip else (
        TERRAIN if rng.random() < 0.75 else GROUND)
    edges = [0.0]
    while edges[-1] < z_end:
        edges.append(edges[-1] + rng.uniform(4.0, 22.0))
    n = len(edges) - 1
    kinds = list(rng.choice(["building", "trees", "open"], size=n, p=[0.62, 0.26, 0.12]))
    heights = np.array([rng.uniform(3.0, 14.0) if k == "building" else
                        rng.uniform(2.5, 6.0) if k == "trees" else 0.0 for k in kinds])
    colors = np.stack([jitter(rng, pick(rng, FACADES)) if k == "building" else
                       jitter(rng, pick(rng, FOLIAGE), 0.12) for k in kinds])
    front = list(rng.choice(np.array([None, "wall", "fence", "hedge"], dtype=object), size=n,
                            p=[0.5, 0.2, 0.2, 0.1]))
    front_heights = rng.uniform(0.5, 1.6, size=n)
    front_colors = np.stack([jitter(rng, CONCRETE if k == "wall" else FENCE_METAL if k == "fence"
                                    else pick(rng, FOLIAGE)) for k in front])
    return Side(sign=sign, kerb=kerb, pavement=pavement, verge=verge, verge_label=verge_label,
                z_edges=np.array(edges), kinds=kinds, heights=heights, colors=colors,
                window_pitch=rng.uniform(1.4, 2.6, size=n), front=front,
                front_heights=front_heights, front_colors=front_colors)


def sample_scene(rng, prior, h, w, hood_range=(0.05, 0.1), hood_colors=CAR_PAINT):
    horizon = h * rng.uniform(0.36, 0.46)
    f = w * rng.uniform(0.85, 1.1)
    x_v = w * (0.5 + rng.uniform(-0.08, 0.08))
    lane_width = rng.uniform(2.0, 2.5)
    n_lanes = int(rng.choice([2, 3, 4], p=[0.5, 0.3, 0.2]))
    ego_lane = int(rng.integers(n_lanes // 2, n_lanes))      # right-hand traffic
    left_kerb = -(ego_lane + 0.5 + rng.uniform(-0.15, 0.15)) * lane_width
    right_kerb = left_kerb + n_lanes * lane_width
    lane_lines = [left_kerb + k * lane_width for k in range(1, n_lanes)]
    z_end = float(rng.uniform(35.0, 110.0))
    left = sample_side(rng, -1.0, left_kerb, prior, z_end)
    right = sample_side(rng, 1.0, right_kerb, prior, z_end)

    cross = None
    if rng.random() < 0.6:  # the street ends at a row of buildings or trees across it
        cross, x = [], left.facade - 6.0
        while x < right.facade + 6.0:
            width = rng.uniform(3.0, 9.0)
            kind = "trees" if rng.random() < 0.25 else "building"
            height = rng.uniform(3.0, 12.0) if kind == "building" else rng.uniform(2.0, 5.0)
            color = jitter(rng, pick(rng, FACADES if kind == "building" else FOLIAGE))
            cross.append((x, x + width, height, color, kind))
            x += width

    scene = Scene(h=h, w=w, horizon=horizon, x_v=x_v, f=f, lane_width=lane_width,
                  lane_lines=lane_lines, left=left, right=right, z_end=z_end, cross=cross,
                  crosswalk=float(rng.uniform(8.0, 30.0)) if rng.random() < 0.3 else None,
                  rails=rng.random() < prior.p_tram, hood=rng.uniform(*hood_range),
                  hood_color=jitter(rng, pick(rng, hood_colors), 0.05), things=[])
    scene.things = sample_things(rng, scene, prior)
    return scene


def _depth(rng, z_near, z_far):
    """Log-uniform depth: objects spread evenly over image rows rather than bunching far."""
    return float(np.exp(rng.uniform(np.log(z_near), np.log(max(z_far, z_near + 1.0)))))


def sample_things(rng, sc, prior):
    z_near = 1.05 * sc.f / (sc.h - sc.horizon)   # depth of the bottom image row
    z_far = min(sc.z_end, 70.0)
    things = []
    lanes = [sc.left.kerb + (k + 0.5) * sc.lane_width
             for k in range(round((sc.right.kerb - sc.left.kerb) / sc.lane_width))]

    def in_lane():
        return pick(rng, lanes) + rng.uniform(-0.25, 0.25)

    def on_pavement(side):
        return side.kerb + side.sign * rng.uniform(0.4, max(side.pavement - 0.3, 0.5))

    # Vehicles in the lanes; oncoming traffic (left of the ego lane) shows its front.
    for _ in range(rng.poisson(prior.moving_cars)):
        X = in_lane()
        things.append(Thing("car", X, _depth(rng, z_near + 1.5, z_far), car_params(rng, X)))
    for side in (sc.left, sc.right):
        for _ in range(rng.poisson(prior.parked_cars)):
            X = side.kerb - side.sign * rng.uniform(0.7, 0.9)
            things.append(Thing("car", X, _depth(rng, z_near + 1.0, z_far), car_params(rng, X)))
    if rng.random() < prior.p_truck:
        things.append(Thing("truck", in_lane(), _depth(rng, z_near + 3.0, z_far),
                            {"color": jitter(rng, pick(rng, TRUCK_PAINT)),
                             "height": rng.uniform(2.0, 2.6)}))
    if rng.random() < prior.p_bus:
        things.append(Thing("bus", in_lane(), _depth(rng, z_near + 3.0, z_far),
                            {"color": jitter(rng, pick(rng, BUS_PAINT)),
                             "height": rng.uniform(2.0, 2.3)}))
    if sc.rails:
        things.append(Thing("tram", (sc.left.kerb + sc.right.kerb) / 2,
                            _depth(rng, z_near + 4.0, z_far),
                            {"color": jitter(rng, pick(rng, TRAM_PAINT), 0.05)}))

    # People: pedestrians on the pavements (some crossing), riders on the road edge.
    for _ in range(rng.poisson(prior.persons)):
        if sc.crosswalk is not None and rng.random() < 0.3:
            X, z = rng.uniform(sc.left.kerb, sc.right.kerb), sc.crosswalk + rng.uniform(0.3, 1.5)
        else:
            side = sc.left if rng.random() < 0.5 else sc.right
            X, z = on_pavement(side), _depth(rng, z_near, z_far)
        things.append(Thing("person", X, z, person_params(rng)))
    for _ in range(rng.poisson(prior.riders)):
        side = sc.left if rng.random() < 0.3 else sc.right
        X = side.kerb - side.sign * rng.uniform(0.5, 1.2)
        vehicle = "bicycle" if rng.random() < 0.6 else "motorcycle"
        things.append(Thing(vehicle, X, _depth(rng, z_near + 1.0, z_far),
                            bike_params(rng, vehicle, ridden=True)))
    for _ in range(rng.poisson(prior.parked_bikes)):
        side = sc.left if rng.random() < 0.5 else sc.right
        things.append(Thing("bicycle", on_pavement(side), _depth(rng, z_near, z_far),
                            bike_params(rng, "bicycle", ridden=False)))

    # Street furniture at regular intervals along both kerbs; trees and clutter on pavements.
    for side in (sc.left, sc.right):
        z = rng.uniform(z_near, z_near + 8.0)
        while z < z_far:
            kind = str(rng.choice(["lamp", "sign", "light", "pole"], p=[0.35, 0.3, 0.2, 0.15]))
            things.append(Thing(kind, side.kerb + side.sign * rng.uniform(0.25, 0.45), z,
                                furniture_params(rng, kind, side.sign)))
            z += rng.uniform(6.0, 16.0)
        for _ in range(rng.poisson(prior.trees)):
            X = side.kerb + side.sign * (side.pavement + side.verge * rng.uniform(0.2, 0.8)
                                         if side.verge > 0.8 else rng.uniform(0.7, 1.1))
            things.append(Thing("tree", X, _depth(rng, z_near + 1.0, z_far), {
                "trunk": rng.uniform(1.6, 2.8), "crown": rng.uniform(1.0, 1.8),
                "color": jitter(rng, pick(rng, FOLIAGE), 0.1),
                "blobs": rng.uniform(-1.0, 1.0, size=(6, 3))}))
        for _ in range(rng.poisson(0.8)):
            things.append(Thing("clutter", on_pavement(side), _depth(rng, z_near, z_far),
                                {"color": jitter(rng, pick(rng, STATIC_PAINT)),
                                 "size": rng.uniform(0.35, 0.6)}))
    if sc.crosswalk is not None:  # a traffic light hanging over the road at the crossing
        things.append(Thing("light", sc.right.kerb + 0.35, sc.crosswalk - 0.5,
                            furniture_params(rng, "gantry", 1.0)))
    return things


def car_params(rng, X):
    return {"color": jitter(rng, pick(rng, CAR_PAINT), 0.06), "width": rng.uniform(1.15, 1.35),
            "height": rng.uniform(0.9, 1.25), "oncoming": X < -0.6}


def person_params(rng):
    return {"height": rng.uniform(1.0, 1.3), "top": jitter(rng, pick(rng, CLOTHES)),
            "legs": jitter(rng, pick(rng, TROUSERS)), "skin": jitter(rng, pick(rng, SKIN), 0.04),
            "stride": rng.uniform(-0.15, 0.15), "width": rng.uniform(0.85, 1.2)}


def bike_params(rng, vehicle, ridden):
    paint = BIKE_PAINT if vehicle == "bicycle" else MOTO_PAINT
    return {"color": jitter(rng, pick(rng, paint)), "facing": float(rng.choice([-1.0, 1.0])),
            "rider": person_params(rng) if ridden else None}


def furniture_params(rng, kind, sign):
    return {"kind": kind, "toward_road": -sign, "height": rng.uniform(2.6, 4.8),
            "sign": str(rng.choice(["round_red", "round_blue", "triangle", "rect", "back"])),
            "lit": int(rng.integers(3)), "facing": rng.random() < 0.7}


# ---------------------------------------------------------------------------------------------
# Drawing: sky, ground, facades, then objects far to near, then the bonnet.
# ---------------------------------------------------------------------------------------------

def value_noise(rng, h, w, cell):
    """Smooth random field (unit variance) with features about `cell` pixels across."""
    if cell <= 1:
        return rng.standard_normal((h, w)).astype(np.float32)
    gh, gw = int(np.ceil(h / cell)) + 2, int(np.ceil(w / cell)) + 2
    grid = ndimage.gaussian_filter(rng.standard_normal((gh, gw)).astype(np.float32), 0.7)
    grid /= grid.std() + 1e-6
    yi, xi = (np.arange(h) + 0.5) / cell, (np.arange(w) + 0.5) / cell
    y0, x0 = yi.astype(int), xi.astype(int)
    fy, fx = (yi - y0)[:, None].astype(np.float32), (xi - x0)[None, :].astype(np.float32)
    top = grid[y0][:, x0] * (1 - fx) + grid[y0][:, x0 + 1] * fx
    bottom = grid[y0 + 1][:, x0] * (1 - fx) + grid[y0 + 1][:, x0 + 1] * fx
    return top * (1 - fy) + bottom * fy


def draw_sky(cv, sc, rng):
    """Vertical gradient, pale at the horizon, with soft clouds, down to the horizon row."""
    n = min(int(sc.horizon) + 2, cv.h)   # the ground covers everything below
    t = np.clip(np.arange(n, dtype=np.float32) / max(sc.horizon, 1.0), 0, 1)[:, None, None]
    color = jitter(rng, SKY_ZENITH, 0.06) * (1 - t) + jitter(rng, SKY_HORIZON, 0.04) * t
    cover = rng.uniform(-0.5, 1.5)  # how cloudy
    clouds = np.clip(value_noise(rng, n, cv.w, 24) * 0.6 + cover - 1.0, 0, 1)[..., None]
    cv.label[:n] = SKY
    cv.color[:n] = color * (1 - clouds) + rgb(CLOUD) * clouds


def ground_coordinates(sc):
    """Rows below the horizon, lateral X of each of their pixels and depth z of each row."""
    rows = np.arange(int(np.floor(sc.horizon)) + 1, sc.h)
    q = (rows + 0.5 - sc.horizon).astype(np.float32)[:, None]
    X = ((np.arange(sc.w, dtype=np.float32) + 0.5)[None, :] - sc.x_v) / q
    return rows, X, sc.f / q


# Ground materials: each pixel below the horizon gets one, then label and colour by lookup.
(M_GRASS, M_VERGE_LEFT, M_VERGE_RIGHT, M_PAVING, M_JOINT, M_KERB, M_ROAD, M_PAINT, M_RAILBED,
 M_STEEL) = range(10)


def draw_ground(cv, sc, rng):
    """Road with markings, kerbs, paved pavements, verges: a material per pixel from (X, z)."""
    rows, X, z = ground_coordinates(sc)              # X per pixel, z per row
    mat = np.full(X.shape, M_GRASS, dtype=np.uint8)
    labels = np.zeros(10, dtype=np.uint8)
    colors = np.zeros((10, 3), dtype=np.float32)
    labels[[M_GRASS, M_PAVING, M_JOINT, M_KERB, M_ROAD, M_PAINT, M_RAILBED, M_STEEL]] = (
        TERRAIN, SIDEWALK, SIDEWALK, SIDEWALK, ROAD, ROAD, RAIL_TRACK, RAIL_TRACK)
    colors[M_GRASS] = jitter(rng, GRASS, 0.1)
    colors[M_PAVING] = jitter(rng, PAVING, 0.08)
    colors[M_JOINT] = colors[M_PAVING] * 0.85
    colors[M_KERB] = jitter(rng, KERB, 0.05)
    colors[M_ROAD] = jitter(rng, ASPHALT, 0.08)
    colors[M_PAINT] = jitter(rng, LANE_PAINT, 0.05)
    colors[M_RAILBED] = colors[M_ROAD] * 0.85
    colors[M_STEEL] = rgb(METAL) * 1.3

    for side, m_verge in ((sc.left, M_VERGE_LEFT), (sc.right, M_VERGE_RIGHT)):
        labels[m_verge] = side.verge_label
        colors[m_verge] = jitter(rng, {TERRAIN: GRASS, GROUND: BARE_GROUND,
                                       PARKING: ASPHALT}[side.verge_label], 0.1)
        d = (X - side.kerb) * side.sign      # distance outward from this kerb
        verge = (d >= side.pavement) & (d < side.pavement + side.verge)
        mat[verge] = m_verge
        # Building segments bring the pavement up to the facade (no verge in front of them).
        seg = np.clip(np.searchsorted(side.z_edges, z) - 1, 0, len(side.kinds) - 1)
        is_building = np.array([k == "building" for k in side.kinds])[seg]     # per row
        pave = (d > 0) & ((d < side.pavement) | (verge & is_building))
        joints = (np.mod(z, 0.7) < 0.06) | (np.mod(d, 0.7) < 0.0125 * z)
        mat[pave] = np.where(joints, M_JOINT, M_PAVING)[pave]
        mat[(d > 0) & (d < 0.12)] = M_KERB   # the kerb stone is sidewalk

    road = (X >= sc.left.kerb) & (X <= sc.right.kerb)
    mat[road] = M_ROAD
    # Markings are road too (as in Cityscapes); their width is in world units.
    paint = np.zeros(X.shape, dtype=bool)
    dashes = np.mod(z, 4.0) < 2.0
    for x_line in sc.lane_lines:
        paint |= (np.abs(X - x_line) < 0.06) & dashes
    paint |= np.abs(X - (sc.left.kerb + 0.25)) < 0.05
    paint |= np.abs(X - (sc.right.kerb - 0.25)) < 0.05
    if sc.crosswalk is not None:
        paint |= (z > sc.crosswalk) & (z < sc.crosswalk + 2.0) & (np.mod(X, 0.9) < 0.45)
    mat[paint & road] = M_PAINT
    if sc.rails:  # a tram track in the middle of the road: void 'rail track'
        off = np.abs(X - (sc.left.kerb + sc.right.kerb) / 2)
        mat[road & (off < 0.6)] = M_RAILBED
        mat[road & (np.abs(off - 0.45) < 0.04)] = M_STEEL
    cv.label[rows] = labels[mat]
    cv.color[rows] = colors[mat]


# Label id of each facade segment kind ('open' and no front layer draw nothing).
FACADE_LABEL = {"building": BUILDING, "trees": VEGETATION, "hedge": VEGETATION, "wall": WALL,
                "fence": FENCE, "open": 0, None: 0}


def draw_facades(cv, sc, rng, side, layer):
    """Buildings, tree lines, walls, fences along one side, as vertical planes along the street.

    The plane's depth follows from the column, so each column is one vertical run of pixels;
    windows are a grid in (depth along the street, height) on the plane. Only the pixels the
    plane covers are touched.
    """
    front = layer == "front"
    X_plane = side.facade - side.sign * (0.15 if front else 0.0)
    xs = np.arange(cv.w, dtype=np.float32) + 0.5
    q = (xs - sc.x_v) / X_plane                       # pixels per unit at each column's depth
    cols = np.flatnonzero(q > sc.q(sc.z_end))         # columns showing this side, nearer than z_end
    if cols.size == 0:
        return
    q = q[cols]
    z = sc.f / q
    seg = np.clip(np.searchsorted(side.z_edges, z) - 1, 0, len(side.kinds) - 1)
    kinds = side.front if front else side.kinds
    seg_label = np.array([FACADE_LABEL[k] for k in kinds], dtype=np.uint8)
    height = (side.front_heights if front else side.heights)[seg].astype(np.float32)
    ragged = seg_label[seg] == VEGETATION                 # tree lines and hedges: ragged tops
    height[ragged] *= 1.0 + 0.25 * value_noise(rng, 1, cv.w, 6)[0, cols][ragged]
    top = max(int(np.floor((sc.horizon + q * (1 - height)).min())), 0)
    ys = (np.arange(top, cv.h, dtype=np.float32) + 0.5)[:, None]
    v = (sc.horizon + q - ys) / q                      # height above the ground, in units
    rr, cc = np.nonzero((v > 0) & (v < height) & (seg_label[seg] > 0))
    if rr.size == 0:
        return
    s, vv, zz = seg[cc], v[rr, cc], z[cc]
    label = seg_label[s]
    color = (side.front_colors if front else side.colors)[s].copy()
    rows, cols = rr + top, cols[cc]

    building = label == BUILDING
    pitch = side.window_pitch[s]
    glass = building & (np.mod(zz, pitch) < 0.55 * pitch) & (np.mod(vv, 1.9) > 0.7) & \
        (vv > 1.2) & (vv < height[cc] - 0.6)
    floor_shade = 0.8 + 0.2 * np.mod(np.floor(vv[glass] / 1.9), 3)   # some floors' blinds down
    color[glass] = rgb(GLASS) * floor_shade[:, None]
    # A fence is a see-through mesh: bars in its colour, the background dimmed between them.
    fence = label == FENCE
    bars = (np.mod(zz, 0.35) < 0.12) | (np.abs(vv - height[cc] + 0.05) < 0.05)
    mesh = fence & ~bars
    color[mesh] = 0.55 * cv.color[rows[mesh], cols[mesh]] + 0.45 * color[mesh]
    color[(label == WALL) & (vv > height[cc] - 0.08)] *= 0.8        # coping stones on top
    cv.label[rows, cols] = label
    cv.color[rows, cols] = color


def draw_street_end(cv, sc, rng):
    """Blocks across the street at its far end, or a low skyline at the horizon if it runs on."""
    if sc.cross is None:
        # Distant skyline: a ragged band of buildings and trees hides the vanishing point.
        top = sc.horizon - cv.h * (0.015 + 0.03 * np.abs(value_noise(rng, 1, cv.w, 16)[0]))
        is_tree = value_noise(rng, 1, cv.w, 40)[0] > 0.3
        i0, i1 = int(top.min()), min(int(sc.horizon) + 1, cv.h)
        ys = (np.arange(i0, i1, dtype=np.float32) + 0.5)[:, None]
        band = ys >= top[None, :]
        label = np.where(is_tree, VEGETATION, BUILDING).astype(np.uint8)
        color = np.where(is_tree[:, None], jitter(rng, pick(rng, FOLIAGE)),
                         jitter(rng, pick(rng, FACADES)))
        rr, cc = np.nonzero(band)
        cv.label[rr + i0, cc] = label[cc]
        cv.color[rr + i0, cc] = color[cc]
        return
    q = sc.q(sc.z_end)
    for x0, x1, height, color, kind in sc.cross:
        shape = rect(cv, sc.x_v + x0 * q, sc.horizon + q * (1 - height), sc.x_v + x1 * q,
                     sc.horizon + q)
        if shape is None:
            continue
        (_, ys, xs), _ = shape
        paint = np.broadcast_to(color, shape[1].shape + (3,)).copy()
        if kind == "building":
            v, X = (sc.horizon + q - ys) / q, (xs - sc.x_v) / q
            glass = (np.mod(X, 2.0) < 1.0) & (np.mod(v, 1.9) > 0.7) & (v > 1.2) & \
                (v < height - 0.5)
            paint[glass] = rgb(GLASS)
        cv.fill(shape, BUILDING if kind == "building" else VEGETATION, paint)


def _anchor(sc, t):
    """Scale q (pixels per unit), column and ground row of a thing."""
    q = sc.q(t.z)
    return q, sc.x_v + t.X * q, sc.horizon + q


def draw_car(cv, sc, t):
    """Rear (or, oncoming, front) view: body, cabin with glass, lights, plate, wheels, shadow."""
    q, xc, yb = _anchor(sc, t)
    p = t.params
    w, h = p["width"] * q, p["height"] * q
    cv.shade(ellipse(cv, xc, yb - 0.02 * h, 0.62 * w, 0.1 * h), 0.55)      # contact shadow
    for s in (-1, 1):
        cv.fill(rect(cv, xc + s * 0.42 * w - 0.09 * w, yb - 0.2 * h, xc + s * 0.42 * w + 0.09 * w,
                     yb), CAR, rgb((24, 24, 26)))
    body = p["color"]
    cv.fill(polygon(cv, [(xc - 0.5 * w, yb - 0.14 * h), (xc + 0.5 * w, yb - 0.14 * h),
                         (xc + 0.5 * w, yb - 0.55 * h), (xc + 0.44 * w, yb - 0.64 * h),
                         (xc - 0.44 * w, yb - 0.64 * h), (xc - 0.5 * w, yb - 0.55 * h)]),
            CAR, body)
    cv.fill(polygon(cv, [(xc - 0.44 * w, yb - 0.64 * h), (xc + 0.44 * w, yb - 0.64 * h),
                         (xc + 0.33 * w, yb - h), (xc - 0.33 * w, yb - h)]), CAR, body * 0.92)
    cv.fill(polygon(cv, [(xc - 0.38 * w, yb - 0.67 * h), (xc + 0.38 * w, yb - 0.67 * h),
                         (xc + 0.3 * w, yb - 0.95 * h), (xc - 0.3 * w, yb - 0.95 * h)]),
            CAR, rgb(GLASS))
    cv.fill(rect(cv, xc - 0.5 * w, yb - 0.24 * h, xc + 0.5 * w, yb - 0.14 * h), CAR,
            rgb((40, 40, 42)))                                              # bumper
    lamp = rgb((236, 232, 210)) if p["oncoming"] else rgb((200, 30, 30))
    for s in (-1, 1):
        cv.fill(rect(cv, xc + s * 0.47 * w - 0.08 * w, yb - 0.52 * h,
                     xc + s * 0.47 * w + 0.08 * w, yb - 0.42 * h), CAR, lamp)
    cv.fill(rect(cv, xc - 0.11 * w, yb - 0.38 * h, xc + 0.11 * w, yb - 0.3 * h), CAR,
            rgb((226, 226, 220)))                                           # number plate


def draw_truck(cv, sc, t):
    """Box truck from behind: tall cargo box with door seams, dark chassis, twin wheels."""
    q, xc, yb = _anchor(sc, t)
    w, h = 1.65 * q, t.params["height"] * q
    cv.shade(ellipse(cv, xc, yb, 0.6 * w, 0.06 * h), 0.55)
    cv.fill(rect(cv, xc - 0.46 * w, yb - 0.3 * h, xc + 0.46 * w, yb), TRUCK, rgb((30, 30, 32)))
    box = t.params["color"]
    cv.fill(rect(cv, xc - 0.5 * w, yb - h, xc + 0.5 * w, yb - 0.27 * h), TRUCK, box)
    cv.fill(rect(cv, xc - 0.012 * w, yb - h, xc + 0.012 * w, yb - 0.27 * h), TRUCK, box * 0.6)
    for frac in (0.45, 0.7, 0.95):
        cv.fill(rect(cv, xc - 0.5 * w, yb - frac * h, xc + 0.5 * w, yb - frac * h + 0.02 * h),
                TRUCK, box * 0.75)
    for s in (-1, 1):
        cv.fill(rect(cv, xc + s * 0.42 * w - 0.07 * w, yb - 0.26 * h,
                     xc + s * 0.42 * w + 0.07 * w, yb - 0.21 * h), TRUCK, rgb((200, 30, 30)))


def draw_bus(cv, sc, t):
    """City bus from behind: body, big rear window, route display, engine grille, lights."""
    q, xc, yb = _anchor(sc, t)
    w, h = 1.7 * q, t.params["height"] * q
    body = t.params["color"]
    cv.shade(ellipse(cv, xc, yb, 0.6 * w, 0.06 * h), 0.55)
    cv.fill(polygon(cv, [(xc - 0.5 * w, yb - 0.06 * h), (xc + 0.5 * w, yb - 0.06 * h),
                         (xc + 0.5 * w, yb - 0.95 * h), (xc + 0.44 * w, yb - h),
                         (xc - 0.44 * w, yb - h), (xc - 0.5 * w, yb - 0.95 * h)]), BUS, body)
    cv.fill(rect(cv, xc - 0.42 * w, yb - 0.86 * h, xc + 0.42 * w, yb - 0.5 * h), BUS, rgb(GLASS))
    cv.fill(rect(cv, xc - 0.25 * w, yb - 0.96 * h, xc + 0.25 * w, yb - 0.89 * h), BUS,
            rgb((236, 150, 30)))                                            # route display
    for frac in (0.3, 0.35, 0.4):
        cv.fill(rect(cv, xc - 0.3 * w, yb - frac * h, xc + 0.3 * w, yb - frac * h + 0.02 * h),
                BUS, body * 0.5)
    for s in (-1, 1):
        cv.fill(rect(cv, xc + s * 0.45 * w - 0.04 * w, yb - 0.3 * h,
                     xc + s * 0.45 * w + 0.04 * w, yb - 0.16 * h), BUS, rgb((200, 30, 30)))
    cv.fill(rect(cv, xc - 0.5 * w, yb - 0.1 * h, xc + 0.5 * w, yb), BUS, rgb((32, 32, 34)))


def draw_tram(cv, sc, t):
    """Tram from behind on the rails: tapered body, large windscreen, pantograph on the roof."""
    q, xc, yb = _anchor(sc, t)
    w, h = 1.6 * q, 2.3 * q
    body = t.params["color"]
    cv.fill(segment(cv, xc - 0.3 * w, yb - h - 0.35 * q, xc, yb - h, 0.03 * q), TRAIN,
            rgb(METAL))
    cv.fill(segment(cv, xc + 0.3 * w, yb - h - 0.35 * q, xc, yb - h, 0.03 * q), TRAIN,
            rgb(METAL))
    cv.fill(polygon(cv, [(xc - 0.5 * w, yb - 0.05 * h), (xc + 0.5 * w, yb - 0.05 * h),
                         (xc + 0.5 * w, yb - 0.8 * h), (xc + 0.38 * w, yb - h),
                         (xc - 0.38 * w, yb - h), (xc - 0.5 * w, yb - 0.8 * h)]), TRAIN, body)
    cv.fill(polygon(cv, [(xc - 0.44 * w, yb - 0.45 * h), (xc + 0.44 * w, yb - 0.45 * h),
                         (xc + 0.36 * w, yb - 0.9 * h), (xc - 0.36 * w, yb - 0.9 * h)]),
            TRAIN, rgb(GLASS))
    cv.fill(rect(cv, xc - 0.5 * w, yb - 0.3 * h, xc + 0.5 * w, yb - 0.22 * h), TRAIN,
            rgb((190, 40, 40)) if body[1] > 0.5 else rgb((230, 230, 220)))
    cv.fill(rect(cv, xc - 0.45 * w, yb - 0.06 * h, xc + 0.45 * w, yb), TRAIN, rgb((40, 40, 40)))


def draw_figure(cv, x, y_feet, q, p, label_id, seated=None):
    """A person (standing, walking) or a rider (seated: (hip, pedal) points in pixels)."""
    h, wd = p["height"] * q, p["width"]
    skin, top, legs = p["skin"], p["top"], p["legs"]
    if seated is None:
        hip = (x, y_feet - 0.5 * h)
        for s in (-1, 1):
            cv.fill(segment(cv, hip[0] + s * 0.04 * h * wd, hip[1], hip[0] + s * p["stride"] * h,
                            y_feet, 0.08 * h * wd), label_id, legs)
        shoulder = (x, y_feet - 0.82 * h)
    else:
        hip, pedal = seated
        knee = ((hip[0] + pedal[0]) / 2 + 0.12 * h * np.sign(pedal[0] - x + 1e-6),
                (hip[1] + pedal[1]) / 2 - 0.05 * h)
        cv.fill(segment(cv, *hip, *knee, 0.08 * h * wd), label_id, legs)
        cv.fill(segment(cv, *knee, *pedal, 0.07 * h * wd), label_id, legs)
        shoulder = (x + 0.12 * h * p["lean"], hip[1] - 0.32 * h)
    cv.fill(segment(cv, *shoulder, *hip, 0.2 * h * wd), label_id, top)           # torso
    hand = p.get("hand", (shoulder[0] + 0.05 * h, shoulder[1] + 0.3 * h))
    cv.fill(segment(cv, *shoulder, *hand, 0.06 * h * wd), label_id, top * 0.9)   # arm
    head = (shoulder[0], shoulder[1] - 0.1 * h)
    cv.fill(ellipse(cv, *head, 0.065 * h, 0.075 * h), label_id, skin)
    cv.fill(ellipse(cv, head[0], head[1] - 0.035 * h, 0.068 * h, 0.045 * h), label_id,
            skin * 0.4)                                                              # hair


def draw_person(cv, sc, t):
    q, xc, yb = _anchor(sc, t)
    cv.shade(ellipse(cv, xc, yb, 0.25 * q, 0.04 * q), 0.7)
    draw_figure(cv, xc, yb, q, t.params, PERSON)


def draw_bike(cv, sc, t):
    """Bicycle or motorcycle in side view, with its rider if it has one."""
    q, xc, yb = _anchor(sc, t)
    p, d = t.params, t.params["facing"]
    moto = t.kind == "motorcycle"
    label_id = MOTORCYCLE if moto else BICYCLE
    r = (0.3 if moto else 0.3) * q
    base = 0.55 if moto else 0.48
    rear, front = (xc - d * base * q, yb - r), (xc + d * base * q, yb - r)
    cv.shade(ellipse(cv, xc, yb, 0.8 * q, 0.04 * q), 0.7)
    frame = p["color"]
    for cx, cy in (rear, front):
        # Wheels are labelled as a whole (tyre and the see-through disc), as annotators do.
        disc = ellipse(cv, cx, cy, r, r)
        if disc is not None:
            (sl, _, _), mask = disc
            cv.label[sl][mask] = label_id
            cv.color[sl][mask] = cv.color[sl][mask] * 0.6 + rgb((60, 60, 60)) * 0.4
        cv.fill(ring(cv, cx, cy, r, r * (0.55 if moto else 0.82)), label_id, rgb((22, 22, 24)))
    if moto:
        seat = (xc - d * 0.2 * q, yb - 0.78 * q)
        cv.fill(ellipse(cv, xc, yb - 0.55 * q, 0.5 * q, 0.2 * q), label_id, frame)
        cv.fill(ellipse(cv, xc + d * 0.1 * q, yb - 0.72 * q, 0.22 * q, 0.1 * q), label_id,
                frame * 1.1)                                                         # tank
        cv.fill(segment(cv, *seat, seat[0] - d * 0.3 * q, seat[1], 0.08 * q), label_id,
                rgb((30, 30, 30)))
        bar = (front[0] - d * 0.12 * q, yb - 0.95 * q)
        cv.fill(segment(cv, *front, *bar, 0.05 * q), label_id, rgb(METAL))
        pedal = (xc + d * 0.05 * q, yb - 0.35 * q)
    else:
        crank = (xc - d * 0.05 * q, yb - r)
        seat = (xc - d * 0.2 * q, yb - 0.82 * q)
        bar = (front[0] - d * 0.1 * q, yb - 0.88 * q)
        for a, b in ((rear, crank), (rear, seat), (crank, seat), (crank, bar), (seat, bar),
                     (bar, front)):
            cv.fill(segment(cv, *a, *b, 0.045 * q), label_id, frame)
        pedal = (crank[0] + d * 0.08 * q, crank[1] + 0.12 * q)
    if p["rider"] is not None:
        rider = dict(p["rider"], lean=d, hand=bar)
        draw_figure(cv, seat[0], yb, q, rider, RIDER, seated=(seat, pedal))


def draw_pole_furniture(cv, sc, t):
    """Poles with what hangs on them: street lamps, signs, traffic lights, bare poles."""
    q, xc, yb = _anchor(sc, t)
    p = t.params
    kind, toward = p["kind"], p["toward_road"]
    height = {"lamp": p["height"] + 1.0, "sign": 2.6, "light": 3.2, "pole": p["height"],
              "gantry": 4.8}[kind]
    top = yb - height * q
    cv.fill(segment(cv, xc, yb, xc, top, 0.09 * q), POLE, rgb(METAL))
    if kind == "lamp":
        end = (xc + toward * 1.0 * q, top + 0.1 * q)
        cv.fill(segment(cv, xc, top, *end, 0.06 * q), POLE, rgb(METAL))
        cv.fill(ellipse(cv, *end, 0.22 * q, 0.07 * q), POLE, rgb((200, 200, 190)))
    elif kind == "sign":
        draw_sign(cv, xc, top + 0.3 * q, q, p)
    elif kind in ("light", "gantry"):
        x_box = xc
        if kind == "gantry":   # an arm over the road with the light hanging from its end
            x_box = xc + toward * 3.0 * q
            cv.fill(segment(cv, xc, top, x_box, top, 0.07 * q), POLE, rgb(METAL))
        draw_traffic_light(cv, x_box, top + (0.45 if kind == "gantry" else 0.05) * q, q, p)


def draw_traffic_light(cv, x, y_top, q, p):
    w, h = 0.26 * q, 0.7 * q
    cv.fill(rect(cv, x - w / 2, y_top, x + w / 2, y_top + h), LIGHT, rgb(LIGHT_HOUSING))
    if p["facing"]:
        for k, on in enumerate(((236, 40, 30), (240, 170, 20), (40, 220, 90))):
            c = rgb(on) if k == p["lit"] else rgb(on) * 0.25
            cv.fill(ellipse(cv, x, y_top + (0.18 + 0.31 * k) * h, 0.09 * q, 0.09 * q), LIGHT, c)


def draw_sign(cv, x, y, q, p):
    kind, r = p["sign"], 0.3 * q
    if kind == "round_red":
        cv.fill(ellipse(cv, x, y, r, r), SIGN, rgb(SIGN_RED))
        cv.fill(ellipse(cv, x, y, 0.7 * r, 0.7 * r), SIGN, rgb(SIGN_WHITE))
    elif kind == "round_blue":
        cv.fill(ellipse(cv, x, y, r, r), SIGN, rgb(SIGN_BLUE))
        cv.fill(segment(cv, x - 0.5 * r, y, x + 0.5 * r, y, 0.2 * r), SIGN, rgb(SIGN_WHITE))
    elif kind == "triangle":
        cv.fill(polygon(cv, [(x - r, y + 0.8 * r), (x + r, y + 0.8 * r), (x, y - r)]), SIGN,
                rgb(SIGN_RED))
        cv.fill(polygon(cv, [(x - 0.6 * r, y + 0.55 * r), (x + 0.6 * r, y + 0.55 * r),
                             (x, y - 0.5 * r)]), SIGN, rgb(SIGN_WHITE))
    elif kind == "rect":
        cv.fill(rect(cv, x - 1.2 * r, y - 0.8 * r, x + 1.2 * r, y + 0.8 * r), SIGN,
                rgb(SIGN_BLUE) if p["lit"] else rgb(SIGN_YELLOW))
        cv.fill(rect(cv, x - 0.8 * r, y - 0.15 * r, x + 0.8 * r, y + 0.15 * r), SIGN,
                rgb(SIGN_WHITE))
    else:  # seen from behind: a plain grey disc, still a traffic sign in Cityscapes
        cv.fill(ellipse(cv, x, y, r, r), SIGN, rgb((150, 150, 146)))


def draw_tree(cv, sc, t):
    """Trunk and a crown of overlapping blobs; the trunk is vegetation, as in Cityscapes."""
    q, xc, yb = _anchor(sc, t)
    p = t.params
    trunk_top = yb - p["trunk"] * q
    cv.fill(segment(cv, xc, yb, xc, trunk_top, 0.2 * q), VEGETATION, rgb(BARK))
    r = p["crown"] * q
    cy = trunk_top - 0.5 * r
    for k, (dx, dy, ds) in enumerate(p["blobs"]):
        shade = 0.8 + 0.1 * (k % 3)
        cv.fill(ellipse(cv, xc + 0.6 * dx * r, cy + 0.45 * dy * r, r * (0.6 + 0.15 * ds),
                        r * (0.55 + 0.15 * ds)), VEGETATION, p["color"] * shade)


def draw_clutter(cv, sc, t):
    """Bins and boxes on the pavement: void 'static', as in Cityscapes."""
    q, xc, yb = _anchor(sc, t)
    s = t.params["size"] * q
    cv.fill(rect(cv, xc - 0.4 * s, yb - 1.3 * s, xc + 0.4 * s, yb), STATIC, t.params["color"])
    cv.fill(rect(cv, xc - 0.45 * s, yb - 1.4 * s, xc + 0.45 * s, yb - 1.25 * s), STATIC,
            t.params["color"] * 0.7)


DRAWERS = {
    "car": draw_car, "truck": draw_truck, "bus": draw_bus, "tram": draw_tram,
    "person": draw_person, "bicycle": draw_bike, "motorcycle": draw_bike,
    "lamp": draw_pole_furniture, "sign": draw_pole_furniture, "light": draw_pole_furniture,
    "pole": draw_pole_furniture, "tree": draw_tree, "clutter": draw_clutter,
}


def draw_hood(cv, sc):
    """The ego vehicle's bonnet at the bottom (void 'ego vehicle'), with a bright reflection."""
    if sc.hood * cv.h < 1:
        return
    xs = (np.arange(cv.w, dtype=np.float32) + 0.5 - cv.w / 2) / (cv.w / 2)
    top = cv.h * (1 - sc.hood * (1 - 0.5 * xs ** 2))
    i0 = int(top.min())
    ys = (np.arange(i0, cv.h, dtype=np.float32) + 0.5)[:, None]
    rr, cc = np.nonzero(ys >= top[None, :])
    shine = 0.5 * np.exp(-((ys[rr, 0] - top[cc] - 2.0) / 3.0) ** 2)[:, None]
    cv.label[rr + i0, cc] = EGO_VEHICLE
    cv.color[rr + i0, cc] = sc.hood_color * (1 - shine) + shine


def draw_scene(sc, rng):
    cv = Canvas(sc.h, sc.w)
    draw_sky(cv, sc, rng)
    draw_ground(cv, sc, rng)
    draw_street_end(cv, sc, rng)
    for side in (sc.left, sc.right):
        draw_facades(cv, sc, rng, side, "back")
        draw_facades(cv, sc, rng, side, "front")
    for t in sorted(sc.things, key=lambda t: -t.z):      # painter's algorithm: far to near
        DRAWERS[t.kind](cv, sc, t)
    draw_hood(cv, sc)
    return cv


# ---------------------------------------------------------------------------------------------
# Styles: the domain gap. Same scene in, two global appearances out.
# ---------------------------------------------------------------------------------------------

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


# ---------------------------------------------------------------------------------------------
# Frames and files
# ---------------------------------------------------------------------------------------------

DOMAINS = {
    # domain: (image size, scene prior, style, bonnet height range, bonnet colours)
    "source": (SOURCE_SIZE, SOURCE_PRIOR, SOURCE_STYLE, (0.0, 0.08), CAR_PAINT),
    "target": (TARGET_SIZE, TARGET_PRIOR, TARGET_STYLE, (0.06, 0.1), ((40, 42, 46),)),
}


def render_frame(seed, stream, index):
    """One (image H x W x 3 uint8, label ids H x W uint8) pair, determined by its three ids."""
    rng = np.random.default_rng([seed, stream, index])
    size, prior, style, hood_range, hood_colors = DOMAINS[
        "source" if stream == STREAM_SOURCE else "target"]
    scene = sample_scene(rng, prior, *size, hood_range=hood_range, hood_colors=hood_colors)
    cv = draw_scene(scene, rng)
    return render_style(cv, style, rng), cv.label


def palette_bytes():
    """256-entry PNG palette: Cityscapes colour of each label id (GTA5 label files carry it)."""
    pal = np.zeros((256, 3), dtype=np.uint8)
    pal[list(TRAIN_LABEL_IDS)] = PALETTE
    for label_id, color in VOID_COLORS.items():
        pal[label_id] = color
    return pal.tobytes()


@dataclass(frozen=True)
class DemoPaths:
    root: Path
    source: Path             # GTA5 layout root: images/, labels/, train.txt, val.txt
    target: Path             # Cityscapes layout root: leftImg8bit/, gtFine/
    source_train_list: Path
    source_val_list: Path

    @classmethod
    def of(cls, root):
        root = Path(root)
        return cls(root=root, source=root / "gta5", target=root / "cityscapes",
                   source_train_list=root / "gta5" / "train.txt",
                   source_val_list=root / "gta5" / "val.txt")


def _marker(seed, n_source, n_target_train, n_target_val):
    return {"format_version": FORMAT_VERSION, "seed": int(seed), "n_source": int(n_source),
            "n_target_train": int(n_target_train), "n_target_val": int(n_target_val)}


def target_frames(n_train, n_val):
    """(split, city, stem, stream, index) of each target frame; train frames over two cities."""
    frames = []
    for split, n, cities, stream in (("train", n_train, TARGET_TRAIN_CITIES, STREAM_TARGET_TRAIN),
                                     ("val", n_val, TARGET_VAL_CITIES, STREAM_TARGET_VAL)):
        for i in range(n):
            city = cities[i * len(cities) // max(n, 1)]
            frames.append((split, city, f"{city}_000000_{i:06d}", stream, i))
    return frames


def write_frame(task):
    """Render one frame and write its image and label files (runs in a worker process)."""
    seed, stream, index, image_path, label_path = task
    image, label = render_frame(seed, stream, index)
    # Images compress poorly anyway (noise, texture); level 1 is 3-4x faster than the default.
    Image.fromarray(image).save(image_path, compress_level=1)
    if stream == STREAM_SOURCE:
        # Palette PNG whose pixel index is the label id, as the real GTA5 label files are.
        lab = Image.frombytes("P", (label.shape[1], label.shape[0]), label.tobytes())
        lab.putpalette(palette_bytes())
        lab.save(label_path)
    else:
        Image.fromarray(label).save(label_path)   # single-channel label ids, like gtFine


def _write_tree(out, seed, n_source, n_target_train, n_target_val, workers):
    src, tgt = out / "gta5", out / "cityscapes"
    (src / "images").mkdir(parents=True)
    (src / "labels").mkdir()
    names = [f"{i + 1:05d}" for i in range(n_source)]
    tasks = [(seed, STREAM_SOURCE, i, src / "images" / f"{name}.png",
              src / "labels" / f"{name}.png") for i, name in enumerate(names)]
    n_val = min(max(round(n_source * SOURCE_VAL_FRACTION), 1), n_source - 1) if n_source > 1 else 0
    (src / "train.txt").write_text("".join(f"{n}\n" for n in names[:n_source - n_val]))
    (src / "val.txt").write_text("".join(f"{n}\n" for n in names[n_source - n_val:]))

    for split, city, stem, stream, index in target_frames(n_target_train, n_target_val):
        img_dir, gt_dir = tgt / "leftImg8bit" / split / city, tgt / "gtFine" / split / city
        img_dir.mkdir(parents=True, exist_ok=True)
        gt_dir.mkdir(parents=True, exist_ok=True)
        tasks.append((seed, stream, index, img_dir / f"{stem}_leftImg8bit.png",
                      gt_dir / f"{stem}_gtFine_labelIds.png"))

    if workers > 1 and len(tasks) > 1:
        # Frames are independent (own RNG each), so order and process do not matter. 'spawn'
        # rather than fork: the caller may have started threads (torch, BLAS).
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(workers, mp_context=ctx) as pool:
            list(pool.map(write_frame, tasks, chunksize=8))
    else:
        for task in tasks:
            write_frame(task)
    marker = _marker(seed, n_source, n_target_train, n_target_val)
    (out / "demo.json").write_text(json.dumps(marker, indent=2) + "\n")


def generate_demo(root, seed=0, n_source=200, n_target_train=160, n_target_val=60,
                  workers=None):
    """Write the demo pair under `root` (replacing what is there).

    Written into a temporary sibling folder and renamed into place, so an interrupted run
    never leaves a half-made tree behind at `root`. `workers`: processes to render with
    (default: up to 2 for a full-size pair, 1 for small ones, where start-up would dominate).
    """
    root = Path(root)
    total = n_source + n_target_train + n_target_val
    if workers is None:
        workers = min(2, os.cpu_count() or 1) if total >= 60 else 1
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = root.parent / f".{root.name}.tmp-{os.getpid()}"
    old = root.parent / f".{root.name}.old-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        _write_tree(tmp, seed, n_source, n_target_train, n_target_val, workers)
        if root.exists():
            root.rename(old)
        tmp.rename(root)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)


def ensure_demo(root=DEMO_ROOT, seed=0):
    """The default demo pair at `root`, generated on first use or when its marker disagrees."""
    root = Path(root)
    expected = _marker(seed, 200, 160, 60)
    try:
        current = json.loads((root / "demo.json").read_text())
    except (OSError, ValueError):
        current = None
    if current != expected:
        generate_demo(root, seed=seed)
    return DemoPaths.of(root)


def demo_settings():
    """Settings the training scripts take with --demo, for whatever the user did not set.

    Half the generated resolution (the source keeps its 16:9 aspect), random initialisation
    (nothing is downloaded), and a schedule that finishes in a few minutes on a 2-core CPU.
    """
    return {"source_size": (144, 256), "target_size": (128, 256), "val_size": (128, 256),
            "batch_size": 8, "epochs": 10, "lr": 2.5e-2, "pretrained": "none"}


# ---------------------------------------------------------------------------------------------
# Inspection
# ---------------------------------------------------------------------------------------------

def label_files(paths):
    """{split name: [label file, ...]} for the four splits of a demo tree."""
    names = {split: paths.source_train_list if split == "train" else paths.source_val_list
             for split in ("train", "val")}
    out = {}
    for split, lst in names.items():
        out[f"gta5 {split}"] = [paths.source / "labels" / f"{n}.png"
                                for n in lst.read_text().split()]
    for split in ("train", "val"):
        out[f"cityscapes {split}"] = sorted(
            (paths.target / "gtFine" / split).glob("*/*_gtFine_labelIds.png"))
    return out


def class_frequencies(files):
    """Fraction of pixels per train id (19 classes, then ignore) over a list of label files."""
    counts = np.zeros(256, dtype=np.int64)
    for f in files:
        counts += np.bincount(ids_to_trainids(np.asarray(Image.open(f))).ravel(), minlength=256)
    freq = np.append(counts[:NUM_CLASSES], counts[IGNORE_INDEX]).astype(np.float64)
    return freq / max(counts.sum(), 1)


def frequency_table(paths):
    files = label_files(paths)
    freqs = {name: class_frequencies(fs) for name, fs in files.items()}
    head = f"{'class':<14}" + "".join(f"{name:>17}" for name in freqs)
    lines = [head, f"{'frames':<14}" + "".join(f"{len(fs):>17}" for fs in files.values())]
    for c, cname in enumerate(CLASS_NAMES + ("(ignore)",)):
        lines.append(f"{cname:<14}" + "".join(f"{100 * f[c]:>16.2f}%" for f in freqs.values()))
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=DEMO_ROOT)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--force", action="store_true", help="regenerate even if up to date")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    if args.force:
        generate_demo(args.root, seed=args.seed)
        paths = DemoPaths.of(args.root)
    else:
        paths = ensure_demo(args.root, seed=args.seed)
    print(f"demo pair (seed {args.seed}) at {paths.root} [{time.perf_counter() - start:.1f} s]")
    print(f"  source (GTA5 layout):       {paths.source}")
    print(f"  target (Cityscapes layout): {paths.target}")
    print("\npixel share of each class (train ids):")
    print(frequency_table(paths))


if __name__ == "__main__":
    main()
