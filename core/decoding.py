"""Decoding one image or label file into tensors, with errors that name the file.

    image  uint8 tensor 3 x H x W, RGB 0-255 (bilinear resize, antialiased when shrinking);
           any file Pillow reads (IMAGE_SUFFIXES); 16-bit greyscale scaled to 8 bits
    label  uint8 tensor H x W of train ids, 255 = ignore (nearest resize, then one lookup);
           lossless files only (LABEL_SUFFIXES); 16-bit labels hold ids, kept as ids

A label's encoding is read from its PIL mode: palette or single-channel ids are mapped
through a 256-entry table, RGB colours through the Cityscapes colours. Ids that no table
names are ignored with a DataWarning, once per file.
"""
import warnings

import numpy as np
import torch
from PIL import Image

from core.errors import DataError, MissingDataError
from core.labels import (
    ID_TO_TRAINID,
    IGNORE_INDEX,
    NUM_CLASSES,
    colors_to_trainids,
    ids_to_trainids,
    make_id_lut,
)

# Train-id label files are used as they are, except that anything outside 0..18 becomes ignore.
TRAINID_LUT = make_id_lut((i, i) for i in range(NUM_CLASSES))

# Photos: every common format Pillow reads. Labels: lossless formats only (a JPEG or WebP
# label would hold blurred ids at every class border).
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
LABEL_SUFFIXES = (".png", ".bmp", ".tif", ".tiff")
# Pillow's modes of 16-bit greyscale files (PNG, TIFF); "I" too: older Pillows read them so.
SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")


# --------------------------------------------------------------------------- decoding

def open_image(path):
    """Open and fully decode an image file, turning decoder failures into a DataError."""
    try:
        with Image.open(path) as im:
            im.load()  # Image.open is lazy: force the decode here, where we can name the file
    except FileNotFoundError as e:
        raise MissingDataError(f"file disappeared since the dataset was built: {path}") from e
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        # PIL raises the first three for broken files, the last for absurdly large ones.
        raise DataError(f"cannot decode image file {path}: {e}") from e
    return im


def check_size(size):
    if size is None:
        return None
    if len(size) != 2 or min(size) < 1:
        raise ValueError(f"size must be (height, width) or None, got {size!r}")
    return int(size[0]), int(size[1])


def image_tensor(im, size):
    """PIL image -> uint8 3 x H x W tensor, bilinear-resized to size = (H, W) if given."""
    if im.mode in SIXTEEN_BIT_MODES:
        im = _to_8_bits(im)
    if im.mode != "RGB":
        im = im.convert("RGB")  # RGBA / greyscale / palette photos
    if size is not None and im.size != (size[1], size[0]):
        # Pillow's bilinear widens its kernel on downscaling, i.e. it is antialiased.
        im = im.resize((size[1], size[0]), Image.Resampling.BILINEAR)
    # The transpose to channels-first needs one copy anyway; that copy is also what makes the
    # array writable (np.asarray on a PIL image is a read-only view of its bytes).
    return torch.from_numpy(np.ascontiguousarray(np.asarray(im).transpose(2, 0, 1)))


def _to_8_bits(im):
    """16-bit greyscale -> 8 bits by its high byte, as Pillow itself reads 16-bit RGB files
    (Pillow's own convert would clip everything above 255 to white). A value v saved as v * 257
    or v << 8 comes back as v: the same tensor as the 8-bit file."""
    values = np.asarray(im).astype(np.int64) >> 8
    return Image.fromarray(np.clip(values, 0, 255).astype(np.uint8))   # mode L


def label_tensor(im, size, lut, path):
    """PIL label image -> uint8 H x W tensor of train ids; the encoding is read from the mode.

    'P' (palette index = label id) and 'L' are mapped through `lut`, 16/32-bit 'I' ids too
    (ids outside 0..255 -> 255), 'RGB' colour labels through the Cityscapes colours. The palette
    itself is never looked at. Resizing happens first (nearest keeps values exact, and the
    lookup then touches fewer pixels).
    """
    if size is not None and im.size != (size[1], size[0]):
        # NEAREST samples at pixel centres, the same convention as the bilinear image resize.
        im = im.resize((size[1], size[0]), Image.Resampling.NEAREST)
    if im.mode in ("P", "L"):
        ids = np.asarray(im)
        _warn_unknown_ids(ids, lut, path)
        out = lut[ids]  # one fancy-index over the whole image
    elif im.mode.startswith("I"):
        ids = np.asarray(im)
        _warn_unknown_ids(ids, lut, path)
        out = ids_to_trainids(ids, lut)  # ids outside 0..255 -> 255
    elif im.mode in ("RGB", "RGBA"):
        out = colors_to_trainids(np.asarray(im)[..., :3])
    else:
        raise DataError(f"label file {path} has PIL mode {im.mode!r}: expected a palette ('P') "
                         f"or single-channel ('L'/'I') id PNG, or an RGB colour PNG")
    if im.mode in ("RGB", "RGBA") and (out == IGNORE_INDEX).all():
        warnings.warn(f"label file {path} holds no Cityscapes class colour: every pixel is "
                      f"ignored (an id PNG saved as RGB?)", DataWarning, stacklevel=2)
    return torch.from_numpy(out)


class DataWarning(UserWarning):
    """Label values that the mapping does not know: they become ignore (255)."""


def _warn_unknown_ids(ids, lut, path):
    """Warn (once per file and process) about ids that are neither mapped nor Cityscapes void
    ids (0..33, 255): such pixels are ignored, which is right for void, wrong for a bad file."""
    flat = ids.ravel()
    outside = 0
    if ids.dtype != np.uint8:
        inside = (flat >= 0) & (flat < 256)
        outside, flat = int((~inside).sum()), flat[inside]
    counts = np.bincount(flat, minlength=256)
    unknown = np.flatnonzero(counts * unknown_id_mask(lut))
    if unknown.size or outside:
        shown = ", ".join(str(int(i)) for i in unknown[:8]) or "outside 0..255"
        warnings.warn(f"label file {path} holds {int(counts[unknown].sum()) + outside:,} pixels "
                      f"of unknown ids ({shown}); they are ignored (255)", DataWarning,
                      stacklevel=3)


# Ids that are ignored with a warning when no mapping names them: all but Cityscapes' void
# ids (0..33) and 255.
UNEXPECTED_IDS = np.ones(256, dtype=bool)
UNEXPECTED_IDS[:34] = False
UNEXPECTED_IDS[IGNORE_INDEX] = False


def unknown_id_mask(lut):
    """Which of the ids 0..255 no table names: `lut` maps them to ignore, and they are not
    Cityscapes void ids (ids outside 0..255 are unknown too)."""
    return (lut == IGNORE_INDEX) & UNEXPECTED_IDS


def read_label(path, size=None, lut=ID_TO_TRAINID):
    """Decode one label file to a uint8 H x W tensor of train ids, resized (nearest) to (H, W).

    `lut` maps ids of 'P'/'L'/'I' files (default: Cityscapes label id -> train id).
    """
    return label_tensor(open_image(path), check_size(size), lut, path)
