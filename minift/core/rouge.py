"""ROUGE-L (Lin, "ROUGE: A Package for Automatic Evaluation of Summaries", 2004, section 3),
computed the way Google's `rouge-score` package does.

BLEU asks how many of the hypothesis's n-grams a reference holds; ROUGE-L asks how long a run of
words, in order but not necessarily adjacent, the two texts share: the *longest common
subsequence* (LCS). "the cat sat on the mat" and "the cat lay on a mat" share "the cat on mat",
4 words. Its precision is LCS / hypothesis words, its recall LCS / reference words, and the
score reported is their F-measure (harmonic mean). In-order matching credits sentence structure
that bag-of-n-gram scores miss, without demanding consecutive matches.

The tokeniser is rouge-score's default: lowercase, every run of characters other than a-z and
0-9 is a separator, so "Café" is the words "caf" and nothing of "é". rouge-score can also stem
words (Porter, through nltk); minift does not, so compare with `use_stemmer=False`. With several
references a hypothesis takes the scores of the reference with the best F-measure (the first on
a tie), as `RougeScorer.score_multi` does.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from minift.core.bleu import check_corpus, check_references

_WORD = re.compile(r"[a-z0-9]+")


def tokenize(text: str) -> list[str]:
    """The words of `text` as rouge-score's default tokeniser (without stemming) sees them: the
    runs of a-z and 0-9 in the lowercased text; everything else separates words."""
    return _WORD.findall(text.lower())


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """The length of the longest common subsequence of `a` and `b`, by dynamic programming.

    `row[j]` is the LCS of the words of `a` read so far and the first j words of `b`: a word
    that matches extends the LCS of both prefixes without it by one; otherwise the longer of the
    LCS without the new word of `a` and the LCS without the j-th word of `b` carries over.
    One row of the table is kept at a time: O(len(a) * len(b)) time, O(len(b)) memory.
    """
    row = [0] * (len(b) + 1)
    for word in a:
        previous = row  # the row before `word` was read
        row = [0]
        for j, other in enumerate(b, start=1):
            row.append(previous[j - 1] + 1 if word == other else max(previous[j], row[j - 1]))
    return row[-1]


@dataclass(frozen=True)
class RougeScore:
    """ROUGE precision, recall and F-measure, each in 0..1 (rouge-score's `Score`)."""

    precision: float
    recall: float
    fmeasure: float


def f_measure(precision: float, recall: float) -> float:
    """The harmonic mean of precision and recall; 0 when both are 0."""
    if precision + recall > 0:
        return 2 * precision * recall / (precision + recall)
    return 0.0


def rouge_l(hypothesis: str, reference: str) -> RougeScore:
    """ROUGE-L of one hypothesis against one reference: LCS over hypothesis words (precision),
    over reference words (recall), and their F-measure. A text without a word scores 0."""
    hypothesis_words, reference_words = tokenize(hypothesis), tokenize(reference)
    if not hypothesis_words or not reference_words:
        return RougeScore(0.0, 0.0, 0.0)
    common = lcs_length(reference_words, hypothesis_words)
    precision = common / len(hypothesis_words)
    recall = common / len(reference_words)
    return RougeScore(precision, recall, f_measure(precision, recall))


def rouge_l_multi(hypothesis: str, references: Sequence[str]) -> RougeScore:
    """ROUGE-L against several references: the scores of the reference with the highest
    F-measure, the first such on a tie (rouge-score's `score_multi`). A None among the
    references is skipped, as `corpus_bleu` skips it."""
    if not isinstance(hypothesis, str):
        raise ValueError(f"hypothesis: expected a string, found {type(hypothesis).__name__}")
    references = check_references(references)
    scores = [rouge_l(hypothesis, reference) for reference in references]
    return max(scores, key=lambda score: score.fmeasure)  # max keeps the first of equals


def corpus_rouge_l(hypotheses: Sequence[str],
                   references: Sequence[Sequence[str]]) -> RougeScore:
    """The mean ROUGE-L precision, recall and F-measure over a test set, `references[i]` holding
    every reference of hypothesis i (each hypothesis scored by `rouge_l_multi`): the layout of
    `minift.core.bleu.corpus_bleu`, whose argument checks this shares.

    Unlike corpus BLEU this is a mean of sentence scores, as summarisation and data-to-text
    papers report ROUGE-L (the F-measure, usually times 100). rouge-score's
    `BootstrapAggregator` reports the median of resampled means instead, which is close to this
    mean but not equal to it.
    """
    references = check_corpus(hypotheses, references)
    scores = [rouge_l_multi(h, refs) for h, refs in zip(hypotheses, references, strict=True)]
    count = len(scores)
    return RougeScore(sum(s.precision for s in scores) / count,
                      sum(s.recall for s in scores) / count,
                      sum(s.fmeasure for s in scores) / count)
