"""BiSeNet-R18 inference: the course code's network in fp32 against ours as evaluate.py runs it.

    git clone https://github.com/ooooverflow/BiSeNet /tmp/course-bisenet
    .venv/bin/python benchmarks/bench_course_latency.py /tmp/course-bisenet

The course repository's own model (model/build_BiSeNet.py, context path resnet18, random
weights: its `pretrained=True` download is switched off) in fp32, contiguous, against ours
(core.models, the same computation: tests/test_faithful.py) loaded and run as evaluate.py
runs it with --amp: core.precision's memory layout and autocast. Model-only latency under
inference_mode, one thread by default, batch 1, the two alternating per repeat; median.
"""
import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torchvision

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `core` lives at the repo root
from core.labels import NUM_CLASSES  # noqa: E402
from core.models import build_model  # noqa: E402
from core.precision import amp_dtype, cpu_has_native_bf16, set_memory_format  # noqa: E402


def course_network(repo):
    """The course code's BiSeNet (resnet18), without its ImageNet download."""
    for name in ("resnet18", "resnet101"):      # their `pretrained=` predates `weights=`
        build = getattr(torchvision.models, name)
        setattr(torchvision.models, name, lambda pretrained=False, _b=build, **kw: _b(**kw))
    sys.path.insert(0, str(repo))
    from model.build_BiSeNet import BiSeNet
    return BiSeNet(NUM_CLASSES, "resnet18").eval()


def latency_ms(model, x, autocast, warmup, iters):
    with torch.inference_mode(), autocast():
        for _ in range(warmup):
            model(x)
        start = time.perf_counter()
        for _ in range(iters):
            model(x)
    return (time.perf_counter() - start) * 1000 / iters


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__)
    p.add_argument("course_repo", type=Path, help="a clone of ooooverflow/BiSeNet")
    p.add_argument("--sizes", type=int, nargs="+", default=[256, 512, 512, 1024],
                   help="H W pairs")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    cpu = torch.device("cpu")
    dtype = amp_dtype(cpu, True)
    course = course_network(args.course_repo)
    ours = set_memory_format(build_model("bisenet", NUM_CLASSES, "resnet18",
                                         pretrained="none").eval(), cpu, dtype)
    autocast = (lambda: torch.autocast("cpu", dtype=dtype)) if dtype else torch.inference_mode
    print(f"CPU, {args.threads} thread(s), native bf16: {cpu_has_native_bf16()}, torch "
          f"{torch.__version__}; ours as evaluate.py --amp runs it: autocast {dtype}, "
          f"layout as core.precision picks it")
    print("\n| input | course code fp32 ms | ours --amp ms | ratio |\n|---|---:|---:|---:|")
    for h, w in zip(args.sizes[::2], args.sizes[1::2], strict=True):
        x = torch.randn(1, 3, h, w)
        times = {"course": [], "ours": []}
        for _ in range(args.repeats):
            times["course"].append(latency_ms(course, x, torch.inference_mode, args.warmup,
                                              args.iters))
            times["ours"].append(latency_ms(ours, x, autocast, args.warmup, args.iters))
        c, o = statistics.median(times["course"]), statistics.median(times["ours"])
        print(f"| 1x3x{h}x{w} | {c:.1f} | {o:.1f} | {o / c:.2f} |", flush=True)


if __name__ == "__main__":
    main()
