"""The data side of sequence and sentence-pair classification: files in, padded batches out.

Reading order:

1. `read_examples` reads a TSV (GLUE style), CSV or JSON-lines file into `Example`s, and says
   exactly where and why when a file is not what it should be (`DataError`).
2. `LabelVocab` maps the label strings of the training set to ids 0..n-1; `encode_labels` applies
   it to a whole split and reports the first row whose label it does not know.
3. `TASKS` / `task_files` name the files and columns of the GLUE tasks in `MINIFT_DATA`.
4. `length_grouped_batches` is the "bucket by length" sampler: batches of similar lengths, so
   dynamic padding wastes little.
5. `collate` tokenizes and pads one batch (the obvious form); `ClassificationDataset` tokenizes a
   whole split once and builds the same batches from the stored ids (the form training uses).
6. For token classification (NER, POS): `read_conll` reads a column file into `TaggedSentence`s,
   `encode_tags` maps their tags to ids, and `TokenClassificationDataset` tokenizes the words,
   aligns the labels to the sub-words and windows sentences too long for the model.

The tokenizer is duck-typed: any callable
`tokenizer(texts, pairs, *, max_length, padding=True, truncation=True)` whose result can be indexed
by `"input_ids"`, `"attention_mask"` and `"token_type_ids"` (tensors or nested lists, shape
(batch, seq), padded on the right) and that has a `pad_token_id`. Both `minift.tokenizer.Tokenizer`
and a Hugging Face fast tokenizer qualify.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from minift.labels import (
    IGNORE_INDEX,
    SCHEMES,
    LabelSet,
    TagError,
    align_labels,
    decode_word_predictions,
    iob1_to_iob2,
    plan_windows,
    split_tag,
    tokens_per_word,
    validate_tags,
)

# ----------------------------------------------------------------------------------------------
# Reading examples


class DataError(ValueError):
    """A data file is not what it should be; the message names the file, the line (1-based, the
    header is line 1), what was expected and what was found."""


@dataclass
class Example:
    """One row of a classification file.

    `label` is the raw string from the file (None when the file has no label column); `line` is
    the 1-based line the row starts on (the header is line 1); `path` is the file it came from,
    so that errors found later (an unknown label) can still point at it.
    """

    text: str
    pair: str | None
    label: str | None
    line: int
    path: str | None = None

    @property
    def where(self) -> str:
        """`file:line` of this example, for error messages."""
        return f"{self.path}:{self.line}" if self.path is not None else f"line {self.line}"


_FORMATS = {".tsv": "tsv", ".csv": "csv", ".jsonl": "jsonl", ".json": "jsonl"}

# Universal newlines, as Python's own text files split them (not str.splitlines, which also
# splits on form feeds, U+2028 and other characters that can sit inside a sentence).
_LINE_END = re.compile(r"\r\n|\r|\n")


def _read_text(path: Path) -> str:
    """The whole file decoded as UTF-8 (a leading byte-order mark dropped)."""
    if not path.exists():
        raise DataError(f"{path}: no such file")
    if path.is_dir():
        raise DataError(f"{path}: expected a data file, found a directory")
    raw = path.read_bytes()
    start = len(codecs.BOM_UTF8) if raw.startswith(codecs.BOM_UTF8) else 0
    try:
        return raw[start:].decode("utf-8")
    except UnicodeDecodeError as e:
        position = start + e.start
        line = raw[:position].count(b"\n") + 1
        raise DataError(
            f"{path}:{line}: expected UTF-8 text, found byte 0x{raw[position]:02x} at byte "
            f"position {position} that is not valid UTF-8 ({e.reason}); convert the file to "
            f"UTF-8 first, e.g. `iconv -f latin1 -t utf-8` if it is Latin-1"
        ) from None


def _lines(text: str) -> list[str]:
    """Physical lines without their line ends; line i+1 of the file is element i."""
    lines = _LINE_END.split(text)
    if lines and lines[-1] == "":  # the file ended with a line end
        lines.pop()
    return lines


def _column_index(header: list[str], column: str, path: Path) -> int:
    if column not in header:
        found = ", ".join(repr(c) for c in header)
        raise DataError(f"{path}:1: expected a column {column!r} in the header, found {found}")
    return header.index(column)


def _rows_tsv(text: str) -> list[tuple[int, list[str]]]:
    """(line, fields) of every non-blank line; tabs split fields, quotes are plain characters."""
    return [(n, line.split("\t")) for n, line in enumerate(_lines(text), start=1) if line != ""]


def _rows_csv(text: str, path: Path) -> list[tuple[int, list[str]]]:
    """(first line, fields) of every non-blank record; normal CSV quoting (a quoted field may
    hold commas, doubled quotes and line breaks)."""
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    rows = []
    start = 1
    try:
        for fields in reader:
            if fields:
                rows.append((start, fields))
            start = reader.line_num + 1
    except csv.Error as e:
        raise DataError(f"{path}:{start}: expected a well-formed CSV record, found: {e}") from None
    return rows


def _check_text(value: str, what: str, path: Path, line: int) -> str:
    if value.strip() == "":
        raise DataError(f"{path}:{line}: expected a non-empty {what}, found {value!r}")
    return value


def _check_label(value: str, path: Path, line: int) -> str:
    if value.strip() == "":
        raise DataError(f"{path}:{line}: expected a label, found {value!r}")
    return value


def _read_table(path, rows, *, text_col, pair_col, label_col) -> list[Example]:
    """Examples from (line, fields) rows whose first row is the header."""
    if not rows:
        raise DataError(f"{path}:1: expected a header line, found an empty file")
    _, header = rows[0]
    wanted = [text_col, pair_col, label_col]
    index = [None if c is None else _column_index(header, c, path) for c in wanted]
    text_i, pair_i, label_i = index
    examples = []
    for line, fields in rows[1:]:
        if len(fields) != len(header):
            raise DataError(
                f"{path}:{line}: expected {len(header)} fields (as in the header), "
                f"found {len(fields)}"
            )
        examples.append(
            Example(
                text=_check_text(fields[text_i], f"text in column {text_col!r}", path, line),
                pair=None
                if pair_i is None
                else _check_text(fields[pair_i], f"text in column {pair_col!r}", path, line),
                label=None if label_i is None else _check_label(fields[label_i], path, line),
                line=line,
                path=str(path),
            )
        )
    if not examples:
        raise DataError(f"{path}:2: expected examples after the header, found none")
    return examples


def _json_field(obj: dict, key: str, path: Path, line: int) -> object:
    if key not in obj:
        found = ", ".join(repr(k) for k in obj)
        raise DataError(f"{path}:{line}: expected a key {key!r}, found the keys {found}")
    return obj[key]


def _json_text(obj: dict, key: str, path: Path, line: int) -> str:
    value = _json_field(obj, key, path, line)
    if not isinstance(value, str):
        raise DataError(
            f"{path}:{line}: expected a string for {key!r}, found {type(value).__name__}"
        )
    return _check_text(value, f"text in {key!r}", path, line)


def _json_label(obj: dict, key: str, path: Path, line: int) -> str:
    value = _json_field(obj, key, path, line)
    # An integer label is kept as its decimal string, the same as a TSV file would give.
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str):
        found = "null" if value is None else type(value).__name__
        raise DataError(
            f"{path}:{line}: expected a string or integer label for {key!r}, found {found}"
        )
    return _check_label(value, path, line)


def _read_jsonl(path, text, *, text_col, pair_col, label_col) -> list[Example]:
    examples = []
    for line, content in enumerate(_lines(text), start=1):
        if content.strip() == "":
            continue
        try:
            obj = json.loads(content)
        except json.JSONDecodeError as e:
            raise DataError(
                f"{path}:{line}: expected a JSON object, found invalid JSON ({e})"
            ) from None
        if not isinstance(obj, dict):
            raise DataError(f"{path}:{line}: expected a JSON object, found {type(obj).__name__}")
        examples.append(
            Example(
                text=_json_text(obj, text_col, path, line),
                pair=None if pair_col is None else _json_text(obj, pair_col, path, line),
                label=None if label_col is None else _json_label(obj, label_col, path, line),
                line=line,
                path=str(path),
            )
        )
    if not examples:
        raise DataError(f"{path}:1: expected JSON lines with examples, found none")
    return examples


def read_examples(
    path: str | os.PathLike,
    *,
    text_col: str,
    pair_col: str | None = None,
    label_col: str | None = None,
    format: str | None = None,
) -> list[Example]:
    """Read a classification file into `Example`s, in file order.

    `format` is "tsv", "csv" or "jsonl", taken from the suffix (.tsv, .csv, .jsonl or .json) when
    None. TSV is GLUE's: a header line, fields split on tabs with no quote processing (MRPC's
    sentences hold literal `"` characters). CSV follows the csv module's usual quoting. JSONL holds
    one object a line, its keys the column names. All three are read as UTF-8; a byte-order mark
    is dropped; blank lines are skipped. Texts, pairs and labels are kept exactly as written
    (not stripped), but an empty or whitespace-only one is an error.
    """
    path = Path(path)
    if format is None:
        if path.suffix.lower() not in _FORMATS:
            known = ", ".join(_FORMATS)
            raise DataError(
                f"{path}: expected a file ending in one of {known} (or pass format=), "
                f"found the suffix {path.suffix!r}"
            )
        format = _FORMATS[path.suffix.lower()]
    if format not in ("tsv", "csv", "jsonl"):
        raise DataError(f"{path}: expected format 'tsv', 'csv' or 'jsonl', found {format!r}")
    text = _read_text(path)
    columns = dict(text_col=text_col, pair_col=pair_col, label_col=label_col)
    if format == "jsonl":
        return _read_jsonl(path, text, **columns)
    rows = _rows_tsv(text) if format == "tsv" else _rows_csv(text, path)
    return _read_table(path, rows, **columns)


# ----------------------------------------------------------------------------------------------
# Labels


def _label_sort_key(labels: Sequence[str]):
    """Numeric order when every label is an integer ("2" < "10"), string order otherwise."""
    try:
        numbers = {label: int(label) for label in labels}
    except ValueError:
        return lambda label: label
    return lambda label: (numbers[label], label)


@dataclass
class LabelVocab:
    """The label strings of a task and their ids 0..n-1.

    Built from the training set with `from_examples`: sorted label strings, except that labels
    which are all integers sort as numbers, so SST-2's "0", "1" get ids 0, 1 and RTE's
    "entailment", "not_entailment" get 0, 1 (GLUE's own order for both). `to_dict` gives the
    `id2label` / `label2id` entries of a Hugging Face `config.json`.
    """

    labels: list[str]

    def __post_init__(self) -> None:
        self.labels = list(self.labels)
        if not self.labels:
            raise ValueError("a LabelVocab needs at least one label, found none")
        self._ids = {}
        for i, label in enumerate(self.labels):
            if not isinstance(label, str):
                raise ValueError(f"labels must be strings, found {label!r} at id {i}")
            if label in self._ids:
                raise ValueError(f"labels must be distinct, found {label!r} twice")
            self._ids[label] = i

    @classmethod
    def from_examples(cls, examples: Sequence[Example]) -> LabelVocab:
        """The vocabulary of the labels of `examples` (every example must have one)."""
        for ex in examples:
            if ex.label is None:
                raise DataError(f"{ex.where}: expected a label, found none")
        distinct = set(ex.label for ex in examples)
        if not distinct:
            raise DataError("expected labelled examples to build a LabelVocab from, found none")
        return cls(sorted(distinct, key=_label_sort_key(list(distinct))))

    def __len__(self) -> int:
        return len(self.labels)

    def __contains__(self, label: str) -> bool:
        return label in self._ids

    def encode(self, label: str | None, where: str | None = None) -> int:
        """The id of `label`; `where` ("file:line") is put in front of the error message."""
        prefix = f"{where}: " if where else ""
        if label is None:
            raise DataError(f"{prefix}expected a label, found none")
        if label not in self._ids:
            known = ", ".join(repr(x) for x in self.labels)
            raise DataError(
                f"{prefix}found the label {label!r}, which the training labels do not include; "
                f"expected one of {known}"
            )
        return self._ids[label]

    def decode(self, id: int) -> str:
        """The label string of `id` (an int or a 0-d tensor)."""
        i = int(id)
        if not 0 <= i < len(self.labels):
            raise ValueError(f"expected a label id in 0..{len(self.labels) - 1}, found {i}")
        return self.labels[i]

    def to_dict(self) -> dict[str, dict]:
        """`{"id2label": {"0": ..., ...}, "label2id": {...: 0, ...}}`, as in HF's config.json
        (JSON object keys are strings, so the ids of `id2label` are too)."""
        return {
            "id2label": {str(i): label for i, label in enumerate(self.labels)},
            "label2id": {label: i for i, label in enumerate(self.labels)},
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


def encode_labels(examples: Sequence[Example], vocab: LabelVocab) -> list[int]:
    """The label ids of `examples`. Every row is checked before anything is returned; the error
    names the first bad row (file:line) and says how many rows are bad."""
    bad = [ex for ex in examples if ex.label not in vocab]
    if bad:
        first = bad[0]
        unknown = sorted({repr(ex.label) for ex in bad})
        more = f" ({len(bad)} rows in all, with {', '.join(unknown)})" if len(bad) > 1 else ""
        try:
            vocab.encode(first.label, where=first.where)
        except DataError as e:
            raise DataError(f"{e}{more}") from None
    return [vocab.encode(ex.label) for ex in examples]


# ----------------------------------------------------------------------------------------------
# GLUE tasks in MINIFT_DATA


@dataclass(frozen=True)
class Task:
    """Where a task's files are (a folder of MINIFT_DATA holding train.tsv and dev.tsv) and
    which of their columns hold the text, the second text of a pair and the label."""

    folder: str
    text_col: str
    pair_col: str | None
    label_col: str


TASKS: dict[str, Task] = {
    "sst2": Task("sst2", "sentence", None, "label"),
    "mrpc": Task("mrpc", "#1 String", "#2 String", "Quality"),
    "rte": Task("rte", "sentence1", "sentence2", "label"),
}


def task_files(
    name: str, data_dir: str | os.PathLike | None = None
) -> tuple[Path, Path, str, str | None, str]:
    """`(train_path, dev_path, text_col, pair_col, label_col)` of a GLUE task in `TASKS`.

    `data_dir` defaults to the environment variable MINIFT_DATA. The two files must exist.
    """
    if name not in TASKS:
        raise ValueError(f"expected a task name among {', '.join(TASKS)}, found {name!r}")
    task = TASKS[name]
    if data_dir is None:
        data_dir = os.environ.get("MINIFT_DATA")
        if not data_dir:
            raise DataError(
                "expected the environment variable MINIFT_DATA to name the folder of the data "
                "sets (or pass data_dir=), found it unset"
            )
    folder = Path(data_dir) / task.folder
    train, dev = folder / "train.tsv", folder / "dev.tsv"
    missing = [str(p) for p in (train, dev) if not p.is_file()]
    if missing:
        raise DataError(
            f"expected the {name} files train.tsv and dev.tsv in {folder}, "
            f"found no {' and no '.join(missing)}"
        )
    return train, dev, task.text_col, task.pair_col, task.label_col


# ----------------------------------------------------------------------------------------------
# Batches


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


def _texts_and_pairs(items: Sequence[Example | str]) -> tuple[list[str], list[str] | None]:
    texts = [x.text if isinstance(x, Example) else x for x in items]
    pairs = [x.pair if isinstance(x, Example) else None for x in items]
    if all(p is None for p in pairs):
        return texts, None
    if any(p is None for p in pairs):
        raise ValueError("expected every example of a batch to have a pair or none to, found a mix")
    return texts, pairs


def _encode(tokenizer, texts, pairs, max_length) -> dict[str, Tensor]:
    """Call the tokenizer (padding to the longest, truncating) and return LongTensors."""
    encoding = tokenizer(texts, pairs, max_length=max_length, padding=True, truncation=True)
    names = ("input_ids", "attention_mask", "token_type_ids")
    return {name: torch.as_tensor(encoding[name], dtype=torch.long) for name in names}


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
    batch = _encode(tokenizer, texts, pairs, max_length)
    if labels is not None:
        batch["labels"] = torch.as_tensor(labels, dtype=torch.long)
        if batch["labels"].shape != (len(texts),):
            raise ValueError(
                f"expected one label per example ({len(texts)}), found shape "
                f"{tuple(batch['labels'].shape)}"
            )
    return batch


def _pad_rows(rows: Sequence[Tensor], value: int) -> Tensor:
    """Stack 1-d rows into (batch, longest), padding on the right with `value`."""
    out = torch.full((len(rows), max(len(r) for r in rows)), value, dtype=torch.long)
    for i, row in enumerate(rows):
        out[i, : len(row)] = row
    return out


class ClassificationDataset:
    """A split tokenized once, which hands out padded batches.

    Each example is tokenized a single time (in chunks of `chunk_size`) and kept without padding,
    so its length is known once and for all; `batch(indices)` pads the chosen rows to the longest
    of them (the same tensors `collate` gives for those examples, which a test holds) and
    `batches(...)` does it for every batch of `length_grouped_batches`.

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
        self.pad_token_id = int(tokenizer.pad_token_id)
        self.labels = None if label_ids is None else torch.as_tensor(label_ids, dtype=torch.long)
        self.input_ids: list[Tensor] = []
        self.token_type_ids: list[Tensor] = []
        for start in range(0, len(examples), chunk_size):
            texts, pairs = _texts_and_pairs(examples[start : start + chunk_size])
            chunk = _encode(tokenizer, texts, pairs, max_length)
            mask = chunk["attention_mask"]
            lengths = mask.sum(dim=1)
            positions = torch.arange(mask.shape[1])
            if not torch.equal(mask.bool(), positions < lengths[:, None]):
                raise ValueError("expected a tokenizer that pads on the right, found other padding")
            for ids, types, n in zip(
                chunk["input_ids"], chunk["token_type_ids"], lengths.tolist(), strict=True
            ):
                self.input_ids.append(ids[:n].clone())
                self.token_type_ids.append(types[:n].clone())
        self.lengths: list[int] = [len(ids) for ids in self.input_ids]

    def __len__(self) -> int:
        return len(self.input_ids)

    def batch(self, indices: Sequence[int]) -> dict[str, Tensor]:
        """The padded batch of the examples at `indices`, in that order."""
        input_ids = _pad_rows([self.input_ids[i] for i in indices], self.pad_token_id)
        lengths = torch.tensor([self.lengths[i] for i in indices])
        batch = {
            "input_ids": input_ids,
            "attention_mask": (torch.arange(input_ids.shape[1]) < lengths[:, None]).long(),
            "token_type_ids": _pad_rows([self.token_type_ids[i] for i in indices], 0),
        }
        if self.labels is not None:
            batch["labels"] = self.labels[list(indices)]
        return batch

    def batches(
        self,
        batch_size: int,
        *,
        generator: torch.Generator | None,
        shuffle: bool = True,
        drop_last: bool = False,
    ) -> list[dict[str, Tensor]]:
        """All batches of one pass, grouped by length (see `length_grouped_batches`)."""
        groups = length_grouped_batches(
            self.lengths, batch_size, generator=generator, shuffle=shuffle, drop_last=drop_last
        )
        return [self.batch(indices) for indices in groups]


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
# CoNLL column files and token-classification batches
#
# NER and part-of-speech data come as column files: one word a line, its tags in further columns
# (CoNLL-2003 here: `word POS NER`), a blank line between sentences, `-DOCSTART-` lines between
# documents. `read_conll` reads one column of tags (`apply_scheme` checks or converts NER tags),
# `encode_tags` turns them into ids and names the file:line of a tag the training set lacks, and
# `TokenClassificationDataset` tokenizes the words, aligns the labels to the sub-words and cuts a
# sentence the model cannot take whole into windows (minift.labels does the bookkeeping).

DOCSTART = "-DOCSTART-"
_COLUMNS = re.compile(r"[ \t]+")  # CoNLL files separate columns by spaces (some by tabs)


@dataclass
class TaggedSentence:
    """One sentence of a column file: its words, one tag per word, and the line of each word.

    `lines[i]` is the 1-based line of word i in `path`, so a problem found later (an unknown tag,
    a bad I- tag) can still be reported at its place.
    """

    words: list[str]
    tags: list[str]
    lines: list[int]
    path: str | None = None

    @property
    def where(self) -> list[str]:
        """`file:line` of every word, for error messages."""
        return [f"{self.path}:{n}" if self.path is not None else f"line {n}" for n in self.lines]


def apply_scheme(sentences: Sequence[TaggedSentence], scheme: str) -> list[TaggedSentence]:
    """NER tags in strict IOB2: checked ("iob2") or converted from IOB1 ("iob1").

    "iob2": an `I-X` that opens an entity (after `O` or another type) is an error naming its
    file:line. "iob1": such an `I-X` becomes `B-X`; the entities are unchanged. Either way a tag
    that is not `O`, `B-<type>` or `I-<type>` is an error naming its file:line.
    """
    if scheme not in SCHEMES:
        raise ValueError(f"scheme must be one of {SCHEMES}, found {scheme!r}")
    converted = []
    for sentence in sentences:
        where = sentence.where
        if scheme == "iob2":
            try:
                validate_tags(sentence.tags, "iob2", where=where)
            except TagError as error:
                raise DataError(
                    f"{error}; if the file is IOB1, read it with scheme='iob1' "
                    "(minift ner --scheme iob1)"
                ) from None
            tags = list(sentence.tags)
        else:
            tags = iob1_to_iob2(sentence.tags, where=where)
        converted.append(TaggedSentence(sentence.words, tags, sentence.lines, sentence.path))
    return converted


def read_conll(
    path: str | os.PathLike, *, column: int = -1, scheme: str | None = None
) -> list[TaggedSentence]:
    """Read a CoNLL column file into `TaggedSentence`s, in file order.

    Columns are separated by spaces or tabs; column 0 is the word and `column` (0-based, negative
    counts from the end as in Python: -1, the default, is the last column) holds the tags, e.g. 1
    for POS and 2 for NER in CoNLL-2003's `word POS NER`. A blank line ends a sentence; a line
    whose first column is `-DOCSTART-` marks a new document and is skipped. Every line must have
    as many columns as the first one, or the error names the file and line.
    `scheme`: None keeps the tags as written (POS tags); "iob2" or "iob1" applies `apply_scheme`.
    """
    path = Path(path)
    sentences: list[TaggedSentence] = []
    words: list[str] = []
    tags: list[str] = []
    lines: list[int] = []
    width = first = None  # the number of columns, and the line that set it

    def close() -> None:
        if words:
            sentences.append(TaggedSentence(list(words), list(tags), list(lines), str(path)))
            words.clear()
            tags.clear()
            lines.clear()

    for number, line in enumerate(_lines(_read_text(path)), start=1):
        content = line.strip(" \t")
        if content == "":
            close()
            continue
        fields = _COLUMNS.split(content)
        if fields[0] == DOCSTART:
            close()
            continue
        if width is None:
            width, first = len(fields), number
            if not (-width <= column < width) or column % width == 0:
                raise DataError(
                    f"{path}:{number}: expected a tag column in 1..{width - 1} (0-based; column 0 "
                    f"is the word), found column={column} for lines of {width} columns: "
                    f"{content!r:.80}"
                )
        if len(fields) != width:
            raise DataError(
                f"{path}:{number}: expected {width} columns separated by spaces (as on line "
                f"{first}), found {len(fields)}: {content!r:.80}"
            )
        words.append(fields[0])
        tags.append(fields[column])
        lines.append(number)
    close()
    if not sentences:
        raise DataError(f"{path}:1: expected sentences (one word a line), found none")
    return sentences if scheme is None else apply_scheme(sentences, scheme)


def write_conll(
    path: str | os.PathLike, words: Sequence[Sequence[str]], *columns: Sequence[Sequence[str]]
) -> None:
    """Write sentences as a column file `read_conll` reads back: `word col1 col2 ...` a line,
    a blank line after each sentence (conlleval's input, with columns gold and predicted tags)."""
    out = []
    for s, sentence in enumerate(words):
        rows = [sentence, *(column[s] for column in columns)]
        if any(len(row) != len(sentence) for row in rows):
            raise ValueError(f"sentence {s}: the columns have lengths {[len(r) for r in rows]}")
        for fields in zip(*rows, strict=True):
            bad = [f for f in fields if f == "" or _COLUMNS.search(f)]
            if bad:
                raise ValueError(f"sentence {s}: a field {bad[0]!r} is empty or has a space")
            out.append(" ".join(fields) + "\n")
        out.append("\n")
    Path(path).write_text("".join(out), encoding="utf-8")


def is_bio(sentences: Sequence[TaggedSentence]) -> bool:
    """True when every tag reads as `O`, `B-<type>` or `I-<type>` (NER), False otherwise (POS)."""
    try:
        for sentence in sentences:
            for tag in sentence.tags:
                split_tag(tag)
    except TagError:
        return False
    return True


def entity_label_set(sentences: Sequence[TaggedSentence]) -> LabelSet:
    """The NER tags of a training set: `O` and both `B-X` and `I-X` for every type X it holds
    (so a type whose `I-` tag a small subset happens to lack is still complete)."""
    types = {split_tag(tag)[1] for sentence in sentences for tag in sentence.tags} - {None}
    return LabelSet.from_sequences([["O", *(f"{p}-{t}" for t in types for p in "BI")]])


def encode_tags(sentences: Sequence[TaggedSentence], labels: LabelSet) -> list[list[int]]:
    """The tag ids of every sentence. Every tag is checked first; the error names the file:line
    of the first tag `labels` lacks and how many such tags there are."""
    unknown = [
        (where, tag)
        for sentence in sentences
        for where, tag in zip(sentence.where, sentence.tags, strict=True)
        if tag not in labels
    ]
    if unknown:
        where, tag = unknown[0]
        found = sorted({repr(t) for _, t in unknown})
        more = f" ({len(unknown)} tags in all: {', '.join(found)})" if len(unknown) > 1 else ""
        known = ", ".join(repr(x) for x in labels.labels)
        raise DataError(
            f"{where}: found the tag {tag!r}, which the training tags do not include; expected "
            f"one of {known}{more}"
        )
    return [labels.encode(sentence.tags) for sentence in sentences]


def _word_id_rows(encoding, n: int) -> list[list[int | None]]:
    """`word_ids` of minift's Encoding (lists) or of a transformers BatchEncoding (a method)."""
    word_ids = encoding.word_ids
    return [word_ids(i) for i in range(n)] if callable(word_ids) else list(word_ids)


def _encode_words(tokenizer, sentences: list[list[str]]) -> list[tuple[Tensor, Tensor, list]]:
    """(input_ids, token_type_ids, word_ids) of each sentence of words, whole (no truncation)
    and without padding."""
    encoding = tokenizer(sentences, is_split_into_words=True, truncation=False, padding=True)
    mask = torch.as_tensor(encoding["attention_mask"], dtype=torch.long)
    lengths = mask.sum(dim=1)
    if not torch.equal(mask.bool(), torch.arange(mask.shape[1]) < lengths[:, None]):
        raise ValueError("expected a tokenizer that pads on the right, found other padding")
    ids = torch.as_tensor(encoding["input_ids"], dtype=torch.long)
    types = torch.as_tensor(encoding["token_type_ids"], dtype=torch.long)
    rows = _word_id_rows(encoding, len(sentences))
    return [
        (ids[b, :n].clone(), types[b, :n].clone(), list(rows[b][:n]))
        for b, n in enumerate(lengths.tolist())
    ]


class TokenClassificationDataset:
    """Sentences of words tokenized once into padded batches of token labels, long ones windowed.

    Each sentence is tokenized whole (`is_split_into_words`, no truncation). One that does not fit
    `max_length` tokens (special tokens included) is cut into windows of whole words that overlap
    by `stride_words` words (`minift.labels.plan_windows`), and each window is tokenized as a
    sentence of its own: no word is ever truncated away. `plan.num_windowed` says how many were
    cut. The examples handed out are the windows ("pieces"), in sentence order.

    Batch contract: `input_ids`, `attention_mask`, `token_type_ids` (batch, seq) padded on the
    right as in `ClassificationDataset`, plus `labels` (batch, seq) when `label_ids` (one list of
    tag ids per sentence) are given: the word's label at its first sub-word and -100 at the other
    sub-words, special and pad tokens (`minift.labels.align_labels`; with `label_all_subwords`
    continuations get the word's label, `B-X` turned into `I-X` by `b_to_i`).
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
        if label_all_subwords and b_to_i is None:
            b_to_i = {}
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
        self.plan = plan_windows(counts, max_tokens, stride_words)

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
                raise ValueError(
                    f"sentence {s}, words {start}..{end - 1}: {len(ids)} tokens, "
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
        """The padded batch of the pieces at `indices`, in that order."""
        input_ids = _pad_rows([self.input_ids[i] for i in indices], self.pad_token_id)
        lengths = torch.tensor([self.lengths[i] for i in indices])
        batch = {
            "input_ids": input_ids,
            "attention_mask": (torch.arange(input_ids.shape[1]) < lengths[:, None]).long(),
            "token_type_ids": _pad_rows([self.token_type_ids[i] for i in indices], 0),
        }
        if self.labels is not None:
            batch["labels"] = _pad_rows([self.labels[i] for i in indices], IGNORE_INDEX)
        return batch

    def batches(
        self,
        batch_size: int,
        *,
        generator: torch.Generator | None,
        shuffle: bool = True,
        drop_last: bool = False,
    ) -> list[dict[str, Tensor]]:
        """All batches of one pass, grouped by length (see `length_grouped_batches`)."""
        return [
            self.batch(indices)
            for indices in self.batch_indices(
                batch_size, generator=generator, shuffle=shuffle, drop_last=drop_last
            )
        ]

    def batch_indices(
        self,
        batch_size: int,
        *,
        generator: torch.Generator | None,
        shuffle: bool = True,
        drop_last: bool = False,
    ) -> list[list[int]]:
        """The piece indices of each batch of `batches(...)` (to put predictions back in place)."""
        return length_grouped_batches(
            self.lengths, batch_size, generator=generator, shuffle=shuffle, drop_last=drop_last
        )

    def word_predictions(
        self, token_predictions: Sequence[Sequence[int] | Tensor], fill: int = 0
    ) -> list[list[int]]:
        """One prediction per word of every sentence from one per token of every piece.

        `token_predictions[k]` lines up with piece k's tokens (e.g. `logits.argmax(-1)` of its
        row, padding cut or not). Each word is read at its first sub-word, in the window where
        it has most context (`WindowPlan.merge`); a word the tokenizer dropped entirely gets
        `fill` (id 0 is "O" in a `LabelSet` of NER tags).
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


# ----------------------------------------------------------------------------------------------
# Semicolon-separated files (the Emotion data set)


def read_semicolon_examples(
    path: str | os.PathLike, *, text_col: str = "text", label_col: str = "label_name"
) -> list[Example]:
    """Read a file of `text;label` lines under a header line, as the Emotion data set ships
    (header `text;label_name`). Fields are split on `;` with no quote processing, like GLUE's TSV;
    a line with another number of fields than the header is an error naming its line.
    """
    path = Path(path)
    lines = _lines(_read_text(path))
    rows = [(n, line.split(";")) for n, line in enumerate(lines, start=1) if line != ""]
    return _read_table(path, rows, text_col=text_col, pair_col=None, label_col=label_col)
