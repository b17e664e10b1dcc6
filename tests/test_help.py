"""--help of every script: a one-line help for every flag, each default shown, the
description once (core.cli.new_parser, core.flags.HelpFormatter)."""
import argparse

import pytest
from test_flags import SCRIPTS, script_parser

from core.flags import HelpFormatter, has_default

PARSERS = {name: script_parser(module) for name, module in SCRIPTS.items()}
ACTIONS = [pytest.param(parser, action, id=f"{name} {(action.option_strings or [action.dest])[-1]}")
           for name, parser in PARSERS.items() for action in parser._actions
           if not isinstance(action, argparse._HelpAction)]


def flat(text):
    return " ".join(text.split())


def squeezed(text):
    """Without whitespace: the same words whatever the width --help wraps them at."""
    return "".join(text.split())


def action_help(parser, action):
    """The lines --help prints for one flag, by the parser's own formatter."""
    formatter = parser._get_formatter()
    formatter.add_argument(action)
    return flat(formatter.format_help())


def shown_default(action):
    default = action.default
    return " ".join(map(str, default)) if isinstance(default, list | tuple) else str(default)


@pytest.mark.parametrize("parser, action", ACTIONS)
def test_every_flag_has_a_help_that_shows_its_default(parser, action):
    assert parser.formatter_class is HelpFormatter
    assert action.help and action.help.strip() and action.help is not argparse.SUPPRESS
    text = action_help(parser, action)
    assert squeezed(text) in squeezed(parser.format_help())
    if has_default(action):
        assert "default" in text and squeezed(shown_default(action)) in squeezed(text), text


@pytest.mark.parametrize("name", PARSERS)
def test_the_description_is_printed_once(name):
    parser = PARSERS[name]
    doc = SCRIPTS[name].__doc__.strip()
    summary, _, rest = doc.partition("\n\n")
    text = parser.format_help()
    assert text.count(summary.splitlines()[0]) == 1, text
    if rest:        # the usage examples and notes follow the flags, laid out as written
        assert text.index(rest.splitlines()[0]) > text.index("options:")


def test_the_walk_sees_every_script_and_the_formatter_adds_defaults():
    assert set(PARSERS) == {"train_source", "train_adv", "train_fda", "train_mpl", "evaluate",
                            "gen_pseudo", "predict", "export", "plot_runs", "profile_model",
                            "core.prepared"}
    assert any(a.option_strings == ["--lambda-adv"] for a in PARSERS["train_adv"]._actions)
    parser = argparse.ArgumentParser(formatter_class=HelpFormatter)
    parser.add_argument("--rate", type=float, default=0.25, help="a rate")
    parser.add_argument("--size", type=int, nargs=2, default=(3, 4), help="a size")
    parser.add_argument("--flag", action="store_true", help="a switch")
    parser.add_argument("--later", default=None, help="decided later")
    parser.add_argument("--said", default=7, help="seven by default")
    parser.add_argument("--percent", default="5%", help="a share")
    text = flat(parser.format_help())
    assert "a rate (default: 0.25)" in text and "a size (default: 3 4)" in text
    assert "a switch --later" in text and "decided later --said" in text
    assert "seven by default --percent" in text and "a share (default: 5%)" in text
