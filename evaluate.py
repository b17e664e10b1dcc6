"""Evaluate checkpoints on Cityscapes val: pixel accuracy, mIoU and per-class IoU.

Each model is rebuilt from the arguments stored in its checkpoint, so no model flags are
needed; the data root defaults to the validation root stored there too.

    python evaluate.py runs/gta/last.pth
    python evaluate.py runs/city/last.pth runs/gta/last.pth runs/gta_aug/last.pth --markdown
    python evaluate.py runs/*/best.pth --markdown   # picked on Cityscapes val: "target-selected"
    python evaluate.py runs/fda_b0.01/last.pth \\
        --ensemble runs/fda_b0.05/last.pth runs/fda_b0.09/last.pth  # multi-band ensemble (MBT)
    python evaluate.py runs/mpl/last.pth --net teacher        # train_mpl.py's teacher
    python evaluate.py runs/gta/last.pth --json gta.json --save-vis vis/gta
    python evaluate.py runs/adv_s*/last.pth --markdown --group-by-seed  # mean ± std over seeds

Several checkpoints are scored one by one (a row each); with --ensemble, the one checkpoint
given and those after --ensemble are scored as one ensemble, the mean of their softmax (a
file named twice counts once). Protocol: images are fed at the working size stored in the
checkpoint (--size overrides it) and the logits are upsampled to the full label size; both
sizes are printed with each result.
"""
import math
import sys

import numpy as np
from PIL import Image

from core import cli, outputs
from core.datasets import GTA5, Cityscapes
from core.errors import ConfigError, DataError
from core.evaluation import (
    ensemble_paths,
    evaluate,
    load_model,
    predict_probs,
    select_device,
)
from core.labels import CLASS_NAMES, NUM_CLASSES, colorize
from core.logs import write_json
from core.metrics import format_table
from core.precision import inference_autocast
from core.sampling import make_loader
from core.seed_groups import GROUP_KEYS, check_same_end, seed_groups


def main(args):
    device = select_device(args.device)
    autocast = inference_autocast(device, args.amp)
    net = "teacher" if args.net == "teacher" else "model"   # a train_mpl.py run holds both
    # One model per row, or one row for the softmax average of the ensemble.
    paths = (ensemble_paths(args.checkpoints[0], args.ensemble) if args.ensemble
             else args.checkpoints)
    if args.group_by_seed:   # runs folded into one row must have ended at the same point
        check_same_end(paths)
    loaded = [load_model(path, device, args.size, net, amp=args.amp) for path in paths]
    data_root = args.data_root or loaded[0][2].get("val_root")
    if data_root is None:
        raise ConfigError("no --data-root given and none stored in the checkpoint")
    if args.dataset == "gta5":   # e.g. held-out source frames, to measure the domain gap
        if args.data_root is None:
            raise ConfigError("--dataset gta5 needs --data-root (a folder in the GTA5 layout)")
        val_set = GTA5(data_root, split=args.split, size=None)
    else:
        val_set = Cityscapes(data_root, split=args.split, size=None)
    loader = make_loader(val_set, args.batch_size, 0, "eval", train=False, workers=args.workers)
    label_size = tuple(val_set[0]["label"].shape)
    groups = [loaded] if args.ensemble else [[one] for one in loaded]
    names = ["ensemble of " + ", ".join(paths)] if args.ensemble else paths
    names = [f"{name} (teacher)" for name in names] if net == "teacher" else names

    rows = []
    vis_root = args.save_vis and outputs.claim_folder(args.save_vis, "--save-vis", "evaluate")
    for name, group in zip(names, groups, strict=True):
        models, sizes = [m for m, _, _ in group], [s for _, s, _ in group]
        result = evaluate(models, sizes, loader, device, NUM_CLASSES,
                          autocast=autocast).compute()
        if math.isnan(result["miou"]):
            raise DataError(f"{args.split} of {data_root} has no labelled pixel (every label "
                            f"is ignore or an unknown id): nothing to score")
        sizes_text = ", ".join(f"{h}x{w}" for h, w in sizes)
        result.update(checkpoint=name, input_size=sizes_text, images=len(val_set),
                      label_size=f"{label_size[0]}x{label_size[1]}")
        rows.append(result)
        print(f"\n{name}\n  {args.split} of {data_root}: {len(val_set)} images, input "
              f"{sizes_text} (HxW), logits upsampled to labels {result['label_size']}")
        print(format_table(result))
        if vis_root:    # several rows: one subfolder each, none overwrites another's
            vis_dir = vis_root if len(groups) == 1 else vis_root / f"row{len(rows)}"
            save_panels(models, sizes, val_set, device, vis_dir, args.vis_count, autocast)
    if args.group_by_seed:   # runs that differ only in --seed: one row, mean ± std and n
        rows = seed_groups(rows, [group[0][2] for group in groups])
        print_seed_groups(rows, args.markdown)
    elif args.markdown:
        print_markdown(rows)
    if args.json:
        write_results(rows, args.json)


def save_panels(models, sizes, dataset, device, out_dir, count, autocast):
    """image | ground truth | prediction, in the Cityscapes colours, one PNG per image."""
    out_dir.mkdir(exist_ok=True)
    for i in range(min(count, len(dataset))):
        item = dataset[i]
        image = item["image"].unsqueeze(0).to(device)
        with autocast():
            probs = predict_probs(models, sizes, image, tuple(item["label"].shape))
        pred = probs.argmax(1)[0].cpu().numpy()
        panel = np.concatenate([item["image"].permute(1, 2, 0).numpy(),
                                colorize(item["label"].numpy()), colorize(pred)], axis=1)
        Image.fromarray(panel).save(out_dir / (item["name"].replace("/", "_") + ".png"))
    print(f"  wrote {min(count, len(dataset))} panels to {out_dir}")


def percent(x):
    return "n/a" if math.isnan(x) else f"{100 * x:.2f}"


def print_markdown(rows):
    print("\n| checkpoint | input (HxW) | pixel acc (%) | mIoU (%) |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['checkpoint']} | {r['input_size']} | {percent(r['pixel_acc'])} "
              f"| {percent(r['miou'])} |")
    print("\n| checkpoint | " + " | ".join(CLASS_NAMES) + " |")
    print("|---" * (NUM_CLASSES + 1) + "|")
    for r in rows:
        print(f"| {r['checkpoint']} | " + " | ".join(percent(v) for v in r["iou"]) + " |")


def print_seed_groups(groups, markdown):
    def pm(mean, std):
        return percent(mean) + ("" if math.isnan(std) else f" ± {100 * std:.2f}")
    if not markdown:
        for g in groups:
            print(f"\n{g['checkpoint']}: mIoU {pm(g['miou'], g['miou_std'])}, pixel acc "
                  f"{pm(g['pixel_acc'], g['pixel_acc_std'])} (%, mean ± sample std over "
                  f"n = {g['n']}, seeds {', '.join(map(str, g['seeds']))})")
        return
    print("\n| runs | seeds | n | input (HxW) | pixel acc (%) | mIoU (%) |\n"
          "|---|---|---:|---|---:|---:|")
    for g in groups:
        print(f"| {g['checkpoint']} | {', '.join(map(str, g['seeds']))} | {g['n']} | "
              f"{g['input_size']} | {pm(g['pixel_acc'], g['pixel_acc_std'])} | "
              f"{pm(g['miou'], g['miou_std'])} |")
    print("\nmean IoU per class (%):\n\n| runs | " + " | ".join(CLASS_NAMES) + " |")
    print("|---" * (NUM_CLASSES + 1) + "|")
    for g in groups:
        print(f"| {g['checkpoint']} | " + " | ".join(percent(v) for v in g["iou"]) + " |")


def write_results(rows, path):
    """{"miou", "pixel_acc", "iou": {class: value}} as fractions (a list for several rows);
    a score that is undefined (a class absent from the labels and the predictions) is null."""
    objs = [{"checkpoint": r["checkpoint"], "miou": r["miou"], "pixel_acc": r["pixel_acc"],
             "iou": dict(zip(CLASS_NAMES, r["iou"], strict=True)),
             "input_size": r["input_size"], "label_size": r["label_size"],
             "images": r["images"], **{k: r[k] for k in GROUP_KEYS if k in r}}
            for r in rows]
    write_json(path, objs[0] if len(objs) == 1 else objs)


def build_parser():
    p = cli.new_parser(__doc__)
    p.add_argument("checkpoints", nargs="+", metavar="CHECKPOINT",
                   help="best.pth / last.pth files, scored one by one (one with --ensemble)")
    p.add_argument("--data-root", help="Cityscapes folder (default: stored in the checkpoint)")
    p.add_argument("--dataset", choices=("cityscapes", "gta5"), default="cityscapes",
                   help="the layout of --data-root")
    p.add_argument("--split", default="val",
                   help="Cityscapes split folder, or a GTA5 list file (its name in the root)")
    p.add_argument("--net", choices=("student", "teacher"), default="student",
                   help="a train_mpl.py checkpoint holds two networks: the one to score")
    p.add_argument("--markdown", action="store_true", help="print the results table")
    p.add_argument("--group-by-seed", action="store_true",
                   help="one row per group of runs that differ only in --seed: mean ± sample "
                        "std and n of each score")
    p.add_argument("--json", help="write the result(s) to this JSON file")
    p.add_argument("--save-vis", metavar="DIR",
                   help="write image | label | prediction panels (several checkpoints: one "
                        "subfolder per row, DIR/row1, DIR/row2, ... in the table's order)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --json file")
    p.add_argument("--vis-count", type=cli.positive_int, default=20,
                   help="how many panels --save-vis writes")
    cli.add_inference_args(p, batch_size=1, workers=2)
    return p


def parse_args(argv=None):
    p = build_parser()
    argv = sys.argv[1:] if argv is None else [str(a) for a in argv]
    # --ensemble was once a switch (ensemble all the positionals): answer it with the new form
    switch = [i for i, a in enumerate(argv) if a == "--ensemble"
              and (i + 1 == len(argv) or argv[i + 1].startswith("-"))]
    args = p.parse_args([a for i, a in enumerate(argv) if i not in switch])
    if switch or (args.ensemble and len(args.checkpoints) > 1):
        first, *rest = args.checkpoints
        others = " ".join([*rest, *args.ensemble]) or "B.pth C.pth"
        p.error(f"--ensemble names the other checkpoints of one ensemble, after the one "
                f"positional checkpoint: write `evaluate.py {first} --ensemble {others}`, "
                f"or drop --ensemble to score each checkpoint on its own")
    if args.group_by_seed and args.ensemble:
        p.error("--group-by-seed scores each checkpoint on its own: drop --ensemble")
    outputs.check_outputs(p, args, "evaluate")
    return args


if __name__ == "__main__":
    cli.entry(main, parse_args)
