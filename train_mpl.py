"""Meta Pseudo Labels for the target domain (Pham et al., CVPR 2021), after BDL self-training.

A teacher (any trained run: FDA, adversarial, ...) labels Cityscapes images, a student learns
from them and from the GTA5 labels, and the teacher learns from how much its labels helped
the student on a labelled batch. evaluate.py scores the student (--net teacher: the teacher).

    python train_mpl.py --source-root data/GTA5 --target-root data/Cityscapes \\
        --teacher runs/fda_b0.01/last.pth --out runs/mpl
    python train_mpl.py ... --student-source-weight 0   # the paper's form: pseudo labels only

Each iteration (Pham et al. sec. 2, "Practical approximation", and Appendix A):
  1. teacher_labels: weak view = the target image, strong view = a photometric copy; y^ =
     argmax T(strong) where the teacher's confidence reaches its class's BDL threshold, else
     255 (the released code labels the strong view too); T(strong) keeps its graph for step 4;
  2. the student's step on CE(S(strong), y^) alone, its CE_S(B_fb) measured before and after;
  3. h = CE_S(B_fb) before - after, averaged over processes; its moving average (the
     released code's baseline, --h-baseline-rate) is updated with h and subtracted from it;
  4. teacher_losses: L_T = CE_T(B_fb) + w_mpl * (h - baseline) * CE(T(strong), y^) + w_uda *
     UDA (--mpl-weight 0: the same teacher training without the student's feedback, a control);
  5. --student-source-weight > 0: the student's step on CE(S(x_s), y_s), x_s a source batch,
     with its own optimiser state, after step 2's window: h measures the labels only (a
     shared momentum buffer would carry the source steps into the window).
The sign of h: T should make y^ likelier when the step on y^ lowered the student's loss, so
in L_T, where minimising CE(T(strong), y^) raises log P_T(y^), h = before - after. With
"before" as baseline, h * grad log P_T(y^) is the score-function (REINFORCE) estimate of the
gradient of the student's post-step loss (descent); the tests check it against the exact
gradient of a two-label toy. `--h-sign after-before`, the released code's expression, is that
gradient negated (ascent on the student's loss), kept as an ablation: in the released code it
never mattered, as it multiplies the CE of the teacher's own stop-gradient softmax, whose
gradient is zero (google-research issues 534, 541).
"""

import torch

from core import build, cli
from core.checkpoint import load_checkpoint, load_weights, unwrap
from core.errors import ConfigError, SegDAError
from core.evaluation import validate
from core.labels import IGNORE_INDEX, NUM_CLASSES
from core.losses import build_criterion, cross_entropy, seg_loss_sum
from core.models import build_model, model_options
from core.pseudo import ProbHistogram, apply_thresholds, read_thresholds
from core.runtime import Run
from core.sampling import sample_seed
from core.transforms import apply_photometric, build_transforms, normalize

SCRIPT = "train_mpl"
H_SIGN = {"before-after": 1.0, "after-before": -1.0}   # step 3: h = sign * (before - after)
STRONG_VIEW = build_transforms("jitter,blur", p=1.0)   # photometric only: labels stay aligned


def teacher_labels(run, teacher, images, *, thresholds, seed):
    """Step 1: {"strong": the strong view, "strong_logits": T(strong), with its graph (step 4
    scores y^ on them), "weak_logits": T(weak), no graph (UDA's target), "pseudo": y^ from
    T(strong)}. Thresholds: --thresholds (gen_pseudo.py's), else BDL's rule on this batch: per
    class the median of its max probabilities, cap 0.9."""
    g = torch.Generator().manual_seed(seed)    # one seed per iteration and rank: exact resume
    draws = torch.stack([STRONG_VIEW.split(image, generator=g)[2] for image in images])
    strong = apply_photometric(images, draws)      # batched, on the device
    with run.autocast():
        with torch.no_grad():
            weak_logits = teacher(normalize(images))[0].float()
        strong_logits = teacher(normalize(strong))[0].float()
    prob, label = strong_logits.detach().softmax(1).max(1)
    if thresholds is None:
        hist = ProbHistogram(device=prob.device)
        hist.update(prob, label)
        thresholds = hist.thresholds(quantile=0.5, cap=0.9)
    return {"strong": strong, "strong_logits": strong_logits, "weak_logits": weak_logits,
            "pseudo": apply_thresholds(label, prob, thresholds).long()}


@torch.no_grad()
def feedback_loss(run, student, fb_batch):
    """CE_S(B_fb), no gradient, in training mode like the step it measures (as the authors'
    code); BatchNorm's running statistics are put back: B_fb leaves no trace in the student."""
    net = unwrap(student)
    saved = [b.clone() for b in net.buffers()]
    with run.autocast():
        logits = net(normalize(fb_batch["image"]))[0]
    for buffer, value in zip(net.buffers(), saved, strict=True):
        buffer.copy_(value)
    return cross_entropy(logits, fb_batch["label"])


def pseudo_label_loss(student, criterion, labels):
    """Step 2, the student's loss (MPL sec. 2, student update): CE(S(strong), y^)."""
    return seg_loss_sum(criterion, student(normalize(labels["strong"])), labels["pseudo"])


def source_loss(student, criterion, src_batch):
    """Step 5, the student's loss on a source batch: CE(S(x_s), y_s)."""
    return seg_loss_sum(criterion, student(normalize(src_batch["image"])), src_batch["label"])


class MovingBaseline:
    """Step 3's baseline, as the released code's: a moving average of h at `rate` (theirs
    0.01), updated with h before it is subtracted, from 0 (theirs: TF's default initialiser).
    Resume-exact: it is checkpointed with the networks."""

    def __init__(self, rate):
        self.rate, self.value = rate, torch.zeros(())

    def update(self, h):
        """Move towards h; returns the new value."""
        self.value = self.value.to(h) - self.rate * (self.value.to(h) - h)
        return self.value

    def state_dict(self):
        return {"value": self.value}

    def load_state_dict(self, state):
        self.value = state["value"]


def teacher_losses(teacher, criterion, labels, fb_batch, h, *, mpl_weight, uda_weight,
                   uda_threshold):
    """Step 4, (total, terms) of the teacher's loss (MPL sec. 2 teacher update with Appendix
    A's h, here less its baseline; UDA, Xie et al. 2020: weak-view softmax, fixed, vs the
    strong view's where the weak view is confident)."""
    out = teacher(normalize(fb_batch["image"]))
    loss_source = seg_loss_sum(criterion, out, fb_batch["label"])
    logits = labels["strong_logits"]            # the logits y^ came from: its score function
    loss_mpl = cross_entropy(logits, labels["pseudo"])
    target = labels["weak_logits"].softmax(1)
    mask = target.max(1).values >= uda_threshold
    loss_uda = (-(target * logits.log_softmax(1)).sum(1) * mask).mean()
    total = loss_source + mpl_weight * h * loss_mpl + uda_weight * loss_uda
    return total, {"loss_t_source": loss_source.detach(), "loss_t_mpl": loss_mpl.detach(),
                   "loss_t_uda": loss_uda.detach()}


def main(args):
    run = Run(args, SCRIPT)     # device, AMP, torchrun process group, seeds

    ## data: source (the student's batches; B_fb), target, each shuffled apart; Cityscapes val
    source_set, target_set = build.source_dataset(args), build.target_dataset(args)
    source_stream, fb_stream = run.stream(source_set, "source"), run.stream(source_set,
                                                                             "feedback")
    target_stream = run.stream(target_set, "target")
    val_loader = run.val_loader(build.val_dataset(args))
    run.check_data(source_set, val_loader.dataset, target_set)
    iters_per_epoch = args.iters_per_epoch or len(source_stream)
    thresholds = args.class_thresholds and torch.tensor(args.class_thresholds, device=run.device)

    ## teacher and student (their --model may differ), each with its optimiser and schedule
    teacher = build_model(args.teacher_model, NUM_CLASSES, args.teacher_backbone,
                          **model_options({"model": args.teacher_model, **args.teacher_options}))
    student = build_model(args.model, NUM_CLASSES, args.backbone,
                          "none" if args.student else args.pretrained, **model_options(args))
    if not args.resume:     # a resumed run takes both from its own checkpoint
        load_weights(teacher, load_checkpoint(args.teacher)["model"], args.teacher, "teacher")
        if args.student:
            load_weights(student, load_checkpoint(args.student)["model"], args.student)
    teacher, student = run.place(teacher), run.place(student)
    optimizer = build.optimizer(args, student)          # step 2 (with the weight decay)
    optimizer_source = build.optimizer(args, student, weight_decay=0.0)     # step 5
    optimizer_t = build.optimizer(args, teacher, lr=args.lr_teacher,
                                      weight_decay=args.weight_decay_teacher)
    scheduler = build.scheduler(args, optimizer, iters_per_epoch)
    scheduler_source = build.scheduler(args, optimizer_source, iters_per_epoch)
    scheduler_t = build.scheduler(args, optimizer_t, iters_per_epoch)
    criterion = build_criterion(args, source_set)
    baseline = MovingBaseline(args.h_baseline_rate)
    start, stop = run.begin({"model": student, "teacher": teacher, "optimizer": optimizer,
                             "optimizer_source": optimizer_source, "optimizer_t": optimizer_t,
                             "scheduler": scheduler, "scheduler_source": scheduler_source,
                             "scheduler_t": scheduler_t, "h_baseline": baseline,
                             "source_stream": source_stream, "target_stream": target_stream,
                             "fb_stream": fb_stream}, iters_per_epoch)

    ## train loop: one iteration per source batch; each epoch ends with a validation
    teacher.train()
    student.train()
    for it in run.progress(range(start, stop)):
        fb_batch = run.to_device(fb_stream.next())
        trg_batch = run.to_device(target_stream.next())
        src_batch = run.to_device(source_stream.next())   # unused if its weight is 0
        # 1. the teacher labels the strong view, on which both networks learn
        labels = teacher_labels(run, teacher, trg_batch["image"], thresholds=thresholds,
                                seed=sample_seed(args.seed, "strong_view", it, run.rank))
        # 2. the student's step on y^ alone, its loss on B_fb measured before and after
        fb_before = feedback_loss(run, student, fb_batch)
        with run.autocast():
            loss_pseudo = pseudo_label_loss(student, criterion, labels)
        run.backward(loss_pseudo, it, name="loss_pseudo")
        run.step(optimizer)
        losses = {"loss_pseudo": loss_pseudo.detach()}
        # 3. h: how much that step lowered the student's loss on B_fb (all processes' B_fb)
        h = run.mean_across_ranks(
            H_SIGN[args.h_sign] * (fb_before - feedback_loss(run, student, fb_batch)))
        h_baseline = baseline.update(h)
        # 4. the teacher's step: source CE + (h - baseline) x CE(T(strong), y^) + UDA (ramped)
        with run.autocast():
            loss_t, losses_t = teacher_losses(
                teacher, criterion, labels, fb_batch, h - h_baseline,
                mpl_weight=args.mpl_weight,
                uda_weight=args.uda_weight * min(1.0, (it + 1) / args.uda_warmup),
                uda_threshold=args.uda_threshold)
        run.backward(loss_t, it, name="the teacher's loss", lr_flag="--lr-teacher",
                     logged=losses_t)
        run.step(optimizer_t)
        # 5. the student's source step, outside step 2's window, with its own optimiser state
        if args.student_source_weight > 0:
            with run.autocast():
                loss_source = source_loss(student, criterion, src_batch)
            run.backward(args.student_source_weight * loss_source, it, name="loss_source")
            run.step(optimizer_source)
            scheduler_source.step()
            losses["loss_source"] = loss_source.detach()
        scheduler.step()
        scheduler_t.step()

        val = None
        if run.epoch_ends(it):              # the student is validated (and saved as best)
            val = validate(run, student, val_loader, args.val_size)
            student.train()
        losses.update(losses_t, h=h, h_baseline=h_baseline, h_positive=(h > 0).float(),
                      kept=(labels["pseudo"] != IGNORE_INDEX).float().mean())
        # log; save at an epoch end (best.pth, last.pth), every --save-every, before --time-limit
        if run.log_and_save(it, losses, val, lr=scheduler.get_last_lr()[0],
                            lr_t=scheduler_t.get_last_lr()[0]):
            break                       # --time-limit: saved, continue with --resume
    run.close()


def read_run_inputs(args):
    """What --teacher, --student, --thresholds hold, kept in a new run's args (not read again)."""
    if not args.teacher:
        raise ConfigError("--teacher CKPT is required: the checkpoint of a trained run")
    stored = load_checkpoint(args.teacher, mmap=True)["args"]
    args.teacher_model, args.teacher_backbone = stored["model"], stored["backbone"]
    args.teacher_options = model_options(stored)     # architecture options (core.models)
    if args.lr_teacher is None:     # (an explicit 0, a frozen teacher, stays 0)
        args.lr_teacher = cli.MODEL_DEFAULTS[args.teacher_model]["lr"]
    args.weight_decay_teacher = cli.MODEL_DEFAULTS[args.teacher_model]["weight_decay"]
    if args.student:
        s = load_checkpoint(args.student, mmap=True)["args"]
        if (s["model"], s["backbone"]) != (args.model, args.backbone):
            raise ConfigError(f"--student {args.student} is a {s['model']} network: pass "
                              f"--model {s['model']} --backbone {s['backbone']}")
    args.class_thresholds = args.thresholds and read_thresholds(args.thresholds)


def parse_args(argv=None):
    parser = cli.new_parser(__doc__)
    cli.add_data_args(parser, target=True)
    parser.set_defaults(pseudo=None)   # for build.target_dataset: the teacher labels the target
    cli.add_model_args(parser)
    cli.add_optim_args(parser)
    g = parser.add_argument_group("meta pseudo labels")
    g.add_argument("--teacher", metavar="CKPT", help="the teacher: a trained run's checkpoint")
    g.add_argument("--student", metavar="CKPT", help="the student's start (default: --pretrained)")
    g.add_argument("--thresholds", metavar="JSON", help="gen_pseudo.py's (default: per batch)")
    g.add_argument("--student-source-weight", type=cli.non_negative_float, default=1.0,
                   help="weight of the student's source step (step 5); 0: the paper")
    g.add_argument("--h-sign", choices=tuple(H_SIGN), default="before-after",
                   help="after-before: the ablation, ascent on the student's loss (see below)")
    g.add_argument("--h-baseline-rate", type=cli.probability, default=0.01,
                   help="rate of h's moving-average baseline (released code: 0.01); 0: none")
    g.add_argument("--mpl-weight", type=cli.non_negative_float, default=1.0,
                   help="weight of the teacher's feedback term; 0: the control without it")
    g.add_argument("--lr-teacher", type=cli.non_negative_float,
                   help="default: the teacher model's LR")
    g.add_argument("--uda-weight", type=cli.non_negative_float, default=1.0,
                   help="0 turns the UDA term off")
    g.add_argument("--uda-threshold", type=cli.probability, default=0.9,
                   help="UDA: min weak-view confidence")
    g.add_argument("--uda-warmup", type=cli.positive_int, default=1, help="UDA ramp-up iterations")
    cli.add_run_args(parser, default_out="runs/mpl")
    args = cli.parse(parser, argv, SCRIPT)
    try:
        if not args.resume:
            read_run_inputs(args)
        elif args.h_sign not in H_SIGN:     # "authors"/"theory": h's window held the source step
            raise ConfigError(f"--resume {args.resume}: that run was made by an earlier "
                              f"train_mpl.py, which measured h differently; start a new run")
    except SegDAError as e:
        parser.error(str(e))
    return args


if __name__ == "__main__":
    cli.entry(main, parse_args)
