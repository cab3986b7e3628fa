"""Pictures of runs: what ``minift plot RUN [RUN ...]`` draws, and the lessons' figure helpers.

matplotlib is optional (the ``plots`` extra) and imported only inside the functions, so this
module imports without it. Figures are ``matplotlib.figure.Figure`` objects drawn without pyplot:
no window, no global backend, and the Agg canvas renders the same PNG on a laptop, a server or CI.
"""

from __future__ import annotations

import io
import json
import math
import os
import re
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from minift.core.files import atomic_write
from minift.data.readers import read_utf8_lines, read_utf8_text

# --- 1. Style and saving --------------------------------------------------------------------------

# Font sizes that stay readable when a 8-inch figure is shown at notebook width (about 800 px).
STYLE = {"font.size": 11, "axes.titlesize": 12, "axes.labelsize": 11, "legend.fontsize": 10,
         "xtick.labelsize": 10, "ytick.labelsize": 10, "axes.grid": True, "grid.alpha": 0.3,
         "axes.spines.top": False, "axes.spines.right": False}
DPI = 100  # a figure of 8 x 4.5 inches is an 800 x 450 pixel PNG


def available() -> bool:
    """Whether matplotlib can be imported (the ``plots`` extra is installed)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def require_matplotlib(what: str = "drawing figures") -> None:
    """Raise ValueError saying how to install matplotlib when it is missing."""
    if not available():
        raise ValueError(f"{what} needs matplotlib, which is not installed: "
                         "pip install matplotlib (or pip install -e '.[plots]')")


def figure(width: float = 8.0, height: float = 4.5, **subplots: Any):
    """A new ``Figure`` of ``width`` x ``height`` inches with ``subplots(**subplots)`` axes;
    returns ``(figure, axes)``. Sets minift's font sizes (``STYLE``) in matplotlib's rcParams."""
    import matplotlib
    from matplotlib.figure import Figure

    matplotlib.rcParams.update(STYLE)
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    return fig, fig.subplots(**subplots)


def png(fig) -> bytes:
    """``fig`` rendered as PNG bytes (Agg), ``DPI`` pixels per inch."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()


def save(fig, path: str | os.PathLike) -> Path:
    """Write ``fig`` as a PNG at ``path`` (atomically: a reader never sees half a file)."""
    atomic_write(Path(path), png(fig))
    return Path(path)


# --- 2. Reading a run -----------------------------------------------------------------------------


def _is_number(value: object, whole: bool = False) -> bool:
    """A JSON number (an int when ``whole``), not a boolean."""
    kind = int if whole else int | float
    return isinstance(value, kind) and not isinstance(value, bool)


def note(text: str) -> None:
    """Say what ``minift plot`` skipped, and why (a figure it cannot draw is no error)."""
    print(f"note: {text}")


def read_log(run: str | os.PathLike) -> tuple[list[dict], list[dict]]:
    """The training records (``step``, ``loss``, ``lr``, ...) and the evaluation records
    (``step``, ``eval``: {metric: value}) of ``run/log.jsonl``, each in the order written."""
    folder = Path(run)
    path = folder / "log.jsonl"
    if not folder.is_dir():
        raise ValueError(f"{folder}: no such folder")
    if not path.is_file():
        raise ValueError(f"{folder}: no log.jsonl (the folder of a finetune, ner or pretrain "
                         "run holds one)")
    training, evaluations = [], []
    for number, line in enumerate(read_utf8_lines(path), start=1):  # bounded, like a data file
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}:{number}: not a JSON record ({err.msg}): "
                             f"{line.strip()[:60]!r}") from None
        if not isinstance(record, dict) or not _is_number(record.get("step"), whole=True):
            raise ValueError(f"{path}:{number}: expected a JSON object with an integer "
                             f"'step', found {line.strip()[:60]!r}")
        if isinstance(record.get("eval"), dict):
            evaluations.append(record)
        elif _is_number(record.get("loss")):
            training.append(record)
        else:
            raise ValueError(f"{path}:{number}: expected a training record ('loss') or an "
                             f"evaluation record ('eval'), found keys {sorted(record)[:20]}")
    if not training and not evaluations:
        raise ValueError(f"{path}: the log is empty (the run logged no step)")
    return training, evaluations


def read_metrics(run: str | os.PathLike) -> dict | None:
    """``run/metrics.json`` (None when the run has none: it is unfinished; and, with a note,
    when it holds no JSON object)."""
    path = Path(run) / "metrics.json"
    if not path.is_file():
        return None
    try:
        metrics = json.loads(read_utf8_text(path))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}:{err.lineno}: not JSON ({err.msg})") from None
    if not isinstance(metrics, dict):
        note(f"{path} holds a JSON {type(metrics).__name__}, not an object: its figures skipped")
        return None
    return metrics


# --- 3. The drawings ------------------------------------------------------------------------------

# What each logged metric measures, for the y axis.
UNITS = {"loss": "cross-entropy (nats / target)", "perplexity": "perplexity (exp of the loss)",
         "accuracy": "accuracy (fraction, 0-1)", "masked_accuracy": "masked-token accuracy (0-1)",
         "token_accuracy": "token accuracy (0-1)", "f1": "F1 (0-1)",
         "precision": "precision (0-1)", "recall": "recall (0-1)"}
COUNTS = {"support", "masked_tokens", "tokens"}  # sizes of the evaluation set, not scores


def smooth(values: Sequence[float], weight: float = 0.8) -> list[float]:
    """Exponential moving average with its start-up bias removed (TensorBoard's smoothing):
    ``weight`` 0 returns the values, near 1 a slow average."""
    out, average = [], 0.0
    for i, value in enumerate(values, start=1):
        average = weight * average + (1 - weight) * value
        out.append(average / (1 - weight**i))
    return out


def _labels(runs: Sequence[Path]) -> list[str]:
    """Each run's legend entry: its folder's name, or the whole path when two names are equal."""
    names = [r.name for r in runs]
    return [r.name if names.count(r.name) == 1 else str(r) for r in runs]


def draw_loss(ax, logs: dict[str, list[dict]]) -> None:
    """The training loss of each run (``logs``: name -> training records) against the step:
    the logged values faint, smoothed on top."""
    for i, (name, records) in enumerate(logs.items()):
        color, steps, losses = f"C{i}", [r["step"] for r in records], [r["loss"] for r in records]
        weight = 0.0 if len(losses) < 4 else min(0.9, 1 - 4 / len(losses))
        if weight:
            ax.plot(steps, losses, "o", color=color, alpha=0.25, markersize=3)
        ax.plot(steps, smooth(losses, weight), color=color, linewidth=2, marker="" if weight
                else "o", label=f"{name} (smoothed)" if weight else name)
    ax.set(title="training loss (mean of the steps since the last record)",
           xlabel="optimizer step", ylabel=UNITS["loss"])
    ax.legend(title="dots: logged values")


def draw_lr(ax, logs: dict[str, list[dict]]) -> None:
    """The learning rate of each run against the step (warmup, then the decay); the records
    without an ``lr`` are left out."""
    for i, (name, records) in enumerate(logs.items()):
        points = [(r["step"], r["lr"]) for r in records if _is_number(r.get("lr"))]
        if points:
            ax.plot(*zip(*points, strict=True), color=f"C{i}", linewidth=2, marker=".",
                    label=name)
    ax.set(title="learning rate (schedule)", xlabel="optimizer step",
           ylabel="learning rate (AdamW step size)")
    ax.ticklabel_format(axis="y", style="sci", scilimits=(0, 0))
    ax.legend()


def draw_metric(ax, metric: str, logs: dict[str, list[dict]]) -> None:
    """One held-out metric of each run (``logs``: name -> evaluation records) against the step
    of its evaluation."""
    for i, (name, records) in enumerate(logs.items()):
        points = [(r["step"], r["eval"][metric]) for r in records if metric in r["eval"]]
        if points:
            ax.plot(*zip(*points, strict=True), color=f"C{i}", linewidth=2, marker="o", label=name)
    ax.set(title=f"{metric} on the held-out set", xlabel="optimizer step",
           ylabel=UNITS.get(metric, metric))
    ax.legend()


def draw_confusion(ax, matrix: Sequence[Sequence[int]], labels: Sequence[str],
                   title: str = "confusion matrix") -> None:
    """Counts of gold label (rows) predicted as each label (columns), written in the cells."""
    image = ax.imshow(matrix, cmap="Blues", vmin=0)
    peak = max(max(row) for row in matrix) or 1
    for i, row in enumerate(matrix):
        for j, count in enumerate(row):
            ax.text(j, i, str(count), ha="center", va="center",
                    color="white" if count > peak / 2 else "black")
    ax.set_xticks(range(len(labels)), labels, rotation=30 if len(labels) > 4 else 0)
    ax.set_yticks(range(len(labels)), labels)
    ax.set(title=title, xlabel="predicted label", ylabel="true label")
    ax.grid(False)
    ax.figure.colorbar(image, ax=ax, label="examples", shrink=0.8)


def draw_class_scores(ax, per_class: dict[str, dict], title: str) -> None:
    """Precision, recall and F1 of each entity type (or tag), with its support under its name."""
    names = list(per_class)
    width = 0.27
    for k, key in enumerate(("precision", "recall", "f1")):
        ax.bar([i + (k - 1) * width for i in range(len(names))],
               [per_class[n][key] for n in names], width, label=key, color=f"C{k}")
    ax.set_xticks(range(len(names)),
                  [f"{n}\n({per_class[n].get('support', '?')})" for n in names])
    ax.set_ylim(0, 1.05)
    ax.set(title=title, xlabel="type (gold entities in parentheses)", ylabel="score (0-1)")
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0))


# --- 4. What the command draws, and the lessons' figure folder ------------------------------------


def _is_square(matrix: object, labels: object) -> bool:
    """Whether ``matrix`` is a confusion matrix over ``labels``: a row of counts per label."""
    return (isinstance(labels, list) and len(labels) > 0 and isinstance(matrix, list)
            and len(matrix) == len(labels)
            and all(isinstance(row, list) and len(row) == len(labels)
                    and all(_is_number(n, whole=True) for n in row) for row in matrix))


def _are_scores(per: object) -> bool:
    """Whether ``per`` maps names to their precision, recall and f1 (numbers)."""
    return isinstance(per, dict) and all(
        isinstance(scores, dict) and all(_is_number(scores.get(key))
                                         for key in ("precision", "recall", "f1"))
        for scores in per.values())


def _metrics_figures(run: Path, metrics: dict) -> list[Path]:
    """The confusion matrix (a classification run) or the per-type scores (an NER / POS run)
    of the run's ``metrics.json``, written into ``run``."""
    written = []
    dev = metrics.get("dev")
    if not isinstance(dev, dict):
        return written
    where = run / "metrics.json"
    if "confusion" in dev and "labels" in metrics:
        matrix, labels = dev["confusion"], metrics["labels"]
        if _is_square(matrix, labels):
            accuracy = dev.get("accuracy")
            shown = f" (accuracy {accuracy:.3f})" if _is_number(accuracy) else ""
            fig, ax = figure(6.0, 5.0)
            draw_confusion(ax, matrix, labels, f"{run.name}: dev confusion matrix{shown}")
            written.append(save(fig, run / "confusion.png"))
        else:
            note(f"{where}: dev.confusion is not a square table of counts, one row per label of "
                 "'labels': confusion.png skipped")
    per = dev.get("per_type") or dev.get("per_tag")
    if per and not _are_scores(per):
        note(f"{where}: dev.{'per_type' if 'per_type' in dev else 'per_tag'} is not a table of "
             "precision, recall and f1 per name: its figure skipped")
    elif per:
        what = "entity type" if "per_type" in dev else "tag"
        fig, ax = figure(max(6.0, 1.0 + 0.7 * len(per)), 4.5)
        draw_class_scores(ax, per, f"{run.name}: dev scores per {what}")
        written.append(save(fig, run / ("f1_per_type.png" if "per_type" in dev
                                        else "f1_per_tag.png")))
    return written


def plot_runs(runs: Sequence[str | os.PathLike], out: str | os.PathLike | None = None) -> list[Path]:
    """Draw the logs of ``runs`` into PNG files; return the paths written. The curves
    (``loss.png``, ``lr.png``, ``dev_<metric>.png``) go into ``out`` (default: the first run),
    every run on the same axes; a run's ``confusion.png`` or ``f1_per_type.png`` (POS:
    ``f1_per_tag.png``) into its own folder. Every log is checked before anything is drawn."""
    require_matplotlib("minift plot")
    folders = [Path(run) for run in runs]
    if not folders:
        raise ValueError("give at least one run folder")
    logs = dict(zip(_labels(folders), map(read_log, folders), strict=True))
    metrics = {folder: read_metrics(folder) for folder in folders}
    target = Path(out) if out is not None else folders[0]
    target.mkdir(parents=True, exist_ok=True)

    written = []
    training = {name: t for name, (t, _) in logs.items() if t}
    if training:
        fig, ax = figure()
        draw_loss(ax, training)
        written.append(save(fig, target / "loss.png"))
        if any(_is_number(r.get("lr")) for records in training.values() for r in records):
            fig, ax = figure(8.0, 3.5)
            draw_lr(ax, training)
            written.append(save(fig, target / "lr.png"))
        else:
            note("no training record logs an 'lr': lr.png skipped")
    evaluations = {name: e for name, (_, e) in logs.items() if e}
    names = [name for records in evaluations.values() for r in records for name in r["eval"]]
    for metric in dict.fromkeys(names):  # in first-seen order, once each
        values = [r["eval"][metric] for records in evaluations.values() for r in records
                  if metric in r["eval"]]
        if metric in COUNTS or not all(_is_number(v) and math.isfinite(v) for v in values):
            continue
        if not re.fullmatch(r"\w[\w.-]{0,99}", metric):
            note(f"the metric {metric[:60]!r} is not a file name: dev_<metric>.png skipped")
            continue
        fig, ax = figure()
        draw_metric(ax, metric, evaluations)
        written.append(save(fig, target / f"dev_{metric}.png"))
    for folder, saved in metrics.items():
        if saved is not None:
            written += _metrics_figures(folder, saved)
    return written


class Figures:
    """The folder a lesson saves its figures into (emptied when created), shown inline as well
    when the lesson runs as a notebook."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        shutil.rmtree(self.folder, ignore_errors=True)
        self.folder.mkdir(parents=True)
        self.written: list[Path] = []

    def save(self, fig, name: str) -> Path:
        """Write ``fig`` as ``folder/name``, display it in a notebook, and print the path."""
        data = png(fig)
        path = self.folder / name
        atomic_write(path, data)
        self.written.append(path)
        try:
            from IPython import get_ipython
            from IPython.display import Image, display
        except ImportError:
            get_ipython = None
        if get_ipython is not None and get_ipython() is not None:
            display(Image(data=data))  # the PNG itself: no pyplot or inline backend needed
        print(f"figure: {path}")
        return path


def lesson_figures(folder: str | os.PathLike) -> Figures | None:
    """A lesson's ``Figures`` in ``folder``, or None (saying so) when matplotlib is missing:
    the lesson still runs, without its pictures."""
    if not available():
        print("matplotlib is not installed: figures skipped (pip install -e '.[plots]')")
        return None
    return Figures(folder)


def project_2d(points, fit=None) -> Any:
    """``points`` (n, d) on their first two principal components, the directions in which they
    vary most: an (n, 2) array (PCA by the SVD of the centred points; each axis's sign fixed so
    its largest coordinate is positive). ``fit`` (m, d): project on its components and centre."""
    import numpy as np

    x = np.asarray(points, dtype=np.float64)
    basis = x if fit is None else np.asarray(fit, dtype=np.float64)
    centre = basis.mean(axis=0)
    _, _, vt = np.linalg.svd(basis - centre, full_matrices=False)
    coords = (x - centre) @ vt[:2].T  # (n, 2)
    signs = np.sign(coords[np.abs(coords).argmax(axis=0), range(2)])
    return coords * np.where(signs == 0, 1, signs)


def draw_embeddings(ax, coords, labels: Sequence[str], title: str,
                    names: Sequence[str] | None = None, legend_title: str = "label") -> None:
    """A scatter of 2-D points (``project_2d``), one colour per label (in the order of
    ``names``, default sorted), with a legend."""
    names = list(names) if names is not None else sorted(set(labels))
    for k, name in enumerate(names):
        rows = [i for i, label in enumerate(labels) if label == name]
        ax.scatter(coords[rows, 0], coords[rows, 1], s=60, color=f"C{k}", alpha=0.9,
                   label=name, edgecolors="black", linewidths=0.6)
    ax.set(title=title, xlabel="principal component 1", ylabel="principal component 2")
    ax.legend(title=legend_title)


def draw_search(ax, rows: Sequence[dict], x: str, ylabel: str, *, log_x: bool = False,
                chosen: dict | None = None) -> None:
    """A hyperparameter search (``minift.run.search``): the mean dev score against the
    hyperparameter ``x``, one line per setting of the others (batch size, freezing, ...), error
    bars of one standard deviation over the seeds, each seed a faint dot, the chosen
    configuration ringed."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        if row["mean"] is not None and x in row["config"]:
            rest = tuple((k, v) for k, v in row["config"].items() if k != x)
            groups.setdefault(rest, []).append(row)
    for k, (rest, members) in enumerate(groups.items()):
        members.sort(key=lambda row: row["config"][x])
        xs = [row["config"][x] for row in members]
        label = ", ".join(f"{name}={value}" for name, value in rest) or "mean over the seeds"
        ax.errorbar(xs, [row["mean"] for row in members], yerr=[row["std"] for row in members],
                    color=f"C{k}", marker="o", capsize=3, label=label)
        for row in members:
            values = [run["value"] for run in row["per_seed"]]
            ax.scatter([row["config"][x]] * len(values), values, color=f"C{k}", alpha=0.35, s=14)
            if chosen is not None and row["config"] == chosen:
                ax.scatter([row["config"][x]], [row["mean"]], s=220, facecolors="none",
                           edgecolors="black", linewidths=1.5, zorder=5, label="chosen")
    if log_x:
        ax.set_xscale("log")
    ticks = sorted({row["config"][x] for members in groups.values() for row in members})
    if len(ticks) <= 12:  # the values tried, as they were written
        ax.set_xticks(ticks, [f"{tick:g}" for tick in ticks])
        ax.minorticks_off()
    ax.set(title=f"{ylabel} against {x}: mean ± std over the seeds, each seed a dot", xlabel=x,
           ylabel=ylabel)
    ax.legend(fontsize=9)
