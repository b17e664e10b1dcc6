"""The shape of the house: one loop per training script, no import circle, no renderer in core,
and parsing that only parses."""
import ast
import os
from pathlib import Path

import pytest

import train_adv
import train_fda
import train_mpl
import train_source
from core import cli
from core.checkpoint import save_checkpoint
from core.models import build_model

REPO = Path(__file__).resolve().parents[1]
TRAINING_SCRIPTS = ("train_source.py", "train_adv.py", "train_fda.py", "train_mpl.py")
LOOPS = (ast.For, ast.While, ast.AsyncFor)


def project_modules():
    """{module name: path} of every project module: core, demo, the scripts, benchmarks."""
    modules = {}
    for path in sorted(REPO.glob("*.py")) + sorted(REPO.glob("benchmarks/*.py")):
        modules[path.stem] = path
    for package in ("core", "demo"):
        for path in sorted((REPO / package).rglob("*.py")):
            parts = path.relative_to(REPO).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            modules[name] = path
    return modules


def imported_modules(path, name, known):
    """Project modules that `path` imports anywhere in it (in functions too)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1]
                                + ([base] if base else []))
            names = [base] + [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        for imported in names:
            while imported and imported not in known:     # a name inside a module
                imported = imported.rpartition(".")[0]
            if imported and imported != name:
                found.add(imported)
    return found


def find_cycle(graph):
    """One import circle of `graph` as a list of module names, or None."""
    state = {}

    def visit(node, trail):
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                return trail[trail.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = visit(nxt, trail + [nxt])
                if cycle:
                    return cycle
        state[node] = "done"
        return None
    for start in sorted(graph):
        if start not in state:
            cycle = visit(start, [start])
            if cycle:
                return cycle
    return None


def test_the_project_has_no_import_circle():
    modules = project_modules()
    graph = {name: imported_modules(path, name, modules) for name, path in modules.items()}
    # a package imports its own submodules by loading the package first: an edge from
    # core.models.bisenet to core.models is that, not a circle
    for name in graph:
        graph[name] = {m for m in graph[name] if not name.startswith(m + ".")}
    assert graph["core.cli"] and graph["train_source"]            # the walk sees imports
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_core_holds_no_renderer_and_imports_demo_only_for_its_paths():
    assert not (REPO / "core" / "demo").exists()
    users = [p.relative_to(REPO).as_posix() for p in (REPO / "core").rglob("*.py")
             if "demo" in imported_modules(p, "x", {"demo"})]
    assert sorted(users) == ["core/cli.py", "core/runtime.py"]


@pytest.mark.parametrize("script", TRAINING_SCRIPTS)
def test_each_training_script_is_one_loop_with_one_save(script):
    tree = ast.parse((REPO / script).read_text())
    main = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "main")
    loops = [n for n in ast.walk(main) if isinstance(n, LOOPS)]
    assert len(loops) == 1, f"{script}: main has {len(loops)} loops"
    calls = [n.func.attr for n in ast.walk(tree)
             if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)]
    assert calls.count("log_and_save") == 1
    assert not any("save" in c for c in calls if c != "log_and_save"), script


@pytest.mark.parametrize("module", [train_source, train_adv, train_fda, train_mpl])
def test_parsing_demo_arguments_writes_nothing(module, tmp_path, monkeypatch):
    monkeypatch.setattr(cli, "DEMO_ROOT", tmp_path / "demo")    # where a run would make it
    extra = []
    if module is train_mpl:                  # the teacher is read while parsing: make one
        extra = ["--teacher", str(teacher_checkpoint(tmp_path / "t" / "last.pth"))]
    before = sorted(os.listdir(tmp_path))
    args = module.parse_args(["--demo", "--out", str(tmp_path / "run"), *extra])
    assert args.source_root == str(tmp_path / "demo" / "gta5")
    assert sorted(os.listdir(tmp_path)) == before


def teacher_checkpoint(path):
    model = build_model("bisenet", 19, "resnet18")
    save_checkpoint({"model": model.state_dict(),
                     "args": {"model": "bisenet", "backbone": "resnet18", "arm_bn": False}}, path)
    return path
