"""Beam search with the key/value cache: keep the ``num_beams`` most likely partial outputs, not
just one, and return the best finished ones.

Greedy decoding commits to the most likely token at every step, and a good sentence whose first
word was only second-best is lost. Beam search (the decoder of Sutskever, Vinyals and Le 2014;
Wu et al. 2016, section 7) keeps k hypotheses ("beams") a source. At every step each beam
proposes every token of the vocabulary; a candidate's score is its beam's score plus the token's
log-probability, so a score is the log-probability of the whole hypothesis. Of the k * vocab
candidates the best 2k are looked at: those that end with EOS (or reach the length limit) are
finished hypotheses, the best k others are the next step's beams. Keeping 2k, not k, guarantees
k unfinished beams even when k candidates end at once. The cache follows the beams: a beam that
continues beam j from the last step must see beam j's keys and values (``select_beams``).

**The length penalty.** A sum of log-probabilities only falls as a sentence grows, so raw scores
favour short outputs. A finished hypothesis is ranked by ``score / length ** length_penalty``
(length: the generated tokens, EOS included; Wu et al. 2016 use a similar normaliser): 0 ranks
by the raw sum, 1 (the default) by the mean log-probability a token, above 1 favours longer.

**Early stopping** decides when to stop searching once k hypotheses are finished:

- ``True``: stop as soon as every source has k finished hypotheses.
- ``False`` (the default): stop when the best running beam, divided by the current length to
  the ``length_penalty``, can no longer beat the worst finished one (a heuristic: it is exact only
  while scores cannot rise, i.e. with ``length_penalty`` <= 0).
- ``"never"``: as False, but judged at the best length still possible (the length limit, where
  ``length_penalty`` > 0 favours length): the canonical, exact search.

These are transformers' definitions; the whole search is its ``generate(num_beams=k,
do_sample=False)`` step for step, on the same tensor layout, so the outputs are the same token
for token and the scores to float noise. One difference: rows shorter than
the longest returned one are padded with ``pad_token_id`` (transformers pads with the EOS id
when ``pad_token_id`` is 0, a quirk of its ``pad or eos``).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn

from minift.core.logits import (
    EARLY_STOPPING,
    ban_repeated_ngrams,
    check_at_least,
    check_max_new_tokens,
)
from minift.core.steps import Step, model_step

EXCLUDED = -1.0e9  # added to a candidate's score to rule it out, as transformers does


@dataclass
class BeamOutput:
    """``sequences`` (batch * num_return_sequences, given + generated), the best first for each
    source, beginning with what the model was given; ``sequences_scores`` (batch *
    num_return_sequences,): each one's summed log-probability over ``length ** length_penalty``
    (names as in transformers)."""

    sequences: torch.Tensor
    sequences_scores: torch.Tensor


def select_beams(cache: list, rows: torch.Tensor) -> None:
    """Reorder a cache (one ``LayerCache`` a block) in place: row i of every cached tensor
    becomes row ``rows[i]`` of the old one. (The source's cross-attention keys are the same for
    every beam of a source; taking them along is harmless.)"""
    for layer in cache:
        for field in fields(layer):
            tensor = getattr(layer, field.name)
            if tensor is not None:
                setattr(layer, field.name, tensor.index_select(0, rows))


def _take(tensor: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``tensor`` (batch, beams, ...) at beam ``index`` (batch, chosen): (batch, chosen, ...)."""
    index = index.view(*index.shape, *([1] * (tensor.dim() - 2)))
    return torch.take_along_dim(tensor, index, dim=1)


def check_beam_settings(num_beams: int, num_return_sequences: int, early_stopping,
                        no_repeat_ngram_size: int, max_new_tokens: int) -> None:
    """Each setting of the search in its range, or a ``ValueError`` naming it."""
    check_max_new_tokens(max_new_tokens)
    check_at_least("num_beams", num_beams, 1)
    check_at_least("num_return_sequences", num_return_sequences, 1)
    if not any(early_stopping is allowed for allowed in EARLY_STOPPING):
        raise ValueError(f"early_stopping must be True, False or 'never', got {early_stopping!r}")
    check_at_least("no_repeat_ngram_size", no_repeat_ngram_size, 0)


@torch.no_grad()
def beam_loop(step: Step, cache: list, prefix: torch.Tensor, *, num_beams: int,
              max_new_tokens: int, eos_token_id: int | None, pad_token_id: int,
              length_penalty: float = 1.0, early_stopping: bool | str = False,
              no_repeat_ngram_size: int = 0, num_return_sequences: int = 1) -> BeamOutput:
    """The search. ``prefix`` (batch, given) is what every hypothesis begins with; ``step``
    (``core/steps.py``) maps the newest tokens of the batch * num_beams beams, source by source,
    to next-token logits, and ``cache`` is its cache, reordered here as the beams move."""
    check_beam_settings(num_beams, num_return_sequences, early_stopping, no_repeat_ngram_size,
                        max_new_tokens)
    if num_return_sequences > num_beams:
        raise ValueError(f"num_return_sequences ({num_return_sequences}) must be <= num_beams "
                         f"({num_beams}): the search finishes only num_beams hypotheses")
    batch, given = prefix.shape
    k, device = num_beams, prefix.device
    running = prefix[:, None, :].expand(batch, k, given)  # (batch, k, written)
    # The k beams begin identical: only the first may propose, or the same token is taken k times.
    running_scores = torch.zeros(batch, k, device=device)
    running_scores[:, 1:] = EXCLUDED
    finished = torch.full((batch, k, given + max_new_tokens), pad_token_id, dtype=prefix.dtype,
                          device=device)
    finished[:, :, :given] = running
    finished_scores = torch.full((batch, k), EXCLUDED, device=device)
    finished_lengths = torch.zeros(batch, k, dtype=torch.long, device=device)
    is_finished = torch.zeros(batch, k, dtype=torch.bool, device=device)
    can_improve = torch.ones(batch, 1, dtype=torch.bool, device=device)  # per source
    # Of the 2k candidates only the best k may finish: the other k are spares (module docstring).
    first_k = torch.arange(2 * k, device=device) < k  # (2k,)
    new = running.flatten(0, 1)  # (batch * k, given): the first step reads the whole prefix

    for t in range(max_new_tokens):
        log_probs = F.log_softmax(step(new).float(), dim=-1)  # (batch * k, vocab)
        log_probs = ban_repeated_ngrams(running.flatten(0, 1), log_probs, no_repeat_ngram_size)
        vocab = log_probs.size(-1)
        totals = (log_probs.view(batch, k, vocab) + running_scores[:, :, None]).view(batch, -1)
        # 1. the best 2k candidates of a source: (batch, 2k), best first
        scores, flat = totals.topk(2 * k, dim=-1)
        parents, tokens = flat // vocab, flat % vocab
        candidates = torch.cat([_take(running, parents), tokens[:, :, None]], dim=2)
        ends = torch.full_like(tokens, t == max_new_tokens - 1, dtype=torch.bool)
        if eos_token_id is not None:
            ends |= tokens == eos_token_id
        # 2. the next beams: the best k candidates that did not end
        keep = (scores + ends.float() * EXCLUDED).topk(k, dim=-1).indices  # (batch, k)
        running = _take(candidates, keep)
        running_scores = _take(scores + ends.float() * EXCLUDED, keep)
        rows = (_take(parents, keep) + torch.arange(batch, device=device)[:, None] * k).flatten()
        # 3. the finished: merge those that just ended (among the first k) with the kept ones
        ranked = scores / (t + 1) ** length_penalty
        full = is_finished.all(dim=-1, keepdim=True) & (early_stopping is True)
        may_finish = ends & first_k & can_improve & ~full
        ranked = ranked.masked_fill(~may_finish, EXCLUDED * 3)  # below every kept slot
        padded = F.pad(candidates, (0, finished.size(2) - candidates.size(2)), value=pad_token_id)
        best = torch.cat([finished_scores, ranked], dim=1).topk(k, dim=-1).indices
        finished = _take(torch.cat([finished, padded], dim=1), best)
        finished_scores = _take(torch.cat([finished_scores, ranked], dim=1), best)
        new_lengths = torch.full_like(tokens, t + 1)
        finished_lengths = _take(torch.cat([finished_lengths, new_lengths], dim=1), best)
        is_finished = _take(torch.cat([is_finished, may_finish], dim=1), best)
        select_beams(cache, rows)  # each next beam continues its parent's keys and values
        # 4. stop when no source can improve, or (early_stopping=True) every source is full.
        # A source can improve while its best running beam, ranked at the hoped length, beats
        # its worst finished hypothesis; a source with an empty slot always can.
        hoped_length = max_new_tokens if early_stopping == "never" and length_penalty > 0 else t + 1
        best_hope = running_scores[:, :1] / hoped_length ** length_penalty  # (batch, 1)
        worst_kept = torch.where(is_finished, finished_scores.min(dim=-1, keepdim=True).values,
                                 EXCLUDED)
        can_improve &= (best_hope > worst_kept).any(dim=-1, keepdim=True)
        if not can_improve.any() or (early_stopping is True and is_finished.all()) or ends.all():
            break
        new = running[:, :, -1].flatten()[:, None]  # only the newest token: the rest is cached

    n = num_return_sequences
    length = given + int(finished_lengths[:, :n].max())
    return BeamOutput(sequences=finished[:, :n, :length].flatten(0, 1),
                      sequences_scores=finished_scores[:, :n].flatten())


def beam_generate(model: nn.Module, input_ids: torch.Tensor,
                  attention_mask: torch.Tensor | None = None, *, num_beams: int,
                  max_new_tokens: int, **settings) -> BeamOutput:
    """Beam search for an ``EncoderDecoder`` over a batch of sources (batch, source) with their
    1/0 mask; every hypothesis begins with ``model.decoder_start_token_id`` and ends at
    ``model.eos_token_id``. ``settings``: ``beam_loop``'s. Call ``model.eval()`` first."""
    return beam_continue(model, input_ids, attention_mask=attention_mask, num_beams=num_beams,
                         max_new_tokens=max_new_tokens, **settings)


@torch.no_grad()
def beam_continue(model: nn.Module, input_ids: torch.Tensor, *, num_beams: int,
                  max_new_tokens: int, eos_token_id: int | None = None,
                  pad_token_id: int | None = None, attention_mask: torch.Tensor | None = None,
                  **settings) -> BeamOutput:
    """Beam search continuing prompts (batch, prompt) with a ``CausalLM``; prompts of different
    lengths are padded on the left, with their 1/0 ``attention_mask`` (``core/steps.py``).
    ``pad_token_id`` defaults to the config's; ``settings`` as ``beam_generate``'s."""
    check_at_least("num_beams", num_beams, 1)
    step, cache, prefix, ends = model_step(model, input_ids, attention_mask, num_beams,
                                           eos_token_id, pad_token_id)
    return beam_loop(step, cache, prefix, num_beams=num_beams, max_new_tokens=max_new_tokens,
                     **ends, **settings)
