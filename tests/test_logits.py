"""The reshaping of next-token scores (core/logits.py) against transformers' processors on random
inputs: the no-repeat n-gram ban against ``NoRepeatNGramLogitsProcessor``, and temperature, top-k,
top-p against ``TemperatureLogitsWarper``, ``TopKLogitsWarper``, ``TopPLogitsWarper``, alone and
chained. Exact equality (tolerance 0): the same scores kept, the same ones set to -inf, and the
kept values the same floats. Scores are drawn on a coarse grid half the time, so that ties (the
k-th best shared by several tokens; equal probabilities at the nucleus edge) are exercised.
"""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers.generation.logits_process import (
    NoRepeatNGramLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from minift.core.logits import (
    apply_temperature,
    ban_repeated_ngrams,
    check_at_least,
    check_max_new_tokens,
    check_sampling,
    keep_top_k,
    keep_top_p,
    sampling_filter,
)

pytestmark = pytest.mark.usefixtures("one_thread")


@st.composite
def random_scores(draw):
    shape = (draw(st.integers(1, 4)), draw(st.integers(2, 20)))
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31)))
    scores = torch.randn(shape, generator=gen) * draw(st.sampled_from([0.5, 3.0]))
    if draw(st.booleans()):
        scores = scores.round()  # a coarse grid: ties
    return scores


@settings(deadline=None, max_examples=25)
@given(scores=random_scores(), written=st.integers(1, 12), size=st.integers(1, 4),
       few=st.integers(2, 4), seed=st.integers(0, 2**31))
def test_the_ngram_ban_is_transformers(scores, written, size, few, seed):
    """Tokens from a few ids only, so n-grams repeat; some ids beyond the scores' vocabulary
    (transformers ignores them: they cannot be generated)."""
    gen = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, min(few, scores.size(1)) + 1, (scores.size(0), written),
                           generator=gen)
    want = NoRepeatNGramLogitsProcessor(size)(tokens, scores.clone())
    assert torch.equal(ban_repeated_ngrams(tokens, scores, size), want)


def test_the_ngram_ban_bans_what_would_repeat():
    """By hand: after 1 2 3 1 the bigram (1, 2) exists, so 2 is banned; with trigrams, (3, 1)
    begins only at the end, so nothing is."""
    tokens = torch.tensor([[1, 2, 3, 1]])
    scores = torch.zeros(1, 5)
    assert torch.isinf(ban_repeated_ngrams(tokens, scores, 2)).nonzero().tolist() == [[0, 2]]
    assert not torch.isinf(ban_repeated_ngrams(tokens, scores, 3)).any()
    assert torch.equal(ban_repeated_ngrams(tokens, scores, 0), scores)


@settings(deadline=None, max_examples=25)
@given(scores=random_scores(), temperature=st.floats(0.05, 5.0))
def test_temperature_is_transformers(scores, temperature):
    want = TemperatureLogitsWarper(temperature)(None, scores.clone())
    assert torch.equal(apply_temperature(scores, temperature), want)


@settings(deadline=None, max_examples=25)
@given(scores=random_scores(), k=st.integers(1, 25), keep=st.integers(1, 3))
def test_top_k_is_transformers(scores, k, keep):
    want = TopKLogitsWarper(k, min_tokens_to_keep=keep)(None, scores.clone())
    assert torch.equal(keep_top_k(scores, k, keep), want)


@settings(deadline=None, max_examples=25)
@given(scores=random_scores(), p=st.floats(0.01, 1.0), keep=st.integers(1, 3))
def test_top_p_is_transformers(scores, p, keep):
    want = TopPLogitsWarper(p, min_tokens_to_keep=keep)(None, scores.clone())
    assert torch.equal(keep_top_p(scores, p, keep), want)


def test_top_p_keeps_every_token_when_asked_to_keep_more_than_there_are():
    """``keep_at_least`` above the vocabulary keeps all of it, as transformers does (the case
    hypothesis found: two tokens, keep 3, p 0.5)."""
    scores = torch.tensor([[0.7705, -0.1467]])
    assert torch.equal(keep_top_p(scores, 0.5, 3), scores)
    assert torch.equal(TopPLogitsWarper(0.5, min_tokens_to_keep=3)(None, scores.clone()), scores)


@settings(deadline=None, max_examples=25)
@given(scores=random_scores(), temperature=st.floats(0.1, 3.0), k=st.integers(1, 25),
       p=st.floats(0.01, 0.99))
def test_the_filters_chain_in_transformers_order(scores, temperature, k, p):
    want = scores.clone()
    for warper in (TemperatureLogitsWarper(temperature), TopKLogitsWarper(k), TopPLogitsWarper(p)):
        want = warper(None, want)
    got = sampling_filter(scores, temperature=temperature, top_k=k, top_p=p)
    assert torch.equal(got, want)


def test_no_filter_is_the_identity():
    scores = torch.randn(3, 7, generator=torch.Generator().manual_seed(0))
    assert torch.equal(sampling_filter(scores), scores)


@pytest.mark.parametrize("check, match", [
    (lambda: check_max_new_tokens(0), "max_new_tokens"),
    (lambda: check_at_least("num_beams", 0, 1), "num_beams must be an integer >= 1"),
    (lambda: check_at_least("num_beams", 2.0, 1), "num_beams"),
    (lambda: check_sampling(0.0, None, 1.0), "temperature must be a number > 0"),
    (lambda: check_sampling(-1, None, 1.0), "temperature"),
    (lambda: check_sampling(1.0, 0, 1.0), "top_k must be an integer >= 1"),
    (lambda: check_sampling(1.0, None, 0.0), r"top_p must be a number in \(0, 1\]"),
    (lambda: check_sampling(1.0, None, 1.5), "top_p"),
    (lambda: check_sampling(True, None, 1.0), "temperature"),
])
def test_bad_settings_are_refused_by_name(check, match):
    with pytest.raises(ValueError, match=match):
        check()
