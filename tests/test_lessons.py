"""Every lesson runs to the end in quick mode, starts with prose, and is listed in the README;
the code a lesson quotes from minift in its prose is the code in minift.

Each `lessons/NN_*.py` runs as its own test, in a fresh interpreter (as a reader would run it),
with MINIFT_QUICK=1; the CPU seconds each took are printed at the end (conftest.py). A lesson checks its own claims (it raises when the numbers it prints stop
agreeing with the reference), so a passing run means more than "no syntax error".
"""

import importlib.util
import json
import os
import re
import resource
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import LESSON_CPU_SECONDS
from png import assert_picture, grey_difference

REPO = Path(__file__).resolve().parents[1]
LESSONS_DIR = REPO / "lessons"
LESSONS = sorted(LESSONS_DIR.glob("[0-9][0-9]_*.py"))
TIMEOUT_S = 600
TAIL_CHARS = 4000
FIGURES_DIR = LESSONS_DIR / "figures"
# The figures each lesson saves under lessons/figures/NN/, with their size in pixels.
FIGURES = {
    "01": {"attention_heads.png": (1200, 960), "embeddings_pca.png": (700, 550)},
    "02": {"loss_curves.png": (1100, 420), "confusion_matrix.png": (600, 500)},
    "03": {"freezing.png": (1000, 420)},
    "04": {"subword_labels.png": (1300, 340), "f1_per_type.png": (800, 420)},
    "05": {"masking_map.png": (1300, 560)},
    "06": {"embeddings_before_after.png": (1200, 540), "accuracy.png": (700, 360)},
    "07": {"padding.png": (1300, 420), "speed.png": (800, 420)},
    "08": {"gradient_agreement.png": (650, 550), "checkpointing.png": (1100, 420)},
    "09": {"windows.png": (1000, 300)},
    "10": {"benchmark_search.png": (800, 450), "lesson_search.png": (800, 450)},
    "11": {"segment_ids.png": (1200, 480), "accuracy.png": (1100, 420)},
    "12": {"perplexity.png": (1100, 420)},
    "13": {"causal_mask.png": (1100, 480), "cross_attention.png": (1100, 550),
           "bleu_beams.png": (700, 420)},
}


def _thumbnails_module():
    """lessons/make_thumbnails.py, imported from its file (lessons/ is no package)."""
    spec = importlib.util.spec_from_file_location("make_thumbnails",
                                                  LESSONS_DIR / "make_thumbnails.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # Pillow: a dev dependency (matplotlib's)
    return module


THUMBNAILS = _thumbnails_module()
THUMBNAIL_TOLERANCE = 3.0  # mean grey-level difference, 0-255


def test_there_are_lessons():
    assert LESSONS, f"no lessons/NN_*.py found in {LESSONS_DIR}"


def _lesson_env() -> dict[str, str]:
    env = dict(os.environ)
    env["MINIFT_QUICK"] = "1"
    env.setdefault("HF_HUB_OFFLINE", "1")
    # The repository root first, so the lesson imports this checkout's minift even when the
    # installed one points elsewhere. MINIFT_DATA passes through (conftest sets its default).
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


@pytest.mark.slow  # a minute or two each: CI runs them in its second step (`pytest -m slow`)
@pytest.mark.parametrize("lesson", LESSONS, ids=[path.name for path in LESSONS])
def test_lesson_runs_in_quick_mode(lesson: Path):
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    try:
        result = subprocess.run(
            [sys.executable, str(lesson.relative_to(REPO))],
            cwd=REPO,
            env=_lesson_env(),
            capture_output=True,
            text=True,
            timeout=TIMEOUT_S,
        )
    except subprocess.TimeoutExpired as err:
        out = err.stdout or b""  # bytes even with text=True
        out = out.decode("utf-8", "replace") if isinstance(out, bytes) else out
        pytest.fail(f"{lesson.name} ran past {TIMEOUT_S} s; stdout (tail):\n{out[-TAIL_CHARS:]}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    LESSON_CPU_SECONDS[lesson.name] = (after.ru_utime - before.ru_utime
                                       + after.ru_stime - before.ru_stime)
    assert result.returncode == 0, (
        f"{lesson.name} exited with {result.returncode}\n"
        f"--- stdout (tail) ---\n{result.stdout[-TAIL_CHARS:]}\n"
        f"--- stderr (tail) ---\n{result.stderr[-TAIL_CHARS:]}"
    )
    if importlib.util.find_spec("matplotlib") is None:
        assert "figures skipped" in result.stdout
        return
    # The lesson's figures: written, decodable, of their size, not blank; and nothing else.
    expected = FIGURES.get(lesson.name[:2], {})
    folder = FIGURES_DIR / lesson.name[:2]
    assert expected, f"{lesson.name}: no figures listed in FIGURES of {Path(__file__).name}"
    written = sorted(p.name for p in folder.glob("*.png")) if folder.is_dir() else []
    assert written == sorted(expected), f"{lesson.name}: wrote {written}, expected {sorted(expected)}"
    for name, size in expected.items():
        assert_picture(folder / name, size)
    # The README's thumbnail is this run's figure, shrunk (lessons/make_thumbnails.py): it fails
    # once a lesson draws another picture. The tolerance leaves room for the last digits of the
    # numbers drawn, which move from CPU to CPU.
    number = lesson.name[:2]
    made = THUMBNAILS.thumbnail(folder / THUMBNAILS.CHOSEN[number])
    difference = grey_difference(made, THUMBNAILS.THUMBNAILS / f"{number}.png")
    assert difference <= THUMBNAIL_TOLERANCE, (
        f"lessons/thumbnails/{number}.png differs from {number}/{THUMBNAILS.CHOSEN[number]} by "
        f"{difference:.2f} grey levels on average (> {THUMBNAIL_TOLERANCE}): run python "
        "lessons/make_thumbnails.py after the lessons")


@pytest.mark.parametrize("lesson", LESSONS, ids=[path.name for path in LESSONS])
def test_lesson_starts_with_a_markdown_cell(lesson: Path):
    first = lesson.read_text(encoding="utf-8").splitlines()[0]
    assert first == "# %% [markdown]", (
        f"{lesson.name}:1: expected the first line '# %% [markdown]' (a prose cell), "
        f"found {first!r}"
    )


@pytest.mark.parametrize("lesson", LESSONS, ids=[path.name for path in LESSONS])
def test_lesson_cells_are_jupytext_percent(lesson: Path):
    """Only `# %%` and `# %% [markdown]` cell markers; markdown cells hold only comment lines."""
    in_markdown = False
    for number, line in enumerate(lesson.read_text(encoding="utf-8").splitlines(), start=1):
        if line.startswith("# %%"):
            assert line in ("# %%", "# %% [markdown]"), (
                f"{lesson.name}:{number}: expected '# %%' or '# %% [markdown]', found {line!r}"
            )
            in_markdown = line == "# %% [markdown]"
        elif in_markdown and line:
            assert line == "#" or line.startswith("# "), (
                f"{lesson.name}:{number}: a markdown cell holds only '# ' comment lines, "
                f"found {line!r}"
            )


def test_readme_lists_every_lesson():
    readme = (LESSONS_DIR / "README.md").read_text(encoding="utf-8")
    missing = [path.name for path in LESSONS if path.name not in readme]
    assert not missing, f"lessons/README.md does not mention {', '.join(missing)}"
    # And lists nothing that is not there (a renamed or deleted lesson).
    listed = set(re.findall(r"\b\d\d_\w+\.py\b", readme))
    stale = sorted(listed - {path.name for path in LESSONS})
    assert not stale, f"lessons/README.md lists lessons that do not exist: {', '.join(stale)}"


@pytest.mark.parametrize("lesson", LESSONS, ids=[path.name for path in LESSONS])
def test_lesson_has_a_small_thumbnail_in_the_readme(lesson: Path):
    """lessons/thumbnails/NN.png (made by lessons/make_thumbnails.py) is small and shown."""
    thumbnail = LESSONS_DIR / "thumbnails" / f"{lesson.name[:2]}.png"
    assert thumbnail.is_file(), f"{thumbnail} is missing: run python lessons/make_thumbnails.py"
    size = thumbnail.stat().st_size
    assert size <= THUMBNAILS.MAX_BYTES, f"{thumbnail}: {size:,} bytes"
    assert_picture(thumbnail)
    readme = (LESSONS_DIR / "README.md").read_text(encoding="utf-8")
    assert f"(thumbnails/{thumbnail.name})" in readme, f"lessons/README.md does not show {thumbnail}"


# A listing: a ```python fence in a markdown cell whose first line names the file it quotes.
LISTING_SOURCE = re.compile(r"^# (minift/[\w/]+\.py)$")
ELISION = "# ..."  # a line of a listing that stands for lines left out (a docstring, say)


def listings(lesson: Path) -> list[tuple[int, str, list[str]]]:
    """The source listings of a lesson's markdown cells: (line of the fence, quoted file, the
    listing's lines without their ``# `` prefix). Fences that name no minift file are not
    listings (an example command, a sketch)."""
    found, block, start, in_markdown = [], None, 0, False
    for number, line in enumerate(lesson.read_text(encoding="utf-8").splitlines(), start=1):
        if line.startswith("# %%"):
            in_markdown, block = line == "# %% [markdown]", None
        elif in_markdown and block is None and line == "# ```python":
            block, start = [], number
        elif in_markdown and block is not None and line == "# ```":
            if block and LISTING_SOURCE.match(block[0]):
                found.append((start, LISTING_SOURCE.match(block[0])[1], block[1:]))
            block = None
        elif block is not None:
            block.append(line[2:])  # "# code" -> "code", "#" -> ""
    return found


def find_listing(listing: list[str], source: list[str], start: int = 0) -> int | None:
    """Where ``listing`` stands in ``source`` (both lists of lines), at or after line index
    ``start``: the index of its first line, or None. Its pieces between ``# ...`` lines must each
    stand there whole, line for line and indentation included, in the listing's order."""
    pieces, piece = [], []
    for line in [*listing, ELISION]:
        if line.strip() == ELISION:
            if piece:
                pieces.append(piece)
            piece = []
        else:
            piece.append(line)
    first, at = None, start
    for piece in pieces:
        at = next((i for i in range(at, len(source) - len(piece) + 1)
                   if source[i:i + len(piece)] == piece), None)
        if at is None:
            return None
        first = at if first is None else first
        at += len(piece)
    return first


LISTINGS = [(lesson, *item) for lesson in LESSONS for item in listings(lesson)]


@pytest.mark.parametrize("lesson, line, path, listing", LISTINGS,
                         ids=[f"{lesson.name}:{line}" for lesson, line, *_ in LISTINGS])
def test_lesson_listings_are_the_source(lesson: Path, line: int, path: str, listing: list[str]):
    """A listing is the file's text, so the lesson cannot drift from the code it teaches."""
    source = (REPO / path).read_text(encoding="utf-8").splitlines()
    assert listing and find_listing(listing, source) is not None, (
        f"{lesson.name}:{line}: the listing no longer matches {path}; copy the current code "
        "into the lesson (and fix the prose around it if the code changed its meaning)")


def test_lesson_01_quotes_model_py_in_the_files_order():
    """Lesson 01 reads the textbook model top to bottom: its listings of model.py follow the
    file's order and cover every piece of the forward pass."""
    lesson = LESSONS_DIR / "01_encoder.py"
    source = (REPO / "minift" / "core" / "model.py").read_text(encoding="utf-8").splitlines()
    quoted = [listing for _, path, listing in listings(lesson) if path == "minift/core/model.py"]
    at = 0
    for listing in quoted:
        found = find_listing(listing, source, at)
        assert found is not None, f"listing {listing[0]!r} is out of model.py's order"
        at = found + 1
    text = "\n".join(line for listing in quoted for line in listing)
    for piece in ("def attention(", "def additive_mask(", "class Embeddings(",
                  "class SelfAttention(", "class FeedForward(", "class Block(", "class Pooler(",
                  "    def forward(self, input_ids"):
        assert piece in text, f"lesson 01 does not quote {piece!r} from model.py"


def test_a_changed_listing_is_not_found():
    """The matcher itself: an edited line, a piece out of order, or a lost indentation fails."""
    source = ["def f(x):", '    """Doc."""', "    y = x + 1", "    return y", "", "z = 2"]
    assert find_listing(["def f(x):", "    # ...", "    y = x + 1", "    return y"], source) == 0
    assert find_listing(["z = 2"], source) == 5
    assert find_listing(["def f(x):", "    # ...", "    y = x + 2"], source) is None
    assert find_listing(["    return y", "# ...", "def f(x):"], source) is None
    assert find_listing(["def f(x):", "y = x + 1"], source) is None


def test_readme_times_are_the_measured_ones():
    """lessons/README.md's time table: quick mode's wall seconds from lesson_times.json (the
    2-thread run on the Xeon), full mode's CPU minutes from lesson_times_full.json (one thread);
    every lesson has a row, and a number only changes by rerunning benchmarks/lesson_times.py."""
    results = REPO / "benchmarks" / "results"
    quick = [r for r in json.loads((results / "lesson_times.json").read_text())["runs"]
             if "Xeon" in r["machine"]["cpu"] and r["machine"]["threads"] == 2]
    full = [r for r in json.loads((results / "lesson_times_full.json").read_text())["runs"]
            if "Xeon" in r["machine"]["cpu"] and r["machine"]["threads"] == 1]
    assert len(quick) == 1 and len(full) == 1, "one Xeon run of each mode"
    rows = re.findall(r"^\| (\d\d) \| (\d+) s \| ([\d.]+|not run) \|",
                      (LESSONS_DIR / "README.md").read_text(encoding="utf-8"), re.MULTILINE)
    assert [number for number, _, _ in rows] == [p.name[:2] for p in LESSONS], rows
    for (_, seconds, minutes), lesson in zip(rows, LESSONS, strict=True):
        assert seconds == f"{quick[0]['lessons'][lesson.name]['wall_s']:.0f}", lesson.name
        record = full[0]["lessons"].get(lesson.name)
        if minutes == "not run":
            assert record is None or not record["passed"], f"{lesson.name}: its full run is there"
        else:
            assert record["passed"], f"{lesson.name}: its full run failed"
            assert minutes == f"{record['cpu_s'] / 60:.1f}", lesson.name
