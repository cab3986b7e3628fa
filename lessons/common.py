"""What every lesson sets up the same way: where the repository and the data are, the lesson's
scratch and figure folders, and `check`.

A lesson imports it as `from common import ...`: run as a script (`python lessons/NN_topic.py`,
as tests/test_lessons.py runs them) Python puts `lessons/` first on the import path, and opened
as a notebook the working directory is `lessons/`, which is on it too. Importing it does no work
beyond reading the environment: the folders are emptied only when a lesson asks for them.
"""

import os
import shutil
import time
from pathlib import Path

from minift.run import plots

# MINIFT_QUICK=1 (what CI sets) shrinks each lesson's data and steps; each lesson says how.
MINIFT_QUICK = os.environ.get("MINIFT_QUICK") == "1"
REPO = Path(__file__).resolve().parents[1]
# The data sets: $MINIFT_DATA, or the shared/data folder beside the repository.
DATA = Path(os.environ.get("MINIFT_DATA") or REPO.parent / "shared" / "data")
START = time.perf_counter()  # when the lesson started, for the time it prints at its end


def check(condition: bool, message: str) -> None:
    """Stop the lesson when a claim it makes does not hold (CI runs every lesson)."""
    if not condition:
        raise RuntimeError(message)


def work_folder(lesson: str) -> Path:
    """runs/lessons/NN/ (git-ignored), emptied now; the lesson removes it at its end, and a run
    that stops halfway leaves it there until the next run empties it."""
    work = REPO / "runs" / "lessons" / lesson
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    return work


def figures(lesson: str) -> plots.Figures | None:
    """lessons/figures/NN/ (git-ignored; emptied now, kept at the end): the PNG files the lesson
    saves, shown inline in a notebook. None without matplotlib: the lesson runs without them."""
    return plots.lesson_figures(REPO / "lessons" / "figures" / lesson)
