"""Inference and evaluation: one model or the softmax average of several (multi-band ensemble).

Protocol (the official UDA code's): images are fed at the model's working size, logits are
upsampled bilinearly to the label's size, and the confusion matrix is accumulated over the
whole set. Both sizes are reported with every result, since published numbers move with them.
"""
import torch
import torch.nn.functional as F

from core.checkpoint import load_checkpoint, load_weights, unwrap
from core.errors import DataError
from core.labels import NUM_CLASSES
from core.metrics import ConfusionMatrix
from core.models import build_model
from core.transforms import normalize, resize_images


@torch.inference_mode()
def predict_logits(model, images, size, out_size):
    """Logits of `model` (in eval mode) for uint8 images fed at `size`, upsampled to `out_size`."""
    logits = model(normalize(resize_images(images, size)))
    return F.interpolate(logits.float(), size=out_size, mode="bilinear", align_corners=False)


@torch.inference_mode()
def predict_probs(models, sizes, images, out_size):
    """Softmax averaged over models (FDA's multi-band transfer, Yang & Soatto 2020, Eq. 6)."""
    probs = sum(predict_logits(m, images, s, out_size).softmax(1) for m, s in zip(
        models, sizes, strict=True))
    return probs / len(models)


@torch.inference_mode()
def evaluate(models, sizes, loader, device, num_classes, autocast=None, progress=None):
    """Confusion matrix of the (ensembled) prediction over a labelled loader, all ranks summed.

    A single model is scored by the argmax of its logits, an ensemble by the argmax of the
    mean softmax; the two agree for an ensemble of one.
    """
    for m in models:
        m.eval()
    cm = ConfusionMatrix(num_classes)
    batches = progress(loader) if progress else loader
    for batch in batches:
        images = batch["image"].to(device, non_blocking=True)
        labels = batch["label"].to(device, non_blocking=True)
        out_size = tuple(labels.shape[-2:])
        with autocast() if autocast else torch.autocast(device.type, enabled=False):
            if len(models) == 1:
                pred = predict_logits(models[0], images, sizes[0], out_size).argmax(1)
            else:
                pred = predict_probs(models, sizes, images, out_size).argmax(1)
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


def load_model(path, device, size=None):
    """(model in eval mode, its working size, stored args) rebuilt from a checkpoint."""
    state = load_checkpoint(path)
    stored = state["args"]
    model = build_model(stored["model"], NUM_CLASSES, stored["backbone"], pretrained="none")
    load_weights(model, state["model"], path)
    working_size = tuple(size or stored.get("val_size") or stored.get("target_size"))
    return model.to(device).eval(), working_size, stored
