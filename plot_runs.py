"""Training curves of one or several runs in one PNG: losses, LR, val mIoU, D accuracy.

    pip install -r requirements-extras.txt                  # matplotlib
    python plot_runs.py runs/adv_fcd runs/adv_dsc --out adv.png
    python plot_runs.py runs/*                              # every run, one colour each

Reads each run folder's metrics.jsonl (or the file given): the lines written every
--log-every iterations (running means since the epoch began) draw the curves, and the epoch
lines (epoch means, val mIoU) are drawn as dots on them; a run logged per epoch only is drawn
from its epoch lines. One panel per loss (loss, loss_seg, loss_adv, loss_d, loss_ent, ...),
then the learning rate, the val mIoU and, for adversarial runs, the discriminator's accuracy
on source (solid) and target (dashed) maps. The x axis is the optimiser step. After a resume,
the lines the resumed run wrote again replace the killed run's. The PNG is never written over
unless --overwrite is given.
"""
import math
import os
from pathlib import Path

from core import cli, outputs
from core.errors import ConfigError, MissingDataError
from core.logs import read_jsonl

EXTRAS = "pip install -r requirements-extras.txt"
D_ACC = ("d_acc_source", "d_acc_target")


def main(args):
    try:
        import matplotlib  # noqa: F401  (an optional package)
    except ImportError:
        raise ConfigError(f"plot_runs.py needs matplotlib, an optional package: "
                          f"{EXTRAS}") from None

    ## the runs: per-iteration and per-epoch lines of each metrics.jsonl
    runs = [read_run(path) for path in args.runs]
    labels = run_labels(args.runs)
    for label, run in zip(labels, runs, strict=True):
        print(summary(label, run))

    ## one panel per quantity, one colour per run
    fig = draw(runs, labels)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp.png")
    try:
        fig.savefig(tmp, dpi=args.dpi)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    print(f"wrote {out}")


def read_run(path):
    """{'args': the start line's args, 'train': [...], 'epochs': [...]}: records sorted by
    iteration, the last written kept where a resumed run wrote an iteration again."""
    path = Path(path)
    file = path / "metrics.jsonl" if path.is_dir() else path
    if not file.is_file():
        raise MissingDataError(f"no metrics.jsonl in {path} (expected a run folder that a "
                               f"training script wrote, or its metrics.jsonl)")
    start, train, epochs = {}, {}, {}
    for record in read_jsonl(file):     # a last line being written (or cut) is left out
        event = record.get("event")
        if event == "start":
            start = record
        elif event == "train" and "iteration" in record:
            train[record["iteration"]] = record
        elif event is None and "epoch" in record and "iteration" in record:
            epochs[record["iteration"]] = record
    return {"file": file, "args": start.get("args", {}),
            "train": [train[i] for i in sorted(train)],
            "epochs": [epochs[i] for i in sorted(epochs)]}


def run_labels(paths):
    """Run folder names, or the paths as given where two folders share a name."""
    names = [Path(p).name if Path(p).is_dir() else Path(p).parent.name for p in paths]
    return names if len(set(names)) == len(names) else [str(p) for p in paths]


def series(records, key, scale=1.0):
    """(iterations, values) of `key` in the records that have it; null (NaN) -> NaN."""
    have = [r for r in records if key in r]
    return ([r["iteration"] for r in have],
            [math.nan if r[key] is None else scale * r[key] for r in have])


def panels(runs):
    """Titles and keys of the panels: every loss any run logged, LR, val mIoU, D accuracy."""
    keys = {k for run in runs for r in run["train"] + run["epochs"] for k in r}
    found = [(k, (k,)) for k in sorted(k for k in keys if k.startswith("loss"))]
    found += [("learning rate", ("lr",)), ("val mIoU (%)", ("val_miou",))]
    if keys & set(D_ACC):
        found.append(("discriminator accuracy (source solid, target dashed)", D_ACC))
    return found


def draw(runs, labels):
    """The figure: one axes per panel; in each, per run, the per-iteration curve and the
    epoch dots of the same colour (val mIoU exists per epoch only)."""
    from matplotlib.figure import Figure  # a plain Figure: no pyplot state, no display
    from matplotlib.lines import Line2D
    found = panels(runs)
    cols = min(3, len(found))
    rows = math.ceil(len(found) / cols)
    fig = Figure(figsize=(5.2 * cols, 3.4 * rows + 0.6), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    colours = [f"C{i % 10}" for i in range(len(runs))]
    for ax, (title, keys) in zip(axes, found, strict=False):
        scale = 100.0 if keys == ("val_miou",) else 1.0
        for run, colour in zip(runs, colours, strict=True):
            for key, style in zip(keys, ("-", "--"), strict=False):
                x, y = series(run["train"], key)
                if x:       # the per-iteration curve
                    ax.plot(x, y, style, color=colour, linewidth=1)
                x, y = series(run["epochs"], key, scale)
                if x:       # epoch dots: on that curve, or joined where there is none
                    joined = not run["train"] or key == "val_miou"
                    ax.plot(x, y, "o" + (style if joined else ""), color=colour,
                            markersize=4, linewidth=1)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("iteration")
        ax.grid(alpha=0.3)
    for ax in axes[len(found):]:
        ax.set_visible(False)
    handles = [Line2D([], [], color=c, label=label)
               for c, label in zip(colours, labels, strict=True)]
    fig.legend(handles=handles, loc="outside upper center", ncols=min(len(labels), 4),
               fontsize=9, frameon=False)
    return fig


def summary(label, run):
    """One line per run: how far it got and its val mIoU."""
    epochs = run["epochs"]
    if not epochs:
        return f"{label}: no epoch finished yet ({len(run['train'])} per-iteration lines)"
    scored = [e for e in epochs if e.get("val_miou") is not None]
    best = max(scored, key=lambda e: e["val_miou"], default=None)
    text = f"{label}: epoch {epochs[-1]['epoch']}, iteration {epochs[-1]['iteration']}"
    if best is not None:
        text += (f", last val mIoU {100 * scored[-1]['val_miou']:.2f}, best "
                 f"{100 * best['val_miou']:.2f} (epoch {best['epoch']})")
    return text


def parse_args(argv=None):
    p = cli.new_parser(__doc__)
    p.add_argument("runs", nargs="+", help="run folders (or their metrics.jsonl files)")
    p.add_argument("--out", default="curves.png", help="the PNG to write")
    p.add_argument("--dpi", type=cli.positive_int, default=110,
                   help="resolution of the PNG, in dots per inch")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    args = p.parse_args(argv)
    outputs.check_outputs(p, args, "plot_runs")
    return args


if __name__ == "__main__":
    cli.entry(main, parse_args)
