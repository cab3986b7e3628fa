"""minift.core.freeze: which parameters each freeze mode leaves trainable."""

import pytest
import torch

from minift.core.freeze import freeze
from minift.core.model import BertConfig
from minift.tasks.classify import SequenceClassifier
from minift.tasks.mlm import MaskedLM

TINY = dict(vocab_size=60, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
            intermediate_size=24, max_position_embeddings=32)


def test_freeze_modes():
    torch.manual_seed(0)

    model = SequenceClassifier(BertConfig(**TINY), num_labels=2)
    total = sum(p.numel() for p in model.parameters())
    head = sum(p.numel() for p in model.classifier.parameters())
    block = sum(p.numel() for p in model.bert.layers[0].parameters())
    pooler = sum(p.numel() for p in model.bert.pooler.parameters())
    assert freeze(model, "none") == (total, total)
    assert freeze(model, "head") == (head, total)
    assert freeze(model, "last-1") == (head + pooler + block, total)
    assert not any(p.requires_grad for p in model.bert.layers[0].parameters())
    assert all(p.requires_grad for p in model.bert.layers[1].parameters())
    assert freeze(model, "last-2") == (head + pooler + 2 * block, total)
    for bad in ("last-3", "last-0", "some", "last-x"):
        with pytest.raises(ValueError, match="freeze mode"):
            freeze(model, bad)


def test_freeze_head_of_a_masked_lm_keeps_the_tied_embeddings_frozen():
    """The MLM head's own weights train; its decoder is the word embeddings, which stay frozen."""

    model = MaskedLM(BertConfig(**TINY))
    total = sum(p.numel() for p in model.parameters())
    own = sum(p.numel() for m in (model.transform, model.transform_norm) for p in m.parameters())
    assert freeze(model, "head") == (own + model.bias.numel(), total)
    assert not model.decoder.weight.requires_grad
    assert not any(p.requires_grad for p in model.bert.parameters())
