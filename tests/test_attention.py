"""The packed attention paths (minift/fast/attention.py) against the textbook attention.

Every path that runs on a CPU (the per-sequence loop, SDPA on jagged nested tensors, the re-padded
batch with its boolean mask) is held to ``model.attention`` with the additive mask on the padded
batch: outputs at the real positions and the gradients of q, k and v, for random padding patterns
(holes, left padding, sequences of one token, rows with no real token at all), for every token
and for the first token alone. Tolerances: float32, atol and rtol 1e-5; bfloat16 inputs against
the float32 formula on the same (rounded) inputs, atol and rtol 1.5e-2 on outputs and 3e-2 on
gradients (bfloat16 keeps 8 bits of mantissa: 2**-8 = 3.9e-3 relative per rounding, and a
gradient passes through several roundings; 150 random cases used at most 35% of either).
The varlen path's kernel needs CUDA; its plumbing is checked here against a CPU stand-in that
follows torch's documentation, and tests/test_cuda.py holds every path, varlen included, to
the textbook on a GPU with the same helpers.

Then the choice: ``choose_path`` picks the documented path for each device, dtype, dropout and
torch (availability monkeypatched), forcing a path that cannot run says why, the per-batch
layout is built once per batch, and the padded model builds its additive mask in autocast's
dtype once instead of casting it in every layer.
"""

import copy
import importlib.util

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from test_model import tiny_setups
from torch.utils._python_dispatch import TorchDispatchMode

from minift.core.model import BertConfig, BertModel, additive_mask, attention
from minift.fast import attention as packed
from minift.fast.unpad import Unpadding, speed_up, varlen_attention

CPU_PATHS = ("per_sequence", "nested", "padded")
FP32_TOL = dict(atol=1e-5, rtol=1e-5)
BF16_TOL = dict(atol=1.5e-2, rtol=1.5e-2)
BF16_GRAD_TOL = dict(atol=3e-2, rtol=3e-2)


# --- shared with tests/test_cuda.py -----------------------------------------------------------


@st.composite
def padding_patterns(draw, max_batch: int = 4, max_len: int = 10):
    """A (batch, seq) 0/1 mask: each row's number of real tokens (0 and 1 included), at the
    start of the row or scattered through it (holes, left padding)."""
    lengths = draw(st.lists(st.integers(0, max_len), min_size=1, max_size=max_batch))
    if not any(lengths):  # one real token somewhere (a batch of none: its own test below)
        lengths[0] = 1
    seq = max(max(lengths), 1) + draw(st.integers(0, 2))
    scatter = draw(st.booleans())
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31)))
    mask = torch.zeros(len(lengths), seq, dtype=torch.long)
    for row, n in enumerate(lengths):
        where = torch.randperm(seq, generator=gen)[:n] if scatter else torch.arange(n)
        mask[row, where] = 1
    return mask


def packed_inputs(mask: torch.Tensor, heads: int, head_dim: int, seed: int,
                  dtype: torch.dtype = torch.float32, device: str = "cpu"):
    """The batch's ``Unpadding``, q, k, v of its real tokens (tokens, heads, head_dim) and a
    random weight for the loss, all on ``device``."""
    mask = mask.to(device)
    unpadding = Unpadding.from_mask(mask)
    gen = torch.Generator().manual_seed(seed)
    tokens = len(unpadding.indices)
    q, k, v, w = (torch.randn(tokens, heads, head_dim, generator=gen).to(device, dtype)
                  for _ in range(4))
    return unpadding, mask, (q, k, v), w


def first_tokens(unpadding: Unpadding) -> torch.Tensor:
    """The packed rows of each non-empty sequence's first token."""
    rows, start = [], 0
    for n in unpadding.lengths:
        if n:
            rows.append(start)
        start += n
    return torch.tensor(rows, dtype=torch.long, device=unpadding.indices.device)


def textbook(q, k, v, unpadding: Unpadding, mask: torch.Tensor, first_only: bool):
    """``model.attention`` with the additive mask on the re-padded batch, in q's dtype; the
    real tokens (or the first of each non-empty sequence) picked out after."""
    qp, kp, vp = (unpadding.pad(t).transpose(1, 2) for t in (q, k, v))  # (batch, heads, seq, d)
    y = attention(qp, kp, vp, additive_mask(mask, qp.dtype)).transpose(1, 2)
    y = unpadding.unpad(y)  # (tokens, heads, head_dim)
    return y[first_tokens(unpadding)] if first_only else y


def run_path(path: str, q, k, v, unpadding: Unpadding, first_only: bool):
    if path == "per_sequence":
        return varlen_attention(q, k, v, unpadding.lengths, first_only=first_only)
    return packed.attend(path, q, k, v, unpadding, first_only=first_only)


def outputs_and_grads(fn, qkv, w):
    """fn(q, k, v) on fresh leaves; its output and the gradients of sum(output * w)."""
    leaves = [t.detach().clone().requires_grad_(True) for t in qkv]
    out = fn(*leaves)
    (out.float() * w[: len(out)].float()).sum().backward()
    return out.detach(), [t.grad for t in leaves]


def check_path(path: str, mask, heads, head_dim, seed, first_only, dtype, device, tol,
               grad_tol):
    """The path's outputs and q, k, v gradients against the textbook formula in float32 on the
    same inputs (rounded to ``dtype`` first)."""
    unpadding, mask, qkv, w = packed_inputs(mask, heads, head_dim, seed, dtype, device)
    got, got_grads = outputs_and_grads(
        lambda q, k, v: run_path(path, q, k, v, unpadding, first_only), qkv, w)
    want, want_grads = outputs_and_grads(
        lambda q, k, v: textbook(q, k, v, unpadding, mask, first_only),
        [t.float() for t in qkv], w)
    assert got.dtype == dtype and got.shape == want.shape
    torch.testing.assert_close(got.float(), want, **tol)
    for name, g, r in zip("qkv", got_grads, want_grads, strict=True):
        torch.testing.assert_close(g.float(), r, **grad_tol, msg=lambda m, n=name: f"d{n}: {m}")


# --- the CPU paths against the textbook ---------------------------------------------------------


@settings(deadline=None, max_examples=25)
@given(mask=padding_patterns(), path=st.sampled_from(CPU_PATHS), heads=st.integers(1, 3),
       head_dim=st.sampled_from([4, 8]), first_only=st.booleans(), seed=st.integers(0, 2**31))
def test_cpu_paths_equal_textbook_attention_fp32(mask, path, heads, head_dim, first_only, seed):
    """Each CPU path: outputs and q, k, v gradients equal the textbook's (float32, atol and rtol
    1e-5), every token or the first alone, rows of 0, 1 or many real tokens, anywhere in the row."""
    check_path(path, mask, heads, head_dim, seed, first_only, torch.float32, "cpu", FP32_TOL,
               FP32_TOL)


@settings(deadline=None, max_examples=15)
@given(mask=padding_patterns(), path=st.sampled_from(CPU_PATHS), first_only=st.booleans(),
       seed=st.integers(0, 2**31))
def test_cpu_paths_in_bf16_stay_near_the_fp32_formula(mask, path, first_only, seed):
    """bfloat16 q, k, v through each CPU path: bfloat16 out, within atol/rtol 1.5e-2 of the
    float32 formula on the same inputs (gradients 3e-2)."""
    check_path(path, mask, 2, 8, seed, first_only, torch.bfloat16, "cpu", BF16_TOL, BF16_GRAD_TOL)


@settings(deadline=None, max_examples=15)
@given(setup=tiny_setups(), path=st.sampled_from((None, *CPU_PATHS)), first_only=st.booleans())
def test_fast_model_on_each_cpu_path_equals_textbook_model(setup, path, first_only):
    """The whole fast model, unpadded, with its attention forced onto each CPU path (None: the
    default choice): outputs at real positions and every parameter's gradient equal the
    textbook model's (float32, atol 1e-5; dropout off)."""
    config, input_ids, mask, token_type_ids, seed = setup
    torch.manual_seed(seed)
    slow = BertModel(BertConfig(**config, hidden_dropout_prob=0.0,
                                attention_probs_dropout_prob=0.0)).train()
    fast = speed_up(copy.deepcopy(slow), onednn=False, unpad=True, attention_path=path)
    real = mask[:, :1].bool() if first_only else mask.bool()
    w = torch.randn(*input_ids.shape, config["hidden_size"],
                    generator=torch.Generator().manual_seed(seed))
    runs = []
    for model in (slow, fast):
        hidden = model(input_ids, mask, token_type_ids,
                       first_token_only=first_only).last_hidden_state
        (hidden * w[:, : hidden.size(1)])[real].sum().backward()
        runs.append((hidden.detach(), {n: p.grad for n, p in model.named_parameters()
                                       if p.grad is not None}))
    (want, want_grads), (got, got_grads) = runs
    torch.testing.assert_close(got[real], want[real], atol=1e-5, rtol=0)
    assert got_grads.keys() == want_grads.keys()
    for name, grad in want_grads.items():
        torch.testing.assert_close(got_grads[name], grad, atol=1e-5, rtol=1e-5, msg=name)


def documented_varlen_attn(q, k, v, cu_seq_q, cu_seq_k, max_q, max_k):
    """``torch.nn.attention.varlen.varlen_attn`` as its documentation states it, for a CPU:
    int32 offsets (sequences + 1,) that end at the token counts, the longest lengths, and
    attention of each query sequence over its key sequence, scale 1/sqrt(head_dim)."""
    assert cu_seq_q.dtype == cu_seq_k.dtype == torch.int32 and len(cu_seq_q) == len(cu_seq_k)
    bq, bk = cu_seq_q.tolist(), cu_seq_k.tolist()
    assert bq[0] == bk[0] == 0 and bq[-1] == len(q) and bk[-1] == len(k) == len(v)
    assert max_q == max(b - a for a, b in zip(bq, bq[1:], strict=False))
    assert max_k == max(b - a for a, b in zip(bk, bk[1:], strict=False))
    outputs = []
    for a, b, c, d in zip(bq, bq[1:], bk, bk[1:], strict=False):
        qi, ki, vi = (t.transpose(0, 1) for t in (q[a:b], k[c:d], v[c:d]))  # (heads, len, d)
        outputs.append(F.scaled_dot_product_attention(qi, ki, vi).transpose(0, 1))
    return torch.cat(outputs)


@settings(deadline=None, max_examples=15)
@given(mask=padding_patterns(), first_only=st.booleans(), seed=st.integers(0, 2**31))
def test_varlen_path_calls_the_kernel_as_documented(mask, first_only, seed):
    """The varlen path's plumbing on a CPU: with ``documented_varlen_attn`` in place of torch's
    CUDA kernel, the offsets, lengths and first-token queries it passes (by position) give the
    textbook's outputs and gradients (float32, atol and rtol 1e-5). The kernel itself is held
    to the textbook on a GPU, in tests/test_cuda.py."""
    why_not = packed.why_not
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(packed, "varlen_kernel", lambda: documented_varlen_attn)
        patch.setattr(packed, "why_not",
                      lambda path, *args: None if path == "varlen" else why_not(path, *args))
        check_path("varlen", mask, 2, 8, seed, first_only, torch.float32, "cpu", FP32_TOL,
                   FP32_TOL)


# --- the choice ---------------------------------------------------------------------------------

CUDA, CPU = torch.device("cuda"), torch.device("cpu")
BF16, FP16, FP32 = torch.bfloat16, torch.float16, torch.float32
# (what this torch and GPU have, device, dtype, dropout, head size, per_sequence) -> the path.
# "2.11": varlen and nested tensors; "2.9": nested only; "2.2": neither; "sm75": a pre-A100 GPU.
CHOICES = [
    ("2.11", CPU, FP32, 0.1, 64, True, "per_sequence"),  # CPU default: the loop
    ("2.11", CPU, BF16, 0.0, 64, False, "padded"),  # CPU under torch.compile
    ("2.11", CUDA, BF16, 0.0, 64, False, "varlen"),  # GPU inference in bf16
    ("2.11", CUDA, FP16, 0.0, 32, False, "varlen"),
    ("2.11", CUDA, BF16, 0.1, 64, False, "nested"),  # training with attention dropout
    ("2.11", CUDA, FP32, 0.0, 64, False, "nested"),  # varlen takes no fp32
    ("2.11", CUDA, BF16, 0.0, 4, False, "nested"),  # a head size flash does not take
    ("2.11", CUDA, BF16, 0.0, 64, True, "per_sequence"),  # forced by per_sequence_attention
    ("sm75", CUDA, BF16, 0.0, 64, False, "nested"),
    ("2.9", CUDA, BF16, 0.0, 64, False, "nested"),
    ("2.2", CUDA, BF16, 0.0, 64, False, "padded"),
    ("2.2", CPU, FP32, 0.0, 64, True, "per_sequence"),
]


@pytest.mark.parametrize("torch_has, device, dtype, dropout_p, head_dim, per_sequence, path",
                         CHOICES, ids=[f"{c[0]}-{c[1].type}-{c[2]}-p{c[3]}-d{c[4]}-seq{c[5]}"
                                       for c in CHOICES])
def test_choose_path_picks_the_documented_path(monkeypatch, torch_has, device, dtype,
                                               dropout_p, head_dim, per_sequence, path):
    """``choose_path`` for each (torch, device, dtype, dropout, head size) in ``CHOICES``: the
    table of its docstring, row by row, with what torch and the GPU offer monkeypatched."""
    kernel = (lambda *args: None) if torch_has in ("2.11", "sm75") else None
    monkeypatch.setattr(packed, "varlen_kernel", lambda: kernel)
    monkeypatch.setattr(packed, "nested_available", lambda: torch_has != "2.2")
    monkeypatch.setattr(packed, "flash_capable", lambda device: torch_has != "sm75")
    assert packed.choose_path(device, dtype, dropout_p, head_dim, per_sequence) == path


def test_the_probes_see_this_torch():
    """The probes answer for the installed torch: ``varlen_kernel`` finds
    ``torch.nn.attention.varlen`` exactly where it is importable, nested tensors are here."""
    here = importlib.util.find_spec("torch.nn.attention.varlen") is not None
    assert (packed.varlen_kernel() is not None) == here
    assert packed.nested_available() == hasattr(torch.nested, "nested_tensor_from_jagged")


def test_a_path_that_cannot_run_says_why():
    """Forcing varlen on a CPU, or naming no path at all, is a ValueError that says why; so is
    an unknown name given to ``speed_up``."""
    unpadding, _, (q, k, v), _ = packed_inputs(torch.ones(2, 3, dtype=torch.long), 2, 8, 0)
    with pytest.raises(ValueError, match="varlen"):
        packed.attend("varlen", q, k, v, unpadding)
    with pytest.raises(ValueError, match="unknown attention path 'flash'"):
        packed.attend("flash", q, k, v, unpadding)
    with pytest.raises(ValueError, match="attention_path 'flash'"):
        speed_up(BertModel(BertConfig(hidden_size=8, num_attention_heads=2, num_hidden_layers=1,
                                      intermediate_size=8)), attention_path="flash")


@pytest.mark.parametrize("path", CPU_PATHS)
def test_a_batch_without_real_tokens_attends_to_nothing(path):
    """A batch whose every row is padding packs no token: each path returns (0, heads,
    head_dim), every token or the first alone."""
    unpadding, _, (q, k, v), _ = packed_inputs(torch.zeros(2, 3, dtype=torch.long), 2, 8, 0)
    for first_only in (False, True):
        assert run_path(path, q, k, v, unpadding, first_only).shape == (0, 2, 8)


def test_the_layout_is_built_once_per_batch(monkeypatch):
    """Three layers on the packed paths share one ``PackedLayout`` per batch: two forwards,
    two layouts."""
    built = []

    class Counted(packed.PackedLayout):
        def __init__(self, unpadding):
            built.append(unpadding)
            super().__init__(unpadding)

    monkeypatch.setattr(packed, "PackedLayout", Counted)
    torch.manual_seed(0)
    model = speed_up(BertModel(BertConfig(vocab_size=40, hidden_size=8, num_hidden_layers=3,
                                          num_attention_heads=2, intermediate_size=8)),
                     onednn=False, unpad=True, attention_path="padded").eval()
    ids = torch.randint(0, 40, (3, 6), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[0, 2:] = 0
    with torch.no_grad():
        model(ids, mask)
        model(ids, mask)
    assert len(built) == 2 and built[0] is not built[1]


class OpCounter(TorchDispatchMode):
    """Counts the aten operators that run, by name."""

    def __init__(self):
        super().__init__()
        self.counts: dict[str, int] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        self.counts[name] = self.counts.get(name, 0) + 1
        return func(*args, **(kwargs or {}))


def test_padded_model_under_autocast_casts_no_mask_per_layer():
    """Under bfloat16 autocast, the fast model on its padded path builds the additive mask in
    bfloat16 once, so no layer clamps it (the textbook model clamps and casts it in each of
    its 3 layers); both compute the same numbers (bitwise)."""
    torch.manual_seed(0)
    slow = BertModel(BertConfig(vocab_size=40, hidden_size=8, num_hidden_layers=3,
                                num_attention_heads=2, intermediate_size=8)).eval()
    fast = speed_up(copy.deepcopy(slow), onednn=False, unpad=False)
    ids = torch.randint(0, 40, (3, 6), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[0, 2:] = 0
    outputs, clamps = [], []
    for model in (slow, fast):
        counter = OpCounter()
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16), counter:
            outputs.append(model(ids, mask).last_hidden_state)
        clamps.append(counter.counts.get("clamp", 0))
    assert clamps == [3, 0]
    assert torch.equal(outputs[0], outputs[1])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert packed.compute_dtype("cpu", torch.float32) == torch.bfloat16
    assert packed.compute_dtype("cpu", torch.float32) == torch.float32
