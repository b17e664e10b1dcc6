"""Prepared copies: a training set decoded and resized to its working size once, read fast.

Decoding full-size PNGs, not the network, limits training on a 2-CPU notebook: a Cityscapes
frame costs 70-90 ms to decode and resize to 1024x512, a GTA5 frame and its label about as
much (docs/benchmarks.md). A prepared copy stores what the loader produces before
augmentation, the resized image and the label already mapped to train ids, losslessly: read
back it gives bit-identical items, several times faster. Augmentation still runs per sample.

    python -m core.prepared --source-root data/GTA5 --target-root data/Cityscapes \\
        --prepared data/prepared               # prepare ahead (optional), resumable
    python train_adv.py ... --prepared data/prepared   # read the copies (preparing what is
                                                       # missing or out of date first)

Without --prepared the raw files are read, as always. Formats: `png` (the default; lossless,
about 0.7 MB a 1024x512 frame, a third of the raw PNG; decoding it is the remaining cost) or
`npy` (`--format npy`: raw uint8 arrays, read in about a millisecond, but 1.6 MB a Cityscapes
frame and 3.7 MB a GTA5 pair, about 90 GB for all of GTA5).

Layout:  DIR/prepared.json                     marker: the folder is ours (else never written)
         DIR/<kind>-<H>x<W>-<labels|images>-<source>/manifest.jsonl, images/<name>.png, ...
<source> is a digest of the dataset's root (resolved) and, for GTA5, of its id table
(--mapping): two datasets whose item names are the same (two GTA5 roots, GTA5 with and
without a mapping) each get a copy of their own, and never read, or rewrite, the other's,
even while both train. (A dataset moved to another folder is prepared again.)
manifest.jsonl: a header line (format, size), then one line per prepared item: path, size,
mtime_ns and SHA-1 of each source file, and the label table used; a later line replaces an
earlier one. Each start compares the sources with it: new, changed or missing items are
(re-)prepared; a file with only a new mtime (copied without `cp -p`) is recognised by its hash.
Each file is written atomically and its line appended after it, so preparation resumes.
"""
import contextlib
import fcntl
import hashlib
import json
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from core.decoding import image_tensor
from core.errors import ConfigError, DataError, MissingDataError
from core.logs import json_text
from core.outputs import FOLDERS, claim_folder

# Bump whenever core/decoding.py changes what an item holds: older copies are then refused.
# 2: 16-bit greyscale images scaled to 8 bits (were clipped); copies keyed by their source.
FORMAT_VERSION = 2
FORMATS = ("png", "npy")
MARKER, MANIFEST = FOLDERS["prepared"][0], "manifest.jsonl"   # prepared.json: the folder is ours
# zlib level 1: decoding is no slower than at level 6, the file 10% larger, writing 5x faster.
PNG_LEVEL = 1


# --------------------------------------------------------------------------- the copy

class PreparedCopy:
    """The prepared files of one dataset at one working size (picklable: loader workers)."""

    def __init__(self, folder, fmt, size, labelled):
        self.folder, self.format, self.size, self.labelled = Path(folder), fmt, size, labelled

    def relpaths(self, name):
        kinds = ("images", "labels") if self.labelled else ("images",)
        return [f"{kind}/{name}.{self.format}" for kind in kinds]

    def load(self, name):
        """(uint8 3 x H x W image, uint8 H x W train ids or None) of item `name`."""
        paths = [self.folder / p for p in self.relpaths(name)]
        image = self._read(paths[0], (3, *self.size))
        label = self._read(paths[1], (1, *self.size))[0] if self.labelled else None
        return image, label

    def _read(self, path, shape):
        try:
            if self.format == "npy":
                x = torch.from_numpy(np.load(path))
            else:
                with Image.open(path) as im:
                    im.load()
                x = image_tensor(im, None) if shape[0] == 3 else torch.from_numpy(
                    np.array(im))[None]
        except (OSError, SyntaxError, ValueError) as e:
            if not path.is_file():
                raise MissingDataError(f"prepared file missing: {path}; start again with "
                                       f"--prepared to re-prepare it, or drop --prepared") from e
            raise DataError(f"cannot read prepared file {path}: {e}") from e
        if x.dtype != torch.uint8 or tuple(x.shape) != shape:
            raise DataError(f"prepared file {path} holds a {tuple(x.shape)} {x.dtype} array, "
                            f"expected uint8 {shape}")
        return x

    def write(self, name, image, label):
        """Store one item (image 3 x H x W, label H x W or None), each file atomically."""
        arrays = [image.permute(1, 2, 0).numpy()]           # PNG wants H x W x 3
        if self.labelled:
            arrays.append(label.numpy())
        for rel, array in zip(self.relpaths(name), arrays, strict=True):
            path = self.folder / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
            with open(tmp, "wb") as f:
                if self.format == "npy":
                    np.save(f, array.transpose(2, 0, 1) if array.ndim == 3 else array[None])
                else:
                    Image.fromarray(np.ascontiguousarray(array)).save(
                        f, format="PNG", compress_level=PNG_LEVEL)
            os.replace(tmp, path)


# --------------------------------------------------------------------------- preparing

def use_prepared(dataset, folder, workers=0, fmt=None):
    """Read `dataset` (GTA5 or Cityscapes with a working size) from its prepared copy under
    `folder` from now on, first (re-)preparing the items whose sources are new or changed.

    `fmt` ('png' or 'npy') applies when the copy is created; an existing copy keeps its own.
    """
    if getattr(dataset, "size", None) is None:
        raise ConfigError(f"--prepared needs a working size; {dataset!r} has none")
    top = _claim_folder(Path(folder))
    h, w = dataset.size
    kind = "labels" if dataset.labelled else "images"
    name = f"{type(dataset).__name__.lower()}-{h}x{w}-{kind}"
    if (top / name).is_dir():       # format 1's copy, not keyed by its source: never read
        print(f"note: {top / name} was prepared by an earlier version and is no longer read; "
              f"delete it to free its space", flush=True)
    copy_dir = top / f"{name}-{_source_key(dataset)}"
    copy_dir.mkdir(exist_ok=True)
    with _locked(copy_dir):
        header, entries = _read_manifest(copy_dir, dataset, fmt)
        copy = PreparedCopy(copy_dir, header["format"], dataset.size, dataset.labelled)
        refreshed, todo, why = _compare(dataset, copy, entries)
        if refreshed:
            print(f"{len(refreshed)} source file(s) of {copy_dir} moved or touched since "
                  f"preparing, same content (SHA-1): kept", flush=True)
            _append(copy_dir, refreshed)
        if todo:
            _prepare(dataset, copy, todo, workers, why)
    dataset.prepared = copy
    return dataset


def _source_key(dataset):
    """Which dataset a copy holds: its root and, for GTA5, its id table (Cityscapes' tables
    follow from its files, compared per item like every source file)."""
    h = hashlib.sha1(str(Path(dataset.root).resolve()).encode())
    table = getattr(dataset, "lut", None)
    if table is not None:
        h.update(np.ascontiguousarray(table).tobytes())
    return h.hexdigest()[:10]


def _claim_folder(top):
    """`top` must be new, empty, or marked as ours (MARKER): files we did not write are never
    touched (core.outputs, the guard of every output)."""
    return claim_folder(top, "--prepared", "prepared", content={
        "format_version": FORMAT_VERSION, "made_by": "core/prepared/",
        "note": "copies of datasets at their working sizes; safe to delete (they are made "
                "again on demand)"})


@contextlib.contextmanager
def _locked(copy_dir):
    """One process at a time prepares a copy (DDP ranks, two runs); the others then find it
    complete."""
    with open(copy_dir / ".lock", "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"waiting for another process preparing {copy_dir} ...", flush=True)
            fcntl.flock(handle, fcntl.LOCK_EX)
        for tmp in copy_dir.rglob(".*.tmp*"):     # left by a killed preparation: ours
            tmp.unlink()
        yield


def _read_manifest(copy_dir, dataset, fmt):
    path = copy_dir / MANIFEST
    if fmt is not None and fmt not in FORMATS:
        raise ConfigError(f"prepared format {fmt!r}: expected one of {', '.join(FORMATS)}")
    if not path.is_file():
        header = {"format_version": FORMAT_VERSION, "format": fmt or FORMATS[0],
                  "dataset": type(dataset).__name__, "root": str(Path(dataset.root).resolve()),
                  "size": list(dataset.size), "labelled": dataset.labelled}
        _append(copy_dir, [header])
        return header, {}
    lines = path.read_text().splitlines()
    try:
        header = json.loads(lines[0])
    except (IndexError, json.JSONDecodeError) as e:
        raise DataError(f"{path} has no readable header line; delete {copy_dir} to prepare "
                        f"it again") from e
    if header.get("format_version") != FORMAT_VERSION:
        raise DataError(f"{copy_dir} was prepared by another version (format "
                        f"{header.get('format_version')}, now {FORMAT_VERSION}); delete it to "
                        f"prepare it again")
    if fmt is not None and fmt != header["format"]:
        raise ConfigError(f"{copy_dir} holds {header['format']} files, not {fmt}; prepare "
                          f"{fmt} in another folder")
    entries = {}
    for line in lines[1:]:
        with contextlib.suppress(json.JSONDecodeError):  # a line cut short by a kill
            entry = json.loads(line)
            entries[entry["name"]] = entry
    return header, entries


def _open_manifest(copy_dir):
    """The manifest, open for appending lines."""
    f = open(copy_dir / MANIFEST, "a+b")
    if f.tell() > 0:                               # after a line cut short: start a fresh one
        f.seek(-1, os.SEEK_END)
        if f.read(1) != b"\n":
            f.write(b"\n")
    return f


def _append(copy_dir, records):
    if records:
        with _open_manifest(copy_dir) as f:
            f.write("".join(json_text(r) + "\n" for r in records).encode())


def _compare(dataset, copy, entries):
    """Items whose copy is current (their entry, refreshed if only mtimes moved) and the
    indices of the others, with a count of why they need preparing."""
    present = {p.relative_to(copy.folder).as_posix() for p in copy.folder.rglob(f"*.{copy.format}")}
    refreshed, todo, why = [], [], {"new": 0, "missing": 0, "changed": 0}
    for i, name in enumerate(dataset.names):
        entry = entries.get(name)
        if entry is None or not all(p in present for p in copy.relpaths(name)):
            todo.append(i)
            why["new" if entry is None else "missing"] += 1
            continue
        current = {"name": name, "table": _table_digest(dataset, i)}
        for key, path in _sources(dataset, i).items():
            current[key] = _same_file(entry.get(key), path)
        if None in current.values() or current["table"] != entry.get("table"):
            todo.append(i)
            why["changed"] += 1
        elif current != entry:
            refreshed.append(current)
    return refreshed, todo, why


def _sources(dataset, i):
    out = {"image": dataset.image_paths[i]}
    if dataset.labelled:
        out["label"] = dataset.label_paths[i]
    return out


def _table_digest(dataset, i):
    """Digest of the id -> train id table the item's label goes through (None: no label)."""
    if not dataset.labelled:
        return "none"
    return hashlib.sha1(np.ascontiguousarray(dataset._lut(i)).tobytes()).hexdigest()[:16]


def _source_record(path):
    st = os.stat(path)
    return [os.path.abspath(path), st.st_size, st.st_mtime_ns, _sha1(path)]


def _same_file(record, path):
    """The record of `path` if its content is the recorded one (refreshed), else None."""
    try:
        st = os.stat(path)
    except FileNotFoundError as e:
        raise MissingDataError(f"file disappeared since the dataset was built: {path}") from e
    if not record or record[1] != st.st_size:
        return None
    if record[0] == os.path.abspath(path) and record[2] == st.st_mtime_ns:
        return record
    sha = _sha1(path)   # moved or touched: the same bytes need no preparing again
    return [os.path.abspath(path), st.st_size, st.st_mtime_ns, sha] if sha == record[3] else None


def _sha1(path):
    h = hashlib.sha1()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class _Preparer(Dataset):
    """Item k: decode raw item todo[k] as the dataset does, write its copy, return its
    manifest line. Runs in the loader workers, so preparation uses every --workers core."""

    def __init__(self, dataset, copy, todo):
        self.dataset, self.copy, self.todo = dataset, copy, todo

    def __len__(self):
        return len(self.todo)

    def __getitem__(self, k):
        i = self.todo[k]
        entry = {"name": self.dataset.names[i], "table": _table_digest(self.dataset, i)}
        # Recorded before decoding: a file changed meanwhile shows up as changed next time.
        entry.update({key: _source_record(p) for key, p in _sources(self.dataset, i).items()})
        self.copy.write(entry["name"], *self.dataset.decode(i))
        return entry


def _as_is(entry):
    return entry


def _prepare(dataset, copy, todo, workers, why):
    reasons = ", ".join(f"{n} {k}" for k, n in why.items() if n)
    print(f"preparing {len(todo)} of {len(dataset)} items ({reasons}) of {dataset!r} into "
          f"{copy.folder}: once, resumable", flush=True)
    # A generator of its own: a loader draws its workers' base seed from the global RNG,
    # and a run that prepares must initialise its networks as one that does not.
    loader = DataLoader(_Preparer(dataset, copy, todo), batch_size=None, num_workers=workers,
                        collate_fn=_as_is, generator=torch.Generator())
    with _open_manifest(copy.folder) as manifest:
        for entry in tqdm(loader, total=len(todo), desc="preparing", mininterval=2.0):
            manifest.write((json_text(entry) + "\n").encode())
            manifest.flush()        # a line per item as its files land: a kill loses one item

