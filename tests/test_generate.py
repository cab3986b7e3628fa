"""Decoding one token at a time (core/generate.py) against transformers' ``generate`` on the
same weights: greedy (``num_beams=1, do_sample=False``) the same tokens exactly, for the
encoder-decoder (start token, EOS, padding of finished rows) and the decoder alone, with and
without a no-repeat n-gram size; sampling the same tokens as transformers draws after the same
seed, reproducible and with the frequencies of the filtered softmax; and the front door
``generate``: which loop it picks, and the settings it refuses, by name.

The random small models are those of decoding_strategies.py. A greedy choice is only as stable
as its margin: where the reference's best and second-best logits at some step lie within 1e-4 (a
hundred times the 1e-6 float noise between the two implementations), the draw is discarded,
since either answer would be right.
"""

import tempfile

import pytest
import torch
import transformers
from decoding_strategies import (
    MARGIN,
    encoder_decoders,
    small_configs,
    smallest_margin,
    written_eos,
)
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from minift.core.beam import beam_continue, beam_generate
from minift.core.decoder import CausalLM, EncoderDecoder
from minift.core.generate import generate, greedy_continue, greedy_generate, sample_loop
from minift.core.logits import sampling_filter
from minift.core.model import BertConfig
from minift.hf.encoder_decoder import save_causal_lm, save_encoder_decoder

pytestmark = pytest.mark.usefixtures("one_thread")


@settings(deadline=None, max_examples=15)
@given(drawn=encoder_decoders(), max_new_tokens=st.integers(1, 8), data=st.data())
def test_greedy_generate_is_transformers_generate(drawn, max_new_tokens, data):
    ours, input_ids, mask = drawn
    start, pad = ours.decoder_start_token_id, ours.pad_token_id
    free = greedy_generate(ours, input_ids, mask, max_new_tokens=max_new_tokens)
    ours.eos_token_id = eos = written_eos(data, free, 1, {start, pad})
    with tempfile.TemporaryDirectory() as tmp:
        save_encoder_decoder(ours, tmp)
        hf = transformers.EncoderDecoderModel.from_pretrained(tmp).eval()
    want = hf.generate(input_ids=input_ids, attention_mask=mask, num_beams=1, do_sample=False,
                       max_new_tokens=max_new_tokens, decoder_start_token_id=start,
                       pad_token_id=pad, eos_token_id=eos, output_scores=True,
                       return_dict_in_generate=True)
    assume(smallest_margin(want.scores) > MARGIN)
    got = greedy_generate(ours, input_ids, mask, max_new_tokens=max_new_tokens)
    assert torch.equal(got, want.sequences), (got, want.sequences)


@settings(deadline=None, max_examples=10)
@given(config=small_configs(), batch=st.integers(1, 3), prompt=st.integers(1, 6),
       max_new_tokens=st.integers(1, 8), seed=st.integers(0, 2**31), data=st.data())
def test_greedy_continue_is_transformers_generate(config, batch, prompt, max_new_tokens, seed,
                                                  data):
    torch.manual_seed(seed)
    ours = CausalLM(config).eval()
    gen = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(0, config.vocab_size, (batch, prompt), generator=gen)
    free = greedy_continue(ours, input_ids, max_new_tokens=max_new_tokens)
    pad = config.pad_token_id
    eos = written_eos(data, free, prompt, {pad})
    with tempfile.TemporaryDirectory() as tmp:
        save_causal_lm(ours, tmp)
        hf = transformers.BertLMHeadModel.from_pretrained(tmp).eval()
    want = hf.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                       num_beams=1, do_sample=False, max_new_tokens=max_new_tokens,
                       pad_token_id=pad, eos_token_id=eos, output_scores=True,
                       return_dict_in_generate=True)
    assume(smallest_margin(want.scores) > MARGIN)
    got = greedy_continue(ours, input_ids, max_new_tokens=max_new_tokens, eos_token_id=eos)
    assert torch.equal(got, want.sequences), (got, want.sequences)


def test_finished_rows_are_padded_and_decoding_stops_when_all_are():
    """A decoder whose output bias makes EOS the certain choice: one step, then stop."""
    config = BertConfig(vocab_size=10, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=8)
    model = EncoderDecoder(config, config, decoder_start_token_id=1, pad_token_id=0,
                           eos_token_id=2).eval()
    with torch.no_grad():
        model.decoder.head.bias[2] = 100.0
    out = greedy_generate(model, torch.ones(2, 3, dtype=torch.long), max_new_tokens=5)
    assert out.tolist() == [[1, 2], [1, 2]]


@pytest.mark.parametrize("bad", [0, -1, 2.0, True])
def test_a_generation_length_below_one_is_refused(bad):
    config = BertConfig(vocab_size=10, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=8)
    model = EncoderDecoder(config, config, decoder_start_token_id=1, pad_token_id=0)
    with pytest.raises(ValueError, match="max_new_tokens must be an integer >= 1"):
        greedy_generate(model, torch.ones(1, 3, dtype=torch.long), max_new_tokens=bad)


# --- Sampling -------------------------------------------------------------------------------------


@settings(deadline=None, max_examples=12)
@given(config=small_configs(), batch=st.integers(1, 3), prompt=st.integers(1, 4),
       max_new_tokens=st.integers(1, 6), temperature=st.sampled_from([0.5, 1.0, 1.7]),
       top_k=st.sampled_from([None, 1, 3, 8]), top_p=st.sampled_from([1.0, 0.9, 0.5]),
       returns=st.integers(1, 2), seed=st.integers(0, 2**31), data=st.data())
def test_sampling_draws_what_transformers_draws_from_the_same_seed(
        config, batch, prompt, max_new_tokens, temperature, top_k, top_p, returns, seed, data):
    """A generator seeded s gives the numbers torch's global generator gives after
    ``manual_seed(s)``, and both draw with one ``multinomial`` a step over the same filtered
    probabilities, so the samples are the same tokens. (A draw could differ only where the
    uniform number falls within float noise, about 1e-7, of a boundary between two tokens.)"""
    torch.manual_seed(seed)
    ours = CausalLM(config).eval()
    gen = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(0, config.vocab_size, (batch, prompt), generator=gen)
    eos = data.draw(st.sampled_from([None, *range(1, config.vocab_size)]))
    settings_ = dict(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                     num_return_sequences=returns, eos_token_id=eos)
    with tempfile.TemporaryDirectory() as tmp:
        save_causal_lm(ours, tmp)
        hf = transformers.BertLMHeadModel.from_pretrained(tmp).eval()
    torch.manual_seed(seed + 1)
    want = hf.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                       do_sample=True, top_k=top_k or 0, pad_token_id=config.pad_token_id,
                       **settings_)
    got = generate(ours, input_ids, do_sample=True, top_k=top_k,
                   generator=torch.Generator().manual_seed(seed + 1), **settings_)
    assert torch.equal(got, want), (got, want)


@settings(deadline=None, max_examples=8)
@given(drawn=encoder_decoders(), max_new_tokens=st.integers(1, 6),
       top_k=st.sampled_from([None, 3]), top_p=st.sampled_from([1.0, 0.8]),
       returns=st.integers(1, 2), seed=st.integers(0, 2**31))
def test_encoder_decoder_sampling_draws_what_transformers_draws(drawn, max_new_tokens, top_k,
                                                                top_p, returns, seed):
    """The same for the encoder-decoder: the source read once, its returns side by side."""
    ours, input_ids, mask = drawn
    with tempfile.TemporaryDirectory() as tmp:
        save_encoder_decoder(ours, tmp)
        hf = transformers.EncoderDecoderModel.from_pretrained(tmp).eval()
    settings_ = dict(max_new_tokens=max_new_tokens, top_p=top_p, num_return_sequences=returns)
    torch.manual_seed(seed)
    want = hf.generate(input_ids=input_ids, attention_mask=mask, do_sample=True, top_k=top_k or 0,
                       decoder_start_token_id=ours.decoder_start_token_id,
                       pad_token_id=ours.pad_token_id, **settings_)
    got = generate(ours, input_ids, mask, do_sample=True, top_k=top_k,
                   generator=torch.Generator().manual_seed(seed), **settings_)
    assert torch.equal(got, want), (got, want)


def test_sampling_is_reproducible_and_leaves_the_global_generator_alone():
    config = BertConfig(vocab_size=12, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=8, initializer_range=0.5)
    torch.manual_seed(0)
    model = EncoderDecoder(config, config, decoder_start_token_id=1, pad_token_id=0).eval()
    sources = torch.randint(0, 12, (4, 5))
    state = torch.get_rng_state()

    def sample(seed):
        return generate(model, sources, max_new_tokens=8, do_sample=True,
                        generator=torch.Generator().manual_seed(seed))

    first = sample(3)
    assert torch.equal(first, sample(3))
    assert torch.equal(torch.get_rng_state(), state)
    assert any(not torch.equal(first, sample(seed)) for seed in range(4, 8))


@pytest.mark.parametrize("filters", [dict(), dict(temperature=0.7), dict(top_k=4),
                                     dict(top_p=0.8), dict(temperature=1.5, top_k=6, top_p=0.9)])
def test_sampled_frequencies_are_the_filtered_softmax(filters):
    """20,000 draws from fixed logits over 10 tokens: a filtered-out token is never drawn, and
    each kept token's count lies within 5.5 standard deviations of 20,000 q (q its filtered
    softmax probability): a two-sided tail of 4e-8 a token, so a correct sampler fails this
    less than once in a million runs (10 tokens, 5 settings)."""
    draws = 20_000
    logits = torch.tensor([[2.0, 1.5, 1.0, 0.8, 0.5, 0.0, -0.3, -1.0, -1.5, -2.0]])
    prefix = torch.zeros(draws, 1, dtype=torch.long)
    tokens = sample_loop(lambda new: logits.expand(new.size(0), -1), prefix,
                         generator=torch.Generator().manual_seed(0), max_new_tokens=1,
                         eos_token_id=None, pad_token_id=0, **filters)[:, 1]
    counts = torch.bincount(tokens, minlength=10).double()
    q = sampling_filter(logits, **filters).softmax(dim=-1)[0].double()
    assert (counts[q == 0] == 0).all(), counts
    kept = q > 0
    spread = (draws * q * (1 - q)).sqrt()
    assert ((counts - draws * q).abs()[kept] <= 5.5 * spread[kept]).all(), (counts, draws * q)


# --- The front door -------------------------------------------------------------------------------


def tiny_models():
    config = BertConfig(vocab_size=12, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=8, initializer_range=0.5)
    torch.manual_seed(0)
    return (EncoderDecoder(config, config, decoder_start_token_id=1, pad_token_id=0,
                           eos_token_id=5).eval(), CausalLM(config).eval())


def test_generate_picks_greedy_beams_or_sampling():
    seq2seq, lm = tiny_models()
    sources, prompts = torch.randint(0, 12, (2, 5)), torch.randint(0, 12, (2, 3))
    assert torch.equal(generate(seq2seq, sources, max_new_tokens=6),
                       greedy_generate(seq2seq, sources, max_new_tokens=6))
    assert torch.equal(generate(lm, prompts, max_new_tokens=6),
                       greedy_continue(lm, prompts, max_new_tokens=6))
    assert torch.equal(generate(seq2seq, sources, max_new_tokens=6, num_beams=3,
                                num_return_sequences=2, length_penalty=0.5),
                       beam_generate(seq2seq, sources, max_new_tokens=6, num_beams=3,
                                     num_return_sequences=2, length_penalty=0.5).sequences)
    assert torch.equal(generate(lm, prompts, max_new_tokens=6, num_beams=2, eos_token_id=4),
                       beam_continue(lm, prompts, max_new_tokens=6, num_beams=2,
                                     eos_token_id=4).sequences)
    assert torch.equal(generate(lm, prompts, max_length=9), generate(lm, prompts,
                                                                     max_new_tokens=6))
    assert torch.equal(generate(seq2seq, sources, max_length=7),
                       generate(seq2seq, sources, max_new_tokens=6))


@settings(deadline=None, max_examples=10)
@given(config=small_configs(), batch=st.integers(1, 3), prompt=st.integers(1, 6),
       max_new_tokens=st.integers(1, 8), size=st.integers(1, 3), seed=st.integers(0, 2**31))
def test_greedy_with_no_repeat_ngrams_is_transformers_generate(config, batch, prompt,
                                                               max_new_tokens, size, seed):
    torch.manual_seed(seed)
    ours = CausalLM(config).eval()
    input_ids = torch.randint(0, config.vocab_size, (batch, prompt),
                              generator=torch.Generator().manual_seed(seed))
    with tempfile.TemporaryDirectory() as tmp:
        save_causal_lm(ours, tmp)
        hf = transformers.BertLMHeadModel.from_pretrained(tmp).eval()
    want = hf.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                       num_beams=1, do_sample=False, max_new_tokens=max_new_tokens,
                       no_repeat_ngram_size=size, pad_token_id=config.pad_token_id,
                       output_scores=True, return_dict_in_generate=True)
    assume(smallest_margin(want.scores) > MARGIN)
    got = generate(ours, input_ids, max_new_tokens=max_new_tokens, no_repeat_ngram_size=size)
    assert torch.equal(got, want.sequences), (got, want.sequences)


@pytest.mark.parametrize("bad, match", [
    (dict(num_beams=0), "num_beams must be an integer >= 1"),
    (dict(max_new_tokens=0), "max_new_tokens must be an integer >= 1"),
    (dict(max_new_tokens=None, max_length=1), "max_new_tokens must be an integer >= 1"),
    (dict(max_new_tokens=None), "exactly one of max_new_tokens and max_length"),
    (dict(max_length=9), "exactly one of max_new_tokens and max_length"),
    (dict(do_sample=True, top_p=0.0), "top_p"),
    (dict(do_sample=True, temperature=0.0), "temperature"),
    (dict(do_sample=True, top_k=0), "top_k"),
    (dict(do_sample=True, num_beams=2), "do_sample=True with num_beams=2"),
    (dict(num_beams=2, num_return_sequences=3), "num_return_sequences"),
    (dict(num_return_sequences=2), "num_return_sequences=2 with greedy"),
    (dict(num_beams=2, early_stopping="sometimes"), "early_stopping"),
    (dict(no_repeat_ngram_size=-1), "no_repeat_ngram_size"),
    (dict(attention_mask=torch.tensor([[1, 1, 0]])), "attention_mask: .* padded on the left"),
])
def test_generate_refuses_bad_settings_by_name(bad, match):
    _, lm = tiny_models()
    settings_ = dict(max_new_tokens=4) | bad
    with pytest.raises(ValueError, match=match):
        generate(lm, torch.ones(1, 3, dtype=torch.long), **settings_)


