"""Options that change speed or bookkeeping never change results (issue 24, item 7).

A tiny train_source run, once plain and once per option (--prepared into a new folder and into
that existing copy, --workers 2, --save-every, --log-every), ends with the plain run's weights
and optimiser state bit for bit; and one --prepared folder used by several datasets keeps
each one's items apart."""
import json
import shutil

import numpy as np
import pytest
import torch
from conftest import tiny_args
from PIL import Image
from test_prepared import GTA_SIZE, make_trees

import train_source
from core.datasets import GTA5, Cityscapes
from core.prepared import use_prepared

# Two epochs of three iterations: a pass boundary of the source stream (16 frames, batch 4)
# and two validations; augmentation on, so that every random draw is exercised; BiSeNet's
# smallest input, for speed.
RUN = ("--epochs", 2, "--iters-per-epoch", 3, "--aug", "flip,scale,jitter", "--aug-p", 0.7,
       "--source-size", 32, 64, "--val-size", 32, 64)
OPTIONS = {"workers": ("--workers", 2), "save-every": ("--save-every", 1),
           "log-every": ("--log-every", 1)}


def train(demo, out, *extra):
    train_source.main(train_source.parse_args(tiny_args(demo, out, *RUN, *extra)))
    return torch.load(out / "last.pth", weights_only=True)


def tensors(state, prefix=""):
    """Every tensor in a nested state dict, by its path."""
    if torch.is_tensor(state):
        return {prefix: state}
    items = state.items() if isinstance(state, dict) else enumerate(state) \
        if isinstance(state, list | tuple) else []
    return {k: v for key, value in items for k, v in tensors(value, f"{prefix}/{key}").items()}


def assert_same_run(got, want):
    for part in ("model", "optimizer"):
        a, b = tensors(got[part]), tensors(want[part])
        assert a.keys() == b.keys() and a, part
        for key in a:
            assert torch.equal(a[key], b[key]), (part, key)
    assert got["scheduler"] == want["scheduler"] and got["iteration"] == want["iteration"]
    assert got["log_record"]["val_miou"] == want["log_record"]["val_miou"]


@pytest.fixture(scope="module")
def plain(tiny_demo, tmp_path_factory):
    return train(tiny_demo, tmp_path_factory.mktemp("plain") / "run")


@pytest.mark.parametrize("option", OPTIONS)
def test_option_leaves_the_weights_bit_for_bit(plain, tiny_demo, tmp_path, option):
    got = train(tiny_demo, tmp_path / "run", *OPTIONS[option])
    assert_same_run(got, plain)
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    if option == "log-every":          # the option did something: a line per iteration
        assert sum(x.get("event") == "train" for x in lines) == 6


def test_prepared_new_and_existing_copies_leave_the_weights_bit_for_bit(plain, tiny_demo,
                                                                        tmp_path, capsys):
    prep = tmp_path / "prep"
    assert_same_run(train(tiny_demo, tmp_path / "new", "--prepared", prep), plain)
    assert "preparing" in capsys.readouterr().out            # the copy was made here
    assert_same_run(train(tiny_demo, tmp_path / "existing", "--prepared", prep), plain)
    assert "preparing" not in capsys.readouterr().out        # and read as it was


# --------------------------------------------------------------------------- one folder

def other_root(root, name, flip):
    """A copy of the dataset at `root` whose pictures are another (flipped, shifted): the same
    item names, other items."""
    other = root.parent / name
    shutil.copytree(root, other)
    for path in other.rglob("*_leftImg8bit.png" if "city" in name else "images/*.png"):
        pixels = np.asarray(Image.open(path))
        Image.fromarray((pixels[:, ::-1] if flip else 255 - pixels).copy()).save(path)
    return other


def assert_items_are_its_own(dataset, make):
    raw = make()
    assert dataset.prepared is not None and raw.prepared is None
    for i in range(len(raw)):
        got, want = dataset[i], raw[i]
        assert got["name"] == want["name"] and torch.equal(got["image"], want["image"])
        if "label" in want:
            assert torch.equal(got["label"], want["label"])


def test_one_prepared_folder_keeps_every_dataset_apart(tmp_path, capsys):
    """Datasets whose item names collide (two GTA5 roots, GTA5 with and without --mapping,
    two Cityscapes roots; source and target of one root), all prepared into one folder and
    all open at once, as by runs training side by side: each reads its own items."""
    trees = make_trees(tmp_path / "data")
    gta_b = other_root(trees.source, "gta5_b", flip=True)
    city_b = other_root(trees.target, "city_b", flip=False)
    mapping = tmp_path / "info.json"
    mapping.write_text(json.dumps({"label2train": [[7, 1], [26, 0], [24, 18]]}))
    makers = [
        lambda: GTA5(trees.source, size=GTA_SIZE),
        lambda: GTA5(gta_b, size=GTA_SIZE),
        lambda: GTA5(trees.source, size=GTA_SIZE, mapping=mapping),
        lambda: Cityscapes(trees.target, "train", size=GTA_SIZE),
        lambda: Cityscapes(city_b, "train", size=GTA_SIZE),
        lambda: Cityscapes(trees.target, "train", size=GTA_SIZE, labelled=False),
    ]
    prep = tmp_path / "prep"
    opened = [use_prepared(make(), prep) for make in makers]
    assert len({d.prepared.folder for d in opened}) == len(makers)
    for dataset, make in zip(opened, makers, strict=True):
        assert_items_are_its_own(dataset, make)
    capsys.readouterr()
    for make in makers:                      # each copy stays current: nothing prepared again
        use_prepared(make(), prep)
    assert "preparing" not in capsys.readouterr().out


def test_a_copy_of_the_earlier_format_is_named_for_deletion(tmp_path, capsys):
    trees = make_trees(tmp_path / "data")
    prep = tmp_path / "prep"
    use_prepared(GTA5(trees.source, size=GTA_SIZE), prep)
    old = prep / "gta5-24x40-labels"        # how format 1 named the copy, for any root
    old.mkdir()
    capsys.readouterr()
    use_prepared(GTA5(trees.source, size=GTA_SIZE), prep)
    assert f"note: {old} was prepared by an earlier version and is no longer read" in \
        capsys.readouterr().out
    assert old.is_dir()                     # named, never deleted
