"""What a run tells: `out_dir/log.jsonl` (one JSON record a line) and the tqdm progress bar.

Every rank keeps the records in `progress.history` (resume.pt carries them, and `train` returns
them); rank 0 alone writes the file and draws the bar. A training record holds the mean loss of
the steps since the previous one, the learning rate, examples/s and seconds since the start (fp16
adds the skipped steps and the loss scale); an evaluation record holds `{"step", "eval"}`.

The file is written whole at the start (empty, or a resumed run's history: records written after
resume.pt are dropped, since the steps that wrote them run again), then one line at a time; a
line that cannot be written whole (a full disk) is cut off again, so the log always ends with a
complete line.
"""

import contextlib
import json
import time
from pathlib import Path

import torch
from tqdm import tqdm

from minift.core.files import atomic_write
from minift.core.resume import Progress


def append_log(path: Path, record: dict) -> None:
    """Append one JSON line to the log and flush it, or leave the log as it was."""
    with open(path, "a", encoding="utf-8") as f:
        size = f.tell()
        try:
            f.write(json.dumps(record) + "\n")
            f.flush()
        except BaseException:
            with contextlib.suppress(OSError):
                f.truncate(size)
            raise


class Logbook:
    """log.jsonl, the progress bar and the clock of one run (timings only: nothing here changes a
    number the run computes)."""

    def __init__(self, out_dir: Path, progress: Progress, total_steps: int, *, show: bool,
                 is_main: bool) -> None:
        self.path, self.progress, self.is_main = out_dir / "log.jsonl", progress, is_main
        if is_main:
            lines = "".join(json.dumps(record) + "\n" for record in progress.history)
            atomic_write(self.path, lines.encode("utf-8"))
        self.bar = tqdm(total=total_steps, initial=progress.step, desc="train", disable=not show)
        now = time.perf_counter()
        self.start = now - progress.elapsed  # a resumed run's earlier time included
        self.last_log, self.examples = now, 0  # examples trained on since the last record

    def record(self, record: dict) -> None:
        """Add a record to the history (every rank) and to log.jsonl (rank 0)."""
        if self.is_main:
            append_log(self.path, record)
        self.progress.history.append(record)

    def show_step(self, loss: float, lr: float, examples: int, step_start: float) -> None:
        """Advance the bar by one step, showing that step's loss, learning rate and speed.

        The postfix is set before `update`, which draws it: set after, it would show a step late.
        """
        self.examples += examples
        speed = examples / (time.perf_counter() - step_start)
        self.bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", ex_s=f"{speed:.0f}",
                             refresh=False)
        self.bar.update(1)

    def log_training(self, epoch: float, lr: float, scaler: torch.amp.GradScaler) -> None:
        """Record the mean loss of the steps since the last record, the learning rate and speed."""
        progress, now = self.progress, time.perf_counter()
        record = {
            "step": progress.step,
            "epoch": epoch,
            "loss": sum(progress.window_losses) / len(progress.window_losses),
            "lr": lr,
            "examples_per_s": self.examples / max(now - self.last_log, 1e-9),
            "time": now - self.start,
        }
        if scaler.is_enabled():
            record |= {"skipped_steps": progress.skipped_steps, "loss_scale": scaler.get_scale()}
        self.record(record)
        progress.window_losses = []
        self.last_log, self.examples = now, 0

    def show_eval(self, metrics: dict[str, float]) -> None:
        """Rank 0 prints an evaluation above the bar, marking a new best."""
        if self.is_main:
            shown = ", ".join(f"{k} {v:.4g}" for k, v in metrics.items())
            best = " (best)" if self.progress.best_step == self.progress.step else ""
            tqdm.write(f"step {self.progress.step}: {shown}{best}")
