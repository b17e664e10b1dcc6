"""Scene layout: the per-domain priors and everything a frame shows, sampled before drawing.

Positions are world units (X lateral, z depth; one unit is about 1.5 m), see `demo`.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from demo.palette import (
    BIKE_PAINT,
    BUS_PAINT,
    CAR_PAINT,
    CLOTHES,
    CONCRETE,
    FACADES,
    FENCE_METAL,
    FOLIAGE,
    GROUND,
    MOTO_PAINT,
    PARKING,
    SKIN,
    STATIC_PAINT,
    TERRAIN,
    TRAM_PAINT,
    TROUSERS,
    TRUCK_PAINT,
    jitter,
    pick,
)

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
