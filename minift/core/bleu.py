"""Corpus BLEU (Papineni, Roukos, Ward and Zhu, ACL 2002), computed the way sacrebleu does.

BLEU scores a whole test set at once, not one sentence at a time. For every hypothesis it counts
the n-grams (n = 1..4) that also occur in one of its references, *clipped*: an n-gram is credited
at most as many times as the reference that holds it most often holds it, so "the the the" earns
one "the" against "the cat". These counts are summed over the corpus, and the modified precision
of order n is matched n-grams / hypothesis n-grams. The score is their geometric mean times a
*brevity penalty*, exp(1 - r / c) when the hypotheses' total length c falls short of the
references' length r (precision alone would reward saying little). For each hypothesis r takes
the reference length closest to its own (the shorter on a tie), as the NIST script does.

Numbers are comparable with published ones only when the text is tokenised the same way, so the
tokeniser is mteval-v13a's (WMT's, sacrebleu's default "13a"), and a corpus with a sentence that
matches no 4-gram is smoothed as sacrebleu smooths it by default ("exp").

One difference of layout: sacrebleu takes references as *streams* (`[refs_1, refs_2, ...]`, the
k-th stream holding each hypothesis's k-th reference, padded with None where a source has fewer);
here `references[i]` is the list of references of hypothesis i, of any length. A None in such a
list is skipped (sacrebleu's padding); an empty string is a reference of length 0 and counts for
the closest length, as it does in sacrebleu, so pad streams with None, not "", when converting.
"""

from __future__ import annotations

import math
import re
import string
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

MAX_NGRAM_ORDER = 4
SMOOTH_METHODS = ("exp", "floor", "add-k", "none")
SMOOTH_DEFAULTS = {"floor": 0.1, "add-k": 1}  # Chen and Cherry (WMT 2014), as sacrebleu takes them
TOKENIZERS = ("13a", "none")

# --- The 13a tokeniser ----------------------------------------------------------------------------
# mteval-v13a.pl's normalisation, in the order the script applies it. Every ASCII symbol except
# the apostrophe, comma, hyphen and period is a token of its own; a period or comma is split off
# unless it sits between digits (3.5 and 1,000 stay whole); a hyphen is split off after a digit.

_SYMBOLS = "".join(c for c in string.punctuation if c not in "',-.")
_SYMBOL = re.compile(f"([{re.escape(_SYMBOLS)}])")
_PERIOD_COMMA_AFTER_NON_DIGIT = re.compile(r"([^0-9])([.,])")
_PERIOD_COMMA_BEFORE_NON_DIGIT = re.compile(r"([.,])([^0-9])")
_HYPHEN_AFTER_DIGIT = re.compile(r"([0-9])(-)")
_ENTITIES = (("&quot;", '"'), ("&amp;", "&"), ("&lt;", "<"), ("&gt;", ">"))  # in this order


def tokenize_13a(line: str) -> str:
    """`line` tokenised as mteval-v13a does (sacrebleu's default "13a"): its tokens joined by
    single spaces. BLEU is a score over words, so this decides what a word is."""
    line = line.replace("<skipped>", "").replace("-\n", "").replace("\n", " ")
    for entity, character in _ENTITIES:  # &amp;lt; becomes &lt; then <, as in the script
        line = line.replace(entity, character)
    line = f" {line} "  # so a period at either end has a neighbour to be split from
    line = _SYMBOL.sub(r" \1 ", line)
    line = _PERIOD_COMMA_AFTER_NON_DIGIT.sub(r"\1 \2 ", line)
    line = _PERIOD_COMMA_BEFORE_NON_DIGIT.sub(r" \1 \2", line)
    line = _HYPHEN_AFTER_DIGIT.sub(r"\1 \2 ", line)
    return " ".join(line.split())


def _preprocess(text: str, *, lowercase: bool, tokenize: str) -> list[str]:
    """The words of `text` as BLEU counts them, preprocessed as sacrebleu does."""
    if lowercase:
        text = text.lower()
    text = text.rstrip()
    if tokenize == "13a":
        text = tokenize_13a(text)
    return text.split()


# --- Counting -------------------------------------------------------------------------------------


def ngram_counts(words: Sequence[str], max_order: int = MAX_NGRAM_ORDER) -> Counter:
    """How often each n-gram (a tuple of 1 to `max_order` words) occurs in `words`."""
    counts: Counter = Counter()
    for n in range(1, max_order + 1):
        for start in range(len(words) - n + 1):
            counts[tuple(words[start:start + n])] += 1
    return counts


def closest_reference_length(hypothesis_length: int, reference_lengths: Sequence[int]) -> int:
    """The reference length nearest the hypothesis's, the shorter one on a tie (mteval-v13a's
    "closest" effective reference length, which sacrebleu keeps)."""
    return min(reference_lengths, key=lambda length: (abs(hypothesis_length - length), length))


@dataclass
class SentenceStatistics:
    """What one hypothesis adds to the corpus: its length, its closest reference length, and per
    order n (index n - 1) the clipped matches and the hypothesis n-grams."""

    sys_len: int
    ref_len: int
    counts: list[int]
    totals: list[int]


def sentence_statistics(hypothesis: Sequence[str], references: Sequence[Sequence[str]],
                        max_order: int = MAX_NGRAM_ORDER) -> SentenceStatistics:
    """BLEU's sufficient statistics of one tokenised hypothesis against its tokenised references,
    matches clipped (Papineni et al., section 2.1: "modified n-gram precision")."""
    allowed: Counter = Counter()  # the most times any one reference holds each n-gram
    for reference in references:
        allowed |= ngram_counts(reference, max_order)  # a Counter's union keeps the larger count
    counts, totals = [0] * max_order, [0] * max_order
    for ngram, count in ngram_counts(hypothesis, max_order).items():
        totals[len(ngram) - 1] += count
        counts[len(ngram) - 1] += min(count, allowed[ngram])
    ref_len = closest_reference_length(len(hypothesis), [len(r) for r in references])
    return SentenceStatistics(len(hypothesis), ref_len, counts, totals)


# --- From counts to a score -----------------------------------------------------------------------


@dataclass(frozen=True)
class BleuScore:
    """A corpus BLEU score and its parts, named as sacrebleu's `BLEUScore` names them.

    `score` is in 0..100; `precisions[n - 1]` is the (smoothed) modified precision of order n, in
    percent; `counts` and `totals` are the matched and hypothesis n-grams of each order, before
    any smoothing; `bp` is the brevity penalty; `sys_len` and `ref_len` the hypotheses' total
    length and the total of their closest reference lengths, in tokens.
    """

    score: float
    counts: list[int]
    totals: list[int]
    precisions: list[float]
    bp: float
    sys_len: int
    ref_len: int

    def __str__(self) -> str:
        precisions = "/".join(f"{p:.1f}" for p in self.precisions)
        return (f"BLEU = {self.score:.2f} {precisions} (BP = {self.bp:.3f}, hyp_len = "
                f"{self.sys_len}, ref_len = {self.ref_len})")


def brevity_penalty(sys_len: int, ref_len: int) -> float:
    """exp(1 - r / c) when the hypotheses are shorter than the references (c < r), else 1;
    0 for no hypothesis words at all."""
    if sys_len >= ref_len:
        return 1.0
    return math.exp(1 - ref_len / sys_len) if sys_len > 0 else 0.0


def bleu_from_statistics(counts: Sequence[int], totals: Sequence[int], sys_len: int,
                         ref_len: int, *, smooth_method: str = "exp",
                         smooth_value: float | None = None,
                         effective_order: bool = False) -> BleuScore:
    """BLEU from corpus totals: smoothed precisions, their geometric mean, the brevity penalty.

    Smoothing decides what an order with no match contributes, which would otherwise make the
    geometric mean 0 (Chen and Cherry, WMT 2014, name the methods):
    - "exp" (sacrebleu's default, mteval's): the k-th order without a match counts as
      1 / (2^k * its n-grams), so each further empty order weighs half as much.
    - "floor": an order without a match counts `smooth_value` (0.1) matches.
    - "add-k": `smooth_value` (1) is added to the matches and the n-grams of every order n > 1.
    - "none": an order without a match makes the score 0.
    Whatever the method, a corpus with no matched word at all scores 0. An order for which the
    hypotheses hold no n-gram (all shorter than n) ends the precisions there; the score is then
    0 unless `effective_order`, which takes the geometric mean over the orders present
    (sentence-level BLEU needs it; corpus BLEU does not).
    """
    if smooth_method not in SMOOTH_METHODS:
        raise ValueError(f"smooth_method: expected one of {', '.join(SMOOTH_METHODS)}, found "
                         f"{smooth_method!r}")
    if smooth_value is None:
        smooth_value = SMOOTH_DEFAULTS.get(smooth_method)
    counts, totals = list(counts), list(totals)
    bp = brevity_penalty(sys_len, ref_len)
    precisions = [0.0] * len(counts)
    if not any(counts):
        return BleuScore(0.0, counts, totals, precisions, bp, sys_len, ref_len)
    orders_used, empty_orders = len(counts), 0
    for n in range(1, len(counts) + 1):
        matched, total = counts[n - 1], totals[n - 1]
        if smooth_method == "add-k" and n > 1:
            matched, total = matched + smooth_value, total + smooth_value
        if total == 0:
            break
        if effective_order:
            orders_used = n
        if matched > 0:
            precisions[n - 1] = 100.0 * matched / total
        elif smooth_method == "exp":
            empty_orders += 1
            precisions[n - 1] = 100.0 / (2 ** empty_orders * total)
        elif smooth_method == "floor":
            precisions[n - 1] = 100.0 * smooth_value / total
    used = precisions[:orders_used]
    if min(used) == 0.0:  # log 0: the geometric mean of anything with a zero is zero
        return BleuScore(0.0, counts, totals, precisions, bp, sys_len, ref_len)
    score = bp * math.exp(sum(math.log(p) for p in used) / orders_used)
    return BleuScore(score, counts, totals, precisions, bp, sys_len, ref_len)


# --- Corpus BLEU ----------------------------------------------------------------------------------


def check_references(references, where: str = "references") -> list[str]:
    """The references of one hypothesis as a list of strings, None dropped (sacrebleu's padding);
    at least one must remain. `where` names the argument in the error."""
    if isinstance(references, str) or not isinstance(references, Sequence):
        raise ValueError(f"{where}: expected a list of reference strings, found "
                         f"{type(references).__name__} (sacrebleu's streams are transposed: "
                         "references[i] holds every reference of hypothesis i)")
    present = [r for r in references if r is not None]
    bad = [r for r in present if not isinstance(r, str)]
    if bad:
        raise ValueError(f"{where}: expected strings, found {type(bad[0]).__name__}")
    if not present:
        raise ValueError(f"{where}: expected at least one reference, found none")
    return present


def check_corpus(hypotheses, references) -> list[list[str]]:
    """`references` checked by `check_references` after checking that `hypotheses` is a non-empty
    list of strings with one list of references each (the layout of every corpus metric here)."""
    for name, value in (("hypotheses", hypotheses), ("references", references)):
        if isinstance(value, str) or not isinstance(value, Sequence):
            raise ValueError(f"{name}: expected a list, found {type(value).__name__}")
    if len(hypotheses) != len(references):
        raise ValueError(f"expected one list of references per hypothesis, found "
                         f"{len(hypotheses)} hypotheses and {len(references)} reference lists")
    if not hypotheses:
        raise ValueError("hypotheses: expected at least one hypothesis, found none")
    bad = [i for i, hypothesis in enumerate(hypotheses) if not isinstance(hypothesis, str)]
    if bad:
        raise ValueError(f"hypotheses[{bad[0]}]: expected a string, found "
                         f"{type(hypotheses[bad[0]]).__name__}")
    return [check_references(refs, f"references[{i}]") for i, refs in enumerate(references)]


def corpus_bleu(hypotheses: Sequence[str], references: Sequence[Sequence[str | None]], *,
                smooth_method: str = "exp", smooth_value: float | None = None,
                lowercase: bool = False, tokenize: str = "13a",
                max_ngram_order: int = MAX_NGRAM_ORDER,
                effective_order: bool = False) -> BleuScore:
    """Corpus BLEU of `hypotheses`, `references[i]` holding every reference of hypothesis i.

    Equal to `sacrebleu.corpus_bleu(hypotheses, streams, ...)` with the same options, where the
    streams are `references` transposed and padded with None. `tokenize` is "13a" (mteval-v13a,
    sacrebleu's default) or "none" (the text is already split by spaces); `lowercase=True` for an
    uncased model's output. Statistics are summed over the corpus before any ratio is taken:
    corpus BLEU is not the mean of sentence BLEUs.
    """
    if tokenize not in TOKENIZERS:
        raise ValueError(f"tokenize: expected one of {', '.join(TOKENIZERS)}, found {tokenize!r}")
    if not (isinstance(max_ngram_order, int) and max_ngram_order >= 1):
        raise ValueError(f"max_ngram_order: expected a whole number of 1 or more, found "
                         f"{max_ngram_order!r}")
    references = check_corpus(hypotheses, references)
    options = dict(lowercase=lowercase, tokenize=tokenize)
    sys_len = ref_len = 0
    counts, totals = [0] * max_ngram_order, [0] * max_ngram_order
    for hypothesis, refs in zip(hypotheses, references, strict=True):
        stats = sentence_statistics(_preprocess(hypothesis, **options),
                                    [_preprocess(r, **options) for r in refs], max_ngram_order)
        sys_len, ref_len = sys_len + stats.sys_len, ref_len + stats.ref_len
        for n in range(max_ngram_order):
            counts[n] += stats.counts[n]
            totals[n] += stats.totals[n]
    return bleu_from_statistics(counts, totals, sys_len, ref_len, smooth_method=smooth_method,
                                smooth_value=smooth_value, effective_order=effective_order)
