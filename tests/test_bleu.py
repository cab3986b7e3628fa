"""minift.core.bleu against sacrebleu: the 13a tokeniser, corpus BLEU with every smoothing method
and a variable number of references per hypothesis, on random texts and on the E2E references.

Tolerances: the score and each precision within 1e-9 (in BLEU points, 0..100), the brevity
penalty within 1e-12; token counts, n-gram counts and lengths exactly equal. Both sides do the
same float operations, so in practice the numbers are equal to the last bit.
"""

import math

import pytest
import sacrebleu  # a reference library the tests install: missing, the file fails, never skips
from hypothesis import given, settings
from hypothesis import strategies as st
from sacrebleu.metrics import BLEU
from sacrebleu.tokenizers.tokenizer_13a import Tokenizer13a
from text_strategies import corpora, e2e_references, texts

from minift.core.bleu import (
    SMOOTH_METHODS,
    closest_reference_length,
    corpus_bleu,
    ngram_counts,
    tokenize_13a,
)


def streams(references: list[list[str]], pad=None) -> list[list[str | None]]:
    """sacrebleu's layout: stream k holds every hypothesis's k-th reference, `pad` where a
    hypothesis has fewer than k + 1."""
    width = max(len(refs) for refs in references)
    return [[refs[k] if k < len(refs) else pad for refs in references] for k in range(width)]


def assert_same(ours, theirs, *, counts: bool = True) -> None:
    assert math.isclose(ours.score, theirs.score, rel_tol=0, abs_tol=1e-9), (ours, theirs)
    assert len(ours.precisions) == len(theirs.precisions)
    for p, q in zip(ours.precisions, theirs.precisions, strict=True):
        assert math.isclose(p, q, rel_tol=0, abs_tol=1e-9), (ours.precisions, theirs.precisions)
    assert math.isclose(ours.bp, theirs.bp, rel_tol=0, abs_tol=1e-12)
    assert (ours.sys_len, ours.ref_len) == (theirs.sys_len, theirs.ref_len)
    if counts:  # sacrebleu's add-k adds k to its counts in place; ours are kept raw
        assert (ours.counts, ours.totals) == (list(theirs.counts), list(theirs.totals))


# ----------------------------------------------------------------------------------------------
# The pieces


@settings(max_examples=25, deadline=None)
@given(st.lists(st.one_of(texts(), st.text(max_size=20)), min_size=1, max_size=5))
def test_tokenize_13a_matches_sacrebleu(lines):
    """Texts from the vocabulary and arbitrary Unicode alike tokenise exactly as sacrebleu's."""
    reference = Tokenizer13a()
    for line in lines:
        assert tokenize_13a(line) == reference(line)


def test_tokenize_13a_examples():
    """The rules of mteval-v13a, one each: symbols split, numbers kept, entities unescaped."""
    assert tokenize_13a("Hello, world!") == "Hello , world !"
    assert tokenize_13a("It costs 3.50 or 1,000 (approx.)") == "It costs 3.50 or 1,000 ( approx . )"
    assert tokenize_13a("pages 3-5 of a well-known book") == "pages 3 - 5 of a well-known book"
    assert tokenize_13a("a &amp; b &lt;i&gt;") == "a & b < i >"
    assert tokenize_13a("don't") == "don't"


def test_ngram_counts_and_closest_length():
    counts = ngram_counts("a b a b".split(), max_order=3)
    assert counts[("a",)] == 2 and counts[("a", "b")] == 2 and counts[("b", "a")] == 1
    assert counts[("a", "b", "a")] == 1 and sum(counts.values()) == 4 + 3 + 2
    assert closest_reference_length(5, [3, 7, 9]) == 3  # a tie goes to the shorter
    assert closest_reference_length(5, [9, 6, 4]) == 4
    assert closest_reference_length(0, [4, 2]) == 2


def test_clipping_as_in_the_paper():
    """Papineni et al. 2002, section 2.1: "the the the the the the the" against "The cat is on
    the mat" and "There is a cat on the mat" has a modified unigram precision of 2/7."""
    score = corpus_bleu(["the the the the the the the"],
                        [["The cat is on the mat", "There is a cat on the mat"]], lowercase=True)
    assert (score.counts[0], score.totals[0]) == (2, 7)
    assert math.isclose(score.precisions[0], 100 * 2 / 7, rel_tol=1e-12)


# ----------------------------------------------------------------------------------------------
# Corpus BLEU against sacrebleu


@settings(max_examples=25, deadline=None)
@given(corpora())
def test_corpus_bleu_defaults_match_sacrebleu(corpus):
    """Default options (13a, exp smoothing, mixed case), references padded with None."""
    hypotheses, references = corpus
    theirs = sacrebleu.corpus_bleu(hypotheses, streams(references))
    assert_same(corpus_bleu(hypotheses, references), theirs)


@settings(max_examples=25, deadline=None)
@given(corpora(), st.sampled_from(SMOOTH_METHODS), st.sampled_from([None, 0.0, 0.5, 2]),
       st.booleans(), st.sampled_from(["13a", "none"]), st.integers(1, 5), st.booleans())
def test_corpus_bleu_options_match_sacrebleu(corpus, smooth_method, smooth_value, lowercase,
                                             tokenize, max_order, effective_order):
    """Every smoothing method and value, case folding, both tokenisers, n-gram orders 1 to 5,
    and the effective order (BLEU over the orders the hypotheses reach)."""
    hypotheses, references = corpus
    options = dict(smooth_method=smooth_method, smooth_value=smooth_value, lowercase=lowercase,
                   tokenize=tokenize, effective_order=effective_order)
    theirs = BLEU(max_ngram_order=max_order, **options).corpus_score(hypotheses,
                                                                     streams(references))
    ours = corpus_bleu(hypotheses, references, max_ngram_order=max_order, **options)
    assert_same(ours, theirs, counts=smooth_method != "add-k")


@settings(max_examples=15, deadline=None)
@given(corpora())
def test_empty_string_padding_is_an_empty_reference(corpus):
    """sacrebleu counts an "" pad as a reference of length 0 (it can be the closest length) and
    drops a None pad: a None in our lists is dropped, an "" kept, and both agree."""
    hypotheses, references = corpus
    width = max(len(refs) for refs in references)  # the number of streams
    with_empty = [refs + [""] * (width - len(refs)) for refs in references]
    assert_same(corpus_bleu(hypotheses, with_empty),
                sacrebleu.corpus_bleu(hypotheses, streams(references, pad="")))
    with_none = [refs + [None] * (width - len(refs)) for refs in references]
    assert_same(corpus_bleu(hypotheses, with_none),
                sacrebleu.corpus_bleu(hypotheses, streams(references, pad=None)))


def test_empty_padding_changes_the_brevity_penalty():
    """The case that makes the padding matter: a 2-word hypothesis between a 4-word reference
    and an "" pad (both 2 away) takes the shorter, 0, and escapes the brevity penalty."""
    hypotheses, references = ["a b", "c d e f"], [["a b x y"], ["c d e f", "c d e f"]]
    padded = sacrebleu.corpus_bleu(hypotheses, [["a b x y", "c d e f"], ["", "c d e f"]])
    dropped = sacrebleu.corpus_bleu(hypotheses, [["a b x y", "c d e f"], [None, "c d e f"]])
    assert padded.ref_len == 4 and dropped.ref_len == 8 and padded.bp > dropped.bp
    assert_same(corpus_bleu(hypotheses, [["a b x y", ""], references[1]]), padded)
    assert_same(corpus_bleu(hypotheses, references), dropped)


def test_edge_corpora_match_sacrebleu():
    """No word at all, no match, hypotheses shorter than 4 words, a perfect match."""
    cases = [
        ([""], [["the cat"]]),
        (["", ""], [["a"], [""]]),
        (["dog"], [["the cat"]]),
        (["the cat"], [["the cat sat"]]),
        (["the cat sat on the mat"], [["the cat sat on the mat"]]),
        (["the cat", "a dog sat on a mat ."], [["the cat ."], ["a dog sat on the mat ."]]),
    ]
    for hypotheses, references in cases:
        for method in SMOOTH_METHODS:
            theirs = sacrebleu.corpus_bleu(hypotheses, streams(references), smooth_method=method)
            assert_same(corpus_bleu(hypotheses, references, smooth_method=method), theirs,
                        counts=method != "add-k")
    perfect = corpus_bleu(["the cat sat on the mat"], [["the cat sat on the mat"]]).score
    assert math.isclose(perfect, 100.0, rel_tol=0, abs_tol=1e-9)  # exp(log 100) is 100 + 4e-14


# ----------------------------------------------------------------------------------------------
# Real text: the E2E NLG test set


def test_e2e_references_as_hypotheses(data_dir):
    """Each MR's first reference scored against its other references: real sentences with real
    punctuation, prices (£20-25) and names, up to 44 references per hypothesis."""
    grouped = [refs for refs in e2e_references(data_dir / "e2e" / "testset_w_refs.csv")
               if len(refs) > 1]
    assert len(grouped) > 600
    hypotheses, references = [refs[0] for refs in grouped], [refs[1:] for refs in grouped]
    ours, theirs = corpus_bleu(hypotheses, references), sacrebleu.corpus_bleu(
        hypotheses, streams(references))
    assert_same(ours, theirs)
    assert 30 < ours.score < 100  # human references agree with each other, not perfectly
    lower = corpus_bleu(hypotheses, references, lowercase=True)
    assert_same(lower, sacrebleu.corpus_bleu(hypotheses, streams(references), lowercase=True))


# ----------------------------------------------------------------------------------------------
# Bad input


@pytest.mark.parametrize("hypotheses, references, message", [
    (["a"], [["a"], ["b"]], "one list of references per hypothesis"),
    ([], [], "at least one hypothesis"),
    (["a", "b"], [["a"], []], r"references\[1\]: expected at least one reference"),
    (["a"], [[None]], r"references\[0\]: expected at least one reference"),
    (["a"], ["a"], r"references\[0\]: expected a list of reference strings.*transposed"),
    (["a", 3], [["a"], ["b"]], r"hypotheses\[1\]: expected a string"),
    (["a"], [["a", 3]], r"references\[0\]: expected strings, found int"),
    ("a", [["a"]], "hypotheses: expected a list"),
])
def test_bad_corpus_is_named(hypotheses, references, message):
    with pytest.raises(ValueError, match=message):
        corpus_bleu(hypotheses, references)


@pytest.mark.parametrize("options, message", [
    (dict(smooth_method="add-one"), "smooth_method: expected one of exp, floor, add-k, none"),
    (dict(tokenize="intl"), "tokenize: expected one of 13a, none"),
    (dict(max_ngram_order=0), "max_ngram_order: expected a whole number"),
])
def test_bad_options_are_named(options, message):
    with pytest.raises(ValueError, match=message):
        corpus_bleu(["a"], [["a"]], **options)
