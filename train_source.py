"""Source-only training: the upper bound (Cityscapes) and the domain-shift baseline (GTA5).

Steps 2 and 3 of the course project (README). Train a segmenter with a supervised loss on
one labelled dataset and validate on Cityscapes val after every epoch.

    # upper bound: train and validate on Cityscapes
    python train_source.py --source cityscapes --source-root data/Cityscapes --out runs/city
    # domain shift: train on GTA5, validate on Cityscapes (with and without augmentation)
    python train_source.py --source-root data/GTA5 --val-root data/Cityscapes --out runs/gta
    python train_source.py --source-root data/GTA5 --val-root data/Cityscapes \\
        --aug flip,jitter,blur --out runs/gta_aug
    # the built-in synthetic pair, a few minutes on a laptop CPU
    python train_source.py --demo --out runs/demo_source
    # several GPUs (--batch-size is per process)
    torchrun --nproc_per_node 4 train_source.py --source-root data/GTA5 ...
    # continue a killed run exactly where it stopped
    python train_source.py --resume runs/gta/last.pth
"""
from core import cli
from core.checkpoint import checkpoint_state, resume, unwrap
from core.evaluation import validate
from core.labels import NUM_CLASSES
from core.logs import Timer, epoch_record
from core.losses import build_criterion, seg_loss_sum
from core.models import build_model, model_options, param_groups
from core.runtime import Run, check_divergence, check_finite, report_data
from core.sampling import SOURCE_STREAM, Stream
from core.schedule import poly_scheduler
from core.session import Session
from core.transforms import normalize

SCRIPT = "train_source"


def main(args):
    run = Run(args, SCRIPT)     # device, AMP, torchrun process group, seeds, run folder

    ## data: one labelled set (GTA5, or Cityscapes for the upper bound), Cityscapes val
    source_set = cli.source_dataset(args)
    source_stream = Stream(run.train_loader(source_set, SOURCE_STREAM))
    val_loader = run.val_loader(cli.val_dataset(args))
    iters_per_epoch = len(source_stream)
    report_data(run, source_set, val_loader.dataset)

    ## model, optimiser, poly schedule, loss
    model = run.place(build_model(args.model, NUM_CLASSES, args.backbone, args.pretrained,
                                  **model_options(args)))
    optimizer = cli.build_optimizer(args, param_groups(unwrap(model), args.lr,
                                                       args.weight_decay))
    scheduler = poly_scheduler(optimizer, cli.poly_horizon(args, iters_per_epoch))
    criterion = build_criterion(args, source_set)
    parts = {"model": model, "optimizer": optimizer, "scheduler": scheduler,
             "source_stream": source_stream}
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
            with run.autocast():
                outputs = model(normalize(src_batch["image"]))  # (main, *aux) in train mode
                loss = seg_loss_sum(criterion, outputs, src_batch["label"])
            check_finite(loss, iteration, run.out)
            run.scaler.scale(loss).backward()
            run.scaler.step(optimizer)
            run.scaler.update()
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
            meter.add(loss=loss)
            bar.set_postfix(meter.postfix("loss"), lr=f"{scheduler.get_last_lr()[0]:.2e}")
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
    cli.add_data_args(parser)
    cli.add_model_args(parser)
    cli.add_optim_args(parser)
    cli.add_run_args(parser, default_out="runs/source")
    return cli.parse(parser, argv, SCRIPT)


if __name__ == "__main__":
    cli.entry(main, parse_args)
