"""Pseudo labels for the target training set (BDL's max-probability threshold).

Runs the unlabelled Cityscapes training images through one model, or the softmax average
of several (the multi-band ensemble of FDA: the checkpoint and those after --ensemble; a
file named twice counts once), and keeps a pixel's predicted class only where its
probability reaches its class's threshold (Li et al. 2019, BDL sec. 3.3):

    threshold_c = min(cap, q-quantile of max-probability over the pixels predicted c)

    python gen_pseudo.py runs/fda_b0.01/last.pth --ensemble runs/fda_b0.05/last.pth \\
        runs/fda_b0.09/last.pth --quantile 0.66 --out runs/pseudo   # FDA's: q = 0.66, cap 0.9
    python gen_pseudo.py runs/adv/last.pth --out runs/pseudo_adv      # BDL's: q = 0.5, cap 0.9
    python train_fda.py ... --pseudo runs/pseudo             # the self-training round

Two passes in constant memory: the first builds per-class histograms of the max
probability (the official scripts keep every probability, ~25 GB on Cityscapes), the second
predicts again and writes `<out>/<city>/<stem>.png` (train ids, 255 = ignore, as a palette
PNG in the Cityscapes colours, so any image viewer shows it) at the working size, where
the pseudo-label dataset pairs each with its image.
"""
from pathlib import Path

from torch.utils.data import DataLoader

from core import cli, outputs
from core.datasets import Cityscapes
from core.errors import ConfigError
from core.evaluation import (
    ensemble_paths,
    load_model,
    predict_probs,
    select_device,
)
from core.labels import CLASS_NAMES, save_label_png
from core.logs import write_json
from core.precision import inference_autocast
from core.pseudo import ProbHistogram, apply_thresholds


def predictions(models, sizes, loader, device, out_size, autocast):
    """Yield (names, max probability, argmax) per batch of the (ensembled) models."""
    for batch in loader:
        with autocast():
            probs = predict_probs(models, sizes, batch["image"].to(device), out_size)
        prob, label = probs.max(1)
        yield batch["name"], prob, label


def main(args):
    device = select_device(args.device)
    autocast = inference_autocast(device, args.amp)
    paths = ensemble_paths(args.checkpoint, args.ensemble)
    loaded = [load_model(path, device, amp=args.amp) for path in paths]
    models, sizes, stored = [m for m, _, _ in loaded], [s for _, s, _ in loaded], loaded[0][2]
    data_root = args.data_root or stored.get("target_root") or stored.get("val_root")
    if data_root is None:
        raise ConfigError("no --data-root given and no target root stored in the checkpoint")
    out_size = tuple(args.size or sizes[0])   # pseudo labels at the target working size
    images = Cityscapes(data_root, split=args.split, size=out_size, labelled=False)
    loader = DataLoader(images, batch_size=args.batch_size, num_workers=args.workers)

    ## pass 1: per-class histograms of the max probability -> thresholds
    hist = ProbHistogram(bins=args.bins, device=device)
    for _, prob, label in predictions(models, sizes, loader, device, out_size, autocast):
        hist.update(prob, label)
    thresholds = hist.thresholds(quantile=args.quantile, cap=args.cap)
    kept = hist.kept_fraction(thresholds)

    ## pass 2: predict again, drop pixels under their class's threshold, write PNGs
    out = outputs.claim_folder(Path(args.out), "--out", "gen_pseudo")   # marked as ours
    for names, prob, label in predictions(models, sizes, loader, device, out_size,
                                          autocast):
        pseudo = apply_thresholds(label, prob, thresholds).cpu().numpy()
        for name, pseudo_map in zip(names, pseudo, strict=True):
            path = out / f"{name}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            save_label_png(pseudo_map, path)

    report = {"checkpoints": paths, "data_root": str(data_root), "split": args.split,
              "size": list(out_size), "quantile": args.quantile, "cap": args.cap,
              "images": len(images), "classes": {
                  name: {"threshold": t, "kept": None if n == 0 else k, "pixels": n}
                  for name, t, k, n in zip(CLASS_NAMES, thresholds.tolist(), kept.tolist(),
                                           hist.counts.sum(1).tolist(), strict=True)}}
    write_json(out / "thresholds.json", report)
    print_report(report, out)


def print_report(report, out):
    print(f"{report['images']} pseudo labels ({report['size'][0]}x{report['size'][1]}) "
          f"in {out}; quantile {report['quantile']}, cap {report['cap']}")
    print(f"{'class':<14} threshold  kept (%)  predicted pixels")
    for name, c in report["classes"].items():
        kept = "n/a" if c["kept"] is None else f"{100 * c['kept']:.1f}"
        print(f"{name:<14} {c['threshold']:9.4f}  {kept:>8}  {c['pixels']:>16,}")


def build_parser():
    p = cli.new_parser(__doc__)
    # nargs="+" only to answer the old form (several checkpoints) with the new one
    p.add_argument("checkpoint", nargs="+", metavar="CHECKPOINT",
                   help="best.pth / last.pth (more to ensemble: --ensemble)")
    p.add_argument("--out", required=True, help="folder for the pseudo-label PNGs")
    p.add_argument("--data-root", help="Cityscapes folder (default: the checkpoint's target)")
    p.add_argument("--split", default="train", help="Cityscapes split folder to label")
    p.add_argument("--quantile", type=cli.probability, default=0.5,
                   help="per-class quantile of the max probability (BDL 0.5, FDA code 0.66)")
    p.add_argument("--cap", type=cli.probability, default=0.9,
                   help="upper bound of every threshold")
    p.add_argument("--bins", type=cli.positive_int, default=10000,
                   help="histogram bins on [0, 1]")
    cli.add_inference_args(p, batch_size=2, workers=2, size_help=(
        "size of the pseudo labels and of the images read (default: the first checkpoint's "
        "working size; each model is fed at its own)"))
    return p


def parse_args(argv=None):
    p = build_parser()
    args = p.parse_args(argv)
    if len(args.checkpoint) > 1:
        first, *rest = args.checkpoint
        p.error(f"one CHECKPOINT, then --ensemble for the others of an ensemble: write "
                f"`gen_pseudo.py {first} --ensemble {' '.join([*rest, *args.ensemble])} "
                f"--out {args.out}`")
    args.checkpoint = args.checkpoint[0]
    outputs.check_outputs(p, args, "gen_pseudo")   # new, empty, or gen_pseudo.py's own folder
    return args


if __name__ == "__main__":
    cli.entry(main, parse_args)
