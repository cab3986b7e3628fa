"""minift.core.loop on a toy model: learning, accumulation, early stopping, non-finite losses and
weights, AMP, bad configs, the optimizer choice, torch.compile, what it tells a recorder.

Its files have their own test files: resume.pt (test_resume), best/ (test_best), log.jsonl and
the bar (test_logbook), the recorder that writes them (test_checkpoints)."""

import copy
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.optim.optimizer import register_optimizer_step_pre_hook
from toy_loop import (
    DEVICES,
    Toy,
    assert_same,
    config,
    epochs_of,
    make_batch,
    mean_loss,
    params_of,
    train,
)

import minift.core.loop as train_module
from minift.core.loop import (
    NonFiniteLossError,
    NonFiniteWeightsError,
    Recorder,
    TrainConfig,
    TrainResult,
)
from minift.core.optim import AdamW, lr_schedule
from minift.hf.safetensors import read_safetensors, write_safetensors

# ---------------------------------------------------------------------------------------------
# It learns; it reports what it trains
# ---------------------------------------------------------------------------------------------


def test_loss_goes_down_and_counts(tmp_path, capsys):
    model = Toy(dropout=0.0)
    held_out = epochs_of(4, seed=100)(0)
    before = mean_loss(model, held_out)
    evals = []

    def evaluate(m):
        evals.append(m.training)
        return {"loss": mean_loss(m, held_out)}

    result = train(model, epochs_of(6), config(tmp_path, epochs=4), evaluate=evaluate)
    assert isinstance(result, TrainResult)
    after = mean_loss(model, held_out)
    assert after < 0.5 * before, (before, after)
    assert result.steps == 6 * 4 and result.epochs_completed == 4
    assert evals == [False] * 4  # once per epoch, in eval mode
    assert model.training  # train mode restored
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    assert trainable < total
    assert f"{trainable:,} trainable parameters of {total:,}" in capsys.readouterr().out


def test_seeded_runs_repeat_whatever_the_global_rng(tmp_path):
    runs = []
    for name, outside_seed, seed in [("a", 1, 0), ("b", 2, 0), ("c", 1, 1)]:
        model = Toy(dropout=0.3)
        torch.manual_seed(outside_seed)  # the global RNG before train(); dropout draws from it
        train(model, epochs_of(4), config(tmp_path, name, epochs=2, seed=seed))
        runs.append(params_of(model))
    assert_same(runs[0], runs[1])
    assert not torch.equal(runs[0]["out.weight"], runs[2]["out.weight"])


# ---------------------------------------------------------------------------------------------
# Gradient accumulation gives the gradient of the whole batch
# ---------------------------------------------------------------------------------------------


@settings(deadline=None, max_examples=12)
@given(
    sizes=st.lists(st.integers(1, 3), min_size=2, max_size=4),
    ignore=st.lists(st.floats(0.0, 0.9), min_size=4, max_size=4),
    seed=st.integers(0, 2**16),
)
def test_accumulated_micro_batches_equal_one_batch(tmp_path_factory, sizes, ignore, seed):
    gen = torch.Generator().manual_seed(seed)
    # Micro-batches with very different numbers of targets (labels != -100).
    micro = [make_batch(gen, size, ignore[i]) for i, size in enumerate(sizes)]
    whole = {key: torch.cat([batch[key] for batch in micro]) for key in micro[0]}
    if (whole["labels"] != -100).sum() == 0:
        whole["labels"][0, 0] = micro[0]["labels"][0, 0] = 1
    model = Toy(dropout=0.0, seed=seed)
    accumulated, single = copy.deepcopy(model), copy.deepcopy(model)

    # The gradient itself: .grad after the last backward of the window, captured by a hook.
    captured = {}
    for name, param in accumulated.named_parameters():
        if param.requires_grad:
            param.register_post_accumulate_grad_hook(
                lambda p, name=name: captured.__setitem__(name, p.grad.clone())
            )
    reference = copy.deepcopy(model)
    whole_loss = reference(**whole)["loss"]
    whole_loss.backward()

    tmp = tmp_path_factory.mktemp("accum")
    common = {"max_steps": 1, "warmup_ratio": 0.0, "weight_decay": 0.0}
    logs = [train(accumulated, lambda e: micro, config(tmp, "a", grad_accum=len(micro), **common)),
            train(single, lambda e: [whole], config(tmp, "b", grad_accum=1, **common))]
    # the logged loss is the window's mean over its targets too, not a mean of micro-batch means
    for result in logs:
        (logged,) = [r["loss"] for r in result.history if "eval" not in r]
        assert logged == pytest.approx(whole_loss.item(), rel=1e-6, abs=1e-7)

    after_accumulated, after_single = params_of(accumulated), params_of(single)
    for name, param in reference.named_parameters():
        if not param.requires_grad:
            continue
        torch.testing.assert_close(captured[name], param.grad, atol=1e-6, rtol=1e-5)
        # AdamW's first step is lr * g / (|g| + eps): where |g| is near eps (1e-8), a float
        # rounding of g moves the step by a good fraction of lr, so the weights are compared
        # where the step is well defined, |g| >= 1e-4 (a 1e-8 change in g moves it < 1e-7), or
        # g is exactly zero (no step at all).
        stable = (param.grad.abs() >= 1e-4) | (param.grad == 0)
        torch.testing.assert_close(
            after_accumulated[name][stable], after_single[name][stable], atol=1e-6, rtol=0, msg=name
        )
    assert not torch.equal(after_accumulated["out.weight"], params_of(model)["out.weight"])


def test_the_optimizer_sees_gradients_clipped_to_max_grad_norm(tmp_path):
    """The total norm of the gradients each optimizer step receives: the same first gradient
    unclipped (max_grad_norm None), then with a bound a quarter of its norm, where it arrives
    scaled to the bound exactly; later steps stay within it. (AdamW's first step barely depends
    on the gradient's scale, so the weights alone would not show a missing clip.)"""
    norms: list[float] = []

    def record(optimizer, args, kwargs):
        grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        norms.append(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])).item())

    handle = register_optimizer_step_pre_hook(record)
    try:
        train(Toy(dropout=0.0), epochs_of(3), config(tmp_path, "free", max_steps=1,
                                                      max_grad_norm=None))
        bound = norms[0] / 4
        train(Toy(dropout=0.0), epochs_of(3), config(tmp_path, "clipped", max_steps=3,
                                                      max_grad_norm=bound))
    finally:
        handle.remove()
    assert len(norms) == 4
    assert norms[1] == pytest.approx(bound, rel=1e-5)
    assert all(n <= bound * (1 + 1e-5) for n in norms[2:]), (bound, norms)


# ---------------------------------------------------------------------------------------------
# Early stopping and the best checkpoint
# ---------------------------------------------------------------------------------------------


def expected_stop(values, patience, greater):
    """The reference: (steps run, best step, best value, stopped early) for metric `values`."""
    best, best_step, bad = None, None, 0
    for step, value in enumerate(values, start=1):
        if best is None or (value > best if greater else value < best):
            best, best_step, bad = value, step, 0
        else:
            bad += 1
            if bad >= patience:
                return step, best_step, best, True
    return len(values), best_step, best, False


@settings(deadline=None, max_examples=15)
@given(
    values=st.lists(st.integers(0, 4).map(float), min_size=2, max_size=7),
    patience=st.integers(1, 3),
    greater=st.booleans(),
)
def test_early_stopping_and_best_checkpoint(tmp_path_factory, values, patience, greater):
    snapshots = []

    def evaluate(model):
        snapshots.append(params_of(model))
        return {"acc": values[len(snapshots) - 1], "other": 0.5}

    tmp = tmp_path_factory.mktemp("early")
    cfg = config(
        tmp, max_steps=len(values), eval_every=1, metric="acc", greater_is_better=greater,
        patience=patience, warmup_ratio=0.0,
    )  # fmt: skip
    result = train(Toy(), epochs_of(3), cfg, evaluate=evaluate)

    steps, best_step, best, stopped = expected_stop(values, patience, greater)
    assert (result.steps, result.best_step, result.best_metric) == (steps, best_step, best)
    assert result.stopped_early == stopped
    assert result.last_eval == {"acc": values[steps - 1], "other": 0.5}
    saved = read_safetensors(tmp / "run" / "best" / "model.safetensors")
    assert_same(saved, snapshots[best_step - 1])


# ---------------------------------------------------------------------------------------------
# Non-finite losses and mixed precision
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("amp", ["off", "bf16"])
@pytest.mark.parametrize("poison", [math.nan, math.inf])
def test_non_finite_loss_stops_naming_the_step(tmp_path, amp, poison):
    """The losses are read at each log, evaluation and resume point (here every step): the error
    names the bad step, and no evaluation or resume point saw the weights it updated."""
    batches = epochs_of(6)(0)
    batches[4]["poison"] = torch.tensor(poison)  # step 3 of (0,1) (2,3) (4,5) with grad_accum 2
    snapshots = []

    def evaluate(model):
        snapshots.append(params_of(model))
        return {"loss": 0.0}

    model = Toy()
    cfg = config(tmp_path, grad_accum=2, amp=amp, eval_every=1, warmup_ratio=0.0)
    with pytest.raises(NonFiniteLossError, match=r"at step 3 \(epoch 0, batch 4\)") as error:
        train(model, lambda e: batches, cfg, evaluate=evaluate)
    assert isinstance(error.value, ValueError)
    assert len(snapshots) == 2  # steps 1 and 2 evaluated, step 3 not
    saved = torch.load(tmp_path / "run" / "resume.pt", weights_only=True)
    assert saved["progress"]["step"] == 2
    assert_same(saved["model"], snapshots[1])  # the last checkpoint: before the bad step


def test_a_non_finite_loss_is_named_where_the_losses_are_read(tmp_path):
    """Between two log points the step reads nothing from the device: a nan loss at step 2 is
    found when the losses are read, at step 4 (log_every 4), naming step 2 and its batch; no
    resume point after step 2 was written (the first was due at step 4)."""
    batches = epochs_of(8)(0)
    batches[1]["poison"] = torch.tensor(math.nan)  # step 2
    cfg = config(tmp_path, log_every=4, save_every=4, warmup_ratio=0.0, amp="off")
    with pytest.raises(NonFiniteLossError, match=r"at step 2 \(epoch 0, batch 1\).*stopped at "
                                                 r"step 4") as error:
        train(Toy(), lambda e: batches, cfg)
    assert not isinstance(error.value, NonFiniteWeightsError)  # the loss is named first
    assert not (tmp_path / "run" / "resume.pt").exists()


def test_bf16_autocast_on_cpu_trains(tmp_path):
    model = Toy(dropout=0.0)
    held_out = epochs_of(4, seed=100)(0)
    before = mean_loss(model, held_out)
    model.seen_dtypes.clear()
    train(model, epochs_of(6), config(tmp_path, epochs=4, amp="bf16"))
    assert model.seen_dtypes == {torch.bfloat16}
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert mean_loss(model, held_out) < 0.5 * before


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("optimizer", ["auto", "hand"])  # auto: fused AdamW
def test_fp16_scaler_skips_a_step_with_inf_gradients(tmp_path, device, optimizer):
    batches = epochs_of(4)(0)
    batches[0]["poison"] = torch.tensor(math.inf)  # the first step's gradients are inf/nan
    snapshots = []

    def evaluate(model):
        snapshots.append(params_of(model))
        return {"loss": 0.0}

    model = Toy().to(device)
    initial = params_of(model)
    cfg = config(
        tmp_path, max_steps=3, amp="fp16", optimizer=optimizer, eval_every=1, warmup_ratio=0.0
    )
    result = train(model, lambda e: batches, cfg, evaluate=evaluate, device=device)

    assert model.seen_dtypes == {torch.float16}
    assert_same(snapshots[0], initial)  # skipped: not even weight decay
    assert not torch.equal(snapshots[1]["out.weight"], initial["out.weight"])
    logs = [r for r in result.history if "loss" in r and "eval" not in r]
    init_scale = torch.amp.GradScaler(torch.device(device).type).get_scale()
    assert [r["skipped_steps"] for r in logs] == [1, 1, 1]
    assert logs[0]["loss_scale"] == init_scale * 0.5
    assert logs[2]["loss_scale"] == logs[0]["loss_scale"]
    assert math.isinf(logs[0]["loss"]) and math.isfinite(logs[1]["loss"])
    # The schedule advances on a skipped step too: step s runs at schedule(s - 1).
    expected_lr = [cfg.lr * lr_schedule(s, total_steps=3, warmup_steps=0) for s in range(3)]
    assert [r["lr"] for r in logs] == pytest.approx(expected_lr, rel=1e-12)


def test_fp16_refuses_half_weights(tmp_path):
    model = Toy().half()
    with pytest.raises(ValueError, match="float32 weights"):
        train(model, epochs_of(2), config(tmp_path, amp="fp16"))


# ---------------------------------------------------------------------------------------------
# Configuration errors come before any work
# ---------------------------------------------------------------------------------------------

BAD_CONFIGS = [
    ({"lr": 0.0}, "lr"),
    ({"lr": -1e-3}, "lr"),
    ({"lr": math.nan}, "lr"),
    ({"grad_accum": 0}, "grad_accum"),
    ({"epochs": 0}, "epochs"),
    ({"epochs": 1.5}, "epochs"),
    ({"max_steps": 0}, "max_steps"),
    ({"amp": "fp8"}, "amp"),
    ({"schedule": "step"}, "schedule"),
    ({"optimizer": "sgd"}, "optimizer"),
    ({"warmup_ratio": 1.5}, "warmup_ratio"),
    ({"weight_decay": -0.1}, "weight_decay"),
    ({"max_grad_norm": 0.0}, "max_grad_norm"),
    ({"eval_every": 0}, "eval_every"),
    ({"save_every": -1}, "save_every"),
    ({"patience": 0}, "patience"),
    ({"log_every": 0}, "log_every"),
    ({"metric": ""}, "metric"),
    ({"lr": math.inf}, "lr"),
    ({"warmup_ratio": -0.1}, "warmup_ratio"),
    ({"warmup_ratio": math.nan}, "warmup_ratio"),
    ({"seed": -1}, "seed"),
    ({"max_grad_norm": math.inf}, "max_grad_norm"),
    ({"keep_resume": "yes"}, "keep_resume"),
    ({"light_final_resume": 1}, "light_final_resume"),
]


@pytest.mark.parametrize("overrides, name", BAD_CONFIGS)
def test_bad_config_raises_before_any_step(tmp_path, overrides, name):
    with pytest.raises(ValueError, match=f"TrainConfig.{name}"):
        TrainConfig(out_dir=tmp_path / "run", **overrides)

    cfg = TrainConfig(out_dir=tmp_path / "run")  # valid, then changed behind the check's back
    for key, value in overrides.items():
        setattr(cfg, key, value)
    calls = []

    def train_batches(epoch):
        calls.append(epoch)
        return epochs_of(2)(epoch)

    model = Toy()
    initial = params_of(model)
    with pytest.raises(ValueError, match=f"TrainConfig.{name}"):
        train(model, train_batches, cfg)
    assert calls == [] and not (tmp_path / "run").exists()
    assert_same(params_of(model), initial)


def test_patience_needs_evaluate_and_metric_must_exist(tmp_path):
    with pytest.raises(ValueError, match="patience"):
        train(Toy(), epochs_of(2), config(tmp_path, patience=2))
    with pytest.raises(ValueError, match=r"'f1'.*\['accuracy'\]"):
        train(
            Toy(), epochs_of(2), config(tmp_path, metric="f1"), evaluate=lambda m: {"accuracy": 1}
        )


# ---------------------------------------------------------------------------------------------
# The optimizer choice, torch.compile, the model's interface
# ---------------------------------------------------------------------------------------------


def test_hand_written_optimizer_is_selectable(tmp_path, monkeypatch):
    made = []
    original = train_module.make_optimizer

    def spy(*args, **kwargs):
        made.append((kwargs.get("impl"), original(*args, **kwargs)))
        return made[-1][1]

    monkeypatch.setattr(train_module, "make_optimizer", spy)
    hand, foreach = Toy(), Toy()
    train(hand, epochs_of(4), config(tmp_path, "hand", epochs=2, optimizer="hand"))
    train(foreach, epochs_of(4), config(tmp_path, "foreach", epochs=2, optimizer="foreach"))
    assert made[0][0] == "hand" and type(made[0][1]) is AdamW
    assert made[1][0] == "foreach" and type(made[1][1]) is torch.optim.AdamW
    assert_same(params_of(hand), params_of(foreach), atol=1e-6)


def test_compile_trains_the_wrapper_and_saves_the_eager_module(tmp_path, monkeypatch):
    class Wrapper(nn.Module):  # stands for torch.compile's OptimizedModule
        def __init__(self, inner):
            super().__init__()
            self._orig_mod = inner
            self.calls = 0

        def forward(self, **batch):
            self.calls += 1
            return self._orig_mod(**batch)

    wrappers, evaluated, options = [], [], []

    def compile(module, **given):
        options.append(given)
        wrappers.append(Wrapper(module))
        return wrappers[-1]

    monkeypatch.setattr(torch, "compile", compile)
    model = Toy()
    cfg = config(tmp_path, epochs=1, compile=True)
    train(model, epochs_of(3), cfg, evaluate=lambda m: evaluated.append(m) or {"loss": 0.0})
    assert wrappers[0].calls == 3 and evaluated == [model]
    assert options == [{"dynamic": False}]  # static shapes unless compile_dynamic says otherwise
    saved = read_safetensors(tmp_path / "run" / "best" / "model.safetensors")
    assert_same(saved, params_of(model))  # names without the wrapper's "_orig_mod." prefix
    resume = torch.load(tmp_path / "run" / "resume.pt", weights_only=True)
    assert resume["model"].keys() == model.state_dict().keys()
    cfg = config(tmp_path / "dynamic", epochs=1, compile=True, compile_dynamic=True)
    train(Toy(), epochs_of(1), cfg)
    assert options[-1] == {"dynamic": True}
    with pytest.raises(ValueError, match="TrainConfig.compile_dynamic: expected True or False"):
        config(tmp_path, compile=True, compile_dynamic=1)


def test_model_interface_loss_attribute_save_pretrained_and_bad_outputs(tmp_path):
    class Output:  # like transformers' ModelOutput seen as an object
        def __init__(self, loss):
            self.loss = loss

    class AttributeToy(Toy):
        def forward(self, **batch):
            return Output(super().forward(**batch)["loss"])

        def save_pretrained(self, folder):
            write_safetensors(self.state_dict(), folder / "weights.safetensors")
            (folder / "config.json").write_text("{}")

    model = AttributeToy()
    train(model, epochs_of(3), config(tmp_path, epochs=1), evaluate=lambda m: {"loss": 0.0})
    best = tmp_path / "run" / "best"
    assert sorted(p.name for p in best.iterdir()) == ["config.json", "weights.safetensors"]
    assert_same(read_safetensors(best / "weights.safetensors"), params_of(model))

    class NoLoss(Toy):
        def forward(self, **batch):
            return {"logits": super().forward(**batch)["loss"]}

    class VectorLoss(Toy):
        def forward(self, **batch):
            return {"loss": super().forward(**batch)["loss"].expand(3)}

    for bad, found in [(NoLoss(), "NoneType"), (VectorLoss(), r"shape \(3,\)")]:
        with pytest.raises(ValueError, match=f"'loss'.*found {found}"):
            train(bad, epochs_of(2), config(tmp_path, "bad"))


# ---------------------------------------------------------------------------------------------
# Non-finite weights
# ---------------------------------------------------------------------------------------------


def test_non_finite_weights_stop_and_no_checkpoint_holds_them(tmp_path):
    batches = epochs_of(6)(0)
    batches[3]["poison_grad"] = torch.tensor(math.nan)  # step 4's update writes nan weights
    cfg = config(tmp_path, log_every=5, save_every=1, max_steps=6, amp="off")
    with pytest.raises(NonFiniteWeightsError, match=r"after step 4 \(.*\).*learning rate") as error:
        train(Toy(), lambda e: batches, cfg)
    assert isinstance(error.value, NonFiniteLossError)  # one except clause catches both
    saved = torch.load(tmp_path / "run" / "resume.pt", weights_only=True)
    assert saved["progress"]["step"] == 3
    assert all(torch.isfinite(value).all() for value in saved["model"].values())


# ---------------------------------------------------------------------------------------------
# What the loop tells a recorder; torchrun needs its door
# ---------------------------------------------------------------------------------------------


class Calls(Recorder):
    """A recorder that notes each call (and the arguments that say what happened)."""

    def __init__(self) -> None:
        self.calls = []

    def start(self, config, parts, run, parallel):
        self.calls.append(("start", run["total_steps"]))

    def stepped(self, progress, loss, lr, examples, seconds):
        self.calls.append(("stepped", progress.step))

    def logged(self, record):
        self.calls.append(("logged", record["step"]))

    def evaluated(self, model, progress, record, improved):
        self.calls.append(("evaluated", record["step"], improved))

    def resume_point(self, parts, progress, run, light):
        self.calls.append(("resume_point", progress.step, light))

    def end(self, progress, completed):
        self.calls.append(("end", completed))


def test_a_recorder_hears_each_step_record_evaluation_and_resume_point_in_order(tmp_path):
    """Four steps, a record every 2, an evaluation every 2 (the second worse: patience 1 stops
    the run there), resume points at the evaluations; the last one light."""
    recorder = Calls()
    values = iter([1.0, 2.0])
    cfg = config(tmp_path, max_steps=6, log_every=2, eval_every=2, patience=1,
                 light_final_resume=True)
    result = train_module.train(Toy(), epochs_of(4), cfg, evaluate=lambda m: {"loss": next(values)},
                                recorder=recorder)
    assert result.stopped_early and result.steps == 4
    assert recorder.calls == [
        ("start", 6), ("stepped", 1), ("stepped", 2), ("logged", 2), ("evaluated", 2, True),
        ("resume_point", 2, False), ("stepped", 3), ("stepped", 4), ("logged", 4),
        ("evaluated", 4, False), ("resume_point", 4, True), ("end", True),
    ]


def test_a_failing_run_tells_the_recorder_it_did_not_complete(tmp_path):
    recorder = Calls()
    poisoned = epochs_of(2)(0)
    poisoned[1]["poison"] = torch.tensor(float("nan"))
    with pytest.raises(NonFiniteLossError):
        train_module.train(Toy(), lambda e: poisoned, config(tmp_path), recorder=recorder)
    assert recorder.calls[-1] == ("end", False)


def test_a_torchrun_launch_needs_the_parallel_door(tmp_path, monkeypatch):
    """Under torchrun (WORLD_SIZE > 1) a loop given no parallel context would train each rank
    alone on every batch: refused before anything trains."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    model = Toy()
    before = params_of(model)
    with pytest.raises(ValueError, match=r"torchrun started 2 processes.*parallel="):
        train_module.train(model, epochs_of(2), config(tmp_path))
    assert_same(params_of(model), before)
