"""Command-line options shared by the training scripts, and what they build.

Defaults follow the papers (reference sheet, section 4); a value left at None is filled in
per model by `resolve_defaults`, and `--demo` fills in the demo pair's small settings for
anything the user did not set.
"""
import argparse
import os

import torch

from core.datasets import GTA5, Cityscapes, PseudoLabelDataset
from core.models import BACKBONES, MODEL_NAMES
from core.transforms import build_transforms

# Per-model optimisation defaults.
MODEL_DEFAULTS = {
    # BiSeNet paper (Yu et al. 2018, sec. 4.1): SGD 0.9, lr 2.5e-2, wd 1e-4, poly 0.9. The
    # paper's batch is 16 over 4 GPUs; 8 fits one 16 GB GPU at 1024x512.
    "bisenet": {"lr": 2.5e-2, "weight_decay": 1e-4, "batch_size": 8},
    # DeepLabV2 UDA papers (AdaptSegNet, ADVENT, FDA): lr 2.5e-4 (classifier x10), wd 5e-4,
    # batch 1.
    "deeplabv2": {"lr": 2.5e-4, "weight_decay": 5e-4, "batch_size": 1},
}
# Working sizes (H, W) of the UDA literature: GTA5 at 1280x720, Cityscapes at 1024x512.
DATASET_SIZES = {"gta5": (720, 1280), "cityscapes": (512, 1024)}


def add_data_args(p, target=False):
    g = p.add_argument_group("data")
    g.add_argument("--source", choices=("gta5", "cityscapes"), default="gta5",
                   help="labelled training set (cityscapes = the upper bound)")
    g.add_argument("--source-root", help="folder of the source dataset")
    g.add_argument("--source-split", default=None,
                   help="GTA5: list file of names (or its name in the root, e.g. train); "
                        "Cityscapes: split folder (default train)")
    g.add_argument("--source-size", type=int, nargs=2, metavar=("H", "W"),
                   help="working size of source images (default 720 1280 for GTA5, "
                        "512 1024 for Cityscapes)")
    if target:
        g.add_argument("--target-root", help="Cityscapes folder (labels are never read)")
        g.add_argument("--target-split", default="train")
        g.add_argument("--target-size", type=int, nargs=2, metavar=("H", "W"),
                       default=None, help="working size of target images (default 512 1024)")
    g.add_argument("--val-root", help="Cityscapes folder for validation (default: the "
                                      "target root, or the source root for Cityscapes)")
    g.add_argument("--val-split", default="val")
    g.add_argument("--val-size", type=int, nargs=2, metavar=("H", "W"),
                   help="working size at which validation images are fed (default: the "
                        "target size, 512 1024); logits are upsampled to the label size")
    g.add_argument("--aug", default="none",
                   help="source augmentations, comma-separated from flip,jitter,blur,scale")
    g.add_argument("--aug-p", type=float, default=0.5, help="probability of each augmentation")
    g.add_argument("--crop", type=int, nargs=2, metavar=("H", "W"),
                   help="train on random crops of this size of the resized source images")
    g.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1))


def add_model_args(p):
    g = p.add_argument_group("model")
    g.add_argument("--model", choices=MODEL_NAMES, default="bisenet")
    g.add_argument("--backbone", choices=sorted({b for v in BACKBONES.values() for b in v}),
                   default=None, help="bisenet: resnet18 (default) or resnet101; "
                                      "deeplabv2: resnet101")
    g.add_argument("--pretrained", default="imagenet",
                   help="imagenet (torchvision's weights from its cache), a .pth path, or none")


def add_optim_args(p):
    g = p.add_argument_group("optimisation")
    g.add_argument("--optimizer", choices=("sgd", "adam"), default="sgd")
    g.add_argument("--lr", type=float, default=None, help="default: 2.5e-2 BiSeNet, "
                                                          "2.5e-4 DeepLabV2")
    g.add_argument("--momentum", type=float, default=0.9)
    g.add_argument("--weight-decay", type=float, default=None,
                   help="default: 1e-4 BiSeNet, 5e-4 DeepLabV2")
    g.add_argument("--adam-betas", type=float, nargs=2, default=(0.9, 0.99))
    g.add_argument("--loss", choices=("ce", "focal", "weighted-ce"), default="ce")
    g.add_argument("--focal-gamma", type=float, default=2.0)
    g.add_argument("--epochs", type=int, default=50, help="the brief's 50 epochs")
    g.add_argument("--batch-size", type=int, default=None,
                   help="default: 8 BiSeNet, 1 DeepLabV2")


def add_run_args(p, default_out):
    g = p.add_argument_group("run")
    g.add_argument("--out", default=default_out, help="run folder (checkpoints, metrics.jsonl)")
    g.add_argument("--resume", help="continue a run from its last.pth")
    g.add_argument("--stop-after", type=int, metavar="EPOCHS",
                   help="end this session after that many epochs in total (resume later); "
                        "for time-limited Colab/Kaggle sessions")
    g.add_argument("--seed", type=int, default=42)
    g.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    g.add_argument("--amp", action="store_true", help="mixed precision on CUDA (bf16, or "
                                                      "fp16 with loss scaling)")
    g.add_argument("--channels-last", action="store_true")
    g.add_argument("--demo", action="store_true",
                   help="use the built-in synthetic GTA5/Cityscapes-style pair (data/demo)")


def resolve_defaults(args, parser):
    """Fill per-model defaults and, with --demo, the demo pair's paths and small settings."""
    if args.demo:
        from core import demo  # generated on first use only
        paths = demo.ensure_demo()
        settings = demo.demo_settings()
        args.source_root = args.source_root or str(
            paths.source if args.source == "gta5" else paths.target)
        if args.source == "gta5" and args.source_split is None:
            args.source_split = str(paths.source_train_list)
        if hasattr(args, "target_root"):
            args.target_root = args.target_root or str(paths.target)
        args.val_root = args.val_root or str(paths.target)
        for name, value in settings.items():
            if hasattr(args, name) and getattr(args, name) == parser.get_default(name):
                setattr(args, name, value)
    defaults = MODEL_DEFAULTS[args.model]
    for name in ("lr", "weight_decay", "batch_size"):
        if getattr(args, name) is None:
            setattr(args, name, defaults[name])
    if args.source_size is None:
        args.source_size = DATASET_SIZES[args.source]
    if getattr(args, "target_size", "absent") is None:
        args.target_size = DATASET_SIZES["cityscapes"]
    if args.val_size is None:
        args.val_size = getattr(args, "target_size", None) or (
            args.source_size if args.source == "cityscapes" else DATASET_SIZES["cityscapes"])
    if args.val_root is None:
        args.val_root = getattr(args, "target_root", None) or (
            args.source_root if args.source == "cityscapes" else None)
    if args.source_root is None:
        parser.error("--source-root is required (or --demo for the built-in synthetic pair)")
    if hasattr(args, "target_root") and args.target_root is None:
        parser.error("--target-root is required (or --demo)")
    if args.val_root is None:
        parser.error("--val-root is required when training on GTA5 (a Cityscapes folder)")
    if args.backbone is None:
        args.backbone = BACKBONES[args.model][0]
    if args.backbone not in BACKBONES[args.model]:
        parser.error(f"--backbone {args.backbone} is not available for --model {args.model}; "
                     f"choose {' or '.join(BACKBONES[args.model])}")
    for name in ("source_size", "target_size", "val_size"):
        if hasattr(args, name):
            setattr(args, name, tuple(getattr(args, name)))
    return args


def build_source(args):
    """The labelled training set, resized to --source-size, with --aug applied."""
    transform = build_transforms(args.aug, p=args.aug_p, crop=args.crop)
    if args.source == "gta5":
        return GTA5(args.source_root, split=args.source_split, size=args.source_size,
                    transform=transform)
    return Cityscapes(args.source_root, split=args.source_split or "train",
                      size=args.source_size, transform=transform)


def build_target(args, pseudo_dir=None):
    """Unlabelled Cityscapes training images (paired with pseudo labels when given)."""
    images = Cityscapes(args.target_root, split=args.target_split, size=args.target_size,
                        labelled=False)
    return PseudoLabelDataset(images, pseudo_dir) if pseudo_dir else images


def build_val(args):
    """Cityscapes validation at native resolution: evaluation resizes images on the device
    to the working size and upsamples the logits to the full label size."""
    return Cityscapes(args.val_root, split=args.val_split, size=None)


def build_optimizer(args, groups):
    if args.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=args.lr, momentum=args.momentum,
                               weight_decay=args.weight_decay)
    return torch.optim.Adam(groups, lr=args.lr, betas=tuple(args.adam_betas),
                            weight_decay=args.weight_decay)


def parse(parser, argv=None):
    return resolve_defaults(parser.parse_args(argv), parser)


def new_parser(doc):
    return argparse.ArgumentParser(description=doc.split("\n\n")[0],
                                   formatter_class=argparse.RawDescriptionHelpFormatter,
                                   epilog=doc)
