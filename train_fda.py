"""Image-to-image translation for adaptation: FDA (Yang & Soatto 2020) or LAB (He et al. 2021).

Step 4 of the course project (README). Each iteration gives the source batch the style of
a random target batch, trains on it with the source labels, and lowers the entropy of the
target predictions; with --pseudo it also fits target pseudo labels (a self-training round).

    # FDA at the paper's three betas (one model each), then their multi-band ensemble
    for b in 0.01 0.05 0.09; do
      python train_fda.py --source-root data/GTA5 --target-root data/Cityscapes \\
          --beta $b --out runs/fda_b$b
    done
    python evaluate.py runs/fda_b0.01/last.pth --ensemble runs/fda_b0.05/last.pth \\
        runs/fda_b0.09/last.pth
    # LAB colour transfer instead of FDA
    python train_fda.py ... --translate lab --out runs/lab
    # self-training round on pseudo labels from gen_pseudo.py
    python train_fda.py ... --beta 0.01 --pseudo runs/pseudo --out runs/fda_st
    python train_fda.py --demo --beta 0.01 --out runs/demo_fda

Loss (FDA paper, Eq. 5 and 7):
    L = CE(S(x_{s->t}), y_s) + ent_weight * L_ent(S(x_t)) [+ CE(S(x_t), pseudo y_t)]
with L_ent the Charbonnier-penalised normalised entropy, eta = 2, weight 0.005.
"""
from core import build, cli
from core.evaluation import validate
from core.losses import build_criterion, charbonnier_entropy, seg_loss_sum
from core.models import upsample
from core.runtime import Run
from core.transforms import normalize, resize_images
from core.translate import FDA_WINDOWS, fda_source_to_target, lab_transfer

SCRIPT = "train_fda"


def translate(source_images, target_images, *, method, beta, window="centred"):
    """The source batch in the target batch's style, still 0-255 RGB (normalised after).

    FDA needs equal sizes, so the target batch is resized to the source's first (only its
    low-frequency amplitude is used). As in the authors' training code the FDA output is
    not clipped.
    """
    src, trg = source_images.float(), resize_images(target_images, source_images.shape[-2:])
    if method == "fda":
        return fda_source_to_target(src, trg, beta, window=window)
    return lab_transfer(src, trg)


def fda_losses(model, criterion, src_batch, trg_batch, *, method, beta, eta, ent_weight,
               lambda_pseudo, window="centred"):
    """(total, detached terms) of FDA's objective (Eq. 5 and 7):
    CE(S(x_{s->t}), y_s) + ent_weight * L_ent(S(x_t)) [+ lambda_pseudo * CE(S(x_t), y^_t) when
    the target batch carries pseudo labels]."""
    styled = translate(src_batch["image"], trg_batch["image"], method=method, beta=beta,
                       window=window)
    loss_seg = seg_loss_sum(criterion, model(normalize(styled)), src_batch["label"])
    # The entropy at the network's output stride (1/8), before upsampling, as FDA's code
    # (model/deeplab.py, forward); the CE terms use upsampled logits.
    trg_out = model(normalize(trg_batch["image"]), upsample=False)
    loss_ent = charbonnier_entropy(trg_out[0], eta=eta)
    total = loss_seg + ent_weight * loss_ent
    losses = {"loss_seg": loss_seg.detach(), "loss_ent": loss_ent.detach()}
    if "label" in trg_batch:                # self-training on pseudo labels
        trg_out = upsample(trg_out, trg_batch["label"].shape[-2:])
        loss_pseudo = seg_loss_sum(criterion, trg_out, trg_batch["label"])
        total = total + lambda_pseudo * loss_pseudo
        losses["loss_pseudo"] = loss_pseudo.detach()
    return total, losses


def main(args):
    run = Run(args, SCRIPT)     # device, AMP, torchrun process group, seeds

    ## data: labelled source, unlabelled target (with --pseudo labels for self-training),
    ## each an endless stream shuffled apart from the other; Cityscapes val
    source_set, target_set = build.source_dataset(args), build.target_dataset(args)
    source_stream, target_stream = run.stream(source_set, "source"), run.stream(target_set,
                                                                                 "target")
    val_loader = run.val_loader(build.val_dataset(args))
    run.check_data(source_set, val_loader.dataset, target_set)
    iters_per_epoch = args.iters_per_epoch or len(source_stream)

    ## model, optimiser, poly schedule, loss
    model = run.place(build.segmenter(args))
    optimizer = build.optimizer(args, model)
    scheduler = build.scheduler(args, optimizer, iters_per_epoch)
    criterion = build_criterion(args, source_set)
    start, stop = run.begin({"model": model, "optimizer": optimizer, "scheduler": scheduler,
                             "source_stream": source_stream, "target_stream": target_stream},
                            iters_per_epoch)

    ## train loop: one iteration per source batch; each epoch ends with a validation
    model.train()
    for it in run.progress(range(start, stop)):
        src_batch = run.to_device(source_stream.next())
        trg_batch = run.to_device(target_stream.next())
        with run.autocast():
            loss, losses = fda_losses(
                model, criterion, src_batch, trg_batch, method=args.translate, beta=args.beta,
                eta=args.eta, ent_weight=args.ent_weight if it >= args.ent_start else 0.0,
                lambda_pseudo=args.lambda_pseudo, window=args.fda_window)
        run.backward(loss, it)
        run.step(optimizer)
        scheduler.step()

        val = None
        if run.epoch_ends(it):
            val = validate(run, model, val_loader, args.val_size)
            model.train()
        # log; save at an epoch end (best.pth, last.pth), every --save-every, before --time-limit
        if run.log_and_save(it, losses, val, lr=scheduler.get_last_lr()[0]):
            break                       # --time-limit: saved, continue with --resume
    run.close()


def parse_args(argv=None):
    parser = cli.new_parser(__doc__)
    cli.add_data_args(parser, target=True)
    cli.add_model_args(parser)
    cli.add_optim_args(parser)
    g = parser.add_argument_group("translation and entropy")
    g.add_argument("--translate", choices=("fda", "lab"), default="fda",
                   help="how the source takes the target's style: fda swaps the low-frequency "
                        "amplitude spectrum, lab matches the CIELAB mean and std")
    g.add_argument("--beta", type=cli.non_negative_float, default=0.01,
                   help="FDA low-frequency window ratio (paper: 0.01, 0.05, 0.09)")
    g.add_argument("--fda-window", choices=FDA_WINDOWS, default="centred",
                   help="centred: the paper's (2b+1)^2 window (the authors' numpy function); "
                        "corners: four b x b corner blocks of the unshifted spectrum, as the "
                        "authors' torch function that trained the published models")
    g.add_argument("--ent-weight", type=cli.non_negative_float, default=0.005,
                   help="entropy loss weight")
    g.add_argument("--eta", type=cli.positive_float, default=2.0, help="Charbonnier exponent")
    g.add_argument("--ent-start", type=cli.non_negative_int, default=0, metavar="ITER",
                   help="iteration from which the entropy loss is added")
    g.add_argument("--pseudo", metavar="DIR", help="target pseudo labels from gen_pseudo.py")
    g.add_argument("--lambda-pseudo", type=cli.non_negative_float, default=1.0,
                   help="weight of the cross-entropy on the target pseudo labels (--pseudo)")
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

