"""Source-only training: the upper bound (Cityscapes) and the domain-shift baseline (GTA5).

Steps 2 and 3 of the brief. Train BiSeNet or DeepLabV2 with a supervised segmentation loss
on one labelled dataset and validate on Cityscapes val after every epoch.

    # upper bound: train and validate on Cityscapes
    python train_source.py --source cityscapes --source-root data/Cityscapes --out runs/city
    # domain shift: train on GTA5, validate on Cityscapes (with and without augmentation)
    python train_source.py --source-root data/GTA5 --val-root data/Cityscapes --out runs/gta
    python train_source.py --source-root data/GTA5 --val-root data/Cityscapes \\
        --aug flip,jitter,blur --out runs/gta_aug
    # the built-in synthetic pair, a few minutes on a laptop CPU
    python train_source.py --demo --out runs/demo_source
    # several GPUs
    torchrun --nproc_per_node 4 train_source.py --source-root data/GTA5 ...
    # continue a killed run exactly where it stopped
    python train_source.py ... --resume runs/gta/last.pth
"""
from core import cli
from core.datasets import normalize
from core.labels import NUM_CLASSES
from core.losses import seg_loss_sum
from core.models import build_model, param_groups
from core.runtime import Run, Timer, set_epoch
from core.schedule import poly_scheduler
from core.training import LossMeter, build_criterion, end_epoch, entry, resume


def main(args):
    run = Run(args, "train_source")

    ## data
    train_set, val_set = cli.build_source(args), cli.build_val(args)
    train_loader = run.loader(train_set, args.batch_size, train=True, workers=args.workers)
    val_loader = run.loader(val_set, min(args.batch_size, 4), train=False, workers=args.workers)

    ## model, optimiser, schedule, loss
    model = run.prepare(build_model(args.model, NUM_CLASSES, args.backbone, args.pretrained))
    optimizer = cli.build_optimizer(
        args, param_groups(run.unwrap(model), args.lr, args.weight_decay))
    iters_per_epoch = len(train_loader)
    scheduler = poly_scheduler(optimizer, args.epochs * iters_per_epoch)
    criterion = build_criterion(args, train_set)
    parts = {"model": model, "optimizer": optimizer, "scheduler": scheduler}
    start_epoch, best_miou = resume(run, args, **parts)
    run.start_log(resumed_from=args.resume)

    ## train loop
    for epoch in range(start_epoch, min(args.epochs, args.stop_after or args.epochs)):
        timer, meter = Timer(), LossMeter()
        set_epoch(train_loader, epoch)
        model.train()
        bar = run.progress(train_loader, f"epoch {epoch + 1}/{args.epochs}")
        for i, batch in enumerate(bar):
            batch = run.batch(batch)
            with run.autocast():
                outputs = model(normalize(batch["image"]))  # (main, *aux) in train mode
                loss = seg_loss_sum(criterion, outputs, batch["label"])
            run.check_finite(loss, epoch * iters_per_epoch + i)
            run.backward(loss)
            run.step(optimizer)
            scheduler.step()
            meter.add({"loss": loss})
            bar.set_postfix(meter.postfix("loss"), lr=f"{scheduler.get_last_lr()[0]:.2e}")

        ## validate on Cityscapes val, log, checkpoint (last.pth; best.pth on a new best)
        best_miou = end_epoch(run, args, model, val_loader, epoch, (epoch + 1) * iters_per_epoch,
                              best_miou, timer, parts, lr=scheduler.get_last_lr()[0],
                              **meter.means(run))
    run.close()


def parse_args(argv=None):
    parser = cli.new_parser(__doc__)
    cli.add_data_args(parser)
    cli.add_model_args(parser)
    cli.add_optim_args(parser)
    cli.add_run_args(parser, default_out="runs/source")
    return cli.parse(parser, argv)


if __name__ == "__main__":
    entry(main, parse_args)
