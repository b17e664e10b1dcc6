"""Objects standing on the ground (`Thing`s), each drawn as a small sprite at its depth's scale.

Each is drawn from its position (X, z), its sizes in units and the scale q = f / z of its
depth (pixels per unit); DRAWERS maps a Thing's kind to its function.
"""
from __future__ import annotations

import numpy as np

from demo.canvas import ellipse, polygon, rect, ring, segment
from demo.palette import (
    BARK,
    BICYCLE,
    BUS,
    CAR,
    GLASS,
    LIGHT,
    LIGHT_HOUSING,
    METAL,
    MOTORCYCLE,
    PERSON,
    POLE,
    RIDER,
    SIGN,
    SIGN_BLUE,
    SIGN_RED,
    SIGN_WHITE,
    SIGN_YELLOW,
    STATIC,
    TRAIN,
    TRUCK,
    VEGETATION,
    rgb,
)


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
