"""Images decoded as they are (issue 24, item 4): 16-bit frames scaled to 8 bits, every common
image suffix found and paired with its label, and nothing unpaired dropped in silence."""
import shutil

import numpy as np
import pytest
import torch
from conftest import tiny_args
from PIL import Image
from test_datasets import H, W, expected, make_cityscapes, make_gta, photo, save, scene
from test_robustness import fails

import train_source
from core.datasets import GTA5, Cityscapes
from core.decoding import IMAGE_SUFFIXES
from core.errors import DataError, MissingDataError

LOSSLESS = (".png", ".bmp", ".tif", ".tiff")
CITY_IMAGES = "leftImg8bit/train/aachen"
CITY_LABELS = "gtFine/train/aachen"


def grey(seed=0):
    """An 8-bit greyscale frame holding every value 0..255."""
    return np.random.default_rng(seed).permutation(np.resize(np.arange(256, dtype=np.uint8),
                                                             H * W)).reshape(H, W)


def image_of(dataset, i):
    return dataset[i]["image"]


# --------------------------------------------------------------------------- 16 bits

@pytest.mark.parametrize("size", [None, (H // 2, W // 2)], ids=["native", "resized"])
def test_16_bit_greyscale_frames_give_the_tensor_of_their_8_bit_version(tmp_path, size):
    """The same picture as 8-bit PNG, 16-bit PNG (v * 257, the usual widening) and 16-bit TIFF
    (v << 8): one tensor. Clipping (Pillow's convert) would turn every v >= 1 white."""
    make_gta(tmp_path, formats=("P", "P", "P"))
    v = grey()
    (tmp_path / "images/00002.png").unlink()
    (tmp_path / "images/00003.png").unlink()
    save(tmp_path / "images/00001.png", v)
    save(tmp_path / "images/00002.png", v.astype(np.uint16) * 257)
    save(tmp_path / "images/00003.tif", v.astype(np.uint16) << 8)
    assert Image.open(tmp_path / "images/00002.png").mode.startswith("I")   # 16 bits read
    ds = GTA5(tmp_path, size=size)
    eight = image_of(ds, 0)
    if size is None:          # independent route: the grey values in all three channels
        assert torch.equal(eight, torch.from_numpy(np.stack([v] * 3)))
    assert torch.equal(image_of(ds, 1), eight) and torch.equal(image_of(ds, 2), eight)


def test_16_bit_validation_frame_scores_as_its_8_bit_version(tmp_path):
    """Cityscapes layout (validation reads it at native size): same tensor, hence same mIoU."""
    root, _ = make_cityscapes(tmp_path / "cs", n=1)
    frame = root / CITY_IMAGES / "aachen_000000_000019_leftImg8bit.png"
    save(frame, grey(3))
    eight = image_of(Cityscapes(root, size=None), 0)
    save(frame, grey(3).astype(np.uint16) * 257)
    assert torch.equal(image_of(Cityscapes(root, size=None), 0), eight)


@pytest.mark.parametrize("size", [None, (H // 2, W // 2)], ids=["native", "resized"])
def test_16_bit_labels_keep_their_ids(tmp_path, size):
    """16-bit labels hold ids, not intensities: never scaled, in both layouts."""
    ids = scene(5)
    make_gta(tmp_path / "gta", formats=("L", "I16"), ids_list=[ids, ids])
    root, _ = make_cityscapes(tmp_path / "cs", n=1)
    save(root / CITY_LABELS / "aachen_000000_000019_gtFine_labelIds.png", ids.astype(np.uint16))
    want = expected(ids) if size is None else expected(ids)[1::2, 1::2]   # nearest, halving
    gta = GTA5(tmp_path / "gta", size=size)
    for label in (gta[0]["label"], gta[1]["label"], Cityscapes(root, size=size)[0]["label"]):
        np.testing.assert_array_equal(label.numpy(), want)


# --------------------------------------------------------------------------- every suffix

@pytest.mark.parametrize("suffix", [*IMAGE_SUFFIXES, ".JPG"])
def test_a_frame_of_any_suffix_among_pngs_is_found_and_paired(tmp_path, suffix):
    make_gta(tmp_path / "gta", formats=("P", "P", "P"))
    (tmp_path / "gta/images/00002.png").unlink()
    save(tmp_path / "gta/images" / f"00002{suffix}", photo(2))
    root, _ = make_cityscapes(tmp_path / "cs", n=3)
    odd = root / CITY_IMAGES / "aachen_000002_000019_leftImg8bit.png"
    odd.unlink()
    save(odd.with_suffix(suffix), photo(2))
    (tmp_path / "gta/train.txt").write_text(f"00003\n00002{suffix}\n")
    for ds, name in [(GTA5(tmp_path / "gta", size=None), "00002"),
                     (GTA5(tmp_path / "gta", "train", size=None), "00002"),
                     (Cityscapes(root, size=None), "aachen/aachen_000002_000019")]:
        i = ds.names.index(name)
        assert ds.image_paths[i].suffix == suffix and ds.label_paths[i].suffix == ".png"
        item = ds[i]
        assert item["label"].shape == (H, W)
        error = (item["image"].permute(1, 2, 0).int() - torch.from_numpy(photo(2)).int()).abs()
        if suffix in LOSSLESS:
            assert error.max() == 0
        else:          # JPEG, lossy WebP: the same picture, give or take its compression
            assert error.float().mean() < 60 and item["image"].shape == (3, H, W)
    assert len(GTA5(tmp_path / "gta", size=None)) == 3 and len(Cityscapes(root, size=None)) == 3


def test_labels_in_any_lossless_format_and_lossy_labels_refused(tmp_path):
    ids = scene(1)
    make_gta(tmp_path, formats=("P", "P"), ids_list=[ids, ids])
    (tmp_path / "labels/00002.png").unlink()
    save(tmp_path / "labels/00002.bmp", ids)
    assert (GTA5(tmp_path, size=None)[1]["label"].numpy() == expected(ids)).all()
    for lossy in (".jpg", ".webp"):
        for old in tmp_path.glob("labels/00002.*"):
            old.unlink()
        save(tmp_path / "labels" / f"00002{lossy}", ids)
        with pytest.raises(DataError, match=f"lossy format: .*00002{lossy}"):
            GTA5(tmp_path, size=None)
    root, _ = make_cityscapes(tmp_path / "cs", n=1)
    label = root / CITY_LABELS / "aachen_000000_000019_gtFine_labelIds.png"
    label.unlink()
    save(label.with_suffix(".jpg"), ids)
    with pytest.raises(DataError, match=f"lossy format: {label.with_suffix('.jpg')}"):
        Cityscapes(root, size=None)


def test_two_files_of_one_name_are_an_error_naming_both(tmp_path):
    make_gta(tmp_path, formats=("P", "P"))
    save(tmp_path / "images/00002.jpg", photo(2))
    with pytest.raises(DataError, match="00002.jpg and .*00002.png|00002.png and .*00002.jpg"):
        GTA5(tmp_path, size=None)


# --------------------------------------------------------------------------- nothing dropped

def test_gta5_image_without_label_and_label_without_image_are_named(tmp_path):
    make_gta(tmp_path, formats=("P", "P", "P"))
    (tmp_path / "images/00002.png").unlink()
    save(tmp_path / "images/00002.jpg", photo(2))
    (tmp_path / "labels/00002.png").unlink()
    with pytest.raises(MissingDataError, match=r"1 GTA5 image\(s\) have no label: "
                                               f"{tmp_path / 'images/00002.jpg'}"):
        GTA5(tmp_path, size=None)
    assert GTA5(tmp_path, size=None, labelled=False).names == ["00001", "00002", "00003"]
    save(tmp_path / "labels/00002.png", scene(0))
    for k in (7, 8):
        save(tmp_path / "labels" / f"0000{k}.png", scene(0))
    with pytest.raises(MissingDataError, match=r"2 GTA5 label\(s\) have no image: "
                                               f"{tmp_path / 'labels/00007.png'}, "
                                               f"{tmp_path / 'labels/00008.png'}"):
        GTA5(tmp_path, size=None)
    # a split list chooses its images: other labels are not its items
    (tmp_path / "train.txt").write_text("00001\n00002\n")
    assert GTA5(tmp_path, "train", size=None).names == ["00001", "00002"]


def test_cityscapes_image_without_label_and_label_without_image_are_named(tmp_path):
    root, _ = make_cityscapes(tmp_path, n=3)
    frame = root / CITY_IMAGES / "aachen_000002_000019_leftImg8bit.png"
    frame.unlink()
    save(frame.with_suffix(".jpg"), photo(2))
    labels = root / CITY_LABELS
    (labels / "aachen_000002_000019_gtFine_labelIds.png").unlink()
    with pytest.raises(MissingDataError, match=r"1 Cityscapes image\(s\) have no label: "
                                               f"{frame.with_suffix('.jpg')}"):
        Cityscapes(root, size=None)
    assert len(Cityscapes(root, size=None, labelled=False)) == 3
    save(labels / "aachen_000002_000019_gtFine_labelTrainIds.png", expected(scene(2)))
    stray = labels / "aachen_000009_000019_gtFine_labelIds.png"
    save(stray, scene(0))
    save(labels / "aachen_000009_000019_gtFine_color.png", photo(0))    # not a label: ignored
    with pytest.raises(MissingDataError, match=rf"1 Cityscapes label\(s\) have no image: {stray}"):
        Cityscapes(root, size=None)
    stray.unlink()
    assert len(Cityscapes(root, size=None)) == 3


def test_an_unpaired_validation_label_ends_the_script_in_one_line(tiny_demo, tmp_path):
    val = tmp_path / "val"
    shutil.copytree(tiny_demo.target, val)
    frame = next((val / "leftImg8bit" / "val").rglob("*_leftImg8bit.png"))
    frame.unlink()
    fails(train_source.main, train_source.parse_args,
          tiny_args(tiny_demo, tmp_path / "run", "--epochs", 1) + ["--val-root", str(val)],
          r"Cityscapes label\(s\) have no image: .*" + frame.name.replace("leftImg8bit.png", ""))
