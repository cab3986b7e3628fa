"""Every command line of README.md, run: each ``minift`` example on a small budget, the shell
lines between them as written, and the folders they leave held to the README's output section.

The lines come from the README's fenced ```bash blocks, so a command added there is picked up
here, and a line this file does not know how to cover fails ``test_every_readme_line_is_covered``
instead of being passed over. How each kind of line is covered:

- ``minift ...``: run in a fresh process (``python -m minift``, this checkout's code) in a
  temporary folder, with the budget below and ``$MINIFT_DATA`` a small copy of the data it names
  or its ``--task`` reads (each text file cut to its first 200 lines; a JSON file whole). The main ``finetune --task
  sst2`` command is test_readme.py's (it checks the printed table too).
- ``mkdir``, ``sed ... > FILE``: run as written, in the same temporary folder, before the
  ``minift`` line that reads what they make.
- ``export MINIFT_DATA=...``: replaced by the small data folder.
- ``pip install``: not rerun (it needs the network); ``python -m pytest`` is the suite this file
  belongs to (test_readme_numbers.py counts what it collects).

The budget, the one substitution made to a README command: every option in BUDGET it has (or
accepts, for ``--max-steps``, ``--limit-dev`` and ``--no-progress``) takes the small value, and
every ``--grid NAME=a,b,c`` keeps its first value. A run that trains, or needs one that trains
first, is ``slow`` (a minute or more on 2 cores); the others run in the default suite.
"""

import contextlib
import io
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from test_readme import (
    REPO,
    TIMEOUT_S,
    _env,
    _read,
    bash_blocks,
    commands,
    created_paths,
    data_dir,
    named_paths,
    readme_main_command,
    readme_output_files,
)

README = REPO / "README.md"
# The small budget: the option -> its value in every README command that has it.
BUDGET = {"--limit-train": "64", "--limit-dev": "32", "--max-steps": "2", "--seeds": "1",
          "--dev-from-train": "32", "--eval-every": "1"}
ADDED = ("--max-steps", "--limit-dev")  # also added where the command accepts them
DATA_LINES = 200  # lines of each data file the small copy keeps
NOT_RERUN = {("pip", "install"): "installs from the network",
             ("python", "-m"): "the test suite itself (test_readme_numbers.py counts it)"}
SHELL = ("mkdir", "sed")  # run as written


def readme_lines() -> list[tuple[int, list[str]]]:
    """(line of the block, command) for every command of README.md's ```bash blocks, in order."""
    return [(line, command) for line, block in bash_blocks(_read(README))
            for command in commands(block)]


def coverage(command: list[str]) -> str | None:
    """How this file (or test_readme.py) covers a README command, or None: not covered."""
    if command == readme_main_command():
        return "main"  # test_readme.py runs it and checks its table and folder
    if command[0] == "minift":
        return "run"
    if command[0] in SHELL:
        return "shell"
    if command[0] == "export" and all(t.startswith("MINIFT_DATA=") for t in command[1:]):
        return "data"
    if tuple(command[:2]) in NOT_RERUN and (command[:2] != ["python", "-m"]
                                            or command[2:] == ["pytest"]):
        return "not rerun"
    return None


def _parses(argv: list[str]) -> str:
    """'' when ``minift argv`` parses, else what the parser said."""
    from minift.run.cli import build_parser

    said = io.StringIO()
    try:
        with contextlib.redirect_stderr(said), contextlib.redirect_stdout(io.StringIO()):
            build_parser().parse_args(argv)
    except SystemExit:
        return said.getvalue().strip() or "refused"
    return ""


def budgeted(command: list[str]) -> list[str]:
    """A README ``minift`` command with the small budget (BUDGET, first grid values)."""
    argv = list(command[1:])
    for i, token in enumerate(argv[:-1]):
        if token in BUDGET:
            argv[i + 1] = BUDGET[token]
        elif token == "--grid":
            name, _, values = argv[i + 1].partition("=")
            argv[i + 1] = f"{name}={values.split(',')[0]}"
    for flag in ADDED:
        if flag not in argv and not _parses([*argv, flag, BUDGET[flag]]):
            argv += [flag, BUDGET[flag]]
    if "--no-progress" not in argv and not _parses([*argv, "--no-progress"]):
        argv.append("--no-progress")
    return ["minift", *argv]


def _expand(token: str, data: Path) -> str:
    return re.sub(r"^\$\{?MINIFT_DATA\}?", str(data), token)


def small_copy(paths: list[str], data: Path) -> None:
    """Into ``data``: each ``$MINIFT_DATA/...`` file of ``paths``, cut to DATA_LINES lines (a
    CoNLL file to the next blank line, so no sentence is cut), or whole for JSON."""
    for token in paths:
        if not re.match(r"^\$\{?MINIFT_DATA\}?/", token):
            continue
        source, target = Path(_expand(token, data_dir())), Path(_expand(token, data))
        if target.exists():
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.suffix == ".json":
            target.symlink_to(source)
            continue
        lines = source.read_bytes().splitlines(keepends=True)
        end = DATA_LINES
        if "conll" in str(source):
            while end < len(lines) and lines[end - 1].strip():
                end += 1
        target.write_bytes(b"".join(lines[:end]))


def prerequisites(index: int, lines: list[list[str]]) -> list[int]:
    """The earlier commands that make what command ``index`` names (and theirs), in order."""
    needed, wanted = set(), set(named_paths(lines[index]))
    for i in range(index - 1, -1, -1):
        made = set(created_paths(lines[i]))
        if made & wanted or any(w.startswith(m.rstrip("/") + "/") for m in made for w in wanted):
            needed.add(i)
            wanted |= set(named_paths(lines[i]))
    return sorted(needed)


def trains(command: list[str]) -> bool:
    return command[0] == "minift" and "--out" in command


def run_line(command: list[str], cwd: Path, data: Path) -> subprocess.CompletedProcess:
    """One README line in ``cwd``: ``minift`` with the budget, shell lines as written."""
    named = named_paths(command)
    if "--task" in command:  # a GLUE task's files, from the data folder
        task = command[command.index("--task") + 1]
        named += [f"$MINIFT_DATA/{task}/{f.name}" for f in sorted((data_dir() / task).iterdir())]
    small_copy(named, data)
    env = _env(MINIFT_DATA=str(data))
    if command[0] == "minift":
        argv = [sys.executable, "-m", "minift", *budgeted(command)[1:]]
    else:
        argv = list(command)
    argv = [_expand(token, data) for token in argv]
    output = None
    if ">" in argv:  # sed ... > FILE
        i = argv.index(">")
        argv, output = argv[:i], cwd / argv[i + 1]
    with open(output, "wb") if output else contextlib.nullcontext() as sink:
        done = subprocess.run(argv, cwd=cwd, env=env, stdout=sink or subprocess.PIPE,
                              stderr=subprocess.PIPE, timeout=TIMEOUT_S)
    return subprocess.CompletedProcess(argv, done.returncode,
                                       (done.stdout or b"").decode(errors="replace"),
                                       done.stderr.decode(errors="replace"))


# ---- what the README says a command leaves ------------------------------------------------


def documented_files(command: list[str]) -> tuple[set[str], bool]:
    """The files the README says ``minift COMMAND --out DIR`` leaves, and whether that is all of
    them: the output-folder table for finetune ("exactly these files"); for the others the
    sentence after it, "`ner` adds `a` and `b`" (the table's files and those) or "`setfit`
    writes `a` and `b`" (those, at least)."""
    table = readme_output_files()
    name = command[1]  # finetune, ner, ..., search (whatever TASK it searches)
    if name == "finetune":
        return table, True
    text = " ".join(_read(README).split())
    said = re.search(rf"`{name}` (adds|writes|saves) (.*?)(?=, `\w+` (?:adds|writes|saves)|\. )",
                     text)
    assert said, f"README.md: the output-folder section does not say what `{name}` leaves"
    files = set(re.findall(r"`([\w.]+/?)`", said.group(2)))
    if said.group(1) == "adds":
        return table | files, True
    if said.group(1) == "saves":
        return table, True  # "saves the encoder with its MLM head": the same layout
    return files, False


def left_in(folder: Path) -> set[str]:
    return {p.name + ("/" if p.is_dir() else "") for p in folder.iterdir()}


def test_documented_files_read_the_readme():
    """The rule above reads what the README says (a test of the test, so it can fail)."""
    table = readme_output_files()
    ner, exact = documented_files(["minift", "ner", "--out", "x"])
    assert exact and ner - table == {"dev_predictions.txt", "test_predictions.txt"}
    search, exact = documented_files(["minift", "search", "finetune", "--out", "x"])
    assert not exact and {"search.md", "trials.jsonl", "model/"} <= search


# ---- the tests -------------------------------------------------------------------------------


def test_every_readme_line_is_covered():
    lines = readme_lines()
    assert any(c[0] == "minift" and coverage(c) == "run" for _, c in lines), lines
    loose = [f"README.md:{line}: {shlex.join(c)}" for line, c in lines if coverage(c) is None]
    assert not loose, ("README lines this file does not know how to run (teach "
                       "tests/test_readme_commands.py, or drop them):\n" + "\n".join(loose))
    assert coverage(["torchrun", "-m", "minift"]) is None  # a new kind of line is not let by
    assert coverage(["python", "-m", "pip"]) is None


def test_every_command_of_the_table_has_an_example():
    """Each command of '## The commands' has a line in a bash block that runs it."""
    text = _read(README)
    section = re.search(r"^## The commands\n(.*?)(?=^## )", text, re.S | re.M).group(1)
    listed = re.findall(r"^\| `minift (\w+)", section, re.M)
    assert len(listed) >= 8, listed
    run = {c[1] for _, c in readme_lines() if c[0] == "minift"}
    assert set(listed) <= run, f"README.md: no example runs {sorted(set(listed) - run)}"


def test_every_readme_minift_line_parses_with_its_budget():
    """Each ``minift`` line, as written and with the budget, is what minift's parser takes (a
    wrong flag in the README fails here in a second, before the slow runs)."""
    for line, command in readme_lines():
        if command[0] == "minift":
            for argv in (command[1:], budgeted(command)[1:]):
                said = _parses(argv)
                assert not said, f"README.md:{line}: `minift {shlex.join(argv)}`: {said}"
    grid = budgeted(["minift", "search", "finetune", "--grid", "lr=1,2", "--seeds", "5"])
    assert "lr=1" in grid and grid[grid.index("--seeds") + 1] == "1"


def _runs() -> list:
    lines = [c for _, c in readme_lines()]
    params = []
    for i, command in enumerate(lines):
        if coverage(command) != "run":
            continue
        chain = [*prerequisites(i, lines), i]
        slow = any(trains(lines[j]) for j in chain)
        params.append(pytest.param([lines[j] for j in chain], id=shlex.join(command[:2]),
                                   marks=[pytest.mark.slow] if slow else []))
    return params


@pytest.mark.parametrize("chain", _runs())
def test_readme_command_runs_on_a_small_budget(chain: list[list[str]], tmp_path: Path):
    """The command (after the lines that make what it reads) exits 0, and leaves the files the
    README says it leaves."""
    data = tmp_path / "data"
    work = tmp_path / "work"
    work.mkdir()
    for command in chain:
        done = run_line(command, work, data)
        assert done.returncode == 0, (f"README line `{shlex.join(command)}` failed, run as "
                                      f"`{shlex.join(done.args)}`:\n{done.stderr[-4000:]}")
    command = chain[-1]
    if command[1] == "plot":
        pictures = [p for p in (work / command[2]).glob("*.png")]
        assert pictures, f"`{shlex.join(command)}` drew no PNG in {command[2]}"
    if trains(command):
        out = work / command[command.index("--out") + 1]
        files, exact = documented_files(command)
        left = left_in(out)
        assert (left == files) if exact else (files <= left), (
            f"`{shlex.join(command)}` left {sorted(left)}; the README says "
            f"{'exactly ' if exact else ''}{sorted(files)}")
