"""Every numeric flag of every script states its range (core.cli's flag types): a value outside
it, nan, inf or a non-number ends in argparse's one-line error naming the flag (exit 2)."""
import argparse
import math
from unittest import mock

import pytest

import evaluate
import export
import gen_pseudo
import plot_runs
import predict
import profile_model
import train_adv
import train_fda
import train_mpl
import train_source
from core import cli
from core.prepared import __main__ as prepare

SCRIPTS = {"train_source": train_source, "train_adv": train_adv, "train_fda": train_fda,
           "train_mpl": train_mpl, "evaluate": evaluate, "gen_pseudo": gen_pseudo,
           "predict": predict, "export": export, "plot_runs": plot_runs,
           "profile_model": profile_model, "core.prepared": prepare}
# what each type must refuse and accept (beyond nan, inf and a non-number, always refused)
RANGES = {cli.positive_int: (["0", "-1", "1.5"], ["1", "7"]),
          cli.non_negative_int: (["-1", "2.5"], ["0", "3"]),
          cli.positive_float: (["0", "-1"], ["1e-6", "2.5"]),
          cli.non_negative_float: (["-1", "-1e-9"], ["0", "0.5"]),
          cli.probability: (["-1", "1.01"], ["0", "1", "0.3"])}
ALWAYS_BAD = ["nan", "inf", "-inf", "x"]


class Captured(Exception):
    pass


def script_parser(module):
    """The parser a script builds: captured at its parse_args call, before anything runs."""
    def capture(self, *args, **kwargs):
        raise Captured(self)
    with mock.patch.object(argparse.ArgumentParser, "parse_args", capture):
        try:
            module.parse_args([])
        except Captured as c:
            return c.args[0]
    raise AssertionError(f"{module.__name__} never parsed")


def numeric_flags():
    for name, module in SCRIPTS.items():
        parser = script_parser(module)
        for action in parser._actions:
            if action.option_strings and (action.type in (int, float) or
                                          action.type in RANGES):
                yield pytest.param(parser, action, id=f"{name} {action.option_strings[-1]}")


def fillers(parser, action):
    """Values for the parser's required arguments other than `action`."""
    argv = []
    for other in parser._actions:
        if other is action or not other.required:
            continue
        value = ["1"] * (other.nargs if isinstance(other.nargs, int) else 1)
        argv += (value if not other.option_strings else [other.option_strings[-1], *value])
    return argv


def parse(parser, action, value):
    count = action.nargs if isinstance(action.nargs, int) else 1
    return parser.parse_args([action.option_strings[-1], *[value] * count,
                              *fillers(parser, action)])


@pytest.mark.parametrize("parser, action", list(numeric_flags()))
def test_numeric_flag_states_its_range(parser, action, capsys):
    assert action.type in RANGES, f"{action.option_strings[-1]} is a bare {action.type.__name__}"
    refused, accepted = RANGES[action.type]
    flag = action.option_strings[-1]
    for value in refused + ALWAYS_BAD:
        with pytest.raises(SystemExit) as info:
            parse(parser, action, value)
        err = capsys.readouterr().err
        assert info.value.code == 2 and f"argument {flag}" in err, (value, err)
        assert "Traceback" not in err
    for value in accepted:
        got = getattr(parse(parser, action, value), action.dest)
        got = got[0] if isinstance(got, list) else got
        assert math.isclose(got, float(value))


def test_the_walk_finds_every_script_and_a_bare_type():
    assert {p.id.split()[0] for p in numeric_flags()} == set(SCRIPTS)
    bare = argparse.ArgumentParser()
    bare.add_argument("--lr", type=float)
    with pytest.raises(AssertionError, match="bare float"):
        test_numeric_flag_states_its_range(bare, bare._actions[-1], None)


def test_a_zero_learning_rate_warns(tiny_demo, tmp_path, capsys):
    from conftest import tiny_args
    train_source.parse_args(tiny_args(tiny_demo, tmp_path / "run", "--lr", 0))
    assert "warning: --lr 0: that network's weights will never change" in capsys.readouterr().err
    train_source.parse_args(tiny_args(tiny_demo, tmp_path / "run", "--lr", 0.01))
    assert "warning" not in capsys.readouterr().err
