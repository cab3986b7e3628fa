"""Two CPU kernels that a built model can swap in: oneDNN's float32 linear and a faster dropout.

``Linear`` and ``Dropout`` subclass ``nn.Linear`` and ``nn.Dropout`` with the same parameters,
so ``unpad.speed_up`` swaps them into a textbook model without touching its state dict.

What each buys depends on the CPU: ``benchmarks/dropout.py`` and ``benchmarks/linear_speed.py``
measure it on yours. Importing this file registers the custom op and runs no tensor operation.
"""

from __future__ import annotations

import functools
import json
import os
import platform
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

# --- Dropout --------------------------------------------------------------------------------------


def dropout(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    """Zero each element with probability ``p`` and scale the rest by 1 / (1 - p): F.dropout.

    The same distribution, drawn differently on a CPU: the keep mask is a uniform draw compared
    with ``p``, where torch's CPU dropout calls ``bernoulli_``, which can be slower; masks of
    attention probabilities, (heads, seq, seq) per sequence, are large. Off the CPU,
    ``F.dropout`` is one fused kernel and stays.
    """
    if not training or p == 0.0:
        return x
    if x.device.type != "cpu" or p == 1.0:
        return F.dropout(x, p, training)
    return (x * keep_mask(x, p)).mul_(1.0 / (1.0 - p))


def keep_mask(x: torch.Tensor, p: float) -> torch.Tensor:
    """A boolean tensor shaped like ``x``, each element True (kept) with probability 1 - p."""
    return torch.rand_like(x, dtype=torch.float32) >= p


class Dropout(nn.Dropout):
    """``nn.Dropout`` through ``dropout`` above."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dropout(x, self.p, self.training)


# --- Linear layers: F.linear, or the same product through oneDNN on a CPU -------------------------


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None
           ) -> torch.Tensor:
    """``F.linear(x, weight, bias)``: x @ weight.T + bias, through oneDNN where that applies.

    PyTorch's CPU build ships two matrix libraries: MKL, which ``F.linear`` and ``torch.mm``
    call for float32, and oneDNN, which they call for bf16. On some CPUs MKL's float32 kernels
    run well below oneDNN's; on others the two are level. So float32 products on a CPU go
    through ``onednn_linear``, the same arithmetic in another library (they agree to rounding),
    and ``speed_up`` swaps this in only where ``onednn_is_faster`` measured it faster.
    """
    if (x.device.type == "cpu" and x.dtype == weight.dtype == torch.float32 and x.numel() > 0
            and not torch.is_autocast_enabled("cpu") and torch.backends.mkldnn.enabled
            and onednn_available()):
        shape = x.shape
        y = onednn_linear(x.reshape(-1, shape[-1]), weight, bias)
        return y.view(*shape[:-1], weight.shape[0])
    return F.linear(x, weight, bias)


@torch.library.custom_op("minift::onednn_linear", mutates_args=())
def onednn_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None
                  ) -> torch.Tensor:
    """x @ weight.T (+ bias) through oneDNN: x (m, k), weight (n, k); strided views are fine.

    A custom op so that ``torch.compile`` calls it as it is (it would otherwise try to lower
    oneDNN's kernel itself, which it does only for prepacked weights). Its backward, registered
    below: dx = dy @ W, dW = dy.T @ x, db = dy summed over rows, through this op on strided views.
    """
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")


@onednn_linear.register_fake
def _(x, weight, bias=None):
    return x.new_empty(x.shape[0], weight.shape[0])


def _onednn_linear_setup(ctx, inputs, output) -> None:
    x, weight, bias = inputs
    ctx.save_for_backward(x, weight)
    ctx.has_bias = bias is not None


def _onednn_linear_backward(ctx, dy):
    x, weight = ctx.saved_tensors
    dy = dy.contiguous()
    dx = onednn_linear(dy, weight.t()) if ctx.needs_input_grad[0] else None
    dw = onednn_linear(dy.t(), x.t()) if ctx.needs_input_grad[1] else None
    db = dy.sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
    return dx, dw, db


onednn_linear.register_autograd(_onednn_linear_backward, setup_context=_onednn_linear_setup)


_AVAILABLE: list[bool] = []  # onednn_available()'s answer, once asked


def onednn_available() -> bool:
    """Whether this build runs oneDNN's float32 product here: x86-64 only (where it was
    measured), tried once, on first use, on a 1 x 1 product, so a build without it falls back
    instead of failing. The answer is kept in a plain list, which ``torch.compile`` reads as a
    constant inside ``linear``."""
    if not _AVAILABLE:
        _AVAILABLE.append(_try_onednn())
    return _AVAILABLE[0]


def _try_onednn() -> bool:
    if platform.machine().lower() not in ("x86_64", "amd64") or not (
            torch.backends.mkldnn.is_available()):
        return False
    try:
        one = torch.ones(1, 1)
        return onednn_linear(one, one).item() == 1.0
    except (RuntimeError, AttributeError, NotImplementedError):
        return False


# The shapes timed by onednn_is_faster: MiniLM's feed-forward (384 -> 1536), the layer that holds
# most of a BERT's arithmetic, on a small and a large batch of tokens.
PROBE_SHAPES = ((256, 384, 1536), (2048, 384, 1536))
# oneDNN is chosen only when it is this much faster on every probe: where the two libraries are
# close, MKL's F.linear (torch's own choice) stays, and a noisy timing cannot flip the choice.
MARGIN = 1.1

FORCE_VARIABLE = "MINIFT_ONEDNN"
CACHE_VARIABLE = "MINIFT_CACHE_DIR"  # default ~/.cache/minift
CHOICE_FILE = "linear.json"


@functools.cache
def onednn_is_faster(repeats: int = 5) -> bool:
    """Whether ``speed_up`` should run float32 linear layers through oneDNN on this CPU.

    ``MINIFT_ONEDNN=1`` or ``0`` decides; otherwise a measurement (``_measure``) made once per
    machine and kept in ``$MINIFT_CACHE_DIR/linear.json`` keyed by CPU model, torch version and
    thread count (delete it to measure again), so that every run on one machine takes the same
    library: the two round differently, and a trained model's last digits follow the rounding.
    False wherever oneDNN is not available.
    """
    forced = os.environ.get(FORCE_VARIABLE)
    if forced not in (None, "", "0", "1"):
        raise ValueError(f"{FORCE_VARIABLE}={forced!r}: expected 1 (oneDNN) or 0 (F.linear)")
    if not onednn_available():
        return False
    if forced:
        return forced == "1"
    path = Path(os.environ.get(CACHE_VARIABLE) or Path.home() / ".cache" / "minift") / CHOICE_FILE
    key = (f"{cpu_model()} | torch {torch.__version__} | {torch.get_num_threads()} threads | "
           f"probe {len(PROBE_SHAPES)} shapes, margin {MARGIN}")
    try:
        choices = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        choices = {}
    if isinstance(choices, dict) and isinstance(choices.get(key), bool):
        return choices[key]
    faster = _measure(repeats)
    try:  # best effort: where the cache cannot be written, the next run measures again
        path.parent.mkdir(parents=True, exist_ok=True)
        choices = choices if isinstance(choices, dict) else {}
        path.write_text(json.dumps(choices | {key: faster}, indent=1) + "\n", encoding="utf-8")
    except OSError:
        pass
    return faster


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo): the cache key above, and benchmark reports."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _measure(repeats: int) -> bool:
    """oneDNN against ``F.linear``, forward and backward, on each of ``PROBE_SHAPES``: ``repeats``
    interleaved timings each after a warm-up, compared by their fastest (the least disturbed by
    other work on the machine). True when oneDNN wins by ``MARGIN`` on every shape."""
    gen = torch.Generator().manual_seed(0)
    for tokens, fan_in, fan_out in PROBE_SHAPES:
        x = torch.randn(tokens, fan_in, generator=gen, requires_grad=True)
        w = torch.randn(fan_out, fan_in, generator=gen, requires_grad=True)
        b = torch.zeros(fan_out, requires_grad=True)
        dy = torch.randn(tokens, fan_out, generator=gen)

        def step(fn) -> float:
            start = time.perf_counter()
            fn(x, w, b).backward(dy)  # noqa: B023 (called within this iteration)
            return time.perf_counter() - start

        with torch.enable_grad():
            step(onednn_linear), step(F.linear)  # warm-up: first calls pay for setup
            times = {onednn_linear: [], F.linear: []}
            for _ in range(repeats):
                for fn, seconds in times.items():
                    seconds.append(step(fn))
        if min(times[F.linear]) < MARGIN * min(times[onednn_linear]):
            return False
    return True


class Linear(nn.Linear):
    """``nn.Linear`` through ``linear`` above."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias)
