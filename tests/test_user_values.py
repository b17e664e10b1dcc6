"""Issue 24, item 8: a value the user gives is kept (0 included), a limit of 0 is a flag error,
a session stopped by a limit says so, runs folded into one row ran equally long, and a log line
cut by a kill never stops a resume."""
import json
import re

import pytest
from conftest import ROOT, tiny_args
from test_flags import SCRIPTS, script_parser
from test_outputs import command, make_teacher

import evaluate
import train_source
from core import cli, seed_groups
from core.checkpoint import save_checkpoint
from core.cli import entry
from core.errors import DataError
from core.logs import RunLog

ZERO_ALLOWED = (cli.non_negative_int, cli.non_negative_float, cli.probability)
# Flags that bound how much is done: 0 would mean nothing, so it is a flag error.
LIMITS = {"stop_after", "time_limit", "save_every", "log_every", "epochs", "iters_per_epoch",
          "poly_iters", "iters", "bins", "vis_count", "uda_warmup", "threads", "batch_size"}


def zero_flags(module):
    return [a for a in script_parser(module)._actions
            if a.option_strings and a.type in ZERO_ALLOWED]


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    return make_teacher(tmp_path_factory.mktemp("teacher") / "last.pth")


@pytest.mark.parametrize("script", list(SCRIPTS))
def test_an_explicit_zero_is_never_replaced_by_a_default(script, tiny_demo, teacher, tmp_path):
    module = SCRIPTS[script]
    for action in zero_flags(module):
        count = action.nargs if isinstance(action.nargs, int) else 1
        args = module.parse_args(command(script, tmp_path, tiny_demo, teacher)
                                 + [action.option_strings[-1], *["0"] * count])
        value = getattr(args, action.dest)
        assert (list(value) if count > 1 else [value]) == [0] * count, action.option_strings


def test_no_code_replaces_a_value_that_may_be_zero():
    """`args.x or default` replaces an explicit 0: none for a flag where 0 is legal."""
    may_be_zero = {a.dest for m in SCRIPTS.values() for a in zero_flags(m)}
    fallback = re.compile(r"args\.(\w+) or\b|getattr\(\w*\.?args, \"(\w+)\"[^)]*\) or\b")
    for path in ROOT.rglob("*.py"):
        if {".venv", "tests"} & set(path.relative_to(ROOT).parts):
            continue
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            for match in fallback.finditer(line):
                dest = match.group(1) or match.group(2)
                assert dest not in may_be_zero, f"{path.relative_to(ROOT)}:{number}: " \
                                                f"an explicit {dest} of 0 would be replaced"


def test_a_limit_of_zero_is_a_flag_error(capsys):
    found = set()
    for name, module in SCRIPTS.items():
        for action in script_parser(module)._actions:
            if action.dest in LIMITS:
                found.add(action.dest)
                assert action.type in (cli.positive_int, cli.positive_float), \
                    f"{name} {action.option_strings[-1]} accepts 0"
    assert found == LIMITS
    with pytest.raises(SystemExit):
        evaluate.parse_args(["ckpt.pth", "--vis-count", "0"])
    assert "argument --vis-count: expected an integer >= 1, got 0" in capsys.readouterr().err


# --------------------------------------------------------------------------- sessions

def test_a_stopped_session_says_which_limit_and_resumes_past_a_cut_log_line(tiny_demo,
                                                                            tmp_path, capsys):
    out = tmp_path / "run"
    last = out / "last.pth"
    train_source.main(train_source.parse_args(tiny_args(
        tiny_demo, out, "--epochs", 3, "--iters-per-epoch", 2, "--stop-after", 1)))
    assert (f"this session stopped at --stop-after 1 (of 3 epochs); continue the run with: "
            f"python train_source.py --resume {last}") in capsys.readouterr().out
    log = out / "metrics.jsonl"
    text = log.read_text()
    log.write_text(text[:-20])                  # a kill cut epoch 1's line short
    # --time-limit of a second: a save is reckoned to need 30, so it stops after one step
    train_source.main(train_source.parse_args(["--resume", str(last), "--time-limit", "0.02"]))
    printed = capsys.readouterr().out
    assert f"dropped the last line of {log}, cut short by a kill" in printed
    assert (f"this session stopped at --time-limit 0.02; continue the run with: python "
            f"train_source.py --resume {last}") in printed
    train_source.main(train_source.parse_args(["--resume", str(last)]))
    assert "this session stopped" not in capsys.readouterr().out       # the run's own end
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert [r["epoch"] for r in records if "epoch" in r and not r.get("event")] == [1, 2, 3]
    assert [r.get("event") for r in records if r.get("event")] == ["start", "resume", "resume"]


def test_a_cut_last_line_is_dropped_or_ended_and_other_bad_lines_are_named(tmp_path):
    log = RunLog(tmp_path / "metrics.jsonl")
    log.write({"event": "start"})
    log.write({"epoch": 1})
    whole = log.path.read_text()
    log.path.write_text(whole[:-1])              # whole JSON, its newline lost: kept
    assert log.records() == [{"event": "start"}, {"epoch": 1}]
    log.repair()
    log.write({"epoch": 2})
    assert log.records() == [{"event": "start"}, {"epoch": 1}, {"epoch": 2}]
    log.path.write_text(whole + '{"epoch": 2, "lo')   # cut inside: left out, then dropped
    assert log.records() == [{"event": "start"}, {"epoch": 1}]
    log.repair()
    assert log.path.read_text() == whole
    log.path.write_text('{"event": "start"}\n{"epo\n{"epoch": 1}\n')
    with pytest.raises(DataError, match=r"metrics.jsonl, line 2: not a JSON line"):
        log.records()


def test_group_by_seed_refuses_runs_that_ended_at_different_points(tmp_path):
    recipe = {"model": "bisenet", "backbone": "resnet18", "lr": 0.01, "epochs": 10}

    def run(name, seed, best_at, ended_at, **changes):
        """A run folder: best.pth from iteration best_at, last.pth from ended_at."""
        for file, iteration in (("best.pth", best_at), ("last.pth", ended_at)):
            save_checkpoint({"model": {}, "args": {**recipe, **changes, "seed": seed},
                             "iteration": iteration}, tmp_path / name / file)
        return str(tmp_path / name / "best.pth")

    s1, s2 = run("s1", 1, 700, 1000), run("s2", 2, 1000, 1000)
    killed = run("s3", 3, 300, 400)
    seed_groups.check_same_end([s1, s2])          # best epochs differ, the runs ended together
    seed_groups.check_same_end([s1, s2, run("lr_s1", 1, 400, 400, lr=0.02)])   # another row
    with pytest.raises(SystemExit) as info:
        entry(evaluate.main, lambda: evaluate.parse_args([s1, s2, killed, "--group-by-seed"]))
    assert info.value.code == (f"error: --group-by-seed: {killed} comes from a run that ended "
                               f"at iteration 400, {s1} from one that ended at 1000: finish "
                               f"it (--resume) or leave it out")
