"""The files a run keeps in `out_dir`: the recorder the recipes hand to the training loop.

`minift.core.loop.train` does no file I/O of its own; it tells a recorder what happened. This
one, `Checkpoints`, keeps what a long run needs on disk, each part in a module of its own:

- `out_dir/resume.pt` (`minift.core.resume`): a run killed at any moment continues with
  `Checkpoints(resume=True)` and ends with the weights and log of an uninterrupted one;
- `out_dir/log.jsonl` and the progress bar (`minift.core.logbook`);
- `out_dir/best/`, the model of the best evaluation (`minift.core.best`).

Every rank calls it; rank 0 alone writes, each file atomically (`minift.core.files`).

    train(model, batches, config, evaluate=evaluate, recorder=Checkpoints(resume=True))
"""

from collections.abc import Callable
from pathlib import Path

from torch import nn

from minift.core.best import default_save_best, save_best_atomically
from minift.core.logbook import Logbook
from minift.core.resume import (
    check_resume,
    finish,
    load_resume,
    prepare_folder,
    restore,
    save_resume,
)
from minift.core.state import Parts, Progress


class Checkpoints:
    """The recorder that keeps a run's files in `config.out_dir`. `resume=True`: continue the
    run resume.pt holds. `save_best(model, folder)` fills an empty folder that then replaces
    `out_dir/best` (default: `best.default_save_best`)."""

    def __init__(self, *, resume: bool = False,
                 save_best: Callable[[nn.Module, Path], None] | None = None) -> None:
        self.resume, self.save_best = resume, save_best or default_save_best

    def start(self, config, parts: Parts, run: dict, parallel) -> Progress | None:
        """Prepare `out_dir`, restore resume.pt when resuming, open log.jsonl and the bar."""
        self.out_dir, self.keep_resume = Path(config.out_dir), config.keep_resume
        self.parallel, self.total_steps = parallel, run["total_steps"]
        checkpoint = load_resume(self.out_dir, parts.model) if self.resume else None
        prepare_folder(self.out_dir, parallel.is_main)
        progress = None
        if checkpoint is not None:
            progress = restore(checkpoint, parts, run, self.out_dir, parallel)
            if parallel.is_main:
                print(f"train: resumed from {check_resume(self.out_dir)} at step {progress.step}")
        self.log = Logbook(self.out_dir, progress.history if progress else [], self.total_steps,
                           progress.step if progress else 0,
                           show=config.progress and parallel.is_main, is_main=parallel.is_main)
        return progress

    def stepped(self, progress: Progress, loss: float | None, lr: float, examples: int,
                seconds: float) -> None:
        """Advance the bar; close it after the last step, so the final evaluation is no part of
        the training rate."""
        self.log.show_step(loss, lr, examples, seconds)
        if progress.step >= self.total_steps:
            self.log.bar.close()

    def logged(self, record: dict) -> None:
        self.log.write(record)

    def evaluated(self, model: nn.Module, progress: Progress, record: dict,
                  improved: bool) -> None:
        """Log the evaluation; when it improved, swap the model into `out_dir/best` (rank 0)."""
        self.log.write(record)
        if improved and self.parallel.is_main:
            save_best_atomically(self.save_best, model, self.out_dir / "best")
        self.log.show_eval(progress.step, record["eval"], improved)
        self.log.bar.unpause()  # the time spent evaluating is not training time

    def resume_point(self, parts: Parts, progress: Progress, run: dict, light: bool) -> None:
        """Write resume.pt (`light`: the end of a run, without the optimizer's state)."""
        save_resume(self.out_dir, parts, progress, run, self.parallel, light=light)
        self.log.bar.unpause()

    def end(self, progress: Progress, completed: bool) -> None:
        """Close the bar; a completed run keeps no resume state unless `keep_resume`."""
        self.log.bar.close()
        if completed and self.parallel.is_main and not self.keep_resume:
            finish(self.out_dir)
