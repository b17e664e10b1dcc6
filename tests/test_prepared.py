"""Prepared copies (core/prepared/): the same items as the raw files, kept up to date, resumable,
never written over a user's files; and the loader timing that CUDA runs print."""
import argparse
import json
import os

import numpy as np
import pytest
import torch
from conftest import tiny_args
from PIL import Image
from torch.utils.data import Dataset

import train_adv
from core import build, cli
from core.datasets import GTA5, Cityscapes
from core.errors import ConfigError, MissingDataError
from core.prepared import MANIFEST, MARKER, use_prepared
from core.prepared.__main__ import main as prepare_main
from core.prepared.__main__ import parse_args as prepare_args
from core.runtime import Run
from core.sampling import LOAD_SECONDS, LoadTimer, Stream, make_loader
from core.transforms import build_transforms
from demo import DemoPaths

GTA_WH, CITY_WH = (64, 40), (64, 32)      # file sizes (W, H) of the tiny trees
GTA_SIZE, CITY_SIZE = (24, 40), (16, 32)  # working sizes (H, W): shrinking, not by an integer
IDS = np.array([0, 7, 8, 11, 17, 21, 23, 24, 26, 33], np.uint8)   # void and class ids


def photo(rng, w, h):
    """A smooth picture with noise, so that resizing has something to average."""
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([x * 255 // w, y * 255 // h, (x + y) * 255 // (w + h)], -1)
    return np.clip(base + rng.integers(-40, 40, (h, w, 3)), 0, 255).astype(np.uint8)


def label_ids(rng, w, h):
    return IDS[rng.integers(0, len(IDS), (h // 4 + 1, w // 4 + 1))].repeat(4, 0).repeat(4, 1)[
        :h, :w]


def save_palette(path, ids):
    im = Image.frombytes("P", (ids.shape[1], ids.shape[0]), np.ascontiguousarray(ids).tobytes())
    im.putpalette(np.random.default_rng(7).integers(0, 256, 768, dtype=np.uint8).tobytes())
    im.save(path)


def make_trees(root, n_gta=4, n_city=3):
    """root/gta5 (palette labels, one of another size than its image, train.txt) and
    root/cityscapes (official layout, train and val; one label only as labelTrainIds)."""
    rng = np.random.default_rng(0)
    gta = root / "gta5"
    (gta / "images").mkdir(parents=True)
    (gta / "labels").mkdir()
    names = [f"{i:05d}" for i in range(1, n_gta + 1)]
    for i, name in enumerate(names):
        Image.fromarray(photo(rng, *GTA_WH)).save(gta / "images" / f"{name}.png")
        w, h = (72, 44) if i == 1 else GTA_WH       # as a few real GTA5 frames are
        save_palette(gta / "labels" / f"{name}.png", label_ids(rng, w, h))
    (gta / "train.txt").write_text("\n".join(names) + "\n")
    (gta / "val.txt").write_text(names[0] + "\n")
    city = root / "cityscapes"
    for split, n in (("train", n_city), ("val", 1)):
        for i in range(n):
            town = "aachen" if i % 2 == 0 else "bremen"
            stem = f"{town}/{town}_000000_{i:06d}"
            img = city / "leftImg8bit" / split / f"{stem}_leftImg8bit.png"
            img.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(photo(rng, *CITY_WH)).save(img)
            gt = city / "gtFine" / split / stem
            gt.parent.mkdir(parents=True, exist_ok=True)
            ids = label_ids(rng, *CITY_WH)
            if split == "train" and i == n - 1:       # train ids file only
                trainids = np.where(ids == 7, 0, np.where(ids == 26, 13, 255)).astype(np.uint8)
                Image.fromarray(trainids).save(f"{gt}_gtFine_labelTrainIds.png")
            else:
                Image.fromarray(ids).save(f"{gt}_gtFine_labelIds.png")
    return DemoPaths.of(root)


@pytest.fixture
def trees(tmp_path):
    return make_trees(tmp_path / "data")


def gta5(trees, transform=None):
    return GTA5(trees.source, size=GTA_SIZE, transform=transform)


def cityscapes(trees, labelled=True, transform=None):
    return Cityscapes(trees.target, "train", size=CITY_SIZE, labelled=labelled,
                      transform=transform)


def copy_folder(prep, prefix):
    """The one copy `prefix`-<source digest> under `prep`."""
    (folder,) = prep.glob(f"{prefix}-*")
    return folder


def no_decoding(monkeypatch, cls):
    def fail(self, index):
        raise AssertionError("a raw file was decoded")
    monkeypatch.setattr(cls, "decode", fail)


# --------------------------------------------------------------------------- same items

@pytest.mark.parametrize("fmt", ["png", "npy"])
@pytest.mark.parametrize("make", [gta5, cityscapes, lambda t, **k: cityscapes(t, False, **k)],
                         ids=["gta5", "cityscapes", "cityscapes-images"])
def test_prepared_items_equal_raw_items(trees, tmp_path, monkeypatch, make, fmt):
    aug = build_transforms("flip,jitter,blur,scale", p=0.5)
    raw = make(trees, transform=aug)
    expected = [raw[(i, 100 + i)] for i in range(len(raw))]   # (index, seed): same draws
    prepared = use_prepared(make(trees, transform=aug), tmp_path / "prep", fmt=fmt)
    no_decoding(monkeypatch, type(raw))                       # from now on: the copy only
    for i, want in enumerate(expected):
        got = prepared[(i, 100 + i)]
        assert got["name"] == want["name"]
        assert torch.equal(got["image"], want["image"])       # stored losslessly: exact
        assert got.keys() == want.keys()
        if "label" in want:
            assert torch.equal(got["label"], want["label"])
    files = list((tmp_path / "prep").rglob(f"*.{fmt}"))
    assert len(files) == len(raw) * (2 if raw.labelled else 1)


def test_prepared_copy_holds_the_working_size_items(trees, tmp_path):
    """Read back by an independent route (Pillow on the PNGs): the resized image and the
    mapped label of the raw route's decode, at the working size."""
    ds = use_prepared(gta5(trees), tmp_path / "prep")
    ds.prepared = None
    image, label = ds.decode(1)                 # the frame whose label has another size
    folder = copy_folder(tmp_path / "prep", "gta5-24x40-labels")
    stored = np.asarray(Image.open(folder / "images" / "00002.png"))
    assert stored.shape == (24, 40, 3)
    assert np.array_equal(stored, image.permute(1, 2, 0).numpy())
    stored_label = np.asarray(Image.open(folder / "labels" / "00002.png"))
    assert np.array_equal(stored_label, label.numpy())
    assert set(np.unique(stored_label)) <= {0, 1, 2, 5, 8, 10, 11, 13, 18, 255}   # train ids


# --------------------------------------------------------------------------- up to date

def test_changed_touched_added_and_missing_files_are_noticed(trees, tmp_path, capsys):
    prep = tmp_path / "prep"
    use_prepared(gta5(trees), prep)
    assert "preparing 4 of 4 items (4 new)" in capsys.readouterr().out
    use_prepared(gta5(trees), prep)
    assert capsys.readouterr().out == ""             # nothing changed: nothing to do

    images = trees.source / "images"
    # Rewritten with other pixels (a new mtime, and the same or another size).
    other = np.asarray(Image.open(images / "00003.png"))[::-1].copy()
    Image.fromarray(other).save(images / "00003.png")
    os.utime(images / "00003.png", ns=(1, 10**18))
    # Touched: same bytes, new mtime (a copy made without `cp -p`): no new work.
    os.utime(images / "00001.png", ns=(1, 10**18))
    ds = use_prepared(gta5(trees), prep)
    out = capsys.readouterr().out
    assert "preparing 1 of 4 items (1 changed)" in out
    assert "1 source file(s)" in out and "same content" in out
    ds.prepared, fresh = None, ds[2]["image"]
    assert torch.equal(use_prepared(gta5(trees), prep)[2]["image"], fresh)
    assert capsys.readouterr().out == ""             # the refreshed mtime was recorded

    # A label changed, a prepared file deleted, an image added.
    save_palette(trees.source / "labels" / "00004.png", np.full(GTA_WH[::-1], 26, np.uint8))
    (copy_folder(prep, "gta5-24x40-labels") / "images" / "00001.png").unlink()
    Image.fromarray(other).save(images / "00005.png")
    save_palette(trees.source / "labels" / "00005.png", np.full(GTA_WH[::-1], 7, np.uint8))
    ds = use_prepared(gta5(trees), prep)
    assert "preparing 3 of 5 items (1 new, 1 missing, 1 changed)" in capsys.readouterr().out
    assert (ds[3]["label"] == 13).all() and (ds[4]["label"] == 0).all()   # car, road


def test_missing_prepared_file_during_training_names_it(trees, tmp_path):
    ds = use_prepared(gta5(trees), tmp_path / "prep")
    gone = copy_folder(tmp_path / "prep", "gta5-24x40-labels") / "labels" / "00002.png"
    gone.unlink()
    with pytest.raises(MissingDataError, match="prepared file missing: .*00002.png"):
        ds[1]


def test_interrupted_preparation_resumes(trees, tmp_path, monkeypatch, capsys):
    prep = tmp_path / "prep"
    real, calls = GTA5.decode, []

    def dies_on_third(self, index):
        calls.append(index)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(self, index)
    monkeypatch.setattr(GTA5, "decode", dies_on_third)
    with pytest.raises(KeyboardInterrupt):
        use_prepared(gta5(trees), prep)
    monkeypatch.setattr(GTA5, "decode", real)
    folder = copy_folder(prep, "gta5-24x40-labels")
    with open(folder / MANIFEST, "a") as f:
        f.write('{"name": "000')                     # a line cut short by a kill
    (folder / "images" / ".00003.png.tmp999").write_bytes(b"half a file")
    capsys.readouterr()

    ds = use_prepared(gta5(trees), prep)
    assert "preparing 2 of 4 items (2 new)" in capsys.readouterr().out   # 2 were done
    assert not list(folder.rglob("*.tmp*"))
    raw = gta5(trees)
    for i in range(4):
        assert torch.equal(ds[i]["image"], raw[i]["image"])
        assert torch.equal(ds[i]["label"], raw[i]["label"])
    use_prepared(gta5(trees), prep)
    assert capsys.readouterr().out == ""             # the manifest reads back whole


def test_a_folder_with_other_files_is_never_written(trees, tmp_path):
    user = tmp_path / "mine"
    user.mkdir()
    (user / "notes.txt").write_text("keep me")
    with pytest.raises(ConfigError, match=f"holds other files and no {MARKER}"):
        use_prepared(gta5(trees), user)
    assert [p.name for p in user.iterdir()] == ["notes.txt"]
    before = sorted(p for p in trees.source.rglob("*"))
    with pytest.raises(ConfigError, match="not a folder of prepared copies"):
        use_prepared(gta5(trees), trees.source)      # e.g. the dataset root itself
    assert sorted(p for p in trees.source.rglob("*")) == before
    with pytest.raises(ConfigError, match="needs a working size"):
        use_prepared(Cityscapes(trees.target, "val", size=None), tmp_path / "prep")


# --------------------------------------------------------------------------- command line

def test_prepare_command_then_training_flag_reads_the_copies(trees, tmp_path, monkeypatch,
                                                              capsys):
    prep = tmp_path / "prep"
    sizes = ["--source-size", "32", "48", "--target-size", "32", "64"]   # D needs >= 32
    data = ["--source-root", str(trees.source), "--source-split", str(trees.source_train_list),
            "--target-root", str(trees.target), "--workers", "0", "--prepared", str(prep),
            *sizes]
    prepare_main(prepare_args(data))
    out = capsys.readouterr().out
    assert "preparing 4 of 4" in out and "preparing 3 of 3" in out
    manifest = copy_folder(prep, "gta5-32x48-labels") / MANIFEST
    assert json.loads(manifest.read_text().splitlines()[0])["format"] == "png"

    args = train_adv.parse_args(tiny_args(trees, tmp_path / "run", *sizes, "--prepared",
                                          str(prep), target=True))
    assert "prepared" in cli.SESSION_FLAGS    # same items: a resumed run may add or drop it
    source, target = build.source_dataset(args), build.target_dataset(args)
    assert capsys.readouterr().out == ""      # prepared ahead: nothing left to do
    assert source.prepared.folder == copy_folder(prep, "gta5-32x48-labels")
    assert target.prepared.folder == copy_folder(prep, "cityscapes-32x64-images")
    no_decoding(monkeypatch, GTA5)
    no_decoding(monkeypatch, Cityscapes)
    assert source[0]["image"].shape == (3, 32, 48) and target[0]["image"].shape == (3, 32, 64)
    assert build.source_dataset(train_adv.parse_args(tiny_args(
        trees, tmp_path / "run2", *sizes, target=True))).prepared is None


# --------------------------------------------------------------------------- loader side

class Numbers(Dataset):
    def __len__(self):
        return 6

    def __getitem__(self, index):
        i, seed = index
        return {"image": torch.tensor([i, seed % 1000])}


def test_persistent_workers_give_the_same_batches_pass_after_pass():
    def batches(**kw):
        stream = Stream(make_loader(Numbers(), 2, seed=5, role="source", train=True, **kw))
        return [stream.next()["image"] for _ in range(7)]   # over two pass boundaries
    kept = batches(workers=1)
    assert all(torch.equal(a, b) for a, b in zip(batches(workers=0), kept, strict=True))


def test_loading_time_is_measured_per_item_and_printed_per_epoch(trees, tmp_path, capsys):
    args = argparse.Namespace(device="cpu", amp=False, out=str(tmp_path), seed=0,
                              channels_last=False, batch_size=2, workers=0, epochs=2)
    run = Run(args, "test")
    assert run.loading is None                  # on CPU runs: no timing, batches as before
    assert set(run.stream(gta5(trees), "source").next()) == {"image", "label", "name"}
    run.progress(range(0, 2))
    assert capsys.readouterr().out == ""

    run.loading = LoadTimer(args)               # what a CUDA run does
    stream = run.stream(gta5(trees), "source")
    run.progress(range(0, 2))
    assert "CPU-s of loading per iteration (2 samples of each training set)" in \
        capsys.readouterr().out
    seconds = []
    for _ in range(2):
        batch = stream.next()
        seconds.append(float(batch[LOAD_SECONDS].sum()))
        assert 0 < seconds[-1] < 60
        assert set(run.to_device(batch)) == {"image", "label", "name"}
    run.loading.iterations = 2                  # as Run.log_and_save counts them
    run.loading.report()                        # printed at each epoch end
    line = capsys.readouterr().out
    assert f"data: {sum(seconds) / 2:.2g} CPU-s of loading per iteration (last epoch)" in line
    assert "0 worker(s)" in line and "--prepared DIR loads faster" in line
