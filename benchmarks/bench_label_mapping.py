"""Label path of the GTA5 loader: one lookup table versus the usual per-class loop.

    .venv/bin/python benchmarks/bench_label_mapping.py [--images 6] [--repeats 4]

Generates GTA5-sized (1914x1052) palette label PNGs in a temporary folder (index = Cityscapes
label id, blocks of several ids laid out like a street scene), then times, per label file:
    ours      core.datasets.read_label: decode (Pillow) + resize to 1280x720 (nearest) + LUT
    per-class the same decode and resize, then `for k, v in mapping: out[label == k] = v`,
              the mapping loop found in many public GTA5/Cityscapes loaders
Both produce identical train ids (checked). Prints images/s for each (from the median time
per file) and the ratio, plus the share of decode + resize, which both routes pay.
"""
import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `core` lives at the repo root
from core.datasets import read_label  # noqa: E402
from core.labels import ID_TO_TRAINID, NUM_CLASSES, TRAIN_LABEL_IDS  # noqa: E402

GTA_W, GTA_H = 1914, 1052
SIZE = (720, 1280)  # (H, W) working size of GTA5


def street_scene(rng):
    """Label ids roughly where they are in a driving frame: sky, buildings, road, things."""
    ids = np.zeros((GTA_H, GTA_W), np.uint8)
    horizon = int(GTA_H * rng.uniform(0.4, 0.55))
    ids[:horizon] = 23  # sky
    x = 0
    while x < GTA_W:  # a skyline of buildings, walls, vegetation
        w = int(rng.integers(80, 300))
        top = int(rng.integers(50, horizon))
        ids[top:horizon, x:x + w] = rng.choice([11, 11, 12, 21])
        x += w
    ids[horizon:] = 7  # road
    ids[horizon:, : GTA_W // 6] = 8  # sidewalks
    ids[horizon:, -GTA_W // 6:] = 8
    ids[int(GTA_H * 0.9):] = 1  # ego vehicle (void)
    for _ in range(int(rng.integers(15, 30))):  # cars, people, signs, poles, terrain, void
        label_id = int(rng.choice([26, 26, 26, 24, 25, 27, 28, 20, 19, 22, 13, 4, 5, 32, 33]))
        h, w = int(rng.integers(20, 200)), int(rng.integers(20, 300))
        y, x = int(rng.integers(horizon - h // 2, GTA_H - h)), int(rng.integers(0, GTA_W - w))
        ids[y:y + h, x:x + w] = label_id
    for x in rng.integers(0, GTA_W - 8, 10):  # thin poles
        ids[int(rng.integers(100, horizon)):horizon + 50, x:x + 8] = 17
    return ids


def write_labels(folder, n, seed=0):
    rng = np.random.default_rng(seed)
    palette = rng.integers(0, 256, 768, dtype=np.uint8).tobytes()
    paths = []
    for i in range(n):
        ids = street_scene(rng)
        im = Image.frombytes("P", (GTA_W, GTA_H), ids.tobytes())  # index = label id, as GTA5
        im.putpalette(palette)
        paths.append(Path(folder) / f"{i + 1:05d}.png")
        im.save(paths[-1])
    return paths


def decode_and_resize(path, size):
    """The part both routes share (for the breakdown)."""
    with Image.open(path) as im:
        im.load()
    return np.asarray(im.resize((size[1], size[0]), Image.Resampling.NEAREST))


def per_class_loop(path, size, mapping):
    """What many public loaders do: decode, resize, then one masked write per class."""
    with Image.open(path) as im:
        im.load()
    label = np.asarray(im.resize((size[1], size[0]), Image.Resampling.NEAREST))
    out = np.full(label.shape, 255, dtype=np.uint8)
    for k, v in mapping:
        out[label == k] = v
    return torch.from_numpy(out)


def median_seconds(routes, paths, repeats):
    """Median seconds per call of each route. Calls are interleaved (route A, B, C on the same
    file, then the next file) and the median taken, so that background load on a shared
    machine hits all routes alike and a few slow outliers do not decide the result."""
    for fn in routes.values():
        fn(paths[0])  # warm-up: first calls allocate and build caches
    times = {name: [] for name in routes}
    for _ in range(repeats):
        for p in paths:
            for name, fn in routes.items():
                start = time.perf_counter()
                fn(p)
                times[name].append(time.perf_counter() - start)
    return {name: float(np.median(t)) for name, t in times.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=8, help="label files to generate")
    parser.add_argument("--repeats", type=int, default=10, help="passes over the files")
    args = parser.parse_args()

    mapping = list(zip(TRAIN_LABEL_IDS, range(NUM_CLASSES), strict=True))
    with tempfile.TemporaryDirectory() as tmp:
        paths = write_labels(tmp, args.images)
        for p in paths:  # same answer from both routes, or the timing means nothing
            assert torch.equal(read_label(p, SIZE, ID_TO_TRAINID),
                               per_class_loop(p, SIZE, mapping))
        t = median_seconds({
            "ours": lambda p: read_label(p, SIZE, ID_TO_TRAINID),
            "loop": lambda p: per_class_loop(p, SIZE, mapping),
            "shared": lambda p: decode_and_resize(p, SIZE),
        }, paths, args.repeats)

    print(f"label path, {GTA_W}x{GTA_H} palette PNG -> {SIZE[1]}x{SIZE[0]} train ids, "
          f"{args.images} files x {args.repeats} passes, torch threads {torch.get_num_threads()}")
    print(f"  ours (lookup table):  {1 / t['ours']:7.1f} images/s")
    print(f"  per-class loop:       {1 / t['loop']:7.1f} images/s")
    print(f"  ratio:                {t['loop'] / t['ours']:7.2f}x")
    print(f"  median ms per image: decode + resize {1e3 * t['shared']:.2f} (both routes), "
          f"whole path {1e3 * t['ours']:.2f} (table) vs {1e3 * t['loop']:.2f} (loop)")

if __name__ == "__main__":
    main()
