"""minift.core.steps: a CausalLM's prompts of different lengths, padded on the left, continue as
in transformers: positions counted from the first real token (as transformers derives them from
the mask), the same tokens greedy and sampled. (The steps of beam search are held to
transformers in test_beam.py; a mask not padded on the left is refused in test_generate.py.)

The random small models are those of decoding_strategies.py; a draw whose greedy choice is
closer than ``MARGIN`` is discarded, as in test_generate.py.
"""

import tempfile

import pytest
import torch
import transformers
from decoding_strategies import MARGIN, left_padded, small_configs, smallest_margin
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from minift.core.decoder import CausalLM
from minift.core.generate import generate, greedy_continue
from minift.hf.encoder_decoder import save_causal_lm

pytestmark = pytest.mark.usefixtures("one_thread")


@settings(deadline=None, max_examples=10)
@given(config=small_configs(), batch=st.integers(2, 3), prompt=st.integers(2, 6),
       max_new_tokens=st.integers(1, 6), seed=st.integers(0, 2**31), data=st.data())
def test_left_padded_prompts_continue_as_in_transformers(config, batch, prompt, max_new_tokens,
                                                         seed, data):
    """Prompts of different lengths padded on the left: positions counted from the first real
    token, as transformers derives them from the mask; the same tokens, greedy and sampled."""
    torch.manual_seed(seed)
    ours = CausalLM(config).eval()
    pad = config.pad_token_id
    input_ids, mask = left_padded(data, config.vocab_size, batch, prompt, seed, pad)
    with tempfile.TemporaryDirectory() as tmp:
        save_causal_lm(ours, tmp)
        hf = transformers.BertLMHeadModel.from_pretrained(tmp).eval()
    want = hf.generate(input_ids=input_ids, attention_mask=mask, num_beams=1, do_sample=False,
                       max_new_tokens=max_new_tokens, pad_token_id=pad, output_scores=True,
                       return_dict_in_generate=True)
    assume(smallest_margin(want.scores) > MARGIN)
    got = greedy_continue(ours, input_ids, max_new_tokens=max_new_tokens, attention_mask=mask)
    assert torch.equal(got, want.sequences), (got, want.sequences)
    torch.manual_seed(seed)
    want = hf.generate(input_ids=input_ids, attention_mask=mask, do_sample=True, top_k=0,
                       max_new_tokens=max_new_tokens, pad_token_id=pad)
    got = generate(ours, input_ids, mask, do_sample=True, max_new_tokens=max_new_tokens,
                   generator=torch.Generator().manual_seed(seed))
    assert torch.equal(got, want), (got, want)

