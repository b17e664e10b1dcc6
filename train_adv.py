"""Adversarial output-space adaptation (AdaptSegNet, Tsai et al. 2018), single level.

Step 3 of the course project (README): adapt a segmenter from labelled GTA5 to unlabelled
Cityscapes by training it to make its softmax maps on target images look like those on
source images to a discriminator: the fully convolutional one (`fcd`) or its
depthwise-separable light version (`dsc`).

    python train_adv.py --source-root data/GTA5 --target-root data/Cityscapes --disc fcd
    python train_adv.py --source-root data/GTA5 --target-root data/Cityscapes --disc dsc \\
        --lr 2.5e-4 --model deeplabv2 --out runs/adv_dsc
    python train_adv.py --demo --disc dsc --out runs/demo_adv_dsc
    torchrun --nproc_per_node 4 train_adv.py ...
    # self-training round: also fit the target pseudo labels written by gen_pseudo.py
    python train_adv.py ... --pseudo runs/pseudo --lambda-pseudo 1.0

Each iteration (AdaptSegNet sec. 3.2-3.3, Eq. 3-5):
  1. segmenter on a source batch: L_seg = CE(main) + CE(aux heads) on source labels;
  2. segmenter on a target batch (labels never read): L_adv = BCE(D(softmax(P_t)), source)
     times --lambda-adv; D's parameters take no gradient in this step;
  3. D on the detached source and target softmax maps: source label 0, target label 1,
     each domain's term halved.
"""

from core import build, cli
from core.checkpoint import unwrap
from core.evaluation import validate
from core.labels import NUM_CLASSES
from core.losses import bce_domain_loss, build_criterion, seg_loss_sum
from core.models import build_discriminator
from core.profiling import count_macs, count_parameters
from core.runtime import Run
from core.transforms import normalize

SCRIPT = "train_adv"
SOURCE_LABEL, TARGET_LABEL = 0, 1
MIN_DISC_INPUT = 32          # five stride-2 convolutions


def segmenter_step(run, model, disc, criterion, src_batch, trg_batch, *, it, lambda_adv,
                   lambda_pseudo):
    """Steps 1 and 2, the segmenter's gradients: L_seg on source, then lambda_adv * L_adv (and
    lambda_pseudo * CE on the target's pseudo labels, when the batch has them) on target.

    Returns the detached softmax maps {"source", "target"} for D's step, and the losses."""
    with run.autocast():
        src_out = model(normalize(src_batch["image"]))
        loss_seg = seg_loss_sum(criterion, src_out, src_batch["label"])
    run.backward(loss_seg, it, name="loss_seg")   # frees the source graph before the target pass
    d = unwrap(disc)                        # no DDP hooks: D only passes gradients through
    d.requires_grad_(False)                 # Eq. 4: D's parameters take no gradient here
    with run.autocast():
        trg_out = model(normalize(trg_batch["image"]))
        trg_prob = trg_out[0].float().softmax(1)
        loss_adv = bce_domain_loss(d(trg_prob), SOURCE_LABEL)    # fool D: "source"
        loss_trg = lambda_adv * loss_adv
        losses = {"loss_seg": loss_seg.detach(), "loss_adv": loss_adv.detach()}
        if "label" in trg_batch:            # self-training: CE on target pseudo labels
            loss_pseudo = seg_loss_sum(criterion, trg_out, trg_batch["label"])
            loss_trg = loss_trg + lambda_pseudo * loss_pseudo
            losses["loss_pseudo"] = loss_pseudo.detach()
    run.backward(loss_trg, it)
    d.requires_grad_(True)
    return {"source": src_out[0].detach().float().softmax(1), "target": trg_prob.detach()}, losses


def discriminator_step(run, disc, src_prob, trg_prob, *, it):
    """Step 3: D learns source = 0, target = 1, each term halved (AdaptSegNet's code).

    One forward and backward per domain, as the official code does: the two domains' maps
    may differ in size (GTA5 1280x720, Cityscapes 1024x512), and under DDP every forward
    must be followed by its own backward.
    """
    with run.autocast():
        d_src = disc(src_prob)
        loss_src = 0.5 * bce_domain_loss(d_src, SOURCE_LABEL)
    run.backward(loss_src, it, name="loss_d", lr_flag="--lr-d")
    with run.autocast():
        d_trg = disc(trg_prob)
        loss_trg = 0.5 * bce_domain_loss(d_trg, TARGET_LABEL)
    run.backward(loss_trg, it, name="loss_d", lr_flag="--lr-d")
    return {"loss_d": (loss_src + loss_trg).detach(),
            "d_acc_source": (d_src < 0).float().mean(), "d_acc_target": (d_trg > 0).float().mean()}


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

    ## segmenter and discriminator, each with its optimiser and poly schedule
    model = run.place(build.segmenter(args))
    disc = run.place(build_discriminator(args.disc))
    optimizer = build.optimizer(args, model)
    optimizer_d = build.discriminator_optimizer(args, disc)
    scheduler = build.scheduler(args, optimizer, iters_per_epoch)
    scheduler_d = build.scheduler(args, optimizer_d, iters_per_epoch)
    criterion = build_criterion(args, source_set)
    start, stop = run.begin({"model": model, "disc": disc, "optimizer": optimizer,
                             "optimizer_d": optimizer_d, "scheduler": scheduler,
                             "scheduler_d": scheduler_d, "source_stream": source_stream,
                             "target_stream": target_stream}, iters_per_epoch)
    log_discriminator_profile(run, unwrap(disc), args)

    ## train loop: one iteration per source batch; each epoch ends with a validation
    model.train()
    for it in run.progress(range(start, stop)):
        src_batch = run.to_device(source_stream.next())
        trg_batch = run.to_device(target_stream.next())
        probs, losses = segmenter_step(run, model, disc, criterion, src_batch, trg_batch, it=it,
                                       lambda_adv=args.lambda_adv,
                                       lambda_pseudo=args.lambda_pseudo)
        losses.update(discriminator_step(run, disc, probs["source"], probs["target"], it=it))
        run.step(optimizer, optimizer_d)
        scheduler.step()
        scheduler_d.step()

        val = None
        if run.epoch_ends(it):
            val = validate(run, model, val_loader, args.val_size)
            model.train()
        # log; save at an epoch end (best.pth, last.pth), every --save-every, before --time-limit
        if run.log_and_save(it, losses, val, lr=scheduler.get_last_lr()[0],
                            lr_d=scheduler_d.get_last_lr()[0]):
            break                       # --time-limit: saved, continue with --resume
    run.close()


def log_discriminator_profile(run, disc, args):
    """Parameters and FLOPs of the chosen discriminator at the working size (as the course
    assignment's table of the two discriminators reports them).

    Counted on a copy of the network: no new model is built, so no random number is drawn
    (a resumed run must draw exactly what the uninterrupted one did)."""
    if not run.is_main:
        return
    total, _ = count_parameters(disc)
    macs = count_macs(disc, (1, NUM_CLASSES, *args.target_size))
    record = {"event": "discriminator", "disc": args.disc, "params": total,
              "gmacs": macs / 1e9, "gflops": 2 * macs / 1e9, "input": list(args.target_size)}
    run.log.write(record)
    print(f"discriminator {args.disc}: {total:,} parameters, {2 * macs / 1e9:.2f} GFLOPs "
          f"(2 x {macs / 1e9:.2f} G multiply-adds) at {args.target_size[0]}x"
          f"{args.target_size[1]}", flush=True)


def parse_args(argv=None):
    parser = cli.new_parser(__doc__)
    cli.add_data_args(parser, target=True)
    cli.add_model_args(parser)
    cli.add_optim_args(parser)
    g = parser.add_argument_group("adversarial adaptation")
    g.add_argument("--disc", choices=("fcd", "dsc"), default="fcd",
                   help="fully convolutional (AdaptSegNet) or depthwise-separable light")
    g.add_argument("--lambda-adv", type=cli.non_negative_float, default=0.001,
                   help="weight of the adversarial loss (AdaptSegNet single level)")
    g.add_argument("--lr-d", type=cli.non_negative_float, default=1e-4,
                   help="discriminator Adam LR (poly)")
    g.add_argument("--pseudo", metavar="DIR", help="target pseudo labels from gen_pseudo.py")
    g.add_argument("--lambda-pseudo", type=cli.non_negative_float, default=1.0,
                   help="weight of the cross-entropy on the target pseudo labels (--pseudo)")
    cli.add_run_args(parser, default_out="runs/adv")
    args = cli.parse(parser, argv, SCRIPT)
    smallest = min(*args.source_size, *args.target_size, *(args.crop or args.source_size))
    if smallest < MIN_DISC_INPUT:
        parser.error(f"the discriminator halves its input five times: source and target "
                     f"sizes (and --crop) must be at least {MIN_DISC_INPUT} pixels, got "
                     f"{smallest}")
    return args


if __name__ == "__main__":
    cli.entry(main, parse_args)
