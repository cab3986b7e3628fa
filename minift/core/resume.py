"""The resume checkpoint, `out_dir/resume.pt`: everything that decides the rest of a run.

It holds the weights, the optimizer, the schedule, the fp16 scaler, the `Progress` and every
rank's RNG states, so a resumed run ends with exactly the weights and the log of an
uninterrupted one. A resume that changes the run warns, naming the differences; a new length or
new learning rates are honoured (`SCHEDULE_KEYS`).
"""

import functools
import random
import re
import warnings
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path

import torch
from torch import Tensor, nn

from minift.core import ddp as distributed
from minift.core.best import recover_best
from minift.core.files import atomic_write, fsync_dir
from minift.core.state import Parts, Progress

RESUME_FILE = "resume.pt"
# The temporary file of `atomic_write` (`tempfile.mkstemp`: 8 random characters).
_ATOMIC_TEMPORARY = re.compile(r"\..+\.[a-z0-9_]{8}\.tmp")


def _rng_states() -> dict:
    """Every RNG the loop draws from: torch CPU, CUDA (if available), Python's `random`."""
    version, internal, gauss_next = random.getstate()
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "python": [version, list(internal), gauss_next]}


def _set_rng_states(states: dict) -> None:
    """Restore what `_rng_states` returned."""
    torch.set_rng_state(states["torch"])
    if states["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
    version, internal, gauss_next = states["python"]
    random.setstate((version, tuple(internal), gauss_next))


def check_resume(out_dir: str | Path) -> Path:
    """The path of `out_dir/resume.pt`; ValueError naming it when it is not there. Cheap (it
    reads nothing), so a caller can ask before loading a model."""
    path = Path(out_dir) / RESUME_FILE
    if not path.is_file():
        raise ValueError(f"resume=True but {path} does not exist: nothing to resume (a run that "
                         "completed deletes it unless keep_resume; train without resume to start "
                         "from scratch)")
    return path


def _check_fits(saved: Mapping[str, Tensor], model: nn.Module, path: Path) -> None:
    """ValueError listing the keys and shapes in which resume.pt's weights and `model` differ."""
    ours = model.state_dict()
    missing = [key for key in ours if key not in saved]
    unexpected = [key for key in saved if key not in ours]
    shapes = [f"{key}: {tuple(saved[key].shape)} in the file, {tuple(value.shape)} in the model"
              for key, value in ours.items()
              if key in saved and tuple(saved[key].shape) != tuple(value.shape)]
    problems = [f"{len(found)} {what} ({'; '.join(found[:5])}{', ...' if len(found) > 5 else ''})"
                for what, found in (("keys of the model missing from the file", missing),
                                    ("keys of the file not in the model", unexpected),
                                    ("shapes that differ", shapes)) if found]
    if problems:
        raise ValueError(f"{path} was written for another model: {', '.join(problems)}. Resume "
                         "with the model the run started from, or train without resume")


def load_resume(out_dir: Path, model: nn.Module) -> dict:
    """Read resume.pt (`weights_only=True`: no pickled code runs) as CPU tensors; refuse it when
    its weights are not `model`'s."""
    path = check_resume(out_dir)
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise ValueError(f"cannot read the resume checkpoint {path}: {error}") from error
    _check_fits(checkpoint["model"], model, path)
    return checkpoint


def prepare_folder(out_dir: Path, is_main: bool) -> None:
    """Create `out_dir`; rank 0 removes what a process killed mid-write left there (the
    temporary files of `atomic_write`, a half-swapped best/)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    if is_main:
        recover_best(out_dir / "best")
        for leftover in out_dir.glob(".*.tmp"):  # resume.pt's, log.jsonl's, the final save's
            if _ATOMIC_TEMPORARY.fullmatch(leftover.name) and leftover.is_file():
                leftover.unlink(missing_ok=True)


def _torch_save(obj: object, f) -> None:
    """`torch.save(obj, f)`, except that an OSError of the file (a full disk) comes out as
    itself, not as the RuntimeError torch's zip writer turns it into ("unexpected pos")."""
    errors: list[OSError] = []

    class Writer:
        def write(self, data) -> int:
            try:
                return f.write(data)
            except OSError as error:
                errors.append(error)
                raise

        def flush(self) -> None:
            f.flush()

    try:
        torch.save(obj, Writer())
    except RuntimeError:
        if errors:
            raise errors[0] from None
        raise


def save_resume(out_dir: Path, parts: Parts, progress: Progress, run: dict,
                ctx: distributed.Context, light: bool = False) -> None:
    """Write resume.pt (rank 0, atomically) with every rank's RNG states. `light`: at the
    end of a run, without the optimizer, schedule and scaler (AdamW's two moments make the full
    file three times the weights): what finishing an interrupted final save needs, no more."""
    rng = distributed.gather(_rng_states())  # every rank's, in rank order
    if ctx.is_main:
        checkpoint = {
            "model": parts.model.state_dict(),
            "light": light,
            "optimizer": None if light else parts.optimizer.state_dict(),
            "scheduler": None if light else parts.scheduler.state_dict(),
            "scaler": None if light else parts.scaler.state_dict(),
            "progress": asdict(progress),
            "run": run,
            "rng": rng[0],
            "rng_ranks": rng,
        }
        atomic_write(out_dir / RESUME_FILE, functools.partial(_torch_save, checkpoint))


# Settings a resume honours by rebuilding the optimizer's hyperparameters and the schedule at
# the restored step (the optimizer's moments are kept): a longer run, another learning rate.
SCHEDULE_KEYS = ("epochs", "max_steps", "total_steps", "lr", "lr_by_prefix", "weight_decay",
                 "warmup_ratio", "schedule")


def _warn_if_run_differs(saved: dict, current: dict, path: Path) -> list[str]:
    """Warn, naming each setting, when a resume changes what the run computes; return the
    keys that differ."""
    changed = [key for key in current if saved.get(key) != current[key]]
    differences = [f"{key}: {saved.get(key)!r} -> {current[key]!r}" for key in changed]
    if differences:
        rebuilt = [key for key in changed if key in SCHEDULE_KEYS]
        how = (f"; the learning rates and schedule are rebuilt at the restored step for "
               f"{', '.join(rebuilt)}" if rebuilt else "")
        warnings.warn(
            f"resuming from {path} with settings that differ from the interrupted run "
            f"({'; '.join(differences)}): the result will not match an uninterrupted run{how}",
            UserWarning,
            stacklevel=5,  # the caller of train (through Checkpoints.start and restore)
        )
    return changed


def _rebuild_schedule(parts: Parts, fresh: list[dict], base_lrs: list[float]) -> None:
    """Give the restored optimizer this run's hyperparameters (`fresh`: its groups as built) and
    put each group's learning rate where this run's schedule has it at the restored step."""
    optimizer, scheduler = parts.optimizer, parts.scheduler
    for group, hyper in zip(optimizer.param_groups, fresh, strict=True):
        group.update(hyper)
    scheduler.base_lrs = list(base_lrs)
    step = scheduler.last_epoch
    lrs = [base * factor(step) for base, factor in zip(base_lrs, scheduler.lr_lambdas, strict=True)]
    for group, lr in zip(optimizer.param_groups, lrs, strict=True):
        group["lr"] = lr
    scheduler._last_lr = lrs


def restore(checkpoint: dict, parts: Parts, run: dict, out_dir: Path,
            ctx: distributed.Context) -> Progress:
    """Put the run back where resume.pt left it; return its progress. A light resume.pt
    (`save_resume(light=True)`) holds the weights and progress of a run that ended, so that its
    final save can be done again; it has no optimizer to train on."""
    path, progress = out_dir / RESUME_FILE, Progress(**checkpoint["progress"])
    if checkpoint.get("light"):
        if run["total_steps"] > progress.step and not progress.stopped_early:
            raise ValueError(
                f"{path} holds the end of a finished run (step {progress.step}) without its "
                f"optimizer state, so it cannot train on to step {run['total_steps']}: "
                "keep_resume keeps the full state; or start a new run from the saved model")
        parts.model.load_state_dict(checkpoint["model"])
    else:
        changed = _warn_if_run_differs(checkpoint["run"], run, path)
        fresh = [{k: v for k, v in group.items() if k != "params"}
                 for group in parts.optimizer.param_groups]
        base_lrs = list(parts.scheduler.base_lrs)
        saved_groups = len(checkpoint["optimizer"]["param_groups"])
        if saved_groups != len(fresh):
            raise ValueError(f"{path}: its optimizer has {saved_groups} parameter groups, this "
                             f"run {len(fresh)} (`lr_by_prefix` changed): train without resume")
        parts.model.load_state_dict(checkpoint["model"])
        parts.optimizer.load_state_dict(checkpoint["optimizer"])
        parts.scheduler.load_state_dict(checkpoint["scheduler"])
        if any(key in SCHEDULE_KEYS for key in changed):
            _rebuild_schedule(parts, fresh, base_lrs)
        if parts.scaler.is_enabled() and checkpoint["scaler"]:
            parts.scaler.load_state_dict(checkpoint["scaler"])
    rng = checkpoint.get("rng_ranks") or [checkpoint["rng"]]
    _set_rng_states(rng[ctx.rank % len(rng)])  # last, so nothing above draws from them
    return progress


def finish(out_dir: Path) -> None:
    """A finished run keeps no resume state: remove resume.pt, durably."""
    (out_dir / RESUME_FILE).unlink(missing_ok=True)
    fsync_dir(out_dir)
