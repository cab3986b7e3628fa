"""The next-token scores, reshaped before a token is chosen: the no-repeat n-gram ban of every
decoding strategy, and the three filters of sampling (temperature, top-k, top-p).

Each is a pure function of a (rows, vocab) tensor of scores (and, for the ban, the tokens written
so far), the behaviour of transformers' ``NoRepeatNGramLogitsProcessor``,
``TemperatureLogitsWarper``, ``TopKLogitsWarper`` and ``TopPLogitsWarper``, in that order
(tests/test_logits.py holds them equal on random scores). A removed token gets the score -inf,
so that a softmax gives it probability 0 and no search picks it.

The checks of the decoding settings sit here too, beside the functions that use them: each
``ValueError`` names the argument, as the caller wrote it.
"""

from __future__ import annotations

import torch

EARLY_STOPPING = (True, False, "never")


def check_at_least(name: str, value: int, least: int) -> None:
    """Refuse, by ``name``, an integer setting below ``least`` (or not an integer)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise ValueError(f"{name} must be an integer >= {least}, got {value!r}")


def check_max_new_tokens(max_new_tokens: int) -> None:
    """A generation length below 1 is refused (it would return the input as if generated)."""
    check_at_least("max_new_tokens", max_new_tokens, 1)


def check_sampling(temperature: float, top_k: int | None, top_p: float) -> None:
    """temperature > 0 (0 would divide by zero: greedy is ``do_sample=False``), top_k >= 1 or
    None (no top-k), top_p in (0, 1] (1: no top-p)."""
    if isinstance(temperature, bool) or not isinstance(temperature, int | float) \
            or not temperature > 0:
        raise ValueError(f"temperature must be a number > 0, got {temperature!r}")
    if top_k is not None:
        check_at_least("top_k", top_k, 1)
    if isinstance(top_p, bool) or not isinstance(top_p, int | float) or not 0 < top_p <= 1:
        raise ValueError(f"top_p must be a number in (0, 1], got {top_p!r}")


# --- The no-repeat n-gram ban -------------------------------------------------------------------


def ban_repeated_ngrams(tokens: torch.Tensor, scores: torch.Tensor, size: int) -> torch.Tensor:
    """Forbid every token that would complete an n-gram (n = ``size``) already in the row.

    tokens: (rows, written), everything the row holds so far (the prompt, or the start token,
    included, as transformers counts them); scores: (rows, vocab). The last ``size - 1`` tokens
    are the n-gram's beginning; wherever the same ``size - 1`` tokens occurred earlier, the
    token that followed them then is banned now. ``size`` 0 bans nothing.
    """
    written = tokens.size(1)
    if size == 0 or written < size:
        return scores
    suffix = tokens[:, written - size + 1:]  # (rows, size - 1): the n-gram begun now
    earlier = tokens.unfold(1, size, 1)  # (rows, written - size + 1, size): every n-gram so far
    repeats = (earlier[:, :, :-1] == suffix[:, None, :]).all(dim=-1)  # (rows, n-grams)
    banned = torch.zeros(scores.shape, dtype=torch.bool, device=scores.device)
    for row, ngram in repeats.nonzero().tolist():
        token = earlier[row, ngram, -1]
        if token < scores.size(1):
            banned[row, token] = True
    return scores.masked_fill(banned, float("-inf"))


# --- The filters of sampling --------------------------------------------------------------------


def apply_temperature(scores: torch.Tensor, temperature: float) -> torch.Tensor:
    """Divide the logits by ``temperature``: below 1 the distribution sharpens towards greedy,
    above 1 it flattens towards uniform (Ackley, Hinton and Sejnowski 1985; Holtzman et al.
    2020, section 3.1)."""
    return scores if temperature == 1.0 else scores / temperature


def keep_top_k(scores: torch.Tensor, k: int | None, keep_at_least: int = 1) -> torch.Tensor:
    """Keep the ``k`` highest scores of each row (Fan, Lewis and Dauphin 2018), and any tie
    with the k-th; the rest become -inf. ``k`` None keeps all; ``keep_at_least`` raises k (beam
    sampling needs two tokens, one of them maybe the end)."""
    if k is None:
        return scores
    k = min(max(k, keep_at_least), scores.size(-1))
    kth_best = scores.topk(k, dim=-1).values[..., -1:]  # (rows, 1)
    return scores.masked_fill(scores < kth_best, float("-inf"))


def keep_top_p(scores: torch.Tensor, p: float, keep_at_least: int = 1) -> torch.Tensor:
    """Nucleus filtering (Holtzman et al. 2020): keep the smallest set of most likely tokens
    whose probabilities sum to at least ``p``; the rest become -inf.

    Computed from the unlikely end, as transformers does: sort ascending, and drop every token
    whose cumulative probability (itself and everything less likely) is at most 1 - p. The
    ``keep_at_least`` most likely tokens always stay. ``p`` 1 keeps all.
    """
    if p >= 1.0:
        return scores
    ascending, order = scores.sort(dim=-1)
    cumulative = ascending.softmax(dim=-1).cumsum(dim=-1)  # (rows, vocab), up to the token
    drop_sorted = cumulative <= 1 - p
    drop_sorted[..., max(0, scores.size(-1) - keep_at_least):] = False  # the likeliest stay
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)  # back to vocab order
    return scores.masked_fill(drop, float("-inf"))


def sampling_filter(scores: torch.Tensor, *, temperature: float = 1.0, top_k: int | None = None,
                    top_p: float = 1.0) -> torch.Tensor:
    """Temperature, then top-k, then top-p: the order of transformers' ``generate``. Sample
    from ``softmax(sampling_filter(logits))``."""
    return keep_top_p(keep_top_k(apply_temperature(scores, temperature), top_k), top_p)
