"""Issue 24, item 5: every JSON file the project writes is strict JSON (RFC 8259): an undefined
score is null, never a bare NaN or Infinity that strict parsers refuse."""
import json
import math

import numpy as np
import pytest
import torch
from conftest import ROOT, tiny_args

import evaluate
import gen_pseudo
import predict
import train_source
from core.checkpoint import save_checkpoint
from core.datasets import Cityscapes
from core.labels import CLASS_NAMES, IGNORE_INDEX, NUM_CLASSES
from core.logs import RunLog, json_text, write_json
from core.models import build_model, model_options
from core.prepared import __main__ as prepare

ROAD = CLASS_NAMES.index("road")


def strict_loads(text):
    """json.loads that refuses NaN, Infinity and -Infinity, as strict parsers do."""
    def refuse(name):
        raise ValueError(f"not JSON: {name}")
    return json.loads(text, parse_constant=refuse)


def strict_read(path):
    if path.suffix == ".jsonl":
        return [strict_loads(line) for line in path.read_text().splitlines()]
    return strict_loads(path.read_text())


def test_json_is_written_by_one_helper():
    """Every json.dump(s) of the project is core.logs.json_text's, but demo/'s (kept free of
    torch, which core.logs imports): that one refuses NaN itself."""
    files = [p for p in ROOT.rglob("*.py")
             if not {".venv", "tests"} & set(p.relative_to(ROOT).parts)]
    for path in files:
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            if "json.dump" in line:
                where = path.relative_to(ROOT).as_posix()
                assert where == "core/logs.py" or (
                    where.startswith("demo/") and "allow_nan=False" in line), \
                    f"{where}:{number} writes JSON without core.logs.json_text"


def test_non_finite_values_are_written_as_null(tmp_path):
    record = {"nan": math.nan, "inf": math.inf, "ninf": -math.inf, "tensor": torch.tensor(0.5),
              "tensor_nan": torch.tensor(float("nan")), "numpy": np.float32(np.nan),
              "array": np.array([1.0, np.nan]), "pair": (1, math.inf), "n": 3}
    expected = {"nan": None, "inf": None, "ninf": None, "tensor": 0.5, "tensor_nan": None,
                "numpy": None, "array": [1.0, None], "pair": [1, None], "n": 3}
    log = RunLog(tmp_path / "metrics.jsonl")
    log.write(record)
    assert strict_read(tmp_path / "metrics.jsonl") == [expected]
    write_json(tmp_path / "sub" / "r.json", record)
    assert strict_read(tmp_path / "sub" / "r.json") == expected
    assert strict_loads(json_text(record)) == expected


@pytest.fixture(scope="module")
def road_everywhere(tiny_demo, tmp_path_factory):
    """A checkpoint whose network predicts road at every pixel (classifier weights 0, road's
    bias 10): every class but road that the labels lack scores 0/0, an undefined IoU."""
    args = {"model": "bisenet", "backbone": "resnet18", "val_root": str(tiny_demo.target),
            "target_root": str(tiny_demo.target), "val_size": (64, 128), "seed": 1}
    model = build_model("bisenet", NUM_CLASSES, "resnet18", pretrained="none",
                        **model_options(args))
    state = model.state_dict()
    state["classifier.weight"].zero_()
    state["classifier.bias"].zero_()
    state["classifier.bias"][ROAD] = 10.0
    path = tmp_path_factory.mktemp("road") / "run" / "best.pth"
    save_checkpoint({"model": state, "args": args, "iteration": 4}, path)
    return path


def test_every_json_the_project_writes_is_strict(tiny_demo, road_everywhere, tmp_path):
    ckpt, out = str(road_everywhere), tmp_path
    # a training run's metrics.jsonl; evaluate --json, --group-by-seed --json, --save-vis;
    # gen_pseudo's thresholds; predict's folder; the prepared copies; the demo's marker
    train_source.main(train_source.parse_args(tiny_args(tiny_demo, out / "run", "--epochs", 1,
                                                          "--iters-per-epoch", 1)))
    common = ["--workers", "0", "--device", "cpu"]
    evaluate.main(evaluate.parse_args([ckpt, *common, "--json", str(out / "eval.json"),
                                       "--save-vis", str(out / "vis"), "--vis-count", "1"]))
    evaluate.main(evaluate.parse_args([ckpt, *common, "--group-by-seed",
                                       "--json", str(out / "groups.json")]))
    gen_pseudo.main(gen_pseudo.parse_args([ckpt, *common, "--out", str(out / "pseudo"),
                                           "--split", "val"]))
    frame = next((tiny_demo.target / "leftImg8bit" / "val").rglob("*.png"))
    predict.main(predict.parse_args([ckpt, str(frame), "--out", str(out / "pred"),
                                     "--device", "cpu"]))
    prepare.main(prepare.parse_args(["--source-root", str(tiny_demo.source), "--source-split",
                                     str(tiny_demo.source_train_list), "--source-size", "32",
                                     "64", "--workers", "0", "--prepared", str(out / "prep")]))
    written = sorted([*out.rglob("*.json"), *out.rglob("*.jsonl"),
                      *tiny_demo.root.glob("*.json")])
    assert {p.name for p in written} == {
        "metrics.jsonl", "eval.json", "evaluate.json", "groups.json", "thresholds.json",
        "gen_pseudo.json", "predict.json", "prepared.json", "manifest.jsonl", "demo.json"}
    for path in written:
        strict_read(path)                   # raises on NaN, Infinity or a broken line

    # the case of the issue: classes absent from the labels and the predictions are null
    labels = torch.cat([item["label"].flatten()
                        for item in Cityscapes(tiny_demo.target, "val", size=None)])
    valid = labels[labels != IGNORE_INDEX]
    present = set(valid.unique().tolist())
    assert present != set(range(NUM_CLASSES))               # the demo lacks some classes
    result = strict_read(out / "eval.json")
    for c, name in enumerate(CLASS_NAMES):
        if c == ROAD:
            assert result["iou"][name] == pytest.approx((valid == ROAD).sum().item()
                                                        / valid.numel())
        else:
            assert result["iou"][name] == (0.0 if c in present else None), name
    assert strict_read(out / "groups.json")["miou_std"] is None       # n = 1
    pseudo = strict_read(out / "pseudo" / "thresholds.json")["classes"]
    assert all(pseudo[name]["kept"] is None for c, name in enumerate(CLASS_NAMES)
               if c != ROAD)                                   # no pixel predicted
