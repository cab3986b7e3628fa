"""A model seen as a next-token function: what every decoding loop (greedy, sampling, beam
search) calls once per generated token.

A step takes the newest tokens, (rows, new), and returns the logits of the token after them,
(rows, vocab). It keeps its own key/value cache (``core/decoder.py``), so the first call feeds
the whole beginning (the start token, or the prompt) and every later call one token a row.

``copies`` repeats every row of the batch that many times, side by side (row i becomes rows
i*copies .. i*copies + copies - 1): beam search runs ``num_beams`` hypotheses a source, and
transformers lays its beams out the same way. The source is encoded once and its output repeated,
as transformers' ``generate`` expands the encoder output.

The models are an ``EncoderDecoder`` or a ``CausalLM`` of ``core/decoder.py``, used through their
methods only (``encode``, ``new_cache``, a forward with a cache), so the decoding files copy out
without the model's.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

Step = Callable[[torch.Tensor], torch.Tensor]


def encoder_decoder_step(model: nn.Module, input_ids: torch.Tensor,
                         attention_mask: torch.Tensor | None = None,
                         copies: int = 1) -> tuple[Step, list, torch.Tensor]:
    """An ``EncoderDecoder``'s step over a batch of sources (batch, source) with their 1/0 mask:
    returns (step, its cache, the start tokens (batch, 1) that begin every row)."""
    memory = model.encode(input_ids, attention_mask)  # (batch, source, hidden), read once
    memory = memory.repeat_interleave(copies, dim=0)  # (batch * copies, source, hidden)
    if attention_mask is not None:
        attention_mask = attention_mask.repeat_interleave(copies, dim=0)
    cache = model.decoder.new_cache()

    def step(new: torch.Tensor) -> torch.Tensor:
        return model.decoder(new, memory=memory, memory_mask=attention_mask,
                             cache=cache).logits[:, -1]

    start = torch.full((input_ids.size(0), 1), model.decoder_start_token_id,
                       dtype=input_ids.dtype, device=input_ids.device)
    return step, cache, start


def check_left_padded(attention_mask: torch.Tensor) -> None:
    """Prompts of different lengths must be padded on the left (0s, then 1s, at least one 1):
    the next token is read at the last position, which must be real."""
    mask = attention_mask.to(torch.long)
    if not ((mask.diff(dim=-1) >= 0).all() and mask[:, -1].all() and (mask <= 1).all()):
        raise ValueError("attention_mask: a CausalLM's prompts must be padded on the left "
                         "(0s, then 1s, ending with a real token in every row)")


def causal_lm_step(model: nn.Module, attention_mask: torch.Tensor | None = None,
                   copies: int = 1) -> tuple[Step, list]:
    """A ``CausalLM``'s step, with its cache: feed the prompts first (rows, prompt).

    Prompts of different lengths are padded on the left with their 1/0 ``attention_mask``
    (batch, prompt), repeated ``copies`` times. Then, as in transformers' ``generate``, a token's
    position counts the real tokens before it (padding sits at position 0, masked), and every
    generated token is real, whatever the row has written: the mask grows by a column of 1s a
    step and each position by 1. (Rows repeated for beams share their mask, so beam search need
    not reorder it.)
    """
    cache = model.new_cache()
    if attention_mask is None:
        def step(new: torch.Tensor) -> torch.Tensor:
            return model(new, cache=cache).logits[:, -1]

        return step, cache
    check_left_padded(attention_mask)
    mask = attention_mask.repeat_interleave(copies, dim=0)  # (rows, prompt)
    positions = (mask.long().cumsum(dim=-1) - 1).clamp(min=0)  # real tokens before, padding 0

    def padded_step(new: torch.Tensor) -> torch.Tensor:
        nonlocal mask, positions
        if cache[0].length > 0:  # past the prompt: new real tokens, one position further each
            mask = F.pad(mask, (0, new.size(1)), value=1)
            positions = positions[:, -1:] + torch.arange(1, new.size(1) + 1, device=new.device)
        return model(new, mask, cache=cache, position_ids=positions).logits[:, -1]

    return padded_step, cache


def model_step(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
               copies: int, eos_token_id: int | None = None, pad_token_id: int | None = None
               ) -> tuple[Step, list, torch.Tensor, dict]:
    """Either model as a step over ``copies`` rows a source: (step, its cache, the prefix every
    row begins with, the ``eos_token_id`` and ``pad_token_id`` to decode with)."""
    if hasattr(model, "encode"):
        step, cache, prefix = encoder_decoder_step(model, input_ids, attention_mask, copies)
        eos = model.eos_token_id if eos_token_id is None else eos_token_id
        pad = model.pad_token_id if pad_token_id is None else pad_token_id
    else:
        (step, cache), prefix = causal_lm_step(model, attention_mask, copies), input_ids
        eos, pad = eos_token_id, model.config.pad_token_id if pad_token_id is None else pad_token_id
    return step, cache, prefix, dict(eos_token_id=eos, pad_token_id=pad)
