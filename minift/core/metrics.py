"""Classification metrics over plain label sequences, and a markdown table for printing them.

Labels are ints or strings (lists, tuples, 1-D numpy arrays or torch tensors all work). The
definitions and conventions are scikit-learn's, so numbers can be compared with it directly:
labels are sorted, the confusion matrix has true labels as rows and predictions as columns, and
a ratio whose denominator is 0 (precision of a class never predicted, recall of a class never
seen) is 0.0. Unlike scikit-learn, no warning is raised for it. Sequence labelling (NER, POS)
is scored as seqeval scores it.
"""

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

from minift.core.labels import MODES, entities

AVERAGES = ("binary", "macro", "micro")

# --- Inputs ---------------------------------------------------------------------------------------


def _as_labels(values: Any, name: str) -> list[Hashable]:
    """A 1-D sequence (list, tuple, numpy array, torch tensor) as a list of Python scalars."""
    if isinstance(values, (str, bytes)):
        raise ValueError(f"{name}: expected a sequence of labels, got a single "
                         f"{type(values).__name__}")
    ndim = getattr(values, "ndim", 1)
    if ndim != 1:
        raise ValueError(f"{name}: expected a 1-D sequence of labels, got {ndim} dimensions")
    labels = values.tolist() if hasattr(values, "tolist") else list(values)
    for index, label in enumerate(labels):
        if isinstance(label, (list, tuple, dict, set)):
            raise ValueError(f"{name}[{index}]: expected a label (int or str), got "
                             f"{type(label).__name__}")
    return labels


def _check_pair(y_true: Any, y_pred: Any) -> tuple[list[Hashable], list[Hashable]]:
    """Both sequences as lists; same non-zero length and one kind of label (str or not)."""
    y_true, y_pred = _as_labels(y_true, "y_true"), _as_labels(y_pred, "y_pred")
    if len(y_true) != len(y_pred):
        raise ValueError(f"y_true and y_pred must have the same length, got {len(y_true)} and "
                         f"{len(y_pred)}")
    if not y_true:
        raise ValueError("y_true and y_pred are empty: no examples to score")
    kinds = {isinstance(label, str) for label in y_true + y_pred}
    if len(kinds) > 1:
        raise ValueError("labels mix strings and numbers; use one kind for y_true and y_pred")
    return y_true, y_pred


def _check_labels(labels: Any, y_true: list, y_pred: list) -> list[Hashable]:
    """`labels` as a list, or the sorted labels present in y_true or y_pred (sklearn's order)."""
    if labels is None:
        return sorted(set(y_true) | set(y_pred))
    labels = _as_labels(labels, "labels")
    if not labels:
        raise ValueError("labels is empty: give at least one label, or None for all of them")
    if len(set(labels)) != len(labels):
        raise ValueError(f"labels has duplicates: {labels}")
    return labels


def _divide(numerator: float, denominator: float) -> float:
    """numerator / denominator, or 0.0 where the ratio is undefined (sklearn's default)."""
    return numerator / denominator if denominator != 0 else 0.0


# --- Metrics --------------------------------------------------------------------------------------


def accuracy(y_true: Sequence, y_pred: Sequence) -> float:
    """The fraction of positions where the prediction equals the gold label."""
    y_true, y_pred = _check_pair(y_true, y_pred)
    return sum(t == p for t, p in zip(y_true, y_pred, strict=True)) / len(y_true)


def _counts(y_true: list, y_pred: list, labels: list) -> dict[Hashable, tuple[int, int, int]]:
    """For each label: (true positives, times predicted, times in gold)."""
    counts = {label: [0, 0, 0] for label in labels}
    for t, p in zip(y_true, y_pred, strict=True):
        if t == p and t in counts:
            counts[t][0] += 1
        if p in counts:
            counts[p][1] += 1
        if t in counts:
            counts[t][2] += 1
    return {label: tuple(c) for label, c in counts.items()}


def _scores(true_positives: int, predicted: int, gold: int) -> dict[str, float]:
    """Precision, recall and F1 from the three counts; F1 = 2 tp / (predicted + gold)."""
    return {"precision": _divide(true_positives, predicted),
            "recall": _divide(true_positives, gold),
            "f1": _divide(2 * true_positives, predicted + gold)}


def per_class_scores(y_true: Sequence, y_pred: Sequence,
                     labels: Sequence | None = None) -> dict[Hashable, dict[str, float]]:
    """Precision, recall, F1 and support (count in y_true) for each label, in label order: sklearn's
    `classification_report(..., output_dict=True)` without the averages."""
    y_true, y_pred = _check_pair(y_true, y_pred)
    labels = _check_labels(labels, y_true, y_pred)
    return {label: {**_scores(tp, predicted, gold), "support": gold}
            for label, (tp, predicted, gold) in _counts(y_true, y_pred, labels).items()}


def precision_recall_f1(y_true: Sequence, y_pred: Sequence, average: str = "binary",
                        pos_label: Hashable = 1,
                        labels: Sequence | None = None) -> dict[str, float]:
    """Precision, recall and F1 as `{"precision": ..., "recall": ..., "f1": ...}`.

    - "binary": the scores of the class `pos_label`. As in sklearn, the data may hold at most
      two distinct labels, and `pos_label` must be one of them when there are two.
    - "macro": the unweighted mean of the per-label scores over `labels` (default: every label
      in y_true or y_pred), so a rare class counts as much as a frequent one.
    - "micro": the scores of the pooled counts over `labels`; with every label included, micro
      precision, recall and F1 all equal the accuracy.
    Equal to sklearn's `precision_recall_fscore_support(..., average=...)`. Unlike sklearn,
    `labels` with average="binary" is refused rather than ignored.
    """
    if average not in AVERAGES:
        raise ValueError(f"average must be one of {AVERAGES}, got {average!r}")
    y_true, y_pred = _check_pair(y_true, y_pred)

    if average == "binary":
        if labels is not None:
            raise ValueError("labels is not used with average='binary'; give pos_label, or use "
                             "average='macro' or 'micro' to choose the labels")
        present = sorted(set(y_true) | set(y_pred))
        if len(present) > 2:
            raise ValueError(f"average='binary' needs at most two labels, found {len(present)}: "
                             f"{present}; use average='macro' or 'micro'")
        if pos_label not in present and len(present) == 2:
            raise ValueError(f"pos_label={pos_label!r} is not a valid label: expected one of "
                             f"{present}")
        return _scores(*_counts(y_true, y_pred, [pos_label])[pos_label])

    labels = _check_labels(labels, y_true, y_pred)
    counts = _counts(y_true, y_pred, labels)
    if average == "micro":
        pooled = [sum(column) for column in zip(*counts.values(), strict=True)]
        return _scores(*pooled)
    per_label = [_scores(*c) for c in counts.values()]
    return {key: sum(s[key] for s in per_label) / len(per_label)
            for key in ("precision", "recall", "f1")}


def confusion_matrix(y_true: Sequence, y_pred: Sequence,
                     labels: Sequence | None = None) -> list[list[int]]:
    """Counts `matrix[i][j]` of examples with gold `labels[i]` predicted as `labels[j]`, as in
    sklearn; pairs with a label outside `labels` are not counted (sklearn refuses `labels` that
    share nothing with y_true; this returns zeros)."""
    y_true, y_pred = _check_pair(y_true, y_pred)
    labels = _check_labels(labels, y_true, y_pred)
    index = {label: i for i, label in enumerate(labels)}
    matrix = [[0] * len(labels) for _ in labels]
    for t, p in zip(y_true, y_pred, strict=True):
        if t in index and p in index:
            matrix[index[t]][index[p]] += 1
    return matrix


# --- Printing -------------------------------------------------------------------------------------


def _cell(value: Any, float_format: str) -> str:
    """One table cell: floats with `float_format`, None empty, `|` escaped for markdown."""
    if value is None:
        return ""
    text = format(value, float_format) if isinstance(value, float) else str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def format_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None,
                 float_format: str = ".4f") -> str:
    """A markdown table of `rows` (one dict per row) with the given `columns` (keys, in order;
    default the first row's). Cells are padded so it also reads as plain text, numeric columns
    right-aligned, floats written with `float_format`, None empty; a missing column is an error.
    """
    if columns is None and not rows:
        raise ValueError("format_table: no rows and no columns: nothing to print")
    columns = list(rows[0].keys() if columns is None else columns)
    if not columns:
        raise ValueError("format_table: columns is empty")
    for i, row in enumerate(rows):
        missing = [c for c in columns if c not in row]
        if missing:
            raise ValueError(f"format_table: row {i} has no value for column(s) {missing}")

    cells = [[_cell(row[c], float_format) for c in columns] for row in rows]
    header = [_cell(c, float_format) for c in columns]
    def is_number(value: Any) -> bool:
        return isinstance(value, (int, float)) and not isinstance(value, bool)

    numeric = [bool(rows) and all(is_number(row[c]) for row in rows) for c in columns]
    widths = [max([3, len(header[j])] + [len(line[j]) for line in cells])
              for j in range(len(columns))]

    def line(values: list[str]) -> str:
        padded = [v.rjust(w) if right else v.ljust(w)
                  for v, w, right in zip(values, widths, numeric, strict=True)]
        return "| " + " | ".join(padded) + " |"

    rule = ["-" * (w - 1) + ":" if right else "-" * w
            for w, right in zip(widths, numeric, strict=True)]
    return "\n".join([line(header), line(rule)] + [line(values) for values in cells])


# --- Sequence labelling: entity-level scores (NER) and token accuracy (POS tagging) ---------------
# NER is scored on entities, not tags: a predicted entity counts only when its type, first word
# and last word all match a gold entity (seqeval, which the transformers examples report).


def _check_sentences(gold: Any, pred: Any) -> None:
    """gold and pred: the same number of sentences, each pair of the same length."""
    for name, value in (("gold", gold), ("pred", pred)):
        if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
            raise ValueError(f"{name}: expected a list of sentences (lists of tags)")
        for s, sentence in enumerate(value):
            if isinstance(sentence, (str, bytes)) or not isinstance(sentence, Sequence):
                raise ValueError(f"{name}[{s}]: expected a list of tags, found "
                                 f"{type(sentence).__name__}")
    if len(gold) != len(pred):
        raise ValueError(f"gold has {len(gold)} sentences but pred has {len(pred)}")
    if not gold:
        raise ValueError("gold and pred are empty: no sentences to score")
    for s, (g, p) in enumerate(zip(gold, pred, strict=True)):
        if len(g) != len(p):
            raise ValueError(f"sentence {s}: gold has {len(g)} tags but pred has {len(p)}")


def entity_scores(gold: Sequence[Sequence[str]], pred: Sequence[Sequence[str]],
                  mode: str = "default") -> dict[str, Any]:
    """Entity-level precision, recall and F1 of predicted tags against gold tags.

    `gold` and `pred` hold one list of tags per sentence; `mode` as in `labels.entities`. Returns
    `{"mode", "precision", "recall", "f1", "support", "per_type", "micro", "macro", "weighted"}`:
    the top-level scores are the micro averages (how CoNLL-2003 is reported), `support` counts
    gold entities, `per_type` scores each entity type (sorted). Equal to seqeval's
    `classification_report(..., output_dict=True)` ("f1-score" named "f1"), except that with no
    entity at all the macro average is 0.0 here where seqeval's is NaN.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, found {mode!r}")
    _check_sentences(gold, pred)
    found: dict[str, dict[str, set]] = {"gold": {}, "pred": {}}
    for side, sentences in (("gold", gold), ("pred", pred)):
        for s, tags in enumerate(sentences):
            places = [f"{side}[{s}], tag {i}" for i in range(len(tags))]
            for type_, start, end in entities(tags, mode, where=places):
                found[side].setdefault(type_, set()).add((s, start, end))

    per_type = {}
    for type_ in sorted(found["gold"].keys() | found["pred"].keys()):
        g, p = found["gold"].get(type_, set()), found["pred"].get(type_, set())
        per_type[type_] = {**_scores(len(g & p), len(p), len(g)), "support": len(g)}

    support = sum(row["support"] for row in per_type.values())
    tp = sum(len(found["gold"][t] & found["pred"].get(t, set())) for t in found["gold"])
    n_pred = sum(len(p) for p in found["pred"].values())
    micro = {**_scores(tp, n_pred, support), "support": support}
    keys = ("precision", "recall", "f1")
    macro = {k: _divide(sum(r[k] for r in per_type.values()), len(per_type)) for k in keys}
    weighted = {k: _divide(sum(r[k] * r["support"] for r in per_type.values()), support)
                for k in keys}
    return {"mode": mode, **{k: micro[k] for k in keys}, "support": support, "per_type": per_type,
            "micro": micro, "macro": {**macro, "support": support},
            "weighted": {**weighted, "support": support}}


def token_accuracy(gold: Sequence[Sequence[Hashable]], pred: Sequence[Sequence[Hashable]]) -> float:
    """The fraction of tokens (over all sentences) whose predicted tag equals the gold tag: the
    score of part-of-speech tagging, seqeval's `accuracy_score`."""
    _check_sentences(gold, pred)
    total = sum(len(tags) for tags in gold)
    if total == 0:
        raise ValueError("every sentence is empty: no tokens to score")
    correct = sum(g == p for gs, ps in zip(gold, pred, strict=True)
                  for g, p in zip(gs, ps, strict=True))
    return correct / total
