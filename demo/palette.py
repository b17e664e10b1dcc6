"""What the demo world is made of: Cityscapes label ids and per-class base colours.

Both domains share all of it; the domain gap lives in `demo.style` (appearance) and in the
scene priors of `demo.scene` (label distribution), never here.
"""
from __future__ import annotations

import numpy as np

from core.labels import CLASS_NAMES, TRAIN_LABEL_IDS

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
