"""Masking for masked-language modelling: BERT's token masking, whole-word masking, SpanBERT spans.

Every function takes a batch of token ids and returns ``(masked_input_ids, labels)``: the ids the
model sees and, at the selected positions, the original ids it must predict (`IGNORE_INDEX`,
-100, everywhere else: the value the whole ecosystem's cross-entropy ignores). The input is never
modified.

The three strategies differ only in *what* is selected; what happens to a selected token is the
same "80/10/10" recipe of BERT (Devlin et al. 2019): 80% become ``[MASK]``, 10% a random id drawn
uniformly from the vocabulary, 10% stay as they are (the model cannot tell those from unmasked
tokens, so it must keep a good representation of every token). Whole-word and span masking make
that decision once per word or span, and every token of it follows.

Randomness is explicit: each function takes a ``torch.Generator`` (on the device of the input);
the same generator state gives the same masks. ``mlm`` draws its random numbers in exactly the
order of transformers' ``DataCollatorForLanguageModeling.torch_mask_tokens``, so with the same
generator the two agree bit for bit.

Shapes: ``input_ids``, ``special_tokens_mask`` and ``word_ids`` are all (batch, seq).
``special_tokens_mask`` is True at [CLS], [SEP], [PAD] and any other token that must never be
selected. ``word_ids`` gives each token the index of the word it belongs to (-1 for special and
padding tokens); a word is a run of consecutive tokens with the same id, so a tokenizer's
``encoding.word_ids()`` (with None as -1) works as is, also for sentence pairs.

Read in this order: the helpers (`special_tokens_mask_from`, `word_ids_from_tokens`), the shared
80/10/10 step, then `mlm`, `whole_word_mask` and `span_mask`.
"""

import math
from collections.abc import Iterable, Sequence

import torch

# The label of positions that carry no loss: cross-entropy's default ignore_index, -100 in the whole
# ecosystem (defined here too, so this file stands alone).
IGNORE_INDEX = -100

# --- Helpers: which tokens are special, which tokens form a word ----------------------------------


def special_tokens_mask_from(input_ids: torch.Tensor, special_ids: Iterable[int]) -> torch.Tensor:
    """Bool mask, True where ``input_ids`` holds one of ``special_ids`` ([CLS], [SEP], [PAD])."""
    special = torch.as_tensor(list(special_ids), dtype=input_ids.dtype, device=input_ids.device)
    return torch.isin(input_ids, special)


def word_ids_from_tokens(tokens: Sequence[Sequence[str]],
                         special_tokens_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Word ids (batch, seq) from WordPiece tokens: a token starting with ``##`` continues a word.

    ``tokens`` is a batch of token lists (rows may differ in length; the short ones are padded with
    -1). Every token gets a word id unless ``special_tokens_mask`` marks it, then it gets -1. For
    BERT tokenizers this is the grouping of the fast tokenizer's ``word_ids()``: words are split at
    whitespace and punctuation, and the pieces of one word are ``##`` continuations.
    """
    if isinstance(tokens, str) or (len(tokens) > 0 and isinstance(tokens[0], str)):
        raise ValueError("tokens: expected a batch (a list of token lists), got a single list")
    seq = max((len(row) for row in tokens), default=0)
    word_ids = torch.full((len(tokens), seq), -1, dtype=torch.long)
    for b, row in enumerate(tokens):
        word = -1
        for t, token in enumerate(row):
            if not isinstance(token, str):
                raise ValueError(f"tokens[{b}][{t}]: expected a str, got {type(token).__name__}")
            continues_word = len(token) > 2 and token.startswith("##") and word >= 0
            word += 0 if continues_word else 1
            word_ids[b, t] = word
    if special_tokens_mask is not None:
        if special_tokens_mask.shape != word_ids.shape:
            raise ValueError(f"special_tokens_mask: expected shape {tuple(word_ids.shape)} (the "
                             f"padded tokens), got {tuple(special_tokens_mask.shape)}")
        word_ids = word_ids.masked_fill(special_tokens_mask.cpu(), -1)
    return word_ids


def _words(word_ids: torch.Tensor, special_tokens_mask: torch.Tensor
           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Where the words are: ``(in_word, word_start, leader)``, each (batch, seq).

    ``in_word``: the token belongs to a word (word id >= 0 and not special). ``word_start``: it is
    the first token of its word. ``leader``: position of the first token of its word (for tokens
    outside words, a meaningless position that callers mask out).
    """
    ids = word_ids.masked_fill(special_tokens_mask, -1)
    in_word = ids >= 0
    previous = torch.nn.functional.pad(ids[:, :-1], (1, 0), value=-1)
    word_start = in_word & (ids != previous)
    positions = torch.arange(ids.shape[1], device=ids.device).expand_as(ids)
    # the last word start at or before each position is the start of that position's word
    leader = torch.where(word_start, positions, 0).cummax(dim=1).values
    return in_word, word_start, leader


# --- Checks shared by the three strategies --------------------------------------------------------


def _check_probability(name: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name}: expected a probability in [0, 1], got {value}")


def _check_inputs(input_ids: torch.Tensor, special_tokens_mask: torch.Tensor,
                  word_ids: torch.Tensor | None, *, mask_token_id: int, vocab_size: int,
                  mask_replace_prob: float, random_replace_prob: float) -> None:
    if input_ids.ndim != 2 or input_ids.dtype != torch.long:
        raise ValueError(f"input_ids: expected a (batch, seq) LongTensor, got {input_ids.dtype} "
                         f"of shape {tuple(input_ids.shape)}")
    named = [("special_tokens_mask", special_tokens_mask, torch.bool)]
    if word_ids is not None:
        named.append(("word_ids", word_ids, torch.long))
    for name, tensor, dtype in named:
        if tensor.shape != input_ids.shape:
            raise ValueError(f"{name}: expected the shape of input_ids "
                             f"{tuple(input_ids.shape)}, got {tuple(tensor.shape)}")
        if tensor.dtype != dtype:
            raise ValueError(f"{name}: expected dtype {dtype}, got {tensor.dtype}")
    if vocab_size < 1:
        raise ValueError(f"vocab_size: expected a positive int, got {vocab_size}")
    if not 0 <= mask_token_id < vocab_size:
        raise ValueError(f"mask_token_id: expected an id in [0, {vocab_size}), got {mask_token_id}")
    _check_probability("mask_replace_prob", mask_replace_prob)
    _check_probability("random_replace_prob", random_replace_prob)
    if mask_replace_prob + random_replace_prob > 1.0:
        raise ValueError("mask_replace_prob + random_replace_prob: expected at most 1, got "
                         f"{mask_replace_prob} + {random_replace_prob}")


# --- The 80/10/10 step: what happens to the selected tokens ---------------------------------------


def _replace(input_ids: torch.Tensor, selected: torch.Tensor, leader: torch.Tensor | None, *,
             mask_token_id: int, vocab_size: int, generator: torch.Generator,
             mask_replace_prob: float, random_replace_prob: float
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """Replace the ``selected`` tokens: [MASK], a random id, or unchanged; return (ids, labels).

    The draws are made for every position, in transformers' order (Bernoulli for [MASK], then
    Bernoulli for random among the rest, then the random ids). With ``leader`` (batch, seq), each
    token follows the decision drawn at its leader's position, so a word or a span shares one
    decision; with None every token decides for itself. Random ids are drawn per token.
    """
    shape, device = input_ids.shape, input_ids.device
    labels = torch.where(selected, input_ids, IGNORE_INDEX)
    masked_ids = input_ids.clone()

    def decide(probability: float) -> torch.Tensor:
        draw = torch.full(shape, probability, dtype=torch.float32, device=device)
        draw = torch.bernoulli(draw, generator=generator).bool()
        return draw if leader is None else draw.gather(1, leader)

    to_mask = decide(mask_replace_prob) & selected
    masked_ids[to_mask] = mask_token_id
    if mask_replace_prob == 1 or random_replace_prob == 0:  # nothing left to draw
        return masked_ids, labels

    # of the tokens not turned into [MASK], the share that becomes random: 0.1 / 0.2 = 0.5
    random_share = min(1.0, random_replace_prob / (1 - mask_replace_prob))
    to_random = decide(random_share) & selected & ~to_mask
    random_ids = torch.randint(vocab_size, shape, generator=generator, device=device)
    masked_ids[to_random] = random_ids[to_random]
    return masked_ids, labels


# --- BERT: each token on its own ------------------------------------------------------------------


def mlm(input_ids: torch.Tensor, special_tokens_mask: torch.Tensor, *, mask_token_id: int,
        vocab_size: int, generator: torch.Generator, mlm_probability: float = 0.15,
        mask_replace_prob: float = 0.8, random_replace_prob: float = 0.1
        ) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT's masking: each non-special token is selected with probability ``mlm_probability``.

    Selection is a Bernoulli draw per token (not an exact count), then 80/10/10 per token; the
    draws and the probabilities' names are those of transformers' collator (module docstring).
    """
    recipe = dict(mask_token_id=mask_token_id, vocab_size=vocab_size,
                  mask_replace_prob=mask_replace_prob, random_replace_prob=random_replace_prob)
    _check_inputs(input_ids, special_tokens_mask, None, **recipe)
    _check_probability("mlm_probability", mlm_probability)
    probability = torch.full(input_ids.shape, mlm_probability, dtype=torch.float32,
                             device=input_ids.device)
    probability = probability.masked_fill(special_tokens_mask, 0.0)
    selected = torch.bernoulli(probability, generator=generator).bool()
    return _replace(input_ids, selected, None, generator=generator, **recipe)


# --- Whole-word masking: a word is selected with all of its sub-words -----------------------------


def whole_word_mask(input_ids: torch.Tensor, special_tokens_mask: torch.Tensor,
                    word_ids: torch.Tensor, *, mask_token_id: int, vocab_size: int,
                    generator: torch.Generator, mlm_probability: float = 0.15,
                    mask_replace_prob: float = 0.8, random_replace_prob: float = 0.1
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Whole-word masking: each word is selected with probability ``mlm_probability``, whole.

    Selection is a Bernoulli draw per word (made at the word's first token), as transformers 5.x
    does it, so each token is selected with probability ``mlm_probability`` and the expected share
    of selected tokens is the same as in ``mlm``. (Google's original script instead picks an exact
    count per sequence; per-word Bernoulli keeps the function vectorised and matches the reference.)

    The 80/10/10 decision is made once per word, as in the original BERT release: all sub-words of
    a word become [MASK] together, or random ids together, or stay together. This differs from
    transformers 5.x, whose whole-word option turns every selected word into [MASK]
    (no random or kept words); ``mask_replace_prob=1.0, random_replace_prob=0.0`` reproduces it
    bit for bit with the same generator and the same words. Tokens with word id -1 are never
    selected.
    """
    recipe = dict(mask_token_id=mask_token_id, vocab_size=vocab_size,
                  mask_replace_prob=mask_replace_prob, random_replace_prob=random_replace_prob)
    _check_inputs(input_ids, special_tokens_mask, word_ids, **recipe)
    _check_probability("mlm_probability", mlm_probability)
    in_word, word_start, leader = _words(word_ids, special_tokens_mask)
    probability = torch.full(input_ids.shape, mlm_probability, dtype=torch.float32,
                             device=input_ids.device)
    probability = probability.masked_fill(~word_start, 0.0)  # one draw per word, at its start
    chosen = torch.bernoulli(probability, generator=generator).bool()
    selected = chosen.gather(1, leader) & in_word  # every sub-word follows its word's first token
    return _replace(input_ids, selected, leader, generator=generator, **recipe)


# --- SpanBERT: spans of whole words with geometric lengths, up to a budget ------------------------


def span_length_probs(geometric_p: float = 0.2, max_span: int = 10) -> torch.Tensor:
    """P(span = k words) for k = 1..max_span: Geometric(p) clipped to max_span and renormalised.

    With SpanBERT's p = 0.2 and max_span = 10 the mean span is about 3.8 words. float64, CPU.
    """
    if not 0.0 < geometric_p <= 1.0:
        raise ValueError(f"geometric_p: expected a probability in (0, 1], got {geometric_p}")
    if max_span < 1:
        raise ValueError(f"max_span: expected at least 1 word, got {max_span}")
    k = torch.arange(1, max_span + 1, dtype=torch.float64)
    probs = geometric_p * (1 - geometric_p) ** (k - 1)
    return probs / probs.sum()


def span_budget(num_tokens: int, budget: float) -> int:
    """Tokens to select in a sequence of ``num_tokens`` maskable tokens: ceil(budget * num_tokens).

    ceil as in SpanBERT's code, so any sequence with a maskable token gets a target. Rounded to
    9 decimals first so that float noise (0.14 * 50 = 7.000000000000001) does not add a token.
    """
    return math.ceil(round(budget * num_tokens, 9))


def _sample_spans(word_sizes: list[int], touching: list[bool], target: int, probs: torch.Tensor,
                  generator: torch.Generator) -> list[tuple[int, int]]:
    """Spans ``(first_word, num_words)`` for one sequence, until ``target`` tokens are selected.

    ``word_sizes[i]``: tokens in word i; ``touching[i]``: word i+1 starts right where word i ends
    (no special token between them). Each step draws a length L from ``probs`` clipped to the
    longest room available, then a first word uniformly among the words where L free words fit.
    A word is free if it is unselected and touches no selected word, so spans never touch.
    """
    num_words = len(word_sizes)
    selected = [False] * num_words
    spans, count = [], 0
    while count < target:
        free = [not selected[i] and not (i > 0 and touching[i - 1] and selected[i - 1])
                and not (i + 1 < num_words and touching[i] and selected[i + 1])
                for i in range(num_words)]
        room = [0] * (num_words + 1)  # room[i]: free touching words from word i on
        for i in reversed(range(num_words)):
            if free[i]:
                room[i] = 1 + (room[i + 1] if touching[i] else 0)
        longest = min(max(room), len(probs))
        if longest == 0:  # no room for another span: stop short of the target
            break
        clipped = probs[:longest].to(generator.device)
        length = 1 + int(torch.multinomial(clipped, 1, generator=generator))
        starts = [i for i in range(num_words) if room[i] >= length]
        pick = torch.randint(len(starts), (1,), generator=generator, device=generator.device)
        first = starts[int(pick)]
        for i in range(first, first + length):
            selected[i] = True
            count += word_sizes[i]
        spans.append((first, length))
    return spans


def span_mask(input_ids: torch.Tensor, special_tokens_mask: torch.Tensor, word_ids: torch.Tensor,
              *, mask_token_id: int, vocab_size: int, generator: torch.Generator,
              budget: float = 0.15, geometric_p: float = 0.2, max_span: int = 10,
              mask_replace_prob: float = 0.8, random_replace_prob: float = 0.1
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """SpanBERT masking (Joshi et al. 2020): spans of whole words until a token budget is met.

    Per sequence, with n maskable tokens (non-special tokens that belong to a word):
    - target = ``span_budget(n, budget)`` = ceil(budget * n) tokens;
    - while fewer than target tokens are selected, add a span: its length L in words is drawn from
      ``span_length_probs(geometric_p, max_span)``, clipped to the longest run of free words and
      renormalised; it starts at a word start chosen uniformly among those where L free words fit;
    - spans are whole words and are never cut, so the last one may overshoot: the selected count
      ends in [target, target + tokens of the last span - 1], and the realised rate is a little
      above ``budget`` (by about half a span per sequence; SpanBERT's code instead cuts the last
      span mid-word to hit the target). On short sentences that half span is large next to the
      target, so pack sentences into full-length sequences, as SpanBERT does (512 tokens). If no
      free word is left first, selection stops short.
    - spans never touch (a free word is unselected and has no selected neighbour): each span keeps
      unmasked context at both ends, as SpanBERT's span-boundary objective needs, and one span is
      one decision. (SpanBERT's code merges touching spans instead; the gap also means at most
      about half of the tokens can be selected, far above the usual 15%.)
    - the 80/10/10 decision is made once per span; random ids are drawn per token.

    The spans are sampled by a loop over sequences (the selection is sequential by nature); the
    80/10/10 step is vectorised.
    """
    recipe = dict(mask_token_id=mask_token_id, vocab_size=vocab_size,
                  mask_replace_prob=mask_replace_prob, random_replace_prob=random_replace_prob)
    _check_inputs(input_ids, special_tokens_mask, word_ids, **recipe)
    _check_probability("budget", budget)
    probs = span_length_probs(geometric_p, max_span)
    in_word, word_start, _ = _words(word_ids, special_tokens_mask)

    selected = torch.zeros_like(in_word)
    leader = torch.arange(input_ids.shape[1], device=input_ids.device).repeat(len(input_ids), 1)
    for b in range(len(input_ids)):
        first_tokens = word_start[b].nonzero().flatten().tolist()
        word_sizes = torch.bincount(word_start[b].cumsum(0)[in_word[b]] - 1,
                                    minlength=len(first_tokens)).tolist()
        touching = [first_tokens[i] + word_sizes[i] == first_tokens[i + 1]
                    for i in range(len(first_tokens) - 1)] + [False]
        target = span_budget(sum(word_sizes), budget)
        for first, length in _sample_spans(word_sizes, touching, target, probs, generator):
            last = first + length - 1
            start, end = first_tokens[first], first_tokens[last] + word_sizes[last]
            selected[b, start:end] = True
            leader[b, start:end] = start  # the span decides at its first token
    return _replace(input_ids, selected, leader, generator=generator, **recipe)
