"""minift.core.metrics against scikit-learn on random label lists; format_table's layout."""

import math
import warnings

import numpy as np
import pytest
import sklearn.metrics as skm
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from seqeval.metrics import accuracy_score, classification_report, f1_score
from seqeval.scheme import IOB2

from minift.core.metrics import (
    accuracy,
    confusion_matrix,
    entity_scores,
    format_table,
    per_class_scores,
    precision_recall_f1,
    token_accuracy,
)

INT_POOL = [0, 1, 2, 3, 4, 5]
STR_POOL = ["B-LOC", "O", "neg", "pos", "x", "zz"]


@st.composite
def label_pairs(draw, max_classes: int = 6):
    """(y_true, y_pred, pool): gold and predictions drawn from overlapping subsets of a pool.

    Drawing each side from its own subset makes classes that only one side has common.
    """
    pool = draw(st.sampled_from([INT_POOL, STR_POOL]))[: draw(st.integers(1, max_classes))]
    true_classes = draw(st.lists(st.sampled_from(pool), min_size=1, unique=True))
    pred_classes = draw(st.lists(st.sampled_from(pool), min_size=1, unique=True))
    n = draw(st.integers(1, 60))
    y_true = draw(st.lists(st.sampled_from(true_classes), min_size=n, max_size=n))
    y_pred = draw(st.lists(st.sampled_from(pred_classes), min_size=n, max_size=n))
    return y_true, y_pred, pool


def as_container(labels: list, kind: str):
    """The same labels as a list, a numpy array or (ints only) a torch tensor."""
    if kind == "numpy":
        return np.array(labels)
    if kind == "torch" and isinstance(labels[0], int):
        return torch.tensor(labels)
    return list(labels)


def sklearn_prf(y_true, y_pred, **kwargs) -> dict[str, float]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # UndefinedMetricWarning where sklearn returns 0.0
        p, r, f, _ = skm.precision_recall_fscore_support(y_true, y_pred, **kwargs)
    return {"precision": p, "recall": r, "f1": f}


def sklearn_confusion(y_true, y_pred, labels=None) -> list[list[int]]:
    with warnings.catch_warnings():
        warnings.simplefilter(
            "ignore"
        )  # "A single label was found": we pass labels where it matters
        return skm.confusion_matrix(y_true, y_pred, labels=labels).tolist()


def assert_scores_equal(ours: dict, theirs: dict) -> None:
    assert set(ours) == {"precision", "recall", "f1"}
    for key in ours:
        assert isinstance(ours[key], float)
        assert ours[key] == pytest.approx(float(theirs[key]), abs=1e-12, rel=0), key


@settings(deadline=None, max_examples=200)
@given(label_pairs(), st.sampled_from(["list", "numpy", "torch"]))
def test_accuracy_and_averages_match_sklearn(pair, container):
    y_true, y_pred, _ = pair
    yt, yp = as_container(y_true, container), as_container(y_pred, container)
    assert accuracy(yt, yp) == skm.accuracy_score(y_true, y_pred)
    for average in ("macro", "micro"):
        assert_scores_equal(
            precision_recall_f1(yt, yp, average=average),
            sklearn_prf(y_true, y_pred, average=average),
        )


@settings(deadline=None, max_examples=200)
@given(label_pairs(), st.data())
def test_averages_over_chosen_labels_match_sklearn(pair, data):
    """`labels` may name classes absent from both sides; micro then pools only those labels."""
    y_true, y_pred, pool = pair
    extra = "never" if isinstance(pool[0], str) else 99
    labels = data.draw(st.lists(st.sampled_from(pool + [extra]), min_size=1, unique=True))
    for average in ("macro", "micro"):
        assert_scores_equal(
            precision_recall_f1(y_true, y_pred, average=average, labels=labels),
            sklearn_prf(y_true, y_pred, average=average, labels=labels),
        )


@settings(deadline=None, max_examples=200)
@given(label_pairs(max_classes=2), st.data())
def test_binary_average_matches_sklearn(pair, data):
    y_true, y_pred, pool = pair
    present = sorted(set(y_true) | set(y_pred))
    # With two labels present pos_label must be one of them; with one, any pool label will do.
    pos_label = data.draw(st.sampled_from(present if len(present) == 2 else pool))
    assert_scores_equal(
        precision_recall_f1(y_true, y_pred, average="binary", pos_label=pos_label),
        sklearn_prf(y_true, y_pred, average="binary", pos_label=pos_label),
    )


@settings(deadline=None, max_examples=150)
@given(label_pairs(), st.booleans(), st.data())
def test_per_class_scores_match_sklearn(pair, choose_labels, data):
    y_true, y_pred, pool = pair
    labels = None
    if choose_labels:
        labels = data.draw(st.lists(st.sampled_from(pool), min_size=1, unique=True))
    ours = per_class_scores(y_true, y_pred, labels=labels)
    theirs = sklearn_prf(y_true, y_pred, average=None, labels=labels)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        *_, support = skm.precision_recall_fscore_support(y_true, y_pred, labels=labels)
    expected_labels = labels if labels is not None else sorted(set(y_true) | set(y_pred))
    assert list(ours) == expected_labels
    for i, label in enumerate(expected_labels):
        assert ours[label]["support"] == int(support[i])
        for key in ("precision", "recall", "f1"):
            assert ours[label][key] == pytest.approx(float(theirs[key][i]), abs=1e-12, rel=0)


@settings(deadline=None, max_examples=200)
@given(label_pairs(), st.sampled_from(["list", "numpy", "torch"]), st.data())
def test_confusion_matrix_matches_sklearn(pair, container, data):
    y_true, y_pred, pool = pair
    yt, yp = as_container(y_true, container), as_container(y_pred, container)
    assert confusion_matrix(yt, yp) == sklearn_confusion(y_true, y_pred)
    # sklearn needs at least one of `labels` in y_true; the others may be anything in the pool.
    labels = data.draw(st.lists(st.sampled_from(pool), min_size=1, unique=True))
    if not set(labels) & set(y_true):
        labels.append(data.draw(st.sampled_from(sorted(set(y_true) - set(labels)))))
    ours = confusion_matrix(yt, yp, labels=labels)
    assert ours == sklearn_confusion(y_true, y_pred, labels=labels)
    assert all(isinstance(count, int) for row in ours for count in row)


def test_zero_division_gives_zero_like_sklearn():
    # Class 2 is never predicted (precision undefined), class 3 never in gold (recall undefined).
    y_true, y_pred = [0, 1, 2, 2], [0, 1, 3, 3]
    assert_scores_equal(
        precision_recall_f1(y_true, y_pred, average="macro"),
        sklearn_prf(y_true, y_pred, average="macro"),
    )
    scores = per_class_scores(y_true, y_pred)
    assert scores[2]["precision"] == 0.0 and scores[3]["recall"] == 0.0
    assert precision_recall_f1([0, 0], [0, 0], average="binary") == {
        "precision": 0.0,
        "recall": 0.0,
        "f1": 0.0,
    }


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: accuracy([0, 1], [0]), "same length"),
        (lambda: accuracy([], []), "empty"),
        (lambda: confusion_matrix([0], [1, 1]), "same length"),
        (lambda: precision_recall_f1([], [], average="macro"), "empty"),
        (lambda: precision_recall_f1([0, 1, 2], [0, 1, 2]), "at most two labels"),
        (lambda: precision_recall_f1(["a", "b"], ["a", "b"]), "pos_label=1 is not a valid label"),
        (lambda: precision_recall_f1([0, 1], [0, 1], average="weighted"), "average must be"),
        (lambda: precision_recall_f1([0, 1], [0, 1], labels=[0]), "labels is not used"),
        (lambda: precision_recall_f1([0, 1], [0, 1], average="macro", labels=[]), "empty"),
        (lambda: confusion_matrix([0, 1], [0, 1], labels=[1, 1]), "duplicates"),
        (lambda: accuracy([0, "a"], [0, "a"]), "mix strings and numbers"),
        (lambda: accuracy(np.zeros((2, 2)), np.zeros((2, 2))), "1-D"),
        (lambda: accuracy("ab", "ab"), "single str"),
    ],
)
def test_bad_inputs_raise_value_error(call, match):
    with pytest.raises(ValueError, match=match):
        call()


# ---------------------------------------------------------------------------------------------
# format_table
# ---------------------------------------------------------------------------------------------


def split_row(line: str) -> list[str]:
    """The cells of one markdown row, split on unescaped pipes and unescaped again."""
    assert line.startswith("| ") and line.endswith(" |")
    cells, current, i = [], "", 0
    body = line[2:-2]
    while i < len(body):
        if body[i] == "\\" and body[i + 1 : i + 2] == "|":
            current, i = current + "|", i + 2
        elif body[i : i + 3] == " | ":
            cells, current, i = cells + [current], "", i + 3
        else:
            current, i = current + body[i], i + 1
    return [c.strip() for c in cells + [current]]


cell_values = st.one_of(
    st.integers(-(10**6), 10**6),
    st.floats(-1e6, 1e6, allow_nan=False),
    st.text(st.characters(codec="ascii", exclude_characters="\n\r\\"), max_size=8).map(str.strip),
    st.none(),
)


@settings(deadline=None, max_examples=100)
@given(
    st.lists(
        st.from_regex(r"[a-z][a-z_0-9]{0,7}", fullmatch=True), min_size=1, max_size=4, unique=True
    ),
    st.data(),
)
def test_format_table_layout_round_trips(columns, data):
    rows = data.draw(st.lists(st.fixed_dictionaries({c: cell_values for c in columns}), max_size=5))
    text = format_table(rows, columns, float_format=".3f")
    lines = text.split("\n")
    assert len(lines) == len(rows) + 2
    assert len({len(line) for line in lines}) == 1  # padded: every line as wide
    assert split_row(lines[0]) == columns
    assert all(set(cell) <= set("-:") and cell for cell in split_row(lines[1]))
    for line, row in zip(lines[2:], rows, strict=True):
        expected = []
        for c in columns:
            value = row[c]
            expected.append(
                ""
                if value is None
                else format(value, ".3f")
                if isinstance(value, float)
                else str(value)
            )
        assert split_row(line) == expected


def test_format_table_defaults_alignment_and_errors():
    rows = [{"model": "minift", "f1": 0.91234, "steps": 10}, {"model": "hf", "f1": 0.9, "steps": 8}]
    text = format_table(rows)
    assert split_row(text.split("\n")[0]) == ["model", "f1", "steps"]
    rule = split_row(text.split("\n")[1])
    assert not rule[0].endswith(":") and rule[1].endswith(":") and rule[2].endswith(":")
    assert "0.9123" in text
    with pytest.raises(ValueError, match=r"row 1 has no value for column\(s\) \['steps'\]"):
        format_table([rows[0], {"model": "x", "f1": 0.5}])
    with pytest.raises(ValueError, match="nothing to print"):
        format_table([])
    assert format_table([], ["a", "b"]).count("\n") == 1


ATOL = 1e-12


TYPES = ["PER", "LOC", "MISC", "ORG-NAME"]  # a type with a "-" inside, as some tag sets have


TAGS = ["O"] + [f"{prefix}-{t}" for t in TYPES for prefix in "BI"]


AVERAGES = {"micro": "micro avg", "macro": "macro avg", "weighted": "weighted avg"}


@st.composite
def gold_and_pred(draw):
    """Sentences of random tags, valid or not in strict IOB2 (I- after O, type switches, empty
    sentences), and predictions that copy the gold tag at some positions so entities match."""
    tag = st.sampled_from(TAGS) | st.just("O")
    gold, pred = [], []
    for _ in range(draw(st.integers(1, 6))):
        g = draw(st.lists(tag, max_size=12))
        p = [t if draw(st.booleans()) else draw(tag) for t in g]
        gold.append(g)
        pred.append(p)
    return gold, pred


def seqeval_report(gold, pred, mode):
    """seqeval's classification_report as a dict; strict is `mode="strict", scheme=IOB2`."""
    kwargs = {"mode": "strict", "scheme": IOB2} if mode == "strict" else {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # undefined metrics (set to 0), mean of no types (NaN)
        return classification_report(gold, pred, output_dict=True, **kwargs)


def assert_row_equal(ours: dict, theirs: dict, name: str):
    for key in ("precision", "recall"):
        assert math.isclose(ours[key], float(theirs[key]), abs_tol=ATOL), (name, key)
    assert math.isclose(ours["f1"], float(theirs["f1-score"]), abs_tol=ATOL), (name, "f1")
    assert ours["support"] == int(theirs["support"]), (name, "support")


@settings(deadline=None, max_examples=300)
@given(gold_and_pred(), st.sampled_from(["default", "strict"]))
def test_entity_scores_equal_seqeval(data, mode):
    gold, pred = data
    ours = entity_scores(gold, pred, mode=mode)
    theirs = seqeval_report(gold, pred, mode)

    types = sorted(k for k in theirs if k not in AVERAGES.values())
    assert list(ours["per_type"]) == types
    for t in types:
        assert_row_equal(ours["per_type"][t], theirs[t], t)
    assert_row_equal(ours["micro"], theirs["micro avg"], "micro")
    assert_row_equal(ours["weighted"], theirs["weighted avg"], "weighted")
    if types:
        assert_row_equal(ours["macro"], theirs["macro avg"], "macro")
    else:  # no entity anywhere: seqeval's macro average is the mean of nothing, NaN; ours is 0
        assert math.isnan(theirs["macro avg"]["f1-score"])
        assert ours["macro"]["f1"] == 0.0
    for key in ("precision", "recall", "f1", "support"):
        assert ours[key] == ours["micro"][key]
    assert ours["mode"] == mode


def test_reference_example_default_and_strict():
    """REFERENCE.md: `I-PER I-PER O B-LOC` against `B-PER I-PER O B-LOC`."""
    gold = [["B-PER", "I-PER", "O", "B-LOC"]]
    pred = [["I-PER", "I-PER", "O", "B-LOC"]]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        default = f1_score(gold, pred)
        strict = f1_score(gold, pred, mode="strict", scheme=IOB2)
    assert default != strict  # the example exists to show the two modes disagree
    assert math.isclose(entity_scores(gold, pred)["f1"], default, abs_tol=ATOL)
    assert math.isclose(entity_scores(gold, pred, mode="strict")["f1"], strict, abs_tol=ATOL)
    # strict mode reads no entity in the prediction's `I-PER I-PER`: PER is missed
    assert entity_scores(gold, pred, mode="strict")["per_type"]["PER"]["recall"] == 0.0


@settings(deadline=None, max_examples=100)
@given(gold_and_pred())
def test_token_accuracy_equals_seqeval(data):
    gold, pred = data
    if sum(map(len, gold)) == 0:
        with pytest.raises(ValueError, match="no tokens"):
            token_accuracy(gold, pred)
        return
    assert math.isclose(token_accuracy(gold, pred), accuracy_score(gold, pred), abs_tol=ATOL)


def test_token_accuracy_takes_any_tags():
    """POS tags are not IOB: any strings work."""
    gold = [["DT", "NN", "VBZ"], ["NNP"]]
    pred = [["DT", "NN", "NN"], ["NNP"]]
    assert math.isclose(token_accuracy(gold, pred), accuracy_score(gold, pred), abs_tol=ATOL)


@pytest.mark.parametrize(
    "gold, pred, match",
    [
        ([["O", "B-PER"]], [["O", "B-PER", "O"]], "sentence 0: gold has 2 tags but pred has 3"),
        ([["O"], ["O"]], [["O"]], "gold has 2 sentences but pred has 1"),
        ([], [], "no sentences"),
        (["B-PER O"], ["B-PER O"], r"gold\[0\]: expected a list of tags"),
        ([["O"], ["O", "B-PER"]], [["O"], ["O", "E-PER"]], r"pred\[1\], tag 1: .*'E-PER'"),
        ([["B-", "O"]], [["O", "O"]], r"gold\[0\], tag 0: .*'B-'"),
        ([["B-PER-"]], [["O"]], r"gold\[0\], tag 0"),
        ([["b-per"]], [["O"]], r"gold\[0\], tag 0"),
        ([["B-NEW YORK"]], [["O"]], r"gold\[0\], tag 0"),
    ],
)
def test_entity_scores_bad_input_names_the_place(gold, pred, match):
    with pytest.raises(ValueError, match=match):
        entity_scores(gold, pred)


def test_entity_scores_refuses_unknown_mode():
    with pytest.raises(ValueError, match="mode must be one of"):
        entity_scores([["O"]], [["O"]], mode="lenient")


def test_token_accuracy_bad_input():
    with pytest.raises(ValueError, match="sentence 1: gold has 1 tags but pred has 2"):
        token_accuracy([["NN"], ["NN"]], [["NN"], ["NN", "VB"]])
