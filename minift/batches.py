"""Examples in, padded batches out: the length-grouped sampler, the padded datasets, collation.

Reading order:

1. `length_grouped_batches` is the "bucket by length" sampler: batches of similar lengths, so
   dynamic padding wastes little.
2. `collate` tokenizes one batch and lets the tokenizer pad it (the obvious form).
3. `pad_batch` pads unpadded rows into a batch; `PaddedRows` keeps a split's rows and pads each
   batch once, to its own longest example. `ClassificationDataset` tokenizes a whole split once
   into such rows (the form training uses, which a test holds equal to `collate` and to the
   tokenizer's own padding); `make_batches` is one pass of it.
4. For token classification (NER, POS), `TokenClassificationDataset` tokenizes sentences of words
   the same way, aligns their word labels to the sub-words (`minift.labels.align_labels`) and cuts
   a sentence too long for the model into windows of whole words (`minift.labels.plan_windows`).

A batch is padded once, here, and unpadded once, in the model.

The tokenizer is duck-typed: any callable `tokenizer(texts, pairs, *, max_length, padding,
truncation, is_split_into_words)` whose result can be indexed by `"input_ids"`,
`"attention_mask"` and `"token_type_ids"` (with `padding=False` one row per example, a list or
1-D tensor of its own length; with `padding=True` (batch, seq), padded on the right), that has a
`pad_token_id` and, for token classification, `word_ids`. Both `minift.tokenizer.Tokenizer` and a
Hugging Face fast tokenizer qualify; one set to pad on the left is refused, since the batches
here are padded on the right.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from minift.data import Example
from minift.labels import (
    IGNORE_INDEX,
    DataError,
    align_labels,
    decode_word_predictions,
    plan_windows,
    tokens_per_word,
    word_id_rows,
)

# ----------------------------------------------------------------------------------------------
# The sampler


def length_grouped_batches(
    lengths: Sequence[int],
    batch_size: int,
    *,
    generator: torch.Generator | None,
    shuffle: bool = True,
    group_size_multiplier: int = 50,
    drop_last: bool = False,
) -> list[list[int]]:
    """Batches of indices into `lengths` whose members have similar lengths.

    With `shuffle` (the training order): shuffle the indices with `generator`, cut them into
    mega-batches of `batch_size * group_size_multiplier`, sort each mega-batch by length (longest
    first), cut it into batches and shuffle the order of all the batches. Only the last batch of
    the last mega-batch can be short; `drop_last` drops it. The same generator state gives the
    same batches. (This is the sampler of HF's `group_by_length`, minus its rule that the longest
    batch goes first.)

    Without `shuffle` (evaluation): all indices sorted by length, longest first, ties in index
    order, cut into batches; `generator` is not used.
    """
    if batch_size < 1:
        raise ValueError(f"expected batch_size >= 1, found {batch_size}")
    if group_size_multiplier < 1:
        raise ValueError(f"expected group_size_multiplier >= 1, found {group_size_multiplier}")

    def by_length(indices: list[int]) -> list[int]:
        return sorted(indices, key=lambda i: -lengths[i])  # sorted() is stable

    def cut(indices: list[int]) -> list[list[int]]:
        return [indices[i : i + batch_size] for i in range(0, len(indices), batch_size)]

    if not shuffle:
        batches = cut(by_length(list(range(len(lengths)))))
    else:
        if generator is None:
            raise ValueError(
                "expected a torch.Generator to shuffle with (shuffle=True), found None; pass "
                "generator=torch.Generator().manual_seed(seed)"
            )
        order = torch.randperm(len(lengths), generator=generator).tolist()
        mega = batch_size * group_size_multiplier
        batches = [
            b for s in range(0, len(order), mega) for b in cut(by_length(order[s : s + mega]))
        ]
    if drop_last and batches and len(batches[-1]) < batch_size:
        batches.pop()
    if shuffle:
        batches = [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]
    return batches


# ----------------------------------------------------------------------------------------------
# One batch, padded by the tokenizer (the obvious form)


def _texts_and_pairs(items: Sequence[Example | str]) -> tuple[list[str], list[str] | None]:
    texts = [x.text if isinstance(x, Example) else x for x in items]
    pairs = [x.pair if isinstance(x, Example) else None for x in items]
    if all(p is None for p in pairs):
        return texts, None
    if any(p is None for p in pairs):
        raise ValueError("expected every example of a batch to have a pair or none to, found a mix")
    return texts, pairs


def collate(
    examples_or_texts: Sequence[Example | str],
    tokenizer,
    max_length: int | None,
    labels: Sequence[int] | Tensor | None = None,
) -> dict[str, Tensor]:
    """Tokenize one batch and pad it to its longest member (dynamic padding).

    Returns `input_ids`, `attention_mask`, `token_type_ids`, each a LongTensor (batch, seq), and
    `labels` (batch,) when given. Examples with a `pair` are encoded as pairs.
    """
    texts, pairs = _texts_and_pairs(examples_or_texts)
    encoding = tokenizer(texts, pairs, max_length=max_length, padding=True, truncation=True)
    names = ("input_ids", "attention_mask", "token_type_ids")
    batch = {name: torch.as_tensor(encoding[name], dtype=torch.long) for name in names}
    if labels is not None:
        batch["labels"] = torch.as_tensor(labels, dtype=torch.long)
        if batch["labels"].shape != (len(texts),):
            raise ValueError(
                f"expected one label per example ({len(texts)}), found shape "
                f"{tuple(batch['labels'].shape)}"
            )
    return batch


# ----------------------------------------------------------------------------------------------
# Padding once: unpadded rows in, one padded batch out


def pad_rows(rows: Sequence[Tensor], value: int) -> Tensor:
    """Stack 1-d rows into (batch, longest), padding on the right with `value`."""
    out = torch.full((len(rows), max(len(r) for r in rows)), value, dtype=torch.long)
    for i, row in enumerate(rows):
        out[i, : len(row)] = row
    return out


def pad_batch(
    input_ids: Sequence[Tensor], token_type_ids: Sequence[Tensor] | None, pad_token_id: int
) -> dict[str, Tensor]:
    """`input_ids`, `attention_mask`, `token_type_ids` (batch, seq) from unpadded rows, padded on
    the right to the longest row as a tokenizer pads: `pad_token_id`, mask 0, token type 0.
    `token_type_ids` None means all 0 (one segment)."""
    ids = pad_rows(input_ids, pad_token_id)
    lengths = torch.tensor([len(row) for row in input_ids])
    return {
        "input_ids": ids,
        "attention_mask": (torch.arange(ids.shape[1]) < lengths[:, None]).long(),
        "token_type_ids": torch.zeros_like(ids)
        if token_type_ids is None
        else pad_rows(token_type_ids, 0),
    }


def _check_pads_right(tokenizer) -> None:
    """Refuse a tokenizer set to pad on the left: `collate` (its padding) and the datasets here
    (right padding) would then give different batches."""
    side = getattr(tokenizer, "padding_side", "right")
    if side != "right":
        raise ValueError(
            f"expected a tokenizer that pads on the right, found padding_side={side!r}"
        )


def _rows(values) -> list[Tensor]:
    """One 1-D LongTensor per example from a tokenizer's unpadded rows (lists or tensors)."""
    return [torch.as_tensor(row, dtype=torch.long) for row in values]


class PaddedRows:
    """What the datasets below share: examples kept unpadded (`input_ids`, `token_type_ids`,
    one 1-D LongTensor each, and their `lengths`), padded once a batch by `batch`."""

    input_ids: list[Tensor]
    token_type_ids: list[Tensor]
    lengths: list[int]
    pad_token_id: int

    def __len__(self) -> int:
        return len(self.input_ids)

    def batch(self, indices: Sequence[int]) -> dict[str, Tensor]:
        """The padded batch of the examples at `indices`, in that order (see `pad_batch`)."""
        return pad_batch(
            [self.input_ids[i] for i in indices],
            [self.token_type_ids[i] for i in indices],
            self.pad_token_id,
        )

    def batch_indices(
        self,
        batch_size: int,
        *,
        generator: torch.Generator | None,
        shuffle: bool = True,
        drop_last: bool = False,
    ) -> list[list[int]]:
        """The example indices of each batch of `batches(...)` (to put predictions back in
        place)."""
        return length_grouped_batches(
            self.lengths, batch_size, generator=generator, shuffle=shuffle, drop_last=drop_last
        )

    def batches(
        self,
        batch_size: int,
        *,
        generator: torch.Generator | None,
        shuffle: bool = True,
        drop_last: bool = False,
    ) -> list[dict[str, Tensor]]:
        """All batches of one pass, grouped by length (see `length_grouped_batches`)."""
        groups = self.batch_indices(
            batch_size, generator=generator, shuffle=shuffle, drop_last=drop_last
        )
        return [self.batch(indices) for indices in groups]


# ----------------------------------------------------------------------------------------------
# Sentence classification


class ClassificationDataset(PaddedRows):
    """A split tokenized once, which hands out padded batches.

    Each example is tokenized a single time (in chunks of `chunk_size`), without padding, so its
    length is known once and for all; `batch(indices)` pads the chosen rows to the longest of them
    (the same tensors `collate` gives for those examples, which a test holds) and `batches(...)`
    does it for every batch of `length_grouped_batches`.

    Batch contract: a dict of LongTensors on the CPU, `input_ids`, `attention_mask`,
    `token_type_ids` of shape (batch, seq) where seq is the longest example of the batch
    (truncated to `max_length`), padded on the right with `tokenizer.pad_token_id`, 0 and 0; plus
    `labels` of shape (batch,) when `label_ids` were given.
    """

    def __init__(
        self,
        examples: Sequence[Example | str],
        tokenizer,
        *,
        max_length: int | None,
        label_ids: Sequence[int] | None = None,
        chunk_size: int = 1024,
    ) -> None:
        if len(examples) == 0:
            raise ValueError("expected at least one example, found none")
        if label_ids is not None and len(label_ids) != len(examples):
            raise ValueError(
                f"expected one label id per example ({len(examples)}), found {len(label_ids)}"
            )
        _check_pads_right(tokenizer)
        self.pad_token_id = int(tokenizer.pad_token_id)
        self.labels = None if label_ids is None else torch.as_tensor(label_ids, dtype=torch.long)
        self.input_ids: list[Tensor] = []
        self.token_type_ids: list[Tensor] = []
        for start in range(0, len(examples), chunk_size):
            texts, pairs = _texts_and_pairs(examples[start : start + chunk_size])
            rows = tokenizer(texts, pairs, max_length=max_length, padding=False, truncation=True)
            self.input_ids += _rows(rows["input_ids"])
            self.token_type_ids += _rows(rows["token_type_ids"])
        self.lengths: list[int] = [len(ids) for ids in self.input_ids]

    def batch(self, indices: Sequence[int]) -> dict[str, Tensor]:
        """The padded batch of the examples at `indices`, in that order, with their `labels`."""
        batch = super().batch(indices)
        if self.labels is not None:
            batch["labels"] = self.labels[list(indices)]
        return batch


def make_batches(
    examples: Sequence[Example | str],
    label_ids: Sequence[int] | None,
    tokenizer,
    *,
    batch_size: int,
    max_length: int | None,
    generator: torch.Generator | None,
    shuffle: bool = True,
) -> list[dict[str, Tensor]]:
    """One pass of padded, length-grouped batches: `ClassificationDataset(...).batches(...)`.

    Tokenizes every time it is called; for several epochs build the dataset once and call its
    `batches` once an epoch.
    """
    dataset = ClassificationDataset(examples, tokenizer, max_length=max_length, label_ids=label_ids)
    return dataset.batches(batch_size, generator=generator, shuffle=shuffle)


# ----------------------------------------------------------------------------------------------
# Token classification: word labels on sub-word tokens, long sentences windowed


def _short(word: str, limit: int = 30) -> str:
    """A word for an error message: its repr, cut after `limit` characters."""
    return repr(word) if len(word) <= limit else repr(word[:limit]) + "..."


def _encode_words(tokenizer, sentences: list[list[str]]) -> list[tuple[Tensor, Tensor, list]]:
    """(input_ids, token_type_ids, word_ids) of each sentence of words, whole (no truncation)
    and unpadded."""
    encoding = tokenizer(sentences, is_split_into_words=True, truncation=False, padding=False)
    return list(
        zip(
            _rows(encoding["input_ids"]),
            _rows(encoding["token_type_ids"]),
            word_id_rows(encoding, len(sentences)),
            strict=True,
        )
    )


class TokenClassificationDataset(PaddedRows):
    """Sentences of words tokenized once into padded batches of token labels, long ones windowed.

    Each sentence is tokenized whole (`is_split_into_words`, no truncation). One that does not fit
    `max_length` tokens (special tokens included) is cut into windows of whole words that overlap
    by `stride_words` words (`minift.labels.plan_windows`), and each window is tokenized as a
    sentence of its own: no word is ever truncated away. `plan.num_windowed` says how many were
    cut. The examples handed out are the windows ("pieces"), in sentence order.

    `where` (optional) holds the place of every word, its file:line as `TaggedSentence.where`
    gives it, for the errors: a word too long for any window, and a set in which no word at all
    produced a sub-word token (every word made of characters the tokenizer drops, such as U+200B),
    which leaves nothing to train on and is refused (`DataError`).

    Batch contract: `input_ids`, `attention_mask`, `token_type_ids` (batch, seq) padded on the
    right as in `ClassificationDataset`, plus `labels` (batch, seq) when `label_ids` (one list of
    tag ids per sentence) are given: the word's label at its first sub-word and `IGNORE_INDEX` at
    the other sub-words, special and pad tokens (`minift.labels.align_labels`; with
    `label_all_subwords` continuations get the word's label, `B-X` turned into `I-X` by `b_to_i`).
    `word_predictions` folds per-token predictions of the pieces back into one per word.
    """

    def __init__(
        self,
        sentences: Sequence[Sequence[str]],
        tokenizer,
        *,
        max_length: int,
        label_ids: Sequence[Sequence[int]] | None = None,
        label_all_subwords: bool = False,
        b_to_i: dict[int, int] | None = None,
        stride_words: int = 16,
        chunk_size: int = 1024,
        where: Sequence[Sequence[str]] | None = None,
    ) -> None:
        if len(sentences) == 0:
            raise ValueError("expected at least one sentence, found none")
        for s, words in enumerate(sentences):
            if isinstance(words, str) or len(words) == 0:
                raise ValueError(
                    f"sentence {s}: expected a non-empty list of words, found {words!r:.80}"
                )
        if label_ids is not None:
            if len(label_ids) != len(sentences):
                raise ValueError(
                    f"expected one list of label ids per sentence ({len(sentences)}), "
                    f"found {len(label_ids)}"
                )
            for s, (words, ids) in enumerate(zip(sentences, label_ids, strict=True)):
                if len(ids) != len(words):
                    raise ValueError(f"sentence {s}: {len(words)} words but {len(ids)} label ids")
        if where is not None and [len(w) for w in where] != [len(s) for s in sentences]:
            raise ValueError("expected `where` to hold one place per word of every sentence")
        if label_all_subwords and b_to_i is None:
            b_to_i = {}
        _check_pads_right(tokenizer)
        self.pad_token_id = int(tokenizer.pad_token_id)
        self.max_length = max_length
        self.sentences = [list(words) for words in sentences]

        # Tokenize every sentence whole: its sub-words per word decide the windows.
        whole: list[tuple[Tensor, Tensor, list[int | None]]] = []
        for start in range(0, len(sentences), chunk_size):
            chunk = self.sentences[start : start + chunk_size]
            whole += _encode_words(tokenizer, chunk)
        counts = [
            tokens_per_word(ids, len(words))
            for (_, _, ids), words in zip(whole, self.sentences, strict=True)
        ]
        if not any(any(c) for c in counts):
            start = f"{where[0][0]}: " if where is not None else ""
            raise DataError(
                f"{start}no word of the {len(counts)} sentences produced a sub-word token (every "
                "word is made only of characters the tokenizer drops, such as U+200B): there is "
                "nothing to train on or to score"
            )
        n_special = {len(e[0]) - sum(c) for e, c in zip(whole, counts, strict=True)}
        if len(n_special) != 1:
            raise ValueError(
                f"expected the same number of special tokens in every sentence, "
                f"found {sorted(n_special)}"
            )
        self.num_special_tokens = n_special.pop()
        max_tokens = max_length - self.num_special_tokens  # sub-words a window may hold
        if max_tokens < 1:
            raise ValueError(
                f"max_length={max_length} leaves no room for a word beside the "
                f"{self.num_special_tokens} special tokens"
            )
        places = None
        if where is not None:  # "train.txt:57, word 'Llanfair...'" for a word no window holds
            places = [
                [f"{w}, word {_short(word)}" for w, word in zip(ws, words, strict=True)]
                for ws, words in zip(where, self.sentences, strict=True)
            ]
        self.plan = plan_windows(counts, max_tokens, stride_words, where=places)

        self.input_ids: list[Tensor] = []
        self.token_type_ids: list[Tensor] = []
        self.word_ids: list[list[int | None]] = []
        self.labels: list[Tensor] | None = None if label_ids is None else []
        for s, start, end in self.plan.pieces():
            if (start, end) == (0, len(self.sentences[s])):
                ids, types, word_ids = whole[s]
            else:
                [(ids, types, word_ids)] = _encode_words(tokenizer, [self.sentences[s][start:end]])
            if len(ids) > max_length:  # the plan guarantees it; a tokenizer that disagrees fails
                place = f"sentence {s}" if where is None else where[s][start]
                raise ValueError(
                    f"{place}, words {start}..{end - 1}: {len(ids)} tokens, "
                    f"more than max_length={max_length}"
                )
            self.input_ids.append(ids)
            self.token_type_ids.append(types)
            self.word_ids.append(word_ids)
            if label_ids is not None:
                aligned = align_labels(
                    list(label_ids[s][start:end]),
                    word_ids,
                    label_all_subwords=label_all_subwords,
                    b_to_i=b_to_i if label_all_subwords else None,
                )
                self.labels.append(torch.tensor(aligned, dtype=torch.long))
        self.lengths: list[int] = [len(ids) for ids in self.input_ids]

    def __len__(self) -> int:
        """Number of pieces (windows): the sentences plus the extra windows of long ones."""
        return len(self.input_ids)

    def batch(self, indices: Sequence[int]) -> dict[str, Tensor]:
        """The padded batch of the pieces at `indices`, in that order, with their `labels`."""
        batch = super().batch(indices)
        if self.labels is not None:
            batch["labels"] = pad_rows([self.labels[i] for i in indices], IGNORE_INDEX)
        return batch

    def word_predictions(
        self, token_predictions: Sequence[Sequence[int] | Tensor], fill: int = 0
    ) -> list[list[int]]:
        """One prediction per word of every sentence from one per token of every piece.

        `token_predictions[k]` lines up with piece k's tokens (e.g. `logits.argmax(-1)` of its
        row, padding cut or not). Each word is read at its first sub-word, in the window where
        it has most context (`WindowPlan.merge`); a word the tokenizer dropped entirely gets
        `fill` (id 0 is "O" in a `LabelVocab` of NER tags).
        """
        if len(token_predictions) != len(self):
            raise ValueError(
                f"got predictions for {len(token_predictions)} pieces, expected {len(self)}"
            )
        per_piece = []
        for k, ((_, start, end), word_ids) in enumerate(
            zip(self.plan.pieces(), self.word_ids, strict=True)
        ):
            row = token_predictions[k]
            row = row.tolist() if isinstance(row, Tensor) else list(row)
            if len(row) < len(word_ids):
                raise ValueError(
                    f"piece {k}: {len(row)} token predictions for {len(word_ids)} tokens"
                )
            per_piece.append(
                decode_word_predictions(
                    row[: len(word_ids)], word_ids, num_words=end - start, fill=fill
                )
            )
        return self.plan.merge(per_piece)
