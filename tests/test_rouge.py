"""minift.core.rouge against the rouge-score package (`RougeScorer(["rougeL"])`, no stemmer): the
tokeniser, the LCS, ROUGE-L with one and several references, and the corpus mean, on random
texts and on the E2E references.

Tolerance: precision, recall and F-measure within 1e-12 (they are ratios of the same small
integers on both sides, so equal in practice); token lists exactly equal.
"""

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rouge_score import rouge_scorer
from rouge_score import tokenize as rouge_tokenize
from text_strategies import corpora, e2e_references, texts

from minift.core.rouge import (
    corpus_rouge_l,
    lcs_length,
    rouge_l,
    rouge_l_multi,
    tokenize,
)

TOLERANCE = 1e-12


@pytest.fixture(scope="module")
def scorer():
    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)


def assert_same(ours, theirs) -> None:
    for name in ("precision", "recall", "fmeasure"):
        assert math.isclose(getattr(ours, name), getattr(theirs, name), rel_tol=0,
                            abs_tol=TOLERANCE), (name, ours, theirs)


def lcs_by_brute_force(a: list[str], b: list[str]) -> int:
    """The longest subsequence of `a` (every subset of its positions, in order) found in `b`."""
    def is_subsequence(words, of):
        rest = iter(of)
        return all(word in rest for word in words)
    best = 0
    for mask in range(1 << len(a)):
        chosen = [w for i, w in enumerate(a) if mask >> i & 1]
        if len(chosen) > best and is_subsequence(chosen, b):
            best = len(chosen)
    return best


# ----------------------------------------------------------------------------------------------
# The pieces


@settings(max_examples=25, deadline=None)
@given(st.lists(st.one_of(texts(), st.text(max_size=20)), min_size=1, max_size=5))
def test_tokenize_matches_rouge_score(lines):
    """Vocabulary texts (case, digits, accents, punctuation) and arbitrary Unicode alike."""
    for line in lines:
        assert tokenize(line) == rouge_tokenize.tokenize(line, None)


@settings(max_examples=25, deadline=None)
@given(st.lists(st.sampled_from("abcd"), max_size=8), st.lists(st.sampled_from("abcd"), max_size=8))
def test_lcs_length_is_the_longest_common_subsequence(a, b):
    """Against a brute force over every subsequence (2^8 at most), both orders of arguments."""
    assert lcs_length(a, b) == lcs_length(b, a) == lcs_by_brute_force(a, b)


def test_rouge_l_example():
    """The module docstring's example: 4 words in common, of 6 and 6."""
    score = rouge_l("the cat lay on a mat", "the cat sat on the mat")
    assert (score.precision, score.recall) == (4 / 6, 4 / 6)
    assert math.isclose(score.fmeasure, 4 / 6, rel_tol=1e-15)


# ----------------------------------------------------------------------------------------------
# Against rouge-score


@settings(max_examples=25, deadline=None)
@given(hypothesis=texts(), reference=texts())
def test_rouge_l_matches_rouge_score(scorer, hypothesis, reference):
    """One reference; either text may be empty or hold no word at all ("!", "--")."""
    assert_same(rouge_l(hypothesis, reference), scorer.score(reference, hypothesis)["rougeL"])


@settings(max_examples=25, deadline=None)
@given(hypothesis=texts(), references=st.lists(texts(), min_size=1, max_size=5))
def test_rouge_l_multi_matches_score_multi(scorer, hypothesis, references):
    """Several references: the scores of the best F-measure, the first on a tie (two references
    with the same F but different precision and recall tell the difference)."""
    ours = rouge_l_multi(hypothesis, references)
    assert_same(ours, scorer.score_multi(references, hypothesis)["rougeL"])


def test_ties_keep_the_first_reference(scorer):
    """F = 2 LCS / (hypothesis + reference words), so two references can tie on F with different
    precision and recall: "a b c d" against "a b" (P 1/2, R 1) and "a b c d e f g h" (P 1,
    R 1/2), both F 2/3. The first listed wins, in either order, as in score_multi."""
    hypothesis, references = "a b c d", ["a b", "a b c d e f g h"]
    first, second = (rouge_l(hypothesis, r) for r in references)
    assert first.fmeasure == second.fmeasure and first.precision != second.precision
    for order in (references, references[::-1]):
        ours = rouge_l_multi(hypothesis, order)
        assert_same(ours, scorer.score_multi(order, hypothesis)["rougeL"])
        assert ours == rouge_l(hypothesis, order[0])


@settings(max_examples=15, deadline=None)
@given(corpus=corpora())
def test_corpus_rouge_l_is_the_mean_of_score_multi(scorer, corpus):
    hypotheses, references = corpus
    theirs = [scorer.score_multi(refs, h)["rougeL"] for h, refs in zip(hypotheses, references, strict=True)]
    ours = corpus_rouge_l(hypotheses, references)
    for name in ("precision", "recall", "fmeasure"):
        mean = sum(getattr(s, name) for s in theirs) / len(theirs)
        assert math.isclose(getattr(ours, name), mean, rel_tol=0, abs_tol=TOLERANCE)


def test_e2e_references_as_hypotheses(data_dir, scorer):
    """Each E2E test MR's first reference against its other references, every sentence
    compared and the corpus mean too."""
    grouped = [refs for refs in e2e_references(data_dir / "e2e" / "testset_w_refs.csv")
               if len(refs) > 1]
    hypotheses, references = [refs[0] for refs in grouped], [refs[1:] for refs in grouped]
    theirs = [scorer.score_multi(refs, h)["rougeL"] for h, refs in zip(hypotheses, references, strict=True)]
    for h, refs, score in zip(hypotheses, references, theirs, strict=True):
        assert_same(rouge_l_multi(h, refs), score)
    mean_f = sum(s.fmeasure for s in theirs) / len(theirs)
    ours = corpus_rouge_l(hypotheses, references)
    assert math.isclose(ours.fmeasure, mean_f, rel_tol=0, abs_tol=TOLERANCE)
    assert 0.4 < ours.fmeasure < 1  # human references agree with each other, not perfectly


# ----------------------------------------------------------------------------------------------
# Bad input


@pytest.mark.parametrize("call, message", [
    (lambda: rouge_l_multi("a", []), "references: expected at least one reference"),
    (lambda: rouge_l_multi("a", "a"), "references: expected a list of reference strings"),
    (lambda: rouge_l_multi(None, ["a"]), "hypothesis: expected a string"),
    (lambda: corpus_rouge_l(["a"], [["a"], ["b"]]), "one list of references per hypothesis"),
    (lambda: corpus_rouge_l(["a", "b"], [["a"], []]), r"references\[1\]: expected at least"),
    (lambda: corpus_rouge_l([], []), "at least one hypothesis"),
])
def test_bad_input_is_named(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_words_outside_a_z_are_separators():
    """What rouge-score's tokeniser does to accents and apostrophes, which a reader may not
    expect: "Café" is "caf", "don't" is "don" and "t"."""
    assert tokenize("Café don't 3.5") == ["caf", "don", "t", "3", "5"]
