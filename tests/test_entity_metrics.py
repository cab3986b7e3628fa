"""minift.core.metrics.entity_scores and token_accuracy against seqeval on random tag sequences."""

import math
import warnings

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from seqeval.metrics import accuracy_score, classification_report, f1_score
from seqeval.scheme import IOB2

from minift.core.metrics import entity_scores, token_accuracy

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
