"""plot_runs.py: metrics.jsonl lines read back (resume, NaN) and drawn into one PNG."""
import json
import math
import sys

import pytest
from PIL import Image

import plot_runs
from core.errors import ConfigError, DataError, MissingDataError


def write_log(folder, lines):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    return folder


def adv_run(folder):
    """A train_adv.py-style log: 2 epochs of 4 iterations, --log-every 2, killed after
    iteration 6 and resumed from the epoch-1 checkpoint (iterations 6 and 8 written again)."""
    def train(it, loss_seg, d_src=0.6):
        return {"event": "train", "epoch": (it - 1) // 4 + 1, "iteration": it,
                "lr": 0.01 * (1 - it / 8), "loss_seg": loss_seg, "loss_adv": 0.7,
                "loss_d": 0.69, "d_acc_source": d_src, "d_acc_target": 0.5}
    epoch1 = {"epoch": 1, "iteration": 4, "lr": 0.005, "loss_seg": 2.0, "loss_adv": 0.7,
              "loss_d": 0.69, "d_acc_source": 0.6, "d_acc_target": 0.5, "val_miou": 0.1,
              "val_pixel_acc": 0.5, "seconds": 3.0}
    epoch2 = dict(epoch1, epoch=2, iteration=8, lr=0.0, loss_seg=1.0, val_miou=None)
    return write_log(folder, [
        {"event": "start", "script": "train_adv", "args": {"seed": 1}},
        train(2, 2.5), train(4, 2.0), epoch1,
        train(6, 9.9),                                   # the killed session's line
        {"event": "resume", "from": str(folder / "last.pth")},
        train(6, 1.5, d_src=None), train(8, 1.0), epoch2])


def source_run(folder):
    """A train_source.py-style log with epoch lines only."""
    return write_log(folder, [
        {"event": "start", "script": "train_source", "args": {"seed": 2}},
        *({"epoch": e, "iteration": 4 * e, "lr": 0.01 / e, "loss": 3.0 / e,
           "val_miou": 0.05 * e, "val_pixel_acc": 0.4, "seconds": 2.0} for e in (1, 2, 3))])


def test_read_run_keeps_the_resumed_lines_and_reads_null_as_nan(tmp_path):
    run = plot_runs.read_run(adv_run(tmp_path / "adv"))
    assert run["args"] == {"seed": 1}
    assert plot_runs.series(run["train"], "loss_seg") == ([2, 4, 6, 8], [2.5, 2.0, 1.5, 1.0])
    x, y = plot_runs.series(run["train"], "d_acc_source")
    assert x == [2, 4, 6, 8] and y[:2] == [0.6, 0.6] and math.isnan(y[2])
    x, y = plot_runs.series(run["epochs"], "val_miou", scale=100)
    assert x == [4, 8] and y[0] == pytest.approx(10.0) and math.isnan(y[1])
    # the metrics.jsonl file itself works as well as its folder
    assert plot_runs.read_run(tmp_path / "adv" / "metrics.jsonl") == run


def test_plot_draws_every_quantity_of_every_run(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    adv, source = adv_run(tmp_path / "adv"), source_run(tmp_path / "source")
    runs = [plot_runs.read_run(adv), plot_runs.read_run(source)]
    titles = [title for title, _ in plot_runs.panels(runs)]
    assert titles == ["loss", "loss_adv", "loss_d", "loss_seg", "learning rate",
                      "val mIoU (%)", "discriminator accuracy (source solid, target dashed)"]
    fig = plot_runs.draw(runs, ["adv", "source"])
    axes = {ax.get_title(): ax for ax in fig.axes if ax.get_visible()}
    assert set(axes) == set(titles)
    # loss_seg: the adversarial run's per-iteration curve (resumed values) and epoch dots
    curve, dots = axes["loss_seg"].lines
    assert curve.get_xydata().tolist() == [[2, 2.5], [4, 2.0], [6, 1.5], [8, 1.0]]
    assert dots.get_xydata().tolist() == [[4, 2.0], [8, 1.0]]
    # loss: the source run, drawn from its epoch lines alone
    (only,) = axes["loss"].lines
    assert only.get_xydata().tolist() == [[4, 3.0], [8, 1.5], [12, 1.0]]
    assert only.get_color() != curve.get_color()
    # val mIoU in percent, from both runs; D accuracy: source and target of the adv run
    assert [line.get_ydata().tolist()[0] for line in axes["val mIoU (%)"].lines] == \
        pytest.approx([10.0, 5.0])
    d_lines = axes["discriminator accuracy (source solid, target dashed)"].lines
    # source: solid curve and its epoch dots, then target: dashed curve and its dots
    assert [line.get_linestyle() for line in d_lines] == ["-", "None", "--", "None"]
    assert d_lines[2].get_ydata().tolist() == [0.5] * 4

    out = tmp_path / "plots" / "curves.png"
    plot_runs.main(plot_runs.parse_args([str(adv), str(source), "--out", str(out)]))
    with Image.open(out) as im:
        assert im.format == "PNG" and im.width > 1000 and im.height > 600
    printed = capsys.readouterr().out
    assert "adv: epoch 2, iteration 8, last val mIoU 10.00, best 10.00 (epoch 1)" in printed
    assert "source: epoch 3, iteration 12, last val mIoU 15.00" in printed
    # an existing PNG is not written over without --overwrite
    before = out.read_bytes()
    with pytest.raises(SystemExit):
        plot_runs.parse_args([str(adv), "--out", str(out)])
    assert out.read_bytes() == before
    plot_runs.main(plot_runs.parse_args([str(adv), "--out", str(out), "--overwrite"]))
    assert out.read_bytes() != before


def test_bad_input_is_named(tmp_path, monkeypatch):
    with pytest.raises(MissingDataError, match="no metrics.jsonl in .*nowhere"):
        plot_runs.read_run(tmp_path / "nowhere")
    bad = write_log(tmp_path / "bad", [{"event": "start"}])
    with open(bad / "metrics.jsonl", "a") as f:
        f.write("{not json\n")
    with pytest.raises(DataError, match=r"metrics.jsonl, line 2: not a JSON line"):
        plot_runs.read_run(bad)
    monkeypatch.setitem(sys.modules, "matplotlib", None)     # as if it were not installed
    args = plot_runs.parse_args([str(bad), "--out", str(tmp_path / "c.png")])
    with pytest.raises(ConfigError, match="requirements-extras.txt"):
        plot_runs.main(args)
