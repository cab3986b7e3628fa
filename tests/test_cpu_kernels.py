"""The CPU kernels of kernels.py against torch's own: oneDNN's linear against F.linear
(outputs and gradients, torch's custom-op checks, torch.compile keeping the op), the measurement
that chooses it, and minift's dropout against F.dropout's distribution."""

import json
import math
import platform

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from minift.core.model import BertConfig, BertModel
from minift.fast import cpu_kernels as kernels
from minift.fast.cpu_kernels import dropout, linear
from minift.fast.unpad import speed_up


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
    nor with oneDNN disabled in torch: counted by wrapping the op it calls. The op itself
    passes torch's own checks of a custom op (schema, fake tensor, autograd registration:
    ``torch.library.opcheck``)."""
    import minift.fast.cpu_kernels as model_module

    if platform.machine().lower() not in ("x86_64", "amd64"):
        assert not model_module.onednn_available()
        pytest.skip("oneDNN's linear is used on x86-64 only; F.linear runs here")
    assert model_module.onednn_available()
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


def test_compiled_model_equals_eager_with_onednn_linear_in_the_graph():
    """torch.compile on the unpadded path, with the oneDNN linear layers inside the compiled
    graph (a custom op it calls as it is): outputs and gradients equal eager's (atol 1e-5)."""
    torch.manual_seed(0)
    model = BertModel(BertConfig(vocab_size=60, hidden_size=16, num_hidden_layers=2,
                                 num_attention_heads=2, intermediate_size=32,
                                 hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0),
                      add_pooling_layer=False)
    speed_up(model, onednn=kernels.onednn_available())
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
    expected = 6 * 2 if kernels.onednn_available() else 0  # six per block, on x86-64
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




def test_onednn_is_faster_measures_once(tmp_path, monkeypatch):
    """The choice is a timing, made once per process and then remembered (a bool, False
    wherever oneDNN's linear is not available)."""
    monkeypatch.setenv(kernels.CACHE_VARIABLE, str(tmp_path))
    monkeypatch.delenv(kernels.FORCE_VARIABLE, raising=False)
    kernels.onednn_is_faster.cache_clear()
    first = kernels.onednn_is_faster()
    assert isinstance(first, bool)
    assert kernels.onednn_is_faster.cache_info().misses == 1
    assert kernels.onednn_is_faster() is first
    assert kernels.onednn_is_faster.cache_info().hits == 1
    if not kernels.onednn_available():
        assert first is False


def test_the_choice_is_kept_per_machine_and_can_be_forced(tmp_path, monkeypatch):
    """Measured once per machine (the file), so every run there takes the same library;
    MINIFT_ONEDNN forces it; anything else in that variable is refused by name."""
    monkeypatch.setenv(kernels.CACHE_VARIABLE, str(tmp_path))
    monkeypatch.delenv(kernels.FORCE_VARIABLE, raising=False)
    monkeypatch.setattr(kernels, "onednn_available", lambda: True)
    measured = []
    monkeypatch.setattr(kernels, "_measure", lambda repeats: measured.append(1) or True)
    try:
        for _ in range(3):  # three "processes"
            kernels.onednn_is_faster.cache_clear()
            assert kernels.onednn_is_faster() is True
        assert len(measured) == 1
        assert list(json.loads((tmp_path / kernels.CHOICE_FILE).read_text()).values()) == [True]
        for value, expected in (("0", False), ("1", True)):
            monkeypatch.setenv(kernels.FORCE_VARIABLE, value)
            kernels.onednn_is_faster.cache_clear()
            assert kernels.onednn_is_faster() is expected
        monkeypatch.setenv(kernels.FORCE_VARIABLE, "yes")
        kernels.onednn_is_faster.cache_clear()
        with pytest.raises(ValueError, match="MINIFT_ONEDNN='yes'"):
            kernels.onednn_is_faster()
    finally:
        kernels.onednn_is_faster.cache_clear()
