"""The training loop: any module that returns a loss, AdamW, warmup then decay, evaluation.

`train` is one loop you can read top to bottom (nanoGPT's `train.py` is the model). It knows
nothing about BERT: the model is any `nn.Module` whose `forward(**batch)` returns a dict with key
"loss" or an object with a `.loss` attribute, the MEAN loss over the batch's targets. Read in
this order: `TrainConfig` and `TrainResult`; the loop's two doors (`Recorder`, `OneProcess`);
the small pieces (batches and losses, one optimizer step, evaluation); then `train`. With
`minift.core.optim` and `minift.core.state` it is all a reader needs to copy out.

Decisions a reader should know about:

- **Gradient accumulation gives the gradient of the whole window.** Each micro-batch's mean loss
  is weighted by its share of the window's targets (`labels != -100` when the batch has
  "labels", else its batch size) before `backward`, so the summed gradient is that of the mean
  over every target in the window. Dividing by the number of micro-batches, the textbook recipe,
  is right only when every micro-batch has as many targets; token-level losses (NER, MLM) break
  it, and transformers' Trainer has shipped that bug more than once. A micro-batch with no
  target at all is skipped (its mean would be 0/0).
- **Mixed precision.** bf16 runs under `torch.autocast` alone. fp16 adds a `GradScaler`, which
  skips the update when a gradient is inf/nan; the skipped step still counts and the schedule
  still advances (torch's documented pattern: `scaler.step`, `scaler.update`, then
  `scheduler.step()` every iteration), so the logged learning rates, `max_steps` and resume line
  up. (transformers' Trainer holds the schedule back on a skipped step instead.)
- **The step reads nothing from the device.** An `.item()` or `bool(tensor)` would drain a GPU's
  queue, so the losses stay on the device and are read in one go at each log, evaluation and
  resume point, where the weights are checked too: a nan/inf loss (fp32, bf16) raises
  `NonFiniteLossError` naming its step, epoch and batch (fp16: the scaler skips the step and the
  log counts it), a nan/inf weight `NonFiniteWeightsError`, before any evaluation or resume
  point, so no checkpoint ever holds a weight updated from a non-finite loss.
- **Determinism.** `torch.manual_seed` and `random.seed` at the start; `train_batches(epoch)`
  must return the same batches for the same epoch without drawing from the global RNG (seed a
  `torch.Generator` with seed + epoch), which drives dropout and is saved by a resume point.
- **No file I/O here.** The loop keeps its log in memory (`TrainResult.history`) and tells a
  `Recorder` what happened; the default records nothing, the recipes hand in
  `minift.core.checkpoints.Checkpoints` (resume.pt, log.jsonl, the bar, the best model).
- **Data parallel through one door.** Under `torchrun` the caller hands in
  `parallel=minift.core.ddp.setup(device.type)`: each rank trains on its rows of every global batch,
  each micro-batch weighted by its share of the window's targets times N (DDP averages the ranks'
  gradients), so N processes take the steps one process takes; gradients sync once per optimizer
  step; the loss is summed over the ranks; rank 0 evaluates and broadcasts the metrics, so early
  stopping is decided alike everywhere. Dropout draws from seed + rank.
"""

import contextlib
import math
import os
import random
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from minift.core.optim import IMPLEMENTATIONS, SCHEDULES, make_optimizer, make_scheduler
from minift.core.state import Parts, Progress

# The label of targets that carry no loss (cross-entropy's default ignore_index, -100 everywhere).
IGNORE_INDEX = -100

AMP_DTYPES: dict[str, torch.dtype | None] = {"off": None, "bf16": torch.bfloat16,
                                              "fp16": torch.float16}

# --- Configuration and result ---------------------------------------------------------------------


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _integer(name: str, least: int, optional: bool = False) -> tuple:
    """The rule of an integer field: at least `least`, or None where `optional`."""
    expected = f"an integer >= {least}" + (" or None" if optional else "")
    return name, expected, lambda v: (optional and v is None) or (_is_int(v) and v >= least)


# What each field of a TrainConfig must be, checked in this order: the first failure is the error.
_RULES = (
    ("out_dir", "a folder path", lambda v: isinstance(v, str | os.PathLike) and str(v) != ""),
    _integer("epochs", 1),
    _integer("max_steps", 1, optional=True),
    _integer("grad_accum", 1),
    _integer("eval_every", 1, optional=True),
    _integer("save_every", 1, optional=True),
    _integer("patience", 1, optional=True),
    _integer("log_every", 1),
    _integer("seed", 0),
    ("lr", "a finite learning rate > 0",
     lambda v: isinstance(v, int | float) and math.isfinite(v) and v > 0),
    ("lr_by_prefix", "None or a dict of name prefixes to finite learning rates > 0",
     lambda v: v is None or (isinstance(v, dict) and all(
         isinstance(prefix, str) and prefix and not isinstance(rate, bool)
         and isinstance(rate, int | float) and math.isfinite(rate) and rate > 0
         for prefix, rate in v.items()))),
    ("weight_decay", "a finite number >= 0",
     lambda v: isinstance(v, int | float) and 0 <= v < math.inf),
    ("warmup_ratio", "a fraction in [0, 1]", lambda v: isinstance(v, int | float) and 0 <= v <= 1),
    ("max_grad_norm", "a norm > 0 or None (no clipping)",
     lambda v: v is None or (isinstance(v, int | float) and 0 < v < math.inf)),
    ("schedule", f"one of {SCHEDULES}", lambda v: v in SCHEDULES),
    ("amp", f"one of {tuple(AMP_DTYPES)}", lambda v: v in AMP_DTYPES),
    ("optimizer", f"one of {IMPLEMENTATIONS}", lambda v: v in IMPLEMENTATIONS),
    ("metric", "the name of a key of evaluate()'s dict", lambda v: isinstance(v, str) and v != ""),
    *((name, "True or False", lambda v: isinstance(v, bool))
      for name in ("greater_is_better", "compile", "compile_dynamic", "progress", "keep_resume",
                   "light_final_resume")),
)


@dataclass
class TrainConfig:
    """How to train. Defaults are those of BERT fine-tuning (and of transformers' Trainer).

    Steps are optimizer steps (one per `grad_accum` batches); a skipped fp16 step counts.
    The fields are checked when the config is made and again when `train` starts; `check()`
    needs no model, so a command can call it before loading one.
    """

    out_dir: str | Path  # resume checkpoint, log.jsonl, best/ go here (by the recorder)
    epochs: int = 3
    max_steps: int | None = None  # optimizer steps in total; overrides epochs when set
    lr: float = 5e-5
    # learning rates of their own, by parameter-name prefix: {"classifier.": 1e-2} gives a
    # classifier head its own rate (see minift.core.optim.param_groups); None: one rate for all
    lr_by_prefix: dict[str, float] | None = None
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1  # fraction of total optimizer steps (rounded up, as transformers)
    schedule: str = "linear"  # linear | cosine | constant
    grad_accum: int = 1
    max_grad_norm: float | None = 1.0
    amp: str = "off"  # off | bf16 | fp16
    optimizer: str = "auto"  # auto | fused | foreach | hand (see minift.core.optim.make_optimizer)
    eval_every: int | None = None  # optimizer steps between evaluations; None: end of each epoch
    save_every: int | None = None  # steps between resume checkpoints; None: at each evaluation
    metric: str = "loss"  # key of evaluate()'s dict for best checkpoint / early stopping
    greater_is_better: bool = False
    patience: int | None = None  # evaluations without improvement before stopping early
    seed: int = 0
    compile: bool = False  # torch.compile, static shapes: the commands pad batches to buckets
    compile_dynamic: bool = False  # torch.compile for any shape (dynamic=True)
    progress: bool = True  # tqdm bar with loss, lr, examples/s
    log_every: int = 10  # steps between JSONL training-loss records
    keep_resume: bool = False  # keep resume.pt when the run completes (it goes otherwise)
    # with keep_resume: the last resume.pt holds the weights and the progress, not the optimizer
    # (a third of the size): enough to finish a save the run was killed in, not to train on
    light_final_resume: bool = False

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        """Raise ValueError naming the first field whose value cannot make a run."""
        for name, expected, holds in _RULES:
            if not holds(getattr(self, name)):
                raise ValueError(f"TrainConfig.{name}: expected {expected}, got "
                                 f"{getattr(self, name)!r}")


@dataclass
class TrainResult:
    """What a run did. `history`: every training and evaluation record, in order (what
    `minift.core.checkpoints.Checkpoints` writes to `out_dir/log.jsonl`)."""

    steps: int
    epochs_completed: float
    best_metric: float | None
    best_step: int | None
    stopped_early: bool
    history: list[dict]
    last_eval: dict | None


class NonFiniteLossError(ValueError):
    """The loss became nan or inf (fp32 or bf16): training stopped where the losses were read,
    before any evaluation or resume point after that step."""


class NonFiniteWeightsError(NonFiniteLossError):
    """A weight became nan or inf after an update: training stopped (a NonFiniteLossError too)."""


# Settings that change the numbers a run produces: a resume that changes one of them warns.
_RUN_KEYS = (
    "epochs", "max_steps", "lr", "lr_by_prefix", "weight_decay", "warmup_ratio", "schedule", "grad_accum",
    "max_grad_norm", "amp", "optimizer", "eval_every", "save_every", "metric",
    "greater_is_better", "patience", "seed",
)  # fmt: skip


# --- The two doors: what a run leaves behind, and how many processes run it -----------------------


class Recorder:
    """What a run leaves besides the trained model, told on every rank; this default keeps
    nothing. `minift.core.checkpoints.Checkpoints` has the same six methods and writes files."""

    def start(self, config: TrainConfig, parts: Parts, run: dict, parallel) -> Progress | None:
        """Once, before the first step: it may put `parts` where an earlier run left them and
        return that run's `Progress` (None: a fresh run)."""
        return None

    def stepped(self, progress: Progress, loss: float | None, lr: float, examples: int, seconds):
        """After each optimizer step (`loss`: None where the loop did not read it)."""

    def logged(self, record: dict) -> None:
        """After a training record (already in `progress.history`)."""

    def evaluated(self, model: nn.Module, progress: Progress, record: dict, improved: bool):
        """After an evaluation (already in `progress.history`); `improved`: it beat the best."""

    def resume_point(self, parts: Parts, progress: Progress, run: dict, light: bool) -> None:
        """When one is due (`progress.elapsed` up to date)."""

    def end(self, progress: Progress, completed: bool) -> None:
        """However the loop ends (`completed`: it ran to its end)."""


class OneProcess:
    """How the loop runs by default: one process, nothing to split, sum or share. Under
    torchrun the caller hands in `minift.core.ddp.setup(device.type)`, a `Context` with the same
    members that splits each global batch between the ranks, wraps the model in
    `DistributedDataParallel` and sums and broadcasts across the ranks."""

    rank, world_size, enabled, is_main = 0, 1, False, True

    def shard(self, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        return dict(batch)  # this rank's rows of a global batch: all of them

    def wrap(self, model: nn.Module, device: torch.device):
        return model, contextlib.nullcontext  # the module to call, and its `no_sync`

    def all_sum(self, values: Tensor) -> Tensor:
        return values

    def broadcast(self, obj: object) -> object:
        return obj


# --- Batches and losses ---------------------------------------------------------------------------


def to_device(batch: Mapping[str, Tensor], device: torch.device) -> dict[str, Tensor]:
    """Move every tensor of the batch to `device`; anything else passes through."""
    return {key: value.to(device, non_blocking=True) if isinstance(value, Tensor) else value
            for key, value in batch.items()}


def _batch_size(batch: Mapping[str, Tensor]) -> int:
    """The length of the batch's first dimension (of its first tensor with one)."""
    for value in batch.values():
        if isinstance(value, Tensor) and value.ndim > 0:
            return value.shape[0]
    raise ValueError(f"a batch needs at least one tensor with a batch dimension, got keys "
                     f"{list(batch)}")


def _count_targets(batch: Mapping[str, Tensor]) -> int:
    """How many targets the batch's mean loss averages over: `labels != -100`, else batch size."""
    labels = batch.get("labels")
    if isinstance(labels, Tensor):
        return int((labels != IGNORE_INDEX).sum())
    return _batch_size(batch)


def _loss_of(output: object) -> Tensor:
    """The scalar loss of a model output: `output["loss"]` or `output.loss`."""
    loss = output.get("loss") if isinstance(output, Mapping) else getattr(output, "loss", None)
    if not isinstance(loss, Tensor) or loss.ndim != 0:
        found = type(loss).__name__ if not isinstance(loss, Tensor) else f"shape {tuple(loss.shape)}"
        raise ValueError("the model's forward(**batch) must return a dict with key 'loss' or an "
                         "object with a .loss attribute holding the scalar mean loss; found "
                         f"{found}")
    return loss


def _stand_in(window: list[dict[str, Tensor]]) -> dict[str, Tensor]:
    """One row of the window that has a target: what a rank with nothing to do runs at weight 0."""
    for batch in window:
        size = _batch_size(batch)
        labels = batch.get("labels")
        for row in range(size):
            if not isinstance(labels, Tensor) or bool((labels[row] != IGNORE_INDEX).any()):
                return {
                    key: value[row : row + 1]
                    if (isinstance(value, Tensor) and value.ndim > 0 and value.shape[0] == size)
                    or (isinstance(value, list) and len(value) == size) else value
                    for key, value in batch.items()
                }
    raise AssertionError("_stand_in is only called for a window with targets")


def _backward_window(forward_model: nn.Module, window: list[dict[str, Tensor]],
                     device: torch.device, amp_dtype: torch.dtype | None,
                     scaler: torch.amp.GradScaler, parallel: OneProcess,
                     no_sync: Callable[[], contextlib.AbstractContextManager]) -> Tensor:
    """Forward and backward this rank's part of every micro-batch of one optimizer step's window,
    each weighted as the module docstring says; return the weighted losses, which add up to the
    window's mean loss (under DDP, once summed over the ranks).

    Under DDP the ranks sync on the window's last backward only (`no_sync` before it); a rank
    whose last shard has no target runs that backward on a stand-in row at weight 0, so every
    rank joins the all-reduce.
    """
    window_targets = sum(_count_targets(batch) for batch in window)  # over the global batches
    losses = torch.zeros(len(window), device=device)
    if window_targets == 0:  # nothing to learn from, on any rank
        return losses
    shards = [parallel.shard(batch) for batch in window]
    for i, part in enumerate(shards):
        n_targets = _count_targets(part)
        last = i == len(window) - 1
        if n_targets == 0 and not (last and parallel.enabled):
            continue
        batch = part if n_targets > 0 else _stand_in(window)
        weight = n_targets * parallel.world_size / window_targets
        autocast = (torch.autocast(device_type=device.type, dtype=amp_dtype)
                    if amp_dtype is not None else contextlib.nullcontext())
        with no_sync() if parallel.enabled and not last else contextlib.nullcontext():
            with autocast:
                loss = _loss_of(forward_model(**to_device(batch, device))).float()
            scaler.scale(loss * weight).backward()  # fp16: the scaled loss; else the loss itself
        losses[i] = loss.detach() * (n_targets / window_targets)
    return losses


# --- One optimizer step, and the checks around it -------------------------------------------------


def _optimizer_step(parts: Parts, trainable: list[Tensor], max_grad_norm: float | None):
    """Clip, step (fp16: unless a gradient is inf/nan), zero the gradients, advance the schedule;
    return the learning rate the step ran at and whether the fp16 scaler skipped it."""
    optimizer, scheduler, scaler = parts.optimizer, parts.scheduler, parts.scaler
    lr = scheduler.get_last_lr()[0]
    if max_grad_norm is not None:
        scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
        torch.nn.utils.clip_grad_norm_(trainable, max_grad_norm)
    scale_before = scaler.get_scale()
    scaler.step(optimizer)  # fp16: no update when a gradient is inf/nan
    scaler.update()  # ... and then the scale shrinks
    skipped = scaler.get_scale() < scale_before
    optimizer.zero_grad(set_to_none=True)
    with warnings.catch_warnings():
        # A skipped first step makes LambdaLR warn that it steps before the optimizer; stepping
        # anyway is the intent (see the module docstring).
        warnings.filterwarnings("ignore", "Detected call of `lr_scheduler")
        scheduler.step()
    return lr, skipped


def _read_losses(pending: list[tuple[int, int, range, Tensor]], progress: Progress, amp: str,
                 parallel: OneProcess) -> float:
    """Read the pending steps' (step, epoch, batches, weighted losses on the device), add each
    step's loss to the log window, return the last. Raise NonFiniteLossError naming the first
    nan/inf loss's step; under fp16 an overflow is the scaler's to handle: it skips the step."""
    values = parallel.all_sum(torch.cat([losses for *_, losses in pending])).tolist()  # 1 sync
    for step, epoch, indices, losses in pending:
        micro, values = values[: len(losses)], values[len(losses) :]
        step_loss = sum(micro)
        if amp != "fp16" and not math.isfinite(step_loss):
            bad = next(i for i, x in zip(indices, micro, strict=True) if not math.isfinite(x))
            raise NonFiniteLossError(
                f"the loss is {step_loss} at step {step} (epoch {epoch}, batch {bad}); training "
                f"stopped at step {progress.step}, where the losses were read, before any "
                "evaluation or resume point saw the weights it updated. Check that batch, lower "
                "the learning rate, or use amp='off'")
        progress.window_losses.append(step_loss)  # the window's mean loss
    pending.clear()
    return progress.window_losses[-1]


def _check_weights(model: nn.Module, step: int) -> None:
    """Raise NonFiniteWeightsError naming the parameters that hold a nan or inf after `step`:
    one fused reduction (each weight's largest |value|, inf or nan where any is) and one read."""
    named = [(name, param) for name, param in model.named_parameters() if param.requires_grad]
    with torch.no_grad():
        finite = torch.stack(torch._foreach_norm([p for _, p in named], math.inf)).isfinite()
    bad = [name for (name, _), ok in zip(named, finite.tolist(), strict=True) if not ok]
    if not bad:
        return
    more = f" and {len(bad) - 1} more" if len(bad) > 1 else ""
    raise NonFiniteWeightsError(
        f"the weights hold nan or inf after step {step} ({bad[0]}{more}): the updates diverged "
        "and training stopped (the last resume checkpoint is from before). Lower the learning "
        "rate, or train with amp='off'")


# --- Evaluation and early stopping ----------------------------------------------------------------


def _run_evaluation(model: nn.Module, evaluate: Callable[[nn.Module], dict[str, float]],
                    metric: str) -> dict[str, float]:
    """Call `evaluate(model)` in eval mode under no_grad, restore train mode, check the dict."""
    model.eval()
    try:
        with torch.no_grad():
            raw = evaluate(model)
    finally:
        model.train()
    if not isinstance(raw, Mapping):
        raise ValueError(f"evaluate(model) must return a dict of metrics, got {type(raw).__name__}")
    metrics = {}
    for key, value in raw.items():
        try:
            metrics[str(key)] = float(value)
        except (TypeError, ValueError):
            message = f"evaluate(model) returned {key!r}: {value!r}, expected a number"
            raise ValueError(message) from None
    if metric not in metrics:
        raise ValueError(f"TrainConfig.metric is {metric!r} but evaluate(model) returned the keys "
                         f"{sorted(metrics)}")
    return metrics


def _improved(value: float, best: float | None, greater_is_better: bool) -> bool:
    """Strictly better than `best` (any number but nan beats no best yet)."""
    if math.isnan(value):
        return False
    if best is None:
        return True
    return value > best if greater_is_better else value < best


def _evaluate(model: nn.Module, evaluate: Callable[[nn.Module], dict[str, float]],
              config: TrainConfig, progress: Progress, recorder: Recorder,
              parallel: OneProcess) -> None:
    """Evaluate, record the metrics, tell the recorder whether they improved (it keeps the best
    model), decide early stopping. Rank 0 evaluates; every rank gets its metrics and decides alike.
    """
    metrics = parallel.broadcast(_run_evaluation(model, evaluate, config.metric)
                                 if parallel.is_main else None)
    record = {"step": progress.step, "eval": metrics}
    progress.history.append(record)
    progress.last_eval = metrics
    value = metrics[config.metric]
    improved = _improved(value, progress.best_metric, config.greater_is_better)
    if improved:
        progress.best_metric, progress.best_step, progress.bad_evals = value, progress.step, 0
    else:
        progress.bad_evals += 1
        patience = config.patience
        progress.stopped_early = patience is not None and progress.bad_evals >= patience
    recorder.evaluated(model, progress, record, improved)


# --- The loop -------------------------------------------------------------------------------------


def _check_device(config: TrainConfig, model: nn.Module, device: torch.device) -> None:
    """Refuse mixed precision the device cannot run (before anything is trained)."""
    if config.amp != "off" and not torch.amp.is_autocast_available(device.type):
        raise ValueError(f"TrainConfig.amp={config.amp!r}: torch has no autocast for {device}")
    # The only CUDA-specific choices of the loop sit here (the fused-AdamW choice is optim.py's).
    if device.type == "cuda" and config.amp == "bf16" and not torch.cuda.is_bf16_supported():
        raise ValueError(f"TrainConfig.amp='bf16': {torch.cuda.get_device_name(device)} lacks bf16")
    if config.amp == "fp16":
        half = [name for name, param in model.named_parameters()
                if param.requires_grad and param.dtype == torch.float16]
        if half:
            raise ValueError(
                "TrainConfig.amp='fp16' needs float32 weights (the GradScaler cannot unscale fp16 "
                f"gradients), but {len(half)} trainable parameters are float16, e.g. {half[0]!r}; "
                "keep the model in float32 and let autocast run the matmuls in fp16")


def _place(model: nn.Module, device: torch.device | str | None, parallel: OneProcess):
    """The device to train on (default: the model's); refuse a torchrun launch without DDP."""
    if int(os.environ.get("WORLD_SIZE", "1")) != parallel.world_size:
        raise ValueError(f"torchrun started {os.environ['WORLD_SIZE']} processes: pass "
                         "train(parallel=minift.core.ddp.setup(device.type)), or each trains alone")
    if device is None:
        first_param = next(model.parameters(), None)
        if first_param is None:
            raise ValueError(f"{type(model).__name__} has no parameters to train")
        device = first_param.device
    return torch.device(device)


def _epoch_batches(train_batches: Callable[[int], Sequence], epoch: int) -> Sequence:
    """`train_batches(epoch)`, refused when empty."""
    batches = train_batches(epoch)
    if len(batches) == 0:
        raise ValueError(f"train_batches({epoch}) returned no batches")
    return batches


def _make_parts(model: nn.Module, config: TrainConfig, total_steps: int,
                device: torch.device) -> Parts:
    """The optimizer, its schedule and the fp16 loss scaler for `model`."""
    optimizer = make_optimizer(model, config.lr, config.weight_decay, impl=config.optimizer,
                               lr_by_prefix=config.lr_by_prefix)
    warmup_steps = math.ceil(config.warmup_ratio * total_steps)
    scheduler = make_scheduler(optimizer, total_steps, warmup_steps, kind=config.schedule)
    # fp16 needs loss scaling; bf16 and fp32 do not (a disabled scaler passes everything through).
    scaler = torch.amp.GradScaler(device.type, enabled=config.amp == "fp16")
    return Parts(model, optimizer, scheduler, scaler)


def _announce(model: nn.Module, trainable: list[Tensor], parallel: OneProcess) -> None:
    """Print (rank 0) what trains: the parameter counts, and the processes under torchrun."""
    if parallel.is_main:
        n_total = sum(param.numel() for param in model.parameters())
        print(f"train: {sum(p.numel() for p in trainable):,} trainable parameters of {n_total:,}")
        if parallel.enabled:
            print(f"train: {parallel.world_size} processes (DistributedDataParallel), each batch "
                  "split")


def _due(config: TrainConfig, step: int, epoch_done: bool, finished: bool) -> tuple[bool, ...]:
    """Whether this step writes a log record, evaluates, and saves resume.pt: at their intervals
    (evaluation: at the end of each epoch when `eval_every` is None; saving: at each evaluation
    when `save_every` is None), and all three at the end of the run."""
    log = finished or step % config.log_every == 0
    evaluate = finished or (step % config.eval_every == 0 if config.eval_every else epoch_done)
    save = finished or (step % config.save_every == 0 if config.save_every else evaluate)
    return log, evaluate, save


@dataclass
class _Clock:
    """The run's timings, for the log (nothing here changes a number the run computes)."""

    start: float  # `time.perf_counter()` when the run began, a resumed run's earlier time included
    last_log: float  # ... and at the last training record
    examples: int = 0  # examples trained on since the last training record


def _training_record(progress: Progress, epoch: float, lr: float, scaler: torch.amp.GradScaler,
                     clock: _Clock) -> dict:
    """The mean loss of the steps since the last record, the learning rate and the speed (fp16:
    the skipped steps and the loss scale too); the window of losses starts again."""
    now = time.perf_counter()
    record = {"step": progress.step, "epoch": epoch,
              "loss": sum(progress.window_losses) / len(progress.window_losses), "lr": lr,
              "examples_per_s": clock.examples / max(now - clock.last_log, 1e-9),
              "time": now - clock.start}
    if scaler.is_enabled():
        record |= {"skipped_steps": progress.skipped_steps, "loss_scale": scaler.get_scale()}
    progress.window_losses = []
    clock.last_log, clock.examples = now, 0
    return record


def train(model: nn.Module, train_batches: Callable[[int], Sequence[dict[str, Tensor]]],
          config: TrainConfig, *, evaluate: Callable[[nn.Module], dict[str, float]] | None = None,
          device: torch.device | str | None = None, recorder: Recorder | None = None,
          parallel: OneProcess | None = None) -> TrainResult:
    """Train `model` with AdamW on the batches `train_batches(epoch)` returns; see the module doc.

    - `model(**batch)` returns the mean loss; the model itself (not a compiled or DDP wrapper)
      is what `evaluate` receives and what gets saved.
    - `train_batches(epoch)`: that epoch's batches (dicts of tensors), the same for the same
      epoch and as many as epoch 0's. Total steps: `max_steps`, else
      `ceil(len(batches) / grad_accum) * epochs`.
    - `evaluate(model) -> {name: number}` runs every `eval_every` steps (else at the end of each
      epoch) and at the end, in eval mode under `torch.no_grad()`; `metric` decides the best
      evaluation and early stopping.
    - `device`: default the model's. `recorder`: what the run leaves behind (default: nothing).
      `parallel`: under torchrun, `minift.core.ddp.setup()`, every rank calling `train` alike.
    """
    # ---- check everything before anything runs ---------------------------------------------
    config.check()
    if config.patience is not None and evaluate is None:
        raise ValueError("TrainConfig.patience is set but no evaluate function was given")
    recorder, parallel = recorder or Recorder(), parallel or OneProcess()
    device = _place(model, device, parallel)
    _check_device(config, model, device)

    # ---- the pieces: model, data, optimizer, schedule, scaler, where the run stands ----------
    random.seed(config.seed + parallel.rank)
    torch.manual_seed(config.seed + parallel.rank)
    model.to(device)
    model.train()
    trainable = [param for param in model.parameters() if param.requires_grad]
    _announce(model, trainable, parallel)
    first_batches = _epoch_batches(train_batches, 0)
    total_steps = config.max_steps or math.ceil(len(first_batches) / config.grad_accum) * config.epochs
    parts = _make_parts(model, config, total_steps, device)
    run = {key: getattr(config, key) for key in _RUN_KEYS}
    run |= {"batches_per_epoch": len(first_batches), "total_steps": total_steps,
            "world_size": parallel.world_size}
    progress = recorder.start(config, parts, run, parallel) or Progress()
    now = time.perf_counter()
    clock = _Clock(start=now - progress.elapsed, last_log=now)
    forward_model, no_sync = parallel.wrap(model, device)
    if config.compile:
        forward_model = torch.compile(forward_model, dynamic=config.compile_dynamic)

    # ---- the loop ----------------------------------------------------------------------------
    completed, pending = False, []  # pending: the steps whose losses are not read yet
    try:
        while not (progress.step >= total_steps or progress.stopped_early
                   or (config.max_steps is None and progress.epoch >= config.epochs)):
            epoch = progress.epoch
            batches = first_batches if epoch == 0 else _epoch_batches(train_batches, epoch)
            while progress.position < len(batches):
                # One optimizer step over a window of up to grad_accum micro-batches.
                step_start, first = time.perf_counter(), progress.position
                indices = range(first, min(first + config.grad_accum, len(batches)))
                window = [batches[i] for i in indices]
                losses = _backward_window(forward_model, window, device, AMP_DTYPES[config.amp],
                                          parts.scaler, parallel, no_sync)
                lr, skipped = _optimizer_step(parts, trainable, config.max_grad_norm)
                progress.step, progress.position = progress.step + 1, first + len(window)
                progress.skipped_steps += int(skipped)
                pending.append((progress.step, epoch, indices, losses))  # on the device, unread
                examples = sum(map(_batch_size, window))
                clock.examples += examples

                # Then, when due: read the losses, check the weights, log, evaluate, save.
                epoch_done = progress.position >= len(batches)
                finished = progress.step >= total_steps or (
                    config.max_steps is None and epoch_done and epoch + 1 >= config.epochs)
                log_due, eval_due, save_due = _due(config, progress.step, epoch_done, finished)
                loss = None  # the host reads the device here only
                if log_due or eval_due or save_due:
                    loss = _read_losses(pending, progress, config.amp, parallel)
                    _check_weights(model, progress.step)
                recorder.stepped(progress, loss, lr, examples, time.perf_counter() - step_start)
                if log_due:
                    record = _training_record(progress, epoch + progress.position / len(batches),
                                              lr, parts.scaler, clock)
                    progress.history.append(record)
                    recorder.logged(record)
                if eval_due and evaluate is not None:
                    _evaluate(model, evaluate, config, progress, recorder, parallel)
                done = finished or progress.stopped_early
                if (save_due or done) and (config.keep_resume or not done):
                    progress.elapsed = time.perf_counter() - clock.start
                    recorder.resume_point(parts, progress, run,
                                          light=done and config.light_final_resume)
                if done:
                    break
            if progress.position >= len(batches):
                progress.epoch, progress.position = progress.epoch + 1, 0
        completed = True
    finally:
        recorder.end(progress, completed)

    if progress.stopped_early and parallel.is_main:
        print(f"train: stopped early at step {progress.step}: {config.metric} has not improved "
              f"in {progress.bad_evals} evaluations (best {progress.best_metric} at step "
              f"{progress.best_step})")
    return TrainResult(
        steps=progress.step,
        epochs_completed=progress.epoch + progress.position / len(first_batches),
        best_metric=progress.best_metric, best_step=progress.best_step,
        stopped_early=progress.stopped_early, history=list(progress.history),
        last_eval=progress.last_eval)
