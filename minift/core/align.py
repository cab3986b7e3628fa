"""Word labels on sub-word tokens: the bookkeeping of token classification (NER, POS tagging).

Named-entity recognition and part-of-speech tagging label *words*, but the encoder sees sub-word
tokens. Read in this order, plain functions over lists:

1. aligner   `align_labels`: word labels to token labels. The first sub-word of a word takes the
             word's label, the other sub-words and the special tokens get `IGNORE_INDEX` (-100,
             which the loss skips), as in transformers' token-classification example;
2. decoding  `decode_word_predictions`: one prediction per word, read at its first sub-word;
3. windows   `split_windows`: a sentence longer than the model takes is cut into overlapping
             windows of whole words, never truncated; each word is predicted by the window where
             it has most context (`window_owners`); `plan_windows` plans a whole data set.

Nothing here knows about the model or the tokenizer: an aligned batch needs only the tokenizer's
`word_ids` (the index of the word each token came from, None for special and pad tokens).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

# The label cross-entropy skips (its default ignore_index, -100 in the whole ecosystem).
IGNORE_INDEX = -100


def _each_sentence(function: Callable, rows: Iterable[tuple]) -> list:
    """`function(*row)` for each sentence's row, an error naming the sentence it came from."""
    out = []
    for s, row in enumerate(rows):
        try:
            out.append(function(*row))
        except ValueError as error:
            raise ValueError(f"sentence {s}: {error}") from None
    return out


def align_labels(word_labels: Sequence[int], word_ids: Sequence[int | None], *,
                 label_all_subwords: bool = False,
                 b_to_i: dict[int, int] | None = None) -> list[int]:
    """One label per token from one label per word and the tokenizer's `word_ids`.

    A token whose word id differs from the previous token's is the first sub-word of a word and
    takes the word's label; special and pad tokens (word id None) take `IGNORE_INDEX`. Other
    sub-words take `IGNORE_INDEX`, or with `label_all_subwords` the word's label passed through
    `b_to_i` (from `LabelVocab.b_to_i()`): the continuation of a `B-PER` word is `I-PER`, not a
    second `B-PER` that would open a new entity; labels not in the map (O, I-X, POS tags) are
    copied. This is `tokenize_and_align_labels` of transformers' token-classification example.
    """
    if label_all_subwords and b_to_i is None:
        raise ValueError("label_all_subwords=True needs b_to_i (LabelVocab.b_to_i()), so that "
                         "continuations of B- words get I- labels; pass {} to copy every label "
                         "unchanged")
    if not label_all_subwords and b_to_i is not None:
        raise ValueError("b_to_i is used only with label_all_subwords=True")
    labels, previous = [], None
    for t, word in enumerate(word_ids):
        if word is None:
            labels.append(IGNORE_INDEX)
        elif not (isinstance(word, int) and 0 <= word < len(word_labels)):
            raise ValueError(f"token {t}: word id {word!r} is not in 0..{len(word_labels) - 1}: "
                             f"expected one label per word, found {len(word_labels)} labels")
        elif word != previous:
            labels.append(int(word_labels[word]))
        elif label_all_subwords:
            label = int(word_labels[word])
            labels.append(b_to_i.get(label, label))
        else:
            labels.append(IGNORE_INDEX)
        previous = word
    return labels


def word_id_rows(encoding: Any, batch_size: int) -> list[list[int | None]]:
    """The word ids of each example: `encoding.word_ids` as minift's lists of lists, or as the
    method `word_ids(batch_index)` of transformers' BatchEncoding."""
    if not hasattr(encoding, "word_ids"):
        raise ValueError(f"expected an encoding with word_ids, found {type(encoding).__name__}")
    if callable(encoding.word_ids):
        return [encoding.word_ids(i) for i in range(batch_size)]
    rows = list(encoding.word_ids)
    if len(rows) != batch_size:
        raise ValueError(f"got labels for {batch_size} sentences but {len(rows)} encoded ones")
    return rows


def align_batch(word_labels: Sequence[Sequence[int]], encoding: Any, *,
                label_all_subwords: bool = False,
                b_to_i: dict[int, int] | None = None) -> torch.Tensor:
    """`align_labels` for each sentence of a batch (an `Encoding` or a transformers
    BatchEncoding): a (batch, seq) `torch.long` tensor, padded with `IGNORE_INDEX`."""
    rows = zip(word_labels, word_id_rows(encoding, len(word_labels)), strict=True)
    aligned = _each_sentence(lambda labels, word_ids: align_labels(
        labels, word_ids, label_all_subwords=label_all_subwords, b_to_i=b_to_i), rows)
    length = max((len(row) for row in aligned), default=0)
    return torch.tensor([row + [IGNORE_INDEX] * (length - len(row)) for row in aligned],
                        dtype=torch.long)


def tokens_per_word(word_ids: Sequence[int | None], num_words: int) -> list[int]:
    """How many tokens each of `num_words` words became (0 for a word the tokenizer dropped)."""
    counts = [0] * num_words
    for t, word in enumerate(word_ids):
        if word is None:
            continue
        if not (isinstance(word, int) and 0 <= word < num_words):
            raise ValueError(f"token {t}: word id {word!r} is not in 0..{num_words - 1}")
        counts[word] += 1
    return counts


def decode_word_predictions(token_predictions: Sequence[int] | torch.Tensor,
                            word_ids: Sequence[int | None], num_words: int | None = None,
                            fill: int | None = None) -> list[int]:
    """One prediction per word: the prediction at the word's first sub-word.

    `token_predictions` (e.g. `logits.argmax(-1)[b]`) lines up with `word_ids`; `num_words`
    defaults to the largest word id + 1. A word with no token (characters the tokenizer deletes,
    such as U+FFFD) gets `fill`, or is an error when `fill` is None.
    """
    if isinstance(token_predictions, torch.Tensor):
        token_predictions = token_predictions.tolist()
    if len(token_predictions) != len(word_ids):
        raise ValueError(f"got {len(token_predictions)} token predictions for {len(word_ids)} "
                         "word ids: expected one per token")
    first: dict[int, Any] = {}
    for prediction, word in zip(token_predictions, word_ids, strict=True):
        if word is not None and word not in first:
            first[word] = prediction
    if num_words is None:
        num_words = max(first, default=-1) + 1
    out_of_range = [w for w in first if not (isinstance(w, int) and 0 <= w < num_words)]
    if out_of_range:
        raise ValueError(f"word id {out_of_range[0]!r} is not in 0..{num_words - 1}")
    missing = [w for w in range(num_words) if w not in first]
    if missing and fill is None:
        raise ValueError(f"word {missing[0]} has no token (the tokenizer dropped all its "
                         "characters): pass fill= to give such words a prediction")
    return [first.get(w, fill) for w in range(num_words)]


def decode_batch(token_predictions: Sequence[Sequence[int]] | torch.Tensor,
                 word_ids: Sequence[Sequence[int | None]], num_words: Sequence[int] | None = None,
                 fill: int | None = None) -> list[list[int]]:
    """`decode_word_predictions` for each row of a (batch, seq) batch of predictions."""
    if isinstance(token_predictions, torch.Tensor):
        token_predictions = token_predictions.tolist()
    if len(token_predictions) != len(word_ids):
        raise ValueError(f"got {len(token_predictions)} rows of predictions for {len(word_ids)} "
                         "rows of word ids")
    counts = [None] * len(word_ids) if num_words is None else list(num_words)
    if len(counts) != len(word_ids):
        raise ValueError(f"got {len(counts)} word counts for {len(word_ids)} sentences")
    rows = zip(token_predictions, word_ids, counts, [fill] * len(counts), strict=True)
    return _each_sentence(decode_word_predictions, rows)


def split_windows(n_tokens_per_word: Sequence[int], max_tokens: int, stride_words: int,
                  where: str | Sequence[str] = "sentence") -> list[tuple[int, int]]:
    """Cut a sentence into windows of whole words, (word_start, word_end) with `end` exclusive.

    Each window holds at most `max_tokens` sub-word tokens (e.g. 512 - 2 for BERT). Windows are
    filled greedily, and the next starts `stride_words` words before the end of the previous
    (fewer when that leaves no room for a new word), so words near a cut have context on both
    sides. A word longer than `max_tokens` is an error, not a truncation; `where` names its
    place: a prefix ("sentence 3" gives "sentence 3, word 1") or one string per word.
    """
    if not (isinstance(max_tokens, int) and max_tokens >= 1):
        raise ValueError(f"max_tokens must be a positive integer, found {max_tokens!r}")
    if not (isinstance(stride_words, int) and stride_words >= 0):
        raise ValueError(f"stride_words must be an integer >= 0, found {stride_words!r}")
    counts = list(n_tokens_per_word)
    if not isinstance(where, str) and len(where) != len(counts):
        raise ValueError(f"where has {len(where)} entries for {len(counts)} words: expected one "
                         "each")
    for i, count in enumerate(counts):
        place = f"{where}, word {i}" if isinstance(where, str) else where[i]
        if not (isinstance(count, int) and count >= 0):
            raise ValueError(f"{place}: expected a token count >= 0, found {count!r}")
        if count > max_tokens:
            raise ValueError(f"{place}: has {count} sub-word tokens, more than a window holds "
                             f"(max_tokens={max_tokens}); it cannot be labelled without "
                             "truncating it")
    windows, start = [], 0
    while True:
        end, used = start, 0
        while end < len(counts) and used + counts[end] <= max_tokens:
            used += counts[end]
            end += 1
        windows.append((start, end))
        if end == len(counts):
            return windows
        # Step back `stride_words`, but always move forward and leave room for word `end`.
        start = max(end - stride_words, start + 1)
        while sum(counts[start : end + 1]) > max_tokens:
            start += 1


def window_owners(windows: Sequence[tuple[int, int]]) -> list[int]:
    """For each word of the sentence, the index of the window whose prediction it keeps.

    A word belongs to the window where it has the most context: the smaller of the words before
    and after it inside the window, a side at the sentence's own edge counting as unlimited;
    ties go to the earlier window. Two overlapping windows thus split the overlap in the middle.
    """
    if not windows:
        raise ValueError("expected at least one window, found none")
    n = max(end for _, end in windows)
    for k, (start, end) in enumerate(windows):
        if not (0 <= start <= end <= n):
            raise ValueError(f"window {k}: expected 0 <= start <= end, found ({start}, {end})")
    owners = []
    for i in range(n):
        best, best_context = None, -1
        for k, (start, end) in enumerate(windows):
            if not start <= i < end:
                continue
            left = i - start if start > 0 else n
            right = end - 1 - i if end < n else n
            if min(left, right) > best_context:
                best, best_context = k, min(left, right)
        if best is None:
            raise ValueError(f"word {i} is in no window: the windows must cover the sentence")
        owners.append(best)
    return owners


def merge_window_predictions(window_predictions: Sequence[Sequence[Any]],
                             windows: Sequence[tuple[int, int]]) -> list[Any]:
    """One prediction per word from `window_predictions[k]` (one per word of `windows[k]`):
    each word keeps its owner's (see `window_owners`)."""
    if len(window_predictions) != len(windows):
        raise ValueError(f"got predictions for {len(window_predictions)} windows, expected "
                         f"{len(windows)}")
    for k, (predictions, (start, end)) in enumerate(zip(window_predictions, windows, strict=True)):
        if len(predictions) != end - start:
            raise ValueError(f"window {k} covers {end - start} words (words {start}..{end - 1}) "
                             f"but has {len(predictions)} predictions")
    owners = window_owners(windows)
    return [window_predictions[k][i - windows[k][0]] for i, k in enumerate(owners)]


@dataclass
class WindowPlan:
    """The windows of every sentence of a data set, from `plan_windows`: `pieces()` to encode,
    `merge` to fold their per-word predictions back into one list per sentence."""

    windows: list[list[tuple[int, int]]]

    @property
    def num_sentences(self) -> int:
        """Number of sentences planned."""
        return len(self.windows)

    @property
    def num_windowed(self) -> int:
        """Number of sentences too long for the model, split rather than truncated."""
        return sum(len(w) > 1 for w in self.windows)

    @property
    def num_windows(self) -> int:
        """Number of windows (pieces) in all; equals `num_sentences` when none was split."""
        return sum(len(w) for w in self.windows)

    def pieces(self) -> list[tuple[int, int, int]]:
        """(sentence index, word_start, word_end) of every window, sentence by sentence."""
        return [(s, start, end) for s, ws in enumerate(self.windows) for start, end in ws]

    def merge(self, piece_predictions: Sequence[Sequence[Any]]) -> list[list[Any]]:
        """Per-word predictions of every sentence from those of `pieces()`, in the same order."""
        if len(piece_predictions) != self.num_windows:
            raise ValueError(f"got predictions for {len(piece_predictions)} pieces, expected "
                             f"{self.num_windows}")
        ends = itertools.accumulate(len(ws) for ws in self.windows)  # of each sentence's pieces
        rows = [(piece_predictions[end - len(ws) : end], ws)
                for end, ws in zip(ends, self.windows, strict=True)]
        return _each_sentence(merge_window_predictions, rows)


def plan_windows(n_tokens_per_word: Sequence[Sequence[int]], max_tokens: int, stride_words: int,
                 where: Sequence[Sequence[str]] | None = None) -> WindowPlan:
    """`split_windows` for every sentence (its tokens per word, see `tokens_per_word`); `where`
    holds the place of every word of every sentence for the errors ("sentence s, word i" when
    None)."""
    if where is not None and len(where) != len(n_tokens_per_word):
        raise ValueError(f"where has {len(where)} entries for {len(n_tokens_per_word)} sentences: "
                         "expected one each")
    return WindowPlan([split_windows(counts, max_tokens, stride_words,
                                     f"sentence {s}" if where is None else where[s])
                       for s, counts in enumerate(n_tokens_per_word)])
