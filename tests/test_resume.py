"""minift.core.resume: a run killed anywhere resumes to exactly the uninterrupted weights, log and
optimizer state; resume.pt is replaced atomically, deleted at the end unless kept (or kept light),
refused for another model, and a resume with a new lr or length rebuilds the schedule."""

import json
import random

import pytest
import torch
from torch import nn
from toy_loop import (
    DEVICES,
    Crash,
    CrashingBatches,
    Toy,
    assert_same,
    config,
    epochs_of,
    mean_loss,
    params_of,
    train,
)

from minift.core.resume import check_resume


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


def test_a_light_final_resume_of_a_run_that_stopped_early_finishes_it(tmp_path):
    """A run stopped early ends before its last step; its light resume.pt still finishes it
    (no training is left to do, so no optimizer state is needed): same steps, same weights."""
    worse = iter(range(100))  # every evaluation worse than the first: patience 2 stops at step 3

    def evaluate(model):
        return {"loss": float(next(worse))}

    cfg = config(tmp_path, "early", max_steps=8, eval_every=1, patience=2,
                 light_final_resume=True)
    first = train(model := Toy(), epochs_of(4), cfg, evaluate=evaluate)
    assert first.stopped_early and first.steps == 3 < 8
    again = train(restored := Toy(seed=5), epochs_of(4), cfg, evaluate=evaluate, resume=True)
    assert again.stopped_early and again.steps == 3
    assert_same(params_of(restored), params_of(model))


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



def test_resume_restores_python_random_for_a_model_that_draws_from_it(tmp_path):
    """resume.pt holds Python's `random` state as well as torch's: a model whose training
    forward draws from `random` (here a random loss weight) resumes mid-epoch to exactly the
    uninterrupted weights."""
    class Drawing(Toy):
        def forward(self, input_ids, labels, **kwargs):
            loss = super().forward(input_ids, labels, **kwargs)["loss"]
            return {"loss": loss * (0.5 + random.random()) if self.training else loss}

    def run_config(name):
        return config(tmp_path, name, max_steps=6, save_every=2)

    train(full := Drawing(), epochs_of(4), run_config("full"))
    with pytest.raises(Crash):  # dies at step 6; the checkpoint is step 4, mid-epoch 1
        train(Drawing(), lambda e: CrashingBatches(epochs_of(4)(e), crash_at=1 if e == 1 else -1),
              run_config("cut"))
    assert torch.load(tmp_path / "cut" / "resume.pt", weights_only=True)["progress"]["step"] == 4
    random.seed(12345)  # what a resume finds in `random` must not matter
    train(resumed := Drawing(), epochs_of(4), run_config("cut"), resume=True)
    assert_same(params_of(resumed), params_of(full))


def test_a_resume_with_another_weight_decay_gives_the_optimizer_the_new_one(tmp_path):
    """weight_decay is a schedule key: the restored optimizer keeps its moments but takes this
    run's weight decay, group by group, as a fresh run with it has."""
    train(Toy(), epochs_of(2), config(tmp_path, "cut", epochs=1, weight_decay=0.01))
    with pytest.warns(UserWarning, match=r"weight_decay: 0.01 -> 0.3"):
        train(Toy(), epochs_of(2), config(tmp_path, "cut", epochs=2, weight_decay=0.3),
              resume=True)
    train(Toy(), epochs_of(2), config(tmp_path, "fresh", epochs=2, weight_decay=0.3))

    def decays(name):
        saved = torch.load(tmp_path / name / "resume.pt", weights_only=True)
        return [group["weight_decay"] for group in saved["optimizer"]["param_groups"]]

    assert decays("cut") == decays("fresh") and 0.3 in decays("fresh")


def test_a_resume_removes_the_temporary_files_a_killed_write_left(tmp_path):
    """A process killed inside `atomic_write` (SIGKILL: no cleanup runs) leaves its temporary
    file, `.<name>.<8 characters of mkstemp>.tmp`, beside the file; the next start removes
    those and nothing else of the folder's."""
    cfg = config(tmp_path, max_steps=4, save_every=1)
    with pytest.raises(Crash):
        train(Toy(), lambda e: CrashingBatches(epochs_of(4)(e), crash_at=2), cfg)
    run = tmp_path / "run"
    leftovers = [".resume.pt.k3_x9q2a.tmp", ".log.jsonl.abcd1234.tmp",
                 ".model.safetensors.zz_9y8x7.tmp"]
    kept = [".notes.tmp", "notes.k3_x9q2a.tmp", ".resume.pt.short.tmp"]  # not mkstemp's names
    for name in leftovers + kept:
        (run / name).write_bytes(b"half")
    train(Toy(), epochs_of(4), cfg, resume=True)
    assert sorted(p.name for p in run.iterdir()) == sorted(["log.jsonl", "resume.pt", *kept])
