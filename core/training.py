"""What every training script does the same way: criterion, resume, epoch log, checkpoint."""
import sys

import torch

from core import cli
from core.checkpoint import CheckpointError, load_checkpoint, load_weights, rng_state, set_rng_state
from core.evaluation import evaluate
from core.labels import NUM_CLASSES
from core.losses import build_seg_loss, class_weights_from_counts
from core.metrics import format_table
from core.models import PretrainedWeightsError
from core.runtime import NonFiniteLossError, Stream

# Arguments that must agree between a checkpoint and the command that resumes it.
RESUME_MUST_MATCH = ("model", "backbone", "optimizer")


def label_counts(dataset, max_images=500):
    """Labelled pixels per class over (an evenly spaced subset of) a dataset."""
    step = max(1, len(dataset) // max_images)
    counts = torch.zeros(NUM_CLASSES, dtype=torch.int64)
    for i in range(0, len(dataset), step):
        label = dataset[i]["label"].reshape(-1).long()
        counts += torch.bincount(label[label < NUM_CLASSES], minlength=NUM_CLASSES)
    return counts


def build_criterion(args, train_set):
    """--loss ce | focal | weighted-ce; class weights come from the source label frequencies."""
    weights = None
    if args.loss == "weighted-ce":
        weights = class_weights_from_counts(label_counts(train_set))
    return build_seg_loss(args.loss, gamma=args.focal_gamma, class_weights=weights)


def checkpoint_state(run, args, epoch, iteration, best_miou, miou, **parts):
    """One dict with every part's state (networks unwrapped from DDP), RNGs and the args."""
    state = {name: run.unwrap(part).state_dict() for name, part in parts.items()}
    state.update(scaler=run.scaler.state_dict() if run.scaler else None, epoch=epoch,
                 iteration=iteration, best_miou=best_miou, miou=miou, rng=rng_state(),
                 args=vars(args))
    return state


def resume(run, args, **parts):
    """Restore every part from --resume; returns (first epoch to run, best mIoU so far)."""
    if not args.resume:
        return 0, -1.0
    state = load_checkpoint(args.resume)
    for name in RESUME_MUST_MATCH:
        stored = state["args"].get(name)
        if stored is not None and stored != getattr(args, name, stored):
            raise CheckpointError(f"{args.resume} was trained with --{name.replace('_', '-')} "
                                  f"{stored}, this run asks for {getattr(args, name)}")
    for name, part in parts.items():
        if name not in state:
            raise CheckpointError(f"{args.resume} has no '{name}' state: it was written by "
                                  f"another script ({', '.join(sorted(state))})")
        if isinstance(part, torch.nn.Module):
            load_weights(run.unwrap(part), state[name], args.resume, what=name)
        else:
            part.load_state_dict(state[name])
    if run.scaler and state.get("scaler"):
        run.scaler.load_state_dict(state["scaler"])
    set_rng_state(state["rng"])
    return state["epoch"] + 1, state["best_miou"]


def uda_data(run, args):
    """Labelled source set, endless source and target batch streams, Cityscapes val loader.

    The target set is unlabelled (paired with --pseudo labels for self-training). An epoch
    is --iters-per-epoch iterations, by default one pass over the source.
    """
    source_set, target_set = cli.build_source(args), cli.build_target(args, args.pseudo)
    source = Stream(run.loader(source_set, args.batch_size, train=True, workers=args.workers))
    target = Stream(run.loader(target_set, args.batch_size, train=True, workers=args.workers,
                               stream=1))
    val_loader = run.loader(cli.build_val(args), min(args.batch_size, 4), train=False,
                            workers=args.workers)
    iters_per_epoch = getattr(args, "iters_per_epoch", None) or len(source.loader)
    return source_set, source, target, val_loader, iters_per_epoch


class LossMeter:
    """Running means of the losses of an epoch (kept as tensors: no sync per iteration)."""

    def __init__(self):
        self.sums, self.count = {}, 0

    def add(self, losses):
        self.count += 1
        for name, value in losses.items():
            self.sums[name] = self.sums.get(name, 0.0) + value.detach().float()

    def mean(self, name):
        return self.sums[name].item() / max(self.count, 1)

    def postfix(self, *names):
        """Running means for the progress bar, e.g. {'loss_seg': '0.412'}."""
        return {name.removeprefix("loss_"): f"{self.mean(name):.3f}" for name in names}

    def means(self, run):
        """All running means, averaged over processes."""
        return {name: run.mean_across_ranks(self.mean(name)) for name in self.sums}


def end_epoch(run, args, model, val_loader, epoch, iteration, best_miou, timer, parts,
              **values):
    """Validate on Cityscapes val, log the epoch, write last.pth (and best.pth on a new best
    val mIoU). Returns the best mIoU so far."""
    result = evaluate([run.unwrap(model)], [args.val_size], val_loader, run.device, NUM_CLASSES,
                      autocast=run.autocast).compute()
    is_best = result["miou"] > best_miou
    best_miou = max(best_miou, result["miou"])
    log_epoch(run, epoch, iteration, result, timer, **values)
    run.save(checkpoint_state(run, args, epoch, iteration, best_miou, result["miou"], **parts),
             is_best)
    return best_miou


def log_epoch(run, epoch, iteration, result, timer, **values):
    """One metrics.jsonl line and a printed summary for the epoch (rank 0)."""
    record = {"epoch": epoch + 1, "iteration": iteration, **values,
              "val_miou": result["miou"], "val_pixel_acc": result["pixel_acc"],
              "seconds": timer.seconds()}
    run.log(record)
    if run.is_main:
        shown = ", ".join(f"{k} {v:.4g}" for k, v in values.items() if isinstance(v, float))
        print(f"epoch {epoch + 1}: {shown}, val mIoU {100 * result['miou']:.2f}, "
              f"pixel acc {100 * result['pixel_acc']:.2f} ({record['seconds']} s)", flush=True)
    return record


def print_result(result, header):
    print(header)
    print(format_table(result))


def entry(main, parse_args):
    """Run a script's main; expected failures end with their message, not a traceback."""
    args = parse_args()
    try:
        main(args)
    except (NonFiniteLossError, CheckpointError, PretrainedWeightsError,
            FileNotFoundError, ValueError) as e:
        sys.exit(f"error: {e}")
