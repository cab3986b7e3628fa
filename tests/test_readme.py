"""The README says what a new user will see: its shell commands parse and name real files, and
its main command, run on a small budget, prints the table and leaves the folder it describes.

- Every fenced ```bash block of README.md and lessons/README.md parses with ``bash -n``, and
  every path it names exists, or an earlier command of the same document creates it (``--out
  DIR``, ``> FILE``, ``mkdir -p DIR``, ``jupytext --to notebook X.py`` -> ``X.ipynb``).
  ``$MINIFT_DATA`` is expanded to the data folder the tests use; ``path/to/...`` is a
  placeholder the reader fills in.
- Every module, name or file of minift that README.md, lessons/README.md and the lessons cite
  (``minift.core.loop.train``, ``minift/fast/unpad.py``) exists, and so does every file of the
  README's tree; every folder of ``minift/`` is in that tree.
- The README's ``minift finetune --task sst2 ...`` runs as written except for its budget (64
  training sentences, a 64-sentence copy of the dev set through ``--data-dir``) and its
  ``--out``; what it prints has the README's table header and its ``before`` / ``after`` rows,
  and the output folder holds exactly the files of the README's output-folder table, of the
  sizes it states.
- The README's Python example (its ``## From Python`` block) runs on the same small budget; the
  README is short (at most 2,000 words) and shows the bare ``minift ...`` line that reruns the
  job without reinstalling. Its other commands run in test_readme_commands.py, and every number
  it states is checked in test_readme_numbers.py (the counts computed there: tests, steps,
  vocabulary, parameters).
- Every relative link of README.md, lessons/README.md and benchmarks/RESULTS.md names a file
  that is there, and the lessons' shell loops reach every lesson.
"""

import importlib
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCUMENTS = [REPO / "README.md", REPO / "lessons" / "README.md"]
RESULTS = REPO / "benchmarks" / "RESULTS.md"  # the claims, results and speed tables
# Where minift's modules are cited: the READMEs, the results page and the lessons' prose and code.
CITING = [*DOCUMENTS, RESULTS, *sorted((REPO / "lessons").glob("[0-9][0-9]_*.py"))]
# A citation of minift: `minift.core.loop.train` (a module, then names in it) or
# `minift/fast/unpad.py` (a file or folder). Not `~/.cache/minift/...` or `.minift.lock`.
CITATION = re.compile(r"(?<![\w/.-])minift(?:[./][A-Za-z_]\w*)+(?:\.py)?")
PLACEHOLDER = "path/to/"  # the reader's own checkpoint folder
# A path: $MINIFT_DATA/..., an absolute path, or a relative one with at least one slash.
PATH = re.compile(r"^(\$\{?MINIFT_DATA\}?|/?[\w.-]+)(/[\w.@-]+)+/?$")
TIMEOUT_S = 300
MAX_WORDS = 2000  # a README a newcomer reads in five minutes


def _read(document: Path) -> str:
    return document.read_text(encoding="utf-8")


def bash_blocks(text: str) -> list[tuple[int, str]]:
    """(line number of the opening fence, body) of every ```bash block."""
    blocks, body, start = [], None, 0
    for number, line in enumerate(text.splitlines(), start=1):
        if body is None and line.strip() == "```bash":
            body, start = [], number
        elif body is not None and line.strip() == "```":
            blocks.append((start, "\n".join(body)))
            body = None
        elif body is not None:
            body.append(line)
    assert body is None, f"a ```bash block opened at line {start} is never closed"
    return blocks


def commands(block: str) -> list[list[str]]:
    """The simple commands of a block: continuation lines joined, comments dropped, split on
    ``&&``, ``||``, ``;`` and ``|`` (redirections stay in the command as ``>`` tokens)."""
    found = []
    for line in block.replace("\\\n", " ").splitlines():
        lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        lexer.commenters = "#"
        lexer.wordchars += "$={}[]:+@,%"
        current: list[str] = []
        for token in lexer:
            if token in ("&&", "||", ";", "|"):
                found.append(current)
                current = []
            else:
                current.append(token)
        found.append(current)
    return [c for c in found if c]


def data_dir() -> Path:
    return Path(os.environ.get("MINIFT_DATA") or REPO.parent / "shared" / "data")


def _expand(token: str) -> Path:
    expanded = re.sub(r"^\$\{?MINIFT_DATA\}?", str(data_dir()), token)
    return Path(expanded) if os.path.isabs(expanded) else REPO / expanded


def named_paths(command: list[str]) -> list[str]:
    """The tokens of a command that name files or folders (an option's ``=value`` included)."""
    found = []
    for token in command:
        value = token.split("=", 1)[1] if token.startswith("-") and "=" in token else token
        if "=" in value and not value.startswith("$"):
            continue  # a variable assignment (export NAME=value): the environment, not a file
        if PATH.match(value) and "://" not in value and not value.startswith(PLACEHOLDER):
            found.append(value)
    return found


def created_paths(command: list[str]) -> list[str]:
    """What a command creates: --out DIR, > FILE, mkdir -p DIR, jupytext --to notebook X.py."""
    created = []
    for i, token in enumerate(command[:-1]):
        if token in ("--out", ">", ">>"):
            created.append(command[i + 1])
    if command[:1] == ["mkdir"]:
        created += [t for t in command[1:] if not t.startswith("-")]
    if command[:3] == ["jupytext", "--to", "notebook"]:
        created += [re.sub(r"\.py$", ".ipynb", t) for t in command[3:] if t.endswith(".py")]
    return created


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


@pytest.mark.parametrize("document", DOCUMENTS, ids=[str(d.relative_to(REPO)) for d in DOCUMENTS])
def test_every_bash_block_parses(document: Path):
    blocks = bash_blocks(_read(document))
    assert blocks, f"{document.name}: no ```bash block found"
    for line, block in blocks:
        result = subprocess.run(["bash", "-n"], input=block, capture_output=True, text=True)
        assert result.returncode == 0, (
            f"{document.relative_to(REPO)}:{line}: the bash block does not parse:\n"
            f"{result.stderr}\n{block}")


@pytest.mark.parametrize("document", DOCUMENTS, ids=[str(d.relative_to(REPO)) for d in DOCUMENTS])
def test_every_named_file_exists_or_is_made_first(document: Path):
    created: list[Path] = []
    missing = []
    for line, block in bash_blocks(_read(document)):
        for command in commands(block):
            made = [_expand(p) for p in created_paths(command)]
            for name in named_paths(command):
                path = _expand(name)
                if path in made:
                    continue  # this command makes it
                if not (path.exists() or any(_inside(path, c) for c in created)):
                    missing.append(f"{document.relative_to(REPO)}:{line}: {name} "
                                   f"(in: {shlex.join(command)})")
            created += made
    assert not missing, "files named in bash blocks that neither exist nor are made " \
                        "by an earlier command:\n" + "\n".join(missing)


def test_the_path_rules_see_paths():
    """The rules above find what they must (a test of the test, so it can fail)."""
    block = ("mkdir -p runs && sed 's/@[a-z]*$//' $MINIFT_DATA/x/y.txt > runs/d.txt\n"
             "minift pretrain --text runs/d.txt --out runs/a \\\n    --model=path/to/ckpt  # c/d")
    cmds = commands(block)
    assert [c[0] for c in cmds] == ["mkdir", "sed", "minift"]
    assert named_paths(cmds[1]) == ["$MINIFT_DATA/x/y.txt", "runs/d.txt"]
    assert created_paths(cmds[1]) == ["runs/d.txt"]
    assert named_paths(cmds[2]) == ["runs/d.txt", "runs/a"]
    assert created_paths(cmds[2]) == ["runs/a"]


# ---- what the documents cite of minift ------------------------------------------------------


def resolves(citation: str) -> bool:
    """Whether a citation names something that is there: a file or folder for a path, else the
    longest importable module prefix and then attributes of it."""
    if "/" in citation:
        path = REPO / citation
        return path.exists() or path.with_suffix(".py").exists()
    parts = citation.split(".")
    for i in range(len(parts), 0, -1):
        try:
            found = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for name in parts[i:]:
            if not hasattr(found, name):
                return False
            found = getattr(found, name)
        return True
    return False


@pytest.mark.parametrize("document", CITING, ids=[str(d.relative_to(REPO)) for d in CITING])
def test_every_cited_module_exists(document: Path):
    stale = [f"{document.relative_to(REPO)}:{number}: {citation}"
             for number, line in enumerate(_read(document).splitlines(), start=1)
             for citation in CITATION.findall(line) if not resolves(citation)]
    assert not stale, "cited but not in minift (renamed or moved?):\n" + "\n".join(stale)


PACKAGE_README = REPO / "minift" / "README.md"  # the tree, in reading order


def readme_tree() -> list[str]:
    """The paths of minift/README.md's tree (``minift/core/model.py``, ``minift/run/``)."""
    text = _read(PACKAGE_README)
    match = re.search(r"^# The package, in reading order\n.*?```\n(.*?)```", text, re.S | re.M)
    assert match, f"{PACKAGE_README}: no '# The package, in reading order' with a ``` block"
    paths, parents = [], []
    for line in match.group(1).splitlines():
        entry = re.match(r"^( *)(\w+/|\w+\.\w+)(?:\s|$)", line)  # a folder/ or a file.ext
        depth = len(entry.group(1)) // 2 if entry else 0
        if not entry or depth > len(parents):
            continue  # a description, or its continuation line (indented further)
        parents = parents[:depth] + [entry.group(2)]
        paths.append("".join(parents))
    return paths


def test_the_package_tree_is_the_package():
    """minift/README.md's tree lists every module of the package, and nothing else; the README
    links to it."""
    paths = readme_tree()
    missing = [path for path in paths if not (REPO / path).exists()]
    assert not missing, f"{PACKAGE_README}'s tree lists what is not there: {missing}"
    modules = sorted(str(p.relative_to(REPO)) for p in (REPO / "minift").rglob("*.py")
                     if p.name != "__init__.py" or p.parent.parent.name == "run")
    folders = sorted(f"{p.parent.relative_to(REPO)}/" for p in (REPO / "minift").rglob("__init__.py"))
    absent = [path for path in modules + folders if path not in paths]
    assert not absent, f"{PACKAGE_README}'s tree leaves out {absent}"
    assert "(minift/README.md)" in _read(REPO / "README.md"), "README.md does not link the tree"


def test_the_citation_rules_see_citations():
    """The rules above find what they must (a test of the test, so it can fail)."""
    line = "see `minift.core.loop.train`, minift/fast/unpad.py, ~/.cache/minift/x and .minift.lock"
    assert CITATION.findall(line) == ["minift.core.loop.train", "minift/fast/unpad.py"]
    assert resolves("minift.core.loop.train") and resolves("minift/fast/unpad.py")
    assert not resolves("minift.train.train") and not resolves("minift/padding.py")
    assert not resolves("minift.core.loop.no_such_name")


# ---- the main command, run -------------------------------------------------------------------


def readme_main_command() -> list[str]:
    """The README's ``minift finetune --task sst2 ...`` (from its first bash block)."""
    for _, block in bash_blocks(_read(REPO / "README.md")):
        for command in commands(block):
            if command[:4] == ["minift", "finetune", "--task", "sst2"]:
                return command
    raise AssertionError("README.md: no bash block runs `minift finetune --task sst2 ...`")


def readme_table() -> tuple[list[str], list[str]]:
    """The header cells and the row names of the README's example table."""
    text = _read(REPO / "README.md")
    match = re.search(r"```\n(\|.*?)```", text, re.S)
    assert match, "README.md: no example table (a ``` block of | rows) found"
    rows = [line for line in match.group(1).splitlines() if line.startswith("|")]
    return _cells(rows[0]), [_cells(row)[0] for row in rows[2:]]


def readme_output_files() -> set[str]:
    """The files of the README's output-folder table (first column, `name`)."""
    text = _read(REPO / "README.md")
    match = re.search(r"^## The output folder\n(.*?)(?=^## )", text, re.S | re.M)
    assert match, "README.md: no '## The output folder' section found"
    names = re.findall(r"^\| `([^`]+)` \|", match.group(1), re.M)
    assert names, "README.md: the output-folder section has no table of `file` rows"
    return set(names)


def _cells(row: str) -> list[str]:
    return [cell.strip() for cell in row.strip().strip("|").split("|")]


def _with(command: list[str], option: str, value: str) -> list[str]:
    """``command`` with ``option``'s value replaced (or the option added)."""
    if option in command:
        i = command.index(option)
        return command[:i + 1] + [value] + command[i + 2:]
    return command + [option, value]


def readme_output_sizes() -> dict[str, tuple[float, str, str]]:
    """The size column of the output-folder table: file -> (number, unit, the cell as written)."""
    text = _read(REPO / "README.md")
    section = re.search(r"^## The output folder\n(.*?)(?=^## )", text, re.S | re.M).group(1)
    sizes = {}
    for name, cell in re.findall(r"^\| `([^`]+)` \|.*\| ([^|]+) \|$", section, re.M):
        match = re.fullmatch(r"([\d.]+) (B|kB|MB)( a line)?", cell.strip())
        assert match, f"README.md: the size of {name} is {cell!r}, not 'N B|kB|MB [a line]'"
        sizes[name] = (float(match.group(1)), match.group(2), cell.strip())
    return sizes


UNITS = {"B": 1, "kB": 1000, "MB": 1000 ** 2}
# Sizes that depend on the run: the small run's metrics.json holds other numbers than the
# README's 125-step run (a few digits more or less), so it is held to 25% instead of rounding.
# Sizes that depend on the run (metrics.json) or on its paths (the run record names the data
# files and --out): the share they may differ by between the README's run and the test's.
RUN_DEPENDENT = {"metrics.json": 0.25, ".minift-run.json": 0.25}


def check_sizes(out: Path, sizes: dict[str, tuple[float, str, str]]) -> list[str]:
    """What of ``sizes`` the folder ``out`` contradicts: each size, rounded as the README writes
    it, is the file's (per line for "a line")."""
    wrong = []
    for name, (number, unit, cell) in sizes.items():
        file = out / name
        size = file.stat().st_size
        if cell.endswith("a line"):
            size /= max(1, len(file.read_bytes().splitlines()))
        decimals = len(cell.split()[0].partition(".")[2])
        measured = size / UNITS[unit]
        tolerance = RUN_DEPENDENT.get(name)
        if tolerance is not None:
            ok = abs(measured - number) <= tolerance * number
        else:
            ok = round(measured, decimals) == number
        if not ok:
            wrong.append(f"{name}: README says {cell}, the run left {size:.0f} B")
    return wrong


def test_the_size_rules_see_sizes(tmp_path):
    """The size check finds a wrong size (a test of the test, so it can fail)."""
    (tmp_path / "a.json").write_bytes(b"x" * 640)
    (tmp_path / "log.jsonl").write_bytes(b"y" * 99 + b"\n" + b"z" * 99 + b"\n")
    assert not check_sizes(tmp_path, {"a.json": (0.6, "kB", "0.6 kB"),
                                      "log.jsonl": (0.1, "kB", "0.1 kB a line")})
    assert check_sizes(tmp_path, {"a.json": (0.7, "kB", "0.7 kB")})
    assert check_sizes(tmp_path, {"log.jsonl": (0.2, "kB", "0.2 kB a line")})


@pytest.fixture(scope="module")
def small_data(tmp_path_factory, data_dir) -> Path:
    """A data folder with SST-2's train.tsv and the first 64 sentences of its dev.tsv."""
    folder = tmp_path_factory.mktemp("data")
    (folder / "sst2").mkdir()
    (folder / "sst2" / "train.tsv").symlink_to(data_dir / "sst2" / "train.tsv")
    dev_lines = (data_dir / "sst2" / "dev.tsv").read_text(encoding="utf-8").splitlines(True)
    (folder / "sst2" / "dev.tsv").write_text("".join(dev_lines[:65]), encoding="utf-8")
    return folder


def _env(**extra: str) -> dict[str, str]:
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    return dict(os.environ, PYTHONPATH=path, **extra)


def test_readme_main_command_prints_its_table_and_leaves_its_folder(tmp_path, small_data):
    command = readme_main_command()
    assert "--out" in command and "--limit-train" in command, shlex.join(command)
    # A small budget: 64 training sentences (2 steps) and the first 64 dev sentences.
    out = tmp_path / "sst2"
    command = _with(command, "--limit-train", "64")
    command = _with(_with(command, "--out", str(out)), "--data-dir", str(small_data))
    result = subprocess.run([sys.executable, "-m", "minift", *command[1:], "--no-progress"],
                            cwd=tmp_path, env=_env(), capture_output=True, text=True,
                            timeout=TIMEOUT_S)
    assert result.returncode == 0, f"{shlex.join(command)} failed:\n{result.stderr[-4000:]}"

    # What it prints: the README's header row, then its rows, each with a number per column.
    header, names = readme_table()
    lines = [line for line in result.stdout.splitlines() if line.startswith("|")]
    assert lines and _cells(lines[0]) == header, (
        f"the command's table header {lines[:1]} is not the README's {header}\n{result.stdout}")
    printed = [_cells(line) for line in lines[2:]]
    assert [row[0] for row in printed] == names, (
        f"the command's rows {[row[0] for row in printed]} are not the README's {names}")
    for row in printed:
        assert len(row) == len(header) and all(re.fullmatch(r"\d\.\d{4}", c) for c in row[1:]), \
            f"row {row} is not {len(header) - 1} numbers with 4 decimals, as in the README"

    # What it leaves: exactly the README's files (so no resume.pt, run/ or best/).
    left = {path.name for path in out.iterdir()}
    documented = readme_output_files()
    assert left == documented, (
        f"{out} holds {sorted(left)}; the README's output-folder table lists "
        f"{sorted(documented)} (left but not documented: {sorted(left - documented)}; "
        f"documented but not left: {sorted(documented - left)})")
    # Of the sizes the README states.
    sizes = readme_output_sizes()
    assert set(sizes) == documented, f"README.md: the output-folder table lacks sizes: {sizes}"
    wrong = check_sizes(out, sizes)
    assert not wrong, "README.md's output-folder sizes are not the run's:\n" + "\n".join(wrong)


# ---- the README itself: short, its rerun line, its counts, its Python example ----------------


def test_readme_is_short():
    words = len(_read(REPO / "README.md").split())
    assert words <= MAX_WORDS, (f"README.md has {words} words; at most {MAX_WORDS} (the results "
                                f"go to {RESULTS.relative_to(REPO)})")


def test_readme_shows_the_bare_rerun_line():
    """The install line runs the job once; a block of its own reruns it without ``pip install``."""
    main = readme_main_command()
    bare = [block for _, block in bash_blocks(_read(REPO / "README.md"))
            if main in commands(block) and not any(c[:1] == ["pip"] for c in commands(block))]
    assert bare, f"README.md: no bash block reruns `{shlex.join(main)}` without pip install"
    assert any(c[0] == "export" and c[1].startswith("MINIFT_DATA=") for c in commands(bare[0])), \
        "README.md: the rerun block does not set MINIFT_DATA"


def collected_tests() -> int:
    """How many tests ``python -m pytest`` runs (the slow ones left out, as pyproject says)."""
    done = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q",
                           "-p", "no:cacheprovider"], cwd=REPO, env=_env(), capture_output=True,
                          text=True, timeout=TIMEOUT_S)
    match = re.search(r"^(\d+)(?:/\d+)? tests? collected", done.stdout, re.M)
    assert match, f"pytest --collect-only printed no count:\n{done.stdout[-2000:]}{done.stderr}"
    return int(match.group(1))


def vocabulary_size() -> int:
    from minift.data.tokenizer import named_checkpoint

    return len((named_checkpoint("minilm") / "vocab.txt").read_text(encoding="utf-8").splitlines())


def minilm_classifier_parameters() -> float:
    """The parameters of the README command's classifier, in millions (what the README's table
    says): MiniLM with a 2-label head on its own pooling (mean: no pooler)."""
    from minift.tasks.classify import SequenceClassifier

    model = SequenceClassifier.from_pretrained("minilm", num_labels=2)
    return sum(p.numel() for p in model.parameters()) / 1e6


def readme_python_example() -> str:
    text = _read(REPO / "README.md")
    match = re.search(r"^## From Python\n.*?```python\n(.*?)```", text, re.S | re.M)
    assert match, "README.md: no ```python block in a '## From Python' section"
    return match.group(1)


def test_readme_python_example_runs(tmp_path, small_data):
    example = readme_python_example()
    lines = [line for line in example.splitlines() if line.strip()]
    assert len(lines) <= 10, f"README.md's Python example has {len(lines)} lines; at most 10"
    assert "limit_train=4000" in example and 'out="' in example, example
    small = example.replace("limit_train=4000", "limit_train=64")
    small = re.sub(r'out="[^"]*"', f"out={str(tmp_path / 'run')!r}", small)
    # Its budget is the main command's (the same job, from Python).
    main = readme_main_command()
    for name in ("limit_train", "epochs", "max_length"):
        value = main[main.index("--" + name.replace("_", "-")) + 1]
        assert f"{name}={value}," in example, f"README.md's example: {name} is not {value}"
    # What encode's comment says: its shape and each vector's length, printed to be checked.
    small += "\nprint('vectors', tuple(vectors.shape), round(float(vectors[0].norm()), 4))\n"
    result = subprocess.run([sys.executable, "-c", small], cwd=tmp_path, capture_output=True,
                            text=True, timeout=TIMEOUT_S,
                            env=_env(MINIFT_DATA=str(small_data)))
    assert result.returncode == 0, f"README.md's Python example failed:\n{result.stderr[-4000:]}"
    # What its comments promise: (2 texts, 7 tokens, 384), a similarity, an accuracy.
    shape = re.search(r"# \((\d+) texts, (\d+) tokens, (\d+)\)", example).groups()
    assert f"torch.Size([{', '.join(shape)}])" in result.stdout, result.stdout
    assert re.search(r"cosine similarity 0\.\d\d", result.stdout), result.stdout
    rows, width, length = re.search(r"# \((\d+), (\d+)\), length (\d+)", example).groups()
    assert f"vectors ({rows}, {width}) {float(length)}" in result.stdout, result.stdout
    assert (tmp_path / "run" / "model.safetensors").is_file()


def test_front_door_names_take_minilm_and_import_no_torch():
    script = ("import sys, minift\n"
              "assert 'torch' not in sys.modules, 'import minift imported torch'\n"
              "missing = [n for n in minift.__all__ if not hasattr(minift, n)]\n"
              "assert not missing, missing\n"
              "from minift.data.tokenizer import Tokenizer, named_checkpoint\n"
              "a = minift.Tokenizer.from_pretrained('minilm')\n"
              "b = Tokenizer.from_pretrained(named_checkpoint('minilm'))\n"
              "assert a(['a cat sat']).input_ids.tolist() == b(['a cat sat']).input_ids.tolist()\n"
              "for name in ('finetune', 'ner', 'pretrain', 'setfit', 'qa'):\n"
              "    assert callable(getattr(minift, name))\n"
              "v = minift.encode(['a cat sat', 'a dog ran'], 'minilm')\n"
              "assert tuple(v.shape) == (2, 384) and abs(float(v[0].norm()) - 1) < 1e-5\n"
              "model = minift.load_bert(named_checkpoint('minilm'))\n"
              "assert (minift.encode(['a cat sat'], model, a) - v[:1]).abs().max() < 1e-6\n"
              "try:\n"
              "    minift.encode(['a'], model)\n"
              "except ValueError as error:\n"
              "    assert 'tokenizer' in str(error)\n"
              "else:\n"
              "    raise AssertionError('a loaded model without its tokenizer was accepted')\n")
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=_env(),
                          capture_output=True, text=True, timeout=TIMEOUT_S)
    assert done.returncode == 0, done.stderr[-4000:]


# ---- links and loops -------------------------------------------------------------------------


LINK = re.compile(r"\]\(([^)\s#]+)(?:#[^)]*)?\)|src=\"([^\"]+)\"")


@pytest.mark.parametrize("document", [*DOCUMENTS, RESULTS],
                         ids=[str(d.relative_to(REPO)) for d in [*DOCUMENTS, RESULTS]])
def test_every_relative_link_names_a_file(document: Path):
    broken = [f"{document.relative_to(REPO)}:{number}: {target}"
              for number, line in enumerate(_read(document).splitlines(), start=1)
              for target in (a or b for a, b in LINK.findall(line))
              if "://" not in target and not (document.parent / target).exists()]
    assert not broken, "links to files that are not there:\n" + "\n".join(broken)


def test_lesson_loops_reach_every_lesson():
    """A ``for x in lessons/GLOB`` loop of lessons/README.md runs every lesson (not 01-08 of 10)."""
    lessons = sorted(p.relative_to(REPO) for p in (REPO / "lessons").glob("[0-9][0-9]_*.py"))
    loops = re.findall(r"\bfor \w+ in (lessons/\S+);", _read(REPO / "lessons" / "README.md"))
    assert loops, "lessons/README.md: no `for lesson in lessons/...;` loop found"
    for glob in loops:
        reached = sorted(p.relative_to(REPO) for p in REPO.glob(glob))
        assert reached == lessons, f"lessons/README.md: `{glob}` reaches {reached}, not {lessons}"
