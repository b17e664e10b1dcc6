"""Training-loader throughput: the raw files versus the prepared copy (core/prepared/).

    .venv/bin/python benchmarks/bench_loader.py                    # generated full-size frames
    .venv/bin/python benchmarks/bench_loader.py --gta5-root data/GTA5 \\
        --cityscapes-root data/Cityscapes                          # the first --frames of each

Images/s of the training loaders as the scripts build them (core.sampling.make_loader:
EpochSampler, batches, worker processes), for
    source  GTA5 at 1280x720 with labels, without and with --aug flip,jitter,blur
    target  Cityscapes train at 1024x512, images only (never augmented in training;
            --target-aug adds that row too)
by two routes, at 1, 2 and 4 workers:
    raw       decode + resize + label mapping per item (the default)
    prepared  the same items read from the copy that `--prepared DIR` makes once
Workers persist across passes. After a warm-up pass, each measurement runs whole passes for at
least --seconds; the two routes alternate, so background load hits both alike; the median of
--repeats is reported. The last two lines give the prepared/raw ratio at equal workers.
Without roots, full-size frames are generated in a temporary folder: demo scenes upscaled to
Cityscapes' 2048x1024 and GTA5's 1914x1052 (a few GTA5 labels at another size, as in the real
set), with sensor noise so that the PNGs are as large as real ones (about 2 MB).
The prepared copy goes to a temporary folder, never next to the data.

    .venv/bin/python benchmarks/bench_loader.py --train --device cuda --workers 4 8

--train also measures what training consumes: BiSeNet-R18 steps as train_source.py runs them
with --amp (forward, the three outputs' cross-entropy, backward, fused SGD; no grad scaler)
at the loader's batch and GTA5 size, on one batch kept on --device; a last table gives each
loader's images/s as a share of that (1.00x or more: the loader keeps up, below: the device
waits for it). Meant for a GPU: on a CPU the two compete for the same cores.

    .venv/bin/python benchmarks/bench_loader.py --aug [--device cuda]

--aug compares, at equal workers, where the photometric augmentation (jitter, blur) runs on
GTA5 at 1280x720 with flip,jitter,blur: in the workers, item by item (as before), or drawn
there and applied batched on --device after the transfer (core.transforms.apply_photometric,
as the training scripts do now); the second route's images/s include that device time.
"""
import argparse
import copy
import statistics
import sys
import tempfile
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `core`, `demo` live at the repo root
from core.build import fused  # noqa: E402
from core.datasets import GTA5, Cityscapes  # noqa: E402
from core.labels import NUM_CLASSES  # noqa: E402
from core.losses import cross_entropy, seg_loss_sum  # noqa: E402
from core.models import build_model  # noqa: E402
from core.precision import amp_dtype, set_memory_format  # noqa: E402
from core.prepared import use_prepared  # noqa: E402
from core.sampling import make_loader  # noqa: E402
from core.transforms import apply_photometric, build_transforms, normalize  # noqa: E402
from demo import render_frame  # noqa: E402
from demo.write import STREAM_SOURCE, STREAM_TARGET_TRAIN, palette_bytes  # noqa: E402

GTA5_SIZE, CITY_SIZE = (720, 1280), (512, 1024)      # working sizes (H, W)
GTA5_FULL, CITY_FULL = (1914, 1052), (2048, 1024)    # file sizes (W, H)
AUG = "flip,jitter,blur"


# --------------------------------------------------------------------------- generated frames

def write_frame(task):
    """One full-size frame: a demo scene upscaled, with luminance noise (PNG size of a photo)."""
    kind, i, image_path, label_path = task
    image, ids = render_frame(0, STREAM_SOURCE if kind == "gta5" else STREAM_TARGET_TRAIN, i)
    w, h = GTA5_FULL if kind == "gta5" else CITY_FULL
    big = np.asarray(Image.fromarray(image).resize((w, h), Image.Resampling.BICUBIC), np.int16)
    noise = np.random.default_rng(i).normal(0, 1.0, (h, w)).round().astype(np.int16)
    big = np.clip(big + noise[..., None], 0, 255).astype(np.uint8)
    Image.fromarray(big).save(image_path, compress_level=3)
    if kind == "gta5" and i % 8 == 7:
        w, h = 1920, 1080          # a label of another size than its image
    label = Image.fromarray(ids).resize((w, h), Image.Resampling.NEAREST)
    if kind == "gta5":             # palette PNG, index = Cityscapes label id
        label = Image.frombytes("P", label.size, label.tobytes())
        label.putpalette(palette_bytes())
    label.save(label_path)


def generate(root, frames):
    gta, city = root / "gta5", root / "cityscapes"
    for d in (gta / "images", gta / "labels", city / "leftImg8bit/train/bench",
              city / "gtFine/train/bench"):
        d.mkdir(parents=True)
    tasks = []
    for i in range(frames):
        tasks.append(("gta5", i, gta / f"images/{i:05d}.png", gta / f"labels/{i:05d}.png"))
        stem = f"train/bench/bench_000000_{i:06d}"
        tasks.append(("city", i, city / f"leftImg8bit/{stem}_leftImg8bit.png",
                      city / f"gtFine/{stem}_gtFine_labelIds.png"))
    with ProcessPoolExecutor(2) as pool:
        list(pool.map(write_frame, tasks))
    return gta, city


# --------------------------------------------------------------------------- measuring

def first(dataset, n):
    """The dataset cut to its first n items (a benchmark needs no more)."""
    for name in ("names", "image_paths", "label_paths", "_train_ids"):
        if hasattr(dataset, name):
            setattr(dataset, name, getattr(dataset, name)[:n])
    return dataset


def variant(dataset, prepared, transform):
    v = copy.copy(dataset)
    v.prepared, v.transform = prepared, transform
    return v


class InWorkers:
    """The photometric ops applied in the worker, item by item: the route before they moved
    to the device."""

    def __init__(self, aug):
        self.aug = aug

    def split(self, image, label=None, generator=None):
        image, label = self.aug(image, label, generator)
        return image, label, None


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def on_device(batch, device):
    """What Run.to_device does with a batch: transfer, then its photometric ops."""
    images = batch["image"].to(device, non_blocking=True)
    if "photometric" in batch:
        images = apply_photometric(images, batch["photometric"])
    sync(device)
    return images


def images_per_second(loader, seconds, device=None):
    n, start = 0, time.perf_counter()
    while True:                      # whole passes until `seconds` have gone by
        for batch in loader:
            if device is not None:
                on_device(batch, device)
            n += len(batch["image"])
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return n / elapsed


def measure(routes, workers, args, device=None):
    """{route: median images/s} of each route's loader at `workers`, alternating routes."""
    loaders = {name: make_loader(ds, args.batch_size, 0, "source", train=True,
                                 workers=workers)
               for name, ds in routes.items()}
    for loader in loaders.values():  # warm-up: start the workers, fill the page cache
        images_per_second(loader, 0, device)
    rates = {name: [] for name in loaders}
    for _ in range(args.repeats):
        for name, loader in loaders.items():
            rates[name].append(images_per_second(loader, args.seconds, device))
    return {name: statistics.median(r) for name, r in rates.items()}


def training_images_per_second(batch, size, device, seconds):
    """Images/s that BiSeNet-R18 training takes in on `device`, as train_source.py --amp steps
    (channels_last and the autocast dtype where the device has them), the loader left out."""
    dtype = amp_dtype(device, True)
    model = build_model("bisenet", NUM_CLASSES, "resnet18", pretrained="none").to(device)
    model = set_memory_format(model, device, dtype).train()
    optimizer = fused(torch.optim.SGD, model.parameters(), lr=1e-6, momentum=0.9)
    images = torch.randint(0, 256, (batch, 3, *size), dtype=torch.uint8, device=device)
    labels = torch.randint(0, NUM_CLASSES, (batch, *size), device=device)

    def step():
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss = seg_loss_sum(cross_entropy, model(normalize(images)), labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    for _ in range(2):                # warm-up (cuDNN's algorithm search, allocator)
        step()
    sync(device)
    n, start = 0, time.perf_counter()
    while n == 0 or time.perf_counter() - start < seconds:
        step()
        sync(device)
        n += batch
    return n / (time.perf_counter() - start)


def check_identical(raw, prepared, n=4):
    """The prepared route must give the raw route's items: labels exactly, images exactly."""
    worst = 0
    for i in range(min(n, len(raw))):
        a, b = raw[i], prepared[i]
        if "label" in a and not torch.equal(a["label"], b["label"]):
            raise SystemExit(f"label of {a['name']} differs between the routes")
        worst = max(worst, int((a["image"].int() - b["image"].int()).abs().max()))
    return worst


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--gta5-root", help="a GTA5 folder (images/, labels/)")
    p.add_argument("--cityscapes-root", help="a Cityscapes folder (leftImg8bit/train, ...)")
    p.add_argument("--frames", type=int, default=8, help="items per dataset")
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--seconds", type=float, default=1.0, help="per measurement")
    p.add_argument("--format", choices=("png", "npy"), default="png",
                   help="of the prepared copy")
    p.add_argument("--target-aug", action="store_true", help="also the target with --aug")
    p.add_argument("--aug", action="store_true",
                   help="compare photometric augmentation in the workers and on --device")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--train", action="store_true",
                   help="also what BiSeNet-R18 training consumes on --device (images/s)")
    args = p.parse_args()
    if args.aug and args.train:
        p.error("--train goes with the raw/prepared tables (their +aug row included), not --aug")
    torch.set_num_threads(1)
    # More workers than cores is one of the settings measured, not a mistake here.
    warnings.filterwarnings("ignore", message="This DataLoader will create")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        gta_root, city_root = Path(args.gta5_root or ""), Path(args.cityscapes_root or "")
        if not (args.gta5_root and args.cityscapes_root):
            print(f"generating {args.frames} full-size frames per dataset in {tmp} ...",
                  flush=True)
            gen_gta, gen_city = generate(tmp / "data", args.frames)
            gta_root = gta_root if args.gta5_root else gen_gta
            city_root = city_root if args.cityscapes_root else gen_city
        source = first(GTA5(gta_root, size=GTA5_SIZE), args.frames)
        target = first(Cityscapes(city_root, "train", size=CITY_SIZE, labelled=False),
                       args.frames)
        if args.aug:
            return compare_photometric(source, args, started)
        copies = {}
        for name, ds in (("source", source), ("target", target)):
            t0 = time.perf_counter()
            copies[name] = use_prepared(copy.copy(ds), tmp / "prepared", workers=2,
                                        fmt=args.format).prepared
            print(f"{name}: {ds!r}; prepared in {time.perf_counter() - t0:.1f} s "
                  f"(2 workers), max image difference "
                  f"{check_identical(ds, variant(ds, copies[name], None))}, labels identical",
                  flush=True)
        consumed = args.train and training_images_per_second(
            args.batch_size, GTA5_SIZE, torch.device(args.device), args.seconds * args.repeats)
        aug = build_transforms(AUG, p=0.5)
        cases = [("source", "GTA5 1280x720", source, None),
                 ("source", f"GTA5 1280x720 +aug {AUG}", source, aug),
                 ("target", "Cityscapes 1024x512", target, None)]
        if args.target_aug:
            cases.append(("target", f"Cityscapes 1024x512 +aug {AUG}", target, aug))
        print(f"\nimages/s, median of {args.repeats} (batch {args.batch_size}, "
              f"{args.frames} items, {args.format} copy)\n")
        print("| loader | workers | raw | prepared | speed-up |\n|---|---:|---:|---:|---:|")
        ratios, supplied = {}, []
        for role, label, ds, transform in cases:
            routes = {"raw": variant(ds, None, transform),
                      "prepared": variant(ds, copies[role], transform)}
            for w in args.workers:
                r = measure(routes, w, args, torch.device(args.device))  # +aug: on the device
                ratio = r["prepared"] / r["raw"]
                if transform is None:
                    ratios.setdefault((role, label), []).append(ratio)
                print(f"| {role} {label} | {w} | {r['raw']:.1f} | {r['prepared']:.1f} | "
                      f"{ratio:.2f}x |", flush=True)
                if role == "source":
                    supplied.append((label, w, r["raw"], r["prepared"]))
    print(f"\n({time.perf_counter() - started:.0f} s in all)")
    for (role, label), rs in ratios.items():
        print(f"{role} {label}, prepared vs raw at {'/'.join(map(str, args.workers))} "
              f"workers: {' '.join(f'{r:.1f}x' for r in rs)}; at least {min(rs):.1f}x")
    if consumed:
        print_supply_against_training(supplied, consumed, args)


def print_supply_against_training(supplied, consumed, args):
    dtype = amp_dtype(torch.device(args.device), True)      # the one training ran in
    precision = "fp32" if dtype is None else str(dtype).removeprefix("torch.")
    print(f"\ntraining BiSeNet-R18 ({precision}, batch {args.batch_size} at "
          f"{GTA5_SIZE[0]}x{GTA5_SIZE[1]}) on {args.device} takes in {consumed:.1f} images/s; "
          f"what each source loader supplies, as a share of that:\n")
    print("| loader | workers | raw | prepared |\n|---|---:|---:|---:|")
    for label, w, raw, prepared in supplied:
        print(f"| {label} | {w} | {raw / consumed:.2f}x | {prepared / consumed:.2f}x |")


def compare_photometric(source, args, started):
    aug = build_transforms(AUG, p=0.5)
    routes = {"in workers": variant(source, None, InWorkers(aug)),
              "on device": variant(source, None, aug)}
    device = torch.device(args.device)
    print(f"\nimages/s of GTA5 1280x720 +aug {AUG}, median of {args.repeats} (batch "
          f"{args.batch_size}, {args.frames} items, raw files; device {device})\n")
    print("| workers | photometric in workers | on the device | gain |\n|---:|---:|---:|---:|")
    gains = []
    for w in args.workers:
        r = measure(routes, w, args, device)
        gains.append(r["on device"] / r["in workers"])
        print(f"| {w} | {r['in workers']:.1f} | {r['on device']:.1f} | {gains[-1]:.2f}x |",
              flush=True)
    print(f"\n({time.perf_counter() - started:.0f} s in all) on the device vs in the workers "
          f"at {'/'.join(map(str, args.workers))} workers: "
          f"{' '.join(f'{g:.1f}x' for g in gains)}")


if __name__ == "__main__":
    main()
