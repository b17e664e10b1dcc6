"""--amp as users run it: the demo's training, evaluate.py and predict.py, with and without.

    .venv/bin/python benchmarks/bench_amp.py                 # 10 demo epochs, as `make demo`
    .venv/bin/python benchmarks/bench_amp.py --epochs 1 --work /tmp/amp

In one run, on this machine (the header says whether its CPU has native bf16):
  1. train_source.py --demo, fp32 then --amp: seconds per epoch (metrics.jsonl), ratio
  2. evaluate.py: both runs' last.pth (the demo's score with and without --amp); then the
     --amp run's last.pth, fp32 then --amp: mIoU and its difference, at
     the demo's working size and at --size 512 1024 (where the network dominates): wall time
  3. predict.py on real Cityscapes frames (--frames, default ../shared/data's samples),
     fp32 then --amp: the share of pixels given the same class
Each command runs as a user runs it (a subprocess); nothing is timed inside the scripts.
"""
import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from core.precision import cpu_has_native_bf16  # noqa: E402

SHARED_FRAMES = ROOT.parent / "shared" / "data" / "cityscapes_samples" / "leftImg8bit"


def run(*argv):
    """Wall seconds of one script run as a user runs it."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, *map(str, argv)], cwd=ROOT, text=True,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    if done.returncode:
        sys.exit(f"{' '.join(map(str, argv))} failed:\n{done.stderr}")
    return time.perf_counter() - start


def epoch_seconds(out):
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [r["seconds"] for r in records if "val_miou" in r]


def evaluate(ckpt, json_path, *extra):
    seconds = run("evaluate.py", ckpt, "--json", json_path, *extra)
    return json.loads(Path(json_path).read_text()), seconds


def miou_of(result):
    result = result[0] if isinstance(result, list) else result
    return 100 * result["miou"]


def agreement(a, b):
    same = total = 0
    for pa in sorted(a.rglob("*.png")):
        x = np.asarray(Image.open(pa))
        y = np.asarray(Image.open(b / pa.relative_to(a)))
        same, total = same + int((x == y).sum()), total + x.size
    return same / total, total


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__)
    p.add_argument("--epochs", type=int, default=10, help="demo epochs per training run")
    p.add_argument("--work", type=Path, help="folder for the runs (default: a temporary one)")
    p.add_argument("--frames", type=Path, default=SHARED_FRAMES,
                   help="real frames for predict.py")
    args = p.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="bench_amp_"))
    print(f"CPU with native bf16: {cpu_has_native_bf16()}; runs in {work}", flush=True)

    print("\n| training, train_source.py --demo | s/epoch | vs fp32 | wall min |\n"
          "|---|---:|---:|---:|")
    per_epoch = {}
    for name, extra in (("fp32", ("--no-amp",)), ("amp", ("--amp",))):   # (--demo's: native)
        wall = run("train_source.py", "--demo", "--epochs", args.epochs,
                   "--out", work / name, *extra)
        per_epoch[name] = float(np.mean(epoch_seconds(work / name)))
        print(f"| {name} | {per_epoch[name]:.1f} | {per_epoch[name] / per_epoch['fp32']:.2f} | "
              f"{wall / 60:.1f} |", flush=True)

    ckpt = work / "amp" / "last.pth"
    trained = {name: miou_of(evaluate(work / name / "last.pth", work / f"{name}.json")[0])
               for name in ("fp32", "amp")}
    print(f"\ntarget val mIoU of the two runs' last.pth (evaluated in fp32): fp32 run "
          f"{trained['fp32']:.2f}, --amp run {trained['amp']:.2f}")
    print("\n| evaluate.py (the --amp run's last.pth) | mIoU | wall s | vs fp32 |\n"
          "|---|---:|---:|---:|")
    for size in ((), ("--size", 512, 1024)):
        label = "demo size" if not size else "512x1024"
        fp32, t32 = evaluate(ckpt, work / f"eval_fp32{len(size)}.json", *size)
        amp, tamp = evaluate(ckpt, work / f"eval_amp{len(size)}.json", "--amp", *size)
        print(f"| {label}, fp32 | {miou_of(fp32):.2f} | {t32:.1f} | 1.00 |\n"
              f"| {label}, --amp | {miou_of(amp):.2f} (diff {miou_of(amp) - miou_of(fp32):+.2f})"
              f" | {tamp:.1f} | {tamp / t32:.2f} |", flush=True)

    if args.frames.exists():
        run("predict.py", ckpt, args.frames, "--out", work / "pred_fp32", "--format", "trainids")
        run("predict.py", ckpt, args.frames, "--out", work / "pred_amp", "--format", "trainids",
            "--amp")
        share, pixels = agreement(work / "pred_fp32", work / "pred_amp")
        print(f"\npredict.py --amp vs fp32 on {args.frames}: {100 * share:.2f}% of {pixels} "
              f"pixels given the same class")


if __name__ == "__main__":
    main()
