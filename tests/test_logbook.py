"""minift.core.logbook: log.jsonl holds the loop's records, one a line (the learning rate of the
schedule, examples/s, time), and the progress bar shows each step's own loss and rate."""

import json

import pytest
from toy_loop import Toy, config, epochs_of, train

import minift.core.logbook as logbook_module
from minift.core.optim import lr_schedule


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

