"""The synthetic demo pair: deterministic, valid ids, a style gap without a label-colour gap,
readable by the real loaders, regenerated only when needed, and fast."""
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import demo
from core.labels import NUM_CLASSES, TRAIN_LABEL_IDS, ids_to_trainids
from demo import cli as demo_cli
from demo import write as demo_write

SMALL = {"n_source": 6, "n_target_train": 4, "n_target_val": 3}
TINY = {"n_source": 2, "n_target_train": 1, "n_target_val": 1}
REPO = Path(__file__).resolve().parents[1]
VALID_IDS = set(range(34))


@pytest.fixture(scope="module")
def small_demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo") / "demo"
    demo.generate_demo(root, seed=0, **SMALL)
    return demo.DemoPaths.of(root)


def tree_bytes(root):
    return {p.relative_to(root).as_posix(): p.read_bytes()
            for p in sorted(root.rglob("*")) if p.is_file()}


def source_frames(paths):
    names = paths.source_train_list.read_text().split() + paths.source_val_list.read_text().split()
    return [(paths.source / "images" / f"{n}.png", paths.source / "labels" / f"{n}.png")
            for n in names]


def target_frames(paths):
    images = sorted((paths.target / "leftImg8bit").glob("*/*/*_leftImg8bit.png"))
    return [(p, paths.target / "gtFine" / p.parent.parent.name / p.parent.name /
             p.name.replace("_leftImg8bit.png", "_gtFine_labelIds.png")) for p in images]


def test_layout_and_file_formats(small_demo):
    p = small_demo
    assert json.loads((p.root / "demo.json").read_text())["seed"] == 0
    train, val = p.source_train_list.read_text().split(), p.source_val_list.read_text().split()
    assert train == ["00001", "00002", "00003", "00004", "00005"] and val == ["00006"]
    for image, label in source_frames(p):
        im, lab = Image.open(image), Image.open(label)
        assert im.mode == "RGB" and im.size == (512, 288)
        assert lab.mode == "P" and lab.size == (512, 288)      # palette index = label id
        palette = np.array(lab.getpalette()[:3 * 256]).reshape(-1, 3)
        assert tuple(palette[7]) == (128, 64, 128)          # road's Cityscapes colour
    frames = target_frames(p)
    assert len(frames) == 7
    cities = {img.parent.name for img, _ in frames}
    assert cities == {"demotown", "demoville", "democity"}
    for image, label in frames:
        assert label.is_file(), label
        assert Image.open(image).size == (512, 256) and Image.open(label).mode == "L"
        assert image.name.startswith(f"{image.parent.name}_000000_0000")


def test_label_ids_valid_and_classes_covered(small_demo):
    for frames in (source_frames(small_demo), target_frames(small_demo)):
        present = set()
        for _, label in frames:
            ids = np.asarray(Image.open(label))
            assert set(np.unique(ids).tolist()) <= VALID_IDS
            present |= set(np.unique(ids_to_trainids(ids)).tolist()) - {255}
        assert len(present) >= 12, sorted(present)


def test_deterministic_and_seed_dependent(small_demo, tmp_path):
    again = tmp_path / "again"
    demo.generate_demo(again, seed=0, **SMALL)
    assert tree_bytes(again) == tree_bytes(small_demo.root)

    other = tmp_path / "other"
    demo.generate_demo(other, seed=1, n_source=2, n_target_train=1, n_target_val=1)
    for name, data in tree_bytes(other).items():
        if name.endswith(".png"):
            assert data != (small_demo.root / name).read_bytes(), name


def test_frames_independent_of_counts_and_order():
    a_img, a_lab = demo.render_frame(0, demo.STREAM_TARGET_VAL, 2)
    demo.render_frame(0, demo.STREAM_SOURCE, 0)
    b_img, b_lab = demo.render_frame(0, demo.STREAM_TARGET_VAL, 2)
    assert np.array_equal(a_img, b_img) and np.array_equal(a_lab, b_lab)


def _stats(frames):
    pixels = np.concatenate([np.asarray(Image.open(img)).reshape(-1, 3) for img, _ in frames])
    return pixels.mean(0), pixels.std(0)


def _class_share(frames):
    counts = np.zeros(256)
    for _, label in frames:
        counts += np.bincount(ids_to_trainids(np.asarray(Image.open(label))).ravel(),
                              minlength=256)
    share = counts[:NUM_CLASSES]
    return share / share.sum()


def test_style_gap_but_same_label_family(tmp_path):
    root = tmp_path / "demo"
    demo.generate_demo(root, seed=3, n_source=12, n_target_train=12, n_target_val=0)
    paths = demo.DemoPaths.of(root)
    src, tgt = source_frames(paths), target_frames(paths)
    # Appearance: the target is darker and flatter (as Cityscapes is next to GTA5).
    (m_s, s_s), (m_t, s_t) = _stats(src), _stats(tgt)
    assert m_s.mean() - m_t.mean() > 25, (m_s, m_t)
    assert s_s.mean() / s_t.mean() > 1.3, (s_s, s_t)
    # Labels: the same family, a moderate shift only.
    p, q = _class_share(src), _class_share(tgt)
    assert 0.5 * np.abs(p - q).sum() < 0.15, (p.round(3), q.round(3))
    big = [TRAIN_LABEL_IDS.index(i) for i in (7, 11, 21, 23)]  # road, building, veg., sky
    assert (p[big] > 0.05).all() and (q[big] > 0.05).all()


def test_label_shift_more_cars_fewer_people():
    # Counted on sampled layouts (no drawing): pixel shares of a few frames are too noisy.
    def mean_counts(prior, stream):
        counts = {}
        for i in range(150):
            scene = demo.sample_scene(np.random.default_rng([9, stream, i]), prior, 256, 512)
            for t in scene.things:
                counts[t.kind] = counts.get(t.kind, 0) + 1 / 150
        return counts

    src = mean_counts(demo.SOURCE_PRIOR, 0)
    tgt = mean_counts(demo.TARGET_PRIOR, 1)
    assert tgt["car"] > 1.3 * src["car"]
    assert tgt["person"] < 0.75 * src["person"]
    # Moderate: the same kinds of things appear in both domains.
    assert set(src) == set(tgt)


def test_same_scene_different_style():
    # One scene rendered in both styles: identical labels, base colours related by a global
    # transform only, so per-class colours are not permuted between the domains.
    rng = np.random.default_rng(5)
    scene = demo.sample_scene(rng, demo.SOURCE_PRIOR, 256, 512)
    cv = demo.draw_scene(scene, np.random.default_rng(6))
    a = demo.render_style(cv, demo.SOURCE_STYLE, np.random.default_rng(7)).astype(float)
    b = demo.render_style(cv, demo.TARGET_STYLE, np.random.default_rng(7)).astype(float)
    assert np.abs(a.mean((0, 1)) - b.mean((0, 1))).max() > 20
    for img in (a, b):
        road, veg, sky = (img[cv.label == i].mean(0) for i in (7, 21, 23))
        # Class brightness order survives the style change (a monotone global map) ...
        assert road.mean() < sky.mean() and veg.mean() < sky.mean()
        # ... and so does each class's hue family: green vegetation, blue sky, grey road.
        assert veg[1] > veg[0] and veg[1] > veg[2], veg
        assert sky[2] > sky[0], sky
        assert road.max() - road.min() < 0.25 * road.mean(), road


def test_files_load_through_real_loaders(small_demo):
    datasets = pytest.importorskip("core.datasets")
    size = (64, 128)
    src = datasets.GTA5(small_demo.source, split="train", size=size)
    val = datasets.GTA5(small_demo.source, split=str(small_demo.source_val_list), size=size)
    tgt = datasets.Cityscapes(small_demo.target, split="train", size=size)
    tgt_val = datasets.Cityscapes(small_demo.target, split="val", size=size)
    assert (len(src), len(val), len(tgt), len(tgt_val)) == (5, 1, 4, 3)
    for ds in (src, val, tgt, tgt_val):
        item = ds[0]
        assert tuple(item["image"].shape) == (3, *size) and tuple(item["label"].shape) == size
        labels = set(np.unique(item["label"].numpy()).tolist())
        assert labels <= set(range(NUM_CLASSES)) | {255} and len(labels - {255}) >= 5


def test_ensure_demo_reuses_and_regenerates(tmp_path, monkeypatch):
    calls = []
    real = demo.generate_demo

    def small_generate(root, seed=0, **_):
        calls.append(seed)
        real(root, seed=seed, **SMALL)
        # Pretend the marker describes the full-size default pair.
        marker = root / "demo.json"
        data = json.loads(marker.read_text())
        data.update(n_source=200, n_target_train=160, n_target_val=60)
        marker.write_text(json.dumps(data))

    monkeypatch.setattr(demo_write, "generate_demo", small_generate)
    root = tmp_path / "demo"
    paths = demo.ensure_demo(root, seed=0)
    assert calls == [0] and paths.source_train_list.is_file() and paths.target.is_dir()
    demo.ensure_demo(root, seed=0)
    assert calls == [0]                                       # up to date: reused
    demo.ensure_demo(root, seed=4)
    assert calls == [0, 4]                                    # other seed: regenerated
    marker = json.loads((root / "demo.json").read_text())
    marker["format_version"] = -1
    (root / "demo.json").write_text(json.dumps(marker))
    demo.ensure_demo(root, seed=4)
    assert calls == [0, 4, 4]                                 # stale format: regenerated
    (root / "demo.json").write_text("{broken")
    demo.ensure_demo(root, seed=4)
    assert calls == [0, 4, 4, 4]                              # unreadable marker: regenerated


def test_interrupted_generation_leaves_previous_tree(tmp_path, monkeypatch):
    root = tmp_path / "demo"
    demo.generate_demo(root, seed=0, n_source=2, n_target_train=1, n_target_val=1)
    before = tree_bytes(root)

    def boom(task):
        raise KeyboardInterrupt

    monkeypatch.setattr(demo_write, "write_frame", boom)
    with pytest.raises(KeyboardInterrupt):
        demo.generate_demo(root, seed=1, n_source=2, n_target_train=1, n_target_val=1)
    assert tree_bytes(root) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo"]   # no leftovers


def test_generation_is_fast(tmp_path):
    start = time.perf_counter()
    demo.generate_demo(tmp_path / "demo", seed=2, n_source=10, n_target_train=10,
                       n_target_val=0, workers=1)
    per_frame = (time.perf_counter() - start) / 20
    # ~0.07 s per frame on one unloaded core; generous for slow or busy CI machines.
    assert per_frame < 0.5, per_frame


def test_demo_root():
    assert demo.DEMO_ROOT.is_absolute() and demo.DEMO_ROOT.parts[-2:] == ("data", "demo")
    assert (demo.DEMO_ROOT.parent.parent / "demo" / "__init__.py").is_file()


def test_cli_prints_frequency_table(tmp_path, capsys):
    root = tmp_path / "demo"
    demo.generate_demo(root, seed=0, n_source=2, n_target_train=1, n_target_val=1)
    marker = json.loads((root / "demo.json").read_text())
    marker.update(n_source=200, n_target_train=160, n_target_val=60)   # looks up to date
    (root / "demo.json").write_text(json.dumps(marker))
    demo.main(["--root", str(root)])
    out = capsys.readouterr().out
    assert "gta5 train" in out and "cityscapes val" in out and "road" in out and "%" in out


def _user_folder(tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("my notes\n")
    return folder


def _run_cli(*args):
    return subprocess.run([sys.executable, "-m", "demo", *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, timeout=300)


def test_refuses_folder_with_other_files(tmp_path):
    folder = _user_folder(tmp_path)
    for call in (lambda: demo.generate_demo(folder, seed=0, **TINY),
                 lambda: demo.ensure_demo(folder)):
        with pytest.raises(FileExistsError, match="notes.txt") as info:
            call()
        assert str(folder) in str(info.value) and "did not write" in str(info.value)
    # A tree that looks like the demo's but has no marker is not known to be the demo's.
    (folder / "gta5").mkdir()
    with pytest.raises(FileExistsError, match="gta5, notes.txt"):
        demo.generate_demo(folder, seed=0, **TINY)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]       # no leftovers
    assert sorted(p.name for p in folder.iterdir()) == ["gta5", "notes.txt"]
    assert (folder / "notes.txt").read_text() == "my notes\n"


def test_cli_refuses_folder_with_other_files(tmp_path):
    folder = _user_folder(tmp_path)
    for extra in ((), ("--force",)):
        result = _run_cli("--root", folder, *extra)
        assert result.returncode != 0
        assert str(folder) in result.stderr and "notes.txt" in result.stderr, result.stderr
        assert result.stderr.startswith("error: ") and len(result.stderr.splitlines()) == 1
    assert (folder / "notes.txt").read_text() == "my notes\n"
    assert [p.name for p in folder.iterdir()] == ["notes.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]


def test_refuses_demo_tree_with_a_user_file_and_a_plain_file(tmp_path):
    root = tmp_path / "demo"
    demo.generate_demo(root, seed=0, **TINY)
    (root / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="notes.txt"):
        demo.generate_demo(root, seed=1, **TINY)
    assert (root / "notes.txt").read_text() == "mine"
    assert json.loads((root / "demo.json").read_text())["seed"] == 0
    plain = tmp_path / "file"
    plain.write_text("mine")
    with pytest.raises(FileExistsError, match="not a folder"):
        demo.generate_demo(plain, seed=0, **TINY)
    assert plain.read_text() == "mine"


def test_replaces_existing_demo_tree(tmp_path, monkeypatch, capsys):
    root = tmp_path / "demo"
    demo.generate_demo(root, seed=0, **TINY)
    first = tree_bytes(root)
    demo.generate_demo(root, seed=1, **TINY)
    second = tree_bytes(root)
    assert json.loads(second["demo.json"])["seed"] == 1 and second.keys() == first.keys()
    assert all(second[n] != first[n] for n in first if n.endswith(".png"))
    # --force replaces it too (at a tiny size here; the CLI's default is the full pair).
    real = demo.generate_demo
    monkeypatch.setattr(demo_cli, "generate_demo",
                        lambda root, seed: real(root, seed=seed, **TINY))
    demo.main(["--root", str(root), "--seed", "0", "--force"])
    assert tree_bytes(root) == first and "gta5 train" in capsys.readouterr().out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo"]      # no leftovers


def test_accepts_empty_folder(tmp_path):
    root = tmp_path / "empty"
    root.mkdir()
    demo.generate_demo(root, seed=0, **TINY)
    assert json.loads((root / "demo.json").read_text())["seed"] == 0
    assert sorted(p.name for p in root.iterdir()) == ["cityscapes", "demo.json", "gta5"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty"]


def _finish_first(monkeypatch, other):
    """Make `root` appear (a copy of `other`) just before our final rename, as if another
    process generating the same root had finished first."""
    real_rename = Path.rename

    def rename(self, target):
        if ".tmp-" in self.name and not Path(target).exists():
            shutil.copytree(other, target)
        return real_rename(self, target)

    monkeypatch.setattr(Path, "rename", rename)


def test_concurrent_run_keeps_the_tree_that_finished_first(tmp_path, monkeypatch):
    same = tmp_path / "same"
    demo.generate_demo(same, seed=0, **TINY)
    root = tmp_path / "demo"
    _finish_first(monkeypatch, same)
    demo.generate_demo(root, seed=0, **TINY)          # does not fail, keeps the other's tree
    assert tree_bytes(root) == tree_bytes(same)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo", "same"]


def test_concurrent_run_with_other_settings_is_refused(tmp_path, monkeypatch):
    other = tmp_path / "other"
    demo.generate_demo(other, seed=1, **TINY)
    root = tmp_path / "demo"
    _finish_first(monkeypatch, other)
    with pytest.raises(FileExistsError, match="another process"):
        demo.generate_demo(root, seed=0, **TINY)
    assert tree_bytes(root) == tree_bytes(other)      # the other run's tree is left alone
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo", "other"]
