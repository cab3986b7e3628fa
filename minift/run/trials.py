"""The trials of a search (``minift.run.search``): one trial is an ordinary run of a recipe,
afresh from the checkpoint, into its own folder (``run_trial``); ``trials.jsonl`` records the
finished ones (``TrialLog``), so that a search killed halfway resumes where it stopped."""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import shutil
import time
from pathlib import Path


def trial_key(config: dict, seed: int) -> str:
    """A trial's identity: its configuration and seed, as canonical JSON."""
    return json.dumps({"config": config, "seed": seed}, sort_keys=True)


def trial_folder_name(config: dict, seed: int) -> str:
    """The trial's folder under ``OUT/trials/``: a short hash of its key, then its seed."""
    return f"{hashlib.sha1(trial_key(config, seed).encode()).hexdigest()[:10]}-seed{seed}"


class TrialLog:
    """``trials.jsonl``: one finished trial a line, appended by one ``write`` and fsynced. A kill
    during that write can leave a torn last line, which reading drops (the trial runs again); a
    corrupt line anywhere else is an error naming ``path:line``."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.records: dict[str, dict] = {}
        if not self.path.is_file():
            return
        data = self.path.read_bytes()
        whole = data[:data.rfind(b"\n") + 1]
        if len(whole) < len(data):  # a line torn by a kill: forget it
            with open(self.path, "r+b") as f:
                f.truncate(len(whole))
        for number, line in enumerate(whole.decode("utf-8").splitlines(), start=1):
            try:
                record = json.loads(line)
                self.records[trial_key(record["config"], record["seed"])] = record
            except (json.JSONDecodeError, KeyError, TypeError):
                raise ValueError(f"{self.path}:{number}: not a trial record; remove the line "
                                 "to run that trial again") from None

    def get(self, config: dict, seed: int) -> dict | None:
        return self.records.get(trial_key(config, seed))

    def append(self, record: dict) -> None:
        line = (json.dumps(record, sort_keys=True) + "\n").encode("utf-8")
        with open(self.path, "ab") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())
        self.records[trial_key(record["config"], record["seed"])] = record


def dev_numbers(task: str, metrics: dict) -> dict[str, float]:
    """Every number a recipe reports on dev (the confusion matrix, per-type tables and the like
    stay in the trial's own ``metrics.json``)."""
    if task == "setfit":
        return {"accuracy": metrics["dev"]["per_seed"][0]["accuracy"]}
    dev = metrics["after" if task == "lm" else "dev"]  # lm, as pretrain: held-out before/after
    numbers = {key: value for key, value in dev.items()
               if isinstance(value, int | float) and not isinstance(value, bool)}
    if isinstance(dev.get("strict"), dict):  # ner: the strict IOB2 mode's F1
        numbers["strict_f1"] = dev["strict"]["f1"]
    return numbers


def run_trial(task: str, fixed: dict, config: dict, seed: int, folder: Path) -> dict:
    """One trial: the recipe run afresh (the checkpoint loaded from its folder) into ``folder``
    with the fixed options, ``config`` and ``seed``; what it printed goes to
    ``folder/trial.log``. Returns the record for ``trials.jsonl``."""
    from minift.run import recipes

    if folder.exists():  # what a killed run of this trial left: start it again from scratch
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    options = fixed | config | {"out": str(folder), "seed": seed, "progress": False}
    if task == "setfit":
        options["seeds"] = 1  # the search's seeds are its trials
    start = time.perf_counter()
    with open(folder / "trial.log", "w", encoding="utf-8") as log, \
            contextlib.redirect_stdout(log):
        metrics = getattr(recipes, task)(**options)
    seconds = time.perf_counter() - start
    train = metrics["train"]
    steps = train.get("steps")
    if task == "setfit":  # pairs a seed, in batches, for each contrastive epoch
        steps = math.ceil(train["pairs"] / options.get("batch_size", 16)) * options.get(
            "epochs", 1)
    return {"config": config, "seed": seed, "dev": dev_numbers(task, metrics),
            "seconds": seconds, "steps": steps, "folder": folder.name}


def model_folder(task: str, trial: Path) -> Path:
    """Where a trial's model is: the trial's folder (setfit: its ``model`` folder)."""
    return trial / "model" if task == "setfit" else trial
