"""minift.core.loop on tiny models: learning, accumulation, exact resume, atomic files, AMP, logs."""

import copy
import json
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import minift.core.best as best_module
import minift.core.logbook as logbook_module
import minift.core.loop as train_module
from minift.core.checkpoints import Checkpoints
from minift.core.loop import (
    NonFiniteLossError,
    NonFiniteWeightsError,
    Recorder,
    TrainConfig,
    TrainResult,
)
from minift.core.optim import AdamW, lr_schedule
from minift.core.resume import check_resume
from minift.hf.safetensors import read_safetensors, write_safetensors

VOCAB, CLASSES, SEQ = 12, 3, 5
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])

# ---------------------------------------------------------------------------------------------
# A toy token-classification task: the label of a token is its id modulo CLASSES
# ---------------------------------------------------------------------------------------------


class Toy(nn.Module):
    """Embedding, LayerNorm, dropout, linear; mean cross-entropy over tokens whose label != -100.

    `poison` (optional batch key) multiplies the loss, to inject a non-finite loss or gradient;
    `poison_grad` multiplies the gradient of the logits only (the loss stays finite).
    """

    def __init__(self, dim: int = 8, dropout: float = 0.1, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.embed = nn.Embedding(VOCAB, dim)
        self.norm = nn.LayerNorm(dim)
        self.drop = nn.Dropout(dropout)
        self.out = nn.Linear(dim, CLASSES)
        self.frozen = nn.Parameter(torch.zeros(7), requires_grad=False)
        self.seen_dtypes: set[torch.dtype] = set()

    def forward(self, input_ids, labels, poison=None, poison_grad=None):
        logits = self.out(self.drop(self.norm(self.embed(input_ids))))  # (batch, seq, classes)
        if poison_grad is not None and logits.requires_grad:  # a finite loss, a nan gradient
            logits.register_hook(lambda grad: grad * poison_grad)
        if self.training:
            self.seen_dtypes.add(logits.dtype)
        loss = F.cross_entropy(logits.float().reshape(-1, CLASSES), labels.reshape(-1))
        if poison is not None:
            loss = loss * poison
        return {"loss": loss}


def make_batch(gen: torch.Generator, size: int, ignore: float = 0.3) -> dict[str, torch.Tensor]:
    """`size` sequences of SEQ tokens; each label is ignored (-100) with probability `ignore`."""
    input_ids = torch.randint(0, VOCAB, (size, SEQ), generator=gen)
    labels = input_ids % CLASSES
    labels[torch.rand((size, SEQ), generator=gen) < ignore] = -100
    return {"input_ids": input_ids, "labels": labels}


def epochs_of(n_batches: int, batch_size: int = 4, seed: int = 0):
    """`train_batches`: epoch e's batches are drawn from a generator seeded with seed + e."""

    def train_batches(epoch: int) -> list[dict[str, torch.Tensor]]:
        gen = torch.Generator().manual_seed(seed + epoch)
        return [make_batch(gen, batch_size) for _ in range(n_batches)]

    return train_batches


def mean_loss(model: nn.Module, batches) -> float:
    device = next(model.parameters()).device
    with torch.no_grad():
        return sum(
            model(**{k: v.to(device) for k, v in batch.items()})["loss"].item() for batch in batches
        ) / len(batches)


def train(model, batches, cfg, *, resume=False, save_best=None, **kwargs) -> TrainResult:
    """The loop with its files in `cfg.out_dir` (resume.pt, log.jsonl, best/), as the recipes
    run it: most tests here are about those files."""
    return train_module.train(model, batches, cfg, **kwargs,
                              recorder=Checkpoints(resume=resume, save_best=save_best))


def config(tmp_path, name: str = "run", **overrides) -> TrainConfig:
    """A quiet config in tmp_path/name with a learning rate a toy model learns with; resume.pt
    is kept at the end, so tests can compare finished runs' states."""
    values = {"lr": 5e-2, "progress": False, "log_every": 1, "keep_resume": True} | overrides
    return TrainConfig(out_dir=tmp_path / name, **values)


def params_of(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: value.detach().clone() for name, value in model.state_dict().items()}


def assert_same(a: dict, b: dict, atol: float = 0.0) -> None:
    """Every tensor equal (atol 0: torch.equal) in two dicts with the same keys."""
    assert a.keys() == b.keys()
    for key in a:
        if atol == 0.0:
            assert torch.equal(a[key], b[key]), key
        else:
            torch.testing.assert_close(a[key], b[key], atol=atol, rtol=0, msg=key)


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
    reference(**whole)["loss"].backward()

    tmp = tmp_path_factory.mktemp("accum")
    common = {"max_steps": 1, "warmup_ratio": 0.0, "weight_decay": 0.0}
    train(accumulated, lambda e: micro, config(tmp, "a", grad_accum=len(micro), **common))
    train(single, lambda e: [whole], config(tmp, "b", grad_accum=1, **common))

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


# ---------------------------------------------------------------------------------------------
# Exact resume
# ---------------------------------------------------------------------------------------------


class Crash(RuntimeError):
    """Stands for the process dying."""


class CrashingBatches(list):
    """A list of batches whose item `crash_at` raises when it is read."""

    def __init__(self, batches, crash_at):
        super().__init__(batches)
        self.crash_at = crash_at

    def __getitem__(self, index):
        if index == self.crash_at:
            raise Crash(f"batch {index}")
        return super().__getitem__(index)


@pytest.mark.parametrize(
    "interrupt, amp, optimizer",
    [("batch", "off", "auto"), ("evaluate", "fp16", "hand"), ("batch", "bf16", "foreach")],
)
@pytest.mark.parametrize("device", DEVICES)
def test_resume_gives_exactly_the_uninterrupted_weights(
    tmp_path, interrupt, amp, optimizer, device
):
    batches = epochs_of(5, batch_size=3)  # 5 batches, grad_accum 2: 3 steps an epoch (2, 2, 1)
    held_out = epochs_of(2, seed=50)(0)

    def run_config(name):
        # save_every 2 puts resume checkpoints in the middle of epochs (steps 2, 4, 6, 8, 9)
        return config(
            tmp_path, name, epochs=3, grad_accum=2, amp=amp, optimizer=optimizer, eval_every=3,
            save_every=2, lr=1e-2,
        )  # fmt: skip

    def evaluate(model):
        return {"loss": mean_loss(model, held_out)}

    full_model = Toy(dropout=0.2)
    full = train(full_model, batches, run_config("full"), evaluate=evaluate, device=device)

    model = Toy(dropout=0.2)
    if interrupt == "batch":
        # epoch 1 (steps 4..6), batch 3: step 5 dies; the last checkpoint is step 4 (mid-epoch)
        def crashing(epoch):
            return CrashingBatches(batches(epoch), crash_at=3 if epoch == 1 else -1)

        with pytest.raises(Crash):
            train(model, crashing, run_config("resumed"), evaluate=evaluate, device=device)
    else:
        # the evaluation at step 6 dies; the last checkpoint is step 4 (mid-epoch)
        def crashing_evaluate(m):
            if len(calls) == 1:
                raise Crash("evaluate")
            calls.append(1)
            return evaluate(m)

        calls = []
        with pytest.raises(Crash):
            train(model, batches, run_config("resumed"), evaluate=crashing_evaluate, device=device)
    saved = torch.load(tmp_path / "resumed" / "resume.pt", weights_only=True)
    assert saved["progress"]["step"] == 4 and saved["progress"]["position"] == 2

    fresh = Toy(dropout=0.2, seed=123)  # the checkpoint, not the initial weights, decides
    resumed = train(
        fresh, batches, run_config("resumed"), evaluate=evaluate, resume=True, device=device
    )

    assert_same(params_of(fresh), params_of(full_model))
    final_full = torch.load(tmp_path / "full" / "resume.pt", weights_only=True)
    final_resumed = torch.load(tmp_path / "resumed" / "resume.pt", weights_only=True)
    for key in final_full["optimizer"]["state"]:
        assert_same(final_full["optimizer"]["state"][key], final_resumed["optimizer"]["state"][key])
    assert final_full["scheduler"] == final_resumed["scheduler"]
    assert final_full["scaler"] == final_resumed["scaler"]
    assert (resumed.steps, resumed.best_step, resumed.best_metric) == (
        full.steps,
        full.best_step,
        full.best_metric,
    )

    def numbers(history):
        return [{k: r[k] for k in r if k not in ("time", "examples_per_s")} for r in history]

    assert numbers(resumed.history) == numbers(full.history)
    logged = [
        json.loads(line) for line in (tmp_path / "resumed" / "log.jsonl").read_text().splitlines()
    ]
    assert logged == resumed.history


def test_resume_without_checkpoint_and_with_changed_settings(tmp_path):
    with pytest.raises(ValueError, match="nothing to resume"):
        train(Toy(), epochs_of(2), config(tmp_path, epochs=1), resume=True)
    train(Toy(), epochs_of(2), config(tmp_path, epochs=1))
    with pytest.warns(UserWarning, match="lr: 0.05 -> 0.001"):
        train(Toy(), epochs_of(2), config(tmp_path, epochs=1, lr=1e-3), resume=True)
    with pytest.warns(UserWarning, match="batches_per_epoch: 2 -> 3"):
        train(Toy(), epochs_of(3), config(tmp_path, epochs=1), resume=True)


# ---------------------------------------------------------------------------------------------
# Crashes while writing files leave the previous version loadable
# ---------------------------------------------------------------------------------------------


def test_crash_while_writing_best_keeps_previous_best(tmp_path, monkeypatch):
    snapshots, calls = [], []

    def evaluate(model):
        snapshots.append(params_of(model))
        return {"loss": -float(len(snapshots))}  # improves every time

    def save_best(model, folder):
        calls.append(folder)
        write_safetensors(model.state_dict(), folder / "model.safetensors")
        if len(calls) == 2:
            (folder / "half.bin").write_bytes(b"\0" * 10)
            raise Crash("while writing best")

    cfg = config(tmp_path, eval_every=1, max_steps=4)
    with pytest.raises(Crash):
        train(Toy(), epochs_of(4), cfg, evaluate=evaluate, save_best=save_best)
    best = tmp_path / "run" / "best"
    assert calls[1] != best  # written into a temporary folder, not into best/
    assert sorted(p.name for p in best.iterdir()) == ["model.safetensors"]
    assert_same(read_safetensors(best / "model.safetensors"), snapshots[0])

    # A crash between the two renames: best/ is gone, best.old/ holds the previous best.
    original_rename = best_module.os.rename

    def rename(src, dst):
        if str(dst).endswith("best"):
            raise Crash("between renames")
        original_rename(src, dst)

    previous_best = snapshots[0]
    snapshots.clear()
    monkeypatch.setattr(best_module.os, "rename", rename)
    with pytest.raises(Crash):
        train(Toy(seed=1), epochs_of(4), cfg, evaluate=evaluate)  # default save_best
    assert not best.exists() and (tmp_path / "run" / "best.old").is_dir()
    monkeypatch.undo()

    # The next start puts the previous best back, before anything else happens.
    def crash_at_once(model):
        raise Crash("first evaluation")

    with pytest.raises(Crash):
        train(Toy(), epochs_of(4), cfg, evaluate=crash_at_once)
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [
        "best",
        "log.jsonl",
        "resume.pt",
    ]
    assert_same(read_safetensors(best / "model.safetensors"), previous_best)
    assert not torch.equal(previous_best["out.weight"], snapshots[0]["out.weight"])


def test_crash_while_writing_resume_checkpoint_keeps_previous(tmp_path, monkeypatch):
    original_save = torch.save
    calls = []

    def save(obj, f):
        calls.append(1)
        if len(calls) == 3:
            f.write(b"PK\x03\x04 half a zip")
            raise Crash("while writing resume.pt")
        original_save(obj, f)

    cfg = config(tmp_path, max_steps=5, save_every=1, grad_accum=2)
    monkeypatch.setattr(torch, "save", save)
    with pytest.raises(Crash):
        train(Toy(), epochs_of(4), cfg)
    monkeypatch.undo()
    run = tmp_path / "run"
    assert sorted(p.name for p in run.iterdir()) == ["log.jsonl", "resume.pt"]  # no temp file
    saved = torch.load(run / "resume.pt", weights_only=True)
    assert saved["progress"]["step"] == 2

    full_model = Toy()
    train(
        full_model, epochs_of(4), config(tmp_path, "full", max_steps=5, save_every=1, grad_accum=2)
    )
    model = Toy()
    train(model, epochs_of(4), cfg, resume=True)
    assert_same(params_of(model), params_of(full_model))


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
# The log, the optimizer choice, torch.compile
# ---------------------------------------------------------------------------------------------


def test_jsonl_log_records(tmp_path):
    cfg = config(tmp_path, max_steps=7, log_every=2, eval_every=3, warmup_ratio=0.3)
    result = train(Toy(), epochs_of(3), cfg, evaluate=lambda m: {"loss": 1.0, "f1": 0.5})

    lines = (tmp_path / "run" / "log.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert records == result.history
    shape = [(r["step"], "eval" in r) for r in records]
    assert shape == [
        (2, False),
        (3, True),
        (4, False),
        (6, False),
        (6, True),
        (7, False),
        (7, True),
    ]
    training = [r for r in records if "eval" not in r]
    for record in training:
        assert set(record) == {"step", "epoch", "loss", "lr", "examples_per_s", "time"}
        expected_lr = cfg.lr * lr_schedule(record["step"] - 1, total_steps=7, warmup_steps=3)
        assert record["lr"] == pytest.approx(expected_lr, rel=1e-12)
        assert record["loss"] > 0 and record["examples_per_s"] > 0
        assert record["epoch"] == pytest.approx(record["step"] / 3)  # 3 batches an epoch
    assert [r["time"] for r in training] == sorted(r["time"] for r in training)
    assert all(r["eval"] == {"loss": 1.0, "f1": 0.5} for r in records if "eval" in r)


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
# Non-finite weights, the resume file's life, a resume.pt of another model
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


def test_a_finished_run_deletes_resume_pt_unless_kept(tmp_path):
    def crashing(epoch):
        return CrashingBatches(epochs_of(4)(epoch), crash_at=2)

    cfg = config(tmp_path, "crashed", max_steps=3, save_every=1, keep_resume=False)
    with pytest.raises(Crash):
        train(Toy(), crashing, cfg, evaluate=lambda m: {"loss": 0.0})
    assert check_resume(tmp_path / "crashed") == tmp_path / "crashed" / "resume.pt"

    result = train(Toy(), epochs_of(4), cfg, evaluate=lambda m: {"loss": 0.0}, resume=True)
    assert result.steps == 3
    assert sorted(p.name for p in (tmp_path / "crashed").iterdir()) == ["best", "log.jsonl"]
    with pytest.raises(ValueError, match=r"crashed/resume.pt does not exist"):
        check_resume(tmp_path / "crashed")

    kept = config(tmp_path, "kept", max_steps=3, keep_resume=True)
    train(Toy(), epochs_of(4), kept)
    assert torch.load(check_resume(tmp_path / "kept"), weights_only=True)["progress"]["step"] == 3


def test_a_light_final_resume_finishes_a_run_but_cannot_train_on(tmp_path):
    """light_final_resume: the last resume.pt holds the weights and progress, no optimizer
    state; a resume from it reproduces the finished weights and refuses to train further."""
    full = train(model := Toy(), epochs_of(4), config(tmp_path, "full", max_steps=3))
    light_cfg = config(tmp_path, "light", max_steps=3, light_final_resume=True)
    train(light := Toy(), epochs_of(4), light_cfg)
    assert_same(params_of(light), params_of(model))
    saved = torch.load(tmp_path / "light" / "resume.pt", weights_only=True)
    assert saved["light"] and saved["optimizer"] is None and saved["progress"]["step"] == 3
    kept = torch.load(tmp_path / "full" / "resume.pt", weights_only=True)
    assert not kept["light"] and kept["optimizer"]["state"]  # the full one: AdamW's moments

    again = train(restored := Toy(), epochs_of(4), light_cfg, resume=True)
    assert again.steps == full.steps == 3
    assert_same(params_of(restored), params_of(model))
    longer = config(tmp_path, "light", max_steps=5, light_final_resume=True)
    with pytest.raises(ValueError, match=r"light/resume.pt holds the end of a finished run "
                                         r"\(step 3\) without its optimizer state"):
        train(Toy(), epochs_of(4), longer, resume=True)


def test_resume_of_another_model_names_the_keys_before_training(tmp_path):
    class Wider(Toy):
        def __init__(self):
            super().__init__(dim=16)
            self.extra = nn.Linear(2, 2)

    cfg = config(tmp_path, max_steps=2)
    train(Toy(), epochs_of(2), cfg)
    log_before = (tmp_path / "run" / "log.jsonl").read_text()
    model = Wider()
    initial = params_of(model)
    with pytest.raises(ValueError, match=r"another model") as error:
        train(model, epochs_of(2), cfg, resume=True)
    message = str(error.value)
    assert "embed.weight: (12, 8) in the file, (12, 16) in the model" in message
    assert "keys of the model missing from the file (extra.weight; extra.bias)" in message
    assert_same(params_of(model), initial)
    assert (tmp_path / "run" / "log.jsonl").read_text() == log_before


def test_first_logged_loss_after_a_resume_is_the_uninterrupted_one(tmp_path):
    """The losses of the log window not yet written travel in resume.pt (log_every 3, a
    checkpoint every 2 steps: the crash leaves a window of one step unlogged)."""

    def run_config(name):
        return config(tmp_path, name, max_steps=9, log_every=3, save_every=2)

    full = train(Toy(), epochs_of(5), run_config("full"))

    def crashing(epoch):
        return CrashingBatches(epochs_of(5)(epoch), crash_at=1 if epoch == 1 else -1)

    with pytest.raises(Crash):
        train(Toy(), crashing, run_config("cut"))  # dies at step 7; checkpoint at step 6
    assert len(torch.load(tmp_path / "cut" / "resume.pt")["progress"]["window_losses"]) == 0
    with pytest.raises(Crash):
        train(
            Toy(),
            lambda e: CrashingBatches(epochs_of(5)(e), crash_at=0 if e == 1 else -1),
            run_config("cut2"),
        )  # dies at step 6; checkpoint at step 4, window holds step 4
    saved = torch.load(tmp_path / "cut2" / "resume.pt", weights_only=True)
    assert saved["progress"]["step"] == 4 and len(saved["progress"]["window_losses"]) == 1
    resumed = train(Toy(), epochs_of(5), run_config("cut2"), resume=True)

    def numbers(history):
        return [{k: r[k] for k in r if k not in ("time", "examples_per_s")} for r in history]

    assert numbers(resumed.history) == numbers(full.history)


class RecordingBar:
    """Stands for tqdm: records what each `update` would draw, and the order of events."""

    events: list = []

    def __init__(self, *args, **kwargs):
        self.postfix = None

    def set_postfix(self, refresh=True, **values):
        self.postfix = dict(values)

    def update(self, n=1):
        RecordingBar.events.append(("update", self.postfix))

    def unpause(self):
        pass

    def close(self):
        RecordingBar.events.append(("close", None))

    @staticmethod
    def write(text):
        RecordingBar.events.append(("write", text))


def test_the_bar_shows_each_step_own_loss_and_rate_and_closes_before_the_last_eval(
    tmp_path, monkeypatch
):
    RecordingBar.events = []
    monkeypatch.setattr(logbook_module, "tqdm", RecordingBar)
    cfg = config(tmp_path, max_steps=4, eval_every=2, warmup_ratio=0.5, progress=True)
    result = train(Toy(), epochs_of(4), cfg, evaluate=lambda m: {"loss": 0.0})
    shown = [postfix for event, postfix in RecordingBar.events if event == "update"]
    logged = [r for r in result.history if "eval" not in r]
    assert [p["loss"] for p in shown] == [f"{r['loss']:.4f}" for r in logged]
    assert [p["lr"] for p in shown] == [f"{r['lr']:.2e}" for r in logged]
    assert all(float(p["ex_s"]) > 0 for p in shown)
    kinds = [event for event, _ in RecordingBar.events]
    assert kinds[:5] == ["update", "update", "write", "update", "update"]
    assert kinds[5] == "close"  # before the final evaluation is written
    assert kinds[6] == "write"


def test_a_resume_with_another_lr_or_more_steps_rebuilds_the_schedule(tmp_path):
    """The lr of a resume is honoured (issue #31 row 12): from the restored step on, the logged
    learning rates are those of an uninterrupted run with the new lr and length, and the warning
    says the schedule is rebuilt."""
    train(Toy(), epochs_of(2), config(tmp_path, "cut", epochs=1, warmup_ratio=0.0))
    with pytest.warns(UserWarning, match=r"lr: 0.05 -> 0.001.*rebuilt at the restored step"):
        resumed = train(Toy(), epochs_of(2), config(tmp_path, "cut", epochs=2, lr=1e-3,
                                                      warmup_ratio=0.0), resume=True)
    fresh = train(Toy(), epochs_of(2), config(tmp_path, "fresh", epochs=2, lr=1e-3,
                                              warmup_ratio=0.0))
    lrs = [(r["step"], r["lr"]) for r in resumed.history if "lr" in r]
    expected = [(r["step"], r["lr"]) for r in fresh.history if "lr" in r]
    assert lrs[2:] == expected[2:] and [step for step, _ in lrs] == [1, 2, 3, 4]
    assert lrs[2][1] < 1e-3 != lrs[0][1]  # the new lr, decayed; not the old one


# ---------------------------------------------------------------------------------------------
# The loop alone: no file I/O; what it tells a recorder; torchrun needs its door
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


def test_the_loop_alone_writes_nothing_and_trains_as_with_its_files(tmp_path):
    """The textbook loop does no file I/O (out_dir is not even created), and the recorder that
    writes the files changes no number: the same weights (torch.equal) and the same records
    but for the timings."""
    cfg = config(tmp_path, "alone", epochs=2, eval_every=2, keep_resume=False)
    evaluate = lambda m: {"loss": mean_loss(m, epochs_of(2, seed=50)(0))}  # noqa: E731
    alone = Toy()
    quiet = train_module.train(alone, epochs_of(3), cfg, evaluate=evaluate)
    assert list(tmp_path.iterdir()) == []
    filed = Toy()
    loud = train(filed, epochs_of(3), config(tmp_path, "filed", epochs=2, eval_every=2),
                 evaluate=evaluate)
    assert_same(params_of(alone), params_of(filed))
    untimed = [{k: v for k, v in r.items() if k not in ("time", "examples_per_s")}
               for r in quiet.history]
    assert untimed == [{k: v for k, v in r.items() if k not in ("time", "examples_per_s")}
                       for r in loud.history]
    assert (quiet.best_metric, quiet.best_step) == (loud.best_metric, loud.best_step)


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
