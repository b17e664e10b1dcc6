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
import torch

from core import cli
from core.checkpoint import checkpoint_state, resume, unwrap
from core.evaluation import validate
from core.labels import NUM_CLASSES
from core.logs import Timer, epoch_record
from core.losses import bce_domain_loss, build_criterion, seg_loss_sum
from core.models import build_discriminator, build_model, model_options, param_groups
from core.profiling import count_macs, count_parameters
from core.runtime import Run, check_divergence, check_finite, report_data
from core.sampling import SOURCE_STREAM, TARGET_STREAM, Stream
from core.schedule import poly_scheduler
from core.session import Session
from core.transforms import normalize

SCRIPT = "train_adv"
SOURCE_LABEL, TARGET_LABEL = 0, 1
MIN_DISC_INPUT = 32          # five stride-2 convolutions


def segmenter_step(run, model, disc, criterion, src_batch, trg_batch, iteration, args):
    """Steps 1 and 2: supervised loss on source, adversarial (and pseudo-label) loss on target.

    Returns the detached source and target softmax maps for the discriminator's step.
    """
    disc = unwrap(disc)                     # no DDP hooks: D only passes gradients through
    disc.requires_grad_(False)
    with run.autocast():
        src_out = model(normalize(src_batch["image"]))
        loss_seg = seg_loss_sum(criterion, src_out, src_batch["label"])
    check_finite(loss_seg, iteration, run.out)
    run.scaler.scale(loss_seg).backward()   # frees the source graph before the target pass
    with run.autocast():
        trg_out = model(normalize(trg_batch["image"]))
        trg_prob = trg_out[0].float().softmax(1)
        loss_adv = bce_domain_loss(disc(trg_prob), SOURCE_LABEL)   # fool D: "source"
        loss_trg = args.lambda_adv * loss_adv
        losses = {"loss_seg": loss_seg.detach(), "loss_adv": loss_adv.detach()}
        if args.pseudo:                     # self-training: CE on target pseudo labels
            loss_pseudo = seg_loss_sum(criterion, trg_out, trg_batch["label"])
            loss_trg = loss_trg + args.lambda_pseudo * loss_pseudo
            losses["loss_pseudo"] = loss_pseudo.detach()
    check_finite(loss_trg, iteration, run.out)
    run.scaler.scale(loss_trg).backward()
    disc.requires_grad_(True)
    return src_out[0].detach().float().softmax(1), trg_prob.detach(), losses


def discriminator_step(run, disc, src_prob, trg_prob):
    """Step 3: D learns source = 0, target = 1, each term halved (AdaptSegNet's code).

    One forward and backward per domain, as the official code does: the two domains' maps
    may differ in size (GTA5 1280x720, Cityscapes 1024x512), and under DDP every forward
    must be followed by its own backward.
    """
    with run.autocast():
        d_src = disc(src_prob)
        loss_src = 0.5 * bce_domain_loss(d_src, SOURCE_LABEL)
    run.scaler.scale(loss_src).backward()
    with run.autocast():
        d_trg = disc(trg_prob)
        loss_trg = 0.5 * bce_domain_loss(d_trg, TARGET_LABEL)
    run.scaler.scale(loss_trg).backward()
    return {"loss_d": (loss_src + loss_trg).detach(),
            "d_acc_source": (d_src < 0).float().mean(), "d_acc_target": (d_trg > 0).float().mean()}


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

    ## segmenter and discriminator, each with its optimiser and poly schedule
    model = run.place(build_model(args.model, NUM_CLASSES, args.backbone, args.pretrained,
                                  **model_options(args)))
    disc = run.place(build_discriminator(args.disc, NUM_CLASSES))
    optimizer = cli.build_optimizer(args, param_groups(unwrap(model), args.lr,
                                                       args.weight_decay))
    optimizer_d = torch.optim.Adam(disc.parameters(), lr=args.lr_d, betas=(0.9, 0.99))
    scheduler = poly_scheduler(optimizer, cli.poly_horizon(args, iters_per_epoch))
    scheduler_d = poly_scheduler(optimizer_d, cli.poly_horizon(args, iters_per_epoch))
    criterion = build_criterion(args, source_set)
    parts = {"model": model, "disc": disc, "optimizer": optimizer, "optimizer_d": optimizer_d,
             "scheduler": scheduler, "scheduler_d": scheduler_d,
             "source_stream": source_stream, "target_stream": target_stream}
    run.open_folder()
    start = resume(run, args, parts)        # the epoch and step to continue from
    best_miou, session = start.best_miou, Session(args, run, parts)  # logs, mid-epoch saves
    log_discriminator_profile(run, unwrap(disc), args)

    ## train loop
    for epoch in range(start.epoch, session.last_epoch):
        timer, meter = Timer(), start.meter(epoch)
        model.train()
        bar = run.progress(iters_per_epoch, epoch, first=start.first_step(epoch))
        for i in bar:
            iteration = epoch * iters_per_epoch + i
            src_batch = run.batch_to_device(source_stream.next())
            trg_batch = run.batch_to_device(target_stream.next())
            src_prob, trg_prob, losses = segmenter_step(
                run, model, disc, criterion, src_batch, trg_batch, iteration, args)
            losses.update(discriminator_step(run, disc, src_prob, trg_prob))
            run.scaler.step(optimizer)
            run.scaler.step(optimizer_d)
            run.scaler.update()
            optimizer.zero_grad(set_to_none=True)
            optimizer_d.zero_grad(set_to_none=True)
            scheduler.step()
            scheduler_d.step()
            meter.add(**losses)
            bar.set_postfix(meter.postfix("loss_seg", "loss_adv", "loss_d"))
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
                              lr=scheduler.get_last_lr()[0], lr_d=scheduler_d.get_last_lr()[0],
                              **losses)
        run.save(checkpoint_state(run, args, parts, epoch, (epoch + 1) * iters_per_epoch,
                                  best_miou, record), is_best)
        run.log_epoch(record)
    run.close()


def log_discriminator_profile(run, disc, args):
    """Parameters and FLOPs of the chosen discriminator at the working size (brief, Tables 2-3).

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
    g.add_argument("--lambda-adv", type=float, default=0.001,
                   help="weight of the adversarial loss (AdaptSegNet single level)")
    g.add_argument("--lr-d", type=float, default=1e-4, help="discriminator Adam LR (poly)")
    g.add_argument("--pseudo", metavar="DIR", help="target pseudo labels from gen_pseudo.py")
    g.add_argument("--lambda-pseudo", type=float, default=1.0)
    g.add_argument("--iters-per-epoch", type=cli.positive_int,
                   help="iterations per epoch (default: one pass over the source)")
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
