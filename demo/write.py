"""Frames and files: render a frame, write the demo tree (safely), and inspect one."""
from __future__ import annotations

import json
import multiprocessing
import os
import shutil
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from core.labels import (
    CLASS_NAMES,
    IGNORE_INDEX,
    NUM_CLASSES,
    PALETTE,
    TRAIN_LABEL_IDS,
    VOID_COLORS,
    ids_to_trainids,
)
from demo.draw import draw_scene
from demo.palette import CAR_PAINT
from demo.scene import SOURCE_PRIOR, TARGET_PRIOR, sample_scene
from demo.style import SOURCE_STYLE, TARGET_STYLE, render_style

FORMAT_VERSION = 1  # bump whenever the generated pictures change, so ensure_demo regenerates
# <repo>/data/demo; SEGDA_DEMO_ROOT moves it (the tests put it in a temporary folder).
DEMO_ROOT = Path(os.environ.get("SEGDA_DEMO_ROOT")
                 or Path(__file__).resolve().parents[1] / "data" / "demo")

SOURCE_SIZE = (288, 512)  # H x W: GTA-like 16:9
TARGET_SIZE = (256, 512)  # Cityscapes 2:1
SOURCE_VAL_FRACTION = 0.2
TARGET_TRAIN_CITIES = ("demotown", "demoville")
TARGET_VAL_CITIES = ("democity",)
STREAM_SOURCE, STREAM_TARGET_TRAIN, STREAM_TARGET_VAL = 0, 1, 2
MARKER = "demo.json"                                   # written last: the tree is complete
DEMO_ENTRIES = frozenset({"gta5", "cityscapes", MARKER})   # all a demo tree holds at its top


DOMAINS = {
    # domain: (image size, scene prior, style, bonnet height range, bonnet colours)
    "source": (SOURCE_SIZE, SOURCE_PRIOR, SOURCE_STYLE, (0.0, 0.08), CAR_PAINT),
    "target": (TARGET_SIZE, TARGET_PRIOR, TARGET_STYLE, (0.06, 0.1), ((40, 42, 46),)),
}


def render_frame(seed, stream, index):
    """One (image H x W x 3 uint8, label ids H x W uint8) pair, determined by its three ids."""
    rng = np.random.default_rng([seed, stream, index])
    size, prior, style, hood_range, hood_colors = DOMAINS[
        "source" if stream == STREAM_SOURCE else "target"]
    scene = sample_scene(rng, prior, *size, hood_range=hood_range, hood_colors=hood_colors)
    cv = draw_scene(scene, rng)
    return render_style(cv, style, rng), cv.label


def palette_bytes():
    """256-entry PNG palette: Cityscapes colour of each label id (GTA5 label files carry it)."""
    pal = np.zeros((256, 3), dtype=np.uint8)
    pal[list(TRAIN_LABEL_IDS)] = PALETTE
    for label_id, color in VOID_COLORS.items():
        pal[label_id] = color
    return pal.tobytes()


@dataclass(frozen=True)
class DemoPaths:
    root: Path
    source: Path             # GTA5 layout root: images/, labels/, train.txt, val.txt
    target: Path             # Cityscapes layout root: leftImg8bit/, gtFine/
    source_train_list: Path
    source_val_list: Path

    @classmethod
    def of(cls, root):
        root = Path(root)
        return cls(root=root, source=root / "gta5", target=root / "cityscapes",
                   source_train_list=root / "gta5" / "train.txt",
                   source_val_list=root / "gta5" / "val.txt")


def _marker(seed, n_source, n_target_train, n_target_val):
    return {"format_version": FORMAT_VERSION, "seed": int(seed), "n_source": int(n_source),
            "n_target_train": int(n_target_train), "n_target_val": int(n_target_val)}


def target_frames(n_train, n_val):
    """(split, city, stem, stream, index) of each target frame; train frames over two cities."""
    frames = []
    for split, n, cities, stream in (("train", n_train, TARGET_TRAIN_CITIES, STREAM_TARGET_TRAIN),
                                     ("val", n_val, TARGET_VAL_CITIES, STREAM_TARGET_VAL)):
        for i in range(n):
            city = cities[i * len(cities) // max(n, 1)]
            frames.append((split, city, f"{city}_000000_{i:06d}", stream, i))
    return frames


def write_frame(task):
    """Render one frame and write its image and label files (runs in a worker process)."""
    seed, stream, index, image_path, label_path = task
    image, label = render_frame(seed, stream, index)
    # Images compress poorly anyway (noise, texture); level 1 is 3-4x faster than the default.
    Image.fromarray(image).save(image_path, compress_level=1)
    if stream == STREAM_SOURCE:
        # Palette PNG whose pixel index is the label id, as the real GTA5 label files are.
        lab = Image.frombytes("P", (label.shape[1], label.shape[0]), label.tobytes())
        lab.putpalette(palette_bytes())
        lab.save(label_path)
    else:
        Image.fromarray(label).save(label_path)   # single-channel label ids, like gtFine


def _write_tree(out, seed, n_source, n_target_train, n_target_val, workers):
    src, tgt = out / "gta5", out / "cityscapes"
    (src / "images").mkdir(parents=True)
    (src / "labels").mkdir()
    names = [f"{i + 1:05d}" for i in range(n_source)]
    tasks = [(seed, STREAM_SOURCE, i, src / "images" / f"{name}.png",
              src / "labels" / f"{name}.png") for i, name in enumerate(names)]
    n_val = min(max(round(n_source * SOURCE_VAL_FRACTION), 1), n_source - 1) if n_source > 1 else 0
    (src / "train.txt").write_text("".join(f"{n}\n" for n in names[:n_source - n_val]))
    (src / "val.txt").write_text("".join(f"{n}\n" for n in names[n_source - n_val:]))

    for split, city, stem, stream, index in target_frames(n_target_train, n_target_val):
        img_dir, gt_dir = tgt / "leftImg8bit" / split / city, tgt / "gtFine" / split / city
        img_dir.mkdir(parents=True, exist_ok=True)
        gt_dir.mkdir(parents=True, exist_ok=True)
        tasks.append((seed, stream, index, img_dir / f"{stem}_leftImg8bit.png",
                      gt_dir / f"{stem}_gtFine_labelIds.png"))

    if workers > 1 and len(tasks) > 1:
        # Frames are independent (own RNG each), so order and process do not matter. 'spawn'
        # rather than fork: the caller may have started threads (torch, BLAS).
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(workers, mp_context=ctx) as pool:
            list(pool.map(write_frame, tasks, chunksize=8))
    else:
        for task in tasks:
            write_frame(task)
    marker = _marker(seed, n_source, n_target_train, n_target_val)
    (out / MARKER).write_text(json.dumps(marker, indent=2, allow_nan=False) + "\n")


class DemoRootError(FileExistsError):
    """`root` holds something the demo did not write: generating there would destroy it."""


def _read_marker(root):
    try:
        return json.loads((root / MARKER).read_text())
    except (OSError, ValueError):
        return None


def foreign_entries(root):
    """Names at the top of the folder `root` that the demo did not write ([] if it may go).

    A demo tree carries the marker file and nothing else at its top but DEMO_ENTRIES; without
    the marker nothing there is known to be the demo's, so every entry counts as foreign. One
    listing of the folder answers both, so a tree renamed meanwhile is not half-seen.
    """
    with os.scandir(root) as it:
        entries = {e.name: e for e in it}
    marker = entries.get(MARKER)
    if marker is None or not marker.is_file(follow_symlinks=False):
        return sorted(entries)
    return sorted(set(entries) - DEMO_ENTRIES)


def check_replaceable(root):
    """Raise DemoRootError unless `root` is absent, an empty folder or a demo tree.

    The project never deletes what it did not write: generate_demo replaces `root` only then.
    """
    if root.is_symlink():
        raise DemoRootError(f"{root} is a symbolic link, not a folder the demo wrote; "
                            "choose another --root")
    try:
        foreign = foreign_entries(root)
    except FileNotFoundError:
        return                           # absent (or another run moved it aside meanwhile)
    except NotADirectoryError:
        raise DemoRootError(f"{root} is a file, not a folder; choose another --root") from None
    if foreign:
        shown = ", ".join(foreign[:8])
        if len(foreign) > 8:
            shown += f" and {len(foreign) - 8} more"
        raise DemoRootError(f"{root} holds files that the demo did not write: {shown}; "
                            "choose another --root or empty it")


def _install(tmp, root, old, marker):
    """Rename the finished tree `tmp` to `root`, moving a previous demo tree there to `old`."""
    check_replaceable(root)              # again: `root` may have changed while we rendered
    try:
        root.rename(old)
    except FileNotFoundError:
        pass                             # nothing there (or another run moved it meanwhile)
    try:
        tmp.rename(root)
    except OSError as e:
        # Another run generating the same root finished first. The same tree: keep it and
        # discard ours. Anything else: not ours to replace behind the user's back.
        try:
            same = _read_marker(root) == marker and not foreign_entries(root)
        except OSError:
            same = False
        if same:
            return
        if not root.exists():
            if old.exists():
                old.rename(root)         # put the previous tree back
            raise
        raise DemoRootError(f"{root} was written by another process meanwhile; run again "
                            "when it has finished") from e


def generate_demo(root, seed=0, n_source=200, n_target_train=160, n_target_val=60,
                  workers=None):
    """Write the demo pair under `root`, replacing a demo tree or an empty folder there.

    Raises DemoRootError (a FileExistsError) before writing anything if `root` holds files
    that the demo did not write (see check_replaceable). Written into a temporary sibling
    folder and renamed into place, so an interrupted run never leaves a half-made tree behind
    at `root`, and two runs at once leave one whole tree. `workers`: processes to render with
    (default: up to 2 for a full-size pair, 1 for small ones, where start-up would dominate).
    """
    root = Path(root)
    check_replaceable(root)
    total = n_source + n_target_train + n_target_val
    if workers is None:
        workers = min(2, os.cpu_count() or 1) if total >= 60 else 1
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = root.parent / f".{root.name}.tmp-{os.getpid()}"
    old = root.parent / f".{root.name}.old-{os.getpid()}"
    for stale in (tmp, old):             # our own leftovers from a killed run with this pid
        shutil.rmtree(stale, ignore_errors=True)
    try:
        _write_tree(tmp, seed, n_source, n_target_train, n_target_val, workers)
        _install(tmp, root, old, _marker(seed, n_source, n_target_train, n_target_val))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)


def ensure_demo(root=DEMO_ROOT, seed=0):
    """The default demo pair at `root`, generated on first use or when its marker disagrees.

    Like generate_demo, it raises DemoRootError rather than replace a folder it did not write.
    """
    root = Path(root)
    if _read_marker(root) != _marker(seed, 200, 160, 60):
        generate_demo(root, seed=seed)
    return DemoPaths.of(root)


# ---------------------------------------------------------------------------------------------
# Inspection
# ---------------------------------------------------------------------------------------------

def label_files(paths):
    """{split name: [label file, ...]} for the four splits of a demo tree."""
    names = {split: paths.source_train_list if split == "train" else paths.source_val_list
             for split in ("train", "val")}
    out = {}
    for split, lst in names.items():
        out[f"gta5 {split}"] = [paths.source / "labels" / f"{n}.png"
                                for n in lst.read_text().split()]
    for split in ("train", "val"):
        out[f"cityscapes {split}"] = sorted(
            (paths.target / "gtFine" / split).glob("*/*_gtFine_labelIds.png"))
    return out


def class_frequencies(files):
    """Fraction of pixels per train id (19 classes, then ignore) over a list of label files."""
    counts = np.zeros(256, dtype=np.int64)
    for f in files:
        counts += np.bincount(ids_to_trainids(np.asarray(Image.open(f))).ravel(), minlength=256)
    freq = np.append(counts[:NUM_CLASSES], counts[IGNORE_INDEX]).astype(np.float64)
    return freq / max(counts.sum(), 1)


def frequency_table(paths):
    files = label_files(paths)
    freqs = {name: class_frequencies(fs) for name, fs in files.items()}
    head = f"{'class':<14}" + "".join(f"{name:>17}" for name in freqs)
    lines = [head, f"{'frames':<14}" + "".join(f"{len(fs):>17}" for fs in files.values())]
    for c, cname in enumerate(CLASS_NAMES + ("(ignore)",)):
        lines.append(f"{cname:<14}" + "".join(f"{100 * f[c]:>16.2f}%" for f in freqs.values()))
    return "\n".join(lines)

