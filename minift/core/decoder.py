"""A BERT decoder, built from the encoder's pieces: what a block needs to write text.

The encoder of ``model.py`` reads a whole sentence at once, every token seeing every other. To
generate, a model must predict token t+1 from tokens 1..t only, and (to translate or summarise)
read a source sentence while doing so. The Transformer's decoder (Vaswani et al. 2017, section
3.1; the Annotated Transformer's ``DecoderLayer``) adds exactly three things to an encoder block,
and this file adds them to BERT's, in reading order:

1. ``causal_mask``: self-attention may look back, never ahead (the "subsequent mask").
2. ``LayerCache``, ``CachedSelfAttention``: when generating one token at a time, the keys and
   values of the tokens already written do not change, so each layer keeps them and only the new
   token is projected (the key/value cache of every fast ``generate``).
3. ``CrossAttention``: a second attention sub-layer whose queries come from the decoder and whose
   keys and values come from the encoder's output (the "memory"), so each written token can look
   at the source. Its keys and values are computed once per source and cached too.

Then ``DecoderBlock`` (self-attention, cross-attention, feed-forward, each with BERT's
post-LayerNorm residual), ``LMHead`` (BERT's ``cls.predictions``: dense, GELU, LayerNorm, then
the word-embedding matrix again as the output projection, plus a bias), ``CausalLM`` (the decoder
alone, a left-to-right language model: transformers' ``BertLMHeadModel(is_decoder=True)``) and
``EncoderDecoder`` (an encoder and a decoder with cross-attention: transformers'
``EncoderDecoderModel``, the BERT2BERT of Rothe, Narayan and Severyn, TACL 2020).

The decoder's blocks keep the encoder's parameter names (``attention``, ``attention_norm``,
``ffn``, ``ffn_norm``), so a published encoder checkpoint warm-starts both halves; only the
cross-attention and the LM head's transform are new (``minift/hf/encoder_decoder.py`` does the
warm start and the HF format). Numbers agree with transformers in fp32 to about 1e-6.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from minift.core.model import (
    BertConfig,
    BertModel,
    Block,
    ConfigError,
    Embeddings,
    SelfAttention,
    additive_mask,
    init_weights,
)

IGNORE_INDEX = -100  # labels the loss skips, as in the whole ecosystem

# --- 1. The causal mask ---------------------------------------------------------------------------


def causal_mask(attention_mask: torch.Tensor | None, query_length: int, past_length: int,
                dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """The additive mask of causal self-attention: query i (at position ``past_length + i``) may
    attend key j when j <= past_length + i and key j is not padding.

    attention_mask: (batch, past_length + query_length), 1 real and 0 padding, or None (no
    padding). Returns (batch or 1, 1, query_length, past_length + query_length): 0 where allowed,
    the dtype's minimum where not. Query 0 of a fresh sequence always sees key 0, so as long as
    the first token is real no row is fully masked.
    """
    keys = past_length + query_length
    query_positions = torch.arange(past_length, keys, device=device)[:, None]  # (query, 1)
    allowed = torch.arange(keys, device=device)[None, :] <= query_positions  # (query, keys)
    allowed = allowed[None, None]  # (1, 1, query, keys)
    if attention_mask is not None:
        if attention_mask.size(-1) != keys:
            raise ValueError(f"attention_mask covers {attention_mask.size(-1)} tokens; the "
                             f"decoder has {past_length} cached + {query_length} new = {keys}")
        allowed = allowed & attention_mask[:, None, None, :].to(torch.bool)
    zeros = torch.zeros(allowed.shape, dtype=dtype, device=device)
    return zeros.masked_fill(~allowed, torch.finfo(dtype).min)


# --- 2. The key/value cache -----------------------------------------------------------------------


@dataclass
class LayerCache:
    """What one decoder block remembers between generation steps, each (batch, heads, len,
    head_dim): the self-attention keys and values of every token written so far (grown by one
    step at a time) and the cross-attention keys and values of the source (computed once)."""

    keys: torch.Tensor | None = None
    values: torch.Tensor | None = None
    cross_keys: torch.Tensor | None = None
    cross_values: torch.Tensor | None = None

    @property
    def length(self) -> int:
        """How many decoder tokens the cache holds (their positions are 0..length-1)."""
        return 0 if self.keys is None else self.keys.size(2)


class CachedSelfAttention(SelfAttention):
    """The encoder's self-attention (same projections, same names) with an optional cache: the
    new tokens' keys and values are appended to the cached ones, and the queries of the new tokens
    attend to all of them. Which keys a query may see is the mask's business (``causal_mask``)."""

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None,
                cache: LayerCache | None = None) -> torch.Tensor:
        """x: (batch, new, hidden); mask: additive (batch or 1, 1, new, cached + new)."""
        q, k, v = (self.split_heads(proj(x)) for proj in (self.query, self.key, self.value))
        if cache is not None:
            if cache.keys is not None:  # (batch, heads, cached + new, head_dim)
                k = torch.cat([cache.keys, k], dim=2)
                v = torch.cat([cache.values, v], dim=2)
            cache.keys, cache.values = k, v
        y = self.sdpa(q, k, v, mask)  # (batch, heads, new, head_dim)
        return self.out(y.transpose(1, 2).flatten(2))


# --- 3. Cross-attention ---------------------------------------------------------------------------


class CrossAttention(SelfAttention):
    """Attention from the decoder's tokens (queries) to the encoder's output (keys and values):
    the same four projections as self-attention, only fed from two sequences. The source does not
    change while the target is written, so with a cache its keys and values are projected once."""

    def forward(self, x: torch.Tensor, memory: torch.Tensor, mask: torch.Tensor | None,
                cache: LayerCache | None = None) -> torch.Tensor:
        """x: (batch, new, hidden); memory: the encoder output (batch, source, hidden); mask:
        additive over the source, (batch, 1, 1, source), or None."""
        q = self.split_heads(self.query(x))
        if cache is not None and cache.cross_keys is not None:
            k, v = cache.cross_keys, cache.cross_values
        else:
            k, v = self.split_heads(self.key(memory)), self.split_heads(self.value(memory))
            if cache is not None:
                cache.cross_keys, cache.cross_values = k, v
        y = self.sdpa(q, k, v, mask)  # (batch, heads, new, head_dim)
        return self.out(y.transpose(1, 2).flatten(2))


# --- The decoder block and stack ------------------------------------------------------------------


class DecoderBlock(Block):
    """An encoder block with a causal, cached self-attention and, when ``cross_attention``, a
    cross-attention sub-layer between it and the feed-forward (transformers' ``BertLayer`` with
    ``is_decoder`` and ``add_cross_attention``). Every sub-layer: x = norm(x + dropout(f(x)))."""

    def __init__(self, config: BertConfig, cross_attention: bool):
        super().__init__(config)
        self.attention = CachedSelfAttention(config)  # the encoder's, now able to cache
        self.cross_attention = CrossAttention(config) if cross_attention else None
        self.cross_attention_norm = (nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
                                     if cross_attention else None)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, memory: torch.Tensor | None = None,
                memory_mask: torch.Tensor | None = None,
                cache: LayerCache | None = None) -> torch.Tensor:
        x = self.attention_norm(x + self.dropout(self.attention(x, mask, cache)))
        if memory is not None:
            if self.cross_attention is None:
                raise ValueError("this decoder has no cross-attention: it cannot read an "
                                 "encoder output (build it with cross_attention=True)")
            attended = self.cross_attention(x, memory, memory_mask, cache)
            x = self.cross_attention_norm(x + self.dropout(attended))
        return self.ffn_norm(x + self.dropout(self.ffn(x)))


class BertDecoder(nn.Module):
    """Embeddings and ``num_hidden_layers`` decoder blocks; no pooler (transformers'
    ``BertModel`` with ``is_decoder=True``, ``add_pooling_layer=False``)."""

    def __init__(self, config: BertConfig, cross_attention: bool = False):
        super().__init__()
        self.config = config
        self.cross_attention = cross_attention
        self.embeddings = Embeddings(config)
        self.layers = nn.ModuleList(DecoderBlock(config, cross_attention)
                                    for _ in range(config.num_hidden_layers))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                memory: torch.Tensor | None = None, memory_mask: torch.Tensor | None = None,
                cache: list[LayerCache] | None = None,
                position_ids: torch.Tensor | None = None) -> torch.Tensor:
        """input_ids: (batch, new) -> (batch, new, hidden). With a ``cache`` (one ``LayerCache``
        a block), the new tokens continue the cached ones: their positions start at the cache's
        length, and ``attention_mask`` (if any) covers the cached and the new tokens.
        ``position_ids`` (batch, new) replaces those positions (left-padded prompts count their
        positions from their first real token, ``core/steps.py``)."""
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be (batch, seq), got shape {tuple(input_ids.shape)}")
        batch, new = input_ids.shape
        past = cache[0].length if cache is not None else 0
        if past + new > self.config.max_position_embeddings:
            raise ValueError(f"decoder length {past + new} exceeds max_position_embeddings "
                             f"({self.config.max_position_embeddings})")
        dtype, device = self.embeddings.norm.weight.dtype, input_ids.device
        positions = (torch.arange(past, past + new, device=device).expand(batch, new)
                     if position_ids is None else position_ids)
        x = self.embeddings(input_ids, torch.zeros_like(input_ids), positions)
        mask = causal_mask(attention_mask, new, past, dtype, device)
        if memory_mask is not None:
            memory_mask = additive_mask(memory_mask, dtype)
        for i, layer in enumerate(self.layers):
            x = layer(x, mask, memory, memory_mask, None if cache is None else cache[i])
        return x


# --- The LM head ----------------------------------------------------------------------------------


class LMHead(nn.Module):
    """hidden -> vocabulary logits, BERT's ``cls.predictions``: a transform (dense, GELU,
    LayerNorm), then the word-embedding matrix as the output projection (tied: the very same
    ``nn.Parameter``, Press and Wolf 2017), plus a bias per token."""

    def __init__(self, config: BertConfig, word_embeddings: nn.Embedding):
        super().__init__()
        self.transform = nn.Linear(config.hidden_size, config.hidden_size)
        self.transform_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.decoder = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.decoder.weight = word_embeddings.weight  # tied: one Parameter, one gradient
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """(..., hidden) -> (..., vocab)."""
        return self.decoder(self.transform_norm(F.gelu(self.transform(hidden)))) + self.bias


# --- The models -----------------------------------------------------------------------------------


@dataclass
class LMOutput:
    """``logits`` (batch, seq, vocab) and ``loss`` (mean cross-entropy over the labels that are
    not -100; None without labels); names as in transformers."""

    loss: torch.Tensor | None
    logits: torch.Tensor


class CausalLM(nn.Module):
    """The decoder and the LM head: a left-to-right language model over a BERT body
    (transformers' ``BertLMHeadModel(is_decoder=True)``; with ``cross_attention=True``, its
    ``add_cross_attention=True``, the decoder half of an ``EncoderDecoder``).

    With ``labels`` (batch, seq) the loss is next-token prediction: the logits at position t are
    scored against ``labels[:, t + 1]`` (the model shifts, so ``labels`` may be ``input_ids``),
    averaged over the targets that are not -100, as the reference's causal-LM loss.
    """

    def __init__(self, config: BertConfig, cross_attention: bool = False):
        super().__init__()
        self.bert = BertDecoder(config, cross_attention)
        self.head = LMHead(config, self.bert.embeddings.word_embeddings)
        # BERT's initialisation (the tied matrix once, as the embedding it is), then the head's
        # bias to zero, as transformers' BertPreTrainedModel._init_weights
        self.apply(lambda module: init_weights(module, config.initializer_range))
        nn.init.zeros_(self.head.bias)

    @property
    def config(self) -> BertConfig:
        return self.bert.config

    def new_cache(self) -> list[LayerCache]:
        """An empty cache, one ``LayerCache`` a block, for incremental decoding."""
        return [LayerCache() for _ in self.bert.layers]

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, *, memory: torch.Tensor | None = None,
                memory_mask: torch.Tensor | None = None,
                cache: list[LayerCache] | None = None,
                position_ids: torch.Tensor | None = None) -> LMOutput:
        """input_ids (batch, new); ``memory``/``memory_mask``: the encoder's output and its 1/0
        mask, for cross-attention; ``cache``, ``position_ids``: see ``BertDecoder.forward``."""
        hidden = self.bert(input_ids, attention_mask, memory, memory_mask, cache, position_ids)
        logits = self.head(hidden)  # (batch, new, vocab)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(),
                                   labels[:, 1:].flatten(), ignore_index=IGNORE_INDEX)
        return LMOutput(loss=loss, logits=logits)


def shift_right(labels: torch.Tensor, start_token_id: int, pad_token_id: int) -> torch.Tensor:
    """Teacher forcing's decoder input: ``labels`` moved one step right behind the start token,
    the -100 of ignored labels read as padding (transformers' ``shift_tokens_right``)."""
    shifted = torch.full_like(labels, start_token_id)
    shifted[:, 1:] = labels[:, :-1]
    return shifted.masked_fill(shifted == IGNORE_INDEX, pad_token_id)


class EncoderDecoder(nn.Module):
    """A BERT encoder and a BERT decoder with cross-attention to it: transformers'
    ``EncoderDecoderModel`` over ``BertModel`` and ``BertLMHeadModel``, whose conventions it keeps.

    The encoder keeps its pooler (unused here, kept so a checkpoint round-trips whole).
    ``decoder_start_token_id`` begins every target ([CLS] for BERT, whose decoder was never
    taught a dedicated start token); ``pad_token_id`` pads targets; ``eos_token_id`` ([SEP] for
    BERT) ends them when generating (None: generation stops only at its length limit).

    Training is teacher forcing: with ``labels`` (batch, target), the decoder reads the labels
    shifted right (``shift_right``) with padding masked, and the logits at position t are scored
    against ``labels[:, t]`` (no further shift here, unlike ``CausalLM``): mean cross-entropy over
    the labels that are not -100. Give labels without a leading [CLS] and with padding as -100.
    """

    def __init__(self, encoder_config: BertConfig, decoder_config: BertConfig, *,
                 decoder_start_token_id: int, pad_token_id: int, eos_token_id: int | None = None):
        super().__init__()
        if encoder_config.hidden_size != decoder_config.hidden_size:
            raise ConfigError(f"encoder hidden_size ({encoder_config.hidden_size}) and decoder "
                              f"hidden_size ({decoder_config.hidden_size}) differ; minift's "
                              "cross-attention reads the encoder output as it is")
        for name, value in (("decoder_start_token_id", decoder_start_token_id),
                            ("pad_token_id", pad_token_id), ("eos_token_id", eos_token_id)):
            if value is not None and not 0 <= value < decoder_config.vocab_size:
                raise ConfigError(f"{name} ({value}) is outside the decoder's vocabulary "
                                  f"(vocab_size {decoder_config.vocab_size})")
        self.encoder = BertModel(encoder_config)
        self.decoder = CausalLM(decoder_config, cross_attention=True)
        self.decoder_start_token_id = decoder_start_token_id
        self.pad_token_id = pad_token_id
        self.eos_token_id = eos_token_id

    def encode(self, input_ids: torch.Tensor,
               attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """The source, read once: (batch, source) -> the memory, (batch, source, hidden)."""
        return self.encoder(input_ids, attention_mask).last_hidden_state

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                decoder_input_ids: torch.Tensor | None = None,
                decoder_attention_mask: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, *, memory: torch.Tensor | None = None,
                cache: list[LayerCache] | None = None) -> LMOutput:
        """Source ``input_ids``/``attention_mask`` (batch, source); target ``decoder_input_ids``
        (batch, new), built from ``labels`` when not given. ``memory`` skips the encoder (it is
        ``encode``'s output); ``cache`` as in ``BertDecoder.forward``."""
        if decoder_input_ids is None:
            if labels is None:
                raise ValueError("give decoder_input_ids or labels (teacher forcing shifts them)")
            decoder_input_ids = shift_right(labels, self.decoder_start_token_id, self.pad_token_id)
            if decoder_attention_mask is None:
                decoder_attention_mask = (decoder_input_ids != self.pad_token_id).long()
        if memory is None:
            memory = self.encode(input_ids, attention_mask)
        out = self.decoder(decoder_input_ids, decoder_attention_mask, memory=memory,
                           memory_mask=attention_mask, cache=cache)
        if labels is not None:
            out.loss = F.cross_entropy(out.logits.flatten(0, 1).float(), labels.flatten(),
                                       ignore_index=IGNORE_INDEX)
        return out
