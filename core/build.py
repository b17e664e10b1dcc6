"""What the parsed flags build: the datasets, the segmenter, its optimiser and LR schedule.

    source_set = build.source_dataset(args)          # --source, --aug, --crop, --prepared
    model = run.place(build.segmenter(args))          # --model, --backbone, --pretrained
    optimizer = build.optimizer(args, model)          # --optimizer, --lr, --weight-decay
    scheduler = build.scheduler(args, optimizer, iters_per_epoch)   # poly, --poly-iters
"""
import torch

from core.checkpoint import unwrap
from core.datasets import GTA5, Cityscapes, PseudoLabelDataset
from core.labels import NUM_CLASSES
from core.models import build_model, model_options, param_groups
from core.prepared import use_prepared
from core.schedule import poly_scheduler
from core.transforms import build_transforms


def source_dataset(args):
    """The labelled training set, resized to --source-size, with --aug applied."""
    transform = build_transforms(args.aug, p=args.aug_p, crop=args.crop)
    if args.source == "gta5":
        dataset = GTA5(args.source_root, split=args.source_split, size=args.source_size,
                       transform=transform)
    else:
        dataset = Cityscapes(args.source_root, split=args.source_split or "train",
                             size=args.source_size, transform=transform)
    return _maybe_prepared(dataset, args)


def target_dataset(args):
    """Unlabelled Cityscapes training images, paired with --pseudo labels when given."""
    images = _maybe_prepared(Cityscapes(args.target_root, split=args.target_split,
                                        size=args.target_size, labelled=False), args)
    return PseudoLabelDataset(images, args.pseudo) if args.pseudo else images


def _maybe_prepared(dataset, args):
    """With --prepared DIR, the dataset reads its prepared copy (the same items, made once).
    --dry-run writes nothing: it reads the sources, and the run makes the copy."""
    if getattr(args, "prepared", None):
        if getattr(args, "dry_run", False):
            print(f"--dry-run: --prepared {args.prepared} not touched; the run prepares there "
                  f"what is missing of {dataset!r}", flush=True)
        else:
            use_prepared(dataset, args.prepared, workers=args.workers)
    return dataset


def val_dataset(args):
    """Cityscapes validation at native resolution: evaluation resizes images on the device
    to the working size and upsamples the logits to the full label size."""
    return Cityscapes(args.val_root, split=args.val_split, size=None)


def segmenter(args):
    """The segmentation network that --model, --backbone, --pretrained (and the architecture
    options a run records) describe."""
    return build_model(args.model, NUM_CLASSES, args.backbone, args.pretrained,
                       **model_options(args))


def optimizer(args, model, lr=None, weight_decay=None):
    """--optimizer over the network's parameter groups (core.models.param_groups), at --lr and
    --weight-decay unless other values are given (MPL's teacher)."""
    lr = args.lr if lr is None else lr
    weight_decay = args.weight_decay if weight_decay is None else weight_decay
    groups = param_groups(unwrap(model), lr, weight_decay)
    if args.optimizer == "sgd":
        return fused(torch.optim.SGD, groups, lr=lr, momentum=args.momentum,
                     weight_decay=weight_decay)
    return fused(torch.optim.Adam, groups, lr=lr, betas=tuple(args.adam_betas),
                 weight_decay=weight_decay)


def discriminator_optimizer(args, disc):
    """AdaptSegNet's discriminator optimiser: Adam at --lr-d, betas (0.9, 0.99), no decay."""
    return fused(torch.optim.Adam, disc.parameters(), lr=args.lr_d, betas=(0.9, 0.99))


def fused(optimizer_class, params, **options):
    """`optimizer_class` with its fused kernel where this torch has one for the parameters'
    device (CUDA; CPU since torch 2.4): one kernel per step instead of several per tensor. The
    same update up to rounding; a BiSeNet-R18 SGD step on 2 CPU cores: 6.5 ms against 12.0
    per tensor, and 11.5 against 688 while another job used the cores (docs/benchmarks.md)."""
    params = list(params)
    try:
        return optimizer_class(params, fused=True, **options)
    except (RuntimeError, TypeError):    # no fused kernel here: the per-tensor update
        return optimizer_class(params, **options)


def poly_horizon(args, iters_per_epoch):
    """Iterations over which the poly schedule decays: --poly-iters, else the whole run."""
    return args.poly_iters or args.epochs * iters_per_epoch


def scheduler(args, optimizer, iters_per_epoch):
    """The poly LR schedule of `optimizer` over poly_horizon, stepped once per iteration."""
    return poly_scheduler(optimizer, poly_horizon(args, iters_per_epoch))
