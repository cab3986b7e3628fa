"""The optimizer and the learning-rate schedule: AdamW, weight-decay groups, warmup then decay.

Read in this order: `AdamW` (the update rule written out, the reference for the fast torch
kernels), `param_groups` (which parameters are decayed, which train at a rate of their own),
`make_optimizer` (chooses the kernel), then `lr_schedule` and `make_scheduler` (the multiplier
applied to the learning rate each step). Defaults are those of BERT fine-tuning and of
transformers' Trainer: betas (0.9, 0.999), eps 1e-8, weight decay 0.01, linear warmup then
linear decay to 0.
"""

import functools
import math
from collections.abc import Callable, Iterable

import torch
from torch import nn

# --- AdamW, written out ---------------------------------------------------------------------------


def _check_hyperparameters(*, lr: float, betas: tuple[float, float], eps: float,
                           weight_decay: float) -> None:
    """Raise ValueError naming the first hyperparameter outside the range torch allows."""
    if not lr >= 0.0:
        raise ValueError(f"AdamW: lr must be >= 0, got {lr}")
    if len(betas) != 2:
        raise ValueError(f"AdamW: betas must be a pair (beta1, beta2), got {betas!r}")
    for index, beta in enumerate(betas):
        if not 0.0 <= beta < 1.0:
            raise ValueError(f"AdamW: betas[{index}] must be in [0, 1), got {beta}")
    if not eps >= 0.0:
        raise ValueError(f"AdamW: eps must be >= 0, got {eps}")
    if not weight_decay >= 0.0:
        raise ValueError(f"AdamW: weight_decay must be >= 0, got {weight_decay}")


class AdamW(torch.optim.Optimizer):
    """AdamW (Loshchilov & Hutter, "Decoupled Weight Decay Regularization"), one tensor at a time.

    For each parameter p with gradient g, at step t (counting from 1):

        p <- p * (1 - lr * weight_decay)            decoupled decay, before the Adam update
        m <- beta1 * m + (1 - beta1) * g             first moment
        v <- beta2 * v + (1 - beta2) * g * g         second moment
        p <- p - lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)

    The operations are those of torch's single-tensor AdamW (`foreach=False`), in the same order,
    so the two agree to rounding; `torch.optim.AdamW(fused=True)` and `foreach=True` are faster
    kernels of the same rule. The state keeps torch's names (`step`, `exp_avg`, `exp_avg_sq`,
    with `step` a float32 tensor as torch stores it), so a state dict moves between this class
    and `torch.optim.AdamW` and training resumes from either. Parameters whose `.grad` is None
    are skipped. No amsgrad, no maximize.
    """

    def __init__(self, params: Iterable[torch.Tensor] | Iterable[dict], lr: float = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.01) -> None:
        _check_hyperparameters(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
        defaults = {"lr": lr, "betas": tuple(betas), "eps": eps, "weight_decay": weight_decay}
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> torch.Tensor | None:
        """Update every parameter that has a gradient; `closure` re-evaluates the loss if given."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, (beta1, beta2) = group["lr"], group["betas"]
            eps, weight_decay = group["eps"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                if grad.is_sparse:
                    raise ValueError("AdamW: sparse gradients are not supported (use SparseAdam)")

                state = self.state[p]
                if len(state) == 0:
                    state["step"] = torch.tensor(0.0, dtype=torch.float32)
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]

                state["step"] += 1
                step = state["step"].item()

                if weight_decay != 0:
                    p.mul_(1 - lr * weight_decay)

                # m = beta1 * m + (1 - beta1) * g, written as lerp like torch (same rounding)
                exp_avg.lerp_(grad, 1 - beta1)
                exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)

                # Bias correction: m and v start at 0, so early averages are too small.
                bias_correction1 = 1 - beta1**step
                bias_correction2 = 1 - beta2**step
                step_size = lr / bias_correction1
                denom = (exp_avg_sq.sqrt() / bias_correction2**0.5).add_(eps)
                p.addcdiv_(exp_avg, denom, value=-step_size)

        return loss


# --- Which parameters are decayed -----------------------------------------------------------------


def param_groups(model: nn.Module, weight_decay: float,
                 lr_by_prefix: dict[str, float] | None = None) -> list[dict]:
    """Split the trainable parameters into a decayed group and a group without weight decay.

    Biases (a parameter whose own name is `bias`) and every parameter of an `nn.LayerNorm` get
    no weight decay; everything else gets `weight_decay`. This is the grouping of transformers'
    Trainer (`get_decay_parameter_names`) for BERT-style models. The LayerNorm test is on the
    module's type, not on its name, so it holds for minift's `norm` as well as HF's `LayerNorm`.
    Only parameters with `requires_grad=True` are included; a parameter shared by two modules
    (tied embeddings) appears once. Empty groups are left out. Returns
    `[{"params": [...], "weight_decay": weight_decay}, {"params": [...], "weight_decay": 0.0}]`.

    `lr_by_prefix` gives some parameters a learning rate of their own: a parameter whose full
    name (`model.named_parameters()`) starts with a key goes into its own pair of groups with
    `"lr": value` (the first matching key wins); the schedule scales every group alike. A
    frozen encoder's classifier (`{"classifier.": 1e-2}`) needs a far higher rate than the
    encoder's fine-tuning rate (lesson 03). A key that matches no trainable parameter is an
    error, so that a misspelt prefix does not silently train everything at one rate.
    """
    if not weight_decay >= 0.0:
        raise ValueError(f"param_groups: weight_decay must be >= 0, got {weight_decay}")
    lr_by_prefix = dict(lr_by_prefix or {})
    for prefix, lr in lr_by_prefix.items():
        if not (isinstance(prefix, str) and prefix and isinstance(lr, int | float)
                and math.isfinite(lr) and lr > 0):
            raise ValueError(f"param_groups: lr_by_prefix needs non-empty names and finite "
                             f"learning rates > 0, got {prefix!r}: {lr!r}")
    # (prefix or None, decayed) -> parameters; None is the base learning rate
    buckets: dict[tuple[str | None, bool], list[nn.Parameter]] = {}
    seen: set[int] = set()
    for module_name, module in model.named_modules():
        for name, param in module.named_parameters(recurse=False):
            if not param.requires_grad or id(param) in seen:
                continue
            seen.add(id(param))
            full_name = f"{module_name}.{name}" if module_name else name
            prefix = next((key for key in lr_by_prefix if full_name.startswith(key)), None)
            decayed = not (name == "bias" or isinstance(module, nn.LayerNorm))
            buckets.setdefault((prefix, decayed), []).append(param)
    unused = [key for key in lr_by_prefix if not any(k[0] == key for k in buckets)]
    if unused:
        raise ValueError(f"param_groups: no trainable parameter of {type(model).__name__} has a "
                         f"name starting with {', '.join(map(repr, unused))}")
    groups = []
    for prefix in (None, *lr_by_prefix):
        for decayed in (True, False):
            if (prefix, decayed) in buckets:
                group = {"params": buckets[prefix, decayed],
                         "weight_decay": weight_decay if decayed else 0.0}
                if prefix is not None:
                    group["lr"] = lr_by_prefix[prefix]
                groups.append(group)
    return groups


# --- Choosing the kernel --------------------------------------------------------------------------

IMPLEMENTATIONS = ("auto", "fused", "foreach", "hand")

# Device types for which torch ships a fused AdamW kernel that we rely on (CPU since torch 2.4).
FUSED_DEVICE_TYPES = ("cuda", "cpu")


def make_optimizer(model: nn.Module, lr: float, weight_decay: float = 0.01,
                   betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                   impl: str = "auto", lr_by_prefix: dict[str, float] | None = None
                   ) -> torch.optim.Optimizer:
    """AdamW over `param_groups(model, weight_decay, lr_by_prefix)`, with the kernel chosen by
    `impl`; `lr` is the rate of every parameter that `lr_by_prefix` does not name.

    - "hand": `AdamW` above, the readable reference.
    - "foreach": `torch.optim.AdamW(foreach=True)`, one batched kernel per operation.
    - "fused": `torch.optim.AdamW(fused=True)`, the whole update in one kernel.
    - "auto": "fused" when every trainable parameter is a floating-point tensor on a device in
      `FUSED_DEVICE_TYPES`, otherwise "foreach".
    All four compute the same update (a test holds them equal).
    """
    if not lr > 0.0:
        raise ValueError(f"make_optimizer: learning rate must be positive, got {lr}")
    if impl not in IMPLEMENTATIONS:
        raise ValueError(f"make_optimizer: impl must be one of {IMPLEMENTATIONS}, got {impl!r}")
    groups = param_groups(model, weight_decay, lr_by_prefix)
    params = [p for group in groups for p in group["params"]]
    if not params:
        raise ValueError(f"make_optimizer: {type(model).__name__} has no trainable parameters "
                         "(every parameter has requires_grad=False)")
    if impl == "auto":
        fused_ok = all(p.device.type in FUSED_DEVICE_TYPES and p.is_floating_point()
                       for p in params)
        impl = "fused" if fused_ok else "foreach"
    if impl == "hand":
        return AdamW(groups, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                             fused=impl == "fused", foreach=impl == "foreach")


# --- Learning-rate schedule -----------------------------------------------------------------------

SCHEDULES = ("linear", "cosine", "constant")


def lr_schedule(step: int, *, total_steps: int, warmup_steps: int, kind: str = "linear") -> float:
    """The multiplier of the base learning rate at optimizer step `step` (0 before the first step).

    All three kinds warm up linearly from 0 to 1 over `warmup_steps`, then:
    - "linear": decay linearly to 0 at `total_steps`;
    - "cosine": follow half a cosine from 1 to 0 at `total_steps`;
    - "constant": stay at 1.
    The formulas are transformers' `get_linear_schedule_with_warmup`,
    `get_cosine_schedule_with_warmup` (num_cycles=0.5) and `get_constant_schedule_with_warmup`,
    so the multipliers are equal for steps 0..total_steps (including transformers' quirk that
    cosine with warmup_steps == total_steps returns 1 at the last step). Past `total_steps` the
    linear and cosine multipliers stay at 0, where transformers' cosine would rise again along
    the next half cycle.
    """
    _check_schedule(total_steps=total_steps, warmup_steps=warmup_steps, kind=kind)
    if step < 0:
        raise ValueError(f"lr_schedule: step must be >= 0, got {step}")
    if step < warmup_steps:
        return float(step) / float(max(1, warmup_steps))
    if kind == "constant":
        return 1.0
    if step > total_steps:
        return 0.0
    decay_steps = float(max(1, total_steps - warmup_steps))
    if kind == "linear":
        return float(total_steps - step) / decay_steps
    progress = float(step - warmup_steps) / decay_steps  # 0 -> 1 over the decay
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))


def _check_schedule(*, total_steps: int, warmup_steps: int, kind: str) -> None:
    """Raise ValueError for an unknown kind or step counts that do not make a schedule."""
    if kind not in SCHEDULES:
        raise ValueError(f"lr schedule: kind must be one of {SCHEDULES}, got {kind!r}")
    if total_steps < 1:
        raise ValueError(f"lr schedule: total_steps must be >= 1, got {total_steps}")
    if not 0 <= warmup_steps <= total_steps:
        raise ValueError(f"lr schedule: warmup_steps must be in [0, total_steps={total_steps}], "
                         f"got {warmup_steps}")


def make_scheduler(optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int,
                   kind: str = "linear") -> torch.optim.lr_scheduler.LambdaLR:
    """A `LambdaLR` that multiplies each group's learning rate by `lr_schedule(step, ...)`.

    Call `scheduler.step()` once after each `optimizer.step()`.
    """
    _check_schedule(total_steps=total_steps, warmup_steps=warmup_steps, kind=kind)
    multiplier = functools.partial(lr_schedule, total_steps=total_steps,
                                   warmup_steps=warmup_steps, kind=kind)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, multiplier)
