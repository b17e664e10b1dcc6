"""The float32 parts of a training step that bf16 does not speed up, and their chosen forms.

    .venv/bin/python benchmarks/bench_train_overheads.py               # 2 threads, BiSeNet-R18
    .venv/bin/python benchmarks/bench_train_overheads.py --threads 1 --batch 8

In one process, medians of alternating repeats, ratios against the first row of each part:
  optimiser step  SGD (momentum 0.9, weight decay) over BiSeNet-R18's parameters: the
                  per-tensor loop, foreach, and fused (core.build.fused), on random gradients
  logits -> loss  the three training outputs (1/8, 1/16, 1/32 of --size) upsampled to --size
                  and their summed cross-entropy, forward and backward: F.interpolate on
                  logits in channels_last (as the networks make them) or copied to NCHW
                  first, and the two matrix products (core.models.logits, the CPU training
                  route)
"""
import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `core` lives at the repo root
from core.models import build_model, param_groups  # noqa: E402
from core.models.logits import bilinear_as_matmuls  # noqa: E402
from core.precision import cpu_has_native_bf16  # noqa: E402


def median_ms(variants, repeats, iters):
    """{name: median ms of one call}, the variants alternating within each repeat."""
    times = {name: [] for name in variants}
    for fn in variants.values():
        fn()                                                        # warm-up
    for _ in range(repeats):
        for name, fn in variants.items():
            start = time.perf_counter()
            for _ in range(iters):
                fn()
            times[name].append((time.perf_counter() - start) / iters * 1000)
    return {name: statistics.median(t) for name, t in times.items()}


def optimiser_steps(model):
    def step_of(**kind):
        opt = torch.optim.SGD(param_groups(model, 0.01, 5e-4), lr=0.01, momentum=0.9,
                              weight_decay=5e-4, **kind)
        return opt.step
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    return {"per-tensor loop": step_of(foreach=False), "foreach": step_of(foreach=True),
            "fused": step_of(fused=True)}


def logits_to_loss(batch, size):
    h, w = size
    target = torch.randint(0, 19, (batch, h, w))
    shapes = [(h // s, w // s) for s in (8, 16, 32)]

    def interpolate(x):
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False)

    def loss_of(upsample, contiguous_first=False):
        outs = [torch.randn(batch, 19, *s).contiguous(memory_format=torch.channels_last)
                .requires_grad_() for s in shapes]

        def step():
            loss = 0
            for out in outs:
                up = upsample(out.contiguous() if contiguous_first else out)
                loss = loss + F.cross_entropy(up, target, ignore_index=255)
            loss.backward()
        return step
    return {"F.interpolate, channels_last logits": loss_of(interpolate),
            "F.interpolate, copied to NCHW first": loss_of(interpolate, contiguous_first=True),
            "two matrix products (the CPU training route)":
                loss_of(lambda x: bilinear_as_matmuls(x, size))}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__)
    p.add_argument("--threads", type=int, default=2, help="CPU threads (torch.set_num_threads)")
    p.add_argument("--batch", type=int, default=8, help="training batch")
    p.add_argument("--size", type=int, nargs=2, default=(144, 256), help="training H W")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--iters", type=int, default=3)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print(f"CPU, {args.threads} thread(s), native bf16: {cpu_has_native_bf16()}, "
          f"torch {torch.__version__}")
    model = build_model("bisenet", 19, "resnet18", pretrained="none")
    parts = {"optimiser step (BiSeNet-R18 SGD)": optimiser_steps(model),
             f"logits -> loss ({args.batch}x19 at {args.size[0]}x{args.size[1]}, fwd+bwd)":
                 logits_to_loss(args.batch, tuple(args.size))}
    for part, variants in parts.items():
        ms = median_ms(variants, args.repeats, args.iters)
        first = next(iter(ms.values()))
        print(f"\n{part}\n| variant | ms | ratio |\n|---|---:|---:|")
        for name, value in ms.items():
            print(f"| {name} | {value:.1f} | {value / first:.2f} |")


if __name__ == "__main__":
    main()
