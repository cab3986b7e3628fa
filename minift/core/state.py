"""Where a run stands: what the training loop carries from step to step and a resume point saves
(`minift.core.loop` fills it; `minift.core.resume` writes and reads it back). With the RNG
states, `Progress` and `Parts` decide the rest of a run: an exact resume saves exactly these.
"""

from dataclasses import dataclass, field

import torch
from torch import nn


@dataclass
class Progress:
    """Everything about the run's progress that resume.pt carries, besides the tensors."""

    step: int = 0  # optimizer steps taken (skipped fp16 steps included)
    epoch: int = 0
    position: int = 0  # batches of this epoch consumed
    best_metric: float | None = None
    best_step: int | None = None
    bad_evals: int = 0  # evaluations since the last improvement
    stopped_early: bool = False
    skipped_steps: int = 0  # fp16 steps the scaler skipped
    last_eval: dict | None = None
    elapsed: float = 0.0  # seconds of training before this process started
    history: list[dict] = field(default_factory=list)
    window_losses: list[float] = field(default_factory=list)  # step losses not yet logged


@dataclass
class Parts:
    """The stateful pieces a step updates and resume.pt saves and restores, besides `Progress`."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
