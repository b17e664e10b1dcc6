"""Before a run's first step: what its data must hold, and with --dry-run, its plan.

    run.check_data(source_set, val_set, target_set)   # check_datasets, at every start
    run.begin(parts, iters_per_epoch)                 # --dry-run: print_plan, then exit 0

Data (rank 0, every start; --dry-run also prints what was found):

- Every file opens (headers only): a broken one is named now, not after an epoch.
- Every label has its image's aspect ratio: a label of another shape would be stretched onto
  it. Labels a few pixels off their image (real GTA5 has 1914x1046 labels for 1914x1052
  images) are resized independently, as the reference loaders do, and named in a note.
- Labels can teach something: in an evenly spaced sample of each labelled set, some pixel
  is of one of the 19 classes, and at most half the pixels hold ids that no table maps
  (labels of unknown ids, or id PNGs saved as RGB, would train to a loss of 0).
"""
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np

from core.build import poly_horizon
from core.checkpoint import load_checkpoint
from core.datasets import PseudoLabelDataset, _header
from core.decoding import TRAINID_LUT, DataWarning, label_tensor, open_image, unknown_id_mask
from core.errors import DataError
from core.labels import IGNORE_INDEX, NUM_CLASSES, PALETTE, VOID_COLORS
from core.outputs import check_run_folder

SAMPLED_LABELS = 32         # label files decoded per set at start: a second or two
MOST_UNKNOWN = 0.5          # more than this share of unknown-id pixels: not a labelled set
# A label may differ from its image's aspect ratio by a pixel of rounding or by 1%: GTA5's
# short labels are 6 rows of 1052 (0.6%) off.
ASPECT_TOLERANCE = 0.01
KNOWN_COLORS = {tuple(int(c) for c in rgb) for rgb in PALETTE} | set(VOID_COLORS.values())


class LabelledFile(NamedTuple):
    name: str
    image: object           # paths
    label: object
    lut: np.ndarray         # the id -> train id table of this label file


@dataclass
class Census:
    """Pixels of the sampled label files of one set: of a class, ignored, of unknown ids."""
    files: list = field(default_factory=list)
    pixels: int = 0
    known: int = 0
    unknown: int = 0
    values: Counter = field(default_factory=Counter)        # id or colour -> pixels
    unknown_values: set = field(default_factory=set)
    unknown_files: list = field(default_factory=list)

    def line(self):
        ignored = 1 - self.known / max(self.pixels, 1)
        unknown = (f"unknown ids {_values(self.unknown_values)} in {len(self.unknown_files)} "
                   f"file(s)" if self.unknown_files else "no unknown id")
        return f"{len(self.files)} label files sampled: {ignored:.1%} of pixels ignored, {unknown}"


@dataclass
class DataReport:
    """What check_datasets found: images per set, label censuses, labels resized to fit."""
    images: dict = field(default_factory=dict)
    census: dict = field(default_factory=dict)
    resized: dict = field(default_factory=dict)

    def notes(self):
        return [f"note: {len(names)} label(s) of the {role} set are not the size of their "
                f"image (the same shape, give or take a few pixels); both are resized to the "
                f"working size independently: " + ", ".join(names[:10])
                + (" ..." if len(names) > 10 else "")
                for role, names in self.resized.items() if names]

    def lines(self):
        return [f"{role}: {count} images" + (f"; {self.census[role].line()}"
                                             if role in self.census else " (labels not read)")
                for role, count in self.images.items()]


def check_datasets(sets, dry_run=False):
    """Check every set of `sets` ({role: dataset or None}); raises DataError naming the
    files. Prints the notes, and with `dry_run` what was found; returns the DataReport."""
    report = DataReport()
    for role, dataset in ((r, d) for r, d in sets.items() if d is not None):
        report.images[role] = len(dataset)
        files = labelled_files(dataset)
        if not files:
            dataset.verify_readable()
            continue
        report.resized[role] = resized_labels(role, files)
        report.census[role] = label_census(role, files)
    for line in report.notes():
        print(line, flush=True)
    if dry_run:
        print("dry run: every file opens; images per set, and labels sampled evenly:\n  "
              + "\n  ".join(report.lines()), flush=True)
    return report


def print_plan(args, script, iters_per_epoch):
    """--dry-run: the iterations the run would make, and whether --out would open (read only:
    the folder is neither created nor written)."""
    out = Path(args.out)
    check_run_folder(out, script, resume=bool(args.resume))
    start = load_checkpoint(args.resume, mmap=True)["iteration"] if args.resume else 0
    epochs = min(args.epochs, args.stop_after or args.epochs)
    print(f"plan: {iters_per_epoch} iterations per epoch x {args.epochs} epochs = "
          f"{iters_per_epoch * args.epochs} iterations; poly LR horizon "
          f"{poly_horizon(args, iters_per_epoch)}; this session: iterations {start} to "
          f"{epochs * iters_per_epoch}", flush=True)
    print(f"dry run: nothing written ({out} {'exists' if out.exists() else 'not created'})",
          flush=True)


def labelled_files(dataset):
    """(name, image path, label path, id table) of every labelled item; [] if unlabelled."""
    if isinstance(dataset, PseudoLabelDataset):
        inner = dataset.images
        return [LabelledFile(n, image, dataset._path(n), TRAINID_LUT)
                for n, image in zip(inner.names, inner.image_paths, strict=True)]
    if not dataset.labelled:
        return []
    return [LabelledFile(n, image, label, dataset._lut(i)) for i, (n, image, label) in
            enumerate(zip(dataset.names, dataset.image_paths, dataset.label_paths, strict=True))]


# --------------------------------------------------------------------------- shapes

def same_aspect(label_wh, image_wh):
    """Whether the label, scaled to its image's width, is its image's height give or take a
    pixel of rounding or ASPECT_TOLERANCE."""
    (lw, lh), (iw, ih) = label_wh, image_wh
    return abs(lh * iw / lw - ih) <= max(1.0, ASPECT_TOLERANCE * ih)


def resized_labels(role, files):
    """Names of the labels not the size of their image (headers of every file: each must
    open); a label of another aspect ratio is an error naming both sizes."""
    resized, stretched = [], []
    for f in files:
        with _header(f.image) as image, _header(f.label) as label:
            (iw, ih), (lw, lh) = image.size, label.size
        if (iw, ih) == (lw, lh):
            continue
        if not same_aspect((lw, lh), (iw, ih)):
            stretched.append(f"{f.label} is {lw}x{lh} but its image {f.image} is {iw}x{ih}")
        resized.append(f"{f.name} (image {iw}x{ih}, label {lw}x{lh})")
    if stretched:
        more = f" (and {len(stretched) - 1} more)" if len(stretched) > 1 else ""
        raise DataError(f"{role} label {stretched[0]} (width x height){more}: another aspect "
                        f"ratio, so the label would be stretched onto its image; labels must "
                        f"have their image's shape")
    return resized


# --------------------------------------------------------------------------- label census

def evenly_spaced(n, k=SAMPLED_LABELS):
    """Up to k indices spread evenly over range(n), first and last included: the same
    files at every start."""
    if n <= k:
        return list(range(n))
    return sorted({round(i * (n - 1) / (k - 1)) for i in range(k)})


def label_census(role, files):
    """Census of an evenly spaced sample of the label files; raises DataError when they
    cannot teach: no pixel of any class, or mostly unknown ids."""
    census = Census()
    for i in evenly_spaced(len(files)):
        add_label_file(census, files[i])
    if census.known == 0:
        raise DataError(f"{role} labels hold nothing to learn: no pixel of the "
                        f"{len(census.files)} sampled label files is of one of the "
                        f"{NUM_CLASSES} classes; {_found(census)}; files: "
                        f"{_paths(census.files)}")
    if census.unknown > MOST_UNKNOWN * census.pixels:
        raise DataError(f"{role} labels are mostly unknown ids: "
                        f"{census.unknown / census.pixels:.0%} of the pixels of the "
                        f"{len(census.files)} sampled label files; {_found(census)}; files: "
                        f"{_paths(census.unknown_files)}")
    return census


def add_label_file(census, f):
    """Add one label file's pixels: its train ids as the loaders map them, its raw values
    (ids, or colours of an RGB file) and which of them no table knows."""
    im = open_image(f.label)
    with warnings.catch_warnings():          # the census reports unknown ids itself
        warnings.simplefilter("ignore", DataWarning)
        train_ids = label_tensor(im, None, f.lut, f.label).numpy()
    values = np.asarray(im)
    if values.ndim == 3:
        counts = _colour_counts(values[..., :3])
        unknown = {v for v in counts if v not in KNOWN_COLORS}
    else:
        counts = _id_counts(values)
        mask = unknown_id_mask(f.lut)
        unknown = {v for v in counts if not 0 <= v < 256 or mask[v]}
    census.files.append(f.label)
    census.pixels += train_ids.size
    census.known += int((train_ids != IGNORE_INDEX).sum())
    census.values.update(counts)
    if unknown:
        census.unknown += sum(counts[v] for v in unknown)
        census.unknown_values |= unknown
        census.unknown_files.append(f.label)


def _id_counts(ids):
    if ids.dtype == np.uint8:        # palette and 8-bit labels: one pass
        counts = np.bincount(ids.ravel(), minlength=256)
        values = np.flatnonzero(counts)
        return Counter(dict(zip(values.tolist(), counts[values].tolist(), strict=True)))
    values, counts = np.unique(ids, return_counts=True)
    return Counter(dict(zip(values.tolist(), counts.tolist(), strict=True)))


def _colour_counts(rgb):
    packed = (rgb[..., 0].astype(np.uint32) << 16) | (rgb[..., 1].astype(np.uint32) << 8) \
        | rgb[..., 2]
    values, counts = np.unique(packed, return_counts=True)
    return Counter({(v >> 16, (v >> 8) & 255, v & 255): c
                    for v, c in zip(values.tolist(), counts.tolist(), strict=True)})


def _found(census):
    """The values found, most frequent first, and which of them no table maps."""
    colours = [isinstance(v, tuple) for v in census.values]
    kind = "colours" if all(colours) else "ids and colours" if any(colours) else "ids"
    found = [v for v, _ in census.values.most_common()]
    notes = [f"unknown: {_values(census.unknown_values)}"] if census.unknown_values else []
    if kind == "colours" and all(len(set(v)) == 1 for v in found):
        notes.append("all grey: an id PNG saved as RGB?")
    return f"{kind} found: {_values(found)}" + (f" ({'; '.join(notes)})" if notes else "")


def _values(values, shown=8):
    values = sorted(values) if isinstance(values, set) else list(values)
    text = ", ".join(str(v) for v in values[:shown])
    return text + (f" ... ({len(values)} in all)" if len(values) > shown else "")


def _paths(paths):
    return _values([str(p) for p in paths], shown=3)
