"""One flag on its own: value types that state their range, and how --help shows it.

core.cli groups the flags the scripts share and parses them; every parser is made by
core.cli.new_parser, whose --help uses `HelpFormatter`.
"""
import argparse
import math

# Flag types that state their range: argparse names the flag in the error (exit 2), so a bad
# value never reaches an optimiser or a loader as a traceback. Every numeric flag of every
# script uses one of them (tests/test_flags.py walks them all).


def _number(text, convert, low, high, low_open, what):
    try:
        value = convert(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
    if not math.isfinite(value) or value < low or (low_open and value == low) or value > high:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text}")
    return value


def positive_int(text):
    return _number(text, int, 1, math.inf, False, "an integer >= 1")


def non_negative_int(text):
    return _number(text, int, 0, math.inf, False, "an integer >= 0")


def positive_float(text):
    return _number(text, float, 0.0, math.inf, True, "a number > 0")


def non_negative_float(text):
    return _number(text, float, 0.0, math.inf, False, "a number >= 0")


def probability(text):
    return _number(text, float, 0.0, 1.0, False, "a number in [0, 1]")


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """--help with the docstring laid out as written, and every flag's default after its
    help, unless the help already states it ("default" in it) or there is none to state
    (None: decided later, e.g. per model; a switch's False; an empty list)."""

    def _get_help_string(self, action):
        text, default = action.help or "", action.default
        if "default" in text or not has_default(action):
            return text
        shown = " ".join(map(str, default)) if isinstance(default, list | tuple) else default
        return f"{text} (default: {str(shown).replace('%', '%%')})"


def has_default(action):
    """Whether --help has a default value to show for `action`."""
    default = action.default
    return not (default is None or default is False or default is argparse.SUPPRESS
                or (isinstance(default, list | tuple) and not default))
