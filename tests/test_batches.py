"""Tests of minift/batches.py: a batch is padded once, by `pad_batch`, and equals the tokenizer's
own padded encoding of the same examples, tensor for tensor. (The sampler, `collate` and the
datasets against transformers are tested in test_data.py and test_ner.py.)"""

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from minift.data.batches import pad_batch
from minift.data.readers import read_conll, read_examples
from minift.data.tokenizer import Tokenizer
from minift.tasks.classify import ClassificationDataset
from minift.tasks.tag import TokenClassificationDataset

KEYS = ("input_ids", "attention_mask", "token_type_ids")


@pytest.fixture(scope="module")
def tokenizer(minilm_dir):
    return Tokenizer.from_pretrained(minilm_dir)


@pytest.fixture(scope="module")
def splits(data_dir):
    sst2 = read_examples(data_dir / "sst2" / "dev.tsv", text_col="sentence", label_col="label")
    mrpc = read_examples(
        data_dir / "mrpc" / "dev.tsv",
        text_col="#1 String",
        pair_col="#2 String",
        label_col="Quality",
    )
    conll = read_conll(data_dir / "conll2003" / "dev.txt", column=2)
    return {"sst2": sst2[:60], "mrpc": mrpc[:60], "conll": conll[:60]}


def _assert_equal(batch, encoding):
    for key in KEYS:
        assert batch[key].dtype == torch.long
        assert torch.equal(batch[key], encoding[key]), key


def test_unpadded_rows_padded_once_equal_the_tokenizers_padding(tokenizer, splits):
    texts = [ex.text for ex in splits["mrpc"][:16]]
    pairs = [ex.pair for ex in splits["mrpc"][:16]]
    rows = tokenizer(texts, pairs, max_length=40, padding=False)
    padded = tokenizer(texts, pairs, max_length=40, padding=True)
    assert [len(row) for row in rows["input_ids"]] == padded.attention_mask.sum(1).tolist()
    batch = pad_batch(rows["input_ids"], rows["token_type_ids"], tokenizer.pad_token_id)
    _assert_equal(batch, padded)
    assert rows.word_ids == [
        w[: len(r)] for w, r in zip(padded.word_ids, rows["input_ids"], strict=True)
    ]


@settings(
    deadline=None, max_examples=20, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    data=st.data(),
    task=st.sampled_from(["sst2", "mrpc"]),
    max_length=st.sampled_from([None, 12, 64]),
)
def test_classification_batches_equal_the_tokenizers_padded_encode(
    tokenizer, splits, data, task, max_length
):
    examples = splits[task]
    dataset = ClassificationDataset(examples, tokenizer, max_length=max_length, chunk_size=7)
    indices = data.draw(st.lists(st.integers(0, len(examples) - 1), min_size=1, max_size=10))
    chosen = [examples[i] for i in indices]
    pairs = None if task == "sst2" else [ex.pair for ex in chosen]
    encoding = tokenizer([ex.text for ex in chosen], pairs, max_length=max_length, padding=True)
    _assert_equal(dataset.batch(indices), encoding)


@settings(
    deadline=None, max_examples=20, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_token_batches_equal_the_tokenizers_padded_encode(tokenizer, splits, data):
    words = [s.words for s in splits["conll"]]
    dataset = TokenClassificationDataset(words, tokenizer, max_length=512, chunk_size=7)
    assert dataset.plan.num_windowed == 0  # each piece is its whole sentence
    indices = data.draw(st.lists(st.integers(0, len(words) - 1), min_size=1, max_size=10))
    encoding = tokenizer(
        [words[i] for i in indices], is_split_into_words=True, padding=True, truncation=False
    )
    _assert_equal(dataset.batch(indices), encoding)
    assert [dataset.word_ids[i] for i in indices] == [
        w[:n]
        for w, n in zip(encoding.word_ids, encoding.attention_mask.sum(1).tolist(), strict=True)
    ]
