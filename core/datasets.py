"""Datasets: Cityscapes (target domain) and GTA5 (source domain), plus pseudo-labelled targets.

Every item is a dict:
    image  uint8 tensor 3 x H x W, RGB 0-255, NOT normalised (call `normalize` on the device,
           after batching: it is cheaper on the GPU and keeps FDA/LAB working on raw pixels)
    label  uint8 tensor H x W of train ids, 255 = ignore (only when labelled)
    name   dataset-relative stem that pairs files across folders:
           Cityscapes 'aachen/aachen_000000_000019', GTA5 '00001'

Pipeline of one item: decode (Pillow) -> check sizes -> resize to `size` (image bilinear,
label nearest) -> map label values to train ids with one lookup table -> `transform`.
File existence is checked once at construction (a directory listing, cheap even for 25k
files); sizes and decodability are checked when an item is loaded.
"""
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from core.labels import (
    ID_TO_TRAINID,
    NUM_CLASSES,
    colors_to_trainids,
    ids_to_trainids,
    make_id_lut,
)

# ImageNet statistics on the 0-1 scale (what torchvision's pretrained backbones expect).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Train-id label files are used as they are, except that anything outside 0..18 becomes ignore.
TRAINID_LUT = make_id_lut((i, i) for i in range(NUM_CLASSES))

PSEUDO_HINT = "make them with `python gen_pseudo.py CKPT --out DIR`"


# --------------------------------------------------------------------------- normalisation

def _stats(x):
    if x.ndim not in (3, 4) or x.shape[-3] != 3:
        raise ValueError(f"expected a 3 x H x W or B x 3 x H x W RGB tensor, got shape "
                         f"{tuple(x.shape)}")
    # Built on the input's device so that normalising a CUDA batch never touches the host.
    mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float32, device=x.device).view(3, 1, 1) * 255
    std = torch.tensor(IMAGENET_STD, dtype=torch.float32, device=x.device).view(3, 1, 1) * 255
    return mean, std


def normalize(images):
    """0-255 RGB (uint8 or float, 3xHxW or Bx3xHxW, any device) -> float32 ImageNet-normalised."""
    mean, std = _stats(images)
    return (images.to(torch.float32) - mean) / std


def denormalize(images):
    """Inverse of `normalize`: float32 0-255 RGB (not clipped, not rounded)."""
    mean, std = _stats(images)
    return images.to(torch.float32) * std + mean


# --------------------------------------------------------------------------- decoding

def _open(path):
    """Open and fully decode an image file, turning decoder failures into a ValueError."""
    try:
        with Image.open(path) as im:
            im.load()  # Image.open is lazy: force the decode here, where we can name the file
    except FileNotFoundError as e:
        raise FileNotFoundError(f"file disappeared since the dataset was built: {path}") from e
    except (OSError, SyntaxError, ValueError) as e:  # PIL raises all three for broken files
        raise ValueError(f"cannot decode image file {path}: {e}") from e
    return im


def _check_size(size):
    if size is None:
        return None
    if len(size) != 2 or min(size) < 1:
        raise ValueError(f"size must be (height, width) or None, got {size!r}")
    return int(size[0]), int(size[1])


def _image_tensor(im, size):
    """PIL image -> uint8 3 x H x W tensor, bilinear-resized to size = (H, W) if given."""
    if im.mode != "RGB":
        im = im.convert("RGB")  # RGBA / greyscale / palette photos
    if size is not None and im.size != (size[1], size[0]):
        # Pillow's bilinear widens its kernel on downscaling, i.e. it is antialiased.
        im = im.resize((size[1], size[0]), Image.Resampling.BILINEAR)
    # The transpose to channels-first needs one copy anyway; that copy is also what makes the
    # array writable (np.asarray on a PIL image is a read-only view of its bytes).
    return torch.from_numpy(np.ascontiguousarray(np.asarray(im).transpose(2, 0, 1)))


def _label_tensor(im, size, lut, path):
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
        out = lut[np.asarray(im)]  # one fancy-index over the whole image
    elif im.mode.startswith("I"):
        out = ids_to_trainids(np.asarray(im), lut)  # ids outside 0..255 -> 255
    elif im.mode in ("RGB", "RGBA"):
        out = colors_to_trainids(np.asarray(im)[..., :3])
    else:
        raise ValueError(f"label file {path} has PIL mode {im.mode!r}: expected a palette ('P') "
                         f"or single-channel ('L'/'I') id PNG, or an RGB colour PNG")
    return torch.from_numpy(out)


def read_image(path, size=None):
    """Decode one image file to a uint8 3 x H x W tensor, resized (bilinear) to (H, W)."""
    return _image_tensor(_open(path), _check_size(size))


def read_label(path, size=None, lut=ID_TO_TRAINID):
    """Decode one label file to a uint8 H x W tensor of train ids, resized (nearest) to (H, W).

    `lut` maps ids of 'P'/'L'/'I' files (default: Cityscapes label id -> train id).
    """
    return _label_tensor(_open(path), _check_size(size), lut, path)


# --------------------------------------------------------------------------- base class

class _SegmentationFiles(Dataset):
    """Shared loading of (image, label) file pairs; subclasses fill in the file lists."""

    # Filled by subclasses: names[i], image_paths[i], label_paths[i] (None when unlabelled).
    names: list
    image_paths: list
    label_paths: list

    def __len__(self):
        return len(self.names)

    def _lut(self, index):
        return ID_TO_TRAINID

    def __getitem__(self, index):
        image = _open(self.image_paths[index])
        label = None
        if self.labelled:
            label_path = self.label_paths[index]
            label_im = _open(label_path)
            if label_im.size != image.size:
                raise ValueError(f"label {label_path} is {label_im.size[0]}x{label_im.size[1]} "
                                 f"but its image {self.image_paths[index]} is "
                                 f"{image.size[0]}x{image.size[1]} (width x height)")
            label = _label_tensor(label_im, self.size, self._lut(index), label_path)
        image = _image_tensor(image, self.size)
        if self.transform is not None:
            image, label = self.transform(image, label)
        item = {"image": image, "name": self.names[index]}
        if label is not None:
            item["label"] = label
        return item

    def __repr__(self):
        return (f"{type(self).__name__}(root={str(self.root)!r}, split={self.split!r}, "
                f"n={len(self)}, size={self.size}, labelled={self.labelled})")


def _require_dir(path, what):
    if not Path(path).is_dir():
        raise FileNotFoundError(f"{what} not found: {path}")


# --------------------------------------------------------------------------- Cityscapes

class Cityscapes(_SegmentationFiles):
    """Cityscapes, official or course layout, label flavour detected per file.

    Layouts (checked in this order; `root` may be either course folder):
        root/leftImg8bit/<split>/<city>/<stem>_leftImg8bit.png          official
        root/gtFine/<split>/<city>/<stem>_gtFine_labelIds.png
        root/Cityspaces/images/<split>/<city>/<stem>_leftImg8bit.png    course, root = Cityscapes
        root/Cityspaces/gtFine/<split>/<city>/<stem>_gtFine_labelIds.png
        root/images/<split>/..., root/gtFine/<split>/...                course, root = Cityspaces
    Label flavour: `_gtFine_labelIds.png` (original ids, mapped to train ids) is preferred;
    `_gtFine_labelTrainIds.png` (made by the official scripts) is used as is only when the ids
    file is absent. Preferring the original means a stale or differently generated train-id
    file can never silently change the ground truth.
    """

    def __init__(self, root, split="train", size=(512, 1024), labelled=True, transform=None):
        self.root, self.split = Path(root), split
        self.labelled, self.transform = labelled, transform
        self.size = _check_size(size)
        _require_dir(self.root, "Cityscapes root")
        image_dir, label_dir = self._find_layout()

        self.image_paths = sorted(image_dir.glob("*/*_leftImg8bit.png"))
        if not self.image_paths:
            raise FileNotFoundError(f"no Cityscapes images found: expected "
                                    f"{image_dir}/<city>/*_leftImg8bit.png")
        stems = [p.name[: -len("_leftImg8bit.png")] for p in self.image_paths]
        self.names = [f"{p.parent.name}/{s}" for p, s in zip(self.image_paths, stems, strict=True)]

        self.label_paths = [None] * len(self.names)
        self._train_ids = [False] * len(self.names)  # True: file holds train ids already
        if labelled:
            _require_dir(label_dir, f"Cityscapes labels for split {split!r} (labelled=True)")
            present = {p.relative_to(label_dir).as_posix() for p in label_dir.glob("*/*.png")}
            for i, name in enumerate(self.names):
                ids, train_ids = f"{name}_gtFine_labelIds.png", f"{name}_gtFine_labelTrainIds.png"
                if ids in present:
                    self.label_paths[i] = label_dir / ids
                elif train_ids in present:
                    self.label_paths[i], self._train_ids[i] = label_dir / train_ids, True
                else:
                    raise FileNotFoundError(
                        f"no label for image {self.image_paths[i]}: expected {label_dir / ids} "
                        f"(or {train_ids}); pass labelled=False to load images only")

    def _find_layout(self):
        r, s = self.root, self.split
        candidates = [
            (r / "leftImg8bit" / s, r / "gtFine" / s),
            (r / "Cityspaces" / "images" / s, r / "Cityspaces" / "gtFine" / s),
            (r / "images" / s, r / "gtFine" / s),
        ]
        for image_dir, label_dir in candidates:
            if image_dir.is_dir():
                return image_dir, label_dir
        raise FileNotFoundError(
            f"no Cityscapes split {s!r} under {r}: expected "
            f"{r}/leftImg8bit/{s}/<city>/*_leftImg8bit.png (official layout), "
            f"{r}/Cityspaces/images/{s}/<city>/... or {r}/images/{s}/<city>/... (course layout)")

    def _lut(self, index):
        return TRAINID_LUT if self._train_ids[index] else ID_TO_TRAINID


# --------------------------------------------------------------------------- GTA5

def _read_split_list(path):
    """Names in a list file, one a line: 'images/00001.png', '00001.png' and '00001' all work."""
    names = []
    for line in Path(path).read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name = line.replace("\\", "/").rsplit("/", 1)[-1]
            names.append(name[:-4] if name.lower().endswith(".png") else name)
    if not names:
        raise ValueError(f"split list {path} names no images (expected one name per line)")
    return names


def load_label_mapping(path):
    """256-entry id -> train-id table from an info.json holding "label2train": [[id, tid], ...]."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"label mapping file not found: {path} (expected a JSON "
                                f"file with \"label2train\": [[id, trainId], ...])")
    try:
        pairs = json.loads(path.read_text())["label2train"]
        return make_id_lut((int(a), int(b)) for a, b in pairs)
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise ValueError(f"bad label mapping file {path}: expected JSON with "
                         f"\"label2train\": [[id, trainId], ...] ({e})") from e


class GTA5(_SegmentationFiles):
    """GTA5: root/images/<name>.png and root/labels/<name>.png.

    split: None (every image), a path to a list file, or the name of a list in root
    ('train' -> root/train.txt). Each label's encoding is detected per file: palette PNG whose
    index is the Cityscapes label id (the original release), single-channel id PNG, or RGB
    colour PNG (course copies). `mapping`: optional info.json whose "label2train" replaces the
    Cityscapes id -> train id table for id-coded labels (colour labels always use the colours).
    """

    def __init__(self, root, split=None, size=(720, 1280), labelled=True, transform=None,
                 mapping=None):
        self.root, self.split = Path(root), split
        self.labelled, self.transform = labelled, transform
        self.size = _check_size(size)
        self.lut = ID_TO_TRAINID if mapping is None else load_label_mapping(mapping)
        _require_dir(self.root, "GTA5 root")
        image_dir, label_dir = self.root / "images", self.root / "labels"
        _require_dir(image_dir, f"GTA5 image folder (expected {self.root}/images/*.png)")
        available = {p.stem for p in image_dir.glob("*.png")}

        if split is None:
            self.names = sorted(available)
            if not self.names:
                raise FileNotFoundError(f"no GTA5 images found: expected {image_dir}/*.png")
        else:
            list_file = self._find_list(split)
            self.names = _read_split_list(list_file)
            missing = [n for n in self.names if n not in available]
            if missing:
                raise FileNotFoundError(f"split list {list_file} names {len(missing)} image(s) "
                                        f"not in {image_dir}, e.g. {image_dir / missing[0]}.png")
        self.image_paths = [image_dir / f"{n}.png" for n in self.names]

        self.label_paths = [None] * len(self.names)
        if labelled:
            _require_dir(label_dir, f"GTA5 label folder (expected {self.root}/labels/*.png; "
                                    f"pass labelled=False to load images only)")
            have = {p.stem for p in label_dir.glob("*.png")}
            missing = [n for n in self.names if n not in have]
            if missing:
                raise FileNotFoundError(f"{len(missing)} GTA5 image(s) have no label, e.g. "
                                        f"{self.image_paths[self.names.index(missing[0])]}: "
                                        f"expected {label_dir / missing[0]}.png")
            self.label_paths = [label_dir / f"{n}.png" for n in self.names]

    def _find_list(self, split):
        for candidate in (Path(split), self.root / f"{split}.txt", self.root / str(split)):
            if candidate.is_file():
                return candidate
        raise FileNotFoundError(f"GTA5 split list not found: tried {split} and "
                                f"{self.root / f'{split}.txt'} (a text file, one name per line)")

    def _lut(self, index):
        return self.lut


# --------------------------------------------------------------------------- pseudo labels

class PseudoLabelDataset(Dataset):
    """Target images paired with pseudo labels from `pseudo_dir/<name>.png` (uint8 train ids).

    `images` is an unlabelled dataset (labelled=False, transform=None) so that images are loaded
    at their working size; the pseudo label is resized (nearest) to that size if it differs, and
    then `transform` is applied to image and pseudo label together.
    """

    def __init__(self, images, pseudo_dir, transform=None):
        if getattr(images, "transform", None) is not None:
            raise ValueError("PseudoLabelDataset applies the transform to image and pseudo label "
                             "together: build the inner dataset with transform=None")
        if getattr(images, "labelled", False):
            raise ValueError("PseudoLabelDataset replaces the labels: build the inner dataset "
                             "with labelled=False")
        if not hasattr(images, "names"):
            raise TypeError("PseudoLabelDataset needs a dataset with a `names` list "
                            "(Cityscapes or GTA5)")
        self.images, self.pseudo_dir, self.transform = images, Path(pseudo_dir), transform
        if not self.pseudo_dir.is_dir():
            raise FileNotFoundError(f"pseudo-label folder not found: {self.pseudo_dir}; "
                                    f"{PSEUDO_HINT}")
        present = {p.relative_to(self.pseudo_dir).as_posix()
                   for p in self.pseudo_dir.rglob("*.png")}
        missing = [n for n in images.names if f"{n}.png" not in present]
        if missing:
            raise FileNotFoundError(f"{len(missing)} of {len(images.names)} pseudo labels missing, "
                                    f"e.g. {self._path(missing[0])}; {PSEUDO_HINT}")

    def _path(self, name):
        return self.pseudo_dir / f"{name}.png"

    def __len__(self):
        return len(self.images)

    def __getitem__(self, index):
        item = self.images[index]
        image, name = item["image"], item["name"]
        path = self._path(name)
        if not path.is_file():
            raise FileNotFoundError(f"pseudo label missing: {path}; {PSEUDO_HINT}")
        label = read_label(path, size=tuple(image.shape[-2:]), lut=TRAINID_LUT)
        if self.transform is not None:
            image, label = self.transform(image, label)
        return {"image": image, "label": label, "name": name}
