"""The shape of the package: layers that import downwards only, textbook files that can be
copied out with little, and no file or definition too long to read in one sitting.

The layers, lowest first (README, "The tree"):

- ``core``: the textbook (model, optimizer, loop, masking, alignment, metrics, SetFit's loss);
  imports torch and ``core`` only.
- ``data``: file readers, the tokenizer, batching, safe file writes.
- ``hf``: the safetensors format and the HF checkpoint key map.
- ``fast``: the speed paths, swapped into a built textbook model; held to ``core`` by tests.
- ``tasks``: one file per task (its head, its dataset, its evaluation).
- ``run``: the application (options, recipes, CLI, search, plots).

The tests mirror the tree: each module ``minift/**/X.py`` has its tests in ``tests/test_X.py``
(modules of one name in two layers share it), or a line in ``UNTESTED`` saying why not.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "minift"

# What each layer may import from minift (itself included).
ALLOWED = {
    "core": {"core"},
    "data": {"core", "data"},
    "hf": {"core", "data", "hf"},
    "fast": {"core", "fast"},
    "tasks": {"core", "data", "hf", "tasks"},
    "run": {"core", "data", "hf", "fast", "tasks", "run"},
}
# Textbook files that import nothing of minift (they stand alone when copied out).
STANDALONE = ("core/model.py", "core/optim.py", "core/masking.py")
COPY_OUT_BUDGET = 1000  # lines: a textbook file plus everything it imports from minift
MAX_FILE_LINES = 700
MAX_DEFINITION_LINES = 120
LONG_DEFINITIONS_ALLOWED = {("core/loop.py", "train")}  # the loop reads top to bottom, whole


# Modules with no test file of their own, each with the reason.
UNTESTED = {
    "core/state.py": "two dataclasses with no behaviour of their own (Progress, Parts): "
                     "every test of test_resume.py saves and restores them",
}


# Debts of the move into layers (issue #30), each a strict xfail: an entry must leave this table
# the moment its file passes. None is owed now (the loop copies out with optim.py and state.py:
# its files and data parallelism come in through `recorder` and `parallel`).
DEBTS = {
    "imports": set(),
    "copy_out": set(),
    "file_length": set(),
    "definitions": set(),
}


def owed(kind: str, paths: list[Path]) -> list:
    """``paths`` as parameters, those still owed under ``kind`` marked as strict xfails."""
    marked = []
    for path in paths:
        name = str(path.relative_to(PACKAGE))
        marks = [pytest.mark.xfail(strict=True, reason="a debt of #30")] if name in DEBTS[kind] else []
        marked.append(pytest.param(path, marks=marks, id=name))
    return marked


def modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if p.name != "__init__.py" or p.parent != PACKAGE)


def layer_of(path: Path) -> str | None:
    parts = path.relative_to(PACKAGE).parts
    return parts[0] if len(parts) > 1 else None


def minift_imports(path: Path) -> set[str]:
    """Every ``minift.x.y`` module that ``path`` imports, at any depth of the file."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module == "minift":
                found |= {f"minift.{alias.name}" for alias in node.names
                          if (PACKAGE / alias.name).is_dir()
                          or (PACKAGE / f"{alias.name}.py").is_file()}
            elif node.module.startswith("minift."):
                found.add(node.module)
                # `from minift.core import model`: the submodule is what is imported
                found |= {f"{node.module}.{alias.name}" for alias in node.names
                          if (PACKAGE / node.module[7:].replace(".", "/") / f"{alias.name}.py")
                          .is_file()}
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("minift.")}
    return found


def module_file(name: str) -> Path | None:
    relative = name.split(".")[1:]
    for candidate in (PACKAGE.joinpath(*relative).with_suffix(".py"),
                      PACKAGE.joinpath(*relative, "__init__.py")):
        if candidate.is_file():
            return candidate
    return None


@pytest.mark.parametrize("path", owed("imports", modules()))
def test_a_layer_imports_only_itself_and_the_layers_below(path):
    layer = layer_of(path)
    if layer is None:  # minift/__init__.py and __main__.py: the front door, above everything
        return
    upward = sorted(name for name in minift_imports(path)
                    if len(name.split(".")) > 1 and name.split(".")[1] not in ALLOWED[layer])
    assert not upward, f"{path.relative_to(PACKAGE)} ({layer}) imports {upward}"


def closure(path: Path) -> set[Path]:
    """``path`` and every minift file it imports, transitively."""
    seen, todo = set(), [path]
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        seen.add(current)
        for name in minift_imports(current):
            target = module_file(name)
            if target is not None and target.name != "__init__.py":
                todo.append(target)
    return seen


def lines(path: Path) -> int:
    return len(path.read_text(encoding="utf-8").splitlines())


@pytest.mark.parametrize("name", STANDALONE)
def test_the_standalone_textbook_files_import_nothing_of_minift(name):
    assert minift_imports(PACKAGE / name) == set()


@pytest.mark.parametrize("path", owed("copy_out", sorted((PACKAGE / "core").glob("[!_]*.py"))))
def test_a_textbook_file_copies_out_with_under_a_thousand_lines(path):
    files = closure(path)
    total = sum(lines(p) for p in files)
    assert total < COPY_OUT_BUDGET, (
        f"{path.name} and what it imports: {total} lines "
        f"({', '.join(f'{p.relative_to(PACKAGE)} {lines(p)}' for p in sorted(files))})")


@pytest.mark.parametrize("path", owed("file_length", modules()))
def test_no_file_is_too_long_to_read_in_one_sitting(path):
    assert lines(path) <= MAX_FILE_LINES


@pytest.mark.parametrize("path", owed("definitions", modules()))
def test_no_definition_is_too_long(path):
    relative = str(path.relative_to(PACKAGE))
    long = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            size = node.end_lineno - node.lineno + 1
            if size > MAX_DEFINITION_LINES and (relative, node.name) not in LONG_DEFINITIONS_ALLOWED:
                long.append(f"{node.name} ({size} lines)")
    assert not long, f"{relative}: {', '.join(long)}"


def test_every_folder_of_the_package_is_installed():
    """pyproject.toml lists the packages by hand: a new folder missing there is left out of a
    wheel (an editable install hides it)."""
    import tomllib

    listed = set(tomllib.loads((PACKAGE.parent / "pyproject.toml").read_text())
                 ["tool"]["setuptools"]["packages"])
    folders = {".".join(p.parent.relative_to(PACKAGE.parent).parts)
               for p in PACKAGE.rglob("__init__.py")}
    assert folders == listed


def test_every_module_has_a_test_file_named_after_it():
    """A reader who wants the tests of ``minift/core/best.py`` opens ``tests/test_best.py``.
    Every module but ``__init__`` and ``__main__`` is checked against the files in tests/ now:
    a new module without ``tests/test_<name>.py`` fails here, named, until it has one or a line
    in ``UNTESTED``; so does a line in ``UNTESTED`` whose module has gone or has a file now."""
    tests = PACKAGE.parent / "tests"
    named = {str(path.relative_to(PACKAGE)): path.stem for path in modules()
             if path.name not in ("__init__.py", "__main__.py")}
    missing = sorted(name for name, stem in named.items()
                     if not (tests / f"test_{stem}.py").is_file() and name not in UNTESTED)
    assert not missing, f"modules without tests/test_<name>.py: {missing}"
    stale = sorted(name for name in UNTESTED
                   if name not in named or (tests / f"test_{named[name]}.py").is_file())
    assert not stale, f"UNTESTED entries to remove: {stale}"
