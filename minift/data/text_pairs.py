"""Source and target texts for generation (translation, summarisation, data-to-text), read from
CSV, TSV or JSON lines by `minift.data.readers.read_examples`, so checked as a classification
file is.

Training wants every (source, target) row (teacher forcing); scoring wants one example per
*source*: data-to-text and translation test sets give several human references for one input
(E2E NLG up to 45 descriptions of one meaning representation), and BLEU and ROUGE compare one
generated text with all of them at once. Hence `read_text_pairs` (the rows) and
`read_references` (the rows grouped by source).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from minift.core.labels import DataError
from minift.data.readers import data_folder, read_examples


@dataclass(frozen=True)
class TextPair:
    """One row of a generation file: a source, its target, and where the row starts (1-based
    `line`, the header being line 1, in `path`) for errors found later."""

    source: str
    target: str
    line: int
    path: str | None = None

    @property
    def where(self) -> str:
        """`file:line` of this row, for error messages."""
        return f"{self.path}:{self.line}" if self.path is not None else f"line {self.line}"


@dataclass(frozen=True)
class SourceReferences:
    """One source and every target written for it (its references, in file order), with the
    line of each."""

    source: str
    references: tuple[str, ...]
    lines: tuple[int, ...]
    path: str | None = None

    @property
    def where(self) -> str:
        """`file:line` of the source's first row, for error messages."""
        return f"{self.path}:{self.lines[0]}" if self.path is not None else f"line {self.lines[0]}"


def read_text_pairs(path: str | os.PathLike, *, source_col: str, target_col: str,
                    format: str | None = None) -> list[TextPair]:
    """Every (source, target) row of a CSV, TSV or JSONL file, in file order: what training reads.

    `source_col` and `target_col` name two different columns (JSON keys for JSONL). `format` is
    "csv", "tsv" or "jsonl", taken from the suffix when None (as `read_examples` takes it).
    """
    path = Path(path)
    if source_col == target_col:
        raise DataError(f"{path}: expected different source and target columns, found "
                        f"{source_col!r} for both (source_col, target_col)")
    rows = read_examples(path, text_col=source_col, pair_col=target_col, format=format)
    return [TextPair(row.text, row.pair, row.line, row.path) for row in rows]


def group_by_source(pairs: Sequence[TextPair]) -> list[SourceReferences]:
    """The rows that share a source as one example with all their targets as references: the
    shape scoring needs. Sources keep the order of their first row; references keep file order.
    Sources are grouped only when equal character for character."""
    grouped: dict[str, list[TextPair]] = {}
    for pair in pairs:
        grouped.setdefault(pair.source, []).append(pair)
    return [SourceReferences(source, tuple(p.target for p in rows), tuple(p.line for p in rows),
                             rows[0].path) for source, rows in grouped.items()]


def read_references(path: str | os.PathLike, *, source_col: str, target_col: str,
                    format: str | None = None) -> list[SourceReferences]:
    """A file's sources, each with every target written for it: what scoring reads
    (`read_text_pairs` then `group_by_source`)."""
    pairs = read_text_pairs(path, source_col=source_col, target_col=target_col, format=format)
    return group_by_source(pairs)


# --- E2E NLG in MINIFT_DATA -----------------------------------------------------------------------

E2E_SOURCE_COL, E2E_TARGET_COL = "mr", "ref"  # meaning representation, reference description


def e2e_files(data_dir: str | os.PathLike | None = None) -> tuple[Path, Path, str, str]:
    """`(train_path, test_path, source_col, target_col)` of E2E NLG (Novikova, Dušek and Rieser,
    SIGDIAL 2017) in `data_dir` (default: the environment variable MINIFT_DATA). The train path
    is the official *dev* set, devset.csv: the official train set (42,061 pairs) could not be
    had, so say so beside any result."""
    folder = data_folder(data_dir) / "e2e"
    train, test = folder / "devset.csv", folder / "testset_w_refs.csv"
    missing = [str(p) for p in (train, test) if not p.is_file()]
    if missing:
        raise DataError(f"expected the E2E files devset.csv and testset_w_refs.csv in {folder}, "
                        f"found no {' and no '.join(missing)}")
    return train, test, E2E_SOURCE_COL, E2E_TARGET_COL
