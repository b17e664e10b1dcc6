"""predict.py as a user runs it: files and folders, every format, ensembles, no overwriting;
and its Cityscapes label-id PNGs, scored by the official evaluator's rule, give exactly the
mIoU that evaluate.py reports for the same checkpoint and frames."""
import json
import math
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import ROOT, tiny_args
from PIL import Image

import evaluate
import gen_pseudo
import predict
import train_source
from core import cli, precision
from core.checkpoint import load_checkpoint, save_checkpoint
from core.errors import ConfigError, MissingDataError
from core.evaluation import load_model
from core.labels import PALETTE
from core.precision import inference_autocast
from core.transforms import normalize

# The official evaluator's tables (cityscapesScripts, helpers/labels.py): the label ids it
# scores (ignoreInEval False), in train-id order. Written out here, not imported, so that the
# test does not check the project's table against itself.
EVALUATED_IDS = (7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33)


def official_scores(pairs):
    """evalPixelLevelSemanticLabeling's rule, transcribed: one confusion matrix over label ids
    (ground truth x prediction, every pixel) summed over all images; per scored class
    IoU = TP / (TP + FP + FN), where FN = its ground-truth pixels predicted as anything else
    and FP = pixels predicted as it whose ground truth is another scored class (void ground
    truth is never a false positive); 0/0 is NaN; the mean skips NaN classes."""
    conf = np.zeros((256, 256), dtype=np.int64)
    for pred_file, gt_file in pairs:
        pred, gt = np.array(Image.open(pred_file)), np.array(Image.open(gt_file))
        assert pred.ndim == 2 and pred.shape == gt.shape     # one channel, full resolution
        codes = gt.astype(np.int64).ravel() * 256 + pred.astype(np.int64).ravel()
        conf += np.bincount(codes, minlength=256 * 256).reshape(256, 256)
    ious = []
    for c in EVALUATED_IDS:
        tp = conf[c, c]
        fn = conf[c, :].sum() - tp
        fp = conf[[o for o in EVALUATED_IDS if o != c], c].sum()
        ious.append(float(tp) / (tp + fp + fn) if tp + fp + fn else math.nan)
    valid = [v for v in ious if not math.isnan(v)]
    return sum(valid) / len(valid), ious


@pytest.fixture(scope="module")
def checkpoint(tiny_demo, tmp_path_factory):
    """A BiSeNet-R18 after one short epoch on the tiny demo source (64x128)."""
    out = tmp_path_factory.mktemp("runs") / "source"
    train_source.main(train_source.parse_args(tiny_args(tiny_demo, out, "--epochs", 1)))
    return out / "last.pth"


@pytest.fixture(scope="module")
def scored(checkpoint, tiny_demo, tmp_path_factory):
    """predict.py --format labelids and evaluate.py --json on the tiny demo's val frames."""
    tmp = tmp_path_factory.mktemp("scored")
    val_images = tiny_demo.target / "leftImg8bit" / "val"
    predict.main(predict.parse_args([str(checkpoint), str(val_images), "--out",
                                     str(tmp / "submit"), "--format", "labelids"]))
    evaluate.main(evaluate.parse_args([str(checkpoint), "--workers", "0",
                                       "--json", str(tmp / "eval.json")]))
    return tmp / "submit", json.loads((tmp / "eval.json").read_text())


def independent_probs(checkpoint, photo):
    """Softmax of one checkpoint for an H x W x 3 uint8 photo: fed at the working size
    (bilinear, antialiased), logits upsampled (bilinear) from the output stride to H x W."""
    model, size, _ = load_model(checkpoint, torch.device("cpu"))
    x = torch.from_numpy(np.array(photo)).permute(2, 0, 1)[None].float()
    x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
    with torch.no_grad():
        logits = F.interpolate(model(normalize(x), upsample=False), size=photo.shape[:2],
                               mode="bilinear", align_corners=False)
    return logits.softmax(1)[0]


def test_label_ids_score_exactly_what_evaluate_reports(scored, tiny_demo):
    submit, result = scored
    gts = sorted((tiny_demo.target / "gtFine" / "val").glob("*/*_gtFine_labelIds.png"))
    pairs = []
    for gt in gts:   # the evaluator's match: the prediction whose name holds city_seq_frame
        frame = gt.name.removesuffix("_gtFine_labelIds.png")
        (pred,) = submit.rglob(f"*{frame}*.png")
        assert pred.name == f"{frame}_pred_labelIds.png"
        pairs.append((pred, gt))
    assert len(pairs) == result["images"] == 4
    miou, ious = official_scores(pairs)
    # the same confusion counts divided the same way: every class's IoU bit for bit, and the
    # mean of the same numbers (summed in another order: equal to the last bit or two)
    for ours, theirs in zip(result["iou"].values(), ious, strict=True):
        assert (ours is None and math.isnan(theirs)) or ours == theirs   # JSON null: NaN
    assert miou == pytest.approx(result["miou"], rel=1e-15, abs=0)
    assert sum(not math.isnan(v) for v in ious) >= 3     # a real score, not one class


def test_official_evaluator_itself_agrees(scored, tiny_demo):
    """With cityscapesscripts installed (optional, test-only), the evaluator itself."""
    ev = pytest.importorskip("cityscapesscripts.evaluation.evalPixelLevelSemanticLabeling")
    submit, result = scored
    ev.args.evalInstLevelScore, ev.args.JSONOutput, ev.args.quiet = False, False, True
    ev.args.predictionPath, ev.args.predictionWalk = str(submit), None
    gts = sorted(map(str, (tiny_demo.target / "gtFine" / "val").glob("*/*_labelIds.png")))
    scores = ev.evaluateImgLists([ev.getPrediction(ev.args, g) for g in gts], gts, ev.args)
    assert scores["averageScoreClasses"] == pytest.approx(result["miou"], rel=1e-15, abs=0)


def test_every_format_for_files_and_folders_of_any_mode(checkpoint, tiny_demo, tmp_path):
    frame = next((tiny_demo.target / "leftImg8bit" / "val").rglob("*_leftImg8bit.png"))
    photo = np.asarray(Image.open(frame).convert("RGB"))
    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    crop = photo[20:65, 100:170]                               # odd size: 45 x 70
    Image.fromarray(crop).save(folder / "a.png")
    Image.fromarray(photo[::2, ::2]).convert("RGBA").save(folder / "sub" / "b.png")
    Image.fromarray(crop).convert("L").save(folder / "sub" / "c.bmp")
    (folder / "notes.txt").write_text("not an image")
    out = tmp_path / "pred"
    args = [str(checkpoint), str(frame), str(folder), "--out", str(out),
            "--format", "color", "overlay", "labelids", "trainids"]
    predict.main(predict.parse_args(args))

    expected = {out / frame.name.replace("_leftImg8bit.png", ""): frame,
                out / "a": folder / "a.png", out / "sub" / "b": folder / "sub" / "b.png",
                out / "sub" / "c": folder / "sub" / "c.bmp"}
    assert len(list(out.rglob("*.png"))) == 4 * len(expected)
    for stem, source in expected.items():
        rgb = np.asarray(Image.open(source).convert("RGB"))
        files = {fmt: stem.with_name(stem.name + suffix)
                 for fmt, suffix in predict.FORMATS.items()}
        train_ids = Image.open(files["trainids"])
        assert train_ids.mode == "P" and train_ids.size == (rgb.shape[1], rgb.shape[0])
        train_ids = np.asarray(train_ids)
        # the prediction: working size in, full resolution out
        assert (train_ids == independent_probs(checkpoint, rgb).argmax(0).numpy()).all()
        label_ids = Image.open(files["labelids"])
        assert label_ids.mode == "L"
        assert (np.asarray(label_ids) == np.array(EVALUATED_IDS)[train_ids]).all()
        color = np.asarray(Image.open(files["color"]))
        assert (color == PALETTE[train_ids]).all()
        overlay = np.asarray(Image.open(files["overlay"])).astype(np.int16)
        assert np.abs(overlay - (rgb / 2 + PALETTE[train_ids] / 2)).max() <= 0.5

    # nothing is written over without --overwrite, and the refusal comes before any work
    before = {p: p.read_bytes() for p in out.rglob("*.png")}
    for p in before:
        p.write_bytes(b"user's file")
    with pytest.raises(ConfigError, match=r"16 output file\(s\) exist.*--overwrite"):
        predict.main(predict.parse_args(args))
    assert all(p.read_bytes() == b"user's file" for p in before)
    predict.main(predict.parse_args(args + ["--overwrite"]))
    assert {p: p.read_bytes() for p in out.rglob("*.png")} == before

    # two images that would write the same file are refused up front
    Image.fromarray(crop).save(folder / "a.jpg")
    with pytest.raises(ConfigError, match="would both be written"):
        predict.main(predict.parse_args([str(checkpoint), str(folder), "--out",
                                         str(tmp_path / "other")]))
    assert not (tmp_path / "other").exists()


def test_ensemble_is_the_mean_softmax(checkpoint, tiny_demo, tmp_path, monkeypatch):
    state = load_checkpoint(checkpoint)    # a second, different network
    g = torch.Generator().manual_seed(0)
    state["model"] = {k: v + 0.05 * torch.randn(v.shape, generator=g) * v.abs().mean()
                      if v.is_floating_point() and "running" not in k else v
                      for k, v in state["model"].items()}
    other = tmp_path / "other.pth"
    save_checkpoint(state, other)
    frame = next((tiny_demo.target / "leftImg8bit" / "val").rglob("*_leftImg8bit.png"))
    rgb = np.asarray(Image.open(frame).convert("RGB"))
    out = tmp_path / "pred"
    predict.main(predict.parse_args([str(checkpoint), str(frame), "--out", str(out),
                                     "--format", "trainids", "--ensemble", str(other)]))
    got = np.asarray(Image.open(next(out.glob("*_pred_trainIds.png"))))
    p1, p2 = independent_probs(checkpoint, rgb), independent_probs(other, rgb)
    assert (got == ((p1 + p2) / 2).argmax(0).numpy()).all()
    assert (got != p1.argmax(0).numpy()).any()        # the second network changed something
    # a checkpoint named twice counts once; --amp changes nothing on a CPU without bf16
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: False)
    predict.main(predict.parse_args([str(checkpoint), str(frame), "--out", str(tmp_path / "s"),
                                     "--format", "trainids", "--ensemble", str(checkpoint),
                                     "--amp"]))
    single = np.asarray(Image.open(next((tmp_path / "s").glob("*.png"))))
    assert (single == p1.argmax(0).numpy()).all()
    assert inference_autocast(torch.device("cpu"), amp=True)().__class__.__name__ == \
        "nullcontext"


def test_bad_input_is_one_line_naming_it(checkpoint, tmp_path):
    missing = tmp_path / "no_such_folder"
    run = subprocess.run([sys.executable, str(ROOT / "predict.py"), str(checkpoint),
                          str(missing), "--out", str(tmp_path / "pred")],
                         capture_output=True, text=True, cwd=tmp_path)
    assert run.returncode == 1
    assert run.stderr.strip() == f"error: no such image file or folder: {missing}"
    (tmp_path / "empty").mkdir()
    with pytest.raises(MissingDataError, match=r"no images in folder .*empty"):
        predict.main(predict.parse_args([str(checkpoint), str(tmp_path / "empty"),
                                         "--out", str(tmp_path / "pred")]))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_amp_autocasts_on_cuda():
    device = torch.device("cuda")
    with inference_autocast(device, amp=True)():
        y = F.linear(torch.ones(2, 4, device=device), torch.ones(3, 4, device=device))
    assert y.dtype == (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16)
    with inference_autocast(device, amp=False)():
        assert F.linear(torch.ones(2, 4, device=device),
                        torch.ones(3, 4, device=device)).dtype == torch.float32


INFERENCE_FLAGS = {"--ensemble", "--size", "--batch-size", "--workers", "--amp", "--device"}


def test_one_inference_flag_group_and_one_ensemble_convention(checkpoint, tiny_demo, tmp_path,
                                                              capsys):
    """evaluate.py, gen_pseudo.py and predict.py: the same inference flags (types, arity,
    choices; each script's defaults), and CHECKPOINT --ensemble CKPT ...: the ensemble of a
    checkpoint with itself, named twice or as a copy, is that checkpoint alone."""
    parsers = {m.__name__: m.build_parser() for m in (evaluate, gen_pseudo, predict)}
    shapes, defaults = {}, {}
    for name, parser in parsers.items():
        actions = {a.option_strings[0]: a for a in parser._actions
                   if a.option_strings and a.option_strings[0] in INFERENCE_FLAGS}
        assert set(actions) == INFERENCE_FLAGS, name
        shapes[name] = {flag: (a.dest, type(a), a.type, a.nargs, a.metavar, a.choices)
                        for flag, a in actions.items()}
        defaults[name] = {flag: a.default for flag, a in actions.items()}
        shown = parser._get_formatter()._get_help_string   # the help as --help prints it
        assert all("default" in shown(a) for a in actions.values()), name
    assert shapes["evaluate"] == shapes["gen_pseudo"] == shapes["predict"]
    assert shapes["predict"]["--workers"][2] is cli.non_negative_int
    assert shapes["predict"]["--batch-size"][2] is shapes["predict"]["--size"][2] \
        is cli.positive_int
    assert {n: (d["--batch-size"], d["--workers"]) for n, d in defaults.items()} == \
        {"evaluate": (1, 2), "gen_pseudo": (2, 2), "predict": (1, 0)}
    for d in defaults.values():
        assert d["--ensemble"] == [] and d["--size"] is None and d["--device"] == "auto"

    # flag errors name the value, and the old ensemble forms are answered with the new one
    ckpt, copy = str(checkpoint), str(tmp_path / "copy.pth")
    shutil.copyfile(checkpoint, copy)
    for argv, message in [
            ((evaluate, [ckpt, "--workers", "-1"]), "--workers: expected an integer >= 0, got -1"),
            ((predict, [ckpt, "x.png", "--out", "p", "--workers", "x"]),
             "--workers: expected an integer >= 0, got 'x'"),
            ((gen_pseudo, [ckpt, copy, "--out", "p"]),
             f"write `gen_pseudo.py {ckpt} --ensemble {copy} --out p`"),
            ((evaluate, [ckpt, copy, "--ensemble"]), f"`evaluate.py {ckpt} --ensemble {copy}`"),
            ((evaluate, [ckpt, copy, "--ensemble", ckpt]),
             f"`evaluate.py {ckpt} --ensemble {copy} {ckpt}`")]:
        script, args = argv
        with pytest.raises(SystemExit):
            script.parse_args(args)
        assert message in capsys.readouterr().err

    # evaluate.py: the same scores alone, named twice and with a copy
    scores = []
    for i, more in enumerate(([], ["--ensemble", ckpt], ["--ensemble", copy])):
        evaluate.main(evaluate.parse_args([ckpt, *more, "--workers", "0",
                                           "--json", str(tmp_path / f"e{i}.json")]))
        scores.append(json.loads((tmp_path / f"e{i}.json").read_text()))
    assert scores[2]["checkpoint"] == f"ensemble of {ckpt}, {copy}"
    for s in scores[1:]:
        assert s["miou"] == scores[0]["miou"] and s["iou"] == scores[0]["iou"]
    # gen_pseudo.py: the same pseudo labels and thresholds
    for i, more in enumerate(([], ["--ensemble", ckpt], ["--ensemble", copy])):
        gen_pseudo.main(gen_pseudo.parse_args([ckpt, *more, "--out", str(tmp_path / f"g{i}"),
                                               "--workers", "0"]))
    reports = [json.loads((tmp_path / f"g{i}" / "thresholds.json").read_text())
               for i in range(3)]
    assert [r["checkpoints"] for r in reports] == [[ckpt], [ckpt], [ckpt, copy]]
    assert reports[0]["classes"] == reports[1]["classes"] == reports[2]["classes"]
    pngs = sorted(p.relative_to(tmp_path / "g0") for p in (tmp_path / "g0").rglob("*.png"))
    assert len(pngs) == 8
    for png in pngs:
        first = np.asarray(Image.open(tmp_path / "g0" / png))
        for i in (1, 2):
            assert np.array_equal(first, np.asarray(Image.open(tmp_path / f"g{i}" / png)))
    # predict.py: the same labels, also in batches read by a worker process
    val_images = tiny_demo.target / "leftImg8bit" / "val"
    runs = ([], ["--ensemble", ckpt], ["--ensemble", copy], ["--batch-size", "3", "--workers", "1"])
    for i, more in enumerate(runs):
        predict.main(predict.parse_args([ckpt, str(val_images), "--out", str(tmp_path / f"p{i}"),
                                         "--format", "trainids", *more]))
    pngs = sorted(p.relative_to(tmp_path / "p0") for p in (tmp_path / "p0").rglob("*.png"))
    assert len(pngs) == 4
    for png in pngs:
        first = np.asarray(Image.open(tmp_path / "p0" / png))
        for i in range(1, len(runs)):
            assert np.array_equal(first, np.asarray(Image.open(tmp_path / f"p{i}" / png)))
