"""Labels: the label vocabulary, and the word labels of token classification (tags, the sub-word
aligner, windows, decoding).

A classifier predicts ids 0..n-1; `LabelVocab` is the one table between them and the label strings
of a task, for sentence classification (SST-2's "0"/"1") and token classification (NER's "O",
"B-PER", ...) alike. Named-entity recognition and part-of-speech tagging label *words*, but the
encoder sees sub-word tokens. The rest of this file is the bookkeeping between the two, as plain
functions over lists:

1. tags      `O`, `B-X` (begins an entity of type X), `I-X` (inside one). IOB2, the strict
             scheme, opens every entity with `B-`; IOB1 (the original CoNLL-2003 files) writes
             `I-` and uses `B-` only between two adjacent entities of the same type.
             `validate_tags`, `iob1_to_iob2`, `entities` (the spans, read as seqeval reads them;
             `minift.metrics` scores NER with them);
2. ids       `LabelVocab`, the label vocabulary (tags: "O" first, then the others sorted);
3. aligner   `align_labels`: word labels to token labels. The first sub-word of a word takes the
             word's label, the other sub-words and the special tokens get `IGNORE_INDEX` (-100,
             which the loss skips), as in transformers' token-classification example;
4. decoding  `decode_word_predictions`: one prediction per word, read at its first sub-word;
5. windows   `split_windows`: a sentence longer than the model takes is cut into overlapping
             windows of whole words, never truncated; each word is predicted by one window.

Nothing here knows about the model or the tokenizer: an aligned batch needs only the tokenizer's
`word_ids` (the index of the word each token came from, None for special and pad tokens). The
errors are `DataError` (bad data: the message names file and line) and its `TagError`.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

# The label cross-entropy skips (its default ignore_index, -100 in the whole ecosystem): special
# tokens, continuation sub-words, unmasked tokens of MLM, padding.
IGNORE_INDEX = -100
SCHEMES = ("iob1", "iob2")
MODES = ("default", "strict")

# A tag is "O", or "B-" / "I-" and a type. A type with no spaces and no "-" at either end reads
# the same under seqeval's two parsers (default mode splits at the first "-", strict strips "-").
_TAG = re.compile(r"(?P<prefix>[BI])-(?P<type>[^\s-]|[^\s-]\S*[^\s-])")


class DataError(ValueError):
    """Data that is not what it should be: a file (`minift.data`'s readers), a label, a tag. The
    message names the place (file and line, 1-based), what was expected and what was found."""


class TagError(DataError):
    """A tag sequence that is malformed, breaks its scheme, or holds a tag the labels lack."""


# ---------------------------------------------------------------------------------------------
# Tags
# ---------------------------------------------------------------------------------------------


def _place(where: str | Sequence[str] | None, position: int, length: int) -> str:
    """Where tag `position` is, for an error message.

    `where` is None (the position alone), a string such as "train.txt:120" put in front of the
    position, or one string per tag ("train.txt:123" for each line of a column file).
    """
    if where is None:
        return f"tag {position}"
    if isinstance(where, str):
        return f"{where}: tag {position}"
    if len(where) != length:
        raise ValueError(f"where has {len(where)} entries for {length} tags: expected one per tag")
    return str(where[position])


def split_tag(tag: Any, place: str = "tag") -> tuple[str, str | None]:
    """("O", None) for "O", ("B", "PER") for "B-PER", ("I", "PER") for "I-PER"; else a TagError."""
    if tag == "O":
        return "O", None
    match = _TAG.fullmatch(tag) if isinstance(tag, str) else None
    if match is None:
        raise TagError(
            f"{place}: expected 'O', 'B-<type>' or 'I-<type>' (e.g. 'B-PER'), found {tag!r}"
        )
    return match["prefix"], match["type"]


def _parse(tags: Sequence[str], where: str | Sequence[str] | None) -> list[tuple[str, str | None]]:
    """Every tag split into (prefix, type), the first malformed one reported by its place."""
    if isinstance(tags, str):
        raise TagError(f"expected a sequence of tags, found the single string {tags!r}")
    return [split_tag(tag, _place(where, i, len(tags))) for i, tag in enumerate(tags)]


def validate_tags(
    tags: Sequence[str], scheme: str = "iob2", where: str | Sequence[str] | None = None
) -> None:
    """Raise a TagError naming the first bad tag of `tags`; return None when all are good.

    Every scheme requires well-formed tags ("O", "B-X", "I-X"). "iob2" also requires that an
    entity opens with `B-`: an `I-X` must follow `B-X` or `I-X`. "iob1" allows `I-X` anywhere.
    `where` names the place in the error: a prefix such as "train.txt:120", or one string per
    tag (the "file:line" of each line of a column file).
    """
    if scheme not in SCHEMES:
        raise ValueError(f"scheme must be one of {SCHEMES}, found {scheme!r}")
    parsed = _parse(tags, where)
    if scheme == "iob1":
        return
    previous = ("O", None)
    for i, (prefix, type_) in enumerate(parsed):
        if prefix == "I" and (previous[0] == "O" or previous[1] != type_):
            before = "the sentence start" if i == 0 else repr(tags[i - 1])
            raise TagError(
                f"{_place(where, i, len(tags))}: {tags[i]!r} after {before} starts an entity, "
                f"but strict IOB2 opens every entity with 'B-{type_}' (IOB1 data? convert it "
                "with iob1_to_iob2)"
            )
        previous = (prefix, type_)


def iob1_to_iob2(tags: Sequence[str], where: str | Sequence[str] | None = None) -> list[str]:
    """The same entities in IOB2: an `I-X` that opens an entity (after `O` or another type)
    becomes `B-X`. IOB2 input comes back unchanged."""
    converted = []
    previous = ("O", None)
    for tag, (prefix, type_) in zip(tags, _parse(tags, where), strict=True):
        if prefix == "I" and (previous[0] == "O" or previous[1] != type_):
            tag = f"B-{type_}"
        converted.append(tag)
        previous = (prefix, type_)
    return converted


def entities(
    tags: Sequence[str], mode: str = "default", where: str | Sequence[str] | None = None
) -> list[tuple[str, int, int]]:
    """The entities of one sentence as (type, start, end) word spans, `end` exclusive.

    The two readings of seqeval (which scores CoNLL NER):
    - "default" (lenient, as conlleval.pl): an entity starts at `B-X`, or at an `I-X` after `O`
      or after another type; it continues over `I-X` of the same type.
    - "strict" (seqeval's `mode="strict", scheme=IOB2`): an entity is a `B-X` and the `I-X` that
      follow it; an `I-X` that opens an entity belongs to none.
    So `I-PER I-PER O B-LOC` holds PER and LOC by default and LOC alone when strict.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, found {mode!r}")
    spans = []
    start, current = None, None  # the open entity: its first word and its type
    for i, (prefix, type_) in enumerate([*_parse(tags, where), ("O", None)]):
        continues = prefix == "I" and type_ == current
        if start is not None and not continues:
            spans.append((current, start, i))
            start, current = None, None
        opens = prefix == "B" or (prefix == "I" and not continues and mode == "default")
        if opens:
            start, current = i, type_
    return spans


# ---------------------------------------------------------------------------------------------
# Label ids: the one vocabulary of labels and tags
# ---------------------------------------------------------------------------------------------


def _label_sort_key(labels: Sequence[str]):
    """Numeric order when every label is an integer ("2" < "10"), string order otherwise."""
    try:
        numbers = {label: int(label) for label in labels}
    except ValueError:
        return lambda label: label
    return lambda label: (numbers[label], label)


@dataclass
class LabelVocab:
    """The labels of a task and their ids 0..n-1 (the model's output classes).

    One vocabulary for both kinds of task, built by one of two constructors:
    - `from_examples`, for sentence classification: the labels of the training examples, sorted,
      except that labels which are all integers sort as numbers, so SST-2's "0", "1" get ids 0, 1
      and RTE's "entailment", "not_entailment" get 0, 1 (GLUE's own order for both);
    - `from_sequences`, for token classification (NER, POS): the tags of the training sentences,
      "O" first (id 0) when present, the others sorted.
    `encode` takes one label (giving an id) or a sentence's tags (giving a list of ids), `decode`
    the reverse. `to_dict` gives the `id2label` / `label2id` entries of a Hugging Face
    `config.json` (what transformers reads back), `from_dict` reads them.
    """

    labels: list[str]

    def __post_init__(self) -> None:
        self.labels = list(self.labels)
        if not self.labels:
            raise ValueError("a LabelVocab needs at least one label, found none")
        self._ids: dict[str, int] = {}
        for i, label in enumerate(self.labels):
            if not isinstance(label, str) or label == "":
                raise ValueError(f"labels must be non-empty strings, found {label!r} at id {i}")
            if label in self._ids:
                raise ValueError(f"labels must be distinct, found {label!r} twice")
            self._ids[label] = i

    @classmethod
    def from_examples(cls, examples: Sequence[Any]) -> LabelVocab:
        """The vocabulary of the labels of `examples` (`minift.data.Example`s, or any objects
        with a `label` and a `where` for the error message); every example must have a label."""
        for ex in examples:
            if ex.label is None:
                raise DataError(f"{ex.where}: expected a label, found none")
        distinct = set(ex.label for ex in examples)
        if not distinct:
            raise DataError("expected labelled examples to build a LabelVocab from, found none")
        return cls(sorted(distinct, key=_label_sort_key(list(distinct))))

    @classmethod
    def from_sequences(cls, sequences: Sequence[Sequence[str]]) -> LabelVocab:
        """The tags seen in `sequences` (one list of tags per sentence): "O" first, then sorted."""
        seen = {tag for tags in sequences for tag in tags}
        if not seen:
            raise TagError("expected tagged sentences to build a LabelVocab from, found no tags")
        return cls(sorted(seen, key=lambda tag: (tag != "O", tag)))

    def __len__(self) -> int:
        return len(self.labels)

    def __contains__(self, label: Hashable) -> bool:
        return label in self._ids

    def encode(
        self, labels: str | Sequence[str] | None, where: str | Sequence[str] | None = None
    ) -> int | list[int]:
        """The id of one label, or the ids of a sentence's tags (a list of them).

        `where` names the place in the error: for one label a "file:line" put in front of the
        message; for tags, as in `validate_tags` (a prefix, or one string per tag).
        """
        if isinstance(labels, str) or labels is None:
            prefix = f"{where}: " if where else ""
            if labels is None:
                raise DataError(f"{prefix}expected a label, found none")
            if labels not in self._ids:
                raise DataError(f"{prefix}found the label {labels!r}, {self._unknown('labels')}")
            return self._ids[labels]
        return [self.encode_tag(tag, _place(where, i, len(labels))) for i, tag in enumerate(labels)]

    def encode_tag(self, tag: str, where: str | None = None) -> int:
        """The id of one tag of a sentence; `where` (e.g. "dev.txt:57") names the place in the
        error message (a `TagError`)."""
        if tag not in self._ids:
            raise TagError(f"{where or 'tag'}: found the tag {tag!r}, {self._unknown('tags')}")
        return self._ids[tag]

    def _unknown(self, noun: str) -> str:
        known = ", ".join(repr(x) for x in self.labels)
        return f"which the training {noun} do not include; expected one of {known}"

    def decode(self, ids: int | Sequence[int] | torch.Tensor) -> str | list[str]:
        """The label of one id (an int or a 0-d tensor), or the labels of a list (or 1-D tensor)
        of ids."""
        if hasattr(ids, "tolist"):  # a tensor or a numpy array or scalar
            ids = ids.tolist()
        if not isinstance(ids, Sequence):
            return self._label(ids, "a label")
        return [self._label(id_, "a tag", f"position {i}: ") for i, id_ in enumerate(ids)]

    def _label(self, id_: Any, what: str, place: str = "") -> str:
        try:
            index = operator.index(id_)  # ints and numpy integers, not floats
        except TypeError:
            index = -1
        if not 0 <= index < len(self.labels):
            raise ValueError(
                f"{place}expected {what} id in 0..{len(self.labels) - 1}, found {id_!r}"
            )
        return self.labels[index]

    def b_to_i(self) -> dict[int, int]:
        """For each `B-X` whose `I-X` is also a tag, the id of `B-X` mapped to the id of `I-X`:
        the label a continuation sub-word of a `B-X` word takes when all sub-words are labelled."""
        return {
            i: self._ids["I-" + label[2:]]
            for i, label in enumerate(self.labels)
            if label.startswith("B-") and "I-" + label[2:] in self._ids
        }

    def to_dict(self) -> dict[str, dict]:
        """`{"id2label": {"0": ..., ...}, "label2id": {...: 0, ...}}`, as in HF's config.json
        (JSON object keys are strings, so the ids of `id2label` are too)."""
        return {
            "id2label": {str(i): label for i, label in enumerate(self.labels)},
            "label2id": dict(self._ids),
        }

    @classmethod
    def from_dict(cls, config: dict) -> LabelVocab:
        """Rebuild from a dict holding `id2label` (a whole HF config works); ids must be 0..n-1
        and a `label2id` entry, when present, must agree."""
        if "id2label" not in config:
            raise ValueError(f"expected a key 'id2label', found the keys {list(config)}")
        id2label = {int(i): label for i, label in config["id2label"].items()}
        if sorted(id2label) != list(range(len(id2label))):
            raise ValueError(f"expected id2label ids 0..n-1, found {sorted(id2label)}")
        vocab = cls([id2label[i] for i in range(len(id2label))])
        label2id = config.get("label2id")
        if label2id is not None:
            label2id = {label: int(i) for label, i in label2id.items()}
            if label2id != vocab._ids:
                raise ValueError(
                    f"expected label2id to invert id2label, found id2label {id2label} "
                    f"and label2id {label2id}"
                )
        return vocab


# ---------------------------------------------------------------------------------------------
# The aligner: word labels -> token labels
# ---------------------------------------------------------------------------------------------


def align_labels(
    word_labels: Sequence[int],
    word_ids: Sequence[int | None],
    *,
    label_all_subwords: bool = False,
    b_to_i: dict[int, int] | None = None,
) -> list[int]:
    """One label per token from one label per word and the tokenizer's `word_ids`.

    A token whose word id differs from the previous token's is the first sub-word of a word and
    takes the word's label; special and pad tokens (word id None) take `IGNORE_INDEX`. Other
    sub-words take `IGNORE_INDEX`, or with `label_all_subwords` the word's label passed through
    `b_to_i` (from `LabelVocab.b_to_i()`): the continuation of a `B-PER` word is `I-PER`, not a
    second `B-PER` that would open a new entity; labels not in the map (O, I-X, POS tags) are
    copied. This is `tokenize_and_align_labels` of transformers' token-classification example.
    """
    if label_all_subwords and b_to_i is None:
        raise ValueError(
            "label_all_subwords=True needs b_to_i (LabelVocab.b_to_i()), so that continuations of "
            "B- words get I- labels; pass {} to copy every label unchanged"
        )
    if not label_all_subwords and b_to_i is not None:
        raise ValueError("b_to_i is used only with label_all_subwords=True")
    labels, previous = [], None
    for t, word in enumerate(word_ids):
        if word is None:
            labels.append(IGNORE_INDEX)
        elif not (isinstance(word, int) and 0 <= word < len(word_labels)):
            raise ValueError(
                f"token {t}: word id {word!r} is not in 0..{len(word_labels) - 1}: expected one "
                f"label per word, found {len(word_labels)} labels"
            )
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


def align_batch(
    word_labels: Sequence[Sequence[int]],
    encoding: Any,
    *,
    label_all_subwords: bool = False,
    b_to_i: dict[int, int] | None = None,
) -> torch.Tensor:
    """`align_labels` for each sentence of a batch: a (batch, seq) `torch.long` tensor of labels.

    `encoding` is a tokenized batch with `word_ids` (minift's `Encoding`, or a transformers
    BatchEncoding); rows of different lengths are padded with `IGNORE_INDEX`.
    """
    rows = word_id_rows(encoding, len(word_labels))
    aligned = []
    for b, (labels, word_ids) in enumerate(zip(word_labels, rows, strict=True)):
        try:
            aligned.append(
                align_labels(labels, word_ids, label_all_subwords=label_all_subwords, b_to_i=b_to_i)
            )
        except ValueError as error:
            raise ValueError(f"sentence {b}: {error}") from None
    length = max((len(row) for row in aligned), default=0)
    return torch.tensor(
        [row + [IGNORE_INDEX] * (length - len(row)) for row in aligned], dtype=torch.long
    )


# ---------------------------------------------------------------------------------------------
# Decoding: token predictions -> one prediction per word
# ---------------------------------------------------------------------------------------------


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


def decode_word_predictions(
    token_predictions: Sequence[int] | torch.Tensor,
    word_ids: Sequence[int | None],
    num_words: int | None = None,
    fill: int | None = None,
) -> list[int]:
    """One prediction per word: the prediction at the word's first sub-word.

    `token_predictions` (a list or 1-D tensor, e.g. `logits.argmax(-1)[b]`) lines up with
    `word_ids`. `num_words` defaults to the largest word id + 1. A word with no token at all
    (a word of characters the tokenizer deletes, such as U+FFFD) gets `fill`, or is an error
    when `fill` is None.
    """
    if isinstance(token_predictions, torch.Tensor):
        token_predictions = token_predictions.tolist()
    if len(token_predictions) != len(word_ids):
        raise ValueError(
            f"got {len(token_predictions)} token predictions for {len(word_ids)} word ids: "
            "expected one per token"
        )
    first: dict[int, Any] = {}
    for prediction, word in zip(token_predictions, word_ids, strict=True):
        if word is not None and word not in first:
            first[word] = prediction
    if num_words is None:
        num_words = max(first, default=-1) + 1
    out_of_range = [w for w in first if not (isinstance(w, int) and 0 <= w < num_words)]
    if out_of_range:
        raise ValueError(f"word id {out_of_range[0]!r} is not in 0..{num_words - 1}")
    words = []
    for w in range(num_words):
        if w in first:
            words.append(first[w])
        elif fill is not None:
            words.append(fill)
        else:
            raise ValueError(
                f"word {w} has no token (the tokenizer dropped all its characters): "
                "pass fill= to give such words a prediction"
            )
    return words


def decode_batch(
    token_predictions: Sequence[Sequence[int]] | torch.Tensor,
    word_ids: Sequence[Sequence[int | None]],
    num_words: Sequence[int] | None = None,
    fill: int | None = None,
) -> list[list[int]]:
    """`decode_word_predictions` for each row of a (batch, seq) batch of predictions."""
    if isinstance(token_predictions, torch.Tensor):
        token_predictions = token_predictions.tolist()
    if len(token_predictions) != len(word_ids):
        raise ValueError(
            f"got {len(token_predictions)} rows of predictions for {len(word_ids)} rows of word ids"
        )
    counts = [None] * len(word_ids) if num_words is None else list(num_words)
    if len(counts) != len(word_ids):
        raise ValueError(f"got {len(counts)} word counts for {len(word_ids)} sentences")
    decoded = []
    for b, (row, ids, n) in enumerate(zip(token_predictions, word_ids, counts, strict=True)):
        try:
            decoded.append(decode_word_predictions(row, ids, n, fill))
        except ValueError as error:
            raise ValueError(f"sentence {b}: {error}") from None
    return decoded


# ---------------------------------------------------------------------------------------------
# Windows: sentences longer than the model takes
# ---------------------------------------------------------------------------------------------


def split_windows(
    n_tokens_per_word: Sequence[int],
    max_tokens: int,
    stride_words: int,
    where: str | Sequence[str] = "sentence",
) -> list[tuple[int, int]]:
    """Cut a sentence into windows of whole words, (word_start, word_end) with `end` exclusive.

    Each window holds at most `max_tokens` sub-word tokens (the model's maximum length less its
    special tokens, e.g. 512 - 2 for BERT). A sentence that fits is one window, (0, n). Otherwise
    each window is filled greedily, and the next one starts `stride_words` words before the end
    of the previous (fewer when the overlap would not leave room for a new word), so the words
    near a cut are seen with context on both sides. Every word is in at least one window; a
    word longer than `max_tokens` alone is an error rather than a truncation; `where` names its
    place: a prefix ("sentence 3" gives "sentence 3, word 1"), or one string per word (such as
    the "file:line" of each word of a column file).
    """
    if not (isinstance(max_tokens, int) and max_tokens >= 1):
        raise ValueError(f"max_tokens must be a positive integer, found {max_tokens!r}")
    if not (isinstance(stride_words, int) and stride_words >= 0):
        raise ValueError(f"stride_words must be an integer >= 0, found {stride_words!r}")
    counts = list(n_tokens_per_word)
    if not isinstance(where, str) and len(where) != len(counts):
        raise ValueError(
            f"where has {len(where)} entries for {len(counts)} words: expected one each"
        )
    for i, count in enumerate(counts):
        place = f"{where}, word {i}" if isinstance(where, str) else where[i]
        if not (isinstance(count, int) and count >= 0):
            raise ValueError(f"{place}: expected a token count >= 0, found {count!r}")
        if count > max_tokens:
            raise ValueError(
                f"{place}: has {count} sub-word tokens, more than a window holds "
                f"(max_tokens={max_tokens}); it cannot be labelled without truncating it"
            )
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

    The rule: a word belongs to the window where it has the most context, the context being the
    smaller of the words before it and after it inside the window, a side that reaches the
    sentence's own edge counting as unlimited; ties go to the earlier window. For two windows
    that overlap this cuts the overlap in the middle, so a word near a cut is predicted from the
    window where it is far from the edge. The sentence ends at the largest window end.
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


def merge_window_predictions(
    window_predictions: Sequence[Sequence[Any]], windows: Sequence[tuple[int, int]]
) -> list[Any]:
    """One prediction per word of the sentence from the predictions of its windows.

    `window_predictions[k]` holds one prediction (a label id, a vector of logits, ...) per word
    of `windows[k]`; each word keeps the one of its owner (see `window_owners`).
    """
    if len(window_predictions) != len(windows):
        raise ValueError(
            f"got predictions for {len(window_predictions)} windows, expected {len(windows)}"
        )
    for k, (predictions, (start, end)) in enumerate(zip(window_predictions, windows, strict=True)):
        if len(predictions) != end - start:
            raise ValueError(
                f"window {k} covers {end - start} words (words {start}..{end - 1}) but has "
                f"{len(predictions)} predictions"
            )
    owners = window_owners(windows)
    return [window_predictions[k][i - windows[k][0]] for i, k in enumerate(owners)]


@dataclass
class WindowPlan:
    """The windows of every sentence of a data set, from `plan_windows`.

    `pieces()` lists the windows to encode, in order; `merge` folds their per-word predictions
    back into one list per sentence. `num_windowed` is what a user should be told: how many
    sentences were too long for the model and were split rather than truncated.
    """

    windows: list[list[tuple[int, int]]]

    @property
    def num_sentences(self) -> int:
        """Number of sentences planned."""
        return len(self.windows)

    @property
    def num_windowed(self) -> int:
        """Number of sentences split into more than one window."""
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
            raise ValueError(
                f"got predictions for {len(piece_predictions)} pieces, expected {self.num_windows}"
            )
        merged, k = [], 0
        for s, ws in enumerate(self.windows):
            try:
                merged.append(merge_window_predictions(piece_predictions[k : k + len(ws)], ws))
            except ValueError as error:
                raise ValueError(f"sentence {s}: {error}") from None
            k += len(ws)
        return merged


def plan_windows(
    n_tokens_per_word: Sequence[Sequence[int]],
    max_tokens: int,
    stride_words: int,
    where: Sequence[Sequence[str]] | None = None,
) -> WindowPlan:
    """`split_windows` for every sentence (its tokens per word, see `tokens_per_word`); `where`
    holds the place of every word of every sentence for the errors ("sentence s, word i" when
    None)."""
    if where is not None and len(where) != len(n_tokens_per_word):
        raise ValueError(
            f"where has {len(where)} entries for {len(n_tokens_per_word)} sentences: "
            "expected one each"
        )
    return WindowPlan(
        [
            split_windows(
                counts, max_tokens, stride_words, f"sentence {s}" if where is None else where[s]
            )
            for s, counts in enumerate(n_tokens_per_word)
        ]
    )
