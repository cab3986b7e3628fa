"""Tests of minift/data/readers.py: readers on the real GLUE files and on every kind of bad file.
(The label vocabulary is tested in test_labels.py; the sampler and padded batches in test_batches.py.)"""

import csv
import json
import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from manifest import manifest_row, numbers

from minift.core.labels import LabelVocab
from minift.data.readers import TASKS, DataError, encode_labels, read_examples, task_files

# ----------------------------------------------------------------------------------------------
# Helpers


def _write(tmp_path: Path, name: str, content: str | bytes) -> Path:
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8", newline="")
    return path


def _read_error(path: Path, **kwargs) -> str:
    kwargs.setdefault("text_col", "text")
    with pytest.raises(DataError) as info:
        read_examples(path, **kwargs)
    return str(info.value)


# ----------------------------------------------------------------------------------------------
# The real GLUE files


def _read_task(name: str, data_dir: Path):
    train, dev, text_col, pair_col, label_col = task_files(name, data_dir)
    kwargs = dict(text_col=text_col, pair_col=pair_col, label_col=label_col)
    return read_examples(train, **kwargs), read_examples(dev, **kwargs)


def test_sst2_counts_match_manifest(data_dir):
    train, dev = _read_task("sst2", data_dir)
    # "67,349 / 872 (official; train 37,569 pos / 29,780 neg, dev 444 / 428)"
    n_train, n_dev, train_pos, train_neg, dev_pos, dev_neg = numbers(
        manifest_row(data_dir, "sst2")
    )
    assert (len(train), len(dev)) == (n_train, n_dev)
    assert [sum(ex.label == lab for ex in train) for lab in "10"] == [train_pos, train_neg]
    assert [sum(ex.label == lab for ex in dev) for lab in "10"] == [dev_pos, dev_neg]
    assert all(ex.pair is None for ex in train)
    assert train[0].line == 2 and train[-1].line == n_train + 1
    assert LabelVocab.from_examples(train).labels == ["0", "1"]


def test_mrpc_counts_bom_and_literal_quotes(data_dir):
    train, dev = _read_task("mrpc", data_dir)
    # "3,668 / 408 (official; train 2,474 paraphrase / 1,194 not, dev 279 / 129)"
    n_train, n_dev, train_pos, train_neg, dev_pos, dev_neg = numbers(
        manifest_row(data_dir, "mrpc")
    )
    assert (len(train), len(dev)) == (n_train, n_dev)
    assert [sum(ex.label == lab for ex in train) for lab in "10"] == [train_pos, train_neg]
    assert [sum(ex.label == lab for ex in dev) for lab in "10"] == [dev_pos, dev_neg]
    # The header opens with a byte-order mark: "Quality" is only found when it is dropped.
    raw = (data_dir / "mrpc" / "train.tsv").read_bytes()
    assert raw.startswith(b"\xef\xbb\xbfQuality\t")
    # Every row is the plain tab split of its line: quotes are characters, never CSV quoting.
    lines = raw[3:].decode("utf-8").split("\n")
    for ex in train:
        fields = lines[ex.line - 1].split("\t")
        assert (ex.label, ex.text, ex.pair) == (fields[0], fields[3], fields[4])
    # The row MANIFEST singles out (data row 92, line 93): its second sentence opens with `"`.
    row = lines[92].split("\t")
    assert row[1:3] == ["2750203", "2750153"]
    assert train[91].line == 93
    assert train[91].pair == row[4] and train[91].pair.startswith('" ')
    assert sum(ex.text.startswith('"') for ex in train) > 0


def test_rte_counts_and_label_order(data_dir):
    train, dev = _read_task("rte", data_dir)
    n_train, n_dev = numbers(manifest_row(data_dir, "rte"))[:2]
    assert (len(train), len(dev)) == (n_train, n_dev)
    vocab = LabelVocab.from_examples(train)
    assert vocab.labels == ["entailment", "not_entailment"]
    assert encode_labels(dev, vocab) == [int(ex.label == "not_entailment") for ex in dev]


def test_sst5_jsonl_counts_match_manifest(data_dir):
    examples = read_examples(data_dir / "sst5" / "train.jsonl", text_col="text", label_col="label")
    assert len(examples) == numbers(manifest_row(data_dir, "sst5"))[0]
    assert LabelVocab.from_examples(examples).labels == ["0", "1", "2", "3", "4"]


def test_task_files_reads_minift_data(data_dir, monkeypatch):
    monkeypatch.setenv("MINIFT_DATA", str(data_dir))
    for name, task in TASKS.items():
        train, dev, text_col, pair_col, label_col = task_files(name)
        assert (train, dev) == (
            data_dir / task.folder / "train.tsv",
            data_dir / task.folder / "dev.tsv",
        )
        header = train.read_text(encoding="utf-8-sig").split("\n", 1)[0].split("\t")
        assert {text_col, label_col} | ({pair_col} - {None}) <= set(header)


def test_task_files_errors(tmp_path, monkeypatch):
    monkeypatch.delenv("MINIFT_DATA", raising=False)
    with pytest.raises(DataError, match="MINIFT_DATA"):
        task_files("sst2")
    with pytest.raises(DataError, match=re.escape(str(tmp_path / "rte" / "train.tsv"))):
        task_files("rte", tmp_path)
    with pytest.raises(ValueError, match="sst2, mrpc, rte"):
        task_files("cola", tmp_path)


# ----------------------------------------------------------------------------------------------
# Bad files: each error names the file and the line


def test_missing_file_and_directory(tmp_path):
    assert "nope.tsv: no such file" in _read_error(tmp_path / "nope.tsv")
    (tmp_path / "folder.tsv").mkdir()
    assert "folder.tsv: expected a data file, found a directory" in _read_error(
        tmp_path / "folder.tsv"
    )


def test_empty_file_and_header_only(tmp_path):
    assert "empty.tsv:1: expected a header" in _read_error(_write(tmp_path, "empty.tsv", ""))
    assert "empty.csv:1: expected a header" in _read_error(_write(tmp_path, "empty.csv", ""))
    assert "blank.jsonl:1:" in _read_error(_write(tmp_path, "blank.jsonl", "\n \n"))
    message = _read_error(_write(tmp_path, "head.tsv", "text\tlabel\n"))
    assert "head.tsv:2: expected examples after the header, found none" in message


def test_column_not_in_header_lists_the_columns(tmp_path):
    path = _write(tmp_path, "cols.tsv", "sentence\tlabel\nhello\t1\n")
    message = _read_error(path, text_col="text")
    assert "cols.tsv:1:" in message and "'text'" in message
    assert "'sentence', 'label'" in message
    message = _read_error(path, text_col="sentence", label_col="gold")
    assert "cols.tsv:1:" in message and "'gold'" in message


def test_wrong_number_of_fields(tmp_path):
    path = _write(tmp_path, "fields.tsv", "text\tlabel\na\t1\nb\t0\nc\t1\textra\n")
    message = _read_error(path, label_col="label")
    assert "fields.tsv:4: expected 2 fields" in message and "found 3" in message
    path = _write(tmp_path, "fields.csv", "text,label\na,1\nb\n")
    assert "fields.csv:3: expected 2 fields" in _read_error(path, label_col="label")


def test_empty_text_pair_and_label(tmp_path):
    path = _write(tmp_path, "e.tsv", "text\tpair\tlabel\na\tb\t1\n  \tb\t1\n")
    assert "e.tsv:3: expected a non-empty text in column 'text'" in _read_error(path)
    path = _write(tmp_path, "p.tsv", "text\tpair\tlabel\na\tb\t1\nc\td\t0\ne\t \t1\n")
    assert "p.tsv:4: expected a non-empty text in column 'pair'" in _read_error(
        path, pair_col="pair"
    )
    path = _write(tmp_path, "l.tsv", "text\tpair\tlabel\na\tb\t1\nc\td\t\n")
    assert "l.tsv:3: expected a label" in _read_error(path, label_col="label")
    # Without label_col the empty label is not looked at.
    assert [ex.label for ex in read_examples(path, text_col="text")] == [None, None]


def test_jsonl_errors(tmp_path):
    good = '{"text": "a", "label": 1}\n'
    path = _write(tmp_path, "bad.jsonl", good + "\n" + '{"text": "b", "label": 0\n')
    assert "bad.jsonl:3: expected a JSON object, found invalid JSON" in _read_error(path)
    path = _write(tmp_path, "list.jsonl", good + '["b", 0]\n')
    assert "list.jsonl:2: expected a JSON object, found list" in _read_error(path)
    path = _write(tmp_path, "key.jsonl", good + good + '{"sentence": "c", "label": 0}\n')
    message = _read_error(path)
    assert "key.jsonl:3: expected a key 'text'" in message and "'sentence', 'label'" in message
    path = _write(tmp_path, "null.jsonl", good + '{"text": "c", "label": null}\n')
    assert "null.jsonl:2: expected a string or integer label" in _read_error(
        path, label_col="label"
    )
    path = _write(tmp_path, "num.jsonl", '{"text": 3}\n')
    assert "num.jsonl:1: expected a string for 'text', found int" in _read_error(path)
    path = _write(tmp_path, "ws.jsonl", good + '{"text": " \\t "}\n')
    assert "ws.jsonl:2: expected a non-empty text" in _read_error(path)


def test_not_utf8_names_byte_position_and_line(tmp_path):
    content = b"text\tlabel\nabc\t1\ncaf\xe9\t0\n"
    position = content.index(b"\xe9")
    message = _read_error(_write(tmp_path, "latin.tsv", content))
    assert "latin.tsv:3:" in message and f"position {position}" in message
    assert "0xe9" in message and "convert" in message
    # With a byte-order mark the position still counts from the start of the file.
    message = _read_error(_write(tmp_path, "bom.tsv", b"\xef\xbb\xbf" + content))
    assert f"position {position + 3}" in message


def test_real_latin1_file_is_refused_clearly(data_dir):
    path = data_dir / "financial_phrasebank" / "Sentences_50Agree.txt"
    message = _read_error(path, format="tsv")
    assert "Sentences_50Agree.txt:" in message and "not valid UTF-8" in message


def test_unknown_suffix_and_format(tmp_path):
    path = _write(tmp_path, "data.txt", "text\nhello\n")
    assert "data.txt: expected a file ending in one of" in _read_error(path)
    assert read_examples(path, text_col="text", format="tsv")[0].text == "hello"
    assert "expected format" in _read_error(path, format="xml")


def test_malformed_csv_record(tmp_path):
    path = _write(tmp_path, "q.csv", 'text,label\na,1\n"b"c,0\n')
    assert "q.csv:3: expected a well-formed CSV record" in _read_error(path)


# ----------------------------------------------------------------------------------------------
# Good files in the other formats


def test_csv_quoted_commas_quotes_and_line_breaks(tmp_path):
    content = (
        "text,pair,label\n"
        '"hello, world","she said ""hi""",pos\n'
        '"two\nlines",plain,neg\n'
        "\n"
        'last,"x, y",pos\n'
    )
    path = _write(tmp_path, "q.csv", content)
    examples = read_examples(path, text_col="text", pair_col="pair", label_col="label")
    got = [(ex.text, ex.pair, ex.label, ex.line) for ex in examples]
    assert got == [
        ("hello, world", 'she said "hi"', "pos", 2),
        ("two\nlines", "plain", "neg", 3),
        ("last", "x, y", "pos", 6),
    ]
    # A bad record after a two-line one is reported at its own line.
    path = _write(tmp_path, "q2.csv", content + "only-one-field\n")
    assert "q2.csv:7: expected 3 fields" in _read_error(path)


def test_jsonl_reads_and_skips_blank_lines(tmp_path):
    rows = [{"text": 'a "quoted" one', "label": 3}, {"text": "b\tc", "label": "x", "p": "q"}]
    content = json.dumps(rows[0]) + "\n\n" + json.dumps(rows[1]) + "\n"
    for name in ("d.jsonl", "d.json"):
        examples = read_examples(
            _write(tmp_path, name, content), text_col="text", label_col="label"
        )
        assert [(ex.text, ex.label, ex.line) for ex in examples] == [
            ('a "quoted" one', "3", 1),
            ("b\tc", "x", 3),
        ]


def test_crlf_and_cr_line_ends(tmp_path):
    path = _write(tmp_path, "crlf.tsv", "text\tlabel\r\na\t1\r\nb\t0\rc\t1")
    examples = read_examples(path, text_col="text", label_col="label")
    assert [(ex.text, ex.label, ex.line) for ex in examples] == [
        ("a", "1", 2),
        ("b", "0", 3),
        ("c", "1", 4),
    ]


_field_char = st.one_of(
    st.sampled_from(list("\"'\\,; \u00a0\u0085\u2028\x0b\x0cé中😀\ufeff")),
    st.characters(blacklist_categories=("Cs",), blacklist_characters="\t\n\r"),
)
_field = st.text(_field_char, min_size=1, max_size=30).filter(lambda s: s.strip() != "")


@settings(
    deadline=None, max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    rows=st.lists(st.tuples(_field, _field, _field), min_size=1, max_size=8),
    bom=st.booleans(),
    line_end=st.sampled_from(["\n", "\r\n"]),
    final_line_end=st.booleans(),
)
def test_tsv_round_trip(tmp_path, rows, bom, line_end, final_line_end):
    lines = ["label\ttext\tpair"] + ["\t".join(row) for row in rows]
    content = line_end.join(lines) + (line_end if final_line_end else "")
    path = _write(tmp_path, "round.tsv", ("\ufeff" if bom else "") + content)
    examples = read_examples(path, text_col="text", pair_col="pair", label_col="label")
    assert [(ex.label, ex.text, ex.pair) for ex in examples] == rows
    assert [ex.line for ex in examples] == list(range(2, len(rows) + 2))


@settings(
    deadline=None, max_examples=40, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    rows=st.lists(
        st.tuples(
            st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=30).filter(
                lambda s: s.strip() != ""
            ),
            _field,
        ),
        min_size=1,
        max_size=8,
    )
)
def test_csv_and_jsonl_round_trip(tmp_path, rows):
    path = tmp_path / "round.csv"
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label"])
        writer.writerows(rows)
    examples = read_examples(path, text_col="text", label_col="label")
    assert [(ex.text, ex.label) for ex in examples] == rows
    for ensure_ascii in (True, False):
        lines = [
            json.dumps({"text": t, "label": lab}, ensure_ascii=ensure_ascii) for t, lab in rows
        ]
        path = _write(tmp_path, "round.jsonl", "\n".join(lines))
        examples = read_examples(path, text_col="text", label_col="label")
        assert [(ex.text, ex.label) for ex in examples] == rows


# ----------------------------------------------------------------------------------------------
# Bounded reads (issue 31, row 8) and duplicate columns (row 14)


def test_a_file_over_the_cap_is_refused_before_it_is_read(tmp_path, monkeypatch):
    """A 2 GB sparse file is refused by its size (no MemoryError); the cap is named and can move."""
    import tracemalloc

    from minift.data import readers

    big = tmp_path / "big.tsv"
    with open(big, "wb") as f:
        f.truncate(2 << 30)  # sparse: no disk used
    tracemalloc.start()
    message = _read_error(big)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 1 << 20  # nothing of the file was read
    assert "big.tsv: expected a data file of at most 1024 MiB, found 2,147,483,648 bytes" in message
    assert "MAX_FILE_MB" in message and readers.MAX_FILE_VARIABLE in message
    small = _write(tmp_path, "small.tsv", "text\n" + "a\n" * 600_000)  # 1.2 MB
    monkeypatch.setenv(readers.MAX_FILE_VARIABLE, "1")
    assert "at most 1 MiB, found 1,200,005 bytes" in _read_error(small)
    monkeypatch.setenv(readers.MAX_FILE_VARIABLE, "2")
    assert len(read_examples(small, text_col="text")) == 600_000
    monkeypatch.setenv(readers.MAX_FILE_VARIABLE, "lots")
    assert "MINIFT_MAX_FILE_MB: expected a whole number of MiB" in _read_error(small)


@pytest.mark.parametrize("special", ["/dev/zero", "fifo", "link"])
def test_devices_and_fifos_are_refused_by_stat(tmp_path, special):
    """/dev/zero (also behind a symbolic link) and a FIFO would never end: refused unread."""
    import os

    from minift.data.readers import read_utf8_lines
    from minift.tasks.mlm import read_text_lines

    if special == "fifo":
        path = tmp_path / "pipe.tsv"
        os.mkfifo(path)  # opening it to read would block forever
        kind = "a FIFO (named pipe)"
    else:
        path = Path("/dev/zero")
        if special == "link":
            path = tmp_path / "zero.tsv"
            path.symlink_to("/dev/zero")
        kind = "a character device"
    expected = f"{path}: expected a regular data file, found {kind} (not read: it may never end)"
    assert _read_error(path, format="tsv") == expected
    for reader in (read_utf8_lines, read_text_lines):
        with pytest.raises(DataError, match=re.escape(expected)):
            reader(path)


def test_error_messages_quote_a_short_excerpt(tmp_path):
    """A 20 MB single line (here: NUL bytes, what `truncate` makes) gives a short message."""
    nul = tmp_path / "nul.tsv"
    with open(nul, "wb") as f:
        f.truncate(20 << 20)
    message = _read_error(nul)
    assert len(message) < 400
    assert "nul.tsv:1: expected a column 'text' in the header, found '\\x00" in message
    assert "(20,971,520 characters)" in message
    cases = {
        "spaces.tsv": ("text\tlabel\n" + " " * 5_000_000 + "\tpos\n", ":2: expected a non-empty"),
        "keys.jsonl": (json.dumps({"x" * 3_000_000: 1, **{f"k{i}": i for i in range(5000)}}),
                       ":1: expected a key 'text', found the keys 'xxx"),
        "cols.tsv": ("\t".join(f"c{i}" for i in range(100_000)) + "\n", "and 99990 more"),
    }
    for name, (content, expected) in cases.items():
        message = _read_error(_write(tmp_path, name, content), label_col="label")
        assert expected in message and len(message) < 700, (name, message[:200])
    dev = [ex for ex in read_examples(_write(tmp_path, "dev.tsv", "text\tlabel\na\t"
                                            + "z" * 1_000_000 + "\n"),
                                      text_col="text", label_col="label")]
    with pytest.raises(DataError, match="found the label 'zzz") as info:
        encode_labels(dev, LabelVocab(["neg", "pos"]))
    assert len(str(info.value)) < 400


@pytest.mark.parametrize("name, content", [
    ("dup.csv", "sentence,label,sentence\na,pos,b\n"),
    ("dup.tsv", "sentence\tlabel\tsentence\na\tpos\tb\n"),
])
def test_duplicate_column_names_are_refused(tmp_path, name, content):
    path = _write(tmp_path, name, content)
    message = _read_error(path, text_col="sentence", label_col="label")
    assert message == (f"{path}:1: expected each column named once in the header, found the "
                       "column 'sentence' twice (fields 1 and 3); rename one of them")


def test_duplicate_keys_in_a_json_line_are_refused(tmp_path):
    path = _write(tmp_path, "dup.jsonl", '{"text": "a", "label": "pos"}\n'
                  '{"text": "b", "label": "pos", "text": "c"}\n')
    assert _read_error(path, label_col="label") == (
        f"{path}:2: expected each key once in the JSON object, found 'text' twice")
