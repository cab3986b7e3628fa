"""The textbook encoder (model.py, every speed path off) against transformers.BertModel: random
configs, real weights, sentence embeddings; the config's checks; what importing model.py does.

Tolerances: random tiny models in fp32 agree to atol 1e-5 (outputs and gradients); the published
MiniLM checkpoint to 1e-4 (REFERENCE.md: a faithful implementation lands near 2e-6). The fast
model is held to this one in test_unpad.py and test_cpu_kernels.py.
"""

import csv
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch
import transformers
from hypothesis import given, settings
from hypothesis import strategies as st

from minift.core.model import (
    BertConfig,
    BertModel,
    ConfigError,
    attention,
    set_activation_checkpointing,
)
from minift.data.tokenizer import Tokenizer
from minift.fast.unpad import speed_up
from minift.hf.checkpoint import load_bert, split_hf_state_dict


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


def build_pair(config: dict, seed: int, attn: str = "sdpa", fast: bool = False):
    """A random transformers.BertModel, saved and loaded by minift (the textbook form unless
    ``fast``)."""
    torch.manual_seed(seed)
    hf = transformers.BertModel(
        transformers.BertConfig(**config, attn_implementation=attn)
    ).eval()
    with tempfile.TemporaryDirectory() as tmp:
        hf.save_pretrained(tmp)
        ours = load_bert(tmp)
    assert type(ours) is BertModel  # load_bert returns the textbook class
    if fast:
        speed_up(ours)
    return hf, ours


@settings(deadline=None, max_examples=40)
@given(setup=tiny_setups(), attn=st.sampled_from(["sdpa", "eager"]),
       eps=st.sampled_from([1e-12, 1e-6]), init=st.sampled_from([0.02, 0.2]))
def test_random_config_outputs_and_gradients_match(setup, attn, eps, init):
    """eps is varied so a model that ignores the config's value shows; init 0.2 makes weights
    wide enough that activations reach where a GELU approximation leaves the exact erf form."""
    config, input_ids, mask, token_type_ids, seed = setup
    config = config | {"layer_norm_eps": eps, "initializer_range": init}
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


def test_activation_checkpointing_needs_an_encoder():
    with pytest.raises(ValueError, match="Linear holds no minift BertModel"):
        set_activation_checkpointing(torch.nn.Linear(2, 2))


def test_sdpa_equals_plain_attention():
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 7, 8, generator=gen) for _ in range(3))
    mask = torch.zeros(2, 1, 1, 7)
    mask[0, ..., 5:] = torch.finfo(torch.float32).min
    expected = attention(q, k, v, mask)
    got = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-6)


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
        ({"layer_norm_eps": float("nan")}, "layer_norm_eps.*finite"),
        ({"initializer_range": float("inf")}, "initializer_range.*finite"),
        ({"hidden_dropout_prob": float("inf")}, "hidden_dropout_prob.*finite"),
        ({"attention_probs_dropout_prob": float("nan")}, "attention_probs_dropout_prob"),
        ({"layer_norm_eps": -float("inf")}, "layer_norm_eps"),
    ],
)
def test_unsupported_config_is_refused(bad, key):
    with pytest.raises(ConfigError, match=key):
        BertConfig.from_dict(bad, source="x/config.json")


@settings(deadline=None, max_examples=20)
@given(setup=tiny_setups(), pooler=st.booleans())
def test_num_parameters_counts_the_built_model(setup, pooler):
    config = BertConfig(**setup[0])
    model = BertModel(config, add_pooling_layer=pooler)
    assert config.num_parameters(pooler) == sum(p.numel() for p in model.parameters())


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


@torch.no_grad()
@pytest.mark.parametrize("fast", [False, True], ids=["textbook", "fast"])
def test_published_checkpoint_matches_transformers(minilm_dir, sst2_sentences, fast):
    model, tokenizer = load_bert(minilm_dir), Tokenizer.from_pretrained(minilm_dir)
    if fast:
        speed_up(model)
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


# ---- what importing does ---------------------------------------------------------------------

_REPO = Path(__file__).resolve().parents[1]


def run_python(code: str) -> subprocess.CompletedProcess:
    env = os.environ | {"PYTHONPATH": str(_REPO)}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=env, cwd=_REPO, timeout=300)


# Counts every torch function and every aten operator run while the modules named on argv
# are imported (torch and the standard library already loaded, as any program would have them).
_COUNT_OPS = """
import importlib, sys
import torch, torch.nn.functional, torch.utils.checkpoint
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
calls = []
class Functions(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        calls.append(getattr(func, "__name__", str(func)))
        return func(*args, **(kwargs or {}))
class Ops(TorchDispatchMode):
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        calls.append(str(func))
        return func(*args, **(kwargs or {}))
# The counter must count: a tensor made under it is seen.
with Functions(), Ops():
    torch.ones(1)
assert calls, "the counter saw nothing"
calls.clear()
with Functions(), Ops():
    for name in sys.argv[1:]:
        importlib.import_module(name)
print(calls)
"""


@pytest.mark.parametrize("module", ["minift.core.model", "minift.fast.cpu_kernels", "minift.fast.unpad"])
def test_importing_runs_no_tensor_operation(module):
    """model.py (and the speed files beside it) do no tensor work at import: registering
    kernels' custom op is allowed, running it (or any other op) is not."""
    done = subprocess.run([sys.executable, "-c", _COUNT_OPS, "minift", module],
                          capture_output=True, text=True, cwd=_REPO, timeout=300,
                          env=os.environ | {"PYTHONPATH": str(_REPO)})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]", f"importing {module} ran: {done.stdout.strip()}"


def test_model_imports_nothing_of_minift():
    """model.py stands alone: importing it loads no other minift module, and its source
    names none (so it can be lifted into another project as it is)."""
    source = (_REPO / "minift" / "core" / "model.py").read_text()
    assert not re.search(r"^\s*(import|from) minift", source, re.MULTILINE)
    done = run_python("import sys, minift.core.model; "
                      "print(sorted(m for m in sys.modules if m.startswith('minift.')))")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "['minift.core', 'minift.core.model']"


def test_training_loop_does_not_import_the_model():
    """train.py knows nothing about BERT: importing it (with the package's own __init__ left
    out of the picture) loads no model.py, checkpoint.py or heads.py."""
    done = run_python(
        "import sys, types; from pathlib import Path\n"
        "package = types.ModuleType('minift'); package.__path__ = [str(Path('minift').resolve())]\n"
        "sys.modules['minift'] = package\n"
        "import minift.core.loop\n"
        "print(sorted(m for m in sys.modules if m.startswith('minift.')))"
    )
    assert done.returncode == 0, done.stderr
    loaded = eval(done.stdout.strip())  # a printed list of names
    assert "minift.core.loop" in loaded
    assert not {"minift.core.model", "minift.hf.checkpoint", "minift.tasks.classify"} & set(loaded), loaded


def test_import_minift_train_does_not_import_the_model():
    done = run_python("import sys, minift.core.loop; print('minift.core.model' in sys.modules)")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"


# --------------------------------------------------------------------------------------------
# BERT's initialisation (init_weights) against transformers' _init_weights
# --------------------------------------------------------------------------------------------

INIT_CONFIG = dict(vocab_size=600, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                   intermediate_size=128, max_position_embeddings=80, initializer_range=0.05,
                   pad_token_id=3)


def init_kind(name: str, tensor: torch.Tensor, std: float, pad: int) -> str:
    """What the initialisation made of a tensor: "zeros", "ones", or "normal" when its values
    pass as n draws of N(0, std) (a 6-sigma bound on the mean and on the sample std, so a correct
    draw fails less than once in 10^8 per tensor); anything else is returned as a description."""
    values = tensor.detach().double()
    if name.endswith("word_embeddings.weight"):  # the padding row is zero, the rest are draws
        if not torch.equal(values[pad], torch.zeros_like(values[pad])):
            return "padding row not zero"
        values = torch.cat([values[:pad], values[pad + 1 :]])
    if torch.equal(values, torch.zeros_like(values)):
        return "zeros"
    if torch.equal(values, torch.ones_like(values)):
        return "ones"
    n = values.numel()
    mean, sample_std = values.mean().item(), values.std().item()
    if abs(mean) > 6 * std / n**0.5:
        return f"mean {mean:.3g} off N(0, {std})"
    if abs(sample_std / std - 1) > 6 / (2 * n) ** 0.5:
        return f"std {sample_std:.4g} off {std} (n={n})"
    return "normal"


def test_init_weights_matches_transformers_distribution():
    """A fresh minift BertModel and a fresh transformers.BertModel of one config: the same tensors
    (same names through the key map), each initialised the same way: N(0, initializer_range)
    weights, zero biases, LayerNorm 1 and 0, a zero padding row."""
    torch.manual_seed(1)
    hf = transformers.BertModel(transformers.BertConfig(**INIT_CONFIG))
    theirs, _, unknown = split_hf_state_dict(dict(hf.named_parameters()))
    assert not unknown
    torch.manual_seed(2)
    ours = dict(BertModel(BertConfig(**INIT_CONFIG)).named_parameters())
    assert set(ours) == set(theirs)
    std, pad = INIT_CONFIG["initializer_range"], INIT_CONFIG["pad_token_id"]
    kinds = {}
    for name in sorted(ours):
        kinds[name] = init_kind(name, theirs[name], std, pad)
        assert kinds[name] in ("zeros", "ones", "normal"), (name, "transformers", kinds[name])
        assert init_kind(name, ours[name], std, pad) == kinds[name], name
    # Every kind is there, where BERT puts it.
    assert {n for n, k in kinds.items() if k == "ones"} == {n for n in kinds if "norm.weight" in n}
    assert {n for n, k in kinds.items() if k == "zeros"} == {n for n in kinds if "bias" in n}


def test_init_weights_redraws_every_tensor_of_a_module():
    """On modules torch initialised its own way (uniform Linear weights and biases, N(0, 1)
    embeddings), init_weights leaves nothing of that; the same seed draws the same weights."""
    from minift.core.model import init_weights

    def built(seed: int) -> torch.nn.Module:
        torch.manual_seed(seed)
        modules = torch.nn.Sequential(torch.nn.Embedding(300, 64, padding_idx=2),
                                      torch.nn.Linear(64, 96), torch.nn.LayerNorm(96))
        with torch.no_grad():
            modules[2].weight.uniform_(0.5, 1.5)
            modules[2].bias.uniform_(-1, 1)
        modules.apply(lambda module: init_weights(module, std=0.03))
        return modules

    modules = built(5)
    kinds = {name: init_kind("word_embeddings.weight" if name == "0.weight" else name, t, 0.03, 2)
             for name, t in modules.named_parameters()}
    assert kinds == {"0.weight": "normal", "1.weight": "normal", "1.bias": "zeros",
                     "2.weight": "ones", "2.bias": "zeros"}
    for a, b in zip(modules.parameters(), built(5).parameters(), strict=True):
        assert torch.equal(a, b)
