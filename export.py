"""Export a checkpoint's network to ONNX: uint8 RGB images in, logits out.

    pip install -r requirements-extras.txt                  # onnx, onnxscript, onnxruntime
    python export.py runs/gta/last.pth --out gta.onnx

The graph takes uint8 RGB images N x 3 x H x W (0-255, as decoded from an image file) and
holds the ImageNet normalisation itself: normalising outside, or forgetting to, is the classic
deployment bug. It returns the main head's logits N x 19 x H x W at the input size (the
training-only auxiliary heads are not in it); argmax over dim 1 gives train ids 0-18.
N, H and W are dynamic: the networks resize their output to the input's exact size, so any
H and W work (no multiple of 8 or 32 is needed). Feed images resized to the working size
stored in the checkpoint (printed, and kept in the file's metadata as `working_size`) for the
accuracy it was validated at; predict.py shows the protocol (resize in, upsample logits out).

With onnxruntime installed, the graph is run against PyTorch on random uint8 batches (at the
working size, and another batch size at another size) and the largest |logit difference| and
the argmax agreement are printed.
"""
import importlib
import os
from pathlib import Path

import torch
from torch import nn

from core import cli, outputs
from core.errors import ConfigError
from core.evaluation import load_model, select_device
from core.labels import CLASS_NAMES
from core.transforms import normalize

EXTRAS = "pip install -r requirements-extras.txt"


class UInt8Segmenter(nn.Module):
    """uint8 RGB N x 3 x H x W -> logits N x 19 x H x W of the network in eval mode."""

    def __init__(self, model):
        super().__init__()
        self.model = model.eval()

    def forward(self, images):
        return self.model(normalize(images))   # ImageNet mean/std, on 0-255 values


def main(args):
    onnx = require("onnx", "writes the graph")
    require("onnxscript", "torch.onnx builds the graph with it")
    device = select_device(args.device)

    ## the network in eval mode (main head only), rebuilt from the checkpoint
    model, size, stored = load_model(args.checkpoint, device, args.size)
    graph = UInt8Segmenter(model).eval()

    ## export with dynamic batch, height and width, through a temp file (never half a file)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    example = random_images((2, 3, *size), device, seed=0)
    dims = {0: torch.export.Dim("batch"), 2: torch.export.Dim("height"),
            3: torch.export.Dim("width")}
    try:
        torch.onnx.export(graph, (example,), tmp, input_names=["images"],
                          output_names=["logits"], dynamic_shapes={"images": dims},
                          opset_version=args.opset, external_data=False, verbose=False)
        exported = onnx.load(tmp)
        onnx.helper.set_model_props(exported, {
            "checkpoint": str(args.checkpoint), "network": f"{stored['model']} "
            f"{stored.get('backbone')}", "working_size": f"{size[0]}x{size[1]}",
            "input": "images: uint8 RGB N x 3 x H x W, 0-255 (normalised inside)",
            "output": f"logits: float32 N x {len(CLASS_NAMES)} x H x W",
            "classes": ",".join(CLASS_NAMES)})
        onnx.save(exported, tmp)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    print(f"wrote {out} ({out.stat().st_size / 2**20:.1f} MiB): {stored['model']} "
          f"{stored.get('backbone')}, input uint8 N x 3 x H x W (dynamic), working size "
          f"{size[0]}x{size[1]}")

    ## check: the same random images through onnxruntime and PyTorch
    try:
        ort = importlib.import_module("onnxruntime")
    except ImportError:
        print(f"onnxruntime is not installed: the graph was not checked ({EXTRAS})")
        return
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    h, w = size
    for seed, shape in enumerate(((2, 3, h, w), (1, 3, h + 17, w + 33)), start=1):
        images = random_images(shape, device, seed)
        with torch.inference_mode():
            ref = graph(images).float().cpu()
        got = torch.from_numpy(session.run(None, {"images": images.cpu().numpy()})[0])
        diff = (got - ref).abs().max().item()
        agree = (got.argmax(1) == ref.argmax(1)).double().mean().item()
        print(f"onnxruntime vs PyTorch at {'x'.join(map(str, shape))}: max |logit diff| "
              f"{diff:.2e} (logits up to {ref.abs().max().item():.1f}), argmax agreement "
              f"{100 * agree:.3f}%")


def random_images(shape, device, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, shape, dtype=torch.uint8, generator=g).to(device)


def require(module, purpose):
    """An optional package (requirements-extras.txt), or a one-line error saying how to get it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ConfigError(f"export.py needs {module} ({purpose}), an optional package: "
                          f"{EXTRAS}") from None


def parse_args(argv=None):
    p = cli.new_parser(__doc__)
    p.add_argument("checkpoint", help="best.pth / last.pth of a training run")
    p.add_argument("--out", required=True, help="the .onnx file to write")
    p.add_argument("--size", type=cli.positive_int, nargs=2, metavar=("H", "W"),
                   help="working size to record and check at (default: the checkpoint's)")
    p.add_argument("--opset", type=cli.positive_int, default=None,
                   help="ONNX opset version (default: torch.onnx's)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    cli.add_device_arg(p)
    args = p.parse_args(argv)
    outputs.check_outputs(p, args, "export")
    return args


if __name__ == "__main__":
    cli.entry(main, parse_args)
