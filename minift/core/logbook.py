"""What a run tells: `out_dir/log.jsonl` (one JSON record a line) and the tqdm progress bar.

The loop builds the records: the mean loss of the steps since the previous one, the learning
rate, examples/s and seconds since the start (fp16 adds the skipped steps and the loss scale),
or an evaluation's `{"step", "eval"}`. Rank 0 alone writes the file and draws the bar. The file
is written whole at the start (empty, or a resumed run's history: records written after
resume.pt are dropped, since their steps run again), then one line at a time; a line that
cannot be written whole (a full disk) is cut off again, so the log ends with a complete line.
"""

import contextlib
import json
from pathlib import Path

from tqdm import tqdm

from minift.core.files import atomic_write


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
    """log.jsonl and the progress bar of one run (display only: nothing here changes a number
    the run computes)."""

    def __init__(self, out_dir: Path, history: list[dict], total_steps: int, step: int, *,
                 show: bool, is_main: bool) -> None:
        self.path, self.is_main = out_dir / "log.jsonl", is_main
        if is_main:
            lines = "".join(json.dumps(record) + "\n" for record in history)
            atomic_write(self.path, lines.encode("utf-8"))
        self.bar = tqdm(total=total_steps, initial=step, desc="train", disable=not show)
        self.shown_loss = "-"  # no loss read yet

    def write(self, record: dict) -> None:
        """Append a record to log.jsonl (rank 0)."""
        if self.is_main:
            append_log(self.path, record)

    def show_step(self, loss: float | None, lr: float, examples: int, seconds: float) -> None:
        """Advance the bar one step, showing its learning rate, its speed and its loss where the
        loop read one (None: the last stays; reading every step's would make the host wait for
        the device). The postfix is set before `update`, which draws it, or it shows a step late.
        """
        if loss is not None:
            self.shown_loss = f"{loss:.4f}"
        self.bar.set_postfix(loss=self.shown_loss, lr=f"{lr:.2e}",
                             ex_s=f"{examples / seconds:.0f}", refresh=False)
        self.bar.update(1)

    def show_eval(self, step: int, metrics: dict[str, float], best: bool) -> None:
        """Rank 0 prints an evaluation above the bar, marking a new best."""
        if self.is_main:
            shown = ", ".join(f"{k} {v:.4g}" for k, v in metrics.items())
            tqdm.write(f"step {step}: {shown}{' (best)' if best else ''}")
