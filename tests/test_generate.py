"""Greedy decoding (core/generate.py) against transformers' ``generate(num_beams=1,
do_sample=False, max_new_tokens=N)`` on the same weights: the same tokens, exactly, for the
encoder-decoder (start token, EOS, padding of finished rows) and for the decoder alone.

Random small models in BERT's initialisation with initializer_range 0.3 or 0.5, not 0.02: at
0.02 (or with every weight random, biases and norms too) the random decoder writes one token over
and over whatever it reads, and the test would never see rows that differ or end at different
steps; at 0.3 the tokens depend on the source and on each other, and EOS ends some rows early. A greedy choice is only as stable as its margin: where the reference's best
and second-best logits at some step lie within 1e-4 (a hundred times the 1e-6 float noise between
the two implementations), the draw is discarded, since either answer would be right.
"""

import tempfile

import pytest
import torch
import transformers
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from minift.core.decoder import CausalLM, EncoderDecoder
from minift.core.generate import greedy_continue, greedy_generate
from minift.core.model import BertConfig
from minift.hf.encoder_decoder import save_causal_lm, save_encoder_decoder

pytestmark = pytest.mark.usefixtures("one_thread")
MARGIN = 1e-4


@st.composite
def small_configs(draw):
    heads = draw(st.sampled_from([1, 2]))
    return BertConfig(vocab_size=draw(st.integers(6, 16)),
                      hidden_size=heads * draw(st.sampled_from([4, 8])),
                      num_hidden_layers=draw(st.integers(1, 2)), num_attention_heads=heads,
                      intermediate_size=draw(st.integers(4, 16)), max_position_embeddings=24,
                      initializer_range=draw(st.sampled_from([0.3, 0.5])))


def smallest_margin(scores: tuple[torch.Tensor, ...]) -> float:
    """The smallest gap between the best and second-best score over every step and row."""
    return min((s.topk(2, dim=-1).values.diff(dim=-1).abs().min().item() for s in scores),
               default=float("inf"))


def written_eos(data, generated: torch.Tensor, given: int, exclude: set[int]) -> int:
    """An EOS id that the model, decoding freely, does write: some row then ends early, and
    where rows differ the others go on, so the padding of finished rows is exercised."""
    written = sorted(set(generated[:, given:].flatten().tolist()) - exclude)
    assume(written)
    return data.draw(st.sampled_from(written))


@settings(deadline=None, max_examples=15)
@given(encoder=small_configs(), decoder=small_configs(), batch=st.integers(1, 3),
       source=st.integers(1, 8), max_new_tokens=st.integers(1, 8),
       seed=st.integers(0, 2**31), data=st.data())
def test_greedy_generate_is_transformers_generate(encoder, decoder, batch, source,
                                                  max_new_tokens, seed, data):
    decoder.hidden_size, decoder.num_attention_heads = encoder.hidden_size, encoder.num_attention_heads
    start, pad = data.draw(st.lists(st.integers(0, decoder.vocab_size - 1), min_size=2,
                                    max_size=2, unique=True))
    torch.manual_seed(seed)
    ours = EncoderDecoder(encoder, decoder, decoder_start_token_id=start, pad_token_id=pad).eval()
    gen = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(0, encoder.vocab_size, (batch, source), generator=gen)
    mask = torch.randint(0, 2, (batch, source), generator=gen)
    mask[:, 0] = 1
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
