"""Image-to-image translation for adaptation: FDA (Yang & Soatto 2020) or LAB (He et al. 2021).

Step 4 of the course project (README). Each iteration gives the source batch the style of
a random target batch, trains on it with the source labels, and lowers the entropy of the
target predictions; with --pseudo it also fits target pseudo labels (a self-training round).

    # FDA at the paper's three betas (one model each), then their multi-band ensemble
    for b in 0.01 0.05 0.09; do
      python train_fda.py --source-root data/GTA5 --target-root data/Cityscapes \\
          --beta $b --out runs/fda_b$b
    done
    python evaluate.py runs/fda_b*/last.pth --ensemble
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
from core.checkpoint import checkpoint_state, resume, unwrap
from core.evaluation import validate
from core.labels import NUM_CLASSES
from core.logs import Timer, epoch_record
from core.losses import build_criterion, charbonnier_entropy, seg_loss_sum
from core.models import build_model, model_options, param_groups, upsample
from core.runtime import Run, check_divergence, check_finite, report_data
from core.sampling import SOURCE_STREAM, TARGET_STREAM, Stream
from core.schedule import poly_scheduler
from core.session import Session
from core.transforms import normalize, resize_images
from core.translate import fda_source_to_target, lab_transfer

SCRIPT = "train_fda"


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


def train_step(run, model, criterion, src_batch, trg_batch, iteration, args):
    """CE on translated source + entropy (and pseudo-label CE) on target; returns the losses."""
    with run.autocast():
        src_out = model(normalize(translate(args, src_batch["image"], trg_batch["image"])))
        loss_seg = seg_loss_sum(criterion, src_out, src_batch["label"])
        # FDA's code takes the entropy of the logits at the network's output stride (1/8),
        # before upsampling (model/deeplab.py, forward); the CE terms use upsampled logits.
        trg_out = model(normalize(trg_batch["image"]), upsample=False)
        loss_ent = charbonnier_entropy(trg_out[0], eta=args.eta)
        ent_weight = args.ent_weight if iteration >= args.ent_start else 0.0
        loss = loss_seg + ent_weight * loss_ent
        losses = {"loss_seg": loss_seg.detach(), "loss_ent": loss_ent.detach()}
        if args.pseudo:                     # self-training on pseudo labels
            trg_out = upsample(trg_out, trg_batch["label"].shape[-2:])
            loss_pseudo = seg_loss_sum(criterion, trg_out, trg_batch["label"])
            loss = loss + args.lambda_pseudo * loss_pseudo
            losses["loss_pseudo"] = loss_pseudo.detach()
    check_finite(loss, iteration, run.out)
    run.scaler.scale(loss).backward()
    return losses


def main(args):
    run = Run(args, SCRIPT)     # device, AMP, torchrun process group, seeds, run folder

    ## data: labelled source, unlabelled target (with --pseudo labels for self-training),
    ## each an endless stream shuffled apart from the other; Cityscapes val
    source_set, target_set = cli.source_dataset(args), cli.target_dataset(args)
    source_stream = Stream(run.train_loader(source_set, SOURCE_STREAM))
    target_stream = Stream(run.train_loader(target_set, TARGET_STREAM))
    val_loader = run.val_loader(cli.val_dataset(args))
    iters_per_epoch = args.iters_per_epoch or len(source_stream)
    report_data(run, source_set, val_loader.dataset)

    ## model, optimiser, poly schedule, loss
    model = run.place(build_model(args.model, NUM_CLASSES, args.backbone, args.pretrained,
                                  **model_options(args)))
    optimizer = cli.build_optimizer(args, param_groups(unwrap(model), args.lr,
                                                       args.weight_decay))
    scheduler = poly_scheduler(optimizer, cli.poly_horizon(args, iters_per_epoch))
    criterion = build_criterion(args, source_set)
    parts = {"model": model, "optimizer": optimizer, "scheduler": scheduler,
             "source_stream": source_stream, "target_stream": target_stream}
    run.open_folder()
    start = resume(run, args, parts)        # the epoch and step to continue from
    best_miou, session = start.best_miou, Session(args, run, parts)  # logs, mid-epoch saves

    ## train loop
    for epoch in range(start.epoch, session.last_epoch):
        timer, meter = Timer(), start.meter(epoch)
        model.train()
        bar = run.progress(iters_per_epoch, epoch, first=start.first_step(epoch))
        for i in bar:
            iteration = epoch * iters_per_epoch + i
            src_batch = run.batch_to_device(source_stream.next())
            trg_batch = run.batch_to_device(target_stream.next())
            losses = train_step(run, model, criterion, src_batch, trg_batch, iteration, args)
            run.scaler.step(optimizer)
            run.scaler.update()
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
            meter.add(**losses)
            bar.set_postfix(meter.postfix("loss_seg", "loss_ent"))
            session.after_step(epoch, i, iteration, meter, scheduler, best_miou)  # log, save
            if session.out_of_time():       # --time-limit: a mid-epoch checkpoint was saved
                break
        if session.out_of_time():
            break

        ## epoch tail: validate, keep the best, save (best.pth, last.pth), then log
        losses = check_divergence(meter.means(run), epoch, run.out)
        result = validate(run, model, val_loader, args.val_size)
        is_best, best_miou = result["miou"] > best_miou, max(best_miou, result["miou"])
        record = epoch_record(epoch, (epoch + 1) * iters_per_epoch, result, timer,
                              lr=scheduler.get_last_lr()[0], **losses)
        run.save(checkpoint_state(run, args, parts, epoch, (epoch + 1) * iters_per_epoch,
                                  best_miou, record), is_best)
        run.log_epoch(record)
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
    g.add_argument("--iters-per-epoch", type=cli.positive_int,
                   help="iterations per epoch (default: one pass over the source)")
    cli.add_run_args(parser, default_out="runs/fda")
    args = cli.parse(parser, argv, SCRIPT)
    if args.translate == "fda" and not 0 <= args.beta <= 0.5:
        parser.error(f"--beta {args.beta}: expected a value in [0, 0.5] (paper: 0.01-0.09)")
    if not args.resume and args.crop is None and args.source_size != args.target_size and all(
            s >= t for s, t in zip(args.source_size, args.target_size, strict=True)):
        # FDA trains on random target-size crops of the source (1024x512 out of GTA5 at
        # 1280x720), so its window b = floor(min(H, W) * beta) is 5/25/46 for beta .01/.05/.09
        args.crop = args.target_size
    return args


if __name__ == "__main__":
    cli.entry(main, parse_args)

