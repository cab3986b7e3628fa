"""What every lesson sets up the same way: where the repository and the data are, the lesson's
scratch and figure folders, `check`, and the SST-2 subset that lessons 02 and 03 train on.

A lesson imports it as `from common import ...`: run as a script (`python lessons/NN_topic.py`,
as tests/test_lessons.py runs them) Python puts `lessons/` first on the import path, and opened
as a notebook the working directory is `lessons/`, which is on it too. Importing it does no work
beyond reading the environment: the folders are emptied only when a lesson asks for them.
"""

import os
import random
import shutil
import time
from pathlib import Path

from minift.core.labels import LabelVocab
from minift.data.readers import encode_labels, read_examples, task_files
from minift.data.tokenizer import Tokenizer
from minift.run import plots
from minift.tasks.classify import ClassificationDataset

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


def seeded_subset(items: list, size: int | None, seed: int) -> list:
    """`size` items drawn with `random.Random(seed)`, in their original order (all of them when
    `size` is None): the subset `minift finetune --limit-train` takes with the same seed."""
    if size is None:
        return items
    return [items[i] for i in sorted(random.Random(seed).sample(range(len(items)), size))]


def sst2_datasets(model_dir: Path, num_train: int, num_dev: int | None, max_length: int,
                  seed: int) -> tuple[LabelVocab, ClassificationDataset, ClassificationDataset]:
    """Lesson 02's data, which it builds step by step: SST-2's label vocabulary (from the whole
    training set), seeded subsets of train and dev, tokenized once by `model_dir`'s tokenizer.
    Returns (vocab, train_set, dev_set)."""
    train_path, dev_path, text_col, pair_col, label_col = task_files("sst2", DATA)
    columns = dict(text_col=text_col, pair_col=pair_col, label_col=label_col)
    train_all = read_examples(train_path, **columns)
    vocab = LabelVocab.from_examples(train_all)
    train_examples = seeded_subset(train_all, num_train, seed)
    dev_examples = seeded_subset(read_examples(dev_path, **columns), num_dev, seed)
    tokenizer = Tokenizer.from_pretrained(model_dir)
    train_set, dev_set = (
        ClassificationDataset(examples, tokenizer, max_length=max_length,
                              label_ids=encode_labels(examples, vocab))
        for examples in (train_examples, dev_examples)
    )
    return vocab, train_set, dev_set
