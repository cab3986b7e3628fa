"""The fast model (padding.py, kernels.py swapped in by ``speed_up``) against the textbook
model.py: outputs and gradients, padded batches, the first token alone, no-grad forms, activation
checkpointing; and attention per packed sequence against the plain formula.

Tolerances: fp32, atol 1e-5 on random tiny models (outputs and gradients); dropout off where two
runs are compared, since the fast model draws its masks differently (the distribution is held
to F.dropout's in test_cpu_kernels.py).
"""

import copy
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from test_model import build_pair, tiny_setups

from minift.core.model import BertConfig, BertModel, attention, set_activation_checkpointing
from minift.core.sentence import mean_pooling
from minift.fast import cpu_kernels as kernels
from minift.fast.unpad import (
    FastBertModel,
    FastBlock,
    FastFeedForward,
    FastSelfAttention,
    Unpadding,
    speed_up,
    varlen_attention,
)
from minift.tasks.classify import SequenceClassifier
from minift.tasks.mlm import MaskedLM


def fast(model, **options):
    """``speed_up`` with F.linear: these tests hold the padding machinery to the textbook
    (the oneDNN linear is held to F.linear in test_cpu_kernels.py)."""
    return speed_up(model, onednn=False, **options)


@settings(deadline=None, max_examples=40)
@given(setup=tiny_setups(), unpad=st.sampled_from([None, True, False]),
       per_sequence=st.sampled_from([None, True, False]), train=st.booleans(),
       first_only=st.booleans(), onednn=st.booleans())
def test_fast_model_equals_textbook(setup, unpad, per_sequence, train, first_only, onednn):
    """The same parameters through ``speed_up``: the outputs at real positions, the pooler where
    position 0 is real, and every gradient equal the textbook's (atol 1e-5, dropout off), for
    either path, either attention, with and without the first-token shortcut and the oneDNN
    linear."""
    config, input_ids, mask, token_type_ids, seed = setup
    torch.manual_seed(seed)
    textbook = BertModel(BertConfig(**config, hidden_dropout_prob=0.0,
                                    attention_probs_dropout_prob=0.0)).train(train)
    faster = speed_up(copy.deepcopy(textbook), onednn=onednn and kernels.onednn_available(),
                      unpad=unpad, per_sequence=per_sequence)
    assert faster.state_dict().keys() == textbook.state_dict().keys()
    real = mask.bool() if not first_only else mask[:, :1].bool()
    first_real = mask[:, 0].bool()
    w = torch.randn(*input_ids.shape, config["hidden_size"],
                    generator=torch.Generator().manual_seed(seed))
    runs = []
    for model in (textbook, faster):
        out = model(input_ids, mask, token_type_ids, first_token_only=first_only)
        hidden = out.last_hidden_state
        ((hidden * w[:, : hidden.size(1)])[real].mean()
         + out.pooler_output[first_real].sum()).backward()
        runs.append((hidden.detach(), out.pooler_output.detach(),
                     {n: p.grad for n, p in model.named_parameters() if p.grad is not None}))
    (want, want_pooled, want_grads), (got, got_pooled, got_grads) = runs
    assert got.shape == want.shape
    torch.testing.assert_close(got[real], want[real], atol=1e-5, rtol=0)
    torch.testing.assert_close(got_pooled[first_real], want_pooled[first_real], atol=1e-5, rtol=0)
    assert got_grads.keys() == want_grads.keys()
    for name, grad in want_grads.items():
        torch.testing.assert_close(got_grads[name], grad, atol=1e-5, rtol=1e-5, msg=name)


def test_speed_up_swaps_classes_and_keeps_the_parameters():
    """A module swap: every textbook module becomes its fast subclass, the head's layers too,
    and every parameter is the same tensor as before (a tied decoder stays tied). Calling it
    again with ``onednn=False`` puts ``nn.Linear`` back; a fast model is still a BertModel."""
    model = MaskedLM(BertConfig(vocab_size=30, hidden_size=8, num_hidden_layers=2,
                                num_attention_heads=2, intermediate_size=16))
    before = {name: p for name, p in model.named_parameters()}
    speed_up(model, onednn=True)
    assert type(model.bert) is FastBertModel and isinstance(model.bert, BertModel)
    assert all(type(b) is FastBlock for b in model.bert.layers)
    assert type(model.bert.layers[0].attention) is FastSelfAttention
    assert type(model.bert.layers[0].ffn) is FastFeedForward
    assert type(model.bert.embeddings.dropout) is kernels.Dropout
    assert type(model.decoder) is kernels.Linear and type(model.transform) is kernels.Linear
    assert {name: p for name, p in model.named_parameters()} == before  # the same objects
    assert model.decoder.weight is model.bert.embeddings.word_embeddings.weight
    speed_up(model, onednn=False, unpad=False)
    assert type(model.decoder) is torch.nn.Linear and model.bert.unpad is False
    classifier = speed_up(SequenceClassifier(model.config, 3), onednn=False)
    assert type(classifier.dropout) is kernels.Dropout


def test_speed_up_decides_onednn_by_measuring(monkeypatch):
    """With ``onednn`` unset, the one-time measurement decides, whichever way it went."""
    config = BertConfig(vocab_size=30, hidden_size=8, num_hidden_layers=1,
                        num_attention_heads=2, intermediate_size=16)
    for faster, expected in ((True, kernels.Linear), (False, torch.nn.Linear)):
        monkeypatch.setattr(kernels, "onednn_is_faster", lambda faster=faster: faster)
        model = speed_up(BertModel(config))
        assert type(model.pooler.dense) is expected


@settings(deadline=None, max_examples=30)
@given(setup=tiny_setups(), unpad=st.booleans())
def test_no_gradient_forms_match(setup, unpad):
    """Where no gradient flows, the feed-forward runs GELU in place. Inference outputs still
    match transformers (atol 1e-5), and frozen lower blocks (no gradient through their GELU)
    leave the last block's gradients exactly as without freezing."""
    config, input_ids, mask, token_type_ids, seed = setup
    hf, ours = build_pair(config, seed, fast=True)
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


@settings(deadline=None, max_examples=25)
@given(data=st.data(), seq=st.integers(1, 12), per_sequence=st.booleans())
def test_unpadding_from_host_lengths_equals_from_the_mask(data, seq, per_sequence):
    """Positions, lengths and offsets built from host lengths on the device (no read) are those
    the mask alone gives (nonzero, tolist): exactly equal, rows of 0 and of seq tokens included.
    Lengths that do not fit the batch are refused."""
    lengths = data.draw(st.lists(st.integers(0, seq), min_size=1, max_size=5))
    mask = (torch.arange(seq) < torch.tensor(lengths)[:, None]).long()
    ours = Unpadding.from_lengths(mask, lengths, per_sequence)
    reference = Unpadding.from_mask(mask, per_sequence)
    assert torch.equal(ours.indices, reference.indices)
    assert (ours.batch, ours.seq, ours.lengths, ours.per_sequence) == (
        reference.batch, reference.seq, reference.lengths, reference.per_sequence)
    assert torch.equal(ours.starts(), reference.starts())
    for bad in (lengths + [0], [seq + 1] * len(lengths)):
        with pytest.raises(ValueError, match="lengths must give"):
            Unpadding.from_lengths(mask, bad)


@settings(deadline=None, max_examples=20)
@given(setup=tiny_setups(), data=st.data(), per_sequence=st.booleans(),
       first_token_only=st.booleans())
def test_fast_model_with_host_lengths_equals_the_textbook(setup, data, per_sequence,
                                                           first_token_only):
    """Right-padded rows with their host-counted ``lengths``: outputs and gradients equal the
    textbook model's at real positions (fp32, atol 1e-5); dropout off."""
    config, input_ids, _, token_type_ids, seed = setup
    batch, seq = input_ids.shape
    lengths = data.draw(st.lists(st.integers(0, seq), min_size=batch, max_size=batch))
    mask = (torch.arange(seq) < torch.tensor(lengths)[:, None]).long()
    config = BertConfig(**config, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    torch.manual_seed(seed)
    textbook = BertModel(config)
    ours = fast(copy.deepcopy(textbook), unpad=True, per_sequence=per_sequence)
    real = mask.bool()[:, :1] if first_token_only else mask.bool()
    results = []
    for model, extra in ((textbook, {}), (ours, {"lengths": lengths})):
        out = model(input_ids, mask, token_type_ids, first_token_only=first_token_only, **extra)
        w = torch.randn(out.last_hidden_state.shape, generator=torch.Generator().manual_seed(seed))
        (out.last_hidden_state * w)[real].sum().backward()
        results.append((out.last_hidden_state.detach(), {
            n: torch.zeros_like(p) if p.grad is None else p.grad for n, p in model.named_parameters()
        }))
    (expected, expected_grads), (got, got_grads) = results
    torch.testing.assert_close(got[real], expected[real], atol=1e-5, rtol=0)
    for name, grad in got_grads.items():
        torch.testing.assert_close(grad, expected_grads[name], atol=1e-5, rtol=1e-5, msg=name)
    for unpad in (True, False):  # lengths of another batch: refused on either path
        with pytest.raises(ValueError, match="lengths must give"):
            ours(input_ids, mask, token_type_ids, unpad=unpad, lengths=lengths + [1])


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
    model = fast(BertModel(BertConfig(**config, hidden_dropout_prob=0.0,
                                      attention_probs_dropout_prob=0.0)), per_sequence=per_sequence
                 ).train(train)
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
    """On a CPU a padded batch runs unpadded by default; ``speed_up(..., unpad=)`` and the
    ``unpad`` argument override it (the argument wins). Bitwise: the same path runs the same code."""
    torch.manual_seed(0)
    model = fast(BertModel(BertConfig(vocab_size=50, hidden_size=8, num_hidden_layers=2,
                                      num_attention_heads=2, intermediate_size=16))).eval()
    ids = torch.randint(0, 50, (3, 7))
    mask = torch.ones(3, 7, dtype=torch.long)
    mask[0, 4:] = 0
    mask[2, 2:] = 0

    def run(**kwargs):
        return model(ids, mask, **kwargs).last_hidden_state

    unpadded, padded = run(unpad=True), run(unpad=False)
    assert not torch.equal(unpadded, padded)  # zeros vs computed padding: the paths differ
    assert torch.equal(run(), unpadded)
    speed_up(model, onednn=False, unpad=False)
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
    model = fast(BertModel(BertConfig(**config, hidden_dropout_prob=0.0,
                                      attention_probs_dropout_prob=0.0)), per_sequence=per_sequence
                 ).train(train)
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
@given(setup=tiny_setups(), unpad=st.sampled_from([None, True, False]))
def test_activation_checkpointing_gives_the_same_gradients(setup, unpad):
    """Recomputing each block in backward changes nothing: same outputs and gradients (atol
    1e-5), dropout on (the re-run replays the saved RNG state); each block runs twice. None:
    the textbook model; True, False: the fast one, unpadded or padded."""
    config, input_ids, mask, token_type_ids, seed = setup
    torch.manual_seed(seed)
    model = BertModel(BertConfig(**config, hidden_dropout_prob=0.1,
                                 attention_probs_dropout_prob=0.1)).train()
    if unpad is not None:
        fast(model, unpad=unpad)
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
        out = model(input_ids, mask, token_type_ids)
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
        model.eval()(input_ids, mask, token_type_ids)
    assert len(calls) == config["num_hidden_layers"]


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


def attention_kernels_dropout(q, k, v, p):
    """``model.attention`` with dropout drawn by ``kernels.dropout``, as the fast path draws it:
    same seed, same masks."""
    probs = (q @ k.transpose(-2, -1) / math.sqrt(q.size(-1))).softmax(dim=-1)
    return kernels.dropout(probs, p) @ v


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
            y = attention_kernels_dropout(qi[:, :, :1] if first_only else qi, ki, vi, p)
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
    plain = [attention_kernels_dropout(*(t[s].transpose(0, 1) for t in (q64, k64, v64)), 0.2)
             for s in (slice(0, 3), slice(3, 7))]
    assert got64.dtype == torch.float64
    torch.testing.assert_close(got64, torch.cat([y.transpose(0, 1) for y in plain]),
                               atol=1e-12, rtol=1e-12)




@pytest.mark.parametrize("per_sequence", [None, True, False], ids=["textbook", "varlen", "repad"])
def test_all_padding_row_stays_finite(per_sequence):
    """A sequence with no real token: finite outputs, and zeros after mean pooling, on the
    textbook model and on both unpadded forms."""
    model = BertModel(BertConfig(vocab_size=20, hidden_size=8, num_hidden_layers=2,
                                 num_attention_heads=2, intermediate_size=16)).eval()
    if per_sequence is not None:
        fast(model, per_sequence=per_sequence)
    ids = torch.randint(0, 20, (2, 5))
    mask = torch.tensor([[1, 1, 1, 0, 0], [0, 0, 0, 0, 0]])
    out = model(ids, mask)
    assert torch.isfinite(out.last_hidden_state).all()
    assert torch.isfinite(out.pooler_output).all()
    assert torch.equal(mean_pooling(out.last_hidden_state, mask)[1], torch.zeros(8))
