"""Inference and evaluation: one model or the softmax average of several (multi-band ensemble).

Protocol (the official UDA code's): images are fed at the model's working size, logits are
upsampled bilinearly to the label's size, and the confusion matrix is accumulated over the
whole set. Both sizes are reported with every result, since published numbers move with them.
"""
from pathlib import Path

import torch

from core.checkpoint import load_checkpoint, load_weights, unwrap
from core.errors import CheckpointError, ConfigError, DataError
from core.labels import NUM_CLASSES
from core.metrics import ConfusionMatrix
from core.models import build_model, model_options
from core.models.logits import upsample_logits
from core.precision import amp_dtype, set_memory_format
from core.transforms import normalize, resize_images


@torch.inference_mode()
def predict_logits(model, images, size, out_size):
    """Logits of `model` (in eval mode) for uint8 images fed at `size`, upsampled to `out_size`
    in one step from the network's output stride, as AdaptSegNet's evaluation does (the
    network's own upsampling to `size` first would interpolate twice)."""
    logits = model(normalize(resize_images(images, size)), upsample=False)
    return upsample_logits(logits, out_size)


@torch.inference_mode()
def predict_probs(models, sizes, images, out_size):
    """Softmax averaged over models (FDA's multi-band transfer, Yang & Soatto 2020, Eq. 6)."""
    probs = sum(predict_logits(m, images, s, out_size).softmax(1) for m, s in zip(
        models, sizes, strict=True))
    return probs / len(models)


@torch.inference_mode()
def predict_classes(models, sizes, images, out_size):
    """Class map: argmax of one model's logits, or of the ensemble's mean softmax. evaluate.py
    and predict.py both go through here, so their predictions agree pixel for pixel."""
    if len(models) == 1:
        return predict_logits(models[0], images, sizes[0], out_size).argmax(1)
    return predict_probs(models, sizes, images, out_size).argmax(1)


def select_device(name, index=0):
    """--device auto | cpu | cuda (the GPU `index`, i.e. LOCAL_RANK under torchrun)."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("--device cuda: no CUDA device is visible to PyTorch")
        return torch.device("cuda", index)
    if name != "cpu":
        raise ConfigError(f"--device {name}: expected auto, cpu or cuda")
    return torch.device("cpu")


def ensemble_paths(first, others=()):
    """The checkpoints of one ensemble (the inference scripts' CHECKPOINT --ensemble CKPT ...):
    `first`, then `others`, in order, as they were written; a file named twice (under any
    spelling) counts once, so the ensemble of a checkpoint with itself is that checkpoint."""
    paths = {}
    for path in (first, *others):
        paths.setdefault(Path(path).resolve(), str(path))
    return list(paths.values())


@torch.inference_mode()
def evaluate(models, sizes, loader, device, num_classes, autocast=None, progress=None):
    """Confusion matrix of the (ensembled) prediction over a labelled loader (core.sampling's
    make_loader for evaluation: lists of same-size batches), all ranks summed.

    A single model is scored by the argmax of its logits, an ensemble by the argmax of the
    mean softmax; the two agree for an ensemble of one.
    """
    for m in models:
        m.eval()
    cm = ConfusionMatrix(num_classes)
    groups = progress(loader) if progress else loader
    for batch in (batch for group in groups for batch in group):   # (core.sampling's collate)
        images = batch["image"].to(device, non_blocking=True)
        labels = batch["label"].to(device, non_blocking=True)
        out_size = tuple(labels.shape[-2:])
        with autocast() if autocast else torch.autocast(device.type, enabled=False):
            pred = predict_classes(models, sizes, images, out_size)
        cm.update(pred, labels)
    return cm.reduce()


def validate(run, model, loader, size):
    """Score the network on this rank's shard of Cityscapes val, summed over ranks.

    Every rank first takes rank 0's BatchNorm statistics, so the score is that of the
    network the checkpoint holds. A set with no labelled pixel is an error, not a NaN.
    """
    run.sync_buffers(model)
    result = evaluate([unwrap(model)], [size], loader, run.device, NUM_CLASSES,
                      autocast=run.autocast).compute()
    if result["miou"] != result["miou"]:     # NaN: no valid pixel anywhere
        raise DataError(f"the validation set {loader.dataset!r} has no labelled pixel "
                        f"(every label is ignore or an unknown id)")
    return result


def load_model(path, device, size=None, net="model", amp=False):
    """(model in eval mode, its working size, stored args) rebuilt from a checkpoint, with the
    architecture options it records (those it predates: the values it was trained with).
    net="teacher": the teacher of a train_mpl.py run (its args' teacher_model, ...). `amp`:
    the --amp it will run under, which decides its memory layout (core.precision)."""
    state = load_checkpoint(path)
    stored = state["args"]
    if net == "teacher":
        if "teacher" not in state:
            raise CheckpointError(f"{path} holds no teacher (train_mpl.py checkpoints do)")
        name, backbone = stored["teacher_model"], stored["teacher_backbone"]
        # (options the run predates: the values its teacher was trained with)
        options = model_options({"model": name, **stored["teacher_options"]})
    else:
        name, backbone, options = stored["model"], stored["backbone"], model_options(stored)
    model = build_model(name, NUM_CLASSES, backbone, pretrained="none", **options)
    load_weights(model, state[net], path, what=net)
    working_size = tuple(size or stored.get("val_size") or stored.get("target_size"))
    model = set_memory_format(model.to(device), device, amp_dtype(device, amp))
    return model.eval(), working_size, stored
