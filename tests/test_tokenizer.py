"""minift.data.tokenizer against the reference, transformers' fast BertTokenizer, on all-MiniLM-L6-v2.

Every comparison is exact: ids, attention mask, token types, word ids, sequence ids and character
offsets must be identical lists.
"""

import csv
import json
import os
import re
import shutil
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import AutoTokenizer

from minift.data.tokenizer import Encoding, Tokenizer

# The reference warns when it is given a max_length it will not use (padding=True, no truncation).
pytestmark = pytest.mark.filterwarnings("ignore:`max_length` is ignored:UserWarning")

# Pieces that exercise the normalizer and pre-tokenizer: accents (composed and combining), CJK,
# emoji with modifiers, special tokens written in the text, control and odd whitespace, digits and
# punctuation, long words that WordPiece gives up on.
FRAGMENTS = [
    "é", "naïve café", "Ångström", "e\u0301", "İstanbul", "ß", "ﬁ", "中文字", "日本語 ", "한국어",
    "😀", "👍🏽", "🇫🇷", "[MASK]", "[CLS]", " [SEP] ", "[PAD]", "[unused3]", "  ", "\t", "\n",
    "\u00a0", "\u200b", "\u3000", "\x00", "\ufffd", "123,456.78", "...", "!?", "don't", "(x)",
    "--", "unaffable", "Hello", "WORLD", "x" * 120,
]  # fmt: skip

words = st.one_of(
    st.text(st.characters(exclude_categories=("Cs",)), max_size=10), st.sampled_from(FRAGMENTS)
)
texts = st.lists(words, max_size=6).map("".join)
word_lists = st.lists(words, max_size=6)


@pytest.fixture(scope="module")
def reference(minilm_dir):
    return AutoTokenizer.from_pretrained(minilm_dir)


@pytest.fixture(scope="module")
def ours(minilm_dir):
    return Tokenizer.from_pretrained(minilm_dir)


@pytest.fixture(scope="module")
def vocab_only_dir(minilm_dir, tmp_path_factory):
    """vocab.txt and tokenizer_config.json without tokenizer.json."""
    folder = tmp_path_factory.mktemp("vocab_only")
    for name in ("vocab.txt", "tokenizer_config.json"):
        shutil.copy(minilm_dir / name, folder / name)
    return folder


@pytest.fixture(scope="module")
def from_vocab(vocab_only_dir):
    return Tokenizer.from_pretrained(vocab_only_dir)


def reference_encode(reference, texts, pairs=None, **kwargs) -> dict:
    """The reference's encoding of a batch (list of examples), as lists."""
    out = reference(texts, pairs, return_offsets_mapping=True, **kwargs)
    n = len(out["input_ids"])
    return {
        "input_ids": out["input_ids"],
        "attention_mask": out["attention_mask"],
        "token_type_ids": out["token_type_ids"],
        "word_ids": [out.word_ids(i) for i in range(n)],
        "sequence_ids": [out.sequence_ids(i) for i in range(n)],
        "offsets": [[tuple(span) for span in row] for row in out["offset_mapping"]],
    }


def as_lists(encoding: Encoding) -> dict:
    """The encoding as the reference's lists: padded (batch, seq) tensors, or unpadded rows."""

    def rows(value):
        if isinstance(value, torch.Tensor):
            assert value.dtype == torch.long and value.dim() == 2
            return value.tolist()
        assert all(row.dtype == torch.long and row.dim() == 1 for row in value)
        return [row.tolist() for row in value]

    return {
        "input_ids": rows(encoding.input_ids),
        "attention_mask": rows(encoding.attention_mask),
        "token_type_ids": rows(encoding.token_type_ids),
        "word_ids": encoding.word_ids,
        "sequence_ids": encoding.sequence_ids,
        "offsets": encoding.offsets,
    }


@st.composite
def batches(draw, examples=texts):
    """A batch of 1-4 examples, optional pairs, and the call options (reference names)."""
    batch = draw(st.lists(examples, min_size=1, max_size=4))
    pairs = draw(st.none() | st.lists(examples, min_size=len(batch), max_size=len(batch)))
    padding = draw(st.sampled_from([True, "longest", "max_length", False]))
    truncation = draw(st.booleans())
    # 3 is the fewest tokens that hold a pair's special tokens; None means model_max_length (512).
    max_length = draw(st.none() | st.integers(3, 48))
    # Pass a single example unbatched ("text", not ["text"]); a list of no words cannot be.
    unbatched = len(batch) == 1 and batch[0] != [] and draw(st.booleans())
    options = {"padding": padding, "truncation": truncation, "max_length": max_length}
    return batch, pairs, options, unbatched


def check_against_reference(
    ours, reference, batch, pairs, options, unbatched, is_split_into_words=False
):
    expected = reference_encode(
        reference, batch, pairs, is_split_into_words=is_split_into_words, **options
    )
    texts = batch[0] if unbatched else batch
    pair_texts = pairs[0] if unbatched and pairs is not None else pairs

    def call():
        return ours(texts, pair_texts, is_split_into_words=is_split_into_words, **options)

    lengths = {len(ids) for ids in expected["input_ids"]}
    if options["padding"] == "max_length" and lengths != {options["max_length"] or 512}:
        # The reference returns ragged lists here (no tensor can hold them); ours refuses.
        with pytest.raises(ValueError, match="more than padding='max_length' pads to"):
            call()
        return
    assert as_lists(call()) == expected


@settings(deadline=None, max_examples=150)
@given(case=batches())
def test_encodings_match_reference(ours, reference, case):
    check_against_reference(ours, reference, *case)


@settings(deadline=None, max_examples=80)
@given(case=batches(word_lists))
def test_split_into_words_matches_reference(ours, reference, case):
    check_against_reference(ours, reference, *case, is_split_into_words=True)


def read_sst2(data_dir: Path, n: int) -> list[str]:
    with open(data_dir / "sst2" / "dev.tsv", encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    return [row["sentence"] for row in rows[:n]]


def read_mrpc(data_dir: Path, n: int) -> tuple[list[str], list[str]]:
    # A UTF-8 byte-order mark, and quotes that are literal characters, not CSV quoting.
    with open(data_dir / "mrpc" / "dev.tsv", encoding="utf-8-sig", newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    return [row["#1 String"] for row in rows[:n]], [row["#2 String"] for row in rows[:n]]


@pytest.mark.parametrize("max_length", [None, 24])
def test_real_sentences_match_reference(ours, reference, data_dir, max_length):
    sentences = read_sst2(data_dir, 300)
    first, second = read_mrpc(data_dir, 200)
    assert len(sentences) == 300 and len(first) == 200
    assert any('"' in text for text in first + second)  # the literal quotes survived reading
    for start in range(0, 300, 32):
        batch = sentences[start : start + 32]
        expected = reference_encode(
            reference, batch, max_length=max_length, padding=True, truncation=True
        )
        assert as_lists(ours(batch, max_length=max_length)) == expected
    for start in range(0, 200, 32):
        a, b = first[start : start + 32], second[start : start + 32]
        expected = reference_encode(
            reference, a, b, max_length=max_length, padding=True, truncation=True
        )
        assert as_lists(ours(a, b, max_length=max_length)) == expected


@settings(deadline=None, max_examples=80)
@given(case=batches())
def test_vocab_txt_matches_tokenizer_json(ours, reference, from_vocab, case):
    check_against_reference(from_vocab, reference, *case)
    batch, pairs, options, _ = case
    if options["padding"] != "max_length" or options["truncation"]:
        assert as_lists(from_vocab(batch, pairs, **options)) == as_lists(
            ours(batch, pairs, **options)
        )
    for name in ("vocab_size", "model_max_length", "special_token_ids", "pad_token_id"):
        assert getattr(from_vocab, name) == getattr(ours, name)



def test_vocab_txt_pipeline_matches_reference_at_the_edges(ours, reference, from_vocab):
    """The pipeline built from vocab.txt (`bert_wordpiece`) against the reference where random text
    rarely goes: WordPiece's word-length limit (a word of 100 characters is spelled, one of 101
    is [UNK]) and decode's clean-up of the spaces before punctuation ("world ." -> "world.")."""
    texts = ["x" * 100, "x" * 101, "ab " + "é" * 101 + " cd", "Hello , world . it ' s ( x ) !"]
    assert len(reference.tokenize("x" * 100)) > 1 and reference.tokenize("x" * 101) == ["[UNK]"]
    for tokenizer in (ours, from_vocab):
        for text in texts:
            assert tokenizer.tokenize(text) == reference.tokenize(text)
        for row in tokenizer(texts).input_ids:
            for skip in (True, False):
                expected = reference.decode(row.tolist(), skip_special_tokens=skip)
                assert tokenizer.decode(row, skip) == expected


@pytest.fixture(scope="module")
def cased_dirs(minilm_dir, tmp_path_factory):
    """The same vocabulary with do_lower_case=False: from vocab.txt, and over tokenizer.json."""
    config = json.loads((minilm_dir / "tokenizer_config.json").read_text())
    config["do_lower_case"] = False
    folders = []
    for source in ("vocab.txt", "tokenizer.json"):
        folder = tmp_path_factory.mktemp("cased")
        shutil.copy(minilm_dir / source, folder / source)
        (folder / "tokenizer_config.json").write_text(json.dumps(config))
        folders.append(folder)
    return folders


@pytest.fixture(scope="module")
def cased_pairs(cased_dirs):
    """(ours, reference) for each cased folder."""
    return [(Tokenizer.from_pretrained(d), AutoTokenizer.from_pretrained(d)) for d in cased_dirs]


@settings(deadline=None, max_examples=30)
@given(case=batches())
def test_config_options_match_reference(cased_pairs, case):
    """tokenizer_config.json's do_lower_case decides, over tokenizer.json's normalizer too."""
    for cased, cased_reference in cased_pairs:
        assert cased.tokenize("Hello") == cased_reference.tokenize("Hello") == ["[UNK]"]
        check_against_reference(cased, cased_reference, *case)


@settings(deadline=None, max_examples=60)
@given(
    text=texts,
    pair=texts,
    ids=st.lists(st.integers(0, 30521), max_size=12),
    skip=st.booleans(),
)
def test_token_methods_match_reference(ours, reference, text, pair, ids, skip):
    assert ours.tokenize(text) == reference.tokenize(text)
    tokens = ours.tokenize(text) + ["not-a-token", "[MASK]"]
    assert ours.convert_tokens_to_ids(tokens) == reference.convert_tokens_to_ids(tokens)
    assert ours.convert_tokens_to_ids("[SEP]") == reference.convert_tokens_to_ids("[SEP]")
    assert ours.convert_ids_to_tokens(ids) == reference.convert_ids_to_tokens(ids)

    encoded = ours([text, pair], [pair, text], max_length=40).input_ids
    for row in [*encoded, torch.tensor(ids, dtype=torch.long)]:
        assert ours.decode(row, skip) == reference.decode(row.tolist(), skip_special_tokens=skip)
        expected = reference.get_special_tokens_mask(row.tolist(), already_has_special_tokens=True)
        assert ours.special_tokens_mask(row).tolist() == [bool(m) for m in expected]
    assert ours.special_tokens_mask(encoded).shape == encoded.shape


def test_properties_match_reference(ours, reference):
    assert ours.vocab_size == len(reference)
    assert ours.model_max_length == reference.model_max_length
    assert ours.special_token_ids == frozenset(reference.all_special_ids)
    for name in ("pad", "cls", "sep", "mask", "unk"):
        assert getattr(ours, f"{name}_token_id") == getattr(reference, f"{name}_token_id")


def test_encoding_container(ours):
    encoding = ours(["a short one", "and a somewhat longer one"], ["b", "c"])
    assert len(encoding) == 2
    assert dict(**encoding).keys() == {"input_ids", "attention_mask", "token_type_ids"}
    moved = encoding.to("cpu")
    assert torch.equal(moved["input_ids"], encoding.input_ids) and moved.offsets == encoding.offsets
    with pytest.raises(KeyError, match="offset_mapping"):
        encoding["offset_mapping"]
    single = ours("one text", padding=False)
    assert len(single) == 1 and single.input_ids[0].shape == (len(single.word_ids[0]),)
    rows = ours(["a short one", "and a somewhat longer one"], ["b", "c"], padding=False)
    assert [len(row) for row in rows["input_ids"]] == encoding.attention_mask.sum(1).tolist()
    assert rows.to("cpu").word_ids == rows.word_ids


@settings(deadline=None, max_examples=30)
@given(text=texts)
def test_save_pretrained_round_trip(ours, from_vocab, cased_pairs, tmp_path_factory, text):
    for source in [ours, from_vocab, cased_pairs[0][0]]:
        folder = tmp_path_factory.mktemp("saved")
        source.save_pretrained(folder)
        assert {"tokenizer.json", "tokenizer_config.json", "vocab.txt"} <= set(os.listdir(folder))
        batch, pairs = [text, "a [MASK] b"], ["x", text]
        expected = as_lists(source(batch, pairs, max_length=16))
        assert as_lists(Tokenizer.from_pretrained(folder)(batch, pairs, max_length=16)) == expected
        saved_reference = AutoTokenizer.from_pretrained(folder)
        assert (
            reference_encode(
                saved_reference, batch, pairs, max_length=16, padding=True, truncation=True
            )
            == expected
        )
        assert saved_reference.model_max_length == source.model_max_length


@pytest.mark.parametrize("change", ["newline", "carriage return", "gap"])
def test_a_vocab_txt_that_would_shift_the_ids_is_refused(minilm_dir, tmp_path, change):
    """Issue 31, row 6: a token holding a line break in tokenizer.json would take two lines of
    vocab.txt, shifting every later id; ids with a gap shift them too. Refused, nothing written."""
    data = json.loads((minilm_dir / "tokenizer.json").read_text(encoding="utf-8"))
    vocab = data["model"]["vocab"]
    token = next(t for t, i in vocab.items() if i == 2000)
    if change == "gap":
        vocab[token] = len(vocab) + 5
        after = next(t for t, i in vocab.items() if i == 2001)
        expected = f"cannot write the token {after!r} (id 2001) on line 2001: the vocabulary has no id 2000"
    else:
        broken = "a" + {"newline": "\n", "carriage return": "\r"}[change] + "b"
        vocab[broken] = vocab.pop(token)
        expected = f"cannot write the token {broken!r} (id 2000), which holds a line break"
    source = tmp_path / "source"
    source.mkdir()
    shutil.copy(minilm_dir / "tokenizer_config.json", source)
    (source / "tokenizer.json").write_text(json.dumps(data), encoding="utf-8")
    tokenizer = Tokenizer.from_pretrained(source)
    with pytest.raises(ValueError, match=re.escape(f"{tmp_path / 'saved' / 'vocab.txt'}: "
                                                   f"{expected}")):
        tokenizer.save_pretrained(tmp_path / "saved")
    assert not (tmp_path / "saved").exists()


def test_missing_or_empty_folder(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        Tokenizer.from_pretrained(tmp_path / "nowhere")
    with pytest.raises(ValueError, match=re.escape(f"{tmp_path} holds neither tokenizer.json nor")):
        Tokenizer.from_pretrained(tmp_path)


@pytest.mark.parametrize("source", ["tokenizer.json", "vocab.txt"])
def test_vocab_larger_than_embedding_table(minilm_dir, tmp_path, source):
    shutil.copy(minilm_dir / source, tmp_path / source)
    config = json.loads((minilm_dir / "config.json").read_text())
    Tokenizer.from_pretrained(tmp_path)  # no config.json: nothing to check against
    config["vocab_size"] = 30000
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(
        ValueError, match=f"{source} has 30522 tokens .*config.json says vocab_size=30000"
    ):
        Tokenizer.from_pretrained(tmp_path)
    config["vocab_size"] = 30522
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert Tokenizer.from_pretrained(tmp_path).vocab_size == 30522


def test_bad_calls(ours):
    with pytest.raises(ValueError, match="padding should be"):
        ours("a", padding="longst")
    with pytest.raises(ValueError, match="got 2 texts but 1 pairs"):
        ours(["a", "b"], ["c"])
    with pytest.raises(ValueError, match="max_length=2 leaves no room for the 3 special tokens"):
        ours("a", "b", max_length=2)
    with pytest.raises(ValueError, match="max_length=1 leaves no room for the 2 special tokens"):
        ours("a", max_length=1)
    with pytest.raises(ValueError, match=r"texts\[1\]: expected a str"):
        ours(["a", 3])
    with pytest.raises(ValueError, match="non-empty list"):
        ours([])
    with pytest.raises(ValueError, match=r"texts\[1\]: expected a list\[str\]"):
        ours([["a"], "b"], is_split_into_words=True)
    with pytest.raises(ValueError, match=r"pairs\[0\]: expected a str"):
        ours(["a"], [["b"]])
    with pytest.raises(ValueError, match="outside the vocabulary"):
        ours.convert_ids_to_tokens(ours.vocab_size)
