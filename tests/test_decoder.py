"""The textbook decoder (core/decoder.py) against transformers: ``CausalLM`` against
``BertLMHeadModel(is_decoder=True)`` (logits, loss, every gradient), ``EncoderDecoder`` against
``EncoderDecoderModel`` (logits, teacher-forcing loss, gradients), the cache against the full
forward, the causal mask's promise, and the errors.

Random small configs drawn by hypothesis, every weight random (norms and biases too, so a swapped
pair shows), models in eval mode (dropout off), fp32. Tolerance: atol 1e-5 (rtol 1e-5 for
gradients), as the encoder's parity tests in test_model.py; the agreement found is about 1e-6.
"""

import copy
import tempfile

import pytest
import torch
import transformers
from hypothesis import given, settings
from hypothesis import strategies as st
from tiny_heads import randomize_
from transformers.models.encoder_decoder.modeling_encoder_decoder import shift_tokens_right

from minift.core.decoder import CausalLM, EncoderDecoder, causal_mask, shift_right
from minift.core.model import BertConfig, ConfigError
from minift.fast.unpad import speed_up
from minift.hf.checkpoint import to_hf_state_dict
from minift.hf.encoder_decoder import decoder_to_hf, load_causal_lm, load_encoder_decoder

pytestmark = [pytest.mark.usefixtures("one_thread"),
              # EncoderDecoderModel warns on every loss that pre-4.12 models were trained otherwise
              pytest.mark.filterwarnings("ignore:Version v4.12.0:FutureWarning")]
ATOL = 1e-5


@st.composite
def configs(draw, max_seq: int = 10):
    """A random small BERT config (a dict for both libraries); hidden size from the drawn heads."""
    heads = draw(st.sampled_from([1, 2, 4]))
    return dict(
        vocab_size=draw(st.integers(8, 60)),
        hidden_size=heads * draw(st.sampled_from([2, 4, 8])),
        num_hidden_layers=draw(st.integers(1, 3)),
        num_attention_heads=heads,
        intermediate_size=draw(st.integers(2, 24)),
        max_position_embeddings=draw(st.integers(max_seq, 30)),
        type_vocab_size=draw(st.integers(1, 2)),
    )


def decoder_mask(gen: torch.Generator, batch: int, seq: int) -> torch.Tensor:
    """A 1/0 mask with holes anywhere but at position 0: a causal row whose every key is masked
    is a corner where the libraries differ, and no real input has one (a target starts with the
    start token)."""
    mask = torch.randint(0, 2, (batch, seq), generator=gen)
    mask[:, 0] = 1
    return mask


def source_mask(gen: torch.Generator, batch: int, seq: int) -> torch.Tensor:
    """Any 1/0 pattern with at least one real token a row."""
    mask = torch.randint(0, 2, (batch, seq), generator=gen)
    mask[torch.arange(batch), torch.randint(0, seq, (batch,), generator=gen)] = 1
    return mask


def hf_causal_lm(config: dict, seed: int, attn: str = "sdpa", cross: bool = False):
    hf = transformers.BertLMHeadModel(transformers.BertConfig(
        **config, is_decoder=True, add_cross_attention=cross, attn_implementation=attn))
    return randomize_(hf, seed)


def hf_encoder_decoder(encoder: dict, decoder: dict, seed: int, start: int, pad: int,
                       attn: str = "sdpa"):
    config = transformers.EncoderDecoderConfig.from_encoder_decoder_configs(
        transformers.BertConfig(**encoder, attn_implementation=attn),
        transformers.BertConfig(**decoder, is_decoder=True, add_cross_attention=True,
                                attn_implementation=attn))
    config.decoder_start_token_id, config.pad_token_id = start, pad
    return randomize_(transformers.EncoderDecoderModel(config), seed)


def through_folder(hf, load):
    """Save the reference model and load it with minift's loader (the path users take)."""
    with tempfile.TemporaryDirectory() as tmp:
        hf.save_pretrained(tmp)
        return load(tmp)


def assert_grads_match(ours: torch.nn.Module, hf: torch.nn.Module, to_hf) -> None:
    """Every parameter's gradient, under the reference's names; tied weights counted once. A
    parameter the loss does not reach (an encoder's pooler) has none, on both sides."""
    want = {name: p.grad for name, p in hf.named_parameters() if p.grad is not None}
    got = to_hf({name: p.grad for name, p in ours.named_parameters() if p.grad is not None})
    assert set(got) == set(want)
    for name, grad in got.items():
        torch.testing.assert_close(grad, want[name], atol=ATOL, rtol=1e-5, msg=name)


@settings(deadline=None, max_examples=20)
@given(config=configs(), batch=st.integers(1, 3), seq=st.integers(1, 10),
       seed=st.integers(0, 2**31), attn=st.sampled_from(["sdpa", "eager"]))
def test_causal_lm_logits_loss_and_gradients_match_bert_lm_head_model(config, batch, seq, seed,
                                                                      attn):
    hf = hf_causal_lm(config, seed, attn)
    ours = through_folder(hf, load_causal_lm)
    gen = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(0, config["vocab_size"], (batch, seq), generator=gen)
    mask = decoder_mask(gen, batch, seq)
    labels = input_ids.masked_fill(mask == 0, -100)  # the usual causal-LM labels
    labels[0, -1] = input_ids[0, -1]  # at least one target when seq > 1
    want = hf(input_ids=input_ids, attention_mask=mask, labels=labels)
    got = ours(input_ids, mask, labels=labels)
    torch.testing.assert_close(got.logits, want.logits, atol=ATOL, rtol=0)
    if seq == 1:  # nothing to predict: the mean over no targets is nan in both
        assert got.loss.isnan() and want.loss.isnan()
        return
    torch.testing.assert_close(got.loss, want.loss, atol=ATOL, rtol=0)
    want.loss.backward()
    got.loss.backward()
    assert_grads_match(ours, hf, decoder_to_hf)


@settings(deadline=None, max_examples=20)
@given(encoder=configs(), decoder=configs(), batch=st.integers(1, 3), source=st.integers(1, 10),
       target=st.integers(1, 10), seed=st.integers(0, 2**31),
       attn=st.sampled_from(["sdpa", "eager"]), data=st.data())
def test_encoder_decoder_logits_loss_and_gradients_match_encoder_decoder_model(
        encoder, decoder, batch, source, target, seed, attn, data):
    decoder |= dict(hidden_size=encoder["hidden_size"],
                    num_attention_heads=encoder["num_attention_heads"])
    start, pad = data.draw(st.lists(st.integers(0, decoder["vocab_size"] - 1), min_size=2,
                                    max_size=2, unique=True))
    hf = hf_encoder_decoder(encoder, decoder, seed, start, pad, attn)
    ours = through_folder(hf, load_encoder_decoder)
    gen = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(0, encoder["vocab_size"], (batch, source), generator=gen)
    mask = source_mask(gen, batch, source)
    labels = torch.randint(0, decoder["vocab_size"], (batch, target), generator=gen)
    lengths = torch.randint(1, target + 1, (batch,), generator=gen)
    labels[torch.arange(target)[None, :] >= lengths[:, None]] = -100  # padded targets
    want = hf(input_ids=input_ids, attention_mask=mask, labels=labels)
    got = ours(input_ids, mask, labels=labels)
    torch.testing.assert_close(got.logits, want.logits, atol=ATOL, rtol=0)
    torch.testing.assert_close(got.loss, want.loss, atol=ATOL, rtol=0)
    want.loss.backward()
    got.loss.backward()

    def to_hf(grads):
        part = {side: {k[8:]: v for k, v in grads.items() if k.startswith(side)}
                for side in ("encoder.", "decoder.")}
        return (to_hf_state_dict(part["encoder."], prefix="encoder.")
                | decoder_to_hf(part["decoder."], prefix="decoder."))

    assert_grads_match(ours, hf, to_hf)


@st.composite
def chunkings(draw, seq: int):
    """Random step sizes summing to ``seq``: one token at a time, or several (a prompt)."""
    sizes, left = [], seq
    while left:
        sizes.append(draw(st.integers(1, left)))
        left -= sizes[-1]
    return sizes


@settings(deadline=None, max_examples=20)
@given(config=configs(), batch=st.integers(1, 3), seq=st.integers(1, 10), source=st.integers(1, 8),
       seed=st.integers(0, 2**31), cross=st.booleans(), data=st.data())
def test_the_cache_gives_the_full_forward(config, batch, seq, source, seed, cross, data):
    """Feeding a sequence piece by piece through the cache gives the logits of one full pass,
    for the decoder alone (with padding holes) and reading a source (cross-attention)."""
    torch.manual_seed(seed)
    model = randomize_(CausalLM(BertConfig(**config), cross_attention=cross), seed)
    gen = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(0, config["vocab_size"], (batch, seq), generator=gen)
    mask = decoder_mask(gen, batch, seq)
    memory = memory_mask = None
    if cross:
        memory = torch.randn(batch, source, config["hidden_size"], generator=gen)
        memory_mask = source_mask(gen, batch, source)
    with torch.no_grad():
        full = model(input_ids, mask, memory=memory, memory_mask=memory_mask).logits
        cache, pieces, done = model.new_cache(), [], 0
        for size in data.draw(chunkings(seq)):
            pieces.append(model(input_ids[:, done : done + size], mask[:, : done + size],
                                memory=memory, memory_mask=memory_mask, cache=cache).logits)
            done += size
    assert cache[0].length == seq
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, atol=ATOL, rtol=0)


@settings(deadline=None, max_examples=15)
@given(config=configs(), seq=st.integers(2, 10), cut=st.data(), seed=st.integers(0, 2**31))
def test_no_position_sees_the_future(config, seq, cut, seed):
    """The causal mask's promise: changing the tokens after position t leaves the logits up to t
    as they were, exactly."""
    t = cut.draw(st.integers(0, seq - 2))
    model = randomize_(CausalLM(BertConfig(**config)), seed)
    gen = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(0, config["vocab_size"], (2, seq), generator=gen)
    changed = input_ids.clone()
    changed[:, t + 1 :] = torch.randint(0, config["vocab_size"], (2, seq - t - 1), generator=gen)
    with torch.no_grad():
        before, after = model(input_ids).logits, model(changed).logits
    torch.testing.assert_close(after[:, : t + 1], before[:, : t + 1], atol=0, rtol=0)


def test_causal_mask_with_a_cache_lets_new_tokens_see_the_past():
    mask = causal_mask(torch.tensor([[1, 0, 1, 1, 1]]), query_length=2, past_length=3,
                       dtype=torch.float32, device=torch.device("cpu"))
    allowed = (mask == 0).squeeze().tolist()
    assert allowed == [[True, False, True, True, False],  # position 3: 0..3, not the hole at 1
                       [True, False, True, True, True]]   # position 4: 0..4


@settings(deadline=None, max_examples=25)
@given(labels=st.lists(st.lists(st.sampled_from([-100, 0, 1, 5, 7]), min_size=4, max_size=4),
                       min_size=1, max_size=3), start=st.integers(0, 9), pad=st.integers(0, 9))
def test_shift_right_is_transformers_shift_tokens_right(labels, start, pad):
    labels = torch.tensor(labels)
    assert torch.equal(shift_right(labels, start, pad), shift_tokens_right(labels, pad, start))


def test_the_lm_head_is_tied_to_the_word_embeddings():
    model = CausalLM(BertConfig(vocab_size=20, hidden_size=8, num_hidden_layers=1,
                                num_attention_heads=2, intermediate_size=8))
    assert model.head.decoder.weight is model.bert.embeddings.word_embeddings.weight
    assert torch.equal(model.head.bias, torch.zeros(20))  # as transformers' _init_weights


def test_errors_name_what_is_wrong():
    small = dict(vocab_size=20, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                 intermediate_size=8, max_position_embeddings=6)
    decoder = CausalLM(BertConfig(**small)).eval()
    ids = torch.zeros(1, 3, dtype=torch.long)
    with pytest.raises(ValueError, match="input_ids must be \\(batch, seq\\), got shape \\(3,\\)"):
        decoder(ids[0])
    with pytest.raises(ValueError, match="no cross-attention"):
        decoder(ids, memory=torch.zeros(1, 2, 8))
    with pytest.raises(ValueError, match="attention_mask covers 2 tokens; .* 0 cached \\+ 3 new"):
        decoder(ids, torch.ones(1, 2))
    with pytest.raises(ValueError, match="decoder length 7 exceeds max_position_embeddings"):
        decoder(torch.zeros(1, 7, dtype=torch.long))
    with pytest.raises(ConfigError, match="hidden_size \\(8\\) and decoder hidden_size \\(4\\)"):
        EncoderDecoder(BertConfig(**small), BertConfig(**small | dict(hidden_size=4)),
                       decoder_start_token_id=1, pad_token_id=0)
    with pytest.raises(ConfigError, match="decoder_start_token_id \\(20\\) is outside"):
        EncoderDecoder(BertConfig(**small), BertConfig(**small), decoder_start_token_id=20,
                       pad_token_id=0)
    model = EncoderDecoder(BertConfig(**small), BertConfig(**small), decoder_start_token_id=1,
                           pad_token_id=0)
    with pytest.raises(ValueError, match="give decoder_input_ids or labels"):
        model(ids)


def test_speed_up_swaps_the_encoder_and_leaves_the_decoder_exact():
    """``minift.fast.unpad.speed_up`` swaps exact textbook types only: the encoder becomes the
    fast one, the decoder's own subclasses (cached self-attention, cross-attention) stay, and
    the logits are those of the textbook model (atol 1e-5)."""
    config = BertConfig(vocab_size=30, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=24, max_position_embeddings=20, initializer_range=0.3)
    torch.manual_seed(0)
    model = EncoderDecoder(config, config, decoder_start_token_id=1, pad_token_id=0).eval()
    gen = torch.Generator().manual_seed(0)
    input_ids = torch.randint(1, 30, (3, 7), generator=gen)
    mask = source_mask(gen, 3, 7)
    labels = torch.randint(2, 30, (3, 5), generator=gen)
    fast = speed_up(copy.deepcopy(model), onednn=False)
    kinds = {type(m).__name__ for m in fast.modules()}
    assert {"FastBertModel", "CachedSelfAttention", "CrossAttention"} <= kinds
    with torch.no_grad():
        want, got = model(input_ids, mask, labels=labels), fast(input_ids, mask, labels=labels)
    torch.testing.assert_close(got.logits, want.logits, atol=ATOL, rtol=0)
