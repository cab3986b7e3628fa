"""Attention on the real tokens alone: four ways to attend over packed sequences, and the choice.

After ``Unpadding`` (unpad.py) the real tokens of a batch sit packed, sequence after sequence,
as (tokens, heads, head_dim). Attention must still keep each sequence to its own tokens. There
are four ways to do that, and which one is fastest depends on the device, the dtype and whether
attention dropout is on:

- ``"per_sequence"``: one SDPA call per sequence (``varlen_attention`` in unpad.py). On a CPU
  each call takes SDPA's fused flash kernel and the Python loop costs microseconds against
  milliseconds of arithmetic: the CPU default.
- ``"varlen"``: ``torch.nn.attention.varlen.varlen_attn``, FlashAttention's variable-length
  kernel (Dao et al. 2022; Dao 2023, FlashAttention-2): the whole packed batch in one launch,
  sequences told apart by their cumulative offsets ``cu_seqlens``. CUDA only, bf16/fp16 only,
  and no dropout (torch passes ``dropout_p=0`` to the kernel), so: inference, or training with
  ``attention_probs_dropout_prob=0``.
- ``"nested"``: SDPA on a nested tensor of jagged layout (``torch.nested.nested_tensor_from_jagged``),
  a view of the same packed tokens with their offsets. On CUDA, SDPA sends it to the flash or
  memory-efficient varlen kernels, fp32 too, dropout too. On a CPU it runs, any dtype, with
  gradients, but through SDPA's unfused math formula on a strided nested tensor (the scores are
  materialised per sequence): correct, and the per-sequence loop's fused kernel is the better
  CPU choice.
- ``"padded"``: re-pad q, k, v to (batch, heads, seq, head_dim) and call SDPA with a boolean mask
  of the real keys, built once per batch. It works everywhere; it pays for the padding again in
  every layer (MosaicBERT re-pads this way around its Triton kernel). No mask lets SDPA take its
  flash kernel; the memory-efficient kernel takes a mask (a boolean one it turns into an additive
  one of q's dtype inside the call).

``choose_path`` chooses; ``attend`` runs the choice (the per-sequence loop stays in unpad.py
beside its hand-written backward). ``PackedLayout`` holds what the paths need per batch (offsets,
longest length, mask), built once per batch, not once per layer.
"""

from __future__ import annotations

import importlib
from functools import cache
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from minift.fast.unpad import Unpadding

PATHS = ("per_sequence", "varlen", "nested", "padded")
HALF = (torch.bfloat16, torch.float16)

# --- What this torch and this device can run -----------------------------------------------------


@cache  # asked by every layer of every forward (choose_path): found once per process
def varlen_kernel():
    """torch's ``varlen_attn`` function, or None where this torch has none (before 2.10)."""
    try:
        module = importlib.import_module("torch.nn.attention.varlen")
    except ImportError:
        return None
    return getattr(module, "varlen_attn", None)


def nested_available() -> bool:
    """Whether this torch builds jagged nested tensors (torch 2.3 and later)."""
    return hasattr(torch.nested, "nested_tensor_from_jagged")


@cache  # a GPU's compute capability does not change while the process runs
def flash_capable(device: torch.device) -> bool:
    """Whether the GPU runs FlashAttention-2: compute capability 8.0 (A100) or later."""
    return torch.cuda.get_device_capability(device) >= (8, 0)


def why_not(path: str, device: torch.device, dtype: torch.dtype, dropout_p: float,
            head_dim: int) -> str | None:
    """Why ``path`` cannot run with these inputs here, or None when it can."""
    if path not in PATHS:
        return f"unknown attention path {path!r}: choose one of {', '.join(PATHS)}"
    if path == "varlen":
        if varlen_kernel() is None:
            return f"torch {torch.__version__} has no torch.nn.attention.varlen"
        if device.type != "cuda":
            return f"torch.nn.attention.varlen runs on CUDA only, not {device.type}"
        if dtype not in HALF:
            return f"torch.nn.attention.varlen takes bf16 or fp16, not {dtype}"
        if dropout_p > 0:
            return "torch.nn.attention.varlen has no dropout (attention_probs_dropout_prob > 0)"
        if head_dim % 8 or head_dim > 256:
            return f"the flash kernel takes head sizes of 8, 16, ... 256, not {head_dim}"
        if not flash_capable(device):
            return "the flash kernel needs a GPU of compute capability 8.0 or later"
    if path == "nested" and not nested_available():
        return f"torch {torch.__version__} has no jagged nested tensors"
    return None


def choose_path(device: torch.device, dtype: torch.dtype, dropout_p: float, head_dim: int,
                per_sequence: bool) -> str:
    """The attention path for packed tokens, when nobody forces one (``per_sequence``:
    ``Unpadding.per_sequence``):

        device  dtype       dropout  torch, GPU                          path
        cpu     any         any      any (not compiling)                 per_sequence
        cpu     any         any      under torch.compile                 padded
        cuda    bf16, fp16  0        varlen (2.10+), capability 8.0+     varlen
        cuda    bf16, fp16  > 0      nested tensors (2.3+)               nested
        cuda    fp32        any      nested tensors (2.3+)               nested
        cuda    any         any      no varlen, no nested tensors        padded

    (varlen also needs a head size of 8, 16, ... 256; others go to nested.)
    """
    if per_sequence:
        return "per_sequence"
    if device.type == "cuda":
        for path in ("varlen", "nested"):
            if why_not(path, device, dtype, dropout_p, head_dim) is None:
                return path
    return "padded"


# --- The per-batch inputs ---------------------------------------------------------------------


class PackedLayout:
    """Where each sequence's tokens sit among the packed tokens, in the forms the paths take.

    Computed from ``Unpadding.lengths`` (a host list) without reading anything back from the
    device. Sequences with no real token are left out (they own no packed token, and the
    kernels need not see empty sequences). What every layer uses (the offsets, the mask) is
    built on first use and kept in ``built``; what only the last layer's first-token shortcut
    uses is built when asked. (A plain dict, not ``functools.cached_property``: its lock, in
    Python 3.11, stops ``torch.compile`` from tracing through it.)
    """

    def __init__(self, unpadding: Unpadding):
        self.unpadding = unpadding
        self.device = unpadding.indices.device
        self.lengths = [n for n in unpadding.lengths if n > 0]
        # not max(..., default=0): torch.compile cannot trace the keyword
        self.max_length = max(self.lengths) if self.lengths else 0
        self.min_length = min(self.lengths) if self.lengths else 0
        self.built: dict[str, torch.Tensor] = {}

    def _on_device(self, values: list[int], dtype: torch.dtype) -> torch.Tensor:
        return torch.tensor(values, dtype=dtype).to(self.device, non_blocking=True)

    @property
    def offsets(self) -> torch.Tensor:
        """(sequences + 1,) int64: where each sequence starts, then the number of tokens."""
        if "offsets" not in self.built:
            starts = [0]
            for n in self.lengths:
                starts.append(starts[-1] + n)
            self.built["offsets"] = self._on_device(starts, torch.int64)
        return self.built["offsets"]

    @property
    def cu_seqlens(self) -> torch.Tensor:
        """``offsets`` as int32, the form FlashAttention's varlen kernel takes."""
        if "cu_seqlens" not in self.built:
            self.built["cu_seqlens"] = self.offsets.to(torch.int32)
        return self.built["cu_seqlens"]

    @property
    def keep(self) -> torch.Tensor:
        """(batch, 1, 1, seq) boolean: True at the real keys of each row. A row without any
        real token keeps every key, as the additive mask's uniform attention does, so that
        the padded path computes no NaN (its outputs are dropped at the re-unpadding)."""
        if "keep" not in self.built:
            u = self.unpadding
            keep = torch.zeros(u.batch * u.seq, dtype=torch.bool, device=self.device)
            keep = keep.index_fill(0, u.indices, True).view(u.batch, 1, 1, u.seq)
            self.built["keep"] = keep | ~keep.any(dim=-1, keepdim=True)
        return self.built["keep"]

    @property
    def first_rows(self) -> torch.Tensor:
        """(sequences,) the packed row of each sequence's first token."""
        return self.offsets[:-1]

    @property
    def first_offsets(self) -> torch.Tensor:
        """(sequences + 1,) int64 offsets of one query per sequence: 0, 1, 2, ..."""
        return torch.arange(len(self.lengths) + 1, device=self.device)

    @property
    def nonempty_rows(self) -> torch.Tensor:
        """(sequences,) the batch rows that hold at least one real token."""
        rows = [i for i, n in enumerate(self.unpadding.lengths) if n > 0]
        return self._on_device(rows, torch.int64)


def layout_of(unpadding: Unpadding) -> PackedLayout:
    """The batch's ``PackedLayout``, built by the first layer that asks, kept on ``unpadding``."""
    layout = unpadding.__dict__.get("_packed_layout")
    if layout is None:
        layout = unpadding.__dict__["_packed_layout"] = PackedLayout(unpadding)
    return layout


# --- The paths --------------------------------------------------------------------------------


def varlen_path(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: PackedLayout,
                first_only: bool) -> torch.Tensor:
    """FlashAttention's varlen kernel on the packed tokens. Arguments by position (q, k, v,
    cu_seq_q, cu_seq_k, max_q, max_k): the keywords after them changed between torch 2.10 and
    2.11, and the defaults (no causal mask, scale 1/sqrt(head_dim)) are what BERT wants."""
    kernel = varlen_kernel()
    if first_only:  # one query per sequence, attending to all of its keys
        first = layout.first_offsets.to(torch.int32)
        return kernel(q[layout.first_rows], k, v, first, layout.cu_seqlens, 1, layout.max_length)
    return kernel(q, k, v, layout.cu_seqlens, layout.cu_seqlens, layout.max_length,
                  layout.max_length)


def _jagged(t: torch.Tensor, offsets: torch.Tensor, min_length: int,
            max_length: int) -> torch.Tensor:
    """(tokens, heads, head_dim) -> nested (sequences, heads, jagged seq, head_dim), a view.
    Its shortest and longest lengths are given, so that SDPA need not read them back from the
    device (a host synchronisation per call)."""
    nested = torch.nested.nested_tensor_from_jagged(t, offsets, min_seqlen=min_length,
                                                    max_seqlen=max_length)
    return nested.transpose(1, 2)


def nested_path(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: PackedLayout,
                dropout_p: float, first_only: bool) -> torch.Tensor:
    """SDPA on jagged nested tensors: the packed tokens as a batch of ragged sequences."""
    shortest, longest = layout.min_length, layout.max_length
    if first_only:
        q = _jagged(q[layout.first_rows], layout.first_offsets, 1, 1)
    else:
        q = _jagged(q, layout.offsets, shortest, longest)
    k, v = (_jagged(t, layout.offsets, shortest, longest) for t in (k, v))
    y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p)
    return y.transpose(1, 2).values()  # (tokens or sequences, heads, head_dim)


def padded_path(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: PackedLayout,
                dropout_p: float, first_only: bool) -> torch.Tensor:
    """Re-pad, SDPA with the batch's boolean mask of real keys, unpad again. With
    ``first_only``, the rows that hold a real token, each asked by its first real token."""
    unpadding = layout.unpadding
    k, v = (unpadding.pad(t).transpose(1, 2) for t in (k, v))  # (batch, heads, seq, head_dim)
    if not first_only:
        q = unpadding.pad(q).transpose(1, 2)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=layout.keep, dropout_p=dropout_p)
        return unpadding.unpad(y.transpose(1, 2))  # (tokens, heads, head_dim)
    rows = layout.nonempty_rows
    q = q[layout.first_rows][:, :, None]  # (sequences, heads, 1, head_dim)
    y = F.scaled_dot_product_attention(q, k[rows], v[rows], attn_mask=layout.keep[rows],
                                       dropout_p=dropout_p)
    return y[:, :, 0]  # (sequences, heads, head_dim)


def attend(path: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, unpadding: Unpadding,
           dropout_p: float = 0.0, first_only: bool = False) -> torch.Tensor:
    """Attention of each packed sequence over its own tokens, by ``path`` (not "per_sequence").

    q, k, v: (tokens, heads, head_dim); returns (tokens, heads, head_dim), or with
    ``first_only`` the first token of each non-empty sequence alone, (sequences, heads,
    head_dim): what ``varlen_attention`` returns. Raises ValueError where ``path`` cannot run.
    """
    problem = why_not(path, q.device, q.dtype, dropout_p, q.size(-1))
    if problem is None and path == "per_sequence":
        problem = "the per-sequence loop is unpad.varlen_attention"
    if problem is not None:
        raise ValueError(f"attention path {path!r}: {problem}")
    layout = layout_of(unpadding)
    if not layout.lengths:  # no real token at all
        return q.new_zeros(0, *q.shape[1:])
    if path == "varlen":
        return varlen_path(q, k, v, layout, first_only)
    if path == "nested":
        return nested_path(q, k, v, layout, dropout_p, first_only)
    return padded_path(q, k, v, layout, dropout_p, first_only)


# --- The mask of the padded model, in the dtype it is used in -----------------------------------


def compute_dtype(device_type: str, dtype: torch.dtype) -> torch.dtype:
    """The dtype attention computes in: autocast's where autocast is on, else ``dtype``.

    An additive mask built in it is used as it is by every layer; built in float32 under bf16
    autocast, ``SelfAttention.sdpa`` would clamp and cast it in each layer, two kernels per
    layer for the same result."""
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return dtype
