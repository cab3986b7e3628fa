"""The CUDA paths: the same parity claims as on the CPU, on a GPU.

These tests need a CUDA device, so on a CPU-only machine (CI) pytest reports them as skipped,
never as passed. They run where a GPU is: `python -m pytest tests/test_cuda.py`. The CPU twins
of each claim live in test_model.py, test_unpad.py, test_attention.py, test_optim.py and
test_cuda_graphs.py and run everywhere.

TF32 stays off (torch's default for matmuls), so fp32 on the GPU is fp32 and the tolerances are
the CPU's: atol 1e-5 on random tiny models, 1e-4 on the published checkpoint.
"""

import pytest
import torch
import transformers
from hypothesis import given, settings
from hypothesis import strategies as st
from test_attention import BF16_GRAD_TOL, BF16_TOL, FP32_TOL, check_path, padding_patterns
from test_model import build_pair, tiny_setups

from minift.core.model import BertConfig, BertModel
from minift.core.optim import AdamW
from minift.data.batches import pad_to_bucket
from minift.data.tokenizer import Tokenizer
from minift.fast import attention as packed
from minift.fast.cuda_graphs import GraphedEncoder
from minift.fast.unpad import UNPAD_MIN_POSITIONS, speed_up, varlen_attention
from minift.hf.checkpoint import load_bert, split_hf_state_dict

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
CUDA = torch.device("cuda")


def on_cuda(*tensors: torch.Tensor) -> list[torch.Tensor]:
    return [t.to(CUDA) for t in tensors]


@settings(deadline=None, max_examples=30)
@given(setup=tiny_setups(), shape=st.sampled_from(["random", "single_token", "no_padding"]),
       per_sequence=st.sampled_from([None, True, False]))
def test_unpadded_path_equals_padded_path_on_cuda(setup, shape, per_sequence):
    """Outputs and gradients of the unpadded path (re-padded attention, the GPU default, or per
    sequence) equal the padded path's on the GPU (fp32, atol 1e-5)."""
    config, input_ids, mask, token_type_ids, seed = setup
    if shape == "single_token":
        mask = torch.zeros_like(mask)
        mask[:, 0] = 1
    elif shape == "no_padding":
        mask = torch.ones_like(mask)
    input_ids, mask, token_type_ids = on_cuda(input_ids, mask, token_type_ids)
    torch.manual_seed(seed)
    model = speed_up(BertModel(BertConfig(**config, hidden_dropout_prob=0.0,
                                          attention_probs_dropout_prob=0.0)),
                     per_sequence=per_sequence).to(CUDA).train()
    real = mask.bool()
    w = torch.randn(*input_ids.shape, config["hidden_size"],
                    generator=torch.Generator().manual_seed(seed)).to(CUDA)
    outs, grads = [], []
    for unpad in (False, True):
        model.zero_grad(set_to_none=True)
        out = model(input_ids, mask, token_type_ids, unpad=unpad)
        (out.last_hidden_state * w)[real].mean().backward()
        outs.append(out.last_hidden_state.detach())
        grads.append({n: torch.zeros_like(p) if p.grad is None else p.grad.clone()
                      for n, p in model.named_parameters()})
    torch.testing.assert_close(outs[1][real], outs[0][real], atol=1e-5, rtol=0)
    assert torch.equal(outs[1][~real], torch.zeros_like(outs[1][~real]))
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], atol=1e-5, rtol=1e-5,
                                   msg=name)


@settings(deadline=None, max_examples=20)
@given(setup=tiny_setups(), attn=st.sampled_from(["sdpa", "eager"]), fast=st.booleans())
def test_random_config_matches_transformers_on_cuda(setup, attn, fast):
    """minift (textbook or fast) and transformers, the same random weights, both on the GPU:
    real positions and every parameter's gradient agree (fp32, atol 1e-5)."""
    config, input_ids, mask, token_type_ids, seed = setup
    hf, ours = build_pair(config, seed, attn, fast=fast)
    hf, ours = hf.to(CUDA), ours.to(CUDA)
    input_ids, mask, token_type_ids = on_cuda(input_ids, mask, token_type_ids)
    ref = hf(input_ids=input_ids, attention_mask=mask, token_type_ids=token_type_ids)
    out = ours(input_ids, mask, token_type_ids)
    real = mask.bool()
    torch.testing.assert_close(out.last_hidden_state[real], ref.last_hidden_state[real],
                               atol=1e-5, rtol=0)
    w = torch.randn(ref.last_hidden_state.shape,
                    generator=torch.Generator().manual_seed(seed)).to(CUDA)
    (ref.last_hidden_state * w)[real].mean().backward()
    (out.last_hidden_state * w)[real].mean().backward()
    ref_grads, _, _ = split_hf_state_dict({n: p.grad for n, p in hf.named_parameters()
                                           if p.grad is not None})
    for name, p in ours.named_parameters():
        if name.startswith("pooler."):  # no loss through the pooler here
            continue
        torch.testing.assert_close(p.grad, ref_grads[name], atol=1e-5, rtol=1e-5, msg=name)


@settings(deadline=None, max_examples=20)
@given(lengths=st.lists(st.integers(0, 9), min_size=1, max_size=5), seed=st.integers(0, 99))
def test_varlen_attention_on_cuda_equals_cpu(lengths, seed):
    """The per-sequence attention gives the CPU's numbers on the GPU (atol 1e-6)."""
    gen = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(sum(lengths), 2, 8, generator=gen) for _ in range(3))
    expected = varlen_attention(q, k, v, lengths)
    got = varlen_attention(*on_cuda(q, k, v), lengths)
    torch.testing.assert_close(got.cpu(), expected, atol=1e-6, rtol=1e-5)


@torch.no_grad()
@pytest.mark.parametrize("fast", [False, True], ids=["textbook", "fast"])
def test_published_checkpoint_on_cuda_matches_transformers(minilm_dir, data_dir, fast):
    """all-MiniLM-L6-v2 on 200 SST-2 sentences, both on the GPU: max abs difference <= 1e-4
    (fp32); under bf16 autocast both stay within 5e-2 of the fp32 reference."""
    import csv

    with open(data_dir / "sst2" / "dev.tsv", encoding="utf-8") as f:
        sentences = [r["sentence"] for r in csv.DictReader(f, delimiter="\t",
                                                           quoting=csv.QUOTE_NONE)][:200]
    tokenizer = Tokenizer.from_pretrained(minilm_dir)
    ours = load_bert(minilm_dir)
    ours = (speed_up(ours) if fast else ours).to(CUDA).eval()
    hf = transformers.BertModel.from_pretrained(minilm_dir, attn_implementation="sdpa")
    hf = hf.to(CUDA, torch.float32).eval()
    worst = worst_bf16 = 0.0
    for start in range(0, len(sentences), 50):
        enc = tokenizer(sentences[start : start + 50], max_length=128)
        ids, mask, types = on_cuda(enc.input_ids, enc.attention_mask, enc.token_type_ids)
        real = mask.bool()
        ref = hf(input_ids=ids, attention_mask=mask, token_type_ids=types).last_hidden_state
        out = ours(ids, mask, types).last_hidden_state
        worst = max(worst, (out - ref)[real].abs().max().item())
        with torch.autocast("cuda", dtype=torch.bfloat16):
            half = ours(ids, mask, types).last_hidden_state.float()
        worst_bf16 = max(worst_bf16, (half - ref)[real].abs().max().item())
    assert worst <= 1e-4, f"fp32: max abs difference {worst:.2e}"
    assert worst_bf16 <= 5e-2, f"bf16 autocast: max abs difference {worst_bf16:.2e}"


@settings(deadline=None, max_examples=20)
@given(seed=st.integers(0, 2**31), steps=st.integers(1, 30), lr=st.floats(1e-4, 1e-1),
       weight_decay=st.floats(0.0, 0.3))
def test_adamw_on_cuda_matches_torch_fused(seed, steps, lr, weight_decay):
    """minift's AdamW on GPU tensors against torch's fused CUDA kernel (atol/rtol 1e-5)."""
    gen = torch.Generator().manual_seed(seed)
    initial = [torch.randn(shape, generator=gen) for shape in [(7, 3), (5,), ()]]
    grads = [[torch.randn(t.shape, generator=gen) for t in initial] for _ in range(steps)]
    ours = [torch.nn.Parameter(t.to(CUDA)) for t in initial]
    theirs = [torch.nn.Parameter(t.to(CUDA)) for t in initial]
    opt_ours = AdamW(ours, lr=lr, weight_decay=weight_decay)
    opt_theirs = torch.optim.AdamW(theirs, lr=lr, weight_decay=weight_decay, fused=True)
    for step in grads:
        for params, opt in ((ours, opt_ours), (theirs, opt_theirs)):
            for p, g in zip(params, step, strict=True):
                p.grad = g.to(CUDA)
            opt.step()
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("shape", [(3, 7), (64, 63), (64, 64), (128, 40)])
def test_default_path_on_cuda_follows_the_batch_size(shape):
    """On a GPU a padded batch under UNPAD_MIN_POSITIONS positions keeps its padding, a larger
    one is unpadded: bitwise the forced path. ``speed_up(model, unpad=)`` overrides the rule."""
    torch.manual_seed(0)
    model = speed_up(BertModel(BertConfig(vocab_size=50, hidden_size=8, num_hidden_layers=2,
                                          num_attention_heads=2, intermediate_size=16,
                                          max_position_embeddings=64))).to(CUDA).eval()
    ids = torch.randint(0, 50, shape, device=CUDA)
    mask = torch.ones(shape, dtype=torch.long, device=CUDA)
    mask[0, 4:] = 0
    padded = model(ids, mask, unpad=False).last_hidden_state
    unpadded = model(ids, mask, unpad=True).last_hidden_state
    assert not torch.equal(padded, unpadded)
    expected = unpadded if ids.numel() >= UNPAD_MIN_POSITIONS else padded
    assert torch.equal(model(ids, mask).last_hidden_state, expected)
    speed_up(model, unpad=not torch.equal(expected, unpadded))
    assert torch.equal(model(ids, mask).last_hidden_state,
                       unpadded if model.unpad else padded)


# Every attention path with the dtypes it takes: varlen bf16/fp16 only, the others fp32 and bf16.
CUDA_PATHS = [("per_sequence", torch.float32), ("nested", torch.float32),
              ("padded", torch.float32), ("per_sequence", torch.bfloat16),
              ("nested", torch.bfloat16), ("padded", torch.bfloat16),
              ("varlen", torch.bfloat16), ("varlen", torch.float16)]


def skip_unless_it_runs(path: str, dtype: torch.dtype, head_dim: int = 16) -> None:
    """Skip, saying why, where this torch or this GPU has no such path (varlen before torch
    2.10, or before compute capability 8.0): a skip, never a pass."""
    problem = packed.why_not(path, CUDA, dtype, 0.0, head_dim)
    if problem is not None:
        pytest.skip(problem)


@pytest.mark.parametrize("path, dtype", CUDA_PATHS, ids=[f"{p}-{d}" for p, d in CUDA_PATHS])
@settings(deadline=None, max_examples=15)
@given(mask=padding_patterns(), heads=st.integers(1, 3), head_dim=st.sampled_from([8, 16, 32]),
       first_only=st.booleans(), seed=st.integers(0, 2**31))
def test_attention_paths_on_cuda_equal_textbook(path, dtype, mask, heads, head_dim, first_only,
                                                seed):
    """Each attention path on the GPU against the textbook formula in float32 on the same
    inputs: outputs and q, k, v gradients, every token or the first alone, rows of 0, 1 or many
    tokens; float32 atol/rtol 1e-5, bf16 and fp16 1.5e-2 (gradients 3e-2), as on the CPU."""
    skip_unless_it_runs(path, dtype, head_dim)
    half = dtype != torch.float32
    check_path(path, mask, heads, head_dim, seed, first_only, dtype, CUDA.type,
               BF16_TOL if half else FP32_TOL, BF16_GRAD_TOL if half else FP32_TOL)


@pytest.mark.parametrize("path", [None, *packed.PATHS])
@settings(deadline=None, max_examples=10)
@given(mask=padding_patterns(max_len=12), seed=st.integers(0, 2**31))
def test_fast_model_on_each_attention_path_on_cuda(path, mask, seed):
    """The fast model, unpadded, its attention on each path (None: chosen per batch), against
    the textbook model on the GPU: float32 outputs and gradients within 1e-5 where the path
    takes float32 (all but varlen); under bf16 autocast (inference) outputs within 5e-2 of the
    float32 textbook, the published checkpoint's bound above."""
    if path == "varlen":
        skip_unless_it_runs(path, torch.bfloat16)
    config = BertConfig(vocab_size=60, hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=48, max_position_embeddings=16,
                        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    torch.manual_seed(seed)
    slow = BertModel(config).to(CUDA)
    fast = speed_up(BertModel(config), unpad=True, attention_path=path).to(CUDA)
    fast.load_state_dict(slow.state_dict())
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 60, mask.shape, generator=gen).to(CUDA)
    mask = mask.to(CUDA)
    real = mask.bool()
    want = slow(ids, mask).last_hidden_state
    if path != "varlen":
        got = fast(ids, mask).last_hidden_state
        torch.testing.assert_close(got[real], want[real], atol=1e-5, rtol=0)
        w = torch.randn(want.shape, generator=gen).to(CUDA)
        (want * w)[real].sum().backward()
        (got * w)[real].sum().backward()
        for (name, a), b in zip(slow.named_parameters(), fast.parameters(), strict=True):
            if a.grad is not None:
                torch.testing.assert_close(b.grad, a.grad, atol=1e-5, rtol=1e-5, msg=name)
    with torch.no_grad(), torch.autocast(CUDA.type, dtype=torch.bfloat16):
        half = fast.eval()(ids, mask).last_hidden_state.float()
    assert (half - want.detach())[real].abs().max().item() <= 5e-2


def test_bf16_inference_on_cuda_takes_the_varlen_kernel(monkeypatch):
    """Unpadded bf16 inference with no path forced calls torch's varlen kernel once per layer
    where this torch and GPU have it (``choose_path``'s first choice on a GPU)."""
    skip_unless_it_runs("varlen", torch.bfloat16, 16)
    kernel, calls = packed.varlen_kernel(), []

    def counted(*args):
        calls.append(len(args))
        return kernel(*args)

    monkeypatch.setattr(packed, "varlen_kernel", lambda: counted)
    model = speed_up(BertModel(BertConfig(vocab_size=60, hidden_size=32, num_hidden_layers=3,
                                          num_attention_heads=2, intermediate_size=48)),
                     unpad=True).to(CUDA).eval()
    ids = torch.randint(0, 60, (4, 10), device=CUDA)
    mask = torch.ones_like(ids)
    mask[1, 3:] = 0
    with torch.no_grad(), torch.autocast(CUDA.type, dtype=torch.bfloat16):
        model(ids, mask)
    assert calls == [7, 7, 7]  # by position: q, k, v, cu_seq_q, cu_seq_k, max_q, max_k
@torch.no_grad()
@pytest.mark.parametrize("autocast", [None, torch.bfloat16], ids=["fp32", "bf16"])
def test_cuda_graph_replays_equal_the_eager_forward(minilm_dir, data_dir, autocast):
    """``GraphedEncoder`` (minift/fast/cuda_graphs.py) on the fast published MiniLM: SST-2
    batches of two shapes, each shape seen twice with other sentences (so the second call
    replays the graph on new inputs): the real positions and the pooler equal the model's own
    eager forward (fp32: atol 1e-5; bf16 autocast: atol 2e-2, two roundings of bf16), one
    graph a shape, and a returned output survives the next replay."""
    import csv

    with open(data_dir / "sst2" / "dev.tsv", encoding="utf-8") as f:
        sentences = [r["sentence"] for r in csv.DictReader(f, delimiter="\t",
                                                           quoting=csv.QUOTE_NONE)][:64]
    tokenizer = Tokenizer.from_pretrained(minilm_dir)
    model = speed_up(load_bert(minilm_dir)).to(CUDA).eval()
    graphed = GraphedEncoder(model)
    atol = 1e-5 if autocast is None else 2e-2
    kept = []
    for start, size in ((0, 16), (16, 16), (32, 8), (40, 8)):
        enc = tokenizer(sentences[start : start + size], max_length=128)
        batch = pad_to_bucket({"input_ids": enc.input_ids, "attention_mask": enc.attention_mask,
                               "token_type_ids": enc.token_type_ids}, [128],
                              tokenizer.pad_token_id)
        ids, mask, types = on_cuda(batch["input_ids"], batch["attention_mask"],
                                   batch["token_type_ids"])
        real = mask.bool()
        with torch.autocast("cuda", dtype=autocast or torch.float32, enabled=autocast is not None):
            want = model(ids, mask, types)
            got = graphed(ids, mask, types)
        torch.testing.assert_close(got.last_hidden_state[real].float(),
                                   want.last_hidden_state[real].float(), atol=atol, rtol=0)
        torch.testing.assert_close(got.pooler_output.float(), want.pooler_output.float(),
                                   atol=atol, rtol=0)
        kept.append((got.last_hidden_state, want.last_hidden_state, real))
    assert len(graphed.graphs) == len({tuple(k[0].shape) for k in kept}) >= 2
    first, first_want, real = kept[0]
    torch.testing.assert_close(first[real].float(), first_want[real].float(), atol=atol, rtol=0)
