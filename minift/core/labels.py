"""Labels: the label vocabulary, and the IOB tags of named-entity recognition.

A classifier predicts ids 0..n-1; `LabelVocab` is the one table between them and the label strings
of a task, for sentence classification (SST-2's "0"/"1") and token classification (NER's "O",
"B-PER", ...) alike. Tags are `O`, `B-X` (begins an entity of type X) and `I-X` (inside one).
IOB2, the strict scheme, opens every entity with `B-`; IOB1 (the original CoNLL-2003 files)
writes `I-` and uses `B-` only between two adjacent entities of the same type.

The word labels' way onto sub-word tokens (alignment, windows, decoding) is `minift.core.align`.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

SCHEMES = ("iob1", "iob2")
MODES = ("default", "strict")

# A tag is "O", or "B-" / "I-" and a type. A type with no spaces and no "-" at either end reads
# the same under seqeval's two parsers (default mode splits at the first "-", strict strips "-").
_TAG = re.compile(r"(?P<prefix>[BI])-(?P<type>[^\s-]|[^\s-]\S*[^\s-])")


class DataError(ValueError):
    """Data that is not what it should be: a file (`minift.data.readers`), a label, a tag. The
    message names the place (file and line, 1-based), what was expected and what was found."""


class TagError(DataError):
    """A tag sequence that is malformed, breaks its scheme, or holds a tag the labels lack."""


# --- Tags -----------------------------------------------------------------------------------------


def _place(where: str | Sequence[str] | None, position: int, length: int) -> str:
    """Where tag `position` is, for an error message: `where` is None, a prefix such as
    "train.txt:120", or one string per tag (the "file:line" of each line of a column file)."""
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
        raise TagError(f"{place}: expected 'O', 'B-<type>' or 'I-<type>' (e.g. 'B-PER'), "
                       f"found {tag!r}")
    return match["prefix"], match["type"]


def _parse(tags: Sequence[str], where: str | Sequence[str] | None) -> list[tuple[str, str | None]]:
    """Every tag split into (prefix, type), the first malformed one reported by its place."""
    if isinstance(tags, str):
        raise TagError(f"expected a sequence of tags, found the single string {tags!r}")
    return [split_tag(tag, _place(where, i, len(tags))) for i, tag in enumerate(tags)]


def validate_tags(tags: Sequence[str], scheme: str = "iob2",
                  where: str | Sequence[str] | None = None) -> None:
    """Raise a TagError naming the first bad tag of `tags` (its place from `where`, see `_place`).

    Every scheme requires well-formed tags ("O", "B-X", "I-X"). "iob2" also requires that an
    entity opens with `B-`: an `I-X` must follow `B-X` or `I-X`. "iob1" allows `I-X` anywhere.
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
            raise TagError(f"{_place(where, i, len(tags))}: {tags[i]!r} after {before} starts an "
                           f"entity, but strict IOB2 opens every entity with 'B-{type_}' (IOB1 "
                           "data? convert it with iob1_to_iob2)")
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


def entities(tags: Sequence[str], mode: str = "default",
             where: str | Sequence[str] | None = None) -> list[tuple[str, int, int]]:
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


# --- Label ids: the one vocabulary of labels and tags ---------------------------------------------


def _label_sort_key(labels: Sequence[str]):
    """Numeric order when every label is an integer ("2" < "10"), string order otherwise."""
    try:
        numbers = {label: int(label) for label in labels}
    except ValueError:
        return lambda label: label
    return lambda label: (numbers[label], label)


def _label_of(labels: Sequence[str], id_: Any, what: str, place: str = "") -> str:
    """`labels[id_]`, or an error naming the place when `id_` is not an integer id of them."""
    try:
        index = operator.index(id_)  # ints and numpy integers, not floats
    except TypeError:
        index = -1
    if not 0 <= index < len(labels):
        raise ValueError(f"{place}expected {what} id in 0..{len(labels) - 1}, found {id_!r}")
    return labels[index]


@dataclass
class LabelVocab:
    """The labels of a task and their ids 0..n-1 (the model's output classes).

    `from_examples` (sentence classification) sorts the training labels, as numbers when all are
    integers, so SST-2's "0", "1" and RTE's "entailment", "not_entailment" get GLUE's ids 0, 1;
    `from_sequences` (NER, POS) puts "O" first, the other tags sorted.
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
        """The vocabulary of the labels of `examples` (`minift.data.readers.Example`s, or any
        objects with a `label` and a `where` for the error message); every one needs a label."""
        for ex in examples:
            if ex.label is None:
                raise DataError(f"{ex.where}: expected a label, found none")
        distinct = {ex.label for ex in examples}
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

    def encode(self, labels: str | Sequence[str] | None,
               where: str | Sequence[str] | None = None) -> int | list[int]:
        """The id of one label, or the ids of a sentence's tags; `where` names the place in the
        error (for tags, as in `validate_tags`)."""
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
            return _label_of(self.labels, ids, "a label")
        return [_label_of(self.labels, id_, "a tag", f"position {i}: ")
                for i, id_ in enumerate(ids)]

    def b_to_i(self) -> dict[int, int]:
        """For each `B-X` whose `I-X` is also a tag, the id of `B-X` mapped to the id of `I-X`:
        the label a continuation sub-word of a `B-X` word takes when all sub-words are labelled."""
        return {i: self._ids["I-" + label[2:]] for i, label in enumerate(self.labels)
                if label.startswith("B-") and "I-" + label[2:] in self._ids}

    def to_dict(self) -> dict[str, dict]:
        """`{"id2label": {"0": ..., ...}, "label2id": {...: 0, ...}}`, as in HF's config.json."""
        return {"id2label": {str(i): label for i, label in enumerate(self.labels)},
                "label2id": dict(self._ids)}

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
                raise ValueError(f"expected label2id to invert id2label, found id2label "
                                 f"{id2label} and label2id {label2id}")
        return vocab

