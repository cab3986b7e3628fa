"""Greedy decoding with the key/value cache: write a sequence one token at a time, each time the
most likely next token, feeding only the newest token back in.

Reading order: ``greedy_loop`` is the loop itself, for any model that maps the newest tokens to
next-token logits while remembering the earlier ones (its cache); ``greedy_generate`` runs it
for an ``EncoderDecoder`` (the source read once, the target begun with
``decoder_start_token_id``), ``greedy_continue`` for a ``CausalLM`` (a prompt continued).

The conventions are transformers' ``generate(num_beams=1, do_sample=False, max_new_tokens=N)``,
so the outputs are the same token for token (tests/test_generate.py): the returned sequences
start with what the model was given (the start token, or the prompt); a row that has written
``eos_token_id`` is finished and is padded with ``pad_token_id`` from then on while the others
go on; decoding stops when every row is finished or after ``max_new_tokens`` new tokens.

Why the cache matters: without it, step t runs the decoder over all t tokens again (quadratic
work in the output length); with it, step t projects one token and attends over t cached keys.
The cache is exactly the full forward (tests/test_decoder.py holds the two equal).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from minift.core.decoder import CausalLM, EncoderDecoder


def check_max_new_tokens(max_new_tokens: int) -> None:
    """A generation length below 1 is refused (it would return the input as if generated)."""
    integer = isinstance(max_new_tokens, int) and not isinstance(max_new_tokens, bool)
    if not integer or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be an integer >= 1, got {max_new_tokens!r}")


@torch.no_grad()
def greedy_loop(step: Callable[[torch.Tensor], torch.Tensor], prefix: torch.Tensor, *,
                max_new_tokens: int, eos_token_id: int | None,
                pad_token_id: int) -> torch.Tensor:
    """The greedy loop. ``step(new_tokens)`` (batch, new) returns the logits of the next token,
    (batch, vocab), keeping its own cache of what it was fed before; ``prefix`` (batch, given) is
    fed first. Returns (batch, given + generated), generated <= ``max_new_tokens``."""
    check_max_new_tokens(max_new_tokens)
    tokens, new = prefix, prefix
    finished = torch.zeros(prefix.size(0), dtype=torch.bool, device=prefix.device)
    for _ in range(max_new_tokens):
        next_token = step(new).argmax(dim=-1)  # (batch,): ties go to the lowest id, as torch's
        next_token = next_token.masked_fill(finished, pad_token_id)  # finished rows: padding
        tokens = torch.cat([tokens, next_token[:, None]], dim=1)
        if eos_token_id is not None:
            finished |= next_token == eos_token_id
        if finished.all():
            break
        new = next_token[:, None]  # only the newest token: the rest is in the cache
    return tokens


@torch.no_grad()
def greedy_generate(model: EncoderDecoder, input_ids: torch.Tensor,
                    attention_mask: torch.Tensor | None = None, *,
                    max_new_tokens: int) -> torch.Tensor:
    """Greedy targets for a batch of sources (batch, source) with their 1/0 mask: (batch,
    1 + generated), each row starting with ``model.decoder_start_token_id`` and stopping at
    ``model.eos_token_id``. The source is encoded once; the model is used as it is (call
    ``model.eval()`` first to switch dropout off, as transformers' loaders do)."""
    check_max_new_tokens(max_new_tokens)
    memory = model.encode(input_ids, attention_mask)  # (batch, source, hidden), read once
    cache = model.decoder.new_cache()

    def step(new: torch.Tensor) -> torch.Tensor:
        return model.decoder(new, memory=memory, memory_mask=attention_mask,
                             cache=cache).logits[:, -1]

    start = torch.full((input_ids.size(0), 1), model.decoder_start_token_id,
                       dtype=input_ids.dtype, device=input_ids.device)
    return greedy_loop(step, start, max_new_tokens=max_new_tokens,
                       eos_token_id=model.eos_token_id, pad_token_id=model.pad_token_id)


@torch.no_grad()
def greedy_continue(model: CausalLM, input_ids: torch.Tensor, *, max_new_tokens: int,
                    eos_token_id: int | None = None,
                    pad_token_id: int | None = None) -> torch.Tensor:
    """Greedy continuation of prompts (batch, prompt) of one length, without padding: (batch,
    prompt + generated). ``pad_token_id`` defaults to the config's."""
    cache = model.new_cache()

    def step(new: torch.Tensor) -> torch.Tensor:
        return model(new, cache=cache).logits[:, -1]

    pad = model.config.pad_token_id if pad_token_id is None else pad_token_id
    return greedy_loop(step, input_ids, max_new_tokens=max_new_tokens, eos_token_id=eos_token_id,
                       pad_token_id=pad)
