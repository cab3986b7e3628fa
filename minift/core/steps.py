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


def causal_lm_step(model: nn.Module) -> tuple[Step, list]:
    """A ``CausalLM``'s step, with its cache: feed the prompts first (rows, prompt)."""
    cache = model.new_cache()

    def step(new: torch.Tensor) -> torch.Tensor:
        return model(new, cache=cache).logits[:, -1]

    return step, cache
