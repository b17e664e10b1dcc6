"""The canvas a frame is painted on, the shape primitives, and a smooth noise field."""
from __future__ import annotations

import numpy as np
from scipy import ndimage

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
