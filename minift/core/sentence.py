"""Sentence embeddings: mean pooling over real tokens, then L2 normalisation.

This is how sentence-transformers uses all-MiniLM-L6-v2 (its ``1_Pooling/config.json`` says
``pooling_mode_mean_tokens``, and a ``Normalize`` module follows). SetFit builds on it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from minift.core.model import BertModel


def mean_pooling(last_hidden_state: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Average of the hidden states of real tokens: (batch, seq, hidden) -> (batch, hidden).

    The denominator is clamped at 1e-9 as in sentence-transformers, so an all-padding row gives
    zeros rather than NaN.
    """
    weights = attention_mask.unsqueeze(-1).to(last_hidden_state.dtype)  # (batch, seq, 1)
    summed = (last_hidden_state * weights).sum(dim=1)
    return summed / weights.sum(dim=1).clamp(min=1e-9)


def embed_batch(model: BertModel, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor | None = None, normalize: bool = True) -> torch.Tensor:
    """Mean-pooled (and by default L2-normalised) embeddings of one tokenised batch;
    differentiable, as SetFit's contrastive training needs."""
    hidden = model(input_ids, attention_mask, token_type_ids).last_hidden_state
    pooled = mean_pooling(hidden, attention_mask)
    return F.normalize(pooled, p=2, dim=-1) if normalize else pooled


def embed_rows(model: BertModel, tokens, rows: torch.Tensor, normalize: bool = True) -> torch.Tensor:
    """`embed_batch` of the rows `rows` of `tokens` (every sentence tokenized once, padded to the
    longest), cut to the widest of those rows and moved to the model's device."""
    mask = tokens.attention_mask[rows]
    width = int(mask.sum(dim=1).max())  # cut the padding no row of this batch needs
    device = next(model.parameters()).device
    return embed_batch(model, tokens.input_ids[rows, :width].to(device), mask[:, :width].to(device),
                       tokens.token_type_ids[rows, :width].to(device), normalize=normalize)


@torch.no_grad()
def encode(model: BertModel, tokenizer, texts: Sequence[str], *, batch_size: int = 32,
           max_length: int = 256, normalize: bool = True) -> torch.Tensor:
    """Embed ``texts`` -> (len(texts), hidden) float tensor on the model's device.

    ``max_length`` 256 is all-MiniLM-L6-v2's ``max_seq_length`` in sentence-transformers.
    Texts are sorted by length so each batch pads little; the output keeps the input order.
    """
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]), reverse=True)
    out = [None] * len(texts)
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        enc = tokenizer([texts[i] for i in chunk], max_length=max_length, padding=True,
                        truncation=True)
        emb = embed_batch(model, enc.input_ids.to(device), enc.attention_mask.to(device),
                          enc.token_type_ids.to(device), normalize=normalize)
        for row, i in enumerate(chunk):
            out[i] = emb[row]
    model.train(was_training)
    if not out:
        return torch.empty(0, model.config.hidden_size, device=device)
    return torch.stack(out)
