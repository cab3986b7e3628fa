"""minift.core.optim against torch.optim.AdamW and transformers' schedules and parameter grouping."""

import copy

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from transformers import (
    BertConfig,
    BertForMaskedLM,
    BertModel,
    get_constant_schedule_with_warmup,
    get_cosine_schedule_with_warmup,
    get_linear_schedule_with_warmup,
)

from minift.core.optim import AdamW, lr_schedule, make_optimizer, make_scheduler, param_groups

# ---------------------------------------------------------------------------------------------
# AdamW parity with torch
# ---------------------------------------------------------------------------------------------

shapes = st.lists(st.lists(st.integers(1, 5), min_size=0, max_size=3), min_size=1, max_size=3)
hyperparameters = st.fixed_dictionaries(
    {
        "lr": st.floats(1e-5, 1e-1),
        "betas": st.tuples(st.floats(0.0, 0.99), st.floats(0.5, 0.9999)),
        "eps": st.floats(1e-10, 1e-6),
        "weight_decay": st.floats(0.0, 0.3),
    }
)


def make_run(shapes: list[list[int]], num_steps: int, seed: int):
    """Initial parameters and, per step, one gradient per parameter (None: no gradient)."""
    gen = torch.Generator().manual_seed(seed)
    initial = [torch.randn(shape, generator=gen) for shape in shapes]
    scales = [10 ** (4 * torch.rand((), generator=gen).item() - 3) for _ in shapes]
    grads = []
    for _ in range(num_steps):
        skip = torch.rand(len(shapes), generator=gen) < 0.15
        grads.append(
            [
                None if s else scale * torch.randn(shape, generator=gen)
                for shape, scale, s in zip(shapes, scales, skip.tolist(), strict=True)
            ]
        )
    return initial, grads


def run_steps(optimizer: torch.optim.Optimizer, params: list[nn.Parameter], grads) -> None:
    for step_grads in grads:
        for p, g in zip(params, step_grads, strict=True):
            p.grad = None if g is None else g.clone()
        optimizer.step()


def assert_same_state(ours, theirs, params_a, params_b, atol: float, rtol: float) -> None:
    for a, b in zip(params_a, params_b, strict=True):
        torch.testing.assert_close(a, b, atol=atol, rtol=rtol)
        state_a, state_b = ours.state.get(a, {}), theirs.state.get(b, {})
        assert set(state_a) == set(state_b)
        for key in state_a:
            torch.testing.assert_close(
                state_a[key].float(), state_b[key].float(), atol=atol, rtol=rtol
            )


@settings(deadline=None, max_examples=60)
@given(shapes, hyperparameters, st.integers(1, 50), st.integers(0, 2**31))
def test_adamw_matches_torch_single_tensor(shapes, hp, num_steps, seed):
    initial, grads = make_run(shapes, num_steps, seed)
    ours = [nn.Parameter(t.clone()) for t in initial]
    theirs = [nn.Parameter(t.clone()) for t in initial]
    opt_ours = AdamW(ours, **hp)
    opt_theirs = torch.optim.AdamW(theirs, **hp, foreach=False)
    run_steps(opt_ours, ours, grads)
    run_steps(opt_theirs, theirs, grads)
    assert_same_state(opt_ours, opt_theirs, ours, theirs, atol=1e-6, rtol=1e-6)


@settings(deadline=None, max_examples=40)
@given(shapes, hyperparameters, st.integers(1, 50), st.integers(0, 2**31))
def test_adamw_matches_torch_fused_cpu(shapes, hp, num_steps, seed):
    initial, grads = make_run(shapes, num_steps, seed)
    ours = [nn.Parameter(t.clone()) for t in initial]
    theirs = [nn.Parameter(t.clone()) for t in initial]
    opt_ours = AdamW(ours, **hp)
    opt_theirs = torch.optim.AdamW(theirs, **hp, fused=True)
    run_steps(opt_ours, ours, grads)
    run_steps(opt_theirs, theirs, grads)
    assert_same_state(opt_ours, opt_theirs, ours, theirs, atol=1e-5, rtol=1e-5)


@settings(deadline=None, max_examples=30)
@given(shapes, hyperparameters, st.integers(2, 40), st.data())
def test_adamw_resumes_from_state_dict(shapes, hp, num_steps, data):
    """Stop mid-run, load the state dict into fresh optimizers (ours and torch's), continue."""
    split = data.draw(st.integers(1, num_steps - 1), label="split")
    initial, grads = make_run(shapes, num_steps, data.draw(st.integers(0, 2**31), label="seed"))

    straight = [nn.Parameter(t.clone()) for t in initial]
    opt_straight = AdamW(straight, **hp)
    run_steps(opt_straight, straight, grads)

    first = [nn.Parameter(t.clone()) for t in initial]
    opt_first = AdamW(first, **hp)
    run_steps(opt_first, first, grads[:split])
    saved = copy.deepcopy(opt_first.state_dict())

    resumed = [nn.Parameter(t.detach().clone()) for t in first]
    opt_resumed = AdamW(resumed, lr=0.5)  # hyperparameters come from the state dict
    # load_state_dict keeps the saved tensors (no copy) and steps then update them in place,
    # so each optimizer gets its own copy.
    opt_resumed.load_state_dict(copy.deepcopy(saved))
    run_steps(opt_resumed, resumed, grads[split:])
    for a, b in zip(straight, resumed, strict=True):
        assert torch.equal(a, b)
    assert_same_state(opt_straight, opt_resumed, straight, resumed, atol=0, rtol=0)

    # The state dict is torch's format: torch.optim.AdamW continues from it as well.
    handed_over = [nn.Parameter(t.detach().clone()) for t in first]
    opt_torch = torch.optim.AdamW(handed_over, foreach=False)
    opt_torch.load_state_dict(copy.deepcopy(saved))
    run_steps(opt_torch, handed_over, grads[split:])
    assert_same_state(opt_straight, opt_torch, straight, handed_over, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"lr": -1e-3}, "lr"),
        ({"betas": (1.0, 0.999)}, r"betas\[0\]"),
        ({"betas": (0.9, -0.1)}, r"betas\[1\]"),
        ({"eps": -1e-8}, "eps"),
        ({"weight_decay": -0.01}, "weight_decay"),
    ],
)
def test_adamw_rejects_bad_hyperparameters(kwargs, match):
    with pytest.raises(ValueError, match=match):
        AdamW([nn.Parameter(torch.zeros(2))], **kwargs)


def test_adamw_accepts_zero_lr_and_leaves_parameters_unchanged():
    p = nn.Parameter(torch.ones(3))
    opt = AdamW([p], lr=0.0)
    p.grad = torch.ones(3)
    opt.step()
    assert torch.equal(p, torch.ones(3))
    assert opt.state[p]["step"].item() == 1


# ---------------------------------------------------------------------------------------------
# Parameter groups
# ---------------------------------------------------------------------------------------------


def tiny_bert_config() -> BertConfig:
    return BertConfig(
        vocab_size=40,
        hidden_size=8,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=16,
        max_position_embeddings=16,
    )


def group_names(model: nn.Module, groups: list[dict]) -> list[set[str]]:
    name_of = {id(p): n for n, p in model.named_parameters()}
    return [{name_of[id(p)] for p in group["params"]} for group in groups]


def test_param_groups_on_bert_match_the_name_rule_and_trainer():
    from transformers import Trainer

    torch.manual_seed(0)
    model = BertModel(tiny_bert_config())
    groups = param_groups(model, weight_decay=0.05)
    assert [g["weight_decay"] for g in groups] == [0.05, 0.0]
    decay, no_decay = group_names(model, groups)
    names = {n for n, _ in model.named_parameters()}
    assert no_decay == {n for n in names if "bias" in n or "LayerNorm.weight" in n}
    assert decay == names - no_decay
    assert decay == set(Trainer.get_decay_parameter_names(None, model))
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))


def test_param_groups_skip_frozen_and_count_tied_parameters_once():
    torch.manual_seed(0)
    model = BertForMaskedLM(tiny_bert_config())
    decoder, embeddings = model.cls.predictions.decoder, model.bert.embeddings.word_embeddings
    assert decoder.weight is embeddings.weight  # tied, so one parameter under two modules
    for p in model.bert.encoder.layer[0].parameters():
        p.requires_grad_(False)
    groups = param_groups(model, weight_decay=0.01)
    flat = [p for g in groups for p in g["params"]]
    assert len(flat) == len({id(p) for p in flat})
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert {id(p) for p in flat} == {id(p) for p in trainable}
    assert len(flat) == len(trainable) < len(list(model.parameters()))


def test_param_groups_find_layernorm_by_type_not_name():
    model = nn.Sequential(nn.Linear(3, 4, bias=False), nn.LayerNorm(4))
    groups = param_groups(model, weight_decay=0.1)
    decay, no_decay = group_names(model, groups)
    assert decay == {"0.weight"}
    assert no_decay == {"1.weight", "1.bias"}
    only_decay = param_groups(nn.Linear(2, 2, bias=False), weight_decay=0.1)
    assert len(only_decay) == 1 and only_decay[0]["weight_decay"] == 0.1


def test_param_groups_give_a_prefix_its_own_learning_rate():
    """lr_by_prefix splits the named parameters off into their own decay / no-decay pair, with
    their rate; the other parameters keep the plain grouping and the optimizer's rate."""
    torch.manual_seed(0)
    model = nn.ModuleDict({"bert": BertModel(tiny_bert_config()), "classifier": nn.Linear(8, 2)})
    plain = param_groups(model, weight_decay=0.05)
    groups = param_groups(model, weight_decay=0.05, lr_by_prefix={"classifier.": 1e-2})
    assert [(g["weight_decay"], g.get("lr")) for g in groups] == [
        (0.05, None), (0.0, None), (0.05, 1e-2), (0.0, 1e-2)]
    names = group_names(model, groups)
    assert names[2:] == [{"classifier.weight"}, {"classifier.bias"}]
    assert names[0] | names[2] == group_names(model, plain)[0]
    assert names[1] | names[3] == group_names(model, plain)[1]
    # frozen parameters stay out; a prefix with nothing trainable left is an error by name
    model["bert"].requires_grad_(False)
    assert group_names(model, param_groups(model, 0.05, {"classifier.": 1e-2})) == names[2:]
    with pytest.raises(ValueError, match="'bert.'"):
        param_groups(model, 0.05, {"bert.": 1e-3})
    with pytest.raises(ValueError, match="'head.'"):
        param_groups(model, 0.05, {"head.": 1e-3})
    with pytest.raises(ValueError, match="learning rates > 0"):
        param_groups(model, 0.05, {"classifier.": 0.0})


@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step\\(\\)` before")
@pytest.mark.parametrize("impl", ["hand", "foreach", "fused"])
def test_make_optimizer_steps_each_group_at_its_rate_under_the_schedule(impl):
    """The first AdamW step (eps 0) moves a weight by exactly lr times the schedule's multiplier,
    against its gradient's sign: 1e-3 for the encoder, 1e-1 for the head."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 1))
    opt = make_optimizer(model, lr=1e-3, weight_decay=0.0, eps=0.0, impl=impl,
                         lr_by_prefix={"1.": 1e-1})
    scheduler = make_scheduler(opt, total_steps=4, warmup_steps=2)
    scheduler.step()  # warm up to half the peak rate, as the loop's second step does
    before = [p.detach().clone() for p in model.parameters()]
    model(torch.randn(8, 4)).square().mean().backward()
    opt.step()
    for (name, p), old in zip(model.named_parameters(), before, strict=True):
        expected = 0.5 * (1e-1 if name.startswith("1.") else 1e-3)
        torch.testing.assert_close((old - p).abs(), torch.full_like(p, expected), rtol=1e-4,
                                   atol=0, msg=name)


# ---------------------------------------------------------------------------------------------
# make_optimizer
# ---------------------------------------------------------------------------------------------


@settings(deadline=None, max_examples=15)
@given(st.integers(0, 2**31), st.floats(1e-4, 1e-2), st.floats(0.0, 0.1), st.integers(1, 10))
def test_make_optimizer_implementations_agree(seed, lr, weight_decay, num_steps):
    torch.manual_seed(seed)
    reference = nn.Sequential(nn.Linear(5, 6), nn.LayerNorm(6), nn.Linear(6, 2))
    x = torch.randn(8, 5)
    results = {}
    for impl in ("hand", "foreach", "fused", "auto"):
        model = copy.deepcopy(reference)
        opt = make_optimizer(model, lr=lr, weight_decay=weight_decay, impl=impl)
        for _ in range(num_steps):
            opt.zero_grad()
            model(x).square().mean().backward()
            opt.step()
        results[impl] = [p.detach() for p in model.parameters()]
    for impl in ("foreach", "fused", "auto"):
        for a, b in zip(results["hand"], results[impl], strict=True):
            torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


def test_make_optimizer_auto_chooses_by_device():
    on_cpu = make_optimizer(nn.Linear(2, 2), lr=1e-3)
    assert isinstance(on_cpu, torch.optim.AdamW) and on_cpu.defaults["fused"] is True
    on_meta = make_optimizer(nn.Linear(2, 2, device="meta"), lr=1e-3)
    assert on_meta.defaults["fused"] is False and on_meta.defaults["foreach"] is True
    assert isinstance(make_optimizer(nn.Linear(2, 2), lr=1e-3, impl="hand"), AdamW)
    hand = make_optimizer(nn.Linear(2, 2), lr=1e-3, weight_decay=0.2, impl="hand")
    assert [g["weight_decay"] for g in hand.param_groups] == [0.2, 0.0]


@pytest.mark.parametrize("lr", [0.0, -1e-3])
def test_make_optimizer_rejects_non_positive_lr(lr):
    with pytest.raises(ValueError, match="learning rate must be positive"):
        make_optimizer(nn.Linear(2, 2), lr=lr)


def test_make_optimizer_rejects_unknown_impl_and_frozen_models():
    with pytest.raises(ValueError, match="impl must be one of"):
        make_optimizer(nn.Linear(2, 2), lr=1e-3, impl="sgd")
    frozen = nn.Linear(2, 2).requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        make_optimizer(frozen, lr=1e-3)
    with pytest.raises(ValueError, match="no trainable parameters"):
        make_optimizer(nn.ReLU(), lr=1e-3)


# ---------------------------------------------------------------------------------------------
# Schedules
# ---------------------------------------------------------------------------------------------

REFERENCE_SCHEDULES = {
    "linear": lambda opt, warmup, total: get_linear_schedule_with_warmup(opt, warmup, total),
    "cosine": lambda opt, warmup, total: get_cosine_schedule_with_warmup(opt, warmup, total),
    "constant": lambda opt, warmup, total: get_constant_schedule_with_warmup(opt, warmup),
}


def reference_multipliers(kind: str, warmup: int, total: int, num_steps: int) -> list[float]:
    """transformers' multiplier at steps 0..num_steps (base lr 1.0, so lr == multiplier)."""
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = REFERENCE_SCHEDULES[kind](opt, warmup, total)
    multipliers = []
    for _ in range(num_steps + 1):
        multipliers.append(scheduler.get_last_lr()[0])
        opt.step()
        scheduler.step()
    return multipliers


@settings(deadline=None, max_examples=80)
@given(st.sampled_from(["linear", "cosine", "constant"]), st.integers(1, 300), st.data())
def test_schedules_match_transformers(kind, total, data):
    warmup = data.draw(st.integers(0, total), label="warmup")
    expected = reference_multipliers(kind, warmup, total, total)
    ours = [
        lr_schedule(s, total_steps=total, warmup_steps=warmup, kind=kind) for s in range(total + 1)
    ]
    assert ours == pytest.approx(expected, abs=1e-12, rel=0)

    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=2.0)
    scheduler = make_scheduler(opt, total_steps=total, warmup_steps=warmup, kind=kind)
    seen = []
    for _ in range(total + 1):
        seen.append(scheduler.get_last_lr()[0] / 2.0)
        opt.step()
        scheduler.step()
    assert seen == pytest.approx(expected, abs=1e-12, rel=0)


def test_schedules_stay_at_zero_after_total_steps_unlike_transformers_cosine():
    total, warmup = 20, 5
    after = range(total + 1, 2 * total)
    for kind in ("linear", "cosine"):
        assert all(
            lr_schedule(s, total_steps=total, warmup_steps=warmup, kind=kind) == 0.0 for s in after
        )
    # transformers' cosine goes up again past the end (the next half cycle): a deliberate difference.
    reference = reference_multipliers("cosine", warmup, total, 2 * total)
    assert max(reference[total + 1 :]) > 0.5
    assert lr_schedule(3 * total, total_steps=total, warmup_steps=warmup, kind="constant") == 1.0


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"kind": "step"}, "kind must be one of"),
        ({"total_steps": 0, "warmup_steps": 0}, "total_steps"),
        ({"warmup_steps": 11}, "warmup_steps"),
        ({"warmup_steps": -1}, "warmup_steps"),
    ],
)
def test_schedule_rejects_bad_arguments(kwargs, match):
    args = {"total_steps": 10, "warmup_steps": 2, "kind": "linear", **kwargs}
    with pytest.raises(ValueError, match=match):
        lr_schedule(0, **args)
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    with pytest.raises(ValueError, match=match):
        make_scheduler(opt, **args)
    with pytest.raises(ValueError, match="step must be >= 0"):
        lr_schedule(-1, total_steps=10, warmup_steps=2)
