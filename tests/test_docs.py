"""The documentation stays true: the front page stays short, every relative link in README.md
and docs/*.md leads to a file (and heading) that exists, and every command line `python
SCRIPT.py ...` (or `python -m core.prepared ...`, `torchrun ... SCRIPT.py ...`) in their code
blocks is accepted by that script's own parser.

A command is read as the shell would: continuation lines joined, `VAR=value` assignments and
the first value of `for VAR in ...` substituted for `$VAR`, comments dropped. Commands that
read files while parsing (`--resume`, train_mpl.py's teacher) are checked by the argparse
parser alone; the others by the script's whole parse_args, in an empty folder (so no output
path of the example exists yet).
"""
import argparse
import importlib
import importlib.util
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
README_MAX_LINES = 220
PYTHONS = ("python", "python3", ".venv/bin/python")
# Scripts whose parse_args reads files (train_mpl.py: the teacher's checkpoint and thresholds).
READS_FILES_WHILE_PARSING = {"train_mpl"}


# --------------------------------------------------------------------------- markdown

def fenced(text):
    """Per line of `text`: True where it lies in a fenced code block (fences included)."""
    inside, flags = False, []
    for line in text.splitlines():
        fence = line.lstrip().startswith("```")
        flags.append(inside or fence)
        inside ^= fence
    return flags


def code_blocks(text):
    """The code blocks of a markdown text, each a list of (line number, line): fenced blocks,
    and runs of lines indented by 4 spaces outside them (indented blocks)."""
    blocks, current, in_fence = [], [], False
    for number, line in enumerate(text.splitlines(), 1):
        if line.lstrip().startswith("```"):
            if in_fence:
                blocks.append(current)
            current, in_fence = [], not in_fence
        elif in_fence:
            current.append((number, line))
        elif line.startswith("    ") and line.strip():
            current.append((number, line[4:]))
        elif current and line.strip() == "":
            blocks.append(current)
            current = []
    if current and not in_fence:
        blocks.append(current)
    return blocks


def slug(heading):
    """GitHub's anchor of a heading: lower case, punctuation dropped (not - and _), spaces -> -."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(text):
    """The anchors of the headings outside code blocks (a repeated heading gets -1, -2, ...)."""
    seen, out = {}, set()
    for line, in_code in zip(text.splitlines(), fenced(text), strict=True):
        match = re.match(r"#{1,6} (.+)", line)
        if match and not in_code:
            base = slug(match.group(1))
            out.add(base if base not in seen else f"{base}-{seen[base]}")
            seen[base] = seen.get(base, 0) + 1
    return out


def links(text):
    """(line number, target) of the markdown links outside code blocks and code spans."""
    out = []
    for number, (line, in_code) in enumerate(zip(text.splitlines(), fenced(text), strict=True),
                                             1):
        if not in_code:
            prose = re.sub(r"`[^`]*`", "", line)
            out += [(number, target) for target in re.findall(r"\]\(([^)\s]+)\)", prose)]
    return out


def broken_links(doc):
    """'line: target (why)' for each relative link of `doc` that leads nowhere."""
    text, broken = doc.read_text(), []
    for number, target in links(text):
        if re.match(r"[a-z]+:", target):          # https:, mailto: ... (not checked here)
            continue
        path, _, anchor = target.partition("#")
        file = (doc.parent / path).resolve() if path else doc
        if not file.exists():
            broken.append(f"{number}: {target} (no file {file})")
        elif anchor and (file.suffix != ".md" or anchor not in anchors(file.read_text())):
            broken.append(f"{number}: {target} (no heading #{anchor} in {file.name})")
    return broken


# --------------------------------------------------------------------------- commands

@dataclass
class Command:
    line: int
    script: str          # a path relative to the repository root, or "core.prepared"
    argv: list

    @property
    def name(self):
        """train_source, core.prepared, ..."""
        return self.script if self.script == "core.prepared" else Path(self.script).stem


def logical_lines(block):
    """(first line number, text) of a block's lines, continuation lines (`\\`) joined."""
    out, parts, start = [], [], None
    for number, line in block:
        start = number if start is None else start
        if line.rstrip().endswith("\\"):
            parts.append(line.rstrip()[:-1])
            continue
        out.append((start, " ".join([*parts, line])))
        parts, start = [], None
    return out


def expand(text, variables, where):
    """`$VAR` and `${VAR}` replaced by their values; an unknown one is an error."""
    def value(match):
        name = match.group(1) or match.group(2)
        if name not in variables:
            raise AssertionError(f"{where}: ${name} is set nowhere in its code block")
        return variables[name]
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", value, text)


def split_commands(words):
    """Shell words -> the simple commands between ;, &&, || and |, redirections dropped."""
    commands, current = [], []
    for word in words:
        if word in (";", "&&", "||", "|"):
            commands.append(current)
            current = []
        elif word.endswith(";"):
            commands.append([*current, word[:-1]])
            current = []
        elif not re.match(r"\d*[<>]", word):
            current.append(word)
    return [c for c in [*commands, current] if c]


def script_call(words):
    """(script, argv) if the simple command runs one of our Python entry points, else None."""
    if words[0] == "torchrun":
        scripts = [i for i, w in enumerate(words) if w.endswith(".py")]
        return (words[scripts[0]], words[scripts[0] + 1:]) if scripts else None
    if words[0] in PYTHONS and len(words) > 1:
        if words[1].endswith(".py"):
            return words[1], words[2:]
        if words[1:3] == ["-m", "core.prepared"]:
            return "core.prepared", words[3:]
    return None


def is_shell(line):
    """A line this reader follows: a command of ours, a variable, an assignment (trees, pip,
    make and prose lines are skipped)."""
    first = line.split()[0] if line.split() else ""
    return (first in (*PYTHONS, "torchrun") or first.startswith("$")
            or re.match(r"[A-Za-z_]\w*=", first) is not None)


def commands(text, name="doc"):
    """The script commands in the code blocks of a markdown text."""
    found = []
    for block in code_blocks(text):
        variables = {}
        for number, line in logical_lines(block):
            loop = re.match(r"\s*for (\w+) in ([^;]+);\s*do\b(.*)", line)
            if loop:                     # the loop's first value; its body may follow `do`
                variables[loop.group(1)] = loop.group(2).split()[0]
                line = loop.group(3)
            if not is_shell(line):
                continue
            words = shlex.split(expand(line, variables, f"{name}:{number}"), comments=True)
            if words and all(re.match(r"[A-Za-z_]\w*=", w) for w in words):
                variables.update(w.split("=", 1) for w in words)
                continue
            for simple in split_commands(words):
                call = script_call(simple)
                if call:
                    found.append(Command(number, *call))
    return found


class Captured(Exception):
    pass


def load_script(script):
    """The module of a documented script: a root script or core.prepared by import, another
    file (benchmarks/...) from its path."""
    if script == "core.prepared":
        return importlib.import_module("core.prepared.__main__")
    path = ROOT / script
    assert path.is_file(), f"{script}: no such script"
    if path.parent == ROOT:
        return importlib.import_module(path.stem)
    spec = importlib.util.spec_from_file_location(f"doc_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def script_parser(module):
    """The argparse parser the script builds, captured at its parse_args call."""
    def capture(self, *args, **kwargs):
        raise Captured(self)
    entry = getattr(module, "parse_args", None)
    with mock.patch.object(argparse.ArgumentParser, "parse_args", capture):
        try:
            entry([]) if entry else module.main()
        except Captured as c:
            return c.args[0]
    raise AssertionError(f"{module.__name__} builds no argparse parser")


def check_command(command, where, capsys):
    """Parse the command's argv as the script would; fail with argparse's message if refused."""
    assert "..." not in command.argv, f"{where}: write the command out in full, not `...`"
    module = load_script(command.script)
    parse_only = (not hasattr(module, "parse_args") or "--resume" in command.argv
                  or command.name in READS_FILES_WHILE_PARSING)
    try:
        if parse_only:
            script_parser(module).parse_args(command.argv)
        else:
            module.parse_args(command.argv)
    except SystemExit as e:
        message = capsys.readouterr().err.strip().splitlines()
        raise AssertionError(f"{where}: `{command.script} {shlex.join(command.argv)}` is "
                             f"refused: {message[-1] if message else e}") from None


def documented_commands():
    for doc in DOCS:
        name = doc.relative_to(ROOT).as_posix()
        for command in commands(doc.read_text(), name):
            yield pytest.param(command, f"{name}:{command.line}",
                               id=f"{name}:{command.line} {command.script}")


# --------------------------------------------------------------------------- the tests

def test_readme_is_a_front_page():
    lines = len((ROOT / "README.md").read_text().splitlines())
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines (at most {README_MAX_LINES})"


@pytest.mark.parametrize("doc", DOCS, ids=lambda d: d.relative_to(ROOT).as_posix())
def test_relative_links_lead_to_files_and_headings(doc):
    assert broken_links(doc) == []


def test_the_docs_show_commands_of_every_training_script():
    shown = {c.values[0].name for c in documented_commands()}
    assert {"train_source", "train_adv", "train_fda", "train_mpl", "gen_pseudo", "evaluate",
            "predict", "export", "core.prepared"} <= shown


@pytest.mark.parametrize("command, where", list(documented_commands()))
def test_documented_command_parses(command, where, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)        # no output path of an example exists here
    check_command(command, where, capsys)


# --------------------------------------------------------------------------- the checks fail

SAMPLE = """# Title

Text with [a link](missing.md), [an anchor](#title), [a bad anchor](#nope) and `[code](x)`.

```bash
D=runs/demo
for b in 0.01 0.05; do
  python train_fda.py --demo --beta $b \\
      --out $D/fda_b$b   # a comment
done
python train_source.py --demo --no-such-flag
python evaluate.py $D/fda_b0.01/last.pth --markdown 2>&1 | tee log.txt
```

    python train_source.py --demo --epochs 0
"""


def test_commands_are_read_as_the_shell_reads_them():
    found = [(c.line, c.script, c.argv) for c in commands(SAMPLE)]
    assert found == [
        (8, "train_fda.py", ["--demo", "--beta", "0.01", "--out", "runs/demo/fda_b0.01"]),
        (11, "train_source.py", ["--demo", "--no-such-flag"]),
        (12, "evaluate.py", ["runs/demo/fda_b0.01/last.pth", "--markdown"]),
        (15, "train_source.py", ["--demo", "--epochs", "0"])]


@pytest.mark.parametrize("index, refused", [(0, False), (1, True), (2, False), (3, True)])
def test_a_refused_flag_or_value_fails_the_check(index, refused, tmp_path, monkeypatch,
                                                  capsys):
    monkeypatch.chdir(tmp_path)
    command = commands(SAMPLE)[index]
    if refused:
        with pytest.raises(AssertionError, match="is refused: .*(no-such-flag|--epochs)"):
            check_command(command, "sample", capsys)
    else:
        check_command(command, "sample", capsys)


def test_an_unset_variable_fails():
    with pytest.raises(AssertionError, match=r"doc:2: \$RUN is set nowhere"):
        commands("```bash\npython evaluate.py $RUN/last.pth\n```\n")


def test_broken_links_are_found(tmp_path):
    doc = tmp_path / "page.md"
    doc.write_text(SAMPLE)
    assert broken_links(doc) == [
        f"3: missing.md (no file {tmp_path / 'missing.md'})",
        "3: #nope (no heading #nope in page.md)"]


def test_anchors_follow_github():
    text = "# Meta Pseudo Labels (`train_mpl.py`)\n## What is checked, and against what\n" \
           "## STDC-Seg\n## STDC-Seg\n```\n# not a heading\n```\n"
    assert anchors(text) == {"meta-pseudo-labels-train_mplpy", "what-is-checked-and-against-what",
                             "stdc-seg", "stdc-seg-1"}
