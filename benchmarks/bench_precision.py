"""Precision and memory layout, per network: fp32 / bf16 autocast / channels_last / both.

    .venv/bin/python benchmarks/bench_precision.py                  # CPU, one thread
    .venv/bin/python benchmarks/bench_precision.py --threads 2 --nets bisenet stdc
    .venv/bin/python benchmarks/bench_precision.py --device cuda --size 512 1024 --batch 8

For each network, in one process, the four variants alternate within each repeat (so
background load hits them alike) and the median is reported, with its ratio to fp32:
    inference   model(x) under inference_mode, batch 1 at --size (as evaluate.py runs it)
    train step  forward, loss, backward and an SGD step at --batch and --train-size
                (the discriminators: their BCE step on 19-channel maps)
The networks are randomly initialised (nothing is downloaded); on CUDA each timed call is
closed by a synchronize. bf16 autocast is measured on any CPU, but it is only fast where the
CPU has native bf16 (lscpu: avx512_bf16 or amx_bf16), which the header says.
"""
import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `core` lives at the repo root
from core.labels import NUM_CLASSES  # noqa: E402
from core.models import build_discriminator, build_model  # noqa: E402
from core.precision import cpu_has_native_bf16  # noqa: E402

NETWORKS = {   # name: (constructor, input channels)
    "bisenet": (lambda: build_model("bisenet", NUM_CLASSES, "resnet18", pretrained="none"), 3),
    "stdc": (lambda: build_model("stdc", NUM_CLASSES, "stdc1", pretrained="none"), 3),
    "deeplabv2": (lambda: build_model("deeplabv2", NUM_CLASSES, "resnet101",
                                      pretrained="none"), 3),
    "disc-fcd": (lambda: build_discriminator("fcd", NUM_CLASSES), NUM_CLASSES),
    "disc-dsc": (lambda: build_discriminator("dsc", NUM_CLASSES), NUM_CLASSES),
}
VARIANTS = (("fp32", False, False), ("bf16", True, False), ("channels_last", False, True),
            ("channels_last+bf16", True, True))


def first(output):
    """The main output of a network (segmenters return (main, aux...) in training)."""
    return output[0] if isinstance(output, (tuple, list)) else output


def timed(fn, device, warmup, iters):
    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    for _ in range(warmup):
        fn()
    sync()
    start = time.perf_counter()
    for _ in range(iters):
        fn()
    sync()
    return (time.perf_counter() - start) * 1000.0 / iters


def variant(model, x, bf16, channels_last):
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    return model.to(memory_format=fmt), x.contiguous(memory_format=fmt)


def inference_ms(model, x, device, bf16, channels_last, args):
    model, x = variant(model.eval(), x, bf16, channels_last)

    def call():
        with torch.inference_mode(), torch.autocast(device.type, torch.bfloat16, enabled=bf16):
            model(x)
    return timed(call, device, args.warmup, args.iters)


def train_step_ms(model, x, device, bf16, channels_last, args, is_disc):
    model, x = variant(model.train(), x, bf16, channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=1e-6, momentum=0.9)
    target = torch.randint(0, NUM_CLASSES, (x.shape[0], *x.shape[-2:]), device=device)

    def step():
        with torch.autocast(device.type, torch.bfloat16, enabled=bf16):
            out = first(model(x))
            if is_disc:
                loss = F.binary_cross_entropy_with_logits(out.float(), torch.ones_like(
                    out, dtype=torch.float32))
            else:
                out = F.interpolate(out.float(), size=x.shape[-2:], mode="bilinear")
                loss = F.cross_entropy(out, target)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return timed(step, device, max(1, args.warmup // 3), max(1, args.iters // 3))


def bench(name, args, device):
    build, channels = NETWORKS[name]
    torch.manual_seed(0)
    model = build().to(device)
    is_disc = name.startswith("disc")
    x_inf = torch.randn(1, channels, *args.size, device=device)
    batch = args.disc_batch if is_disc else (1 if name == "deeplabv2" else args.batch)
    x_train = torch.randn(batch, channels, *args.train_size, device=device)
    rows = {v[0]: {"inference": [], "train": []} for v in VARIANTS}
    for _ in range(args.repeats):
        for label, bf16, cl in VARIANTS:
            rows[label]["inference"].append(inference_ms(model, x_inf, device, bf16, cl, args))
            rows[label]["train"].append(train_step_ms(model, x_train, device, bf16, cl, args,
                                                      is_disc))
    med = {k: {m: statistics.median(v) for m, v in r.items()} for k, r in rows.items()}
    print(f"\n{name}: inference 1x{channels}x{args.size[0]}x{args.size[1]}, "
          f"train step {batch}x{channels}x{args.train_size[0]}x{args.train_size[1]}")
    print("| variant | inference ms | vs fp32 | train step ms | vs fp32 |")
    print("|---|---:|---:|---:|---:|")
    for label, _, _ in VARIANTS:
        i, t = med[label]["inference"], med[label]["train"]
        print(f"| {label} | {i:.1f} | {i / med['fp32']['inference']:.2f} | {t:.1f} | "
              f"{t / med['fp32']['train']:.2f} |", flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__)
    p.add_argument("--nets", nargs="+", default=list(NETWORKS), choices=list(NETWORKS))
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--threads", type=int, default=1, help="CPU threads (torch.set_num_threads)")
    p.add_argument("--size", type=int, nargs=2, default=(256, 512), help="inference H W")
    p.add_argument("--train-size", type=int, nargs=2, default=(144, 256), help="training H W")
    p.add_argument("--batch", type=int, default=8, help="training batch (DeepLabV2: 1)")
    p.add_argument("--disc-batch", type=int, default=8, help="discriminator training batch")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--iters", type=int, default=6)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        print(f"device: {torch.cuda.get_device_name(device)}, torch {torch.__version__}")
    else:
        print(f"device: CPU, {args.threads} thread(s), native bf16: {cpu_has_native_bf16()}, "
              f"torch {torch.__version__}")
    for name in args.nets:
        bench(name, args, device)


if __name__ == "__main__":
    main()
