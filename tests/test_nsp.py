"""minift.tasks.nsp: reading documents, BERT's pair construction on real abstracts, batches, and
the next-sentence and pre-training heads against transformers."""

import json
import tempfile

import pytest
import torch
import transformers
from hypothesis import given, settings
from hypothesis import strategies as st
from tiny_heads import TINY, random_batch, randomize_, saved

from minift.core.labels import DataError
from minift.core.model import BertConfig, BertModel
from minift.data.tokenizer import Tokenizer
from minift.tasks.mlm import MaskingCollator
from minift.tasks.nsp import (
    NextSentencePrediction,
    NSPMaskedBatches,
    PairSequences,
    PreTraining,
    nsp_pairs,
    read_documents,
    tokenize_documents,
)


@pytest.fixture(scope="module")
def tokenizer(minilm_dir):
    return Tokenizer.from_pretrained(minilm_dir)


@pytest.fixture(scope="module")
def abstracts(data_dir, tokenizer):
    """The first 60 CSAbstruct dev abstracts, tokenized."""
    path = data_dir / "csabstruct" / "dev.jsonl"
    lines = path.read_text(encoding="utf-8").splitlines()[:60]
    return tokenize_documents([json.loads(line)["sentences"] for line in lines], tokenizer)


def test_read_documents_text_and_jsonl(tmp_path):
    text = tmp_path / "docs.txt"
    text.write_text("a one.\na two.\n\n\nb one.\n  \nc one.\nc two.\n", encoding="utf-8")
    assert read_documents(text) == [["a one.", "a two."], ["b one."], ["c one.", "c two."]]
    jsonl = tmp_path / "docs.jsonl"
    jsonl.write_text('{"sentences": ["x.", " "]}\n{"sentences": ["y.", "z."]}\n', encoding="utf-8")
    assert read_documents(jsonl) == [["x."], ["y.", "z."]]


@pytest.mark.parametrize("name, content, message", [
    ("one.txt", "only.\none document.\n", "found 1 document"),
    ("bad.jsonl", '{"sentences": ["x"]}\n{"text": "y"}\n', "bad.jsonl:2: expected an object"),
    ("bad2.jsonl", '{"sentences": ["x"]}\n{oops\n', "bad2.jsonl:2: not valid JSON"),
])
def test_read_documents_errors(tmp_path, name, content, message):
    (tmp_path / name).write_text(content, encoding="utf-8")
    with pytest.raises(DataError, match=message):
        read_documents(tmp_path / name)


def test_pairs_are_seeded_and_fit(abstracts):
    first = nsp_pairs(abstracts, 64, torch.Generator().manual_seed(0))
    again = nsp_pairs(abstracts, 64, torch.Generator().manual_seed(0))
    other = nsp_pairs(abstracts, 64, torch.Generator().manual_seed(1))
    assert first == again and first != other
    assert all(1 <= len(p.a) and 1 <= len(p.b) and len(p.a) + len(p.b) <= 61 for p in first)


def test_true_and_random_pairs_are_what_they_say(abstracts):
    """Long enough that nothing is trimmed: a label-0 pair is A then B, contiguous, in one
    abstract; a label-1 pair's B is a contiguous run of another abstract."""
    streams = [sum(doc, []) for doc in abstracts]

    def where(tokens):
        return {i for i, s in enumerate(streams)
                if any(s[k:k + len(tokens)] == tokens for k in range(len(s) - len(tokens) + 1))}

    pairs = nsp_pairs(abstracts, 512, torch.Generator().manual_seed(0), short_seq_prob=0.0)
    labels = [p.label for p in pairs]
    # BERT's rule gives one half random plus the single-sentence chunks: a loose bound on 60+
    # abstracts (about 100 pairs) that a correct build misses with probability far below 1e-6
    assert 0.3 < sum(labels) / len(labels) < 0.85
    for p in pairs:
        if p.label == 0:
            assert where(p.a + p.b)
        else:
            assert where(p.b) - where(p.a)  # found in an abstract that does not hold A


def test_a_chunk_of_two_sentences_gets_a_random_b_half_of_the_time():
    """2,000 documents of two short sentences (one chunk each, cut after the first): with
    probability 1/2 the pair is the true (s1, s2), label 0; otherwise s1 gets a random B and s2,
    back in the queue, a chunk of its own, which always gets a random B: two label-1 pairs. So
    the true pairs count Binomial(2000, 1/2), checked to 5.3 standard deviations (a correct build
    fails less than once in 10^7; the seed is fixed)."""
    n = 2000
    documents = [[[10, 11], [12, 13, 14]] for _ in range(n)]
    pairs = nsp_pairs(documents, 64, torch.Generator().manual_seed(0), short_seq_prob=0.0)
    true = sum(p.label == 0 for p in pairs)
    assert len(pairs) == true + 2 * (n - true)
    assert abs(true - n / 2) <= 5.3 * (n / 4) ** 0.5, true


def test_masked_pair_batches_train_the_pretraining_head(abstracts, tokenizer):
    pairs = nsp_pairs(abstracts[:20], 48, torch.Generator().manual_seed(0))
    sequences = PairSequences(pairs, tokenizer)
    collator = MaskingCollator.from_tokenizer(tokenizer, "mlm")
    batches = NSPMaskedBatches(sequences, collator, 8, seed=0)
    batch = batches[0]
    assert set(batch) == {"input_ids", "attention_mask", "token_type_ids", "labels",
                          "next_sentence_label"}
    groups = batches.groups[0]
    assert batch["next_sentence_label"].tolist() == [pairs[i].label for i in groups]
    assert batch["token_type_ids"].sum() > 0
    torch.manual_seed(0)
    model = PreTraining(BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=16,
                                   num_hidden_layers=1, num_attention_heads=2,
                                   intermediate_size=24, max_position_embeddings=64))
    out = model(**batch)
    assert torch.isfinite(out.loss) and out.loss == out.mlm_loss + out.nsp_loss


def test_pretrain_nsp_reports_nsp_accuracy(minilm_dir, data_dir, tmp_path, capsys):
    import shutil

    from minift.hf.checkpoint import save_bert
    from minift.run.cli import main

    model_dir = tmp_path / "tiny"
    torch.manual_seed(0)
    save_bert(BertModel(BertConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                   intermediate_size=24, max_position_embeddings=64)), model_dir)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt"):
        shutil.copy(minilm_dir / name, model_dir / name)
    docs = tmp_path / "docs.jsonl"
    lines = (data_dir / "csabstruct" / "dev.jsonl").read_text(encoding="utf-8").splitlines()
    docs.write_text("\n".join(lines[:40]) + "\n", encoding="utf-8")
    out = tmp_path / "run"
    code = main(["pretrain", "--model", str(model_dir), "--text", str(docs), "--nsp",
                 "--eval-fraction", "0.2", "--max-steps", "3", "--batch-size", "8",
                 "--max-length", "64", "--no-progress", "--out", str(out)])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    metrics = json.loads((out / "metrics.json").read_text())
    for when in ("before", "after"):
        assert 0 <= metrics[when]["nsp_accuracy"] <= 1 and metrics[when]["pairs"] > 0
    assert metrics["data"]["eval_documents"] == 8
    assert json.loads((out / "config.json").read_text())["architectures"] == [
        "BertForPreTraining"]
    assert main(["pretrain", "--model", str(model_dir), "--text", str(docs), "--nsp",
                 "--masking", "wwm", "--out", str(tmp_path / "bad")]) == 2


@settings(deadline=None, max_examples=8)
@given(seed=st.integers(0, 2**31), batch=st.integers(1, 4), seq=st.integers(2, 10))
def test_next_sentence_prediction_matches_transformers(seed, batch, seq):
    torch.manual_seed(seed)
    # every weight random: a fresh head's zero bias would hide a bias that is never loaded
    hf = randomize_(transformers.BertForNextSentencePrediction(transformers.BertConfig(**TINY)),
                    seed)
    data = random_batch(torch.Generator().manual_seed(seed), batch, seq, 2, False)
    ref = hf(**data)
    with tempfile.TemporaryDirectory() as tmp:
        ours = NextSentencePrediction.from_pretrained(saved(hf, tmp)).eval()
    out = ours(**data)
    torch.testing.assert_close(out.logits, ref.logits, atol=1e-5, rtol=0)
    torch.testing.assert_close(out.loss, ref.loss, atol=1e-5, rtol=0)
    with tempfile.TemporaryDirectory() as tmp:
        ours.save_pretrained(tmp)
        back = transformers.BertForNextSentencePrediction.from_pretrained(tmp).eval()
    torch.testing.assert_close(back(**data).logits, out.logits, atol=1e-6, rtol=0)


@settings(deadline=None, max_examples=8)
@given(seed=st.integers(0, 2**31), batch=st.integers(1, 4), seq=st.integers(3, 10))
def test_pretraining_loss_matches_bert_for_pretraining(seed, batch, seq):
    torch.manual_seed(seed)
    hf = randomize_(transformers.BertForPreTraining(transformers.BertConfig(**TINY)), seed)
    gen = torch.Generator().manual_seed(seed)
    data = random_batch(gen, batch, seq, TINY["vocab_size"], True)
    data["labels"][:, 1] = 7  # at least one masked target a row
    data["attention_mask"][:, :2] = 1
    data["next_sentence_label"] = torch.randint(0, 2, (batch,), generator=gen)
    ref = hf(**data)
    with tempfile.TemporaryDirectory() as tmp:
        ours = PreTraining.from_pretrained(saved(hf, tmp)).eval()
    assert ours.head_loaded and ours.nsp_loaded
    out = ours(**data)
    torch.testing.assert_close(out.loss, ref.loss, atol=1e-5, rtol=0)
    torch.testing.assert_close(out.seq_relationship_logits, ref.seq_relationship_logits,
                               atol=1e-5, rtol=0)
    targets = data["labels"] != -100
    torch.testing.assert_close(out.logits, ref.prediction_logits[targets], atol=1e-5, rtol=0)
    with tempfile.TemporaryDirectory() as tmp:
        ours.save_pretrained(tmp)
        back = transformers.BertForPreTraining.from_pretrained(tmp).eval()
    torch.testing.assert_close(back(**data).loss, out.loss, atol=1e-5, rtol=0)


def test_documents_from_a_device_or_fifo_are_refused(tmp_path):
    """Issue 31, row 8: a file that may never end is refused by stat, before it is opened."""
    import os
    import re

    fifo = tmp_path / "docs.txt"
    os.mkfifo(fifo)
    for path, kind in (("/dev/zero", "a character device"), (fifo, "a FIFO (named pipe)")):
        with pytest.raises(DataError, match=re.escape(f"a regular data file, found {kind}")):
            read_documents(path)
