"""Text for MLM: reading passages, packing them into sequences, masked batches that repeat."""

import re

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from minift.core.masking import word_ids_from_tokens
from minift.data.readers import DataError
from minift.data.tokenizer import Tokenizer
from minift.tasks.mlm import (
    MaskedBatches,
    MaskingCollator,
    TextSequences,
    held_out_split,
    read_text_lines,
)

WORDS = ["profit", "rose", "EUR", "13.1", "mn", "unaffable", "Componenta", "'s", "net", "sales",
         "(", ")", "-", "quarterly", "to", "the", "[UNK]", "ÄÖ", "oyj"]  # fmt: skip


@pytest.fixture(scope="module")
def tokenizer(minilm_dir):
    return Tokenizer.from_pretrained(minilm_dir)


passages_strategy = st.lists(
    st.lists(st.sampled_from(WORDS), min_size=1, max_size=30).map(" ".join),
    min_size=1,
    max_size=12,
)


def body(tokenizer, passage):
    return tokenizer.backend.encode(passage, add_special_tokens=False).ids


@settings(deadline=None, max_examples=40)
@given(passages=passages_strategy, max_length=st.integers(3, 40), pack=st.booleans())
def test_sequences_hold_the_text_in_order(tokenizer, passages, max_length, pack):
    """Packed: every token of every passage, in order, [SEP] after each piece, nothing dropped.
    Unpacked: one sequence a passage, cut at max_length. Always: [CLS] first, [SEP] last, at most
    max_length tokens, and word ids that group the tokens as their WordPiece pieces do."""
    seqs = TextSequences(passages, tokenizer, max_length=max_length, pack=pack)
    cls, sep = tokenizer.cls_token_id, tokenizer.sep_token_id
    bodies = [body(tokenizer, p) for p in passages]
    assert seqs.lengths == [len(ids) for ids in seqs.input_ids]
    for ids, words in zip(seqs.input_ids, seqs.word_ids, strict=True):
        assert 3 <= len(ids) <= max_length and ids[0] == cls and ids[-1] == sep
        special = (ids == cls) | (ids == sep)
        assert torch.equal(words < 0, special)
        tokens = tokenizer.convert_ids_to_tokens(ids)
        expected = word_ids_from_tokens([tokens], special[None])[0]
        starts = words[1:] != words[:-1]  # our words start exactly where ## pieces say
        assert torch.equal(starts, expected[1:] != expected[:-1])
        real = words[words >= 0]
        assert torch.all(real[1:] >= real[:-1])  # numbered in order within a sequence
    if pack:
        flat = [t for ids in seqs.input_ids for t in ids.tolist() if t not in (cls, sep)]
        assert flat == [t for b in bodies for t in b]
        # greedy: no sequence had room for the next one's first piece and its [SEP]
        for ids, following in zip(seqs.input_ids[:-1], seqs.input_ids[1:], strict=True):
            first_piece = following.tolist().index(sep) - 1
            assert len(ids) + first_piece + 1 > max_length
    else:
        assert [ids[1:-1].tolist() for ids in seqs.input_ids] == [
            b[: max_length - 2] for b in bodies
        ]


def test_packing_fills_sequences_greedily(tokenizer):
    passages = ["net sales rose"] * 10  # 3 tokens + [SEP] each
    seqs = TextSequences(passages, tokenizer, max_length=10, pack=True)
    # [CLS] + two passages with their [SEP] = 9 tokens; a third would need 13
    assert seqs.lengths == [9] * 5
    tokens = tokenizer.convert_ids_to_tokens(seqs.input_ids[0])
    assert tokens == ["[CLS]", "net", "sales", "rose", "[SEP]", "net", "sales", "rose", "[SEP]"]
    assert seqs.word_ids[0].tolist() == [-1, 0, 1, 2, -1, 3, 4, 5, -1]
    long = TextSequences(["net sales rose " * 5], tokenizer, max_length=6, pack=True)
    assert long.lengths == [6, 6, 6, 5]  # 15 tokens cut into pieces of 4, none dropped


@settings(deadline=None, max_examples=15)
@given(
    passages=passages_strategy,
    strategy=st.sampled_from(["mlm", "wwm", "span"]),
    seed=st.integers(0, 2**20),
    epoch=st.integers(0, 5),
)
def test_masked_batches_repeat_and_never_select_special_tokens(
    tokenizer, passages, strategy, seed, epoch
):
    seqs = TextSequences(passages, tokenizer, max_length=24, pack=True)
    collator = MaskingCollator.from_tokenizer(tokenizer, strategy, mlm_probability=0.3)
    first = MaskedBatches(seqs, collator, 3, seed=seed, epoch=epoch)
    again = MaskedBatches(seqs, collator, 3, seed=seed, epoch=epoch)
    assert len(first) == len(again) == -(-len(seqs) // 3)
    for i in range(len(first)):
        a, b = first[i], again[i]
        assert a.keys() == {"input_ids", "attention_mask", "token_type_ids", "labels"}
        for key in a:
            assert torch.equal(a[key], b[key]), key
        original = seqs.batch(first.groups[i])["input_ids"]
        selected = a["labels"] != -100
        special = torch.isin(original, torch.tensor(sorted(tokenizer.special_token_ids)))
        assert not (selected & (special | (a["attention_mask"] == 0))).any()
        assert torch.equal(a["labels"][selected], original[selected])
        assert torch.equal(a["input_ids"][~selected], original[~selected])


def test_different_epochs_get_different_masks(tokenizer):
    passages = [" ".join(WORDS[:15])] * 40
    seqs = TextSequences(passages, tokenizer, max_length=64, pack=True)
    collator = MaskingCollator.from_tokenizer(tokenizer, "mlm")
    epoch0 = MaskedBatches(seqs, collator, 4, seed=0, epoch=0, shuffle=False)
    epoch1 = MaskedBatches(seqs, collator, 4, seed=0, epoch=1, shuffle=False)
    assert epoch0.groups == epoch1.groups
    assert not torch.equal(epoch0[0]["labels"], epoch1[0]["labels"])  # dynamic masking


def test_read_text_lines_and_errors(tmp_path):
    good = tmp_path / "good.txt"
    good.write_bytes(b"\xef\xbb\xbffirst line\r\n\n  \nsecond line\n")
    assert read_text_lines(good) == ["first line", "second line"]
    assert read_text_lines([good, good]) == ["first line", "second line"] * 2
    empty = tmp_path / "empty.txt"
    empty.write_text(" \n\n", encoding="utf-8")
    latin = tmp_path / "latin.txt"
    latin.write_bytes(b"ok\ncaf\xe9\n")
    for path, what in (
        (tmp_path / "missing.txt", "no such file"),
        (empty, "empty file"),
        (latin, "UTF-8"),
        (tmp_path, "directory"),
    ):
        with pytest.raises(DataError, match=re.escape(str(path)) + ".*" + what):
            read_text_lines([good, path])


@settings(deadline=None, max_examples=30)
@given(n=st.integers(2, 200), fraction=st.floats(0.01, 0.9), seed=st.integers(0, 100))
def test_held_out_split_is_a_seeded_partition(n, fraction, seed):
    passages = [f"passage {i}" for i in range(n)]
    train, held = held_out_split(passages, fraction, seed)
    assert sorted(train + held, key=lambda p: int(p.split()[1])) == passages
    assert 1 <= len(held) <= n - 1 and not set(train) & set(held)
    assert train == sorted(train, key=lambda p: int(p.split()[1]))  # file order kept
    assert held_out_split(passages, fraction, seed) == (train, held)


def test_bad_arguments(tokenizer):
    with pytest.raises(ValueError, match="max_length"):
        TextSequences(["a b"], tokenizer, max_length=2)
    with pytest.raises(ValueError, match="masking"):
        MaskingCollator.from_tokenizer(tokenizer, "random")
    with pytest.raises(DataError, match="at least 2 passages"):
        held_out_split(["only one"], 0.1, 0)
