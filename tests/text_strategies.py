"""Hypothesis strategies for texts and corpora with several references, and the E2E references
read independently of minift: shared by test_bleu and test_rouge."""

import csv
from pathlib import Path

from hypothesis import strategies as st

# A small vocabulary, so that n-grams overlap, with what the 13a tokeniser treats specially:
# sentence punctuation, numbers with a period, comma or hyphen, HTML entities, apostrophes,
# mixed case, non-ASCII letters, and the markers it removes.
WORDS = ["the", "The", "THE", "cat", "sat", "on", "mat", "a", "dog", "is", "Café", "naïve",
         ".", ",", "!", "?", "(", ")", '"', "'s", "don't", "3.5", "1,000", "2-3", "well-known",
         "end.", "x,y", "&amp;", "&quot;", "&lt;b&gt;", "<skipped>", "-", "--", "$5", "100%"]
SEPARATORS = [" ", " ", " ", "", "  ", "\t", "\n", "-\n", "\u00a0"]


@st.composite
def texts(draw, max_words: int = 12) -> str:
    """A text of 0..max_words words from WORDS, joined by assorted whitespace (or nothing)."""
    words = draw(st.lists(st.sampled_from(WORDS), max_size=max_words))
    pieces = []
    for word in words:
        pieces += [word, draw(st.sampled_from(SEPARATORS))]
    return "".join(pieces)


@st.composite
def corpora(draw, max_sentences: int = 8, max_references: int = 4):
    """(hypotheses, references): references[i] holds 1..max_references texts for hypothesis i.
    A hypothesis is often a reference with words changed, so that long n-grams match too."""
    n = draw(st.integers(1, max_sentences))
    references = [draw(st.lists(texts(), min_size=1, max_size=max_references)) for _ in range(n)]
    hypotheses = []
    for refs in references:
        if draw(st.booleans()):
            words = refs[0].split()
            cut = draw(st.integers(0, len(words)))
            hypotheses.append(" ".join(words[:cut] + draw(st.lists(st.sampled_from(WORDS),
                                                                    max_size=3))))
        else:
            hypotheses.append(draw(texts()))
    return hypotheses, references


def e2e_references(path: Path) -> list[list[str]]:
    """The references of every meaning representation of an E2E file, in file order (read
    with the csv module, independently of minift's reader)."""
    grouped: dict[str, list[str]] = {}
    with open(path, encoding="utf-8-sig", newline="") as f:
        for row in csv.DictReader(f):
            grouped.setdefault(row["mr"], []).append(row["ref"])
    return list(grouped.values())
