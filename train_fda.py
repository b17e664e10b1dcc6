"""Image-to-image translation for adaptation: FDA (Yang & Soatto 2020) or LAB (He et al. 2021).

Step 4 of the brief. Each iteration gives the source batch the style of a random target
batch, trains on it with the source labels, and lowers the entropy of the target
predictions; with --pseudo it also fits target pseudo labels (a self-training round).

    # FDA at the paper's three betas (one model each), then their multi-band ensemble
    for b in 0.01 0.05 0.09; do
      python train_fda.py --source-root data/GTA5 --target-root data/Cityscapes \\
          --beta $b --out runs/fda_b$b
    done
    python evaluate.py runs/fda_b*/best.pth --ensemble
    # LAB colour transfer instead of FDA
    python train_fda.py ... --translate lab --out runs/lab
    # self-training round on pseudo labels from gen_pseudo.py
    python train_fda.py ... --beta 0.01 --pseudo runs/pseudo --out runs/fda_st
    python train_fda.py --demo --beta 0.01 --out runs/demo_fda

Loss (FDA paper, Eq. 5 and 7):
    L = CE(S(x_{s->t}), y_s) + ent_weight * L_ent(S(x_t)) [+ CE(S(x_t), pseudo y_t)]
with L_ent the Charbonnier-penalised normalised entropy, eta = 2, weight 0.005.
"""
from core import cli
from core.datasets import normalize
from core.evaluation import resize_images
from core.labels import NUM_CLASSES
from core.losses import charbonnier_entropy, seg_loss_sum
from core.models import build_model, param_groups
from core.runtime import Run, Timer
from core.schedule import poly_scheduler
from core.training import LossMeter, build_criterion, end_epoch, entry, resume, uda_data
from core.translate import fda_source_to_target, lab_transfer


def translate(args, source_images, target_images):
    """The source batch in the target batch's style, still 0-255 RGB (normalised after).

    FDA needs equal sizes, so the target batch is resized to the source's first (only its
    low-frequency amplitude is used). As in the authors' training code the FDA output is
    not clipped.
    """
    src, trg = source_images.float(), resize_images(target_images, source_images.shape[-2:])
    if args.translate == "fda":
        return fda_source_to_target(src, trg, args.beta)
    return lab_transfer(src, trg)


def train_step(run, model, criterion, source, target, iteration, args):
    """CE on translated source + entropy (and pseudo-label CE) on target; returns the losses."""
    with run.autocast():
        src_out = model(normalize(translate(args, source["image"], target["image"])))
        loss_seg = seg_loss_sum(criterion, src_out, source["label"])
        trg_out = model(normalize(target["image"]))
        loss_ent = charbonnier_entropy(trg_out[0], eta=args.eta)
        ent_weight = args.ent_weight if iteration >= args.ent_start else 0.0
        loss = loss_seg + ent_weight * loss_ent
        losses = {"loss_seg": loss_seg.detach(), "loss_ent": loss_ent.detach()}
        if "label" in target:               # self-training on pseudo labels
            loss_pseudo = seg_loss_sum(criterion, trg_out, target["label"])
            loss = loss + args.lambda_pseudo * loss_pseudo
            losses["loss_pseudo"] = loss_pseudo.detach()
    run.check_finite(loss, iteration)
    run.backward(loss)
    return losses


def main(args):
    run = Run(args, "train_fda")

    ## data: labelled source, unlabelled target (with pseudo labels for self-training)
    source_set, source, target, val_loader, iters_per_epoch = uda_data(run, args)

    ## model, optimiser, schedule, loss
    model = run.prepare(build_model(args.model, NUM_CLASSES, args.backbone, args.pretrained))
    optimizer = cli.build_optimizer(
        args, param_groups(run.unwrap(model), args.lr, args.weight_decay))
    scheduler = poly_scheduler(optimizer, args.epochs * iters_per_epoch)
    criterion = build_criterion(args, source_set)
    parts = {"model": model, "optimizer": optimizer, "scheduler": scheduler,
             "source_stream": source, "target_stream": target}
    start_epoch, best_miou = resume(run, args, **parts)
    run.start_log(resumed_from=args.resume)

    ## train loop
    for epoch in range(start_epoch, min(args.epochs, args.stop_after or args.epochs)):
        timer, meter = Timer(), LossMeter()
        model.train()
        bar = run.progress(range(iters_per_epoch), f"epoch {epoch + 1}/{args.epochs}")
        for i in bar:
            iteration = epoch * iters_per_epoch + i
            losses = train_step(run, model, criterion, run.batch(source.next()),
                                run.batch(target.next()), iteration, args)
            run.step(optimizer)
            scheduler.step()
            meter.add(losses)
            bar.set_postfix(meter.postfix("loss_seg", "loss_ent"))

        ## validate on Cityscapes val, log, checkpoint
        best_miou = end_epoch(run, args, model, val_loader, epoch, (epoch + 1) * iters_per_epoch,
                              best_miou, timer, parts, lr=scheduler.get_last_lr()[0],
                              **meter.means(run))
    run.close()


def parse_args(argv=None):
    parser = cli.new_parser(__doc__)
    cli.add_data_args(parser, target=True)
    cli.add_model_args(parser)
    cli.add_optim_args(parser)
    g = parser.add_argument_group("translation and entropy")
    g.add_argument("--translate", choices=("fda", "lab"), default="fda")
    g.add_argument("--beta", type=float, default=0.01,
                   help="FDA low-frequency window ratio (paper: 0.01, 0.05, 0.09)")
    g.add_argument("--ent-weight", type=float, default=0.005, help="entropy loss weight")
    g.add_argument("--eta", type=float, default=2.0, help="Charbonnier exponent")
    g.add_argument("--ent-start", type=int, default=0, metavar="ITER",
                   help="iteration from which the entropy loss is added")
    g.add_argument("--pseudo", metavar="DIR", help="target pseudo labels from gen_pseudo.py")
    g.add_argument("--lambda-pseudo", type=float, default=1.0)
    g.add_argument("--iters-per-epoch", type=int,
                   help="iterations per epoch (default: one pass over the source)")
    cli.add_run_args(parser, default_out="runs/fda")
    args = cli.parse(parser, argv)
    if args.translate == "fda" and not 0 <= args.beta <= 0.5:
        parser.error(f"--beta {args.beta}: expected a value in [0, 0.5] (paper: 0.01-0.09)")
    return args


if __name__ == "__main__":
    entry(main, parse_args)

