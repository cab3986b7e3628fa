"""The encoder against transformers.BertModel: random configs, real weights, sentence embeddings.

Tolerances: random tiny models in fp32 agree to atol 1e-5 (outputs and gradients); the published
MiniLM checkpoint to 1e-4 (REFERENCE.md: a faithful implementation lands near 2e-6).
"""

import csv
import math
import platform
import tempfile

import pytest
import torch
import transformers
from hypothesis import given, settings
from hypothesis import strategies as st

import minift.model
from minift.checkpoint import split_hf_state_dict
from minift.model import (
    BertConfig,
    BertModel,
    ConfigError,
    attention,
    dropout,
    linear,
    set_activation_checkpointing,
    varlen_attention,
)
from minift.sentence import encode, mean_pooling
from minift.tokenizer import Tokenizer


@st.composite
def tiny_setups(draw):
    """A random small BERT config and a random batch with an arbitrary padding pattern."""
    heads = draw(st.sampled_from([1, 2, 3, 4]))
    head_dim = draw(st.sampled_from([2, 4, 8]))
    batch = draw(st.integers(1, 4))
    seq = draw(st.integers(1, 12))
    config = dict(
        vocab_size=draw(st.integers(5, 80)),
        hidden_size=heads * head_dim,
        num_hidden_layers=draw(st.integers(1, 4)),
        num_attention_heads=heads,
        intermediate_size=draw(st.integers(2, 40)),
        max_position_embeddings=draw(st.integers(seq, 40)),
        type_vocab_size=draw(st.integers(1, 3)),
    )
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31)))
    input_ids = torch.randint(0, config["vocab_size"], (batch, seq), generator=gen)
    token_type_ids = torch.randint(0, config["type_vocab_size"], (batch, seq), generator=gen)
    # Arbitrary 0/1 pattern (holes and left padding included), at least one real token per row.
    mask = torch.randint(0, 2, (batch, seq), generator=gen)
    mask[torch.arange(batch), torch.randint(0, seq, (batch,), generator=gen)] = 1
    return config, input_ids, mask, token_type_ids, draw(st.integers(0, 2**31))


def build_pair(config: dict, seed: int, attn: str = "sdpa"):
    """A random transformers.BertModel, saved and loaded by minift."""
    torch.manual_seed(seed)
    hf = transformers.BertModel(
        transformers.BertConfig(**config, attn_implementation=attn)
    ).eval()
    with tempfile.TemporaryDirectory() as tmp:
        hf.save_pretrained(tmp)
        ours = BertModel.from_pretrained(tmp).eval()
    return hf, ours


@settings(deadline=None, max_examples=40)
@given(setup=tiny_setups(), attn=st.sampled_from(["sdpa", "eager"]))
def test_random_config_outputs_and_gradients_match(setup, attn):
    config, input_ids, mask, token_type_ids, seed = setup
    hf, ours = build_pair(config, seed, attn)
    ref = hf(input_ids=input_ids, attention_mask=mask, token_type_ids=token_type_ids)
    out = ours(input_ids, mask, token_type_ids)
    real = mask.bool()
    torch.testing.assert_close(out.last_hidden_state[real], ref.last_hidden_state[real],
                               atol=1e-5, rtol=0)
    # The pooler reads position 0; where that is padding, only the padded path defines it.
    first_real = mask[:, 0].bool()
    torch.testing.assert_close(out.pooler_output[first_real], ref.pooler_output[first_real],
                               atol=1e-5, rtol=0)

    # Same scalar loss on both: a fixed random projection of real positions and the pooler,
    # averaged so gradients are O(1) and atol 1e-5 means what it says.
    gen = torch.Generator().manual_seed(seed)
    w_tokens = torch.randn(ref.last_hidden_state.shape, generator=gen)
    w_pool = torch.randn(ref.pooler_output.shape, generator=gen)

    def loss_of(o):
        return ((o.last_hidden_state * w_tokens)[real].mean()
                + (o.pooler_output * w_pool)[first_real].sum() / o.pooler_output.numel())

    loss_of(ref).backward()
    loss_of(out).backward()
    ref_grads, _, unknown = split_hf_state_dict(
        {name: p.grad for name, p in hf.named_parameters()}
    )
    assert not unknown
    our_grads = {name: p.grad for name, p in ours.named_parameters()}
    assert set(ref_grads) == set(our_grads)
    for name, grad in our_grads.items():
        torch.testing.assert_close(grad, ref_grads[name], atol=1e-5, rtol=1e-5, msg=name)


@settings(deadline=None, max_examples=30)
@given(setup=tiny_setups(), unpad=st.booleans())
def test_no_gradient_forms_match(setup, unpad):
    """Where no gradient flows, the feed-forward runs GELU in place. Inference outputs still
    match transformers (atol 1e-5), and frozen lower blocks (no gradient through their GELU)
    leave the last block's gradients exactly as without freezing."""
    config, input_ids, mask, token_type_ids, seed = setup
    hf, ours = build_pair(config, seed)
    real = mask.bool()
    with torch.inference_mode():
        ref = hf(input_ids=input_ids, attention_mask=mask, token_type_ids=token_type_ids)
        out = ours(input_ids, mask, token_type_ids, unpad=unpad)
    torch.testing.assert_close(out.last_hidden_state[real], ref.last_hidden_state[real],
                               atol=1e-5, rtol=0)

    def grads():
        ours.zero_grad(set_to_none=True)
        o = ours(input_ids, mask, token_type_ids, unpad=unpad)
        o.last_hidden_state[real].square().mean().backward()
        return {n: p.grad for n, p in ours.named_parameters() if p.grad is not None}

    full = grads()
    frozen = [ours.embeddings, *ours.layers[:-1]]  # all but the last block
    for p in (p for module in frozen for p in module.parameters()):
        p.requires_grad_(False)
    partial = grads()
    last = f"layers.{len(ours.layers) - 1}."
    expected = {n: g for n, g in full.items() if n.startswith(last)}
    assert set(partial) == set(expected)
    for name, grad in partial.items():
        torch.testing.assert_close(grad, expected[name], atol=0, rtol=0, msg=name)


@settings(deadline=None, max_examples=40)
@given(setup=tiny_setups(), shape=st.sampled_from(["random", "single_token", "no_padding"]),
       train=st.booleans(), per_sequence=st.booleans())
def test_unpadded_path_equals_padded_path(setup, shape, train, per_sequence):
    """Outputs and gradients of the two paths agree (fp32, atol 1e-5); dropout off. Both ways
    of attending on the unpadded path: per sequence (CPU default) and re-padded (GPU default)."""
    config, input_ids, mask, token_type_ids, seed = setup
    if shape == "single_token":  # every sequence is one real token, then padding
        mask = torch.zeros_like(mask)
        mask[:, 0] = 1
    elif shape == "no_padding":
        mask = torch.ones_like(mask)
    torch.manual_seed(seed)
    model = BertModel(BertConfig(**config, hidden_dropout_prob=0.0,
                                 attention_probs_dropout_prob=0.0)).train(train)
    model.per_sequence_attention = per_sequence
    real = mask.bool()
    outs, grads = [], []
    for unpad in (False, True):
        model.zero_grad()
        out = model(input_ids, mask, token_type_ids, unpad=unpad)
        gen = torch.Generator().manual_seed(seed)
        w = torch.randn(out.last_hidden_state.shape, generator=gen)
        ((out.last_hidden_state * w)[real].mean() + out.pooler_output[real[:, 0]].mean()
         if real[:, 0].any() else (out.last_hidden_state * w)[real].mean()).backward()
        outs.append(out)
        grads.append({n: torch.zeros_like(p) if p.grad is None else p.grad.clone()
                      for n, p in model.named_parameters()})
    padded, unpadded = outs
    torch.testing.assert_close(unpadded.last_hidden_state[real], padded.last_hidden_state[real],
                               atol=1e-5, rtol=0)
    assert torch.equal(unpadded.last_hidden_state[~real],
                       torch.zeros_like(unpadded.last_hidden_state[~real]))
    first_real = real[:, 0]
    torch.testing.assert_close(unpadded.pooler_output[first_real],
                               padded.pooler_output[first_real], atol=1e-5, rtol=0)
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], atol=1e-5, rtol=1e-5,
                                   msg=name)


def test_default_path_is_chosen_per_device_and_overridable():
    """On a CPU a padded batch runs unpadded by default; ``model.unpad`` and the ``unpad``
    argument override it (the argument wins). Bitwise: the same path runs the same code."""
    torch.manual_seed(0)
    model = BertModel(BertConfig(vocab_size=50, hidden_size=8, num_hidden_layers=2,
                                 num_attention_heads=2, intermediate_size=16)).eval()
    ids = torch.randint(0, 50, (3, 7))
    mask = torch.ones(3, 7, dtype=torch.long)
    mask[0, 4:] = 0
    mask[2, 2:] = 0

    def run(**kwargs):
        return model(ids, mask, **kwargs).last_hidden_state

    unpadded, padded = run(unpad=True), run(unpad=False)
    assert not torch.equal(unpadded, padded)  # zeros vs computed padding: the paths differ
    assert torch.equal(run(), unpadded)
    model.unpad = False
    assert torch.equal(run(), padded)
    assert torch.equal(run(unpad=True), unpadded)


@settings(deadline=None, max_examples=40)
@given(setup=tiny_setups(), unpad=st.booleans(), per_sequence=st.booleans(),
       train=st.booleans(), starts_real=st.booleans())
def test_first_token_only_equals_the_full_pass(setup, unpad, per_sequence, train, starts_real):
    """The last block computing [CLS] alone gives the full pass's first position, pooler output
    and gradients (atol 1e-5, dropout off); with a row not starting with a real token it falls
    back to the full pass."""
    config, input_ids, mask, token_type_ids, seed = setup
    if starts_real:  # the usual right padding: the shortcut runs
        mask[:, 0] = 1
    torch.manual_seed(seed)
    model = BertModel(BertConfig(**config, hidden_dropout_prob=0.0,
                                 attention_probs_dropout_prob=0.0)).train(train)
    model.per_sequence_attention = per_sequence
    w = torch.randn(input_ids.shape[0], 1, config["hidden_size"],
                    generator=torch.Generator().manual_seed(seed))
    runs = []
    for first_only in (False, True):
        model.zero_grad()
        out = model(input_ids, mask, token_type_ids, unpad=unpad, first_token_only=first_only)
        first = out.last_hidden_state[:, :1]
        ((first * w).sum() + out.pooler_output.sum()).backward()
        runs.append((out.last_hidden_state.shape, first.detach(), out.pooler_output.detach(),
                     {n: p.grad.clone() for n, p in model.named_parameters()
                      if p.grad is not None}))
    (full_shape, full_first, full_pooled, full_grads), (shape, first, pooled, grads) = runs
    assert shape == (input_ids.shape[0], 1, config["hidden_size"])
    assert full_shape == (*input_ids.shape, config["hidden_size"])
    real = mask[:, 0].bool()  # the unpadded path leaves zeros where position 0 is padding
    torch.testing.assert_close(first[real], full_first[real], atol=1e-5, rtol=0)
    torch.testing.assert_close(pooled[real], full_pooled[real], atol=1e-5, rtol=0)
    assert grads.keys() == full_grads.keys()
    for name, grad in full_grads.items():
        torch.testing.assert_close(grads[name], grad, atol=1e-5, rtol=1e-5, msg=name)


@settings(deadline=None, max_examples=25)
@given(setup=tiny_setups(), unpad=st.booleans())
def test_activation_checkpointing_gives_the_same_gradients(setup, unpad):
    """Recomputing each block in backward changes nothing: same outputs and gradients (atol
    1e-5), dropout on (the re-run replays the saved RNG state); each block runs twice."""
    config, input_ids, mask, token_type_ids, seed = setup
    torch.manual_seed(seed)
    model = BertModel(BertConfig(**config, hidden_dropout_prob=0.1,
                                 attention_probs_dropout_prob=0.1)).train()
    calls = []
    for layer in model.layers:
        layer.register_forward_pre_hook(lambda *args: calls.append(1))
    real = mask.bool()
    w = torch.randn(*input_ids.shape, config["hidden_size"],
                    generator=torch.Generator().manual_seed(seed))
    runs = []
    for checkpointed in (False, True):
        assert set_activation_checkpointing(model, checkpointed) == 1
        model.zero_grad()
        calls.clear()
        torch.manual_seed(seed + 1)  # the same dropout masks in both runs
        out = model(input_ids, mask, token_type_ids, unpad=unpad)
        ((out.last_hidden_state * w)[real].mean() + out.pooler_output.mean()).backward()
        runs.append((out.last_hidden_state[real].detach(), len(calls),
                     {n: p.grad.clone() for n, p in model.named_parameters()
                      if p.grad is not None}))
    (plain, plain_calls, plain_grads), (ckpt, ckpt_calls, ckpt_grads) = runs
    assert plain_calls == config["num_hidden_layers"]
    assert ckpt_calls == 2 * config["num_hidden_layers"]  # forward, then again in backward
    torch.testing.assert_close(ckpt, plain, atol=1e-5, rtol=0)
    assert ckpt_grads.keys() == plain_grads.keys()
    # equal_nan: with hidden_size 2 a dropout mask can zero a token's whole hidden state; the
    # LayerNorm after it (eps 1e-12) then scales gradients by 1e6 per block, to inf and NaN.
    # The re-run must reproduce that too, NaN where the plain run has NaN.
    for name, grad in plain_grads.items():
        torch.testing.assert_close(ckpt_grads[name], grad, atol=1e-5, rtol=1e-5, msg=name,
                                   equal_nan=True)

    # Evaluation never recomputes: no graph, nothing to save.
    calls.clear()
    with torch.no_grad():
        model.eval()(input_ids, mask, token_type_ids, unpad=unpad)
    assert len(calls) == config["num_hidden_layers"]


def test_activation_checkpointing_needs_an_encoder():
    with pytest.raises(ValueError, match="Linear holds no minift BertModel"):
        set_activation_checkpointing(torch.nn.Linear(2, 2))


@settings(deadline=None, max_examples=60)
@given(lead=st.lists(st.integers(0, 6), min_size=0, max_size=2), fan_in=st.integers(1, 40),
       fan_out=st.integers(1, 40), bias=st.booleans(), transposed=st.booleans(),
       grads=st.sampled_from(["all", "input only", "weight only"]), seed=st.integers(0, 2**31))
def test_linear_equals_f_linear(lead, fan_in, fan_out, bias, transposed, grads, seed):
    """``linear`` (oneDNN on a CPU in float32) against ``F.linear`` (MKL): outputs and the
    gradients of input, weight and bias (float32, atol 1e-5 / rtol 1e-5 at O(1) values), for
    1-D to 3-D inputs, empty ones, strided (transposed) ones, and with any of them frozen."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(*lead, fan_in, generator=gen)
    if transposed and x.dim() >= 2:  # a strided view with the same shape
        x = x.transpose(0, -1).contiguous().transpose(0, -1)
    w = torch.randn(fan_out, fan_in, generator=gen) / fan_in**0.5
    b = torch.randn(fan_out, generator=gen) if bias else None
    dy = torch.randn(*lead, fan_out, generator=gen)
    results = []
    for fn in (linear, torch.nn.functional.linear):
        xi, wi = x.clone().requires_grad_(grads != "weight only"), w.clone()
        wi.requires_grad_(grads != "input only")
        bi = None if b is None else b.clone().requires_grad_(grads != "input only")
        y = fn(xi, wi, bi)
        y.backward(dy)
        results.append([y.detach()] + [t.grad for t in (xi, wi, bi) if t is not None])
    ours, ref = results
    for a, e in zip(ours, ref, strict=True):
        if e is None:
            assert a is None
        else:
            torch.testing.assert_close(a, e, atol=1e-5, rtol=1e-5)


def test_linear_takes_onednn_on_cpu_float32_only(monkeypatch):
    """The oneDNN path runs for float32 on an x86-64 CPU, not under autocast, nor for float64,
    nor with oneDNN disabled in torch, nor with ONEDNN_LINEAR off: counted by wrapping the op
    it calls. The op itself passes torch's own checks of a custom op (schema, fake tensor,
    autograd registration: ``torch.library.opcheck``)."""
    import minift.model as model_module

    if platform.machine().lower() not in ("x86_64", "amd64"):
        assert not model_module.ONEDNN_AVAILABLE
        pytest.skip("oneDNN's linear is used on x86-64 only; F.linear runs here")
    assert model_module.ONEDNN_AVAILABLE
    gen = torch.Generator().manual_seed(0)
    args = (torch.randn(6, 3, generator=gen, requires_grad=True),
            torch.randn(4, 3, generator=gen, requires_grad=True),
            torch.randn(4, generator=gen, requires_grad=True))
    torch.library.opcheck(model_module.onednn_linear, args)
    calls = []
    real = model_module.onednn_linear
    monkeypatch.setattr(model_module, "onednn_linear", lambda *a: calls.append(1) or real(*a))
    x, w = torch.randn(5, 3), torch.randn(4, 3)
    linear(x, w)
    assert len(calls) == 1
    linear(x.double(), w.double())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert linear(x, w).dtype == torch.bfloat16
    torch.backends.mkldnn.enabled = False
    try:
        linear(x, w)
    finally:
        torch.backends.mkldnn.enabled = True
    linear(x, w)
    assert len(calls) == 2
    monkeypatch.setattr(model_module, "ONEDNN_LINEAR", False)
    linear(x, w)
    assert len(calls) == 2


def test_compiled_model_equals_eager_with_onednn_linear_in_the_graph():
    """torch.compile on the unpadded path, with the oneDNN linear layers inside the compiled
    graph (a custom op it calls as it is): outputs and gradients equal eager's (atol 1e-5)."""
    torch.manual_seed(0)
    model = BertModel(BertConfig(vocab_size=60, hidden_size=16, num_hidden_layers=2,
                                 num_attention_heads=2, intermediate_size=32,
                                 hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0),
                      add_pooling_layer=False)
    ids = torch.randint(0, 60, (3, 9))
    mask = torch.ones(3, 9, dtype=torch.long)
    mask[1, 5:] = 0
    mask[2, 2:] = 0
    w = torch.randn(3, 9, 16)
    graphs = []  # what dynamo hands a backend: the linear layers must be the oneDNN op

    def recording_backend(gm, example_inputs):
        graphs.append(gm.code)
        return gm.forward

    torch.compile(model, backend=recording_backend, dynamic=True)(ids, mask)
    expected = 6 * 2 if minift.model.ONEDNN_AVAILABLE else 0  # six per block, on x86-64
    assert "\n".join(graphs).count("onednn_linear") == expected
    runs = []
    for fn in (model, torch.compile(model, dynamic=True)):
        model.zero_grad(set_to_none=True)
        out = fn(ids, mask).last_hidden_state
        (out * w)[mask.bool()].sum().backward()
        runs.append((out.detach(), {n: p.grad for n, p in model.named_parameters()}))
    (eager, eager_grads), (compiled, compiled_grads) = runs
    real_positions = mask.bool()
    torch.testing.assert_close(compiled[real_positions], eager[real_positions], atol=1e-5,
                               rtol=0)
    for name, grad in eager_grads.items():
        torch.testing.assert_close(compiled_grads[name], grad, atol=1e-5, rtol=1e-5, msg=name)


def test_sdpa_equals_plain_attention():
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 7, 8, generator=gen) for _ in range(3))
    mask = torch.zeros(2, 1, 1, 7)
    mask[0, ..., 5:] = torch.finfo(torch.float32).min
    expected = attention(q, k, v, mask)
    got = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-6)


@settings(deadline=None, max_examples=30)
@given(lengths=st.lists(st.integers(0, 9), min_size=1, max_size=5),
       heads=st.integers(1, 3), head_dim=st.sampled_from([1, 4, 8]), seed=st.integers(0, 99))
def test_varlen_attention_equals_plain_attention_per_sequence(lengths, heads, head_dim, seed):
    """Packed sequences (empty ones included) attend each to its own tokens only: the plain
    formula on each sequence alone, stacked back (atol 1e-6)."""
    gen = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(sum(lengths), heads, head_dim, generator=gen) for _ in range(3))
    got = varlen_attention(q, k, v, lengths)
    first = varlen_attention(q, k, v, lengths, first_only=True)
    assert got.shape == (sum(lengths), heads, head_dim)
    assert first.shape == (sum(n > 0 for n in lengths), heads, head_dim)
    start, row = 0, 0
    for n in lengths:
        one = slice(start, start + n)  # this sequence: (n, heads, head_dim) -> (heads, n, d)
        expected = attention(q[one].transpose(0, 1), k[one].transpose(0, 1),
                             v[one].transpose(0, 1)).transpose(0, 1)  # (n, heads, head_dim)
        torch.testing.assert_close(got[one], expected, atol=1e-6, rtol=1e-5)
        if n:
            torch.testing.assert_close(first[row], expected[0], atol=1e-6, rtol=1e-5)
            row += 1
        start += n


@settings(deadline=None, max_examples=20)
@given(lengths=st.lists(st.integers(0, 9), min_size=1, max_size=5), first_only=st.booleans(),
       p=st.sampled_from([0.1, 0.5]), seed=st.integers(0, 99))
def test_varlen_attention_with_dropout_is_the_plain_formula_per_sequence(lengths, first_only,
                                                                          p, seed):
    """With dropout, each sequence draws its mask in turn: from the same seed, the plain formula
    with dropout on each sequence alone, through autograd, gives the same outputs and the same
    gradients as the hand-written backward (atol 1e-6)."""
    gen = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(sum(lengths), 2, 4, generator=gen).requires_grad_() for _ in range(3))
    torch.manual_seed(seed)
    got = varlen_attention(q, k, v, lengths, dropout_p=p, first_only=first_only)
    torch.manual_seed(seed)
    expected, start = [], 0
    for n in lengths:
        qi, ki, vi = (t[start:start + n].transpose(0, 1)[None] for t in (q, k, v))
        start += n
        if n:
            y = attention(qi[:, :, :1] if first_only else qi, ki, vi, dropout_p=p)
            expected.append(y[0].transpose(0, 1))
    expected = torch.cat(expected) if expected else got[:0]
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-5)
    if not any(lengths):  # every sequence empty: no output depends on q, k, v
        return
    dy = torch.randn(got.shape, generator=gen)
    grads = torch.autograd.grad(got, (q, k, v), dy)
    for g, e in zip(grads, torch.autograd.grad(expected, (q, k, v), dy), strict=True):
        torch.testing.assert_close(g, e, atol=1e-6, rtol=1e-5)


def test_varlen_attention_with_dropout_under_bf16_autocast_runs_in_float32():
    """Under autocast the dropout path attends in float32 (SDPA's CPU fallback does too) and
    hands back the input's dtype; its gradients reach bf16 inputs. float64 attends in float64."""
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(7, 2, 4, generator=gen).bfloat16().requires_grad_() for _ in range(3))
    torch.manual_seed(0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = varlen_attention(q, k, v, [3, 4], dropout_p=0.2)
    torch.manual_seed(0)
    expected = varlen_attention(q.float(), k.float(), v.float(), [3, 4], dropout_p=0.2)
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got, expected.bfloat16())
    got.float().sum().backward()
    assert all(t.grad is not None and t.grad.dtype == torch.bfloat16 for t in (q, k, v))
    # float64 stays float64: only reduced precision is upcast.
    q64, k64, v64 = (t.detach().double() for t in (q, k, v))
    torch.manual_seed(0)
    got64 = varlen_attention(q64, k64, v64, [3, 4], dropout_p=0.2)
    torch.manual_seed(0)
    plain = [attention(*(t[s].transpose(0, 1) for t in (q64, k64, v64)), dropout_p=0.2)
             for s in (slice(0, 3), slice(3, 7))]
    assert got64.dtype == torch.float64
    torch.testing.assert_close(got64, torch.cat([y.transpose(0, 1) for y in plain]),
                               atol=1e-12, rtol=1e-12)


@settings(deadline=None, max_examples=30)
@given(p=st.floats(0.02, 0.98), shape=st.sampled_from([(4000,), (30, 20, 9)]),
       dtype=st.sampled_from([torch.float32, torch.bfloat16]), seed=st.integers(0, 2**31))
def test_dropout_is_f_dropouts_distribution(p, shape, dtype, seed):
    """minift's dropout draws its mask differently from F.dropout; what must hold is the
    distribution: each element kept with probability 1 - p (the keep rate within 6 standard
    deviations of a binomial, for both), kept ones scaled by 1 / (1 - p), and the gradient the
    same mask and scale."""
    torch.manual_seed(seed)
    x = (torch.rand(shape) + 0.5).to(dtype).requires_grad_()  # no zeros: 0 means dropped
    n = x.numel()
    for y in (dropout(x, p), torch.nn.functional.dropout(x, p)):  # ours, then the reference
        kept = y != 0
        assert abs(kept.double().mean().item() - (1 - p)) <= 6 * math.sqrt(p * (1 - p) / n)
        assert y.dtype == dtype
        torch.testing.assert_close(y[kept], x[kept] / (1 - p))
        x.grad = None
        g = torch.randn(shape).to(dtype)
        y.backward(g)
        torch.testing.assert_close(x.grad, g * kept / (1 - p))
    assert dropout(x, p, training=False) is x and dropout(x, 0.0) is x
    assert not dropout(x, 1.0).any()


@pytest.mark.parametrize("per_sequence", [True, False])
def test_all_padding_row_stays_finite(per_sequence):
    model = BertModel(BertConfig(vocab_size=20, hidden_size=8, num_hidden_layers=2,
                                 num_attention_heads=2, intermediate_size=16)).eval()
    model.per_sequence_attention = per_sequence
    ids = torch.randint(0, 20, (2, 5))
    mask = torch.tensor([[1, 1, 1, 0, 0], [0, 0, 0, 0, 0]])
    out = model(ids, mask)
    assert torch.isfinite(out.last_hidden_state).all()
    assert torch.isfinite(out.pooler_output).all()
    assert torch.equal(mean_pooling(out.last_hidden_state, mask)[1], torch.zeros(8))


def test_config_round_trips_through_transformers():
    ours = BertConfig(vocab_size=99, hidden_size=12, num_hidden_layers=2, num_attention_heads=3,
                      intermediate_size=20, max_position_embeddings=33, type_vocab_size=3,
                      layer_norm_eps=1e-7, pad_token_id=4)
    theirs = transformers.BertConfig(**ours.to_dict())
    assert BertConfig.from_dict(theirs.to_dict()) == ours


@pytest.mark.parametrize(
    "bad, key",
    [
        ({"position_embedding_type": "relative_key"}, "position_embedding_type"),
        ({"hidden_act": "gelu_new"}, "hidden_act"),
        ({"hidden_act": "relu"}, "hidden_act"),
        ({"hidden_size": 10, "num_attention_heads": 3}, "divisible"),
        ({"model_type": "roberta"}, "model_type"),
        ({"is_decoder": True}, "is_decoder"),
        ({"vocab_size": 0}, "vocab_size"),
        ({"hidden_dropout_prob": "0.1"}, "hidden_dropout_prob"),
        ({"layer_norm_eps": 0}, "layer_norm_eps"),
    ],
)
def test_unsupported_config_is_refused(bad, key):
    with pytest.raises(ConfigError, match=key):
        BertConfig.from_dict(bad, source="x/config.json")


def test_sequence_longer_than_positions_is_refused():
    model = BertModel(BertConfig(vocab_size=10, hidden_size=4, num_hidden_layers=1,
                                 num_attention_heads=1, intermediate_size=4,
                                 max_position_embeddings=8))
    with pytest.raises(ValueError, match="max_position_embeddings"):
        model(torch.zeros(1, 9, dtype=torch.long))


# ---- the published checkpoint on real sentences ----------------------------------------------


@pytest.fixture(scope="module")
def sst2_sentences(data_dir):
    with open(data_dir / "sst2" / "dev.tsv", encoding="utf-8") as f:
        rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    return [row["sentence"] for row in rows[:300]]


@pytest.fixture(scope="module")
def minilm(minilm_dir):
    return BertModel.from_pretrained(minilm_dir).eval(), Tokenizer.from_pretrained(minilm_dir)


@torch.no_grad()
def test_published_checkpoint_matches_transformers(minilm, minilm_dir, sst2_sentences):
    model, tokenizer = minilm
    hf = transformers.BertModel.from_pretrained(minilm_dir).eval()
    worst = 0.0
    for start in range(0, len(sst2_sentences), 50):
        enc = tokenizer(sst2_sentences[start : start + 50], max_length=128)
        ours = model(enc.input_ids, enc.attention_mask, enc.token_type_ids)
        ref = hf(input_ids=enc.input_ids, attention_mask=enc.attention_mask,
                 token_type_ids=enc.token_type_ids)
        real = enc.attention_mask.bool()
        worst = max(worst,
                    (ours.last_hidden_state - ref.last_hidden_state)[real].abs().max().item(),
                    (ours.pooler_output - ref.pooler_output).abs().max().item())
    assert worst <= 1e-4, f"max abs difference {worst:.2e}"


def test_sentence_embeddings_match_sentence_transformers(minilm, minilm_dir, sst2_sentences):
    from sentence_transformers import SentenceTransformer

    model, tokenizer = minilm
    reference = SentenceTransformer(str(minilm_dir), device="cpu")
    ref = torch.as_tensor(reference.encode(sst2_sentences, batch_size=32,
                                           convert_to_numpy=True))
    ours = encode(model, tokenizer, sst2_sentences, batch_size=32,
                  max_length=reference.max_seq_length)
    cosine = torch.nn.functional.cosine_similarity(ours, ref, dim=-1)
    assert cosine.min().item() >= 0.99999, f"lowest cosine {cosine.min().item():.7f}"
    torch.testing.assert_close(ours.norm(dim=-1), torch.ones(len(ours)), atol=1e-5, rtol=0)
