"""Issue 24: data that cannot teach anything is refused at start (and by --dry-run), with one
line naming the files and what they hold; GTA5's few-pixel label quirk is still accepted.

Each case is a small dataset in the real folder layouts, run through the real scripts: the
run and its --dry-run must fail alike, before the run folder exists."""
import shutil

import numpy as np
import pytest
from conftest import tiny_args
from PIL import Image
from test_dry_run import dry_run
from test_robustness import fails

import train_fda
import train_source
from core.cli import entry
from core.datacheck import SAMPLED_LABELS, evenly_spaced
from core.labels import save_label_png

SOURCE_HW = (288, 512)      # the demo's GTA5-style frames


def gta5_copy(demo, tmp_path):
    src = tmp_path / "gta5"
    shutil.copytree(demo.source, src)
    return src


def source_args(demo, src, out, *extra):
    return tiny_args(demo, out, *extra) + ["--source-root", str(src), "--source-split",
                                           str(src / "train.txt")]


def train_names(src):
    return (src / "train.txt").read_text().split()


def write_labels(src, make):
    """Every training label of the GTA5 tree replaced by make(index): an id array or RGB."""
    for i, name in enumerate(train_names(src)):
        Image.fromarray(make(i)).save(src / "labels" / f"{name}.png")


def refused_alike(module, argv, match, out):
    """The run and its --dry-run end with the same one-line error; no run folder is made."""
    messages = []
    for extra in ([], ["--dry-run"]):
        with pytest.raises(SystemExit) as info:
            entry(module.main, lambda extra=extra: module.parse_args(argv + extra))
        messages.append(str(info.value.code))
    assert messages[0] == messages[1]
    fails(module.main, module.parse_args, argv, match)
    assert not out.exists()
    return messages[0]


def sampled(src):
    return min(len(train_names(src)), SAMPLED_LABELS)


# -- labels that hold no class -------------------------------------------------------------

def test_labels_of_unknown_ids_only_are_refused(tiny_demo, tmp_path):
    src, out = gta5_copy(tiny_demo, tmp_path), tmp_path / "run"
    write_labels(src, lambda i: np.full(SOURCE_HW, 200, np.uint8))
    first = src / "labels" / f"{train_names(src)[0]}.png"
    refused_alike(train_source, source_args(tiny_demo, src, out),
                  rf"^error: source labels hold nothing to learn: no pixel of the {sampled(src)} "
                  rf"sampled label files is of one of the 19 classes; ids found: 200 \(unknown: "
                  rf"200\); files: {first}", out)


def test_rgb_labels_holding_ids_are_refused(tiny_demo, tmp_path):
    src, out = gta5_copy(tiny_demo, tmp_path), tmp_path / "run"
    rng = np.random.default_rng(0)
    write_labels(src, lambda i: np.repeat(rng.choice(np.array([0, 7, 26], np.uint8), SOURCE_HW)
                                          [..., None], 3, axis=2))   # ids in all 3 channels
    message = refused_alike(train_source, source_args(tiny_demo, src, out),
                            "source labels hold nothing to learn", out)
    assert "unknown: (7, 7, 7), (26, 26, 26); all grey: an id PNG saved as RGB?" in message


def test_labels_of_mostly_unknown_ids_are_refused(tiny_demo, tmp_path):
    src, out = gta5_copy(tiny_demo, tmp_path), tmp_path / "run"
    label = np.full(SOURCE_HW, 7, np.uint8)                  # road
    label[: SOURCE_HW[0] * 3 // 4] = 200                     # 3/4 of the rows unknown
    write_labels(src, lambda i: label)
    refused_alike(train_source, source_args(tiny_demo, src, out),
                  r"source labels are mostly unknown ids: 75% of the pixels of the \d+ sampled "
                  r"label files; ids found: 200, 7 \(unknown: 200\)", out)


def test_validation_labels_of_void_only_are_refused(tiny_demo, tmp_path):
    """Cityscapes layout, all void (id 0, known but no class): refused before training,
    not after an epoch with an mIoU of nan."""
    val, out = tmp_path / "city", tmp_path / "run"
    shutil.copytree(tiny_demo.target, val)
    for label in (val / "gtFine" / "val").rglob("*_labelIds.png"):
        Image.fromarray(np.zeros((256, 512), np.uint8)).save(label)
    message = refused_alike(train_source, tiny_args(tiny_demo, out) + ["--val-root", str(val)],
                            r"val labels hold nothing to learn: .* ids found: 0; files: ", out)
    assert "unknown" not in message


# -- labels of another shape -----------------------------------------------------------------

def test_label_of_another_aspect_ratio_is_refused_naming_both_sizes(tiny_demo, tmp_path):
    src, out = gta5_copy(tiny_demo, tmp_path), tmp_path / "run"
    name = train_names(src)[2]
    Image.fromarray(np.zeros((72, 128, 3), np.uint8)).save(src / "images" / f"{name}.png")
    Image.fromarray(np.full((72, 72), 7, np.uint8)).save(src / "labels" / f"{name}.png")
    refused_alike(train_source, source_args(tiny_demo, src, out),
                  rf"source label {src / 'labels' / name}\.png is 72x72 but its image "
                  rf"{src / 'images' / name}\.png is 128x72 \(width x height\)", out)


def test_gta5_labels_a_few_rows_short_are_accepted_and_named(tiny_demo, tmp_path, capsys):
    """Real GTA5 has 1914x1046 labels for 1914x1052 images; here at half size: 3 rows of 526."""
    src, out = gta5_copy(tiny_demo, tmp_path), tmp_path / "run"
    name = train_names(src)[3]
    Image.fromarray(np.zeros((526, 957, 3), np.uint8)).save(src / "images" / f"{name}.png")
    Image.fromarray(np.full((523, 957), 7, np.uint8)).save(src / "labels" / f"{name}.png")
    text = dry_run(train_source, source_args(tiny_demo, src, out), capsys)
    assert f"{name} (image 957x526, label 957x523)" in text and not out.exists()
    train_source.main(train_source.parse_args(source_args(tiny_demo, src, out, "--epochs", 1)))
    assert (out / "last.pth").is_file()


# -- pseudo labels (the target set of a self-training round) ----------------------------------

def pseudo_labels(demo, folder, make):
    for image in (demo.target / "leftImg8bit" / "train").rglob("*_leftImg8bit.png"):
        path = folder / image.parent.name / image.name.replace("_leftImg8bit", "")
        path.parent.mkdir(parents=True, exist_ok=True)
        save_label_png(make(), path)


@pytest.mark.parametrize("case", ["all ignore", "square"])
def test_pseudo_labels_that_cannot_teach_are_refused(case, tiny_demo, tmp_path):
    out, pseudo = tmp_path / "run", tmp_path / "pseudo"
    if case == "all ignore":      # a teacher confident nowhere
        pseudo_labels(tiny_demo, pseudo, lambda: np.full((64, 128), 255, np.uint8))
        match = r"target labels hold nothing to learn: .* ids found: 255; files: .*pseudo/"
    else:                         # another shape than the target images (512x256)
        pseudo_labels(tiny_demo, pseudo, lambda: np.zeros((64, 64), np.uint8))
        match = r"target label .*pseudo/.*\.png is 64x64 but its image .* is 512x256"
    refused_alike(train_fda, tiny_args(tiny_demo, out, "--pseudo", pseudo, target=True), match,
                  out)


# -- what --dry-run reports ---------------------------------------------------------------------

def test_dry_run_reports_the_ignored_share_and_the_unknown_ids(tiny_demo, tmp_path, capsys):
    src, out = gta5_copy(tiny_demo, tmp_path), tmp_path / "run"
    half = np.zeros(SOURCE_HW, np.uint8)          # bottom half void (0): ignored
    half[: SOURCE_HW[0] // 2] = 7                  # top half road
    odd = half.copy()
    odd[-10:] = 200                                # one file: some pixels of an unknown id
    write_labels(src, lambda i: odd if i == 0 else half)
    text = dry_run(train_source, source_args(tiny_demo, src, out), capsys)
    assert (f"{sampled(src)} label files sampled: 50.0% of pixels ignored, unknown ids 200 "
            f"in 1 file(s)") in text


def test_the_sample_is_evenly_spaced_and_the_same_every_time():
    assert evenly_spaced(5, 3) == [0, 2, 4]
    assert evenly_spaced(10, 4) == [0, 3, 6, 9]
    assert evenly_spaced(3, 32) == [0, 1, 2]
    many = evenly_spaced(25_000)
    assert len(many) == SAMPLED_LABELS and many[0] == 0 and many[-1] == 24_999
    assert many == evenly_spaced(25_000)
