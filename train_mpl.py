"""Meta Pseudo Labels for the target domain (Pham et al., CVPR 2021), after BDL self-training.

A teacher (any trained run: FDA, adversarial, ...) labels Cityscapes images, a student learns
from them and from the GTA5 labels, and the teacher learns from how much its labels helped
the student on a labelled batch. evaluate.py scores the student (--net teacher: the teacher).

    python train_mpl.py --source-root data/GTA5 --target-root data/Cityscapes \\
        --teacher runs/fda_b0.01/best.pth --out runs/mpl
    python train_mpl.py ... --student-source-weight 0   # the paper's form: pseudo labels only

Each iteration (Pham et al. sec. 2, "Practical approximation", and Appendix A):
  1. teacher_labels: weak view = the target image, strong view = a photometric copy; y^ =
     argmax T(weak) where the teacher's confidence reaches its class's BDL threshold, else 255;
  2. student_step: CE_S(B_fb) on a source batch, no gradient; a step on CE(S(strong), y^) +
     --student-source-weight * CE(S(x_s), y_s), x_s another source batch (B_fb is not trained
     on: the feedback must measure the teacher's labels, not the student's own source step);
  3. h = CE_S'(B_fb) - CE_S(B_fb), after minus before (--h-sign theory: before minus after);
  4. teacher_step: L_T = CE_T(B_fb) + w_mpl * h * CE(T(strong), y^) + w_uda * UDA consistency
     (--mpl-weight 0: the same teacher training without the student's feedback, a control).
The sign of h: Appendix A's h = eta_S * grad CE_l(S')^T grad CE(y^, S(x_u)) is, to first
order, CE_l(S) - CE_l(S'), before minus after (`theory`, kekmodel/MPL-pytorch issue 6); the
authors' code, whose MPL term has no gradient (CE of the teacher's own softmax), and that
port use after minus before, our default.
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
from core.transforms import build_transforms, normalize

SCRIPT = "train_mpl"
H_SIGN = {"authors": 1.0, "theory": -1.0}   # step 3: h = sign * (after - before)
STRONG_VIEW = build_transforms("jitter,blur", p=1.0)   # photometric only: labels stay aligned


@torch.no_grad()
def teacher_labels(run, teacher, images, *, thresholds, seed):
    """Step 1: {"strong": the strong view, "weak_logits": T(weak), "pseudo": y^}. Thresholds:
    --thresholds (gen_pseudo.py's), else BDL's rule on this batch: per class the median of
    its max probabilities, cap 0.9."""
    g = torch.Generator().manual_seed(seed)    # one seed per iteration and rank: exact resume
    strong = torch.stack([STRONG_VIEW(image, generator=g)[0] for image in images])
    with run.autocast():
        weak_logits = teacher(normalize(images))[0].float()
    prob, label = weak_logits.softmax(1).max(1)
    if thresholds is None:
        hist = ProbHistogram(device=prob.device)
        hist.update(prob, label)
        thresholds = hist.thresholds(quantile=0.5, cap=0.9)
    return {"strong": strong, "weak_logits": weak_logits,
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


def student_losses(student, criterion, labels, src_batch, fb_batch, *, source_weight):
    """Step 2, (total, terms) of the student's loss (MPL sec. 2, student update):
    CE(S(strong), y^) + source_weight * CE(S(x_s), y_s); images of x_s also in B_fb ignored."""
    loss_pseudo = seg_loss_sum(criterion, student(normalize(labels["strong"])), labels["pseudo"])
    total, losses = loss_pseudo, {"loss_pseudo": loss_pseudo.detach()}
    if source_weight > 0:
        keep = torch.tensor([n not in fb_batch["name"] for n in src_batch["name"]])
        ignored = src_batch["label"].where(keep.to(src_batch["label"].device)[:, None, None],
                                           IGNORE_INDEX)
        loss_source = seg_loss_sum(criterion, student(normalize(src_batch["image"])), ignored)
        total = total + source_weight * loss_source
        losses["loss_source"] = loss_source.detach()
    return total, losses


def teacher_losses(teacher, criterion, labels, fb_batch, h, *, mpl_weight, uda_weight,
                   uda_threshold):
    """Step 4, (total, terms) of the teacher's loss (MPL sec. 2 teacher update with Appendix
    A's h; UDA, Xie et al. 2020: weak-view softmax, fixed, vs the strong view's where the weak
    view is confident)."""
    out = teacher(normalize(fb_batch["image"]))
    loss_source = seg_loss_sum(criterion, out, fb_batch["label"])
    logits = teacher(normalize(labels["strong"]))[0].float()
    loss_mpl = cross_entropy(logits, labels["pseudo"])          # y^: what the student learnt
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
    run.check_data(source_set, val_loader.dataset)
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
    optimizer = build.optimizer(args, student)
    optimizer_t = build.optimizer(args, teacher, lr=args.lr_teacher,
                                      weight_decay=args.weight_decay_teacher)
    scheduler = build.scheduler(args, optimizer, iters_per_epoch)
    scheduler_t = build.scheduler(args, optimizer_t, iters_per_epoch)
    criterion = build_criterion(args, source_set)
    start, stop = run.begin({"model": student, "teacher": teacher, "optimizer": optimizer,
                             "optimizer_t": optimizer_t, "scheduler": scheduler,
                             "scheduler_t": scheduler_t, "source_stream": source_stream,
                             "target_stream": target_stream, "fb_stream": fb_stream},
                            iters_per_epoch)

    ## train loop: one iteration per source batch; each epoch ends with a validation
    teacher.train()
    student.train()
    for it in run.progress(range(start, stop)):
        fb_batch = run.to_device(fb_stream.next())
        trg_batch = run.to_device(target_stream.next())
        src_batch = run.to_device(source_stream.next())   # unused if its weight is 0
        # 1. the teacher labels the weak view; both networks learn on the strong view
        labels = teacher_labels(run, teacher, trg_batch["image"], thresholds=thresholds,
                                seed=sample_seed(args.seed, "strong_view", it, run.rank))
        # 2. the student's step, with its loss on B_fb measured before and after
        fb_before = feedback_loss(run, student, fb_batch)
        with run.autocast():
            loss, losses = student_losses(student, criterion, labels, src_batch, fb_batch,
                                          source_weight=args.student_source_weight)
        run.backward(loss, it)
        run.step(optimizer)
        # 3. h: how the student's loss on B_fb moved
        h = H_SIGN[args.h_sign] * (feedback_loss(run, student, fb_batch) - fb_before)
        # 4. the teacher's step: source CE + h x CE(T(strong), y^) + UDA (ramped up)
        with run.autocast():
            loss_t, losses_t = teacher_losses(
                teacher, criterion, labels, fb_batch, h, mpl_weight=args.mpl_weight,
                uda_weight=args.uda_weight * min(1.0, (it + 1) / args.uda_warmup),
                uda_threshold=args.uda_threshold)
        run.backward(loss_t, it)
        run.step(optimizer_t)
        scheduler.step()
        scheduler_t.step()

        val = None
        if run.epoch_ends(it):              # the student is validated (and saved as best)
            val = validate(run, student, val_loader, args.val_size)
            student.train()
        losses.update(losses_t, h=h, h_positive=(h > 0).float(),
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
    args.lr_teacher = args.lr_teacher or cli.MODEL_DEFAULTS[args.teacher_model]["lr"]
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
                   help="0: the paper")
    g.add_argument("--h-sign", choices=("authors", "theory"), default="authors", help="see below")
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
    except SegDAError as e:
        parser.error(str(e))
    return args


if __name__ == "__main__":
    cli.entry(main, parse_args)
