"""Datasets: Cityscapes (target domain) and GTA5 (source domain), plus pseudo-labelled targets.

Every item is a dict:
    image  uint8 tensor 3 x H x W, RGB 0-255, NOT normalised (`core.transforms.normalize` runs
           on the device after batching: cheaper there, and FDA/LAB work on raw pixels)
    label  uint8 tensor H x W of train ids, 255 = ignore (only when labelled)
    name   dataset-relative stem that pairs files across folders:
           Cityscapes 'aachen/aachen_000000_000019', GTA5 '00001'

Pipeline of one item (core/decoding.py): decode (Pillow) -> resize to `size` (image
bilinear, label nearest, each on its own) -> map label values to train ids with one lookup
table -> `transform`, drawing from a generator seeded per sample (core/sampling.py).
File existence and pairing are checked once at construction (a directory listing, cheap
even for 25k files): images of any suffix in IMAGE_SUFFIXES, labels of a lossless one; an
image without its label, or a label without its image, is an error naming them (never
dropped). Sizes and decodability are checked when an item is loaded.
"""
import contextlib
import json
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import Dataset

from core.decoding import (
    IMAGE_SUFFIXES,
    TRAINID_LUT,
    check_size,
    image_tensor,
    label_tensor,
    open_image,
)
from core.errors import DataError, MissingDataError
from core.labels import ID_TO_TRAINID, make_id_lut
from core.listing import ANY_SUFFIX, list_files, named, refuse_lossy

PSEUDO_HINT = "make them with `python gen_pseudo.py CKPT --out DIR`"


# --------------------------------------------------------------------------- base class

def _index_and_generator(index):
    if isinstance(index, tuple | list):
        index, seed = index
        return int(index), torch.Generator().manual_seed(int(seed))
    return int(index), None


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

    # Set by core.prepared.use_prepared (--prepared DIR): items are then read from a copy made
    # ahead by `decode`, bit-identical to what `decode` returns, several times faster.
    prepared = None

    def decode(self, index):
        """(image, label or None) of item `index` from its files, at the working size."""
        image = open_image(self.image_paths[index])
        label = None
        if self.labelled:
            label_path = self.label_paths[index]
            # A label may differ in size from its image (a few real GTA5 frames do): both are
            # resized to the working size independently, as the reference loaders do (one of
            # another aspect ratio is refused at start: core.datacheck).
            label = label_tensor(open_image(label_path), self.size, self._lut(index), label_path)
        return image_tensor(image, self.size), label

    def __getitem__(self, index):
        """`index`: an int, or (int, seed) from core.sampling.EpochSampler: the augmentation
        draws of this sample then come from a generator seeded with `seed`."""
        index, generator = _index_and_generator(index)
        if self.prepared is not None:
            image, label = self.prepared.load(self.names[index])
        else:
            image, label = self.decode(index)
        return _augmented({"image": image, "name": self.names[index]}, label, self.transform,
                          generator)

    def verify_readable(self):
        """Open every file's header (no decoding): a zero-byte or foreign file fails here, at
        start, with its name, instead of after an epoch of training."""
        for path in [*self.image_paths, *(p for p in self.label_paths if p is not None)]:
            with _header(path):
                pass

    def __repr__(self):
        return (f"{type(self).__name__}(root={str(self.root)!r}, split={self.split!r}, "
                f"n={len(self)}, size={self.size}, labelled={self.labelled})")


@contextlib.contextmanager
def _header(path):
    """The file opened lazily (header only), with a DataError naming it if that fails."""
    try:
        im = Image.open(path)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise DataError(f"cannot read image file {path}: {e}") from e
    with im:
        yield im


def _require_dir(path, what):
    if not Path(path).is_dir():
        raise MissingDataError(f"{what} not found: {path}")


# --------------------------------------------------------------------------- Cityscapes

class Cityscapes(_SegmentationFiles):
    """Cityscapes, official or course layout, label flavour detected per file.

    Layouts (checked in this order; `root` may be either course folder; images may be
    .png, .jpg, ... (IMAGE_SUFFIXES), labels .png, .bmp or .tif):
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
        self.size = check_size(size)
        _require_dir(self.root, "Cityscapes root")
        image_dir, label_dir = self._find_layout()

        images = list_files(image_dir, "*/*", "_leftImg8bit")
        if not images:
            raise MissingDataError(f"no Cityscapes images found: expected "
                                    f"{image_dir}/<city>/*_leftImg8bit.png {ANY_SUFFIX}")
        self.names = sorted(images)              # '<city>/<stem>'
        self.image_paths = [images[n] for n in self.names]
        self.label_paths = [None] * len(self.names)
        self._train_ids = [False] * len(self.names)  # True: file holds train ids already
        if labelled:
            self._pair_labels(images, image_dir, label_dir)

    def _pair_labels(self, images, image_dir, label_dir):
        """Each image's label, `_gtFine_labelIds` before `_gtFine_labelTrainIds`; an image
        without a label, or a label without an image, is an error naming them."""
        _require_dir(label_dir, f"Cityscapes labels for split {self.split!r} (labelled=True)")
        ids = list_files(label_dir, "*/*", "_gtFine_labelIds")
        train_ids = list_files(label_dir, "*/*", "_gtFine_labelTrainIds")
        refuse_lossy({**ids, **train_ids})
        for i, name in enumerate(self.names):
            if name in ids:
                self.label_paths[i] = ids[name]
            elif name in train_ids:
                self.label_paths[i], self._train_ids[i] = train_ids[name], True
        unlabelled = [n for n, p in zip(self.names, self.label_paths, strict=True) if p is None]
        if unlabelled:
            raise MissingDataError(
                f"{len(unlabelled)} Cityscapes image(s) have no label: "
                f"{named([images[n] for n in unlabelled])}; expected "
                f"{label_dir / unlabelled[0]}_gtFine_labelIds.png (or _gtFine_labelTrainIds); "
                f"pass labelled=False to load images only")
        orphans = sorted(n for n in {**ids, **train_ids} if n not in images)
        if orphans:
            raise MissingDataError(
                f"{len(orphans)} Cityscapes label(s) have no image: "
                f"{named([ids.get(n) or train_ids[n] for n in orphans])}; expected "
                f"{image_dir / orphans[0]}_leftImg8bit.png {ANY_SUFFIX}")

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
        raise MissingDataError(
            f"no Cityscapes split {s!r} under {r}: expected "
            f"{r}/leftImg8bit/{s}/<city>/*_leftImg8bit.png (official layout), "
            f"{r}/Cityspaces/images/{s}/<city>/... or {r}/images/{s}/<city>/... (course layout)")

    def _lut(self, index):
        return TRAINID_LUT if self._train_ids[index] else ID_TO_TRAINID


# --------------------------------------------------------------------------- GTA5

def _read_split_list(path):
    """Names in a list file, one a line: 'images/00001.png', '00001.jpg' and '00001' all work."""
    names = []
    for line in Path(path).read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name = line.replace("\\", "/").rsplit("/", 1)[-1]
            stem, dot, suffix = name.rpartition(".")
            names.append(stem if dot and f".{suffix.lower()}" in IMAGE_SUFFIXES else name)
    if not names:
        raise DataError(f"split list {path} names no images (expected one name per line)")
    return names


def load_label_mapping(path):
    """256-entry id -> train-id table from an info.json holding "label2train": [[id, tid], ...]."""
    path = Path(path)
    if not path.is_file():
        raise MissingDataError(f"label mapping file not found: {path} (expected a JSON "
                                f"file with \"label2train\": [[id, trainId], ...])")
    try:
        pairs = json.loads(path.read_text())["label2train"]
        return make_id_lut((int(a), int(b)) for a, b in pairs)
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise DataError(f"bad label mapping file {path}: expected JSON with "
                         f"\"label2train\": [[id, trainId], ...] ({e})") from e


class GTA5(_SegmentationFiles):
    """GTA5: root/images/<name>.png and root/labels/<name>.png (images may be .jpg, ...:
    IMAGE_SUFFIXES; labels .png, .bmp or .tif).

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
        self.size = check_size(size)
        self.lut = ID_TO_TRAINID if mapping is None else load_label_mapping(mapping)
        _require_dir(self.root, "GTA5 root")
        image_dir, label_dir = self.root / "images", self.root / "labels"
        _require_dir(image_dir, f"GTA5 image folder (expected {self.root}/images/*.png)")
        images = list_files(image_dir, "*")

        if split is None:
            self.names = sorted(images)
            if not self.names:
                raise MissingDataError(f"no GTA5 images found: expected {image_dir}/*.png "
                                        f"{ANY_SUFFIX}")
        else:
            list_file = self._find_list(split)
            self.names = _read_split_list(list_file)
            missing = [n for n in self.names if n not in images]
            if missing:
                raise MissingDataError(f"split list {list_file} names {len(missing)} image(s) "
                                        f"not in {image_dir}, e.g. {image_dir / missing[0]}.png "
                                        f"{ANY_SUFFIX}")
        self.image_paths = [images[n] for n in self.names]
        self.label_paths = [None] * len(self.names)
        if labelled:
            self._pair_labels(images, label_dir)

    def _pair_labels(self, images, label_dir):
        """labels/<name>.png of each image; an image without a label is an error naming it,
        and so is a label without an image when the folder is the split (no list)."""
        _require_dir(label_dir, f"GTA5 label folder (expected {self.root}/labels/*.png; "
                                f"pass labelled=False to load images only)")
        labels = list_files(label_dir, "*")
        refuse_lossy(labels)
        unlabelled = [n for n in self.names if n not in labels]
        if unlabelled:
            raise MissingDataError(f"{len(unlabelled)} GTA5 image(s) have no label: "
                                    f"{named([images[n] for n in unlabelled])}; expected "
                                    f"{label_dir / unlabelled[0]}.png")
        orphans = sorted(n for n in labels if n not in images) if self.split is None else []
        if orphans:
            raise MissingDataError(f"{len(orphans)} GTA5 label(s) have no image: "
                                    f"{named([labels[n] for n in orphans])}; expected "
                                    f"{self.root / 'images' / orphans[0]}.png {ANY_SUFFIX}")
        self.label_paths = [labels[n] for n in self.names]

    def _find_list(self, split):
        for candidate in (Path(split), self.root / f"{split}.txt", self.root / str(split)):
            if candidate.is_file():
                return candidate
        raise MissingDataError(f"GTA5 split list not found: tried {split} and "
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
            raise MissingDataError(f"pseudo-label folder not found: {self.pseudo_dir}; "
                                    f"{PSEUDO_HINT}")
        present = {p.relative_to(self.pseudo_dir).as_posix()
                   for p in self.pseudo_dir.rglob("*.png")}
        missing = [n for n in images.names if f"{n}.png" not in present]
        if missing:
            raise MissingDataError(f"{len(missing)} of {len(images.names)} pseudo labels missing, "
                                    f"e.g. {self._path(missing[0])}; {PSEUDO_HINT}")

    def _path(self, name):
        return self.pseudo_dir / f"{name}.png"

    def __len__(self):
        return len(self.images)

    def __getitem__(self, index):
        index, generator = _index_and_generator(index)
        item = self.images[index]
        image, name = item["image"], item["name"]
        path = self._path(name)
        if not path.is_file():
            raise MissingDataError(f"pseudo label missing: {path}; {PSEUDO_HINT}")
        label_im = open_image(path)
        _check_same_aspect(label_im.size, image.shape[-1], image.shape[-2], path)
        label = label_tensor(label_im, tuple(image.shape[-2:]), TRAINID_LUT, path)
        return _augmented({"image": image, "name": name}, label, self.transform, generator)


def _augmented(item, label, transform, generator):
    """The item after the workers' part of the augmentation (core.transforms.JointAugment.split):
    geometric ops applied; the photometric parameters, if any, ride along as "photometric" to
    be applied batched on the device (core.runtime.Run.to_device)."""
    params = None
    if transform is not None:
        item["image"], label, params = transform.split(item["image"], label, generator)
    if label is not None:
        item["label"] = label
    if params is not None:
        item["photometric"] = params
    return item


def _check_same_aspect(label_wh, width, height, path):
    """Pseudo labels are resized (nearest) to their image, never stretched to another shape."""
    lw, lh = label_wh
    if abs(lw * height - lh * width) > max(width, height):   # more than a pixel of rounding
        raise DataError(f"pseudo label {path} is {lw}x{lh} but its image is used at "
                        f"{width}x{height} (width x height): another aspect ratio; generate "
                        f"the pseudo labels at the target size of this run (gen_pseudo.py --size)")
