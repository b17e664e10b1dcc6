"""Source-only training: the upper bound (Cityscapes) and the domain-shift baseline (GTA5).

Steps 2 and 3 of the course project (README). Train a segmenter with a supervised loss on
one labelled dataset and validate on Cityscapes val after every epoch.

    # upper bound: train and validate on Cityscapes
    python train_source.py --source cityscapes --source-root data/Cityscapes --out runs/city
    # domain shift: train on GTA5, validate on Cityscapes (with and without augmentation)
    python train_source.py --source-root data/GTA5 --val-root data/Cityscapes --out runs/gta
    python train_source.py --source-root data/GTA5 --val-root data/Cityscapes \\
        --aug flip,jitter,blur --out runs/gta_aug
    # the built-in synthetic pair (made on first use), a few minutes on a laptop CPU
    python train_source.py --demo --out runs/demo_source
    # several GPUs (--batch-size is per process)
    torchrun --nproc_per_node 4 train_source.py --source-root data/GTA5 ...
    # continue a killed run exactly where it stopped
    python train_source.py --resume runs/gta/last.pth
"""
from core import build, cli
from core.evaluation import validate
from core.losses import build_criterion, seg_loss_sum
from core.runtime import Run
from core.transforms import normalize

SCRIPT = "train_source"


def main(args):
    run = Run(args, SCRIPT)     # device, AMP, torchrun process group, seeds

    ## data: one labelled set (GTA5, or Cityscapes for the upper bound), Cityscapes val
    source_set = build.source_dataset(args)
    source_stream = run.stream(source_set, "source")
    val_loader = run.val_loader(build.val_dataset(args))
    run.check_data(source_set, val_loader.dataset)
    iters_per_epoch = args.iters_per_epoch or len(source_stream)

    ## model, optimiser, poly schedule, loss
    model = run.place(build.segmenter(args))
    optimizer = build.optimizer(args, model)
    scheduler = build.scheduler(args, optimizer, iters_per_epoch)
    criterion = build_criterion(args, source_set)
    start, stop = run.begin({"model": model, "optimizer": optimizer, "scheduler": scheduler,
                             "source_stream": source_stream}, iters_per_epoch)

    ## train loop: one iteration per source batch; each epoch ends with a validation
    model.train()
    for it in run.progress(range(start, stop)):
        src_batch = run.to_device(source_stream.next())
        with run.autocast():
            outputs = model(normalize(src_batch["image"]))  # (main, *aux) in train mode
            loss = seg_loss_sum(criterion, outputs, src_batch["label"])
        run.backward(loss, it)
        run.step(optimizer)
        scheduler.step()

        val = None
        if run.epoch_ends(it):
            val = validate(run, model, val_loader, args.val_size)
            model.train()
        # log; save at an epoch end (best.pth, last.pth), every --save-every, before --time-limit
        if run.log_and_save(it, {"loss": loss}, val, lr=scheduler.get_last_lr()[0]):
            break                       # --time-limit: saved, continue with --resume
    run.close()


def parse_args(argv=None):
    parser = cli.new_parser(__doc__)
    cli.add_data_args(parser)
    cli.add_model_args(parser)
    cli.add_optim_args(parser)
    cli.add_run_args(parser, default_out="runs/source")
    return cli.parse(parser, argv, SCRIPT)


if __name__ == "__main__":
    cli.entry(main, parse_args)
