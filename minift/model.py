"""A BERT encoder, written top to bottom in plain PyTorch.

Read in order: the configuration, the attention function, the embeddings, one encoder block, the
pooler, and the model that stacks them. The parameter names follow the math (``query``,
``attention_norm``, ``ffn.up``); ``checkpoint.py`` holds the one table that maps them to the names
in published HF checkpoints. Numbers agree with ``transformers.BertModel`` to about 1e-6 in fp32
(tests/test_model.py holds the two together).

This file imports nothing from minift: lift it into your own project as it is (``from_pretrained``
and ``save_pretrained`` are thin doors to ``checkpoint.py``).
"""

from __future__ import annotations

import math
import platform
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn

# --------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------

class ConfigError(ValueError):
    """A config.json (or BertConfig argument) that minift cannot honour exactly."""


@dataclass
class BertConfig:
    """Shape and numerics of a BERT encoder; the defaults are bert-base-uncased's.

    Field names are those of HF's ``config.json`` so the two can be read side by side.
    """

    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"  # the exact erf GELU; the tanh approximation moves outputs ~3e-3
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-12  # not torch's 1e-5 default: that moves outputs ~1e-3
    pad_token_id: int = 0

    def __post_init__(self) -> None:
        for name in ("hidden_dropout_prob", "attention_probs_dropout_prob", "initializer_range",
                     "layer_norm_eps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ConfigError(f"config {name} must be a number, got {value!r}")
        if self.layer_norm_eps <= 0 or self.initializer_range < 0:
            raise ConfigError("config layer_norm_eps must be > 0 and initializer_range >= 0, got "
                              f"{self.layer_norm_eps!r} and {self.initializer_range!r}")
        if not isinstance(self.pad_token_id, int) or isinstance(self.pad_token_id, bool):
            raise ConfigError(f"config pad_token_id must be an integer, got {self.pad_token_id!r}")
        for name in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                     "intermediate_size", "max_position_embeddings", "type_vocab_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"config {name} must be a positive integer, got {value!r}")
        if self.hidden_size % self.num_attention_heads:
            raise ConfigError(
                f"config hidden_size ({self.hidden_size}) must be divisible by "
                f"num_attention_heads ({self.num_attention_heads})"
            )
        if self.hidden_act != "gelu":
            raise ConfigError(
                f"config hidden_act {self.hidden_act!r} is not supported: minift implements the "
                "exact erf GELU ('gelu') that BERT checkpoints use"
            )
        for name in ("hidden_dropout_prob", "attention_probs_dropout_prob"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ConfigError(f"config {name} must be in [0, 1), got {getattr(self, name)!r}")
        if not 0 <= self.pad_token_id < self.vocab_size:
            raise ConfigError(
                f"config pad_token_id ({self.pad_token_id}) is outside the vocabulary "
                f"(vocab_size {self.vocab_size})"
            )

    @classmethod
    def from_dict(cls, config: dict[str, Any], source: str = "config") -> BertConfig:
        """Read an HF BERT ``config.json`` dict; refuse what minift does not implement.

        Keys that do not change the encoder's numbers (``architectures``, ``id2label``,
        ``transformers_version``, ...) are ignored; settings that would change them and that
        minift does not implement are refused by name.
        """
        if config.get("model_type", "bert") != "bert":
            raise ConfigError(f"{source}: model_type {config['model_type']!r} is not 'bert'")
        position = config.get("position_embedding_type", "absolute")
        if position != "absolute":
            raise ConfigError(
                f"{source}: position_embedding_type {position!r} is not supported "
                "(only 'absolute')"
            )
        for flag in ("is_decoder", "add_cross_attention"):
            if config.get(flag):
                raise ConfigError(f"{source}: {flag}=true is not supported (encoder only)")
        known = {f.name for f in fields(cls)}
        kwargs = {k: v for k, v in config.items() if k in known and v is not None}
        try:
            return cls(**kwargs)
        except ConfigError as err:
            raise ConfigError(f"{source}: {err}") from None

    def to_dict(self) -> dict[str, Any]:
        """The HF ``config.json`` form, loadable by ``transformers.BertConfig``."""
        return {
            "architectures": ["BertModel"],
            "model_type": "bert",
            "position_embedding_type": "absolute",
            **asdict(self),
        }


# --------------------------------------------------------------------------------------------
# Attention as a pure function
# --------------------------------------------------------------------------------------------


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
              mask: torch.Tensor | None = None, dropout_p: float = 0.0) -> torch.Tensor:
    """dropout(softmax(q k^T / sqrt(d) + mask)) v, the plain form that SDPA must equal.

    q, k, v: (batch, heads, seq, head_dim); mask: additive, broadcastable to
    (batch, heads, seq, seq), 0 where a key may be attended and a very negative number where not.
    ``dropout_p`` drops attention probabilities (training), as SDPA's ``dropout_p`` does.
    """
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.size(-1))  # (batch, heads, seq, seq)
    if mask is not None:
        scores = scores + mask
    return dropout(scores.softmax(dim=-1), dropout_p) @ v


def dropout(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    """Zero each element with probability ``p`` and scale the rest by 1 / (1 - p): F.dropout.

    The same distribution as ``F.dropout``, drawn differently on a CPU: the keep mask is a
    uniform draw compared with ``p``, where torch's CPU dropout calls ``bernoulli_``, which is
    slower: ``F.dropout`` takes 1.5-1.8x as long as this on our 2-core CPU (benchmarks/
    dropout.py). Masks of attention probabilities are large, (heads, seq, seq) per sequence, so
    this is a visible share of a training step. On a GPU, ``F.dropout`` is one fused kernel and
    stays.
    Autograd keeps the boolean mask alone for the backward pass, as ``F.dropout`` does.
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
    """``nn.Dropout`` through ``dropout`` above (same ``p``, same state dict: none)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dropout(x, self.p, self.training)


# --------------------------------------------------------------------------------------------
# Linear layers: F.linear, or the same product through oneDNN on a CPU
# --------------------------------------------------------------------------------------------


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None
           ) -> torch.Tensor:
    """``F.linear(x, weight, bias)``: x @ weight.T + bias, through oneDNN where that applies.

    PyTorch's CPU build ships two matrix libraries: MKL, which ``F.linear`` and ``torch.mm``
    call for float32, and oneDNN, which they call for bf16. On the AMD CPU of this project's
    machine MKL's float32 kernels reach about half the rate of oneDNN's: oneDNN is 2x faster on
    MiniLM's linear layers forward, 1.45x to 2x forward and backward (benchmarks/
    linear_speed.py). The gap depends on the CPU: run that script on yours. So float32
    products on a CPU go through ``onednn_linear``, the same arithmetic in another library
    (fp32 both; they agree to rounding, and tests hold them together). Everything else (GPU,
    bf16, autocast, a CPU other than x86-64, a build without oneDNN or with
    ``torch.backends.mkldnn.enabled`` off) takes ``F.linear``. Set ``ONEDNN_LINEAR = False`` to
    use ``F.linear`` everywhere.
    """
    if ONEDNN_LINEAR and _onednn_applies(x, weight):
        shape = x.shape
        y = onednn_linear(x.reshape(-1, shape[-1]), weight, bias)
        return y.view(*shape[:-1], weight.shape[0])
    return F.linear(x, weight, bias)


ONEDNN_LINEAR = True


def _onednn_applies(x: torch.Tensor, weight: torch.Tensor) -> bool:
    return (x.device.type == "cpu" and x.dtype == weight.dtype == torch.float32
            and x.numel() > 0 and not torch.is_autocast_enabled("cpu")
            and torch.backends.mkldnn.enabled and ONEDNN_AVAILABLE)


@torch.library.custom_op("minift::onednn_linear", mutates_args=())
def onednn_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None
                  ) -> torch.Tensor:
    """x @ weight.T (+ bias) through oneDNN: x (m, k), weight (n, k); strided views are fine.

    A custom op rather than a plain function so that ``torch.compile`` calls it as it is (it
    would otherwise try to lower oneDNN's kernel itself, which it does only for weights it has
    prepacked). Its backward, registered below, is the textbook one: dx = dy @ W,
    dW = dy.T @ x, db = dy summed over rows, each product through this op again, on strided
    views (no transposed copies).
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


def _onednn_available() -> bool:
    """oneDNN's float32 product, where it was measured (x86-64) and where this build has it:
    tried once, at import, on a 1 x 1 product, so a build without it falls back instead of
    failing."""
    if platform.machine().lower() not in ("x86_64", "amd64") or not (
            torch.backends.mkldnn.is_available()):
        return False
    try:
        one = torch.ones(1, 1)
        return onednn_linear(one, one).item() == 1.0
    except (RuntimeError, AttributeError, NotImplementedError):
        return False


ONEDNN_AVAILABLE = _onednn_available()


class Linear(nn.Linear):
    """``nn.Linear`` through ``linear`` above (same parameters, same state dict)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias)


def additive_mask(attention_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(batch, seq) 1/0 mask -> (batch, 1, 1, seq) additive mask: 0 keep, dtype's minimum drop.

    Adding the most negative value (as transformers does) rather than -inf keeps a row with no
    real key at all finite: it then attends uniformly instead of producing NaN.
    """
    keep = attention_mask[:, None, None, :].to(torch.bool)
    return torch.zeros(keep.shape, dtype=dtype, device=keep.device).masked_fill(
        ~keep, torch.finfo(dtype).min
    )


# --------------------------------------------------------------------------------------------
# Unpadding: drop pad tokens once after the embeddings, restore them once at the output
# --------------------------------------------------------------------------------------------


@dataclass
class Unpadding:
    """Where the real tokens of a padded (batch, seq) batch sit.

    LayerNorm, the projections and the feed-forward treat every token alike, so they can run on
    the real tokens alone, packed as (tokens, hidden): a batch that is 40% padding then costs 40%
    less there. Only attention needs to know which token belongs to which sequence. The packed
    tokens come sequence after sequence, so ``lengths`` splits them into sequences, and
    attention runs on each sequence alone (``varlen_attention``: no padding at all). Where many
    small calls would cost more than the padding (``per_sequence=False``, the choice on a GPU),
    attention puts the padding back for itself instead, as MosaicBERT does.
    """

    indices: torch.Tensor  # (tokens,) positions of the real tokens in the flattened batch
    batch: int
    seq: int
    lengths: list[int]  # real tokens of each sequence, in batch order
    per_sequence: bool = True  # attention per sequence (True) or on the re-padded batch

    @classmethod
    def from_mask(cls, attention_mask: torch.Tensor, per_sequence: bool | None = None
                  ) -> Unpadding:
        """``per_sequence`` defaults to True on CPU, False elsewhere (see ``varlen_attention``)
        and under ``torch.compile``, whose graphs would be specialised to each batch's lengths."""
        batch, seq = attention_mask.shape
        if per_sequence is None:
            per_sequence = (attention_mask.device.type == "cpu"
                            and not torch.compiler.is_compiling())
        return cls(attention_mask.flatten().nonzero().squeeze(1), batch, seq,
                   attention_mask.sum(dim=1).tolist(), per_sequence)

    def starts(self) -> torch.Tensor:
        """(batch,) where each sequence's first token sits among the packed tokens."""
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
    padding fraction says (benchmarks/inference_throughput.py, minift against minift padded:
    1.5x to 2.7x on real length distributions). On a GPU, small batches cost the time to launch their kernels more than
    their arithmetic; unpadding adds gathers, scatters and host synchronisations, and loses
    there. On an H200 with MiniLM, batches of 32 real sentences (1,300 to 2,600 positions) ran
    faster padded, batches of 128 (6,000 to 11,000) faster unpadded (``--device cuda`` and
    ``--batch-size``): the threshold sits between. A larger model does more arithmetic per
    token and gains sooner: set ``BertModel.unpad = True`` there.
    """
    return input_ids.device.type == "cpu" or input_ids.numel() >= UNPAD_MIN_POSITIONS


def varlen_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, lengths: list[int],
                     dropout_p: float = 0.0, first_only: bool = False) -> torch.Tensor:
    """Attention of each sequence over its own tokens, for sequences packed one after another.

    q, k, v: (tokens, heads, head_dim), the tokens of sequence 0, then of sequence 1, ...;
    returns (tokens, heads, head_dim), or with ``first_only`` the output of each non-empty
    sequence's first token alone, (sequences, heads, head_dim). No position is padding, so no
    mask and no wasted work: a sequence half as long as the batch's longest wastes three
    quarters of its padded attention, and here wastes nothing. One SDPA call per sequence:
    cheap on a CPU, where the loop costs microseconds against milliseconds of matmul; on a GPU
    the many small launches would cost more than the padding they skip, which is why
    ``Unpadding`` re-pads there (FlashAttention's varlen kernel does this in one launch).

    With ``dropout_p`` (training), ``DropoutAttentionPerSequence`` below runs the plain formula
    instead, with its backward written out.
    """
    if dropout_p > 0.0:
        # SDPA's CPU kernels have no dropout: SDPA falls back to the plain formula in float32,
        # with a slower mask (see dropout). So do we, in float32 under autocast too.
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
            keep = keep_mask(prob, p)
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


# --------------------------------------------------------------------------------------------
# The pieces
# --------------------------------------------------------------------------------------------


class Embeddings(nn.Module):
    """Word + position + token-type embeddings, then LayerNorm and dropout."""

    def __init__(self, config: BertConfig):
        super().__init__()
        # padding_idx keeps the pad row's gradient at zero, as in transformers.
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size,
                                            padding_idx=config.pad_token_id)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = Dropout(config.hidden_dropout_prob)

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor,
                position_ids: torch.Tensor) -> torch.Tensor:
        """Any leading shape: (batch, seq) padded or (tokens,) unpadded -> (..., hidden)."""
        x = (self.word_embeddings(input_ids) + self.position_embeddings(position_ids)
             + self.token_type_embeddings(token_type_ids))
        return self.dropout(self.norm(x))


class SelfAttention(nn.Module):
    """Multi-head self-attention through ``F.scaled_dot_product_attention``."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.query = Linear(config.hidden_size, config.hidden_size)
        self.key = Linear(config.hidden_size, config.hidden_size)
        self.value = Linear(config.hidden_size, config.hidden_size)
        self.out = Linear(config.hidden_size, config.hidden_size)
        self.dropout_p = config.attention_probs_dropout_prob

    def project(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(tokens, hidden) -> q, k, v, each (tokens, heads, head_dim): three matmuls.

        Fusing them into one on the concatenated weights reads the input once instead of three
        times, which fast BERTs do; on our CPU it buys nothing measurable
        (benchmarks/fused_qkv.py), so the three stay, named as in the checkpoint.
        """
        return tuple(proj(x).view(len(x), self.num_heads, self.head_dim)
                     for proj in (self.query, self.key, self.value))

    def split_heads(self, x: torch.Tensor) -> torch.Tensor:
        batch, seq, _ = x.shape
        return x.view(batch, seq, self.num_heads, self.head_dim).transpose(1, 2)  # (b, h, s, d)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None,
                unpadding: Unpadding | None = None, first_only: bool = False) -> torch.Tensor:
        """x: (batch, seq, hidden), or (tokens, hidden) with the ``unpadding`` that placed them.

        ``first_only``: only the first token of each sequence asks (it still attends to every
        token); the output is then (batch, 1, hidden), or (batch, hidden) unpadded.
        """
        if unpadding is not None:
            return self.out(self._unpadded(x, mask, unpadding, first_only))
        q = self.split_heads(self.query(x[:, :1] if first_only else x))
        k, v = self.split_heads(self.key(x)), self.split_heads(self.value(x))
        y = self._sdpa(q, k, v, mask)  # (batch, heads, seq, head_dim)
        return self.out(y.transpose(1, 2).flatten(2))  # (batch, seq, hidden)

    def _sdpa(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
              mask: torch.Tensor | None) -> torch.Tensor:
        if mask is not None and mask.dtype != q.dtype:  # autocast made q bf16 or fp16
            mask = mask.clamp(min=torch.finfo(q.dtype).min).to(q.dtype)
        return F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=self.dropout_p if self.training else 0.0
        )

    def _unpadded(self, x: torch.Tensor, mask: torch.Tensor | None,
                  unpadding: Unpadding, first_only: bool) -> torch.Tensor:
        """(tokens, hidden) -> (tokens, hidden), or (batch, hidden) with ``first_only``, before
        the output projection: attention per sequence or on the re-padded batch."""
        q, k, v = self.project(x)
        if unpadding.per_sequence:
            dropout_p = self.dropout_p if self.training else 0.0
            return varlen_attention(q, k, v, unpadding.lengths, dropout_p, first_only).flatten(1)
        q, k, v = (unpadding.pad(t).transpose(1, 2) for t in (q, k, v))  # (b, heads, s, d)
        if first_only:
            q = q[:, :, :1]
        y = self._sdpa(q, k, v, mask).transpose(1, 2).flatten(2)  # (batch, seq or 1, hidden)
        return y[:, 0] if first_only else unpadding.unpad(y)


class FeedForward(nn.Module):
    """hidden -> intermediate (GELU) -> hidden.

    The intermediate, (tokens, 4 * hidden), is the largest activation of the model. Where no
    gradient will flow through it (inference, or a frozen block), GELU runs in place: the plain
    ``F.gelu`` would allocate a second tensor of that size for every block. On a CPU that
    allocation is costly beyond its bytes: memory freshly mapped from the system is zeroed page by
    page on first touch (benchmarks/inference_throughput.py counts these page faults). Training
    needs GELU's input for the backward pass, so there the plain form stays; tests hold the two
    equal.
    """

    def __init__(self, config: BertConfig):
        super().__init__()
        self.up = Linear(config.hidden_size, config.intermediate_size)
        self.down = Linear(config.intermediate_size, config.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.up(x)
        if h.requires_grad:  # autograd keeps GELU's input for the backward pass
            return self.down(F.gelu(h))
        return self.down(torch.ops.aten.gelu_(h))  # in place: no second intermediate


class Block(nn.Module):
    """One encoder block: attention and feed-forward, each with a post-LayerNorm residual."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.attention = SelfAttention(config)
        self.attention_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.ffn = FeedForward(config)
        self.ffn_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = Dropout(config.hidden_dropout_prob)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None,
                unpadding: Unpadding | None = None, first_only: bool = False) -> torch.Tensor:
        """``first_only``: compute the first token of each sequence only (see BertModel)."""
        y = self.attention(x, mask, unpadding, first_only)
        if first_only:  # the residual and everything after it: the first tokens alone
            x = x[:, :1] if unpadding is None else x[unpadding.starts()]
        x = self.attention_norm(x + self.dropout(y))
        return self.ffn_norm(x + self.dropout(self.ffn(x)))


class Pooler(nn.Module):
    """tanh(dense(hidden state of the first token)): BERT's sentence-level output."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.dense = Linear(config.hidden_size, config.hidden_size)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.dense(hidden[:, 0]))


# --------------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------------


@dataclass
class BertOutput:
    """What the encoder returns; names as in transformers."""

    last_hidden_state: torch.Tensor  # (batch, seq, hidden)
    pooler_output: torch.Tensor | None  # (batch, hidden); None without a pooler


class BertModel(nn.Module):
    """The BERT encoder: embeddings, ``num_hidden_layers`` blocks, pooler.

    ``add_pooling_layer=False`` drops the pooler, as transformers does for token-level heads.
    ``activation_checkpointing = True`` (see ``set_activation_checkpointing``) makes training
    keep only each block's input and recompute the block's activations during backward.
    ``per_sequence_attention`` picks how the unpadded path attends (see ``Unpadding``): None, the
    default, chooses per device; True or False forces one way (tests compare both).
    ``unpad`` picks the path for padded batches: None, the default, decides per batch with
    ``unpads_by_default``; True or False forces one (``forward``'s own ``unpad`` overrides it).
    """

    def __init__(self, config: BertConfig, add_pooling_layer: bool = True):
        super().__init__()
        self.config = config
        self.activation_checkpointing = False
        self.per_sequence_attention: bool | None = None
        self.unpad: bool | None = None
        self.embeddings = Embeddings(config)
        self.layers = nn.ModuleList(Block(config) for _ in range(config.num_hidden_layers))
        self.pooler = Pooler(config) if add_pooling_layer else None
        self.apply(self._init_weights)

    def _init_weights(self, module: nn.Module) -> None:
        """BERT's initialisation: N(0, initializer_range) weights, zero biases, unit norms."""
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=std)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=std)
            if module.padding_idx is not None:
                with torch.no_grad():
                    module.weight[module.padding_idx].zero_()
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None, *, unpad: bool | None = None,
                first_token_only: bool = False) -> BertOutput:
        """input_ids, attention_mask (1 real, 0 padding), token_type_ids: (batch, seq) integers.

        A padded batch runs unpadded (see ``Unpadding``) with ``unpad=True``, padded with
        ``unpad=False``; None takes the model's ``unpad`` (by default: unpadded on a CPU, padded
        elsewhere; see the class doc). The two paths
        give the same numbers at real positions (tests hold them together). At padding positions
        the unpadded path returns zeros where the padded one returns whatever the padding
        computed; nothing should read those.

        ``first_token_only=True`` is for heads that read the first token alone (the pooler, so
        sequence classification): the last block then computes that token only. Its keys and
        values still come from every token, but its query, output projection and feed-forward
        run on one token per sequence instead of all, about 5/6 of the last block's work saved
        (MosaicBERT does the same). ``last_hidden_state`` is then (batch, 1, hidden), the first
        position's values, the same numbers as the full pass; the pooler output is unchanged.
        """
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be (batch, seq), got shape {tuple(input_ids.shape)}")
        if input_ids.size(1) > self.config.max_position_embeddings:
            raise ValueError(
                f"sequence length {input_ids.size(1)} exceeds max_position_embeddings "
                f"({self.config.max_position_embeddings}): truncate the input"
            )
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        batch, seq = input_ids.shape
        positions = torch.arange(seq, device=input_ids.device).expand(batch, seq)
        padded = attention_mask is not None and not bool(attention_mask.all())
        # No mask at all when nothing is padded: SDPA can then take its fastest kernel.
        mask = additive_mask(attention_mask, self.embeddings.norm.weight.dtype) if padded else None
        # Only the last block shortcuts; and only where every row starts with a real token (the
        # pooler reads position 0; a row padded on the left has no real token there).
        first_only = first_token_only and (not padded or bool(attention_mask[:, 0].all()))
        last = len(self.layers) - 1
        if unpad is None:
            unpad = self.unpad if self.unpad is not None else unpads_by_default(input_ids)
        if padded and unpad:
            unpadding = Unpadding.from_mask(attention_mask, self.per_sequence_attention)
            x = self.embeddings(unpadding.unpad(input_ids), unpadding.unpad(token_type_ids),
                                unpadding.unpad(positions))  # (tokens, hidden)
            for i, layer in enumerate(self.layers):
                x = self._run_block(layer, x, mask, unpadding, first_only and i == last)
            # (batch, seq, hidden); with first_only, (batch, hidden) -> (batch, 1, hidden)
            x = x[:, None] if first_only else unpadding.pad(x)
        else:
            x = self.embeddings(input_ids, token_type_ids, positions)  # (batch, seq, hidden)
            for i, layer in enumerate(self.layers):
                x = self._run_block(layer, x, mask, None, first_only and i == last)
        if first_token_only and x.size(1) > 1:  # the fallback above: the full pass, cut
            x = x[:, :1]
        pooled = self.pooler(x) if self.pooler is not None else None
        return BertOutput(last_hidden_state=x, pooler_output=pooled)

    def _run_block(self, layer: Block, x: torch.Tensor, mask: torch.Tensor | None,
                   unpadding: Unpadding | None, first_only: bool = False) -> torch.Tensor:
        """One block; with activation checkpointing (training only) its activations are not kept.

        ``torch.utils.checkpoint`` stores the block's inputs, frees everything computed inside,
        and runs the block again during backward to get them back: one more forward per block
        for peak memory that no longer grows with the depth times the activations of a block.
        The RNG state is saved with the inputs, so the re-run draws the same dropout masks and
        the gradients are those of the plain path (a test holds them equal).
        """
        if self.activation_checkpointing and self.training and torch.is_grad_enabled():
            return torch.utils.checkpoint.checkpoint(layer, x, mask, unpadding, first_only,
                                                     use_reentrant=False)
        return layer(x, mask, unpadding, first_only)

    @classmethod
    def from_pretrained(cls, path, *, allow_unexpected: bool = False,
                        add_pooling_layer: bool = True) -> BertModel:
        """Load an HF BERT checkpoint folder (config.json + model.safetensors or .bin)."""
        from minift.checkpoint import load_bert

        return load_bert(path, allow_unexpected=allow_unexpected,
                         add_pooling_layer=add_pooling_layer)

    def save_pretrained(self, path) -> None:
        """Write config.json + model.safetensors that ``transformers.BertModel`` loads."""
        from minift.checkpoint import save_bert

        save_bert(self, path)


def set_activation_checkpointing(model: nn.Module, enabled: bool = True) -> int:
    """Turn activation checkpointing on (or off) in every ``BertModel`` inside ``model``.

    Returns how many encoders were changed, and raises ValueError when there is none (the
    option would silently do nothing).
    """
    encoders = [m for m in model.modules() if isinstance(m, BertModel)]
    if not encoders:
        raise ValueError(f"{type(model).__name__} holds no minift BertModel to checkpoint")
    for encoder in encoders:
        encoder.activation_checkpointing = enabled
    return len(encoders)
