"""Tiny random heads shared by the head parity tests (test_classify, test_nsp, test_qa): a BERT
config small enough for hypothesis, a random batch with padding and labels, and the two ways of
bringing a transformers model to minift (through a saved folder); ``randomize_`` for every
parity test that wants no weight left at its initial value (test_checkpoint, test_decoder)."""

import tempfile

import torch

TINY = dict(vocab_size=60, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
            intermediate_size=24, max_position_embeddings=32)


def random_batch(gen, batch, seq, num_labels, token_level):
    ids = torch.randint(1, TINY["vocab_size"], (batch, seq), generator=gen)
    mask = torch.ones(batch, seq, dtype=torch.long)
    # At least two real tokens: position 0 ([CLS]) is ignored, so one label always counts.
    lengths = torch.randint(2, seq + 1, (batch,), generator=gen)
    for row, n in enumerate(lengths.tolist()):
        mask[row, n:] = 0
    types = torch.randint(0, 2, (batch, seq), generator=gen)
    if token_level:
        labels = torch.randint(0, num_labels, (batch, seq), generator=gen)
        labels[mask == 0] = -100
        labels[:, 0] = -100
    else:
        labels = torch.randint(0, num_labels, (batch,), generator=gen)
    return dict(input_ids=ids, attention_mask=mask, token_type_ids=types, labels=labels)


def hf_to_minift(hf_model, ours_cls):
    with tempfile.TemporaryDirectory() as tmp:
        hf_model.save_pretrained(tmp)
        return ours_cls.from_pretrained(tmp).eval()


def saved(hf_model, tmp_dir):
    hf_model.save_pretrained(tmp_dir)
    return tmp_dir


def randomize_(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Every parameter random, std 0.2 (norm weights and biases too, so a swapped pair shows;
    tied parameters are one tensor, drawn once); returned in eval mode."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in module.parameters():
            param.copy_(torch.randn(param.shape, generator=gen) * 0.2)
    return module.eval()
