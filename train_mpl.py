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

from core import cli
from core.checkpoint import checkpoint_state, load_checkpoint, load_weights, resume, unwrap
from core.errors import ConfigError, SegDAError
from core.evaluation import validate
from core.labels import IGNORE_INDEX, NUM_CLASSES
from core.logs import Timer, epoch_record
from core.losses import build_criterion, cross_entropy, seg_loss_sum
from core.models import build_model, model_options, param_groups
from core.pseudo import ProbHistogram, apply_thresholds, read_thresholds
from core.runtime import Run, check_divergence, check_finite, report_data
from core.sampling import SOURCE_STREAM, TARGET_STREAM, Stream, sample_seed
from core.schedule import poly_scheduler
from core.session import Session
from core.transforms import build_transforms, normalize

SCRIPT = "train_mpl"
FEEDBACK_STREAM, STRONG_VIEW_STREAM = 3, 4   # core.sampling numbers its streams 0-2
H_SIGN = {"authors": 1.0, "theory": -1.0}   # step 3: h = sign * (after - before)
STRONG_VIEW = build_transforms("jitter,blur", p=1.0)   # photometric only: labels stay aligned


@torch.no_grad()
def teacher_labels(run, teacher, trg_batch, thresholds, seed):
    """Step 1: (strong view, weak-view logits, y^). Thresholds: --thresholds (gen_pseudo.py's),
    else BDL's rule on this batch: per class the median of its max probabilities, cap 0.9."""
    g = torch.Generator().manual_seed(seed)    # one seed per iteration and rank: exact resume
    strong = torch.stack([STRONG_VIEW(image, generator=g)[0] for image in trg_batch["image"]])
    with run.autocast():
        weak_logits = teacher(normalize(trg_batch["image"]))[0].float()
    prob, label = weak_logits.softmax(1).max(1)
    if thresholds is None:
        hist = ProbHistogram(device=prob.device)
        hist.update(prob, label)
        thresholds = hist.thresholds(quantile=0.5, cap=0.9)
    return strong, weak_logits, apply_thresholds(label, prob, thresholds).long()


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


def student_step(run, student, criterion, src_batch, fb_batch, strong, pseudo, iteration, args):
    """Step 2, the student's gradients (MPL sec. 2, student update): CE(S(strong), y^) +
    --student-source-weight * CE(S(x_s), y_s); images of x_s that are also in B_fb ignored."""
    with run.autocast():
        loss_pseudo = seg_loss_sum(criterion, student(normalize(strong)), pseudo)
        loss, losses = loss_pseudo, {"loss_pseudo": loss_pseudo.detach()}
        if args.student_source_weight > 0:
            keep = torch.tensor([n not in fb_batch["name"] for n in src_batch["name"]])
            labels = src_batch["label"].where(keep.to(run.device)[:, None, None], IGNORE_INDEX)
            loss_source = seg_loss_sum(criterion, student(normalize(src_batch["image"])), labels)
            loss = loss + args.student_source_weight * loss_source
            losses["loss_source"] = loss_source.detach()
    check_finite(loss, iteration, run.out)
    run.scaler.scale(loss).backward()
    return losses


def teacher_step(run, teacher, criterion, fb_batch, strong, weak_logits, pseudo, h, iteration,
                 args):
    """Step 4, the teacher's gradients (MPL sec. 2 teacher update with Appendix A's h; UDA, Xie
    et al. 2020: weak-view softmax, fixed, vs the strong view's where confident, ramped up)."""
    with run.autocast():
        out = teacher(normalize(fb_batch["image"]))
        loss_source = seg_loss_sum(criterion, out, fb_batch["label"])
        logits = teacher(normalize(strong))[0].float()
        loss_mpl = cross_entropy(logits, pseudo)          # y^: the labels the student learnt
        target = weak_logits.softmax(1)
        mask = target.max(1).values >= args.uda_threshold
        loss_uda = (-(target * logits.log_softmax(1)).sum(1) * mask).mean()
        w_uda = args.uda_weight * min(1.0, (iteration + 1) / args.uda_warmup)
        loss = loss_source + args.mpl_weight * h * loss_mpl + w_uda * loss_uda
    check_finite(loss, iteration, run.out)
    run.scaler.scale(loss).backward()
    return {"loss_t_source": loss_source.detach(), "loss_t_mpl": loss_mpl.detach(),
            "loss_t_uda": loss_uda.detach()}


def main(args):
    run = Run(args, SCRIPT)     # device, AMP, torchrun process group, seeds, run folder

    ## data: source (the student's batches; B_fb), target, each shuffled apart; Cityscapes val
    source_set, target_set = cli.source_dataset(args), cli.target_dataset(args)
    source_stream = Stream(run.train_loader(source_set, SOURCE_STREAM))
    fb_stream = Stream(run.train_loader(source_set, FEEDBACK_STREAM))
    target_stream = Stream(run.train_loader(target_set, TARGET_STREAM))
    val_loader = run.val_loader(cli.val_dataset(args))
    iters_per_epoch = args.iters_per_epoch or len(source_stream)
    report_data(run, source_set, val_loader.dataset)
    thresholds = args.class_thresholds and torch.tensor(args.class_thresholds, device=run.device)

    ## teacher and student (their --model may differ), each with its optimiser and schedule
    teacher = build_model(args.teacher_model, NUM_CLASSES, args.teacher_backbone,
                          **args.teacher_options)
    student = build_model(args.model, NUM_CLASSES, args.backbone,
                          "none" if args.student else args.pretrained, **model_options(args))
    if not args.resume:     # a resumed run takes both from its own checkpoint
        load_weights(teacher, load_checkpoint(args.teacher)["model"], args.teacher, "teacher")
        if args.student:
            load_weights(student, load_checkpoint(args.student)["model"], args.student)
    teacher, student = run.place(teacher), run.place(student)
    optimizer = cli.build_optimizer(args, param_groups(unwrap(student), args.lr,
                                                       args.weight_decay))
    optimizer_t = cli.build_optimizer(args, param_groups(unwrap(teacher), args.lr_teacher,
                                                         args.weight_decay_teacher))
    scheduler = poly_scheduler(optimizer, cli.poly_horizon(args, iters_per_epoch))
    scheduler_t = poly_scheduler(optimizer_t, cli.poly_horizon(args, iters_per_epoch))
    criterion = build_criterion(args, source_set)
    parts = {"model": student, "teacher": teacher, "optimizer": optimizer, "optimizer_t":
             optimizer_t, "scheduler": scheduler, "scheduler_t": scheduler_t, "source_stream":
             source_stream, "target_stream": target_stream, "fb_stream": fb_stream}
    run.open_folder()
    start = resume(run, args, parts)        # the epoch and step to continue from
    best_miou, session = start.best_miou, Session(args, run, parts)  # logs, mid-epoch saves

    ## train loop
    for epoch in range(start.epoch, session.last_epoch):
        timer, meter = Timer(), start.meter(epoch)
        teacher.train()
        student.train()
        bar = run.progress(iters_per_epoch, epoch, first=start.first_step(epoch))
        for i in bar:
            iteration = epoch * iters_per_epoch + i
            fb_batch = run.batch_to_device(fb_stream.next())
            trg_batch = run.batch_to_device(target_stream.next())
            src_batch = run.batch_to_device(source_stream.next())   # unused if its weight is 0
            seed = sample_seed(args.seed, STRONG_VIEW_STREAM, iteration, run.rank)
            strong, weak_logits, pseudo = teacher_labels(run, teacher, trg_batch, thresholds,
                                                         seed)
            fb_before = feedback_loss(run, student, fb_batch)
            losses = student_step(run, student, criterion, src_batch, fb_batch, strong, pseudo,
                                  iteration, args)
            run.scaler.step(optimizer)
            optimizer.zero_grad(set_to_none=True)
            h = H_SIGN[args.h_sign] * (feedback_loss(run, student, fb_batch) - fb_before)
            losses.update(teacher_step(run, teacher, criterion, fb_batch, strong, weak_logits,
                                       pseudo, h, iteration, args))
            run.scaler.step(optimizer_t)
            run.scaler.update()
            optimizer_t.zero_grad(set_to_none=True)
            scheduler.step()
            scheduler_t.step()
            meter.add(**losses, h=h, h_positive=(h > 0).float(),
                      kept=(pseudo != IGNORE_INDEX).float().mean())
            bar.set_postfix(meter.postfix("loss_pseudo", "loss_t_source", "h"))
            session.after_step(epoch, i, iteration, meter, scheduler, best_miou)  # log, save
            if session.out_of_time():       # --time-limit: a mid-epoch checkpoint was saved
                break
        if session.out_of_time():
            break

        ## epoch tail: validate the student, keep the best, save (best.pth, last.pth), then log
        losses = check_divergence(meter.means(run), epoch, run.out)
        result = validate(run, student, val_loader, args.val_size)
        is_best, best_miou = result["miou"] > best_miou, max(best_miou, result["miou"])
        done = (epoch + 1) * iters_per_epoch
        record = epoch_record(epoch, done, result, timer, lr=scheduler.get_last_lr()[0],
                              lr_t=scheduler_t.get_last_lr()[0], **losses)
        run.save(checkpoint_state(run, args, parts, epoch, done, best_miou, record), is_best)
        run.log_epoch(record)
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
    parser.set_defaults(pseudo=None)   # for cli.target_dataset: the teacher labels the target
    cli.add_model_args(parser)
    cli.add_optim_args(parser)
    g = parser.add_argument_group("meta pseudo labels")
    g.add_argument("--teacher", metavar="CKPT", help="the teacher: a trained run's checkpoint")
    g.add_argument("--student", metavar="CKPT", help="the student's start (default: --pretrained)")
    g.add_argument("--thresholds", metavar="JSON", help="gen_pseudo.py's (default: per batch)")
    g.add_argument("--student-source-weight", type=float, default=1.0, help="0: the paper")
    g.add_argument("--h-sign", choices=("authors", "theory"), default="authors", help="see below")
    g.add_argument("--mpl-weight", type=float, default=1.0,
                   help="weight of the teacher's feedback term; 0: the control without it")
    g.add_argument("--lr-teacher", type=float, help="default: the teacher model's LR")
    g.add_argument("--uda-weight", type=float, default=1.0, help="0 turns the UDA term off")
    g.add_argument("--uda-threshold", type=float, default=0.9, help="UDA: min weak-view confidence")
    g.add_argument("--uda-warmup", type=cli.positive_int, default=1, help="UDA ramp-up iterations")
    g.add_argument("--iters-per-epoch", type=cli.positive_int,
                   help="iterations per epoch (default: one pass over the source)")
    cli.add_run_args(parser, default_out="runs/mpl")
    args = cli.parse(parser, argv, SCRIPT)
    if not 0 <= args.uda_threshold <= 1:
        parser.error(f"--uda-threshold {args.uda_threshold}: expected a value in [0, 1]")
    try:
        if not args.resume:
            read_run_inputs(args)
    except SegDAError as e:
        parser.error(str(e))
    return args


if __name__ == "__main__":
    cli.entry(main, parse_args)
