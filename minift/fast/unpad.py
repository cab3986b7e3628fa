"""Padding-free BERT: drop the padding once after the embeddings, restore it once at the output.

The textbook model (``model.py``) runs a padded batch as it is: every block computes every pad
position, and attention masks them out. Here LayerNorm, the projections and the feed-forward run
on the real tokens alone, packed as (tokens, hidden), and attention runs on each sequence alone
(``varlen_attention``) or by a packed path of ``attention.py``. MosaicBERT and ModernBERT do the
same. ``speed_up``, last, is the one door through which all of this, and the CPU kernels of
``cpu_kernels.py``, enter a built model.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn

from minift.core.model import (
    BertModel,
    BertOutput,
    Block,
    FeedForward,
    SelfAttention,
    additive_mask,
)
from minift.fast import attention
from minift.fast import cpu_kernels as kernels

# --- Unpadding: where the real tokens sit, and when to drop the padding ---------------------------


@dataclass
class Unpadding:
    """Where the real tokens of a padded (batch, seq) batch sit.

    The packed tokens come sequence after sequence, so ``lengths`` splits them into sequences
    for attention. Two ways to build one. ``from_lengths`` takes the lengths the batch builder
    counted on the host (``minift.data.batches.with_lengths``) and reads nothing back from the
    device: what a training step wants, since a GPU runs ahead of the Python that feeds it only
    as long as Python never waits for a number. ``from_mask`` finds them in the mask alone (a
    user calling the model with ``input_ids`` and ``attention_mask``), at the price of two reads.
    """

    indices: torch.Tensor  # (tokens,) positions of the real tokens in the flattened batch
    batch: int
    seq: int
    lengths: list[int]  # real tokens of each sequence, in batch order
    # Attention per sequence (True) or by a packed path of minift.fast.attention (False, the
    # choice on a GPU, where many small calls cost more than the padding). None: True on CPU,
    # False elsewhere and under torch.compile, whose graphs would be specialised to the lengths.
    per_sequence: bool | None = None
    offsets: torch.Tensor | None = None  # (batch,) each sequence's first packed token; see starts

    def __post_init__(self) -> None:
        if self.per_sequence is None:
            self.per_sequence = (self.indices.device.type == "cpu"
                                 and not torch.compiler.is_compiling())

    @classmethod
    def from_mask(cls, attention_mask: torch.Tensor, per_sequence: bool | None = None
                  ) -> Unpadding:
        """From the (batch, seq) mask alone: ``nonzero`` and ``tolist`` each wait for the device
        (on a GPU, two host synchronisations)."""
        batch, seq = attention_mask.shape
        return cls(attention_mask.flatten().nonzero().squeeze(1), batch, seq,
                   attention_mask.sum(dim=1).tolist(), per_sequence)

    @staticmethod
    def check_lengths(lengths: Sequence[int], batch: int, seq: int) -> None:
        """Refuse host lengths that cannot be those of a (batch, seq) batch (a batch sliced
        without its lengths, say): wrong ones would place the real tokens wrongly in silence."""
        if len(lengths) != batch or any(not 0 <= n <= seq for n in lengths):
            raise ValueError(f"lengths must give 0 to {seq} real tokens for each of the {batch} "
                             f"rows of the batch, got {list(lengths)}")

    @classmethod
    def from_lengths(cls, attention_mask: torch.Tensor, lengths: Sequence[int],
                     per_sequence: bool | None = None) -> Unpadding:
        """From ``lengths``, the real tokens of each row of a batch padded on the right, counted
        on the host when the batch was built; nothing is read back from the device.

        Only the sizes come from the host: the number of packed tokens, ``sum(lengths)``, which
        ``nonzero`` would have to wait for, and the split of ``varlen_attention``. The positions
        are computed on the device from the mask: row r holds packed tokens ``offsets[r]`` to
        ``offsets[r] + counts[r] - 1``, at positions ``r * seq + 0, 1, ...``. ``repeat_interleave``
        told its output size does not wait for the device either (its documentation says so).
        The lengths are trusted: they must be the mask's (a test holds the two paths equal).
        """
        batch, seq = attention_mask.shape
        cls.check_lengths(lengths, batch, seq)
        device, total = attention_mask.device, sum(lengths)
        counts = attention_mask.sum(dim=1)  # (batch,) on the device: the same numbers as lengths
        offsets = counts.cumsum(0) - counts  # (batch,)
        rows = torch.repeat_interleave(torch.arange(batch, device=device), counts,
                                       output_size=total)  # (tokens,) the row of each token
        indices = rows * seq + torch.arange(total, device=device) - offsets[rows]
        return cls(indices, batch, seq, [int(n) for n in lengths], per_sequence, offsets)

    def starts(self) -> torch.Tensor:
        """(batch,) where each sequence's first token sits among the packed tokens."""
        if self.offsets is not None:
            return self.offsets
        lengths = torch.tensor(self.lengths, device=self.indices.device)
        return lengths.cumsum(0) - lengths

    def unpad(self, x: torch.Tensor) -> torch.Tensor:
        """(batch, seq, ...) -> (tokens, ...)."""
        return x.reshape(self.batch * self.seq, *x.shape[2:])[self.indices]

    def pad(self, x: torch.Tensor) -> torch.Tensor:
        """(tokens, ...) -> (batch, seq, ...), zeros at the padding."""
        out = x.new_zeros(self.batch * self.seq, *x.shape[1:]).index_copy(0, self.indices, x)
        return out.view(self.batch, self.seq, *x.shape[1:])


# Off the CPU, padded batches smaller than this (batch x seq positions) keep their padding.
UNPAD_MIN_POSITIONS = 4096


def unpads_by_default(input_ids: torch.Tensor) -> bool:
    """Whether a padded (batch, seq) batch takes the unpadded path when nobody says otherwise.

    On a CPU, always: the arithmetic is the cost, and skipping the padding pays about what the
    padding fraction says. On a GPU, small batches cost the time to launch their kernels more
    than their arithmetic, and unpadding's gathers, scatters and host synchronisations lose.
    ``UNPAD_MIN_POSITIONS`` sits between the batches that ``benchmarks/inference_throughput.py
    --device cuda`` measured faster padded (batch 32) and unpadded (batch 128) with MiniLM
    (``benchmarks/results/inference_throughput_cuda*.md`` name the GPU). Another GPU or a larger
    model may place it elsewhere: ``speed_up(model, unpad=True)`` forces the choice.
    """
    return input_ids.device.type == "cpu" or input_ids.numel() >= UNPAD_MIN_POSITIONS


# --- Attention per packed sequence ----------------------------------------------------------------


def varlen_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, lengths: list[int],
                     dropout_p: float = 0.0, first_only: bool = False) -> torch.Tensor:
    """Attention of each sequence over its own tokens, for sequences packed one after another.

    q, k, v: (tokens, heads, head_dim), the tokens of sequence 0, then of sequence 1, ...;
    returns (tokens, heads, head_dim), or with ``first_only`` the output of each non-empty
    sequence's first token alone, (sequences, heads, head_dim). No mask and no wasted work: a
    sequence half as long as the batch's longest wastes three quarters of its padded attention.
    One SDPA call per sequence (why that pays on a CPU: ``attention.py``).
    """
    if dropout_p > 0.0:
        # SDPA's CPU kernels have no dropout: SDPA falls back to the plain formula in float32,
        # with a slower mask (see kernels.dropout). So do we, in float32 under autocast too.
        dtype = torch.promote_types(q.dtype, torch.float32)  # bf16, fp16 -> float32
        with torch.autocast(q.device.type, enabled=False):
            y = DropoutAttentionPerSequence.apply(q.to(dtype), k.to(dtype), v.to(dtype),
                                                  lengths, dropout_p, first_only)
        return y.to(q.dtype)
    outputs = []
    for qi, ki, vi in zip(q.split(lengths), k.split(lengths), v.split(lengths), strict=True):
        if len(qi) == 0:
            continue
        if first_only:
            qi = qi[:1]
        # (len, heads, head_dim) -> (1, heads, len, head_dim): SDPA's fused CPU kernel wants
        # the batch dimension. Views, no copies.
        qi, ki, vi = (t.transpose(0, 1).unsqueeze(0) for t in (qi, ki, vi))
        y = F.scaled_dot_product_attention(qi, ki, vi)
        outputs.append(y[0].transpose(0, 1))  # (len or 1, heads, head_dim)
    if not outputs:
        return q.new_zeros(0, *q.shape[1:])
    return torch.cat(outputs)


class DropoutAttentionPerSequence(torch.autograd.Function):
    """``attention(q, k, v, dropout_p=p)`` on each packed sequence, as one autograd node.

    The plain formula run sequence by sequence, with the same masks from the same seed (tests
    hold outputs and gradients equal to it), with the backward pass written out. Autograd would
    record about fifteen small nodes per sequence, thousands per training step at 32 sequences
    and 6 layers, and keep one more (heads, len, len) tensor per sequence than needed. Written
    out, the two scalings move to q and v, once for all tokens instead of once per sequence on
    the (heads, len, len) scores; the rest is the textbook backward of y = D v with
    S = q k^T / sqrt(d), P = softmax(S) and D = P * keep / (1 - p):

        dv = D^T dy      dD = dy v^T      dP = dD * keep / (1 - p)
        dS = P * (dP - rowsum(dP * P))    (softmax)
        dq = dS k / sqrt(d)               dk = dS^T q / sqrt(d)

    q, k, v: (tokens, heads, head_dim), float32 or float64; see ``varlen_attention``.
    """

    @staticmethod
    def forward(ctx, q, k, v, lengths, p, first_only):
        q = q / math.sqrt(q.size(-1))  # the scores' scale, on q: (tokens, heads, head_dim)
        v = v / (1.0 - p)  # dropout's scale, on v
        outputs, probs, keeps = [], [], []
        for qi, ki, vi in zip(q.split(lengths), k.split(lengths), v.split(lengths), strict=True):
            if len(qi) == 0:
                continue
            if first_only:
                qi = qi[:1]
            qi, ki, vi = (t.transpose(0, 1) for t in (qi, ki, vi))  # (heads, len, head_dim)
            prob = (qi @ ki.transpose(1, 2)).softmax(dim=-1)  # (heads, len_q, len)
            keep = kernels.keep_mask(prob, p)
            outputs.append(((prob * keep) @ vi).transpose(0, 1))  # (len_q, heads, head_dim)
            probs.append(prob)
            keeps.append(keep)
        # Through save_for_backward, intermediates included, so that activation checkpointing's
        # hooks can drop them and recompute them.
        ctx.save_for_backward(q, k, v, *probs, *keeps)
        ctx.lengths, ctx.p = lengths, p
        if not outputs:
            return q.new_zeros(0, *q.shape[1:])
        return torch.cat(outputs)  # (tokens or sequences, heads, head_dim)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dy):
        q, k, v, *saved = ctx.saved_tensors  # q and v scaled as in forward
        probs, keeps = iter(saved[: len(saved) // 2]), iter(saved[len(saved) // 2 :])
        dq, dk, dv = torch.zeros_like(q), torch.empty_like(k), torch.empty_like(v)
        start, row = 0, 0
        with torch.autocast(dy.device.type, enabled=False):
            for n in ctx.lengths:
                if n == 0:
                    continue
                prob, keep = next(probs), next(keeps)  # (heads, len_q, n); len_q is n or 1
                len_q = prob.size(1)
                span = slice(start, start + n)
                qi, ki, vi = (t[span].transpose(0, 1) for t in (q, k, v))  # (heads, n, d)
                dyi = dy[row : row + len_q].transpose(0, 1)  # (heads, len_q, head_dim)
                dv[span] = ((prob * keep).transpose(1, 2) @ dyi).transpose(0, 1)
                dprob = (dyi @ vi.transpose(1, 2)).mul_(keep)
                dscores = dprob.sub_((dprob * prob).sum(dim=-1, keepdim=True)).mul_(prob)
                dq[start : start + len_q] = (dscores @ ki).transpose(0, 1)
                dk[span] = (dscores.transpose(1, 2) @ qi[:, :len_q]).transpose(0, 1)
                start, row = start + n, row + len_q
        return dq / math.sqrt(q.size(-1)), dk, dv / (1.0 - ctx.p), None, None, None


# --- The fast modules: the textbook ones, taught to run unpadded ----------------------------------


class FastSelfAttention(SelfAttention):
    """``SelfAttention`` on packed tokens too, and able to answer for the first token alone.

    ``attention_path`` forces how packed tokens attend (one of ``attention.PATHS``); None (the
    default) chooses per batch. ``speed_up(model, attention_path=...)`` sets it.
    """

    attention_path: str | None = None

    def project(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(tokens, hidden) -> q, k, v, each (tokens, heads, head_dim): three matmuls.

        Fusing them into one on the concatenated weights reads the input once instead of three
        times, which fast BERTs do; benchmarks/fused_qkv.py measures what that buys on a CPU
        (nothing measurable where it was run), so the three stay, named as in the checkpoint.
        """
        return tuple(proj(x).view(len(x), self.num_heads, self.head_dim)
                     for proj in (self.query, self.key, self.value))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None,
                unpadding: Unpadding | None = None, first_only: bool = False) -> torch.Tensor:
        """x: (batch, seq, hidden), or (tokens, hidden) with the ``unpadding`` that placed them.

        ``first_only``: only the first token of each sequence asks (it still attends to every
        token); the output is then (batch, 1, hidden), or (batch, hidden) unpadded.
        """
        if unpadding is not None:
            q, k, v = self.project(x)
            dropout_p = self.dropout_p if self.training else 0.0
            path = self.attention_path or attention.choose_path(
                q.device, q.dtype, dropout_p, self.head_dim, unpadding.per_sequence)
            if path == "per_sequence":
                y = varlen_attention(q, k, v, unpadding.lengths, dropout_p, first_only)
            else:
                y = attention.attend(path, q, k, v, unpadding, dropout_p, first_only)
            return self.out(y.flatten(1))  # (tokens, hidden), or (batch, hidden) with first_only
        q = self.split_heads(self.query(x[:, :1] if first_only else x))
        k, v = self.split_heads(self.key(x)), self.split_heads(self.value(x))
        y = self.sdpa(q, k, v, mask)  # (batch, heads, seq, head_dim)
        return self.out(y.transpose(1, 2).flatten(2))  # (batch, seq, hidden)


class FastFeedForward(FeedForward):
    """``FeedForward`` with GELU in place where no gradient will flow through it.

    The intermediate, (tokens, 4 * hidden), is the largest activation of the model; in inference
    or a frozen block, ``F.gelu`` would allocate a second one per block, and on a CPU fresh memory
    is zeroed page by page on first touch (benchmarks/inference_throughput.py counts the faults).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.up(x)
        if h.requires_grad:  # autograd keeps GELU's input for the backward pass
            return self.down(F.gelu(h))
        return self.down(torch.ops.aten.gelu_(h))  # in place: no second intermediate


class FastBlock(Block):
    """``Block`` on packed tokens too; with ``first_only``, the first token of each sequence."""

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None,
                unpadding: Unpadding | None = None, first_only: bool = False) -> torch.Tensor:
        y = self.attention(x, mask, unpadding, first_only)
        if first_only:  # the residual and everything after it: the first tokens alone
            x = x[:, :1] if unpadding is None else x[unpadding.starts()]
        x = self.attention_norm(x + self.dropout(y))
        return self.ffn_norm(x + self.dropout(self.ffn(x)))


class FastBertModel(BertModel):
    """``BertModel`` that drops the padding after the embeddings and restores it at the output.

    ``unpad``: None (the default) decides per batch by ``unpads_by_default``, True or False forces
    it (``forward``'s ``unpad`` overrides it). ``per_sequence_attention``: as
    ``Unpadding.per_sequence``. ``speed_up`` sets both.
    """

    unpad: bool | None = None
    per_sequence_attention: bool | None = None

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None, *, unpad: bool | None = None,
                first_token_only: bool = False, lengths: Sequence[int] | None = None
                ) -> BertOutput:
        """As ``BertModel.forward``: the same numbers at real positions. At padding positions the
        unpadded path returns zeros where the padded one returns what the padding computed.

        ``first_token_only=True``: the last block computes the first token of each sequence
        alone. Its keys and values still come from every token, but its query, output
        projection and feed-forward run on one token per sequence instead of all, about 5/6 of
        the last block's work saved (MosaicBERT does the same).

        ``lengths``: the real tokens of each row, counted on the host (``Unpadding``): given them,
        nothing here reads the device back. Without them the mask is read: ``bool(...)`` twice
        and ``Unpadding.from_mask``, each a host synchronisation on a GPU.
        """
        self.check_input(input_ids)
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        batch, seq = input_ids.shape
        positions = torch.arange(seq, device=input_ids.device).expand(batch, seq)
        if attention_mask is None:
            padded, starts_real = False, True
        elif lengths is not None:  # counted on the host: nothing to read back
            Unpadding.check_lengths(lengths, batch, seq)
            padded = any(n < seq for n in lengths)
            starts_real = all(n > 0 for n in lengths)  # padded on the right
        else:  # from the mask alone: two reads of the device
            padded = not bool(attention_mask.all())
            starts_real = not padded or bool(attention_mask[:, 0].all())
        # No mask at all when nothing is padded: SDPA can then take its fastest kernel.
        dtype = attention.compute_dtype(input_ids.device.type, self.embeddings.norm.weight.dtype)
        mask = additive_mask(attention_mask, dtype) if padded else None  # no cast in the layers
        # Only the last block shortcuts; and only where every row starts with a real token (the
        # pooler reads position 0; a row padded on the left has no real token there).
        first_only = first_token_only and starts_real
        if unpad is None:
            unpad = self.unpad if self.unpad is not None else unpads_by_default(input_ids)
        unpadding = None
        if padded and unpad:
            per_sequence = self.per_sequence_attention
            unpadding = (Unpadding.from_mask(attention_mask, per_sequence) if lengths is None
                         else Unpadding.from_lengths(attention_mask, lengths, per_sequence))
            input_ids, token_type_ids, positions = (  # (tokens,): the real tokens alone
                unpadding.unpad(t) for t in (input_ids, token_type_ids, positions))
        x = self.embeddings(input_ids, token_type_ids, positions)  # (batch, seq or tokens, hidden)
        for i, layer in enumerate(self.layers):
            inputs = (x, mask, unpadding, first_only and i == len(self.layers) - 1)
            if self.activation_checkpointing and self.training and torch.is_grad_enabled():
                # as in BertModel.forward: the block's activations recomputed in backward
                x = torch.utils.checkpoint.checkpoint(layer, *inputs, use_reentrant=False)
            else:
                x = layer(*inputs)
        if unpadding is not None:  # re-padded, (batch, seq, hidden); first_only: (batch, 1, hidden)
            x = x[:, None] if first_only else unpadding.pad(x)
        if first_token_only and x.size(1) > 1:  # the full pass where the shortcut could not run
            x = x[:, :1]
        pooled = self.pooler(x) if self.pooler is not None else None
        return BertOutput(last_hidden_state=x, pooler_output=pooled)


# --- The one door: swap the fast modules into a built model ---------------------------------------


def speed_up(model: nn.Module, *, onednn: bool | None = None, unpad: bool | None = None,
             per_sequence: bool | None = None, attention_path: str | None = None) -> nn.Module:
    """Make every textbook module inside ``model`` its fast subclass, in place; return ``model``.

    A module swap (``swaps``), as gpt-fast's ``quantize.py`` swaps the linear layers of a built
    model. Only the class changes (the subclasses add no state): the parameters are the same
    tensors, the state dict is unchanged, and a head around the encoder (its classifier, a tied
    MLM decoder) is swapped with it.

    ``onednn``: ``nn.Linear`` becomes ``kernels.Linear`` (oneDNN's float32 product on a CPU);
    None decides by ``kernels.onednn_is_faster()``, a timing made once per machine; False puts
    ``nn.Linear`` back.
    ``unpad`` and ``per_sequence``: see ``FastBertModel``; ``attention_path``: see
    ``FastSelfAttention``. Calling it again changes the options.
    """
    if attention_path is not None and attention_path not in attention.PATHS:
        raise ValueError(f"attention_path {attention_path!r} is not one of "
                         f"{', '.join(attention.PATHS)} (or None: chosen per batch)")
    if onednn is None:
        onednn = kernels.onednn_is_faster()
    linear = kernels.Linear if onednn else nn.Linear
    swaps = {BertModel: FastBertModel, Block: FastBlock, SelfAttention: FastSelfAttention,
             FeedForward: FastFeedForward, nn.Dropout: kernels.Dropout,
             nn.Linear: linear, kernels.Linear: linear}
    for module in model.modules():
        module.__class__ = swaps.get(type(module), type(module))
        if isinstance(module, FastBertModel):
            module.unpad, module.per_sequence_attention = unpad, per_sequence
        if isinstance(module, FastSelfAttention):
            module.attention_path = attention_path
    return model
