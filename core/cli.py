"""Command-line flags shared by the scripts and their defaults (core.build: what they build).

Defaults, in one place: `MODEL_DEFAULTS` (per network, from the papers) and `DEMO_SETTINGS`
(the built-in demo pair). A flag given on the command line always wins; then --demo's
setting; then the model's default; then the flag's own default.

A resumed run (--resume) continues the run as it was started: its stored arguments are used,
flags that would change it (--lr, --epochs, --batch-size, --seed, ...) are refused if they
differ, and only session flags (SESSION_FLAGS) apply.
"""
import argparse
import os
import sys
from pathlib import Path

from core.checkpoint import load_checkpoint
from core.errors import ConfigError, SegDAError
from core.flags import (
    HelpFormatter,
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
    probability,
)
from core.models import BACKBONES, MODEL_NAMES, model_options, resolve_backbone
from core.precision import mixed_precision_is_native
from demo import DEMO_ROOT, DemoPaths

# Per-model optimisation defaults.
MODEL_DEFAULTS = {
    # BiSeNet paper (Yu et al. 2018, sec. 4.1): SGD 0.9, lr 2.5e-2, wd 1e-4, poly 0.9. The
    # paper's batch is 16 over 4 GPUs; 8 fits one 16 GB GPU at 1024x512.
    "bisenet": {"lr": 2.5e-2, "weight_decay": 1e-4, "batch_size": 8},
    # DeepLabV2 UDA papers (AdaptSegNet, ADVENT, FDA): lr 2.5e-4 (classifier x10), wd 5e-4,
    # batch 1.
    "deeplabv2": {"lr": 2.5e-4, "weight_decay": 5e-4, "batch_size": 1},
    # STDC-Seg (Fan et al. 2021, sec. 4; the authors' train.py): SGD 0.9, lr 1e-2 (FFM and
    # heads x10), wd 5e-4, poly 0.9, 1024x512 crops, 16 images per GPU (V100s). One GPU:
    # batch 8, half that (a smaller network than BiSeNet-R18 at the same default batch, so it
    # fits where that one does, and the two compare at equal batch); the paper's lr is kept,
    # not halved, as the BiSeNet default keeps its lr at half its paper's batch.
    "stdc": {"lr": 1e-2, "weight_decay": 5e-4, "batch_size": 8},
}
# --demo: half the generated resolution (the source keeps its 16:9 aspect), random
# initialisation (nothing is downloaded) and a schedule that ends in minutes on a 2-core CPU.
# Learning rate and batch size stay the model's.
DEMO_SETTINGS = {"source_size": (144, 256), "target_size": (128, 256), "val_size": (128, 256),
                 "epochs": 10, "pretrained": "none"}
# Working sizes (H, W) of the UDA literature: GTA5 at 1280x720, Cityscapes at 1024x512.
DATASET_SIZES = {"gta5": (720, 1280), "cityscapes": (512, 1024)}
DEFAULT_EPOCHS = 50       # the course project's
# Flags that a resumed run may change: they do not change what the run computes.
SESSION_FLAGS = ("resume", "out", "stop_after", "workers", "prepared", "device", "demo",
                 "log_every", "save_every", "time_limit", "dry_run")


# --------------------------------------------------------------------------- flags

def new_parser(doc):
    """A script's parser, from its docstring: the first paragraph above the flags, the rest
    (usage examples, notes) below them; every flag's default shown (core.flags)."""
    summary, _, rest = doc.strip().partition("\n\n")
    return argparse.ArgumentParser(description=summary, epilog=rest or None,
                                   formatter_class=HelpFormatter)


def warn_zero_learning_rates(args):
    """A learning rate of 0 is legal (a frozen network) but almost always a typo: say so."""
    for name, value in sorted(vars(args).items()):
        if name.startswith("lr") and value == 0:
            print(f"warning: --{name.replace('_', '-')} 0: that network's weights will never "
                  f"change", file=sys.stderr, flush=True)


def add_device_arg(p, help="auto: CUDA when PyTorch sees a GPU, else the CPU"):
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help=help)


def add_data_args(p, target=False):
    g = p.add_argument_group("data")
    g.add_argument("--source", choices=("gta5", "cityscapes"), default="gta5",
                   help="labelled training set (cityscapes = the upper bound)")
    g.add_argument("--source-root", help="folder of the source dataset")
    g.add_argument("--source-split", default=None,
                   help="GTA5: list file of names (or its name in the root, e.g. train); "
                        "Cityscapes: split folder (default train)")
    g.add_argument("--source-size", type=positive_int, nargs=2, metavar=("H", "W"),
                   help="working size of source images (default 720 1280 for GTA5, "
                        "512 1024 for Cityscapes)")
    if target:
        g.add_argument("--target-root", help="Cityscapes folder (labels are never read)")
        g.add_argument("--target-split", default="train",
                       help="Cityscapes split folder of the target images")
        g.add_argument("--target-size", type=positive_int, nargs=2, metavar=("H", "W"),
                       help="working size of target images (default 512 1024)")
    g.add_argument("--val-root", help="Cityscapes folder for validation (default: the "
                                      "target root, or the source root for Cityscapes)")
    g.add_argument("--val-split", default="val", help="Cityscapes split folder to validate on")
    g.add_argument("--val-size", type=positive_int, nargs=2, metavar=("H", "W"),
                   help="working size at which validation images are fed (default: the "
                        "target size, 512 1024); logits are upsampled to the label size")
    g.add_argument("--aug", default="none",
                   help="source augmentations, comma-separated from flip,jitter,blur,scale")
    g.add_argument("--aug-p", type=probability, default=0.5,
                   help="probability of each augmentation")
    g.add_argument("--crop", type=positive_int, nargs=2, metavar=("H", "W"),
                   help="train on random crops of this size of the resized source images "
                        "(train_fda.py: default the target size, as FDA's code crops)")
    g.add_argument("--workers", type=non_negative_int, default=min(4, os.cpu_count() or 1),
                   help="image-loading processes per data stream, 0 = the main process "
                        "if not given: min(4, CPU cores)")
    g.add_argument("--prepared", metavar="DIR",
                   help="read the training sets from copies decoded and resized once, kept "
                        "in DIR (made, or brought up to date, at start; identical items, "
                        "several times faster to load; see core/prepared/). Default: the "
                        "raw files")


def add_model_args(p):
    g = p.add_argument_group("model")
    g.add_argument("--model", choices=MODEL_NAMES, default="bisenet",
                   help="segmentation network: BiSeNet, DeepLabV2 or STDC-Seg")
    g.add_argument("--backbone", choices=sorted({b for v in BACKBONES.values() for b in v}),
                   default=None, help="bisenet: resnet18 (default) or resnet101; "
                                      "deeplabv2: resnet101; stdc: stdc1 (default) or stdc2")
    g.add_argument("--pretrained", default=None,
                   help="imagenet (default; torchvision's weights from its cache; stdc: the "
                        "authors' STDCNet .tar there), a .pth/.tar path, or none")
    g.add_argument("--deeplab-bn", choices=("train", "frozen"), default=None,
                   help="deeplabv2: BatchNorm with frozen affine parameters normalising with "
                        "each batch's statistics in training (default train: AdaptSegNet's, "
                        "FDA's, BDL's code), or always the stored ImageNet statistics (frozen)")
    g.add_argument("--stdc-groups", choices=("authors", "all"), default=None,
                   help="stdc: the optimiser's parameter groups: the authors' get_params "
                        "(default; backbone BatchNorm never trained, no decay on BatchNorm) "
                        "or all (every parameter, all with weight decay)")
    g.add_argument("--arm-bn", action="store_true",
                   help="bisenet: BatchNorm in the attention refinement modules (the paper, "
                        "CoinCheung/BiSeNet); default: without, as the course code computes")


def add_optim_args(p):
    g = p.add_argument_group("optimisation")
    g.add_argument("--optimizer", choices=("sgd", "adam"), default="sgd",
                   help="SGD with momentum (the papers') or Adam")
    g.add_argument("--lr", type=non_negative_float, default=None,
                   help="default: " + ", ".join(f"{m} {d['lr']}" for m, d in
                                                MODEL_DEFAULTS.items()))
    g.add_argument("--momentum", type=probability, default=0.9, help="SGD momentum")
    g.add_argument("--weight-decay", type=non_negative_float, default=None,
                   help="default: " + ", ".join(f"{m} {d['weight_decay']}" for m, d in
                                                MODEL_DEFAULTS.items()))
    g.add_argument("--adam-betas", type=probability, nargs=2, default=(0.9, 0.99),
                   metavar=("B1", "B2"), help="Adam's running-average coefficients")
    g.add_argument("--loss", choices=("ce", "focal", "weighted-ce"), default="ce",
                   help="supervised loss: cross-entropy, focal, or cross-entropy with class "
                        "weights from the source's label frequencies")
    g.add_argument("--focal-gamma", type=non_negative_float, default=2.0,
                   help="focusing exponent of --loss focal")
    g.add_argument("--epochs", type=positive_int, default=None,
                   help=f"default {DEFAULT_EPOCHS} (the course project's), "
                        f"{DEMO_SETTINGS['epochs']} with --demo")
    g.add_argument("--iters-per-epoch", type=positive_int, metavar="ITERS",
                   help="iterations between validations (default: one pass over the source)")
    g.add_argument("--poly-iters", type=positive_int, default=None, metavar="ITERS",
                   help="horizon of the poly LR decay (default: the run's length, so the LR "
                        "reaches 0; the official UDA runs stop early, e.g. AdaptSegNet at "
                        "150k of a 250k horizon)")
    g.add_argument("--batch-size", type=positive_int, default=None,
                   help="per process; default: " + ", ".join(
                       f"{m} {d['batch_size']}" for m, d in MODEL_DEFAULTS.items()))


def add_run_args(p, default_out):
    g = p.add_argument_group("run")
    g.add_argument("--out", default=None,
                   help=f"run folder: checkpoints, metrics.jsonl (default {default_out}; "
                        f"with --resume the checkpoint's folder)")
    p.set_defaults(default_out=default_out)
    g.add_argument("--resume", help="continue a run from its last.pth")
    g.add_argument("--dry-run", action="store_true",
                   help="build the run (data, networks, optimisers), check every data file and "
                        "a sample of the labels, print the plan (images per split, label "
                        "coverage, iterations) and exit without creating or writing --out")
    g.add_argument("--stop-after", type=positive_int, metavar="EPOCHS",
                   help="end this session after that many epochs in total (resume later); "
                        "for time-limited Colab/Kaggle sessions")
    g.add_argument("--save-every", type=positive_int, metavar="STEPS",
                   help="also write last.pth every that many iterations (mid-epoch; a resume "
                        "continues exactly from there)")
    g.add_argument("--time-limit", type=positive_float, metavar="MINUTES",
                   help="save and stop cleanly before this session has run that long "
                        "(Colab/Kaggle); continue later with --resume")
    g.add_argument("--log-every", type=positive_int, default=50, metavar="STEPS",
                   help="write the running losses to metrics.jsonl every that many iterations "
                        "(training curves: plot_runs.py)")
    g.add_argument("--tensorboard", action="store_true",
                   help="also write metrics.jsonl's numbers to a TensorBoard event file in the "
                        "run folder (needs the tensorboard package)")
    g.add_argument("--seed", type=non_negative_int, default=42,
                   help="seed of every random draw (initial weights, data order, "
                        "augmentations); each torchrun process adds its rank")
    add_device_arg(g)
    g.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None,
                   help="mixed precision: bf16 on GPUs and CPUs that have it (lscpu: "
                        "avx512_bf16/amx_bf16), fp16 with loss scaling on older GPUs; default: "
                        "off, with --demo on where the hardware has it (--no-amp: float32)")
    g.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                   help="networks and their inputs in channels_last (NHWC) memory layout, or "
                        "not; default: channels_last except where measured slower for that "
                        "network and device (core/precision.py, docs/benchmarks.md)")
    g.add_argument("--sync-bn", action="store_true",
                   help="under torchrun: BatchNorm statistics over all processes' batches")
    g.add_argument("--demo", action="store_true",
                   help="use the built-in synthetic GTA5/Cityscapes-style pair (data/demo)")


def add_inference_args(parser, batch_size=1, workers=2, size_help=None):
    """The flags evaluate.py, gen_pseudo.py and predict.py share: the ensemble (the positional
    checkpoint plus --ensemble's, one mean softmax), the size images are fed at, batching,
    loading, --amp and --device. Each script passes its own defaults; returns the group."""
    g = parser.add_argument_group("inference")
    g.add_argument("--ensemble", nargs="+", default=[], metavar="CKPT",
                   help="more checkpoints: one ensemble with the first, averaging their "
                        "softmax (FDA's multi-band ensemble); default: none")
    g.add_argument("--size", type=positive_int, nargs=2, metavar=("H", "W"),
                   help=size_help or "working size the images are fed at (default: the "
                                     "size stored in each checkpoint)")
    g.add_argument("--batch-size", type=positive_int, default=batch_size,
                   help="images per forward pass")
    g.add_argument("--workers", type=non_negative_int, default=workers,
                   help="image-loading processes, 0 = the main process")
    g.add_argument("--amp", action="store_true",
                   help="mixed precision: bf16 on GPUs and CPUs that have it (lscpu: "
                        "avx512_bf16/amx_bf16), else fp16 on GPUs; no effect on other CPUs "
                        "(default off)")
    add_device_arg(g)
    return g


# --------------------------------------------------------------------------- parsing

def parse(parser, argv=None, script=None):
    """Parse, then fill defaults (new run) or take the stored arguments (--resume)."""
    args = parser.parse_args(argv)
    try:
        if args.resume:
            args = resume_args(parser, args, given_flags(parser, argv), script)
        else:
            args = resolve_defaults(args, parser)
    except SegDAError as e:
        parser.error(str(e))
    vars(args).pop("default_out", None)
    warn_zero_learning_rates(args)
    return args


def given_flags(parser, argv):
    """Names of the flags given on the command line (not left at their defaults)."""
    saved = {a.dest: a.default for a in parser._actions}
    try:
        for a in parser._actions:
            a.default = argparse.SUPPRESS
        return set(vars(parser.parse_args(argv)))
    finally:
        for a in parser._actions:
            a.default = saved[a.dest]


def _same(a, b):
    """Equal as flag values (a tuple stored in a checkpoint equals the list argparse makes)."""
    def plain(v):
        return list(v) if isinstance(v, list | tuple) else v
    return plain(a) == plain(b)


def resume_args(parser, args, given, script):
    """The stored arguments of the run that --resume continues, plus this session's flags."""
    ckpt = Path(args.resume)
    state = load_checkpoint(ckpt, mmap=True)
    if script and state.get("script") not in (None, script):
        raise ConfigError(f"--resume {ckpt}: that run was made by {state['script']}.py, not "
                          f"{script}.py (resume it with its own script)")
    stored = dict(state["args"])
    stored.update(model_options(stored))  # options the run predates: the values it trained with
    changed = [f"--{k.replace('_', '-')} {getattr(args, k)} (the run has {stored[k]})"
               for k in sorted(given) if k not in SESSION_FLAGS and k in stored
               and not _same(getattr(args, k), stored[k])]
    if changed:
        raise ConfigError("--resume continues the run as it was started, but this command "
                          "changes " + "; ".join(changed) + ". Drop those flags, or start "
                          "a new run with another --out")
    folder = ckpt.resolve().parent
    if args.out is not None and Path(args.out).resolve() != folder:
        raise ConfigError(f"--resume {ckpt} continues the run in {folder}; --out {args.out} "
                          f"is another folder (drop --out)")
    for a in parser._actions:          # flags added since that run was made
        stored.setdefault(a.dest, a.default)
    resumed = argparse.Namespace(**stored)
    for name in SESSION_FLAGS:           # this session's, given or default
        if hasattr(args, name):
            setattr(resumed, name, getattr(args, name))
    resumed.resume, resumed.out = str(ckpt), str(folder)
    return resumed


def resolve_defaults(args, parser):
    """Fill defaults: explicit flag > --demo setting > model default > flag default."""
    if args.demo:       # the built-in pair's folders (core.runtime.Run makes it on first use)
        paths = DemoPaths.of(DEMO_ROOT)
        args.source_root = args.source_root or str(
            paths.source if args.source == "gta5" else paths.target)
        if args.source == "gta5" and args.source_split is None:
            args.source_split = str(paths.source_train_list)
        if hasattr(args, "target_root"):
            args.target_root = args.target_root or str(paths.target)
        args.val_root = args.val_root or str(paths.target)
        for name, value in DEMO_SETTINGS.items():
            if hasattr(args, name) and getattr(args, name) is None:
                setattr(args, name, value)
    if args.amp is None:    # --demo: mixed precision where it is native (docs/demo-results.md)
        args.amp = bool(args.demo) and mixed_precision_is_native(args.device)
    for name, value in MODEL_DEFAULTS[args.model].items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    args.epochs = args.epochs or DEFAULT_EPOCHS
    args.pretrained = args.pretrained or "imagenet"
    args.out = args.out or args.default_out
    args.source_size = tuple(args.source_size or DATASET_SIZES[args.source])
    if hasattr(args, "target_size"):
        args.target_size = tuple(args.target_size or DATASET_SIZES["cityscapes"])
    args.val_size = tuple(args.val_size or getattr(args, "target_size", None) or (
        args.source_size if args.source == "cityscapes" else DATASET_SIZES["cityscapes"]))
    if args.val_root is None:
        args.val_root = getattr(args, "target_root", None) or (
            args.source_root if args.source == "cityscapes" else None)
    if args.source_root is None:
        raise ConfigError("--source-root is required (or --demo for the built-in synthetic pair)")
    if hasattr(args, "target_root") and args.target_root is None:
        raise ConfigError("--target-root is required (or --demo)")
    if args.val_root is None:
        raise ConfigError("--val-root is required when training on GTA5 (a Cityscapes folder)")
    args.backbone = resolve_backbone(args.model, args.backbone)
    if args.crop and (args.crop[0] > args.source_size[0] or args.crop[1] > args.source_size[1]):
        raise ConfigError(f"--crop {args.crop[0]} {args.crop[1]} is larger than the source "
                          f"working size {args.source_size[0]} {args.source_size[1]}")
    for flag, model, default in (("deeplab_bn", "deeplabv2", "train"),
                                 ("stdc_groups", "stdc", "authors")):
        if getattr(args, flag) is not None and args.model != model:
            raise ConfigError(f"--{flag.replace('_', '-')} is an option of --model {model}, "
                              f"not {args.model}")
        if getattr(args, flag) is None:
            setattr(args, flag, default)
    if args.model == "deeplabv2" and args.deeplab_bn == "frozen" and args.pretrained == "none":
        raise ConfigError("--model deeplabv2 --pretrained none cannot train: its BatchNorm is "
                          "frozen (Caffe style), which random weights cannot work with; pass "
                          "--pretrained imagenet or a torchvision ResNet-101 state dict")
    if args.arm_bn and args.model != "bisenet":
        raise ConfigError(f"--arm-bn is an option of --model bisenet, not {args.model}")
    # DeepLabV2: a bottleneck's stride in its 3x3 conv, where torchvision's weights (the only
    # ones loaded) expect it. Not a flag; recorded so that evaluation rebuilds the same network.
    args.resnet_style = "pytorch"
    return args


# --------------------------------------------------------------------------- running

def one_line(error):
    """The message of a project error; for one re-raised from a loader worker, the original
    message without the worker's traceback."""
    text = str(error)
    marker = f"{type(error).__name__}: "
    if text.startswith("Caught ") and marker in text:
        text = text.rsplit(marker, 1)[1]
    return text.strip()


def entry(main, parse_args):
    """Run a script's main: the project's own errors and a permission denied (naming the file)
    end with `error: <message>` (exit 1); anything else keeps its traceback (a bug must be
    visible)."""
    args = parse_args()
    try:
        main(args)
    except (SegDAError, PermissionError) as e:
        sys.exit(f"error: {one_line(e)}")
