"""Segment your own images with a trained checkpoint (or an ensemble): one PNG per image.

    python predict.py runs/gta/last.pth street.jpg --out pred                # Cityscapes colours
    python predict.py runs/gta/last.pth frames/ --out pred --format overlay \\
        --batch-size 8 --workers 4                                        # a video's frames
    python predict.py runs/fda_b0.01/last.pth photos/ --out pred \\
        --ensemble runs/fda_b0.05/last.pth runs/fda_b0.09/last.pth         # multi-band ensemble
    # Cityscapes benchmark submission: label ids at full resolution, one PNG per image
    python predict.py runs/city/best.pth data/Cityscapes/leftImg8bit/test --out submit \\
        --format labelids

PATH: image files, or folders searched recursively for .png .jpg .jpeg .bmp .tif .tiff .webp
(a folder's sub-folders are kept under --out). The checkpoint and those after --ensemble
predict as one ensemble, the mean of their softmax (a file named twice counts once);
--batch-size N feeds up to N consecutive images of one size at once. The protocol is
evaluate.py's: each image is fed at the working size stored in the checkpoint (--size
overrides it) and the logits are upsampled to the image's full resolution; so the label-id
PNGs, scored by the official Cityscapes evaluator, give exactly evaluate.py's mIoU (at the
same --batch-size; another batch size may move a pixel at a near tie on some devices).
Formats (several may be given); each file is named after its image,
`city_seq_frame_leftImg8bit.png` -> `city_seq_frame` + suffix:
    color     _pred_color.png     the Cityscapes colours
    overlay   _pred_overlay.png   the colours blended on the photo (--alpha)
    labelids  _pred_labelIds.png  Cityscapes label ids (7 road ... 33 bicycle): the benchmark's
    trainids  _pred_trainIds.png  train ids 0-18 (a palette PNG in the Cityscapes colours)
For a submission write labelids alone into its folder: the official evaluator takes every
PNG whose name holds the frame's `city_seq_frame`. --out must be new, empty, or an earlier
predict.py output (marked by its predict.json); a file that exists in it is never written
over unless --overwrite is given.
"""
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from core import cli, outputs
from core.decoding import IMAGE_SUFFIXES, image_tensor, open_image
from core.errors import ConfigError, MissingDataError
from core.evaluation import (
    ensemble_paths,
    load_model,
    predict_classes,
    select_device,
)
from core.labels import TRAIN_LABEL_IDS, colorize, save_label_png
from core.precision import inference_autocast

FORMATS = {"color": "_pred_color.png", "overlay": "_pred_overlay.png",
           "labelids": "_pred_labelIds.png", "trainids": "_pred_trainIds.png"}
LABEL_IDS = np.array(TRAIN_LABEL_IDS, dtype=np.uint8)   # train id -> Cityscapes label id


def main(args):
    device = select_device(args.device)
    autocast = inference_autocast(device, args.amp)

    ## the images, and the files each one becomes (none written over without --overwrite)
    out = Path(args.out)
    jobs = plan_outputs(find_images(args.paths, out), out, args.format)
    existing = [f for _, files in jobs for f in files.values() if f.exists()]
    if existing and not args.overwrite:
        raise ConfigError(f"--out {out}: {len(existing)} output file(s) exist, e.g. "
                          f"{existing[0]}; pass --overwrite to replace them, or another --out")

    ## models: one checkpoint, or the mean softmax of several (FDA's multi-band ensemble)
    paths = ensemble_paths(args.checkpoint, args.ensemble)
    loaded = [load_model(path, device, args.size, amp=args.amp) for path in paths]
    models, sizes = [m for m, _, _ in loaded], [s for _, s, _ in loaded]
    print(f"{len(jobs)} image(s), fed at {', '.join(f'{h}x{w}' for h, w in sizes)} (HxW), "
          f"logits upsampled to each image's size; {'ensemble of ' * (len(models) > 1)}"
          f"{', '.join(paths)}")

    ## predict: working size in, full resolution out; write every asked format
    outputs.claim_folder(out, "--out", "predict")      # marked as predict.py's (core.outputs)
    photos = DataLoader(Photos(jobs), batch_size=None, num_workers=args.workers)
    with tqdm(total=len(jobs), desc="predict", unit="image", dynamic_ncols=True) as bar:
        for batch in same_size_batches(jobs, photos, args.batch_size):
            images = torch.stack([image for _, image in batch])
            with autocast():
                preds = predict_classes(models, sizes, images.to(device),
                                        tuple(images.shape[-2:]))
            preds = preds.to(torch.uint8).cpu().numpy()
            for ((_, files), image), pred in zip(batch, preds, strict=True):
                for fmt, path in files.items():
                    path.parent.mkdir(parents=True, exist_ok=True)
                    write_prediction(fmt, pred, image, path, args.alpha)
            bar.update(len(batch))
    print(f"wrote {sum(len(files) for _, files in jobs)} file(s) to {out}")


class Photos(Dataset):
    """The jobs' photos in order, read by the --workers processes (or the main one)."""

    def __init__(self, jobs):
        self.files = [image for image, _ in jobs]

    def __len__(self):
        return len(self.files)

    def __getitem__(self, i):
        return read_photo(self.files[i])


def same_size_batches(jobs, photos, batch_size):
    """[(job, photo)] runs of up to batch_size consecutive photos of one size (a batch ends
    where the size changes, so that mixed sizes still predict at full resolution)."""
    batch = []
    for job, photo in zip(jobs, photos, strict=True):
        if batch and (len(batch) == batch_size or batch[0][1].shape != photo.shape):
            yield batch
            batch = []
        batch.append((job, photo))
    if batch:
        yield batch


def find_images(paths, out):
    """(image file, the folder it was found in or None) for every PATH, folders recursively,
    in sorted order; files under --out (earlier predictions) are left out."""
    out = out.resolve()
    found = []
    for arg in map(Path, paths):
        if arg.is_file():
            found.append((arg, None))
        elif arg.is_dir():
            files = sorted(p for p in arg.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES
                           and p.is_file() and not p.resolve().is_relative_to(out))
            if not files:
                raise MissingDataError(f"no images in folder {arg} (searched recursively for "
                                       f"{' '.join(IMAGE_SUFFIXES)})")
            found += [(f, arg) for f in files]
        else:
            raise MissingDataError(f"no such image file or folder: {arg}")
    return found


def plan_outputs(images, out, formats):
    """[(image, {format: output path})]; two images that would write the same file are an
    error (e.g. x.png and x.jpg in one folder), found before any work is done."""
    jobs, taken = [], {}
    for image, folder in images:
        sub = image.parent.relative_to(folder) if folder is not None else Path()
        stem = image.name[: -len(image.suffix)].removesuffix("_leftImg8bit")
        files = {fmt: out / sub / (stem + FORMATS[fmt]) for fmt in dict.fromkeys(formats)}
        for path in files.values():
            if path in taken:
                raise ConfigError(f"{taken[path]} and {image} would both be written to {path}: "
                                  f"rename one, or predict them into different --out folders")
            taken[path] = image
        jobs.append((image, files))
    return jobs


def read_photo(path):
    """uint8 3 x H x W RGB at full resolution, upright as viewers show it (EXIF orientation);
    RGBA, greyscale and palette images are converted to RGB."""
    return image_tensor(ImageOps.exif_transpose(open_image(path)), None)


def write_prediction(fmt, pred, image, path, alpha):
    """pred: H x W train ids; image: the uint8 3 x H x W photo it was predicted from."""
    if fmt == "labelids":
        Image.fromarray(LABEL_IDS[pred]).save(path)     # 2-D uint8: an 8-bit grey PNG
    elif fmt == "trainids":
        save_label_png(pred, path)
    elif fmt == "color":
        Image.fromarray(colorize(pred)).save(path)
    else:   # overlay: colours blended on the photo
        photo = image.permute(1, 2, 0).numpy().astype(np.float32)
        blend = (1 - alpha) * photo + alpha * colorize(pred).astype(np.float32)
        Image.fromarray(np.rint(blend).astype(np.uint8)).save(path)


def build_parser():
    p = cli.new_parser(__doc__)
    p.add_argument("checkpoint", help="best.pth / last.pth of a training run")
    p.add_argument("paths", nargs="+", metavar="PATH", help="image files and/or folders")
    p.add_argument("--out", required=True, help="folder for the predictions")
    p.add_argument("--format", nargs="+", choices=tuple(FORMATS), default=["color"],
                   help="what to write per image; several may be given")
    p.add_argument("--alpha", type=cli.probability, default=0.5,
                   help="overlay: weight of the colours (0 = photo, 1 = colours)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace prediction files that exist in --out")
    cli.add_inference_args(p, batch_size=1, workers=0)
    return p


def parse_args(argv=None):
    p = build_parser()
    args = p.parse_args(argv)
    outputs.check_outputs(p, args, "predict")   # new, empty, or predict.py's own folder
    return args


if __name__ == "__main__":
    cli.entry(main, parse_args)
