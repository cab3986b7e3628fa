"""minift.tasks.lm: an encoder checkpoint warm-started as a left-to-right decoder is
transformers' ``BertLMHeadModel`` once saved, and its perplexity is the token-weighted mean of
the reference's loss. The model is conftest's tiny random BERT with MiniLM's tokenizer."""

import math

import pytest
import torch
import transformers

from minift.data.tokenizer import Tokenizer
from minift.tasks.lm import LanguageModel, LMBatches, lm_metrics
from minift.tasks.mlm import TextSequences

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tokenizer(minilm_dir):
    return Tokenizer.from_pretrained(minilm_dir)


def test_a_language_model_from_an_encoder_is_bert_lm_head_models_and_scores_perplexity(
        tiny, tokenizer, tmp_path):
    """An encoder checkpoint warm-started as a decoder keeps its body's weights; saved, it is a
    BertLMHeadModel with the same logits (1e-5); lm_metrics' loss is the token-weighted mean
    of transformers' loss over each batch, and perplexity its exp (rel 1e-6)."""
    from minift.hf.checkpoint import read_checkpoint

    lm = LanguageModel.from_pretrained(tiny, seed=3).eval()
    body = read_checkpoint(tiny).encoder
    assert torch.equal(lm.bert.embeddings.word_embeddings.weight,
                       body["embeddings.word_embeddings.weight"])
    lm.save_pretrained(tmp_path)
    hf = transformers.BertLMHeadModel.from_pretrained(tmp_path).eval()
    passages = ["the golden palace serves thai food", "a café", "near the river, cheap food"]
    batches = list(LMBatches(TextSequences(passages, tokenizer, max_length=16), 2, seed=0,
                             shuffle=False))
    total = count = 0
    with torch.no_grad():
        for b in batches:
            want = hf(**b)
            torch.testing.assert_close(lm(**b).logits, want.logits, atol=1e-5, rtol=0)
            n = int((b["labels"][:, 1:] != -100).sum())
            total, count = total + want.loss.item() * n, count + n
        scores = lm_metrics(lm, batches, "cpu")
    assert scores["tokens"] == count
    assert math.isclose(scores["loss"], total / count, rel_tol=1e-6)
    assert math.isclose(scores["perplexity"], math.exp(total / count), rel_tol=1e-6)
    assert type(LanguageModel.from_pretrained(tmp_path)) is LanguageModel  # a decoder folder
