"""export.py: the ONNX graph takes uint8 RGB images of any batch and size and gives the logits
that the PyTorch protocol gives (normalisation inside). Needs the optional packages of
requirements-extras.txt; skipped without them."""
import sys

import numpy as np
import pytest
import torch

import export
from core.checkpoint import save_checkpoint
from core.errors import ConfigError
from core.evaluation import load_model, predict_logits
from core.models import build_model, model_options


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A BiSeNet-R18 checkpoint with random weights and non-trivial BatchNorm statistics
    (what the graph computes does not depend on training)."""
    torch.manual_seed(0)
    args = {"model": "bisenet", "backbone": "resnet18", "val_size": (64, 128)}
    model = build_model("bisenet", 19, "resnet18", "none", **model_options(args))
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    path = tmp_path_factory.mktemp("ckpt") / "last.pth"
    save_checkpoint({"model": model.state_dict(), "args": args}, path)
    return path


def test_onnx_graph_matches_pytorch_on_uint8_images(checkpoint, tmp_path, capsys):
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxscript")
    ort = pytest.importorskip("onnxruntime")
    out = tmp_path / "model.onnx"
    export.main(export.parse_args([str(checkpoint), "--out", str(out), "--device", "cpu"]))
    printed = capsys.readouterr().out
    assert "working size 64x128" in printed
    assert printed.count("argmax agreement") == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]   # no temp files left

    graph = onnx.load(out)
    (inp,) = graph.graph.input
    assert inp.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    dims = inp.type.tensor_type.shape.dim
    assert dims[1].dim_value == 3 and all(dims[i].dim_param for i in (0, 2, 3))  # N, H, W free
    assert {p.key: p.value for p in graph.metadata_props}["working_size"] == "64x128"

    # any batch and size, against the PyTorch protocol at that size (normalise, network)
    model, _, _ = load_model(checkpoint, torch.device("cpu"))
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    g = torch.Generator().manual_seed(1)
    for shape in ((1, 3, 64, 128), (3, 3, 37, 101)):
        images = torch.randint(0, 256, shape, dtype=torch.uint8, generator=g)
        ref = predict_logits(model, images, shape[-2:], shape[-2:]).numpy()
        (got,) = session.run(None, {"images": images.numpy()})
        assert got.shape == (shape[0], 19, *shape[-2:])
        assert np.abs(got - ref).max() < 1e-3 * np.abs(ref).max()
        assert (got.argmax(1) == ref.argmax(1)).mean() > 0.999

    # an existing file is never written over without --overwrite
    with pytest.raises(SystemExit):
        export.parse_args([str(checkpoint), "--out", str(out)])
    assert export.parse_args([str(checkpoint), "--out", str(out), "--overwrite"]).overwrite


def test_missing_optional_package_is_one_line(checkpoint, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx", None)      # as if it were not installed
    args = export.parse_args([str(checkpoint), "--out", str(tmp_path / "m.onnx")])
    with pytest.raises(ConfigError, match="needs onnx .*requirements-extras.txt"):
        export.main(args)
    assert not (tmp_path / "m.onnx").exists()
