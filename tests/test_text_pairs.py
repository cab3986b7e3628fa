"""Tests of minift/data/text_pairs.py: the E2E NLG files read as training rows and as sources with
several references (counts from MANIFEST.md, groups against the csv module), the three formats
read alike, and every kind of bad file named by file, line and column."""

import csv
import json
import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from manifest import manifest_row, numbers
from text_strategies import e2e_references

from minift.core.labels import DataError
from minift.data.text_pairs import (
    SourceReferences,
    TextPair,
    e2e_files,
    group_by_source,
    read_references,
    read_text_pairs,
)

# ----------------------------------------------------------------------------------------------
# The real E2E files


@pytest.fixture(scope="module")
def e2e(data_dir):
    """{"dev": (pairs, groups), "test": (pairs, groups)} of the E2E files in MINIFT_DATA."""
    train, test, source_col, target_col = e2e_files(data_dir)
    read = {}
    for name, path in (("dev", train), ("test", test)):
        pairs = read_text_pairs(path, source_col=source_col, target_col=target_col)
        read[name] = pairs, group_by_source(pairs)
    return read


def test_e2e_counts_match_the_manifest(data_dir, e2e):
    # "4,672 pairs over 547 meaning representations / 4,693 pairs over 630 (official; ...)"
    dev_pairs, dev_sources, test_pairs, test_sources = numbers(manifest_row(data_dir, "e2e"))[:4]
    assert (len(e2e["dev"][0]), len(e2e["dev"][1])) == (dev_pairs, dev_sources)
    assert (len(e2e["test"][0]), len(e2e["test"][1])) == (test_pairs, test_sources)
    for pairs, groups in e2e.values():
        assert pairs[0].line == 2 and pairs[-1].line == len(pairs) + 1  # no record spans lines
        assert sum(len(g.references) for g in groups) == len(pairs)
        assert len({g.source for g in groups}) == len(groups)
        assert all(list(g.lines) == sorted(g.lines) for g in groups)


def test_e2e_groups_match_the_csv_module(data_dir, e2e):
    """The references of each MR, in order, as the csv module reads the file independently; the
    UTF-8 of "£20-25" and "Café" arrives intact."""
    train, test, _, _ = e2e_files(data_dir)
    for name, path in (("dev", train), ("test", test)):
        assert [list(g.references) for g in e2e[name][1]] == e2e_references(path), name
    test_pairs = e2e["test"][0]
    assert any("£" in p.target for p in test_pairs)
    assert any("Café" in p.source for p in test_pairs)
    assert all(p.source.startswith("name[") for p in test_pairs)


def test_e2e_files_errors(tmp_path, monkeypatch):
    monkeypatch.delenv("MINIFT_DATA", raising=False)
    with pytest.raises(DataError, match="MINIFT_DATA"):
        e2e_files()
    (tmp_path / "e2e").mkdir()
    (tmp_path / "e2e" / "devset.csv").write_text("mr,ref\n", encoding="utf-8")
    with pytest.raises(DataError, match=re.escape(str(tmp_path / "e2e" / "testset_w_refs.csv"))):
        e2e_files(tmp_path)


# ----------------------------------------------------------------------------------------------
# Three formats, one result

SOURCES = ["name[A]", "name[B], food[Thai]", 'a "quoted", source', "£ café"]
TARGETS = st.text(st.sampled_from(list("abc ,.'\"£é")), min_size=1, max_size=12).filter(
    lambda t: t.strip() != "")


def write_rows(path: Path, rows: list[tuple[str, str]], format: str) -> Path:
    """`rows` under the header `src`, `tgt` (and an unused `id` column) in `format`."""
    if format == "csv":
        with open(path, "w", encoding="utf-8", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["id", "src", "tgt"])
            writer.writerows([(i, s, t) for i, (s, t) in enumerate(rows)])
    elif format == "tsv":
        lines = ["id\tsrc\ttgt"] + [f"{i}\t{s}\t{t}" for i, (s, t) in enumerate(rows)]
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    else:
        lines = [json.dumps({"tgt": t, "id": i, "src": s}, ensure_ascii=False)
                 for i, (s, t) in enumerate(rows)]
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.sampled_from(SOURCES), TARGETS), min_size=1, max_size=12))
def test_formats_read_alike_and_group_by_source(tmp_path, rows):
    """CSV (quoted), TSV (quotes literal) and JSONL give the same rows; the groups are the rows
    gathered by source in order of first appearance, duplicates kept."""
    expected: dict[str, list[str]] = {}
    for source, target in rows:
        expected.setdefault(source, []).append(target)
    for format, suffix in (("csv", ".csv"), ("tsv", ".tsv"), ("jsonl", ".jsonl")):
        path = write_rows(tmp_path / f"rows{suffix}", rows, format)
        pairs = read_text_pairs(path, source_col="src", target_col="tgt")
        assert [(p.source, p.target) for p in pairs] == rows, format
        first_line = 1 if format == "jsonl" else 2  # JSON lines have no header
        assert [p.line for p in pairs] == list(range(first_line, first_line + len(rows)))
        groups = read_references(path, source_col="src", target_col="tgt")
        assert {g.source: list(g.references) for g in groups} == expected
        assert [g.source for g in groups] == list(expected)  # dicts keep insertion order
        for g in groups:
            assert [pairs[n - first_line].target for n in g.lines] == list(g.references)
            assert g.path == str(path) and g.where == f"{path}:{g.lines[0]}"


def test_group_by_source_is_exact_and_keeps_file_order():
    pairs = [TextPair("x", "1", 2), TextPair("x ", "2", 3), TextPair("y", "3", 4),
             TextPair("x", "4", 5), TextPair("x", "4", 6)]
    assert group_by_source(pairs) == [
        SourceReferences("x", ("1", "4", "4"), (2, 5, 6)),
        SourceReferences("x ", ("2",), (3,)),  # a trailing space is another source
        SourceReferences("y", ("3",), (4,)),
    ]
    assert group_by_source([]) == []


# ----------------------------------------------------------------------------------------------
# Bad files: each error names the file, the line and the column


def _error(path: Path, source_col: str = "src", target_col: str = "tgt") -> str:
    with pytest.raises(DataError) as info:
        read_references(path, source_col=source_col, target_col=target_col)
    return str(info.value)


@pytest.mark.parametrize("name, content, expected", [
    ("a.csv", "src,target\nx,y\n", r"a\.csv:1: expected a column 'tgt' in the header, found "
                                   r"'src', 'target'"),
    ("a.tsv", "src\ttarget\nx\ty\n", r"a\.tsv:1: expected a column 'tgt'"),
    ("a.jsonl", '{"src": "x", "tgt": "y"}\n{"src": "x", "target": "y"}\n',
     r"a\.jsonl:2: expected a key 'tgt', found the keys 'src', 'target'"),
    ("a.csv", "src,tgt\nx,y\nx,\n", r"a\.csv:3: expected a non-empty text in column 'tgt', "
                                     "found ''"),
    ("a.csv", 'src,tgt\nx,y\n\nx,"  "\n', r"a\.csv:4: expected a non-empty text in column 'tgt'"),
    ("a.tsv", "src\ttgt\n\ty\n", r"a\.tsv:2: expected a non-empty text in column 'src'"),
    ("a.jsonl", '{"src": "x", "tgt": ""}\n', r"a\.jsonl:1: expected a non-empty text in 'tgt'"),
    ("a.jsonl", '{"src": "x", "tgt": 3}\n', r"a\.jsonl:1: expected a string for 'tgt', found int"),
    ("a.jsonl", '{"src": "x", "tgt": "y", "tgt": "z"}\n',
     r"a\.jsonl:1: expected each key once in the JSON object, found 'tgt' twice"),
    ("a.csv", "src,tgt,tgt\nx,y,z\n", r"a\.csv:1: expected each column named once in the header, "
                                      "found the column 'tgt' twice"),
    ("a.csv", "src,tgt\nx,y,z\n", r"a\.csv:2: expected 2 fields \(as in the header\), found 3"),
    ("a.csv", "src,tgt\n", r"a\.csv:2: expected examples after the header, found none"),
    ("a.csv", "", r"a\.csv:1: expected a header line, found an empty file"),
    ("a.txt", "src,tgt\nx,y\n", r"a\.txt: expected a file ending in one of"),
])
def test_bad_files_are_named(tmp_path, name, content, expected):
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    assert re.search(expected, _error(path)), _error(path)


def test_same_source_and_target_column_is_refused(tmp_path):
    path = tmp_path / "a.csv"
    path.write_text("src,tgt\nx,y\n", encoding="utf-8")
    assert re.search(r"a\.csv: expected different source and target columns, found 'src' for "
                     r"both \(source_col, target_col\)", _error(path, "src", "src"))


def test_bounded_reads_apply(tmp_path, monkeypatch):
    """A file over MINIFT_MAX_FILE_MB or a directory is refused before it is read, as every
    data file is (minift.data.readers.read_file_bytes)."""
    path = tmp_path / "big.csv"
    path.write_text("src,tgt\n" + "x,y\n" * 300_000, encoding="utf-8")
    monkeypatch.setenv("MINIFT_MAX_FILE_MB", "1")
    assert "expected a data file of at most 1 MiB" in _error(path)
    (tmp_path / "folder.csv").mkdir()
    assert "expected a data file, found a directory" in _error(tmp_path / "folder.csv")
