"""Wall time of the demo table's rows, each run as on a 2-CPU machine, several side by side.

    .venv/bin/python benchmarks/bench_demo_rows.py --minutes 5            # rows in parallel
    .venv/bin/python benchmarks/bench_demo_rows.py --rows source adv-fcd --no-amp --cpus 2

Each row of docs/demo-results.md's loop runs as a user runs it (`python train_*.py --demo
...`), pinned to its own --cpus logical CPUs (hyper-thread siblings first, like a cloud
machine's vCPUs) with as many threads, for at most --minutes. Its seconds per epoch come from
its metrics.jsonl; the row's time is the demo's 10 epochs at that rate plus its start-up (the
time to its first iteration is not in the epochs' seconds; validation is). A machine with
fewer CPUs than rows x --cpus runs fewer rows at a time (in order). Precision: the demo's
default (--amp where the CPU has native bf16: the header says), or every row with --amp or
--no-amp as given. The table ends with each row's last target val mIoU (finished rows).
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from core.precision import cpu_has_native_bf16  # noqa: E402

DEMO_EPOCHS = 10
TEACHER = ("train_source.py", "--demo", "--epochs", "1", "--iters-per-epoch", "2")
ROWS = {
    "source": ("train_source.py", "--demo"),
    "stdc1": ("train_source.py", "--demo", "--model", "stdc", "--backbone", "stdc1"),
    "adv-fcd": ("train_adv.py", "--demo", "--disc", "fcd"),
    "adv-dsc": ("train_adv.py", "--demo", "--disc", "dsc"),
    "fda": ("train_fda.py", "--demo", "--beta", "0.01"),
    "lab": ("train_fda.py", "--demo", "--translate", "lab"),
    "mpl": ("train_mpl.py", "--demo", "--teacher", "{teacher}"),
}


def cpu_groups(size):
    """Disjoint groups of `size` logical CPUs, hyper-thread siblings together."""
    free, groups = sorted(os.sched_getaffinity(0)), []
    while len(free) >= size:
        first = free[0]
        siblings_file = Path(f"/sys/devices/system/cpu/cpu{first}/topology/thread_siblings_list")
        siblings = [first]
        if siblings_file.exists():
            text = siblings_file.read_text().strip().replace("-", ",")
            siblings = [int(c) for c in text.split(",") if int(c) in free]
        group = (siblings + [c for c in free if c not in siblings])[:size]
        groups.append(group)
        free = [c for c in free if c not in group]
    return groups


def start(name, argv, cpus, work):
    env = dict(os.environ, OMP_NUM_THREADS=str(len(cpus)), PYTHONUNBUFFERED="1")
    log = open(work / f"{name}.log", "w")
    return subprocess.Popen([sys.executable, *argv, "--out", str(work / name)], cwd=ROOT,
                            env=env, stdout=log, stderr=subprocess.STDOUT,
                            preexec_fn=lambda: os.sched_setaffinity(0, cpus))


def epoch_records(out):
    path = out / "metrics.jsonl"
    if not path.exists():
        return []
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in records if "val_miou" in r]


def epoch_seconds(out):
    return [r["seconds"] for r in epoch_records(out)]


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__)
    p.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    p.add_argument("--cpus", type=int, default=2, help="logical CPUs per row")
    p.add_argument("--minutes", type=float, default=5.0, help="per row at most")
    p.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None,
                   help="every row with --amp / --no-amp (default: the demo's own)")
    p.add_argument("--work", type=Path, help="folder for the runs (default: temporary)")
    args = p.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="demo_rows_"))
    work.mkdir(parents=True, exist_ok=True)
    groups = cpu_groups(args.cpus)
    print(f"CPU groups: {groups}; native bf16: {cpu_has_native_bf16()}; runs in {work}",
          flush=True)
    subprocess.run([sys.executable, "-m", "demo"], cwd=ROOT, check=True,
                   stdout=subprocess.DEVNULL)                 # generated once, before all
    if "mpl" in args.rows:
        subprocess.run([sys.executable, *TEACHER, "--out", str(work / "teacher")], cwd=ROOT,
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    pending, results = list(args.rows), {}
    while pending:
        batch, pending = pending[:len(groups)], pending[len(groups):]
        procs = {}
        for name, cpus in zip(batch, groups, strict=False):   # groups may outnumber rows
            argv = [a.format(teacher=work / "teacher" / "last.pth") for a in ROWS[name]]
            argv += [] if args.amp is None else ["--amp" if args.amp else "--no-amp"]
            procs[name] = (start(name, argv, cpus, work), time.monotonic())
        deadline, first_epoch = time.monotonic() + 60 * args.minutes, {}
        while any(proc.poll() is None for proc, _ in procs.values()) and \
                time.monotonic() < deadline:
            time.sleep(2)
            for name, (_, began) in procs.items():   # start-up = to the first epoch's end,
                seconds = epoch_seconds(work / name)  # less that epoch (+-2 s of polling)
                if seconds and name not in first_epoch:
                    first_epoch[name] = time.monotonic() - began - seconds[0]
        for name, (proc, began) in procs.items():
            finished = proc.poll() is not None
            if not finished:
                proc.kill()
            results[name] = (epoch_records(work / name), finished, time.monotonic() - began,
                             first_epoch.get(name), proc.returncode)
    print("\n| row | epochs timed | s/epoch | start-up s | 10-epoch row, min | finished | "
          "last val mIoU |\n|---|---:|---:|---:|---:|---|---:|")
    for name, (records, finished, wall, startup, rc) in results.items():
        seconds = [r["seconds"] for r in records]
        if not seconds or startup is None:
            print(f"| {name} | 0 | - | - | - | no epoch in {wall / 60:.1f} min (rc {rc}) | - |")
            continue
        rate = sum(seconds) / len(seconds)
        row = wall if finished else startup + DEMO_EPOCHS * rate
        miou = records[-1]["val_miou"]
        print(f"| {name} | {len(seconds)} | {rate:.1f} | {startup:.0f} | {row / 60:.1f} | "
              f"{'yes' if finished else 'no: projected'} | {100 * miou:.2f} |", flush=True)


if __name__ == "__main__":
    main()
