"""A BERT encoder, written top to bottom in plain PyTorch: the textbook form.

Read in order: the configuration (``BertConfig``), attention as a pure function (``attention``)
and the additive mask it takes, the embeddings (``Embeddings``), multi-head self-attention
(``SelfAttention``), the feed-forward layer (``FeedForward``), one encoder block (``Block``), the
pooler (``Pooler``), BERT's initialisation (``init_weights``), and the model that stacks them
(``BertOutput``, ``BertModel``). Every layer is a plain ``nn.Linear``, ``nn.Dropout``,
``nn.LayerNorm`` or ``nn.Embedding``, and attention is ``F.scaled_dot_product_attention``. The
parameter names follow the math (``query``, ``attention_norm``, ``ffn.up``);
``minift/hf/checkpoint.py`` maps them to the names of published HF checkpoints. Numbers agree
with ``transformers.BertModel`` to about 1e-6 in fp32 (tests/test_model.py, outputs and gradients).

Speed lives beside this file, not in it: ``minift/fast/unpad.py`` (no padding between the
embeddings and the output) and ``minift/fast/cpu_kernels.py`` enter a built model through one
visible door, ``speed_up(model)``, which swaps these modules for faster subclasses.

This file imports nothing from minift and does no tensor work at import: lift it into your own
project as it is.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn

# --- Configuration --------------------------------------------------------------------------------


class ConfigError(ValueError):
    """A config.json (or BertConfig argument) that minift cannot honour exactly."""


def _integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


_FLOATS = ("hidden_dropout_prob", "attention_probs_dropout_prob", "initializer_range",
           "layer_norm_eps")
_SIZES = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
          "intermediate_size", "max_position_embeddings", "type_vocab_size")
# What the fields of a BertConfig must be, checked in this order: the first failure is the error.
_RULES = (
    (_FLOATS, "a number", lambda v: _integer(v) or isinstance(v, float)),
    (_FLOATS, "a finite number", math.isfinite),  # JSON readers accept NaN and Infinity
    (("layer_norm_eps",), "> 0", lambda v: v > 0),
    (("initializer_range",), ">= 0", lambda v: v >= 0),
    (("pad_token_id",), "an integer", _integer),
    (_SIZES, "a positive integer", lambda v: _integer(v) and v > 0),
    (_FLOATS[:2], "in [0, 1)", lambda v: 0 <= v < 1),
)


@dataclass
class BertConfig:
    """Shape and numerics of a BERT encoder; the defaults are bert-base-uncased's, the field names
    those of HF's ``config.json``."""

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
        for names, rule, holds in _RULES:
            for name in names:
                if not holds(getattr(self, name)):
                    raise ConfigError(f"config {name} must be {rule}, got {getattr(self, name)!r}")
        if self.hidden_size % self.num_attention_heads:
            raise ConfigError(f"config hidden_size ({self.hidden_size}) must be divisible by "
                              f"num_attention_heads ({self.num_attention_heads})")
        if self.hidden_act != "gelu":
            raise ConfigError(f"config hidden_act {self.hidden_act!r} is not supported: minift "
                              "implements the exact erf GELU ('gelu') that BERT checkpoints use")
        if not 0 <= self.pad_token_id < self.vocab_size:
            raise ConfigError(f"config pad_token_id ({self.pad_token_id}) is outside the "
                              f"vocabulary (vocab_size {self.vocab_size})")

    @classmethod
    def from_dict(cls, config: dict[str, Any], source: str = "config") -> BertConfig:
        """Read an HF BERT ``config.json`` dict. Keys that do not change the encoder's numbers
        (``id2label``, ...) are ignored; settings minift does not implement are refused by name.
        """
        if config.get("model_type", "bert") != "bert":
            raise ConfigError(f"{source}: model_type {config['model_type']!r} is not 'bert'")
        position = config.get("position_embedding_type", "absolute")
        if position != "absolute":
            raise ConfigError(f"{source}: position_embedding_type {position!r} is not supported "
                              "(only 'absolute')")
        for flag in ("is_decoder", "add_cross_attention"):
            if config.get(flag):
                raise ConfigError(f"{source}: {flag}=true is not supported (encoder only)")
        known = {f.name for f in fields(cls)}
        kwargs = {k: v for k, v in config.items() if k in known and v is not None}
        try:
            return cls(**kwargs)
        except ConfigError as err:
            raise ConfigError(f"{source}: {err}") from None

    def num_parameters(self, add_pooling_layer: bool = True) -> int:
        """How many numbers ``BertModel(self, add_pooling_layer)`` holds, counted without
        building it (a loader checks that they fit in memory before allocating them)."""
        h, i = self.hidden_size, self.intermediate_size
        embeddings = (self.vocab_size + self.max_position_embeddings + self.type_vocab_size) * h
        block = 4 * (h * h + h) + (h * i + i) + (i * h + h) + 2 * 2 * h  # attention, ffn, norms
        pooler = h * h + h if add_pooling_layer else 0
        return embeddings + 2 * h + self.num_hidden_layers * block + pooler

    def to_dict(self) -> dict[str, Any]:
        """The HF ``config.json`` form, loadable by ``transformers.BertConfig``."""
        return {"architectures": ["BertModel"], "model_type": "bert",
                "position_embedding_type": "absolute", **asdict(self)}


# --- Attention as a pure function -----------------------------------------------------------------


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
    return F.dropout(scores.softmax(dim=-1), dropout_p) @ v


def additive_mask(attention_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(batch, seq) 1/0 mask -> (batch, 1, 1, seq) additive mask: 0 keep, dtype's minimum drop.

    Adding the most negative value (as transformers does) rather than -inf keeps a row with no
    real key at all finite: it then attends uniformly instead of producing NaN.
    """
    keep = attention_mask[:, None, None, :].to(torch.bool)
    zeros = torch.zeros(keep.shape, dtype=dtype, device=keep.device)
    return zeros.masked_fill(~keep, torch.finfo(dtype).min)


# --- The pieces -----------------------------------------------------------------------------------


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
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor,
                position_ids: torch.Tensor) -> torch.Tensor:
        """Any leading shape, (batch, seq) here, -> (..., hidden)."""
        x = (self.word_embeddings(input_ids) + self.position_embeddings(position_ids)
             + self.token_type_embeddings(token_type_ids))
        return self.dropout(self.norm(x))


class SelfAttention(nn.Module):
    """Multi-head self-attention: project to queries, keys and values, split into heads, attend,
    merge the heads, project out.

    ``F.scaled_dot_product_attention`` computes ``attention`` above in one fused call (a test
    holds the two equal). The projections stay three ``nn.Linear``, named as in the checkpoint.
    """

    def __init__(self, config: BertConfig):
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.query = nn.Linear(config.hidden_size, config.hidden_size)
        self.key = nn.Linear(config.hidden_size, config.hidden_size)
        self.value = nn.Linear(config.hidden_size, config.hidden_size)
        self.out = nn.Linear(config.hidden_size, config.hidden_size)
        self.dropout_p = config.attention_probs_dropout_prob

    def split_heads(self, x: torch.Tensor) -> torch.Tensor:
        """(batch, seq, hidden) -> (batch, heads, seq, head_dim)."""
        batch, seq, _ = x.shape
        return x.view(batch, seq, self.num_heads, self.head_dim).transpose(1, 2)

    def sdpa(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
             mask: torch.Tensor | None) -> torch.Tensor:
        """``attention(q, k, v, mask, dropout_p)`` through SDPA; dropout only in training."""
        if mask is not None and mask.dtype != q.dtype:  # autocast made q bf16 or fp16
            mask = mask.clamp(min=torch.finfo(q.dtype).min).to(q.dtype)
        return F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=self.dropout_p if self.training else 0.0
        )

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """x: (batch, seq, hidden); mask: additive (batch, 1, 1, seq) or None."""
        q, k, v = (self.split_heads(proj(x)) for proj in (self.query, self.key, self.value))
        y = self.sdpa(q, k, v, mask)  # (batch, heads, seq, head_dim)
        return self.out(y.transpose(1, 2).flatten(2))  # (batch, seq, hidden)


class FeedForward(nn.Module):
    """hidden -> intermediate (exact erf GELU) -> hidden, the same for every token."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.up = nn.Linear(config.hidden_size, config.intermediate_size)
        self.down = nn.Linear(config.intermediate_size, config.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(F.gelu(self.up(x)))


class Block(nn.Module):
    """One encoder block: attention and feed-forward, each with a post-LayerNorm residual."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.attention = SelfAttention(config)
        self.attention_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.ffn = FeedForward(config)
        self.ffn_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        x = self.attention_norm(x + self.dropout(self.attention(x, mask)))
        return self.ffn_norm(x + self.dropout(self.ffn(x)))


class Pooler(nn.Module):
    """tanh(dense(hidden state of the first token)): BERT's sentence-level output."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.dense(hidden[:, 0]))


# --- Initialisation -------------------------------------------------------------------------------


def init_weights(module: nn.Module, std: float = 0.02) -> None:
    """BERT's initialisation of one module; ``model.apply(lambda m: init_weights(m, std))`` for all.

    As transformers' ``_init_weights``: Linear and Embedding weights from N(0, std) (the config's
    ``initializer_range``), zero biases and padding row, LayerNorm weight 1 and bias 0.
    """
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, std=std)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, std=std)
        if module.padding_idx is not None:
            with torch.no_grad():
                module.weight[module.padding_idx].zero_()
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


# --- The model ------------------------------------------------------------------------------------


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
    """

    def __init__(self, config: BertConfig, add_pooling_layer: bool = True):
        super().__init__()
        self.config = config
        self.activation_checkpointing = False
        self.embeddings = Embeddings(config)
        self.layers = nn.ModuleList(Block(config) for _ in range(config.num_hidden_layers))
        self.pooler = Pooler(config) if add_pooling_layer else None
        self.apply(lambda module: init_weights(module, config.initializer_range))

    def check_input(self, input_ids: torch.Tensor) -> None:
        """Refuse what the embeddings cannot take, with the shape in the message."""
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be (batch, seq), got shape {tuple(input_ids.shape)}")
        if input_ids.size(1) > self.config.max_position_embeddings:
            raise ValueError(f"sequence length {input_ids.size(1)} exceeds max_position_embeddings "
                             f"({self.config.max_position_embeddings}): truncate the input")

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None, *,
                first_token_only: bool = False, lengths: list[int] | None = None) -> BertOutput:
        """input_ids, attention_mask (1 real, 0 padding), token_type_ids: (batch, seq) integers.

        ``first_token_only=True`` is for heads that read the first token alone (the pooler):
        ``last_hidden_state`` is then (batch, 1, hidden), here a slice of the full pass; the fast
        model computes that token alone in the last block.
        ``lengths``: the real tokens of each row, when the batch builder counted them. The
        padded computation here needs only the mask; the fast model uses them to drop the
        padding without reading the mask back from a GPU.
        """
        self.check_input(input_ids)
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        batch, seq = input_ids.shape
        positions = torch.arange(seq, device=input_ids.device).expand(batch, seq)
        mask = None
        if attention_mask is not None:
            mask = additive_mask(attention_mask, self.embeddings.norm.weight.dtype)
        x = self.embeddings(input_ids, token_type_ids, positions)  # (batch, seq, hidden)
        for layer in self.layers:
            if self.activation_checkpointing and self.training and torch.is_grad_enabled():
                # Keep the block's input only; run the block again in backward (the RNG state
                # is saved with it, so the re-run draws the same dropout masks).
                x = torch.utils.checkpoint.checkpoint(layer, x, mask, use_reentrant=False)
            else:
                x = layer(x, mask)
        if first_token_only:
            x = x[:, :1]
        pooled = self.pooler(x) if self.pooler is not None else None
        return BertOutput(last_hidden_state=x, pooler_output=pooled)


def set_activation_checkpointing(model: nn.Module, enabled: bool = True) -> int:
    """Turn activation checkpointing on (or off) in every ``BertModel`` inside ``model``; return
    how many, and raise ValueError when there is none (the option would do nothing)."""
    encoders = [m for m in model.modules() if isinstance(m, BertModel)]
    if not encoders:
        raise ValueError(f"{type(model).__name__} holds no minift BertModel to checkpoint")
    for encoder in encoders:
        encoder.activation_checkpointing = enabled
    return len(encoders)
