"""Parameters, multiply-adds and model-only latency of the segmenters and discriminators.

Usage:
    python profile_model.py --model bisenet --backbone resnet18 --size 512 1024 --device cpu
    python profile_model.py --model deeplabv2 --device cuda --amp --channels-last --compile
    python profile_model.py --model fcd --size 512 1024      # discriminator, 19 x H x W input
    python profile_model.py --model all --markdown --device cpu --iters 3   # comparison table
    python profile_model.py --model dsc --device cpu --threads 1            # shared CPU

What is printed:
- parameters: total and trainable (DeepLabV2's frozen BN affine parameters are not
  trainable; BiSeNet's and STDC's counts include their training-only heads);
- multiply-adds (MACs) per image as thop counts them, on a deep copy of the model in eval
  mode, and FLOPs = 2 x MACs (labelled so: papers mix the two);
- latency of the model alone: inputs already on the device, data loading excluded, `--warmup`
  untimed passes, then `--iters` timed passes each closed by a device synchronisation; mean,
  median and 90th percentile in ms, and FPS = batch size / mean. Eval mode, inference_mode,
  cudnn.benchmark on.
"""
import platform

import torch

from core import cli
from core.errors import ConfigError
from core.evaluation import select_device
from core.labels import NUM_CLASSES
from core.models import (
    BACKBONES,
    DISCRIMINATOR_NAMES,
    MODEL_NAMES,
    build_discriminator,
    build_model,
    resolve_backbone,
)
from core.profiling import count_macs, count_parameters, measure_latency

# --model all: the networks compared in docs/benchmarks.md, as (label, model, backbone).
ALL = (
    ("BiSeNet-R18", "bisenet", "resnet18"),
    ("BiSeNet-R101", "bisenet", "resnet101"),
    ("DeepLabV2-R101", "deeplabv2", "resnet101"),
    ("STDC1-Seg", "stdc", "stdc1"),
    ("STDC2-Seg", "stdc", "stdc2"),
    ("FCD", "fcd", None),
    ("DSC", "dsc", None),
)


def build(name, backbone, num_classes):
    """The network and its input channels (discriminators see class probabilities)."""
    if name in DISCRIMINATOR_NAMES:
        return build_discriminator(name, num_classes), num_classes
    return build_model(name, num_classes, backbone), 3  # random init: weights don't change speed


def profile(label, name, backbone, args, device):
    model, in_channels = build(name, backbone, args.num_classes)
    total, trainable = count_parameters(model)
    height, width = args.size
    model.to(device)
    macs = count_macs(model, (1, in_channels, height, width))  # per image, before compile

    x = torch.randn(args.batch_size, in_channels, height, width, device=device)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    if args.compile:
        model = torch.compile(model)  # compiled during the warm-up passes
    latency = measure_latency(model, x, args.warmup, args.iters, amp=args.amp)
    return {"label": label, "params": total, "trainable": trainable, "macs": macs, **latency}


def cpu_name():
    try:  # Linux; platform.processor() often says only "x86_64"
        with open("/proc/cpuinfo") as f:
            names = (line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
            return next(names)
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def describe_setup(args, device):
    if device.type == "cuda":
        where = torch.cuda.get_device_name(device)
    else:
        threads = torch.get_num_threads()
        where = f"CPU ({cpu_name()}, {threads} thread{'s' if threads > 1 else ''})"
    dtype = "bf16 autocast" if args.amp else "float32"
    extras = "".join([", channels_last" if args.channels_last else "",
                      ", torch.compile" if args.compile else ""])
    return (f"device: {where}; input {args.size[0]}x{args.size[1]}, batch {args.batch_size}, "
            f"{dtype}{extras}; torch {torch.__version__}; warm-up {args.warmup}, "
            f"{args.iters} timed iterations; model only (no data loading)")


def print_report(row):
    print(f"{row['label']}")
    print(f"  parameters   {row['params']:,} total, {row['trainable']:,} trainable")
    print(f"  multiply-adds {row['macs'] / 1e9:.3f} G MACs per image "
          f"= {2 * row['macs'] / 1e9:.3f} GFLOPs (2 x MACs)")
    print(f"  latency      mean {row['mean_ms']:.2f} ms, median {row['median_ms']:.2f} ms, "
          f"p90 {row['p90_ms']:.2f} ms; {row['fps']:.2f} FPS")


def print_table(rows):
    print("| model | params (M) | GMACs | GFLOPs (2 x MACs) | mean ms | median ms | p90 ms | FPS |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['label']} | {r['params'] / 1e6:.3f} | {r['macs'] / 1e9:.2f} | "
              f"{2 * r['macs'] / 1e9:.2f} | {r['mean_ms']:.1f} | {r['median_ms']:.1f} | "
              f"{r['p90_ms']:.1f} | {r['fps']:.2f} |")


def main(args):
    device = select_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.backends.cudnn.benchmark = True  # fixed input size: let cuDNN pick its fastest kernels
    if args.model == "all":
        targets = ALL
    elif args.model in DISCRIMINATOR_NAMES:
        targets = [(args.model.upper(), args.model, None)]
    else:
        backbone = resolve_backbone(args.model, args.backbone)
        targets = [(f"{args.model} {backbone}", args.model, backbone)]

    print(describe_setup(args, device))
    rows = []
    for label, name, backbone in targets:
        rows.append(profile(label, name, backbone, args, device))
        if not args.markdown:
            print_report(rows[-1])
    if args.markdown:
        print_table(rows)


def parse_args(argv=None):
    p = cli.new_parser(__doc__)
    p.add_argument("--model", default="bisenet",
                   choices=[*MODEL_NAMES, *DISCRIMINATOR_NAMES, "all"],
                   help="segmentation network or discriminator to profile (all: every one)")
    p.add_argument("--backbone", default=None, help="default: resnet18 for bisenet, resnet101 "
                   "for deeplabv2, stdc1 for stdc; ignored for discriminators and --model all")
    p.add_argument("--num-classes", type=cli.positive_int, default=NUM_CLASSES,
                   help="output channels of the classifier")
    p.add_argument("--size", type=cli.positive_int, nargs=2, default=[512, 1024],
                   metavar=("H", "W"), help="input size")
    p.add_argument("--batch-size", type=cli.positive_int, default=1,
                   help="images per forward pass")
    cli.add_device_arg(p)
    p.add_argument("--amp", action="store_true", help="bfloat16 autocast")
    p.add_argument("--channels-last", action="store_true",
                   help="network and input in channels_last (NHWC) memory layout")
    p.add_argument("--compile", action="store_true", help="torch.compile (meant for CUDA)")
    p.add_argument("--warmup", type=cli.non_negative_int, default=10,
                   help="untimed passes (compile needs >= 1)")
    p.add_argument("--iters", type=cli.positive_int, default=50, help="timed passes")
    p.add_argument("--threads", type=cli.positive_int, default=None,
                   help="CPU threads (torch default: one per core; on a shared machine 1 can "
                        "be faster than oversubscribing)")
    p.add_argument("--markdown", action="store_true", help="print a markdown table")
    args = p.parse_args(argv)
    if args.model in BACKBONES:
        try:
            resolve_backbone(args.model, args.backbone)
        except ConfigError as e:
            p.error(str(e))
    if min(args.size) < 32:
        p.error(f"--size {args.size[0]} {args.size[1]}: the networks downsample 32x; expected "
                f"at least 32 32")
    if args.compile and args.warmup < 1:
        p.error("--compile needs --warmup >= 1 so that compilation is not timed")
    return args


if __name__ == "__main__":
    cli.entry(main, parse_args)
