"""Decoding one token at a time with the key/value cache, greedy or sampled, and ``generate``,
the front door to every way of decoding (greedy, sampling, and beam search in ``core/beam.py``).

``token_loop`` runs a step (``core/steps.py``) with a rule that picks the next token:
``greedy_loop`` the most likely, ``sample_loop`` a draw from the filtered softmax
(``core/logits.py``) from a ``torch.Generator``, so the same seed writes the same text.

The conventions are transformers' ``generate(num_beams=1, do_sample=False or True, ...)``, so
the outputs are the same token for token (sampling too: a generator seeded s draws what torch's
global one draws after ``manual_seed(s)``): the returned sequences start with what the model was
given (the start token, or the prompt); a row that has written ``eos_token_id`` is finished and
is padded with ``pad_token_id`` from then on while the others go on; decoding stops when every
row is finished or after ``max_new_tokens`` new tokens.

Why the cache matters: without it, step t runs the decoder over all t tokens again (quadratic
work in the output length); with it, step t projects one token and attends over t cached keys.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from minift.core.beam import beam_loop, check_beam_settings
from minift.core.logits import (
    ban_repeated_ngrams,
    check_max_new_tokens,
    check_sampling,
    sampling_filter,
)
from minift.core.steps import Step, model_step

__all__ = ["check_max_new_tokens", "generate", "greedy_continue", "greedy_generate",
           "greedy_loop", "sample_loop", "token_loop"]

# choose(tokens written so far (batch, written), next-token logits (batch, vocab)) -> (batch,)
Choose = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@torch.no_grad()
def token_loop(step: Step, prefix: torch.Tensor, choose: Choose, *, max_new_tokens: int,
               eos_token_id: int | None, pad_token_id: int) -> torch.Tensor:
    """The loop: ``prefix`` (batch, given) is fed to ``step`` first; ``choose`` picks each row's
    next token. Returns (batch, given + generated), generated <= ``max_new_tokens``."""
    check_max_new_tokens(max_new_tokens)
    tokens, new = prefix, prefix
    finished = torch.zeros(prefix.size(0), dtype=torch.bool, device=prefix.device)
    for _ in range(max_new_tokens):
        next_token = choose(tokens, step(new).float())  # (batch,)
        next_token = next_token.masked_fill(finished, pad_token_id)  # finished rows: padding
        tokens = torch.cat([tokens, next_token[:, None]], dim=1)
        if eos_token_id is not None:
            finished |= next_token == eos_token_id
        if finished.all():
            break
        new = next_token[:, None]  # only the newest token: the rest is in the cache
    return tokens


def greedy_loop(step: Step, prefix: torch.Tensor, *, max_new_tokens: int,
                eos_token_id: int | None, pad_token_id: int,
                no_repeat_ngram_size: int = 0) -> torch.Tensor:
    """Greedy decoding: each row's most likely next token (ties go to the lowest id, as
    torch's ``argmax``), after the no-repeat n-gram ban. Arguments as ``token_loop``'s."""
    def choose(tokens: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        return ban_repeated_ngrams(tokens, logits, no_repeat_ngram_size).argmax(dim=-1)

    return token_loop(step, prefix, choose, max_new_tokens=max_new_tokens,
                      eos_token_id=eos_token_id, pad_token_id=pad_token_id)


def sample_loop(step: Step, prefix: torch.Tensor, *, generator: torch.Generator | None,
                max_new_tokens: int, eos_token_id: int | None, pad_token_id: int,
                temperature: float = 1.0, top_k: int | None = None, top_p: float = 1.0,
                no_repeat_ngram_size: int = 0) -> torch.Tensor:
    """Sampling: each row's next token drawn from ``softmax`` of its logits after the ban and
    the filters (``core/logits.py``), one ``torch.multinomial`` draw a step from ``generator``
    (None: torch's global generator, as transformers draws). Arguments as ``token_loop``'s."""
    check_sampling(temperature, top_k, top_p)

    def choose(tokens: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        scores = ban_repeated_ngrams(tokens, logits, no_repeat_ngram_size)
        scores = sampling_filter(scores, temperature=temperature, top_k=top_k, top_p=top_p)
        return torch.multinomial(scores.softmax(dim=-1), 1, generator=generator)[:, 0]

    return token_loop(step, prefix, choose, max_new_tokens=max_new_tokens,
                      eos_token_id=eos_token_id, pad_token_id=pad_token_id)


def resolve_length(max_new_tokens: int | None, max_length: int | None, given: int) -> int:
    """``max_new_tokens``, or ``max_length`` (given + generated, transformers' older limit)
    less the ``given`` tokens; exactly one of the two."""
    if (max_new_tokens is None) == (max_length is None):
        raise ValueError("give exactly one of max_new_tokens and max_length, got "
                         f"max_new_tokens={max_new_tokens!r}, max_length={max_length!r}")
    if max_length is not None:  # anything but an integer is reported as it was given
        max_new_tokens = max_length - given if isinstance(max_length, int) else max_length
    check_max_new_tokens(max_new_tokens)
    return max_new_tokens


@torch.no_grad()
def generate(model: nn.Module, input_ids: torch.Tensor,
             attention_mask: torch.Tensor | None = None, *, max_new_tokens: int | None = None,
             max_length: int | None = None, num_beams: int = 1, do_sample: bool = False,
             temperature: float = 1.0, top_k: int | None = None, top_p: float = 1.0,
             generator: torch.Generator | None = None, length_penalty: float = 1.0,
             early_stopping: bool | str = False, no_repeat_ngram_size: int = 0,
             num_return_sequences: int = 1, eos_token_id: int | None = None,
             pad_token_id: int | None = None) -> torch.Tensor:
    """Decode with an ``EncoderDecoder`` (sources (batch, source) and their mask) or a
    ``CausalLM`` (prompts (batch, prompt), padded on the left with their mask), as transformers'
    ``generate`` with the same arguments: greedy (``num_beams=1, do_sample=False``), sampling
    (``do_sample=True``) or beam search (``num_beams > 1``; ``core/beam.py``).

    Returns (batch * num_return_sequences, given + generated), a row's returns side by side.
    ``eos_token_id`` and ``pad_token_id`` default to the model's (an ``EncoderDecoder``'s own, a
    ``CausalLM``'s config pad and no EOS). Unlike transformers, sampling filters nothing unless
    asked (its ``top_k`` defaults to 50) and draws from ``generator``.
    """
    given = 1 if hasattr(model, "encode") else input_ids.size(1)  # the start token, or the prompt
    max_new_tokens = resolve_length(max_new_tokens, max_length, given)
    check_beam_settings(num_beams, num_return_sequences, early_stopping, no_repeat_ngram_size,
                        max_new_tokens)
    check_sampling(temperature, top_k, top_p)
    if do_sample and num_beams > 1:
        raise ValueError(f"do_sample=True with num_beams={num_beams}: beam sampling is not "
                         "implemented; sample with num_beams=1 or search with do_sample=False")
    if num_beams == 1 and not do_sample and num_return_sequences > 1:
        raise ValueError(f"num_return_sequences={num_return_sequences} with greedy decoding "
                         "would return the same sequence again; use beams or sampling")
    copies = num_beams if num_beams > 1 else num_return_sequences
    step, cache, prefix, ends = model_step(model, input_ids, attention_mask, copies,
                                           eos_token_id, pad_token_id)
    lengths = dict(max_new_tokens=max_new_tokens, **ends)
    if num_beams > 1:
        return beam_loop(step, cache, prefix, num_beams=num_beams, length_penalty=length_penalty,
                         early_stopping=early_stopping, no_repeat_ngram_size=no_repeat_ngram_size,
                         num_return_sequences=num_return_sequences, **lengths).sequences
    prefix = prefix.repeat_interleave(copies, dim=0)  # sampling: the returns of a row, side by side
    if do_sample:
        return sample_loop(step, prefix, generator=generator, temperature=temperature,
                           top_k=top_k, top_p=top_p, no_repeat_ngram_size=no_repeat_ngram_size,
                           **lengths)
    return greedy_loop(step, prefix, no_repeat_ngram_size=no_repeat_ngram_size, **lengths)


def greedy_generate(model: nn.Module, input_ids: torch.Tensor,
                    attention_mask: torch.Tensor | None = None, *,
                    max_new_tokens: int) -> torch.Tensor:
    """``generate``'s greedy targets of an ``EncoderDecoder`` for sources (batch, source) with
    their 1/0 mask: (batch, 1 + generated). The model is used as it is (call ``model.eval()``
    first to switch dropout off, as transformers' loaders do)."""
    check_max_new_tokens(max_new_tokens)
    return generate(model, input_ids, attention_mask, max_new_tokens=max_new_tokens)


def greedy_continue(model: nn.Module, input_ids: torch.Tensor, *, max_new_tokens: int,
                    eos_token_id: int | None = None, pad_token_id: int | None = None,
                    attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """``generate``'s greedy continuation by a ``CausalLM`` of prompts (batch, prompt), padded on
    the left with their 1/0 ``attention_mask``: (batch, prompt + generated)."""
    return generate(model, input_ids, attention_mask, max_new_tokens=max_new_tokens,
                    eos_token_id=eos_token_id, pad_token_id=pad_token_id)
