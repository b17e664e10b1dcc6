"""Dataset loaders on tiny generated trees; expected train ids are written out by hand here."""
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from core.datacheck import labelled_files, resized_labels
from core.datasets import GTA5, Cityscapes, PseudoLabelDataset
from core.decoding import DataWarning
from core.errors import DataError
from core.transforms import IMAGENET_MEAN, IMAGENET_STD, build_transforms, denormalize, normalize

H, W = 16, 32

# Cityscapes label id -> train id, copied from cityscapesScripts' labels.py table;
# every id not listed is ignore (255).
EXPECTED_TRAIN_ID = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10,
                     24: 11, 25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}

# Colour of each label id as it appears in colour-coded labels (same table).
ID_COLOR = {
    0: (0, 0, 0), 1: (0, 0, 0), 2: (0, 0, 0), 3: (0, 0, 0), 4: (0, 0, 0), 5: (111, 74, 0),
    6: (81, 0, 81), 7: (128, 64, 128), 8: (244, 35, 232), 9: (250, 170, 160),
    10: (230, 150, 140), 11: (70, 70, 70), 12: (102, 102, 156), 13: (190, 153, 153),
    14: (180, 165, 180), 15: (150, 100, 100), 16: (150, 120, 90), 17: (153, 153, 153),
    19: (250, 170, 30), 20: (220, 220, 0), 21: (107, 142, 35), 22: (152, 251, 152),
    23: (70, 130, 180), 24: (220, 20, 60), 25: (255, 0, 0), 26: (0, 0, 142), 27: (0, 0, 70),
    28: (0, 60, 100), 29: (0, 0, 90), 30: (0, 0, 110), 31: (0, 80, 100), 32: (0, 0, 230),
    33: (119, 11, 32),
}
UNKNOWN_COLOR = (1, 2, 3)  # for ids with no Cityscapes colour (34 and up)


def expected(ids):
    """Independent route: a Python dict lookup per pixel."""
    return np.array([[EXPECTED_TRAIN_ID.get(int(v), 255) for v in row] for row in ids], np.uint8)


def scene(seed=0, ids=None):
    """H x W label-id map holding every id 0..33 except 18 (polegroup: its colour is pole's),
    plus unknown ids 34..38, in a shuffled order."""
    ids = [i for i in range(39) if i != 18] if ids is None else ids
    flat = np.resize(np.array(ids, np.uint8), H * W)
    return np.random.default_rng(seed).permutation(flat).reshape(H, W)


def to_color(ids):
    return np.array([[ID_COLOR.get(int(v), UNKNOWN_COLOR) for v in row] for row in ids], np.uint8)


def photo(seed=0, h=H, w=W):
    return np.random.default_rng(seed + 100).integers(0, 256, (h, w, 3), dtype=np.uint8)


def save(path, array, mode=None):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(array)
    if mode == "P":
        # Index = label id, with a palette whose colours have nothing to do with Cityscapes:
        # a loader that decoded the palette to colours would get wrong ids and fail the tests.
        im = Image.frombytes("P", im.size, np.ascontiguousarray(array, np.uint8).tobytes())
        im.putpalette(np.random.default_rng(7).integers(0, 256, 768, dtype=np.uint8).tobytes())
    im.save(path)
    return path


def make_cityscapes(root, split="train", flavour="labelIds", n=2, layout="official",
                    images=True):
    """A tiny tree in one of the layouts; returns (root to pass, {name: (photo, ids)})."""
    if layout == "official":
        img_dir, gt_dir, pass_root = root / "leftImg8bit", root / "gtFine", root
    elif layout == "course":  # root = .../Cityscapes
        img_dir = root / "Cityspaces" / "images"
        gt_dir, pass_root = root / "Cityspaces" / "gtFine", root
    else:  # "course-inner": root = .../Cityscapes/Cityspaces
        img_dir, gt_dir = root / "Cityspaces" / "images", root / "Cityspaces" / "gtFine"
        pass_root = root / "Cityspaces"
    content = {}
    for i in range(n):
        city = ("aachen", "bremen")[i % 2]
        stem = f"{city}_{i:06d}_000019"
        ids = scene(i)
        if images:
            save(img_dir / split / city / f"{stem}_leftImg8bit.png", photo(i))
        if flavour in ("labelIds", "both"):
            save(gt_dir / split / city / f"{stem}_gtFine_labelIds.png", ids)
        if flavour in ("labelTrainIds", "both"):
            # In "both", the train-id file is deliberately wrong (all 0): labelIds must win.
            train = expected(ids) if flavour == "labelTrainIds" else np.zeros_like(ids)
            save(gt_dir / split / city / f"{stem}_gtFine_labelTrainIds.png", train)
        content[f"{city}/{stem}"] = (photo(i), ids)
    return pass_root, content


def make_gta(root, formats=("P",), ids_list=None):
    """images/0000k.png + labels/0000k.png, label k in formats[k]; returns {name: ids}."""
    content = {}
    for k, fmt in enumerate(formats, start=1):
        name = f"{k:05d}"
        ids = scene(0) if ids_list is None else ids_list[k - 1]
        save(root / "images" / f"{name}.png", photo(k))
        if fmt == "P":
            save(root / "labels" / f"{name}.png", ids, mode="P")
        elif fmt == "L":
            save(root / "labels" / f"{name}.png", ids)
        elif fmt == "I16":
            save(root / "labels" / f"{name}.png", ids.astype(np.uint16))
        elif fmt == "RGB":
            save(root / "labels" / f"{name}.png", to_color(ids))
        content[name] = ids
    return content


# --------------------------------------------------------------------------- label mapping

def test_every_label_id_maps_per_reference_table(tmp_path):
    ids = np.resize(np.arange(34, dtype=np.uint8), (H, W))  # each id 0..33 several times
    make_gta(tmp_path / "gta", formats=("P",), ids_list=[ids])
    root, _ = make_cityscapes(tmp_path / "cs", n=1)
    save(root / "gtFine/train/aachen/aachen_000000_000019_gtFine_labelIds.png", ids)
    for ds in (GTA5(tmp_path / "gta", size=None), Cityscapes(root, size=None)):
        label = ds[0]["label"].numpy()
        for label_id in range(34):
            got = np.unique(label[ids == label_id])
            assert got.tolist() == [EXPECTED_TRAIN_ID.get(label_id, 255)], (type(ds), label_id)


def test_gta5_palette_grey_16bit_and_colour_labels_agree(tmp_path):
    ids = scene(3)
    make_gta(tmp_path, formats=("P", "L", "I16", "RGB"), ids_list=[ids] * 4)
    assert Image.open(tmp_path / "labels/00001.png").mode == "P"
    assert Image.open(tmp_path / "labels/00004.png").mode == "RGB"
    ds = GTA5(tmp_path, size=None)
    want = expected(ids)
    assert (want == 255).any() and (want != 255).any()
    for i in range(4):
        item = ds[i]
        assert item["label"].dtype == torch.uint8 and item["label"].shape == (H, W)
        np.testing.assert_array_equal(item["label"].numpy(), want, err_msg=item["name"])


def test_unknown_ids_and_colours_become_ignore(tmp_path):
    ids = np.full((H, W), 34, np.uint8)
    ids[:, 8:] = 200
    ids[:, 16:] = 255
    ids[:, 24:] = 26  # car: the one known value
    make_gta(tmp_path, formats=("P", "RGB"), ids_list=[ids, ids])
    ds = GTA5(tmp_path, size=None)
    for i in range(2):
        label = ds[i]["label"].numpy()
        assert (label[:, :24] == 255).all() and (label[:, 24:] == 13).all()
    # 16-bit ids beyond 255 too
    save(tmp_path / "labels/00001.png", np.full((H, W), 1000, np.uint16))
    assert (ds[0]["label"] == 255).all()


def test_gta5_info_json_mapping(tmp_path):
    ids = scene(1)
    make_gta(tmp_path, formats=("P",), ids_list=[ids])
    info = tmp_path / "info.json"
    info.write_text(json.dumps({"label2train": [[7, 3], [26, 0], [35, 18], [0, 255]]}))
    label = GTA5(tmp_path, size=None, mapping=info)[0]["label"].numpy()
    want = np.full((H, W), 255, np.uint8)
    want[ids == 7], want[ids == 26], want[ids == 35] = 3, 0, 18
    np.testing.assert_array_equal(label, want)


# --------------------------------------------------------------------------- GTA5 loader

def test_gta5_item_contents_and_split_lists(tmp_path):
    content = make_gta(tmp_path, formats=("P", "P", "P"))
    item = GTA5(tmp_path, size=None)[1]
    assert set(item) == {"image", "label", "name"} and item["name"] == "00002"
    assert item["image"].dtype == torch.uint8 and item["image"].shape == (3, H, W)
    np.testing.assert_array_equal(item["image"].permute(1, 2, 0).numpy(), photo(2))
    assert sorted(content) == GTA5(tmp_path, size=None).names

    (tmp_path / "train.txt").write_text("images/00003.png\n\n00001.png\n  00002 \n")
    assert GTA5(tmp_path, split="train", size=None).names == ["00003", "00001", "00002"]
    other = tmp_path / "lists" / "val.txt"
    other.parent.mkdir()
    other.write_text("00002\n")
    ds = GTA5(tmp_path, split=other, size=None)
    assert ds.names == ["00002"] and ds[0]["name"] == "00002"
    assert GTA5(tmp_path, split="train.txt", size=None).names[0] == "00003"


def test_resize_bilinear_image_nearest_label(tmp_path):
    ids = scene(2)
    make_gta(tmp_path, formats=("P",), ids_list=[ids])
    item = GTA5(tmp_path, size=(H // 2, W // 2))[0]
    assert item["image"].shape == (3, H // 2, W // 2) and item["image"].dtype == torch.uint8
    # Nearest at pixel centres, halving: output pixel i samples input pixel 2i + 1.
    np.testing.assert_array_equal(item["label"].numpy(), expected(ids)[1::2, 1::2])
    # Bilinear (antialiased) on a constant image stays constant.
    save(tmp_path / "images/00001.png", np.full((H, W, 3), 77, np.uint8))
    up = GTA5(tmp_path, size=(2 * H, 3 * W))[0]
    assert up["image"].shape == (3, 2 * H, 3 * W) and (up["image"] == 77).all()
    assert up["label"].shape == (2 * H, 3 * W)


def test_gta5_unlabelled_and_transform(tmp_path):
    make_gta(tmp_path, formats=("P",))
    for p in (tmp_path / "labels").iterdir():
        p.unlink()
    (tmp_path / "labels").rmdir()
    seen = []

    class Flip:   # a dataset's transform: the workers' part (`split`) of a JointAugment
        def split(self, image, label, generator=None):
            seen.append(label)
            return image.flip(-1), label, None

    item = GTA5(tmp_path, size=None, labelled=False, transform=Flip())[0]
    assert set(item) == {"image", "name"} and seen == [None]
    np.testing.assert_array_equal(item["image"].permute(1, 2, 0).numpy(), photo(1)[:, ::-1])


# --------------------------------------------------------------------------- Cityscapes loader

@pytest.mark.parametrize("layout", ["official", "course", "course-inner"])
@pytest.mark.parametrize("flavour", ["labelIds", "labelTrainIds", "both"])
def test_cityscapes_layouts_and_flavours(tmp_path, layout, flavour):
    root, content = make_cityscapes(tmp_path / "Cityscapes", flavour=flavour, n=3,
                                    layout=layout)
    ds = Cityscapes(root, size=None)
    assert ds.names == sorted(content) == ["aachen/aachen_000000_000019",
                                           "aachen/aachen_000002_000019",
                                           "bremen/bremen_000001_000019"]
    for item in ds:
        image, ids = content[item["name"]]
        np.testing.assert_array_equal(item["image"].permute(1, 2, 0).numpy(), image)
        np.testing.assert_array_equal(item["label"].numpy(), expected(ids))


def test_cityscapes_train_ids_out_of_range_become_ignore(tmp_path):
    root, _ = make_cityscapes(tmp_path, flavour="labelTrainIds", n=1)
    train = np.full((H, W), 19, np.uint8)
    train[0, :4] = [0, 18, 255, 100]
    save(root / "gtFine/train/aachen/aachen_000000_000019_gtFine_labelTrainIds.png", train)
    label = Cityscapes(root, size=None)[0]["label"]
    assert label[0, :4].tolist() == [0, 18, 255, 255] and (label[1:] == 255).all()


def test_cityscapes_unlabelled_needs_no_gtfine(tmp_path):
    root, content = make_cityscapes(tmp_path, flavour="none", n=2)
    assert not (root / "gtFine").exists()
    ds = Cityscapes(root, split="train", size=(8, 16), labelled=False)
    item = ds[0]
    assert set(item) == {"image", "name"} and item["image"].shape == (3, 8, 16)
    with pytest.raises(FileNotFoundError, match="gtFine"):
        Cityscapes(root, size=None)


def test_cityscapes_matches_shipped_train_ids_on_real_samples():
    samples = os.environ.get("SEGDA_SAMPLES")
    if not samples:
        pytest.skip("set SEGDA_SAMPLES to a Cityscapes-layout folder to run this check")
    root = Path(samples)
    ds = Cityscapes(root, split="train", size=None)
    assert len(ds) > 0
    for i, item in enumerate(ds):
        assert ds.label_paths[i].name.endswith("_gtFine_labelIds.png")  # ids, not train ids
        shipped = np.asarray(Image.open(
            root / "gtFine/train" / f"{item['name']}_gtFine_labelTrainIds.png"))
        assert item["image"].shape[-2:] == shipped.shape
        np.testing.assert_array_equal(item["label"].numpy(), shipped, err_msg=item["name"])


# --------------------------------------------------------------------------- pseudo labels

def test_pseudo_label_dataset_pairs_by_name(tmp_path):
    root, content = make_cityscapes(tmp_path / "cs", flavour="none", n=3)
    pseudo = tmp_path / "pseudo"
    want = {}
    for k, name in enumerate(content):
        label = np.full((H, W), k, np.uint8)
        label[:, : W // 2] = 255
        want[name] = label
        save(pseudo / f"{name}.png", label)
    ds = PseudoLabelDataset(Cityscapes(root, size=None, labelled=False), pseudo)
    assert len(ds) == 3
    for item in ds:
        np.testing.assert_array_equal(item["label"].numpy(), want[item["name"]])
        np.testing.assert_array_equal(item["image"].permute(1, 2, 0).numpy(),
                                      content[item["name"]][0])
        assert item["label"].dtype == torch.uint8


def test_pseudo_labels_resized_to_image_and_transformed_jointly(tmp_path):
    make_gta(tmp_path / "gta", formats=("P",))
    small = np.zeros((H // 2, W // 2), np.uint8)
    small[:, : W // 4] = 7  # left half 7, right half 0
    save(tmp_path / "pseudo/00001.png", small)
    inner = GTA5(tmp_path / "gta", size=None, labelled=False)
    item = PseudoLabelDataset(inner, tmp_path / "pseudo")[0]
    assert item["label"].shape == (H, W)
    assert (item["label"][:, : W // 2] == 7).all() and (item["label"][:, W // 2:] == 0).all()

    flipped = PseudoLabelDataset(inner, tmp_path / "pseudo",
                                 transform=build_transforms("flip", p=1.0))[0]
    assert torch.equal(flipped["label"], item["label"].flip(-1))
    assert torch.equal(flipped["image"], item["image"].flip(-1))


def test_pseudo_label_errors(tmp_path):
    make_gta(tmp_path / "gta", formats=("P", "P"))
    save(tmp_path / "pseudo/00001.png", np.zeros((H, W), np.uint8))
    inner = GTA5(tmp_path / "gta", size=None, labelled=False)
    with pytest.raises(FileNotFoundError, match="00002.png.*gen_pseudo.py"):
        PseudoLabelDataset(inner, tmp_path / "pseudo")
    with pytest.raises(FileNotFoundError, match="nowhere.*gen_pseudo.py"):
        PseudoLabelDataset(inner, tmp_path / "nowhere")
    with pytest.raises(ValueError, match="labelled=False"):
        PseudoLabelDataset(GTA5(tmp_path / "gta", size=None), tmp_path / "pseudo")
    with pytest.raises(ValueError, match="transform=None"):
        PseudoLabelDataset(GTA5(tmp_path / "gta", size=None, labelled=False,
                                transform=lambda i, l: (i, l)), tmp_path / "pseudo")


def test_pseudo_label_of_another_aspect_ratio_is_refused(tmp_path):
    make_gta(tmp_path / "gta", formats=("P",))
    save(tmp_path / "pseudo/00001.png", np.zeros((H, H), np.uint8))   # square, image 1:2
    inner = GTA5(tmp_path / "gta", size=None, labelled=False)
    with pytest.raises(DataError, match="00001.png is 16x16 but its image .* 32x16"):
        PseudoLabelDataset(inner, tmp_path / "pseudo")[0]


# --------------------------------------------------------------------------- bad input

def test_missing_root_and_split(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing_here"):
        Cityscapes(tmp_path / "nothing_here")
    with pytest.raises(FileNotFoundError, match="nothing_here"):
        GTA5(tmp_path / "nothing_here")
    root, _ = make_cityscapes(tmp_path / "cs", n=1)
    with pytest.raises(FileNotFoundError, match=r"leftImg8bit/val/<city>/\*_leftImg8bit\.png"):
        Cityscapes(root, split="val")
    (tmp_path / "gta" / "images").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=r"images/\*\.png"):
        GTA5(tmp_path / "gta")  # empty
    (root / "leftImg8bit" / "test").mkdir()
    with pytest.raises(FileNotFoundError, match=r"leftImg8bit/test/<city>/\*_leftImg8bit\.png"):
        Cityscapes(root, split="test")  # folder exists but holds no images


def test_image_without_label(tmp_path):
    root, _ = make_cityscapes(tmp_path / "cs", n=2)
    missing = root / "gtFine/train/bremen/bremen_000001_000019_gtFine_labelIds.png"
    missing.unlink()
    with pytest.raises(FileNotFoundError, match=str(missing)):
        Cityscapes(root)
    make_gta(tmp_path / "gta", formats=("P", "P"))
    (tmp_path / "gta/labels/00002.png").unlink()
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "gta/labels/00002") + ".png"):
        GTA5(tmp_path / "gta")


def test_label_of_another_size_is_resized_independently_and_named(tmp_path):
    # Real GTA5 has a few such frames (a 1914x1046 label for a 1914x1052 image): the
    # reference loaders resize image and label to the working size each on its own.
    make_gta(tmp_path, formats=("P", "P"))
    ids = scene(0)
    taller = np.concatenate([ids, ids[-2:]], axis=0)          # label 2 rows taller
    save(tmp_path / "labels/00001.png", taller, mode="P")
    ds = GTA5(tmp_path, size=(H, W))
    item = ds[0]
    assert item["image"].shape == (3, H, W) and item["label"].shape == (H, W)
    expected = np.array(Image.fromarray(taller).resize((W, H), Image.Resampling.NEAREST))
    lut = np.full(256, 255, np.uint8)
    for label_id, train_id in EXPECTED_TRAIN_ID.items():
        lut[label_id] = train_id
    assert np.array_equal(item["label"].numpy(), lut[expected])
    # 2 rows of 16 is no GTA5 quirk but another shape: at start it is refused, naming both
    # sizes (the quirk, a few rows of 1052, is accepted: tests/test_label_checks.py)
    with pytest.raises(DataError, match=f"00001.png is {W}x{H + 2} but its image .* is {W}x{H}"):
        resized_labels("source", labelled_files(ds))
    assert GTA5(tmp_path, size=None)[0]["label"].shape == (H + 2, W)   # evaluation: as is


def test_unknown_label_ids_warn_with_the_file_and_become_ignore(tmp_path):
    make_gta(tmp_path, formats=("P",))
    ids = scene(0).copy()
    ids[:2] = 200                                   # not a Cityscapes id
    save(tmp_path / "labels/00001.png", ids, mode="P")
    with pytest.warns(DataWarning, match=r"00001\.png holds \d+ pixels of unknown ids \(.*200\)"):
        label = GTA5(tmp_path, size=None)[0]["label"]
    assert (label[:2] == 255).all()
    # an RGB file that holds ids, not colours: every pixel unknown -> a warning naming it
    rgb = np.repeat(scene(0)[..., None], 3, axis=2)
    save(tmp_path / "labels/00001.png", rgb)
    with pytest.warns(DataWarning, match="00001.png holds no Cityscapes class colour"):
        assert (GTA5(tmp_path, size=None)[0]["label"] == 255).all()


def test_unreadable_validation_file_is_found_before_training(tmp_path):
    root, _ = make_cityscapes(tmp_path / "city", split="val")
    bad = next((root / "leftImg8bit" / "val").rglob("*.png"))
    bad.write_bytes(b"")                            # zero-byte file
    with pytest.raises(DataError, match=str(bad)):
        Cityscapes(root, split="val", size=None).verify_readable()


def test_decompression_bomb_is_a_data_error(tmp_path, monkeypatch):
    make_gta(tmp_path, formats=("P",))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10)   # PIL raises past 2x this
    with pytest.raises(DataError, match="00001.png"):
        GTA5(tmp_path, size=None)[0]


def test_augmentation_draws_depend_only_on_the_sample_seed(tmp_path):
    make_gta(tmp_path, formats=("P", "P"))
    ds = GTA5(tmp_path, size=(H, W), transform=build_transforms("flip,jitter,scale", p=0.5))
    a, b = ds[(1, 1234)], ds[(1, 1234)]
    torch.manual_seed(99)                           # the global generator plays no part
    c = ds[(1, 1234)]
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["image"], c["image"])
    assert torch.equal(a["label"], c["label"])
    others = [ds[(1, seed)]["image"] for seed in range(5)]
    assert any(not torch.equal(a["image"], o) for o in others)


def test_corrupt_files(tmp_path):
    make_gta(tmp_path, formats=("P", "P"))
    (tmp_path / "images/00001.png").write_bytes(b"not a png at all")
    good = (tmp_path / "labels/00002.png").read_bytes()
    (tmp_path / "labels/00002.png").write_bytes(good[: len(good) // 2])  # truncated
    ds = GTA5(tmp_path, size=None)
    with pytest.raises(DataError, match=str(tmp_path / "images/00001.png")):
        ds[0]
    with pytest.raises(DataError, match=str(tmp_path / "labels/00002.png")):
        ds[1]


def test_split_list_errors(tmp_path):
    make_gta(tmp_path, formats=("P",))
    (tmp_path / "train.txt").write_text("00001\n00042.png\n")
    with pytest.raises(FileNotFoundError, match=r"train\.txt.*00042\.png"):
        GTA5(tmp_path, split="train")
    with pytest.raises(FileNotFoundError, match="val"):
        GTA5(tmp_path, split="val")
    (tmp_path / "empty.txt").write_text("\n\n")
    with pytest.raises(ValueError, match="empty.txt"):
        GTA5(tmp_path, split="empty")


def test_mapping_file_errors(tmp_path):
    make_gta(tmp_path, formats=("P",))
    with pytest.raises(FileNotFoundError, match="info.json"):
        GTA5(tmp_path, mapping=tmp_path / "info.json")
    (tmp_path / "info.json").write_text('{"label2train": [[7, 40]]}')
    with pytest.raises(ValueError, match="info.json"):
        GTA5(tmp_path, mapping=tmp_path / "info.json")


# --------------------------------------------------------------------------- normalisation

def test_normalize_values_shapes_and_round_trip():
    mean = torch.tensor(IMAGENET_MEAN) * 255
    std = torch.tensor(IMAGENET_STD) * 255
    pixel = torch.stack([mean, mean + std, torch.zeros(3)], 1)[:, :, None]  # 3 x 3 x 1
    out = normalize(pixel)
    assert out.dtype == torch.float32 and out.shape == (3, 3, 1)
    assert torch.allclose(out[:, 0, 0], torch.zeros(3), atol=1e-5)
    assert torch.allclose(out[:, 1, 0], torch.ones(3))
    assert torch.allclose(out[:, 2, 0], torch.tensor([-0.485 / 0.229, -0.456 / 0.224,
                                                      -0.406 / 0.225]))
    batch = torch.randint(0, 256, (2, 3, 4, 5), dtype=torch.uint8)
    assert torch.allclose(normalize(batch)[1], normalize(batch[1].double()))
    back = denormalize(normalize(batch))
    assert back.dtype == torch.float32 and torch.allclose(back, batch.float(), atol=1e-3)
    with pytest.raises(ValueError, match="3 x H x W"):
        normalize(torch.zeros(4, 8, 8))


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_normalize_stays_on_the_tensor_device(device):
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA device here")
    x = torch.randint(0, 256, (2, 3, 4, 4), dtype=torch.uint8, device=device)
    out = normalize(x)
    assert out.device == x.device and denormalize(out).device == x.device
    assert torch.allclose(out.cpu(), normalize(x.cpu()))
