"""The 19 Cityscapes evaluation classes and every mapping into their train ids.

All mappings are lookup tables indexed in one numpy operation: no per-class loops.
Facts from the Cityscapes definition (labels.py of cityscapesScripts); 255 = ignore.
"""
from functools import lru_cache

import numpy as np
from PIL import Image

NUM_CLASSES = 19
IGNORE_INDEX = 255

CLASS_NAMES = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light",
    "traffic sign", "vegetation", "terrain", "sky", "person", "rider", "car",
    "truck", "bus", "train", "motorcycle", "bicycle",
)

# Cityscapes label id of each train id, in train-id order.
TRAIN_LABEL_IDS = (7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33)

# Official colour of each train id (also the colour of its label id in `_color.png` files).
PALETTE = np.array([
    (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153),
    (153, 153, 153), (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152),
    (70, 130, 180), (220, 20, 60), (255, 0, 0), (0, 0, 142), (0, 0, 70),
    (0, 60, 100), (0, 80, 100), (0, 0, 230), (119, 11, 32),
], dtype=np.uint8)

# Colours of the void label ids that occur in colour-coded labels (they map to ignore).
VOID_COLORS = {
    0: (0, 0, 0), 5: (111, 74, 0), 6: (81, 0, 81), 9: (250, 170, 160), 10: (230, 150, 140),
    14: (180, 165, 180), 15: (150, 100, 100), 16: (150, 120, 90), 29: (0, 0, 90), 30: (0, 0, 110),
}


def make_id_lut(pairs):
    """256-entry uint8 table from (label id, train id) pairs; every other id -> 255."""
    lut = np.full(256, IGNORE_INDEX, dtype=np.uint8)
    for label_id, train_id in pairs:
        if not (0 <= label_id < 256 and (0 <= train_id < NUM_CLASSES or train_id == IGNORE_INDEX)):
            raise ValueError(f"label mapping pair ({label_id}, {train_id}) is out of range: "
                             f"expected a label id in 0..255 and a train id in 0..18 or 255")
        lut[label_id] = train_id
    return lut


ID_TO_TRAINID = make_id_lut(zip(TRAIN_LABEL_IDS, range(NUM_CLASSES), strict=True))


def ids_to_trainids(ids, lut=ID_TO_TRAINID):
    """Map an array of Cityscapes label ids to train ids; ids outside 0..255 become 255."""
    ids = np.asarray(ids)
    if ids.dtype == np.uint8:
        return lut[ids]
    inside = (ids >= 0) & (ids < 256)
    return np.where(inside, lut[np.where(inside, ids, 0)], IGNORE_INDEX).astype(np.uint8)


def _pack_rgb(rgb):
    rgb = np.asarray(rgb, dtype=np.uint32)
    return (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]


@lru_cache(maxsize=1)
def _color_lut():
    # 2^24 entries (16 MiB), built once: one fancy-index maps a whole image.
    lut = np.full(1 << 24, IGNORE_INDEX, dtype=np.uint8)
    lut[_pack_rgb(PALETTE)] = np.arange(NUM_CLASSES, dtype=np.uint8)
    return lut


def colors_to_trainids(rgb):
    """Map an H x W x 3 uint8 colour-coded label to train ids; unknown colours -> 255.

    Colour is ambiguous for polegroup (pole's colour) and licence plate (car's colour): such
    pixels take the train id of the colour (the colour alone cannot tell them apart).
    """
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"colour label must be H x W x 3, got shape {rgb.shape}")
    return _color_lut()[_pack_rgb(rgb)]


def colorize(train_ids):
    """Train-id map (H x W, 255 = ignore) -> H x W x 3 uint8 image in the Cityscapes colours."""
    table = np.zeros((256, 3), dtype=np.uint8)  # ignore and unknown values render black
    table[:NUM_CLASSES] = PALETTE
    return table[np.asarray(train_ids, dtype=np.uint8)]


def save_label_png(train_ids, path):
    """Write a train-id map as a palette PNG: pixel values are the train ids (what the loaders
    read), the palette shows them in the Cityscapes colours (ignore black)."""
    ids = np.ascontiguousarray(train_ids, dtype=np.uint8)
    im = Image.frombytes("P", (ids.shape[1], ids.shape[0]), ids.tobytes())
    table = np.zeros((256, 3), dtype=np.uint8)
    table[:NUM_CLASSES] = PALETTE
    im.putpalette(table.tobytes())
    im.save(path)
