"""Hypothesis strategies shared by the decoding tests (test_generate.py, test_beam.py,
test_steps.py): random small BERT configs whose decoders write varied tokens, a random
encoder-decoder with sources, an EOS id that the model does write, left-padded prompts; and the
margin below which a greedy choice against transformers is discarded (``MARGIN``).

Random small models in BERT's initialisation with initializer_range 0.3 or 0.5, not 0.02: at
0.02 the random decoder writes one token over and over whatever it reads; at 0.3 the tokens
depend on the source and on each other, and an EOS ends some rows early.
"""

import torch
from hypothesis import assume
from hypothesis import strategies as st

from minift.core.decoder import EncoderDecoder
from minift.core.model import BertConfig


@st.composite
def small_configs(draw, min_vocab: int = 6):
    heads = draw(st.sampled_from([1, 2]))
    return BertConfig(vocab_size=draw(st.integers(min_vocab, 16)),
                      hidden_size=heads * draw(st.sampled_from([4, 8])),
                      num_hidden_layers=draw(st.integers(1, 2)), num_attention_heads=heads,
                      intermediate_size=draw(st.integers(4, 16)), max_position_embeddings=24,
                      initializer_range=draw(st.sampled_from([0.3, 0.5])))


@st.composite
def encoder_decoders(draw, min_vocab: int = 6, min_batch: int = 1):
    """(model in eval mode without an EOS, sources (batch, source), their 1/0 mask): distinct
    random start and pad ids, a random mask whose first token is real."""
    encoder, decoder = draw(small_configs(min_vocab)), draw(small_configs(min_vocab))
    decoder.hidden_size, decoder.num_attention_heads = encoder.hidden_size, encoder.num_attention_heads
    start, pad = draw(st.lists(st.integers(0, decoder.vocab_size - 1), min_size=2, max_size=2,
                               unique=True))
    seed = draw(st.integers(0, 2**31))
    torch.manual_seed(seed)
    model = EncoderDecoder(encoder, decoder, decoder_start_token_id=start, pad_token_id=pad)
    gen = torch.Generator().manual_seed(seed)
    shape = (draw(st.integers(min_batch, 3)), draw(st.integers(1, 8)))  # (batch, source)
    input_ids = torch.randint(0, encoder.vocab_size, shape, generator=gen)
    mask = torch.randint(0, 2, shape, generator=gen)
    mask[:, 0] = 1
    return model.eval(), input_ids, mask


def written_eos(data, generated: torch.Tensor, given: int, exclude: set[int]) -> int:
    """An EOS id that the model, decoding freely, does write: some row then ends early, and
    where rows differ the others go on, so the padding of finished rows is exercised."""
    written = sorted(set(generated[:, given:].flatten().tolist()) - exclude)
    assume(written)
    return data.draw(st.sampled_from(written))


def left_padded(data, vocab_size: int, batch: int, prompt: int, seed: int, pad: int):
    """Prompts (batch, prompt) of random lengths 1..prompt, padded on the left with ``pad``,
    and their 1/0 mask; at least one row is full length."""
    gen = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(0, vocab_size, (batch, prompt), generator=gen)
    lengths = data.draw(st.lists(st.integers(1, prompt), min_size=batch, max_size=batch))
    lengths[0] = prompt
    mask = (torch.arange(prompt)[None, :] >= prompt - torch.tensor(lengths)[:, None]).long()
    return input_ids.masked_fill(mask == 0, pad), mask


MARGIN = 1e-4  # a hundred times the 1e-6 float noise between minift and transformers


def smallest_margin(scores: tuple[torch.Tensor, ...]) -> float:
    """The smallest gap between the best and second-best score over every step and row."""
    return min((s.topk(2, dim=-1).values.diff(dim=-1).abs().min().item() for s in scores),
               default=float("inf"))

