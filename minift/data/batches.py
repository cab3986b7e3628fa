"""Examples in, padded batches out: the length-grouped sampler, padding, collation.

A batch is padded once, here, to its own longest example, and unpadded once, in the model, with
the lengths `with_lengths` counts on the host. `collate` (the tokenizer pads) is the obvious
form; `PaddedRows` (the tasks' datasets) keeps rows unpadded and gives the same batches.

The tokenizer is duck-typed: `minift.data.tokenizer.Tokenizer` or a Hugging Face fast tokenizer
(`tokenizer(texts, pairs, *, max_length, padding, truncation, is_split_into_words)` indexed by
`"input_ids"`, ..., with a `pad_token_id`); one set to pad on the left is refused.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from minift.data.readers import Example

# --- The sampler ----------------------------------------------------------------------------------


def length_grouped_batches(lengths: Sequence[int], batch_size: int, *,
                           generator: torch.Generator | None, shuffle: bool = True,
                           group_size_multiplier: int = 50,
                           drop_last: bool = False) -> list[list[int]]:
    """Batches of indices into `lengths` whose members have similar lengths.

    With `shuffle` (training): shuffle the indices with `generator`, cut them into mega-batches
    of `batch_size * group_size_multiplier`, sort each by length (longest first), cut it into
    batches and shuffle the order of all the batches; `drop_last` drops a short last batch. (HF's
    `group_by_length` sampler, minus its rule that the longest batch goes first.) Without
    `shuffle` (evaluation): all indices sorted by length, longest first, ties in index order.
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
            raise ValueError("expected a torch.Generator to shuffle with (shuffle=True), found "
                             "None; pass generator=torch.Generator().manual_seed(seed)")
        order = torch.randperm(len(lengths), generator=generator).tolist()
        mega = batch_size * group_size_multiplier
        batches = [b for s in range(0, len(order), mega)
                   for b in cut(by_length(order[s : s + mega]))]
    if drop_last and batches and len(batches[-1]) < batch_size:
        batches.pop()
    if shuffle:
        batches = [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]
    return batches


# --- One batch, padded by the tokenizer (the obvious form) ----------------------------------------


def texts_and_pairs(items: Sequence[Example | str]) -> tuple[list[str], list[str] | None]:
    """The texts of a batch of `Example`s (or strings), and their pairs (None when none has one)."""
    texts = [x.text if isinstance(x, Example) else x for x in items]
    pairs = [x.pair if isinstance(x, Example) else None for x in items]
    if all(p is None for p in pairs):
        return texts, None
    if any(p is None for p in pairs):
        raise ValueError("expected every example of a batch to have a pair or none to, found a mix")
    return texts, pairs


def collate(examples_or_texts: Sequence[Example | str], tokenizer, max_length: int | None,
            labels: Sequence[int] | Tensor | None = None) -> dict[str, Tensor]:
    """Tokenize one batch and pad it to its longest member: `input_ids`, `attention_mask`,
    `token_type_ids` (batch, seq), and `labels` (batch,) when given."""
    texts, pairs = texts_and_pairs(examples_or_texts)
    encoding = tokenizer(texts, pairs, max_length=max_length, padding=True, truncation=True)
    names = ("input_ids", "attention_mask", "token_type_ids")
    batch = {name: torch.as_tensor(encoding[name], dtype=torch.long) for name in names}
    if labels is not None:
        batch["labels"] = torch.as_tensor(labels, dtype=torch.long)
        if batch["labels"].shape != (len(texts),):
            raise ValueError(f"expected one label per example ({len(texts)}), found shape "
                             f"{tuple(batch['labels'].shape)}")
    return batch


# --- Padding once: unpadded rows in, one padded batch out -----------------------------------------


def pad_rows(rows: Sequence[Tensor], value: int) -> Tensor:
    """Stack 1-d rows into (batch, longest), padding on the right with `value`."""
    out = torch.full((len(rows), max(len(r) for r in rows)), value, dtype=torch.long)
    for i, row in enumerate(rows):
        out[i, : len(row)] = row
    return out


def pad_batch(input_ids: Sequence[Tensor], token_type_ids: Sequence[Tensor] | None,
              pad_token_id: int) -> dict[str, Tensor]:
    """`input_ids`, `attention_mask`, `token_type_ids` (batch, seq) from unpadded rows, padded on
    the right as a tokenizer pads; `token_type_ids` None means one segment."""
    ids = pad_rows(input_ids, pad_token_id)
    lengths = torch.tensor([len(row) for row in input_ids])
    mask = (torch.arange(ids.shape[1]) < lengths[:, None]).long()
    types = torch.zeros_like(ids) if token_type_ids is None else pad_rows(token_type_ids, 0)
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}


def with_lengths(batch: dict[str, Tensor]) -> dict[str, Tensor | list[int]]:
    """The batch and its `lengths`: the real tokens of each row, counted on the host.

    A padding-free model must know how many real tokens a batch holds before it packs them, and
    reading a number the GPU holds makes Python wait while the GPU drains its queue; counted
    from the host's mask where the batch is built, it costs nothing (HF's
    `DataCollatorWithFlattening` hands the model `cu_seq_lens` for the same reason). A list of
    ints, it stays on the host when the loop moves the tensors. Rows must be padded on the right.
    """
    mask = batch["attention_mask"]
    if mask.device.type != "cpu":
        raise ValueError(f"with_lengths counts on the host: expected the batch on the CPU, as "
                         f"it is built, found its attention_mask on {mask.device}")
    real = mask != 0
    if bool((real[:, 1:] & ~real[:, :-1]).any()):  # a real token right after a pad
        raise ValueError("with_lengths expects rows padded on the right (real tokens first), "
                         "found an attention_mask with padding before a real token")
    return {**batch, "lengths": real.sum(dim=1).tolist()}


def check_pads_right(tokenizer) -> None:
    """Refuse a tokenizer set to pad on the left: `collate` (its padding) and the datasets here
    (right padding) would then give different batches."""
    side = getattr(tokenizer, "padding_side", "right")
    if side != "right":
        raise ValueError(f"expected a tokenizer that pads on the right, "
                         f"found padding_side={side!r}")


def as_rows(values) -> list[Tensor]:
    """One 1-D LongTensor per example from a tokenizer's unpadded rows (lists or tensors)."""
    return [torch.as_tensor(row, dtype=torch.long) for row in values]


class PaddedRows:
    """What the datasets of the tasks share: examples kept unpadded (`input_ids`, `token_type_ids`,
    one 1-D LongTensor each, and their `lengths`), padded once a batch by `batch`."""

    input_ids: list[Tensor]
    token_type_ids: list[Tensor]
    lengths: list[int]
    pad_token_id: int

    def __len__(self) -> int:
        return len(self.input_ids)

    def batch(self, indices: Sequence[int]) -> dict[str, Tensor]:
        """The padded batch of the examples at `indices`, in that order (see `pad_batch`)."""
        return pad_batch([self.input_ids[i] for i in indices],
                         [self.token_type_ids[i] for i in indices], self.pad_token_id)

    def batch_indices(self, batch_size: int, *, generator: torch.Generator | None,
                      shuffle: bool = True, drop_last: bool = False) -> list[list[int]]:
        """The example indices of each batch of `batches(...)`, to put predictions back."""
        return length_grouped_batches(self.lengths, batch_size, generator=generator,
                                      shuffle=shuffle, drop_last=drop_last)

    def batches(self, batch_size: int, *, generator: torch.Generator | None, shuffle: bool = True,
                drop_last: bool = False) -> list[dict[str, Tensor]]:
        """All batches of one pass, grouped by length (see `length_grouped_batches`)."""
        groups = self.batch_indices(batch_size, generator=generator, shuffle=shuffle,
                                    drop_last=drop_last)
        return [self.batch(indices) for indices in groups]


# --- A few shapes for torch.compile: padding up to a bucket length --------------------------------

# The padding of each key a bucket extends (every other 2-D tensor is refused): pad tokens where the
# model reads ids (the pad id is the caller's), 0 where a mask says "no token", and -100 where a
# label says "no target", so that the extended positions change no loss.
BUCKET_PAD_VALUES: dict[str, int | None] = {
    "input_ids": None, "decoder_input_ids": None,  # None: the tokenizer's pad id
    "attention_mask": 0, "decoder_attention_mask": 0, "token_type_ids": 0, "labels": -100,
}


def bucket_lengths(longest: int, count: int = 4) -> list[int]:
    """`count` lengths, each half the next, the last `longest`: [16, 32, 64, 128] for 128.

    Why buckets: `torch.compile` specialises its code to the shapes it sees, and length-grouped
    batches bring a new length almost every batch. Compiled for static shapes (`dynamic=False`),
    each new shape costs a compilation, and after `torch._dynamo.config.recompile_limit` (8) of
    them the function runs uncompiled; compiled for dynamic shapes, the kernels are generic in
    the length. A few lengths keep the shapes few and static: four lengths times two batch sizes
    (the full batch and an epoch's short last one) is eight graphs. The price: a batch pads to
    less than twice its longest example (XLA users bucket the same way; transformers' collators
    offer `pad_to_multiple_of` for the same reason).
    """
    if longest < 1 or count < 1:
        raise ValueError(f"expected longest >= 1 and count >= 1, found {longest} and {count}")
    return sorted({-(-longest // 2**i) for i in range(count)})  # ceil(longest / 2**i)


def bucket_length(length: int, buckets: Sequence[int]) -> int:
    """The smallest of `buckets` that holds `length` tokens."""
    fits = [b for b in buckets if b >= length]
    if not fits:
        raise ValueError(f"expected a length of at most the largest bucket ({max(buckets)}), "
                         f"found {length}: make the buckets from the longest a batch can be")
    return min(fits)


def pad_to_bucket(batch: dict[str, Tensor], buckets: Sequence[int],
                  pad_token_id: int) -> dict[str, Tensor]:
    """`batch` with every (batch, seq) tensor padded on the right with `BUCKET_PAD_VALUES` to the
    bucket of its own width (a seq2seq batch's encoder and decoder widths differ); other tensors
    (a label per example, answer positions) pass unchanged."""
    out = {}
    for name, value in batch.items():
        if not (isinstance(value, Tensor) and value.dim() == 2):
            out[name] = value
            continue
        if name not in BUCKET_PAD_VALUES:
            raise ValueError(f"expected the (batch, seq) tensors of a batch to be among "
                             f"{sorted(BUCKET_PAD_VALUES)}, found {name!r}: its padding is unknown")
        fill = BUCKET_PAD_VALUES[name]
        extra = bucket_length(value.shape[1], buckets) - value.shape[1]
        out[name] = F.pad(value, (0, extra), value=pad_token_id if fill is None else fill)
    return out


class BucketedBatches(Sequence):
    """The batches of `batches` (a list or a lazy sequence: the loop's `train_batches(epoch)`),
    each padded up to a bucket length by `pad_to_bucket` when it is read."""

    def __init__(self, batches: Sequence[dict[str, Tensor]], buckets: Sequence[int],
                 pad_token_id: int) -> None:
        self.batches, self.buckets, self.pad_token_id = batches, list(buckets), pad_token_id

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        return pad_to_bucket(self.batches[index], self.buckets, self.pad_token_id)
