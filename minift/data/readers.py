"""Data files in, checked examples out: the readers of classification and tagging files.

Every file is read through `read_utf8_text`, bounded by `MAX_FILE_MB`; a bad file is a
`DataError` saying where (file:line) and why, quoting at most an `excerpt` of it.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import os
import re
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from minift.core.files import atomic_write
from minift.core.labels import (
    SCHEMES,
    DataError,
    LabelVocab,
    TagError,
    iob1_to_iob2,
    split_tag,
    validate_tags,
)

# --- Reading examples -----------------------------------------------------------------------------


@dataclass
class Example:
    """One row of a classification file: `label` as written (None without a label column), the
    1-based `line` it starts on (the header is line 1) and its `path`, for errors found later."""

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


# --- Bounded reading ------------------------------------------------------------------------------
# A data file is decoded whole, so its size is checked first: a file larger than the cap, a sparse
# file of 2 GB, or /dev/zero would otherwise exhaust the memory before any error could be said.

MAX_FILE_MB = 1024  # the largest data file read, in MiB; MINIFT_MAX_FILE_MB overrides it
MAX_FILE_VARIABLE = "MINIFT_MAX_FILE_MB"
_CHUNK = 1 << 20  # bytes read at a time
EXCERPT = 80  # characters of a file's text quoted in an error message, at most


def excerpt(text: str, limit: int = EXCERPT) -> str:
    """`text` quoted (its repr) for an error message: at most `limit` characters of it, and its
    length when it is longer, so a 20 MB line does not become a 20 MB message."""
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}... ({len(text):,} characters)"


def _excerpts(values, limit: int = 10) -> str:
    """The first `limit` of `values`, each an `excerpt`, joined by commas (and how many more)."""
    values = list(values)
    shown = ", ".join(excerpt(v, 40) if isinstance(v, str) else repr(v) for v in values[:limit])
    return shown + (f" and {len(values) - limit} more" if len(values) > limit else "")


def max_file_bytes() -> int:
    """The cap on a data file's size in bytes: `MAX_FILE_MB` MiB, or `MINIFT_MAX_FILE_MB`."""
    value = os.environ.get(MAX_FILE_VARIABLE)
    if value is None or value.strip() == "":
        return MAX_FILE_MB << 20
    try:
        megabytes = int(value)
    except ValueError:
        megabytes = 0
    if not 1 <= megabytes <= 1 << 30:
        raise DataError(f"{MAX_FILE_VARIABLE}: expected a whole number of MiB (1 or more), "
                        f"found {excerpt(value, 40)}")
    return megabytes << 20


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "a special file"


def _too_big(path: Path, size: str, limit: int) -> DataError:
    return DataError(f"{path}: expected a data file of at most {limit >> 20} MiB, found {size}; "
                     f"the cap is MAX_FILE_MB in minift.data.readers (set {MAX_FILE_VARIABLE} to "
                     "the MiB to allow, if the memory holds it)")


def read_file_bytes(path: str | os.PathLike) -> bytes:
    """The bytes of a regular file, read in chunks and at most `max_file_bytes()` of them; a
    missing file, a folder, a device, FIFO or socket (which may never end: /dev/zero) or a file
    over the cap is a `DataError` naming the file, found by `stat` before anything is read."""
    path = Path(path)
    try:
        info = path.stat()
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except OSError as e:
        raise DataError(f"{path}: cannot be read ({e.strerror or e})") from None
    if stat.S_ISDIR(info.st_mode):
        raise DataError(f"{path}: expected a data file, found a directory")
    if not stat.S_ISREG(info.st_mode):
        raise DataError(f"{path}: expected a regular data file, found {_kind(info.st_mode)} "
                        "(not read: it may never end)")
    limit = max_file_bytes()
    if info.st_size > limit:
        raise _too_big(path, f"{info.st_size:,} bytes", limit)
    chunks, total = [], 0
    try:
        with open(path, "rb") as f:
            while chunk := f.read(_CHUNK):
                total += len(chunk)
                if total > limit:  # the file grew after the stat
                    raise _too_big(path, f"more than {limit:,} bytes", limit)
                chunks.append(chunk)
    except OSError as e:
        raise DataError(f"{path}: cannot be read ({e.strerror or e})") from None
    return b"".join(chunks)


def read_utf8_text(path: str | os.PathLike) -> str:
    """The text of a UTF-8 file (a byte-order mark dropped), read by `read_file_bytes`: a missing
    file, a folder, a device, a file over the cap or bytes that are not UTF-8 are a `DataError`."""
    path = Path(path)
    raw = read_file_bytes(path)
    start = len(codecs.BOM_UTF8) if raw.startswith(codecs.BOM_UTF8) else 0
    try:
        return raw[start:].decode("utf-8")
    except UnicodeDecodeError as e:
        position = start + e.start
        line = raw[:position].count(b"\n") + 1
        raise DataError(f"{path}:{line}: expected UTF-8 text, found byte 0x{raw[position]:02x} at "
                        f"byte position {position} that is not valid UTF-8 ({e.reason}); convert "
                        "the file to UTF-8 first, e.g. `iconv -f latin1 -t utf-8` if it is "
                        "Latin-1") from None


def _lines(text: str) -> list[str]:
    """Physical lines without their line ends; line i+1 of the file is element i."""
    lines = _LINE_END.split(text)
    if lines and lines[-1] == "":  # the file ended with a line end
        lines.pop()
    return lines


def read_utf8_lines(path: str | os.PathLike) -> list[str]:
    """The lines of `read_utf8_text(path)`, without their line ends."""
    return _lines(read_utf8_text(path))


def _column_indices(header: list[str], columns: Sequence[str | None], path: Path) -> list:
    """The field index of each of `columns` (None stays None), once the header is checked to name
    each column once: with two of a name, which one a column option means is a guess."""
    seen: dict[str, int] = {}
    for number, name in enumerate(header, start=1):
        if name in seen:
            raise DataError(f"{path}:1: expected each column named once in the header, found "
                            f"the column {excerpt(name, 40)} twice (fields {seen[name]} and "
                            f"{number}); rename one of them")
        seen[name] = number
    for column in columns:
        if column is not None and column not in seen:
            raise DataError(f"{path}:1: expected a column {column!r} in the header, found "
                            f"{_excerpts(header)}")
    return [None if column is None else seen[column] - 1 for column in columns]


def _split_rows(text: str, separator: str) -> list[tuple[int, list[str]]]:
    """(line, fields) of every non-blank line, split on `separator`; quotes are plain characters."""
    return [(n, line.split(separator)) for n, line in enumerate(_lines(text), start=1) if line]


def _rows_csv(text: str, path: Path) -> list[tuple[int, list[str]]]:
    """(first line, fields) of every non-blank record; normal CSV quoting (a quoted field may
    hold commas, doubled quotes and line breaks)."""
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    rows, start = [], 1
    try:
        for fields in reader:
            if fields:
                rows.append((start, fields))
            start = reader.line_num + 1
    except csv.Error as e:
        raise DataError(f"{path}:{start}: expected a well-formed CSV record, found: {e}") from None
    return rows


def _check_text(value: str, what: str, path: Path, line: int) -> str:
    """`value`, unless it is empty or only whitespace: `what` is "label" or names the text."""
    if value.strip() == "":
        what = "a label" if what == "label" else f"a non-empty {what}"
        raise DataError(f"{path}:{line}: expected {what}, found {excerpt(value)}")
    return value


def _read_table(path, rows, *, text_col, pair_col, label_col) -> list[Example]:
    """Examples from (line, fields) rows whose first row is the header."""
    if not rows:
        raise DataError(f"{path}:1: expected a header line, found an empty file")
    _, header = rows[0]
    index = _column_indices(header, (text_col, pair_col, label_col), path)
    whats = (f"text in column {text_col!r}", f"text in column {pair_col!r}", "label")
    examples = []
    for line, fields in rows[1:]:
        if len(fields) != len(header):
            raise DataError(f"{path}:{line}: expected {len(header)} fields (as in the header), "
                            f"found {len(fields)}")
        text, pair, label = (None if i is None else _check_text(fields[i], what, path, line)
                             for i, what in zip(index, whats, strict=True))
        examples.append(Example(text, pair, label, line, str(path)))
    if not examples:
        raise DataError(f"{path}:2: expected examples after the header, found none")
    return examples


def _json_value(obj: dict, key: str, path: Path, line: int, *, label: bool = False) -> str:
    """The text (or with `label`, the label) under `key` of one JSON line, checked."""
    if key not in obj:
        raise DataError(f"{path}:{line}: expected a key {key!r}, found the keys "
                        f"{_excerpts(obj)}")
    value = obj[key]
    # An integer label is kept as its decimal string, the same as a TSV file would give.
    if label and isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str):
        found = "null" if value is None else type(value).__name__
        kind = "a string or integer label" if label else "a string"
        raise DataError(f"{path}:{line}: expected {kind} for {key!r}, found {found}")
    return _check_text(value, "label" if label else f"text in {key!r}", path, line)


class _DuplicateKey(Exception):
    """A JSON object with a key twice (json keeps the last one without a word)."""


def _unique_keys(pairs: list[tuple[str, object]]) -> dict:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen = set()
        for key, _ in pairs:
            if key in seen:
                raise _DuplicateKey(key)
            seen.add(key)
    return obj


def _read_jsonl(path, text, *, text_col, pair_col, label_col) -> list[Example]:
    examples = []
    for line, content in enumerate(_lines(text), start=1):
        if content.strip() == "":
            continue
        try:
            obj = json.loads(content, object_pairs_hook=_unique_keys)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{line}: expected a JSON object, found invalid JSON ({e})"
                            ) from None
        except _DuplicateKey as e:
            raise DataError(f"{path}:{line}: expected each key once in the JSON object, found "
                            f"{excerpt(e.args[0], 40)} twice") from None
        if not isinstance(obj, dict):
            raise DataError(f"{path}:{line}: expected a JSON object, found {type(obj).__name__}")
        text = _json_value(obj, text_col, path, line)
        pair = None if pair_col is None else _json_value(obj, pair_col, path, line)
        label = None if label_col is None else _json_value(obj, label_col, path, line, label=True)
        examples.append(Example(text, pair, label, line, str(path)))
    if not examples:
        raise DataError(f"{path}:1: expected JSON lines with examples, found none")
    return examples


def read_examples(path: str | os.PathLike, *, text_col: str, pair_col: str | None = None,
                  label_col: str | None = None, format: str | None = None) -> list[Example]:
    """Read a classification file into `Example`s, in file order.

    `format` is "tsv", "csv" or "jsonl", taken from the suffix when None. TSV is GLUE's: fields
    split on tabs with no quote processing (MRPC's sentences hold literal `"`). JSONL holds one
    object a line, its keys the column names. Blank lines are skipped; texts and labels are kept
    as written (not stripped), but an empty or whitespace-only one is an error.
    """
    path = Path(path)
    if format is None:
        if path.suffix.lower() not in _FORMATS:
            raise DataError(f"{path}: expected a file ending in one of {', '.join(_FORMATS)} (or "
                            f"pass format=), found the suffix {path.suffix!r}")
        format = _FORMATS[path.suffix.lower()]
    if format not in ("tsv", "csv", "jsonl"):
        raise DataError(f"{path}: expected format 'tsv', 'csv' or 'jsonl', found {format!r}")
    text = read_utf8_text(path)
    columns = dict(text_col=text_col, pair_col=pair_col, label_col=label_col)
    if format == "jsonl":
        return _read_jsonl(path, text, **columns)
    rows = _split_rows(text, "\t") if format == "tsv" else _rows_csv(text, path)
    return _read_table(path, rows, **columns)


def read_semicolon_examples(path: str | os.PathLike, *, text_col: str = "text",
                            label_col: str = "label_name") -> list[Example]:
    """Read the `text;label` lines under a header (`text;label_name`) of the Emotion data set:
    fields split on `;` with no quote processing, as many on each line as in the header."""
    path = Path(path)
    rows = _split_rows(read_utf8_text(path), ";")
    return _read_table(path, rows, text_col=text_col, pair_col=None, label_col=label_col)


# --- Label ids ------------------------------------------------------------------------------------


def encode_labels(examples: Sequence[Example], vocab: LabelVocab) -> list[int]:
    """The label ids of `examples`. Every row is checked before anything is returned; the error
    names the first bad row (file:line) and says how many rows are bad."""
    bad = [ex for ex in examples if ex.label not in vocab]
    if bad:
        first = bad[0]
        unknown = sorted({ex.label for ex in bad}, key=repr)
        more = f" ({len(bad)} rows in all, with {_excerpts(unknown)})" if len(bad) > 1 else ""
        if first.label is None:
            raise DataError(f"{first.where}: expected a label, found none{more}")
        raise DataError(f"{first.where}: found the label {excerpt(first.label)}, which the "
                        "training labels do not include; expected one of "
                        f"{_excerpts(vocab.labels, 50)}{more}")
    return [vocab.encode(ex.label) for ex in examples]


# --- GLUE tasks in MINIFT_DATA --------------------------------------------------------------------


@dataclass(frozen=True)
class Task:
    """A task's folder in MINIFT_DATA (train.tsv, dev.tsv) and its columns."""

    folder: str
    text_col: str
    pair_col: str | None
    label_col: str


TASKS: dict[str, Task] = {
    "sst2": Task("sst2", "sentence", None, "label"),
    "mrpc": Task("mrpc", "#1 String", "#2 String", "Quality"),
    "rte": Task("rte", "sentence1", "sentence2", "label"),
}


def data_folder(data_dir: str | os.PathLike | None = None) -> Path:
    """The folder of the data sets: `data_dir`, or the environment variable MINIFT_DATA."""
    if data_dir is None:
        data_dir = os.environ.get("MINIFT_DATA")
        if not data_dir:
            raise DataError("expected the environment variable MINIFT_DATA to name the folder of "
                            "the data sets (or pass data_dir=), found it unset")
    return Path(data_dir)


def task_files(name: str, data_dir: str | os.PathLike | None = None
               ) -> tuple[Path, Path, str, str | None, str]:
    """`(train_path, dev_path, text_col, pair_col, label_col)` of a GLUE task in `TASKS`."""
    if name not in TASKS:
        raise ValueError(f"expected a task name among {', '.join(TASKS)}, found {name!r}")
    task = TASKS[name]
    folder = data_folder(data_dir) / task.folder
    train, dev = folder / "train.tsv", folder / "dev.tsv"
    missing = [str(p) for p in (train, dev) if not p.is_file()]
    if missing:
        raise DataError(f"expected the {name} files train.tsv and dev.tsv in {folder}, "
                        f"found no {' and no '.join(missing)}")
    return train, dev, task.text_col, task.pair_col, task.label_col


# --- CoNLL column files ---------------------------------------------------------------------------
# One word a line, its tags in further columns (CoNLL-2003: `word POS NER`), a blank line between
# sentences, `-DOCSTART-` lines between documents.

DOCSTART = "-DOCSTART-"
_COLUMNS = re.compile(r"[ \t]+")  # CoNLL files separate columns by spaces (some by tabs)


@dataclass
class TaggedSentence:
    """One sentence of a column file: its words, one tag per word, and the 1-based line of each
    word in `path` (for problems found later, such as an unknown tag)."""

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
                raise DataError(f"{error}; if the file is IOB1, read it with scheme='iob1' "
                                "(minift ner --scheme iob1)") from None
            tags = list(sentence.tags)
        else:
            tags = iob1_to_iob2(sentence.tags, where=where)
        converted.append(TaggedSentence(sentence.words, tags, sentence.lines, sentence.path))
    return converted


def read_conll(path: str | os.PathLike, *, column: int = -1,
               scheme: str | None = None) -> list[TaggedSentence]:
    """Read a CoNLL column file into `TaggedSentence`s, in file order.

    Column 0 (columns split on spaces or tabs) is the word and `column` (0-based; -1, the last,
    by default) the tags: 1 for POS and 2 for NER in CoNLL-2003. Every line must have as many
    columns as the first. `scheme`: None keeps the tags as written (POS); "iob2" or "iob1"
    applies `apply_scheme`.
    """
    path = Path(path)
    sentences: list[TaggedSentence] = []
    words, tags, lines = [], [], []  # of the sentence being read
    width = first = None  # the number of columns, and the line that set it

    def close() -> None:
        if words:
            sentences.append(TaggedSentence(words[:], tags[:], lines[:], str(path)))
            for column_values in (words, tags, lines):
                column_values.clear()

    for number, line in enumerate(read_utf8_lines(path), start=1):
        content = line.strip(" \t")
        fields = _COLUMNS.split(content)
        if content == "" or fields[0] == DOCSTART:  # a sentence or a document ends
            close()
            continue
        if width is None:
            width, first = len(fields), number
            if not (-width <= column < width) or column % width == 0:
                raise DataError(f"{path}:{number}: expected a tag column in 1..{width - 1} "
                                f"(0-based; column 0 is the word), found column={column} for "
                                f"lines of {width} columns: {excerpt(content)}")
        if len(fields) != width:
            raise DataError(f"{path}:{number}: expected {width} columns separated by spaces (as "
                            f"on line {first}), found {len(fields)}: {excerpt(content)}")
        words.append(fields[0])
        tags.append(fields[column])
        lines.append(number)
    close()
    if not sentences:
        raise DataError(f"{path}:1: expected sentences (one word a line), found none")
    return sentences if scheme is None else apply_scheme(sentences, scheme)


def write_conll(path: str | os.PathLike, words: Sequence[Sequence[str]],
                *columns: Sequence[Sequence[str]]) -> None:
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
    atomic_write(path, "".join(out).encode("utf-8"))


def is_bio(sentences: Sequence[TaggedSentence]) -> bool:
    """True when every tag reads as `O`, `B-<type>` or `I-<type>` (NER), False otherwise (POS)."""
    try:
        for sentence in sentences:
            for tag in sentence.tags:
                split_tag(tag)
    except TagError:
        return False
    return True


def entity_label_set(sentences: Sequence[TaggedSentence]) -> LabelVocab:
    """The NER tags of a training set: `O` and both `B-X` and `I-X` for every type X it holds
    (so a type whose `I-` tag a small subset happens to lack is still complete)."""
    types = {split_tag(tag)[1] for sentence in sentences for tag in sentence.tags} - {None}
    return LabelVocab.from_sequences([["O", *(f"{p}-{t}" for t in types for p in "BI")]])


def encode_tags(sentences: Sequence[TaggedSentence], labels: LabelVocab) -> list[list[int]]:
    """The tag ids of every sentence. Every tag is checked first; the error names the file:line
    of the first tag `labels` lacks and how many such tags there are."""
    unknown = [(where, tag) for sentence in sentences
               for where, tag in zip(sentence.where, sentence.tags, strict=True)
               if tag not in labels]
    if unknown:
        found = sorted({t for _, t in unknown}, key=repr)
        more = f" ({len(unknown)} tags in all: {_excerpts(found)})" if len(unknown) > 1 else ""
        try:
            labels.encode_tag(unknown[0][1], unknown[0][0])
        except TagError as e:
            raise DataError(f"{e}{more}") from None
    return [labels.encode(sentence.tags) for sentence in sentences]
