"""Drawing a sampled scene: sky, ground, facades, then objects far to near, then the bonnet.

The objects themselves (cars, people, poles, ...) are drawn by `demo.things`.
"""
from __future__ import annotations

import numpy as np

from demo.canvas import Canvas, rect, value_noise
from demo.palette import (
    ASPHALT,
    BARE_GROUND,
    BUILDING,
    CLOUD,
    EGO_VEHICLE,
    FACADES,
    FENCE,
    FOLIAGE,
    GLASS,
    GRASS,
    GROUND,
    KERB,
    LANE_PAINT,
    METAL,
    PARKING,
    PAVING,
    RAIL_TRACK,
    ROAD,
    SIDEWALK,
    SKY,
    SKY_HORIZON,
    SKY_ZENITH,
    TERRAIN,
    VEGETATION,
    WALL,
    jitter,
    pick,
    rgb,
)
from demo.things import DRAWERS


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
