# %% [markdown]
# # Lesson 01: the BERT encoder, piece by piece
#
# ## Why this matters
#
# Every fine-tuning recipe in this repository starts from the same place: a published encoder
# checkpoint, loaded into a model whose numbers we trust. If the encoder is wrong by a little (a
# LayerNorm epsilon of 1e-5 instead of 1e-12, the tanh GELU instead of the exact one, a padding
# mask applied to the wrong axis), fine-tuning still "works": the loss goes down, and the
# accuracy ends up below the paper's, with nothing to say why. The only way to know is to load
# the real weights and compare the outputs with the reference, number for number.
#
# This lesson opens the all-MiniLM-L6-v2 checkpoint by hand, tokenizes real SST-2 sentences, and
# reads `minift/core/model.py` piece by piece, in the file's own order (configuration, attention,
# embeddings, self-attention, feed-forward, block, pooler, model), running each piece on the batch
# as it goes. It then holds the result against `transformers.BertModel` and
# `sentence_transformers.SentenceTransformer` on the same sentences, and ends with a small
# nearest-neighbour search that shows what the sentence embeddings are good for before any
# fine-tuning.

# %%
import json
import os
import struct
import time

import torch
import torch.nn.functional as F
from common import DATA, MINIFT_QUICK, START, check, figures

from minift.core.model import additive_mask, attention
from minift.core.sentence import encode, mean_pooling
from minift.data.readers import read_examples
from minift.data.tokenizer import Tokenizer
from minift.fast import unpad
from minift.hf.checkpoint import IGNORED_KEYS, KEY_MAP, load_bert, resolve_model_dir
from minift.hf.safetensors import DTYPES
from minift.run import plots

# MINIFT_QUICK=1 (what CI sets) shrinks the number of sentences; the steps are the same.
NUM_COMPARE = 32 if MINIFT_QUICK else 300  # sentences held against the reference libraries
NUM_POOL = 32 if MINIFT_QUICK else 200  # sentences searched in the similarity demo

FIGURES = figures("01")  # lessons/figures/01/ (git-ignored); None without matplotlib
torch.set_printoptions(precision=4, sci_mode=False, linewidth=100)


print(f"quick mode: {MINIFT_QUICK}; data: {DATA}")

# %% [markdown]
# ## The checkpoint on disk
#
# A `model.safetensors` file is three things in a row: 8 bytes holding the length of a header
# (a little-endian unsigned 64-bit integer), the header itself (JSON: for each tensor its dtype,
# shape and `[begin, end)` byte range), then the raw bytes of all the tensors. No pickle, so no
# code runs when it is read. `minift/hf/safetensors.py` reads it with checks on every field; here we
# read the header by hand.

# %%
model_dir = resolve_model_dir("minilm")
weights_file = model_dir / "model.safetensors"
with open(weights_file, "rb") as f:
    (header_len,) = struct.unpack("<Q", f.read(8))
    header = json.loads(f.read(header_len))
data_start = 8 + header_len
metadata = header.pop("__metadata__", None)
print(f"{weights_file.name}: {weights_file.stat().st_size:,} bytes, header {header_len:,} bytes")
print(f"__metadata__: {metadata}")
print(
    f"{len(header)} tensors, {sum(torch.Size(e['shape']).numel() for e in header.values()):,} "
    "numbers in all; the first few by byte offset:"
)
by_offset = sorted(header.items(), key=lambda item: item[1]["data_offsets"][0])
for name, entry in by_offset[:6]:
    print(f"  {name:<50} {entry['dtype']:<4} {str(entry['shape']):<12} {entry['data_offsets']}")

# %% [markdown]
# The names in the file are transformers' (`encoder.layer.0.attention.self.query.weight`); ours
# follow the math (`layers.0.attention.query.weight`). One table, `KEY_MAP`, maps the first to the
# second, `{}` standing for the layer index; `load_bert` reads it with a short loop, and a key the
# table does not know is an error, listed by name, never skipped. Buffers that older
# transformers versions saved beside the weights (`IGNORED_KEYS`) are known and dropped.

# `load_bert(folder)` builds the textbook model of `minift/core/model.py` and loads the weights
# into it: stepping into `model(...)` in a debugger opens the file this lesson reads. The fast
# modules of `minift/fast/unpad.py` enter only through `speed_up(model)` (the end of this lesson).

# %%
model = load_bert(model_dir)
tokenizer = Tokenizer.from_pretrained(model_dir)
print(model.config)
for hf_name, our_name in list(KEY_MAP.items())[3:12]:
    print(f"  {hf_name:<50} -> {our_name}")
print(f"  ... {len(KEY_MAP)} rows in all")
per_layer = sum("{}" in hf_name for hf_name in KEY_MAP)
expected = len(KEY_MAP) - per_layer + per_layer * model.config.num_hidden_layers
print(
    f"{len(KEY_MAP) - per_layer} rows once + {per_layer} rows x "
    f"{model.config.num_hidden_layers} layers = {expected} tensors; the file holds "
    f"{len(header)}, our model {len(model.state_dict())}"
)
check(expected == len(model.state_dict()), "the key map and the model disagree")
print(f"in the file, known and dropped (not a weight): {sorted(IGNORED_KEYS & set(header))}")

# %% [markdown]
# The byte range is all a reader needs. Read the query bias of block 0 straight from the file,
# decode it with the dtype the header names, and it is the same vector that `load_bert` put into
# our model, under the name the key map gives it:

# %%
hf_name = "encoder.layer.0.attention.self.query.bias"
begin, end = header[hf_name]["data_offsets"]
with open(weights_file, "rb") as f:
    f.seek(data_start + begin)
    raw = f.read(end - begin)
by_hand = torch.frombuffer(bytearray(raw), dtype=DTYPES[header[hf_name]["dtype"]])
loaded = model.layers[0].attention.query.bias.detach()
print(f"{hf_name}, read by hand: {by_hand[:5]}")
print(f"layers.0.attention.query.bias, loaded:      {loaded[:5]}")
check(torch.equal(by_hand, loaded), "the bytes in the file and the loaded weight differ")

# %% [markdown]
# ## From text to ids
#
# SST-2 sentences come lowercased and already split into words. The tokenizer cuts each word into
# WordPiece sub-words (`##` marks a continuation), wraps the sentence in `[CLS] ... [SEP]`, and
# pads the batch on the right with `[PAD]`; the attention mask is 1 on real tokens and 0 on
# padding, and the token type ids are all 0 for single sentences.

# %%
dev = read_examples(DATA / "sst2" / "dev.tsv", text_col="sentence", label_col="label")
sentences = [example.text for example in dev]
print(f"SST-2 dev: {len(sentences)} sentences")

batch_texts = [sentences[0], sentences[3]]
enc = tokenizer(batch_texts)
for row, text in enumerate(batch_texts):
    print(f"\n{text!r}")
    print("tokens:        ", tokenizer.convert_ids_to_tokens(enc.input_ids[row]))
    print("input_ids:     ", enc.input_ids[row].tolist())
    print("attention_mask:", enc.attention_mask[row].tolist())
print(f"\ninput_ids, attention_mask, token_type_ids: {tuple(enc.input_ids.shape)} each")

# %% [markdown]
# ## model.py, piece by piece
#
# The file reads top to bottom, small pieces first. The listings below are quoted from it, in
# its order, each headed by its file's path (`# ...` marks a docstring left out);
# `tests/test_lessons.py` fails when a listing no longer matches the file, so what you read here
# is the code that runs. After the configuration (`BertConfig`, the dataclass printed above,
# with the checks that refuse what minift does not implement) comes attention as a pure function: `softmax(q k^T / sqrt(d) + mask) v`, with dropout on the
# probabilities in training. The mask is additive: the 0/1 attention mask becomes
# `(batch, 1, 1, seq)`, 0 where a key may be attended and the most negative float where it may
# not, so softmax gives padding a weight of exactly zero.
#
# ```python
# # minift/core/model.py
# def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
#               mask: torch.Tensor | None = None, dropout_p: float = 0.0) -> torch.Tensor:
#     """dropout(softmax(q k^T / sqrt(d) + mask)) v, the plain form that SDPA must equal.
#
#     q, k, v: (batch, heads, seq, head_dim); mask: additive, broadcastable to
#     (batch, heads, seq, seq), 0 where a key may be attended and a very negative number where not.
#     ``dropout_p`` drops attention probabilities (training), as SDPA's ``dropout_p`` does.
#     """
#     scores = q @ k.transpose(-2, -1) / math.sqrt(q.size(-1))  # (batch, heads, seq, seq)
#     if mask is not None:
#         scores = scores + mask
#     return F.dropout(scores.softmax(dim=-1), dropout_p) @ v
#
#
# def additive_mask(attention_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
#     """(batch, seq) 1/0 mask -> (batch, 1, 1, seq) additive mask: 0 keep, dtype's minimum drop.
#
#     Adding the most negative value (as transformers does) rather than -inf keeps a row with no
#     real key at all finite: it then attends uniformly instead of producing NaN.
#     """
#     keep = attention_mask[:, None, None, :].to(torch.bool)
#     zeros = torch.zeros(keep.shape, dtype=dtype, device=keep.device)
#     return zeros.masked_fill(~keep, torch.finfo(dtype).min)
# ```

# %%
ids, mask, types = enc.input_ids, enc.attention_mask, enc.token_type_ids
batch, seq = ids.shape
extended = additive_mask(mask, torch.float32)
print(f"additive mask {tuple(extended.shape)}  (batch, 1, 1, seq); row 1: {extended[1, 0, 0]}")

# %% [markdown]
# The embeddings add a word vector, a position vector and a token-type vector for each token,
# then apply LayerNorm (and dropout, which does nothing in eval mode).
#
# ```python
# # minift/core/model.py
# class Embeddings(nn.Module):
#     """Word + position + token-type embeddings, then LayerNorm and dropout."""
#
#     def __init__(self, config: BertConfig):
#         super().__init__()
#         # padding_idx keeps the pad row's gradient at zero, as in transformers.
#         self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size,
#                                             padding_idx=config.pad_token_id)
#         self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size)
#         self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)
#         self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
#         self.dropout = nn.Dropout(config.hidden_dropout_prob)
#
#     def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor,
#                 position_ids: torch.Tensor) -> torch.Tensor:
#         """Any leading shape, (batch, seq) here, -> (..., hidden)."""
#         x = (self.word_embeddings(input_ids) + self.position_embeddings(position_ids)
#              + self.token_type_embeddings(token_type_ids))
#         return self.dropout(self.norm(x))
# ```

# %%
positions = torch.arange(seq).expand(batch, seq)  # (batch, seq): 0, 1, 2, ... on every row
with torch.no_grad():
    x = x_emb = model.embeddings(ids, types, positions)
print(f"embeddings {tuple(x.shape)}  (batch, seq, hidden)")

# %% [markdown]
# Self-attention projects each token to a query, a key and a value, splits them into heads,
# attends, and joins the heads again. The model calls PyTorch's fused
# `F.scaled_dot_product_attention` (SDPA); the plain `attention` above is the reference it must
# equal. Here are both, on the real queries, keys and values of block 0.
#
# ```python
# # minift/core/model.py
# class SelfAttention(nn.Module):
#     """Multi-head self-attention: project to queries, keys and values, split into heads, attend,
#     merge the heads, project out.
#
#     ``F.scaled_dot_product_attention`` computes ``attention`` above in one fused call (a test
#     holds the two equal). The projections stay three ``nn.Linear``, named as in the checkpoint.
#     """
#
#     def __init__(self, config: BertConfig):
#         super().__init__()
#         self.num_heads = config.num_attention_heads
#         self.head_dim = config.hidden_size // config.num_attention_heads
#         self.query = nn.Linear(config.hidden_size, config.hidden_size)
#         self.key = nn.Linear(config.hidden_size, config.hidden_size)
#         self.value = nn.Linear(config.hidden_size, config.hidden_size)
#         self.out = nn.Linear(config.hidden_size, config.hidden_size)
#         self.dropout_p = config.attention_probs_dropout_prob
#
#     def split_heads(self, x: torch.Tensor) -> torch.Tensor:
#         """(batch, seq, hidden) -> (batch, heads, seq, head_dim)."""
#         batch, seq, _ = x.shape
#         return x.view(batch, seq, self.num_heads, self.head_dim).transpose(1, 2)
#
#     def sdpa(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
#              mask: torch.Tensor | None) -> torch.Tensor:
#         """``attention(q, k, v, mask, dropout_p)`` through SDPA; dropout only in training."""
#         if mask is not None and mask.dtype != q.dtype:  # autocast made q bf16 or fp16
#             mask = mask.clamp(min=torch.finfo(q.dtype).min).to(q.dtype)
#         return F.scaled_dot_product_attention(
#             q, k, v, attn_mask=mask, dropout_p=self.dropout_p if self.training else 0.0
#         )
#
#     def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
#         """x: (batch, seq, hidden); mask: additive (batch, 1, 1, seq) or None."""
#         q, k, v = (self.split_heads(proj(x)) for proj in (self.query, self.key, self.value))
#         y = self.sdpa(q, k, v, mask)  # (batch, heads, seq, head_dim)
#         return self.out(y.transpose(1, 2).flatten(2))  # (batch, seq, hidden)
# ```

# %%
block = model.layers[0]
att = block.attention
with torch.no_grad():
    q, k, v = (att.split_heads(proj(x_emb)) for proj in (att.query, att.key, att.value))
    print(f"q, k, v: {tuple(q.shape)} each  (batch, heads, seq, head_dim)")
    plain = attention(q, k, v, extended)
    fused = F.scaled_dot_product_attention(q, k, v, attn_mask=extended)
    sdpa_diff = (plain - fused).abs().max().item()
    print(f"attention() vs SDPA on block 0: max abs difference {sdpa_diff:.1e}")
    check(sdpa_diff < 1e-5, "attention() and SDPA disagree")

    # The attention weights themselves: where the padding went.
    scores = q @ k.transpose(-2, -1) / q.size(-1) ** 0.5 + extended
    weights = scores.softmax(dim=-1)  # (batch, heads, seq, seq)
    padded_row = int(mask.sum(dim=1).argmin())
    pad_weight = weights[padded_row][..., mask[padded_row] == 0].sum().item()
    print(
        f"total attention weight on padding keys (sentence {padded_row}, all heads, all "
        f"queries): {pad_weight}"
    )

# %% [markdown]
# The same weights as a picture: one panel per head, each row a query token and each column the
# key tokens it attends to (a row sums to 1). Even in block 0 the heads differ: some look at the
# token itself, some at the previous or next token, some spread over the sentence or rest on
# `[SEP]` and `[CLS]`.

# %%
if FIGURES:
    shown_row = 0  # the longer sentence of the batch, no padding
    real = mask[shown_row] == 1
    tokens = tokenizer.convert_ids_to_tokens(ids[shown_row][real])
    heads_shown = weights[shown_row][:, real][:, :, real]  # (heads, tokens, tokens)
    fig, axes = plots.figure(12, 9.6, nrows=3, ncols=4, sharex=True, sharey=True)
    for head, ax in enumerate(axes.flat):
        image = ax.imshow(heads_shown[head], cmap="viridis", vmin=0, vmax=1)
        ax.set_title(f"head {head}")
        ax.grid(False)
        ax.set_xticks(range(len(tokens)), tokens, rotation=90, fontsize=7)
        ax.set_yticks(range(len(tokens)), tokens, fontsize=7)
    fig.supxlabel("key token (attended to)")
    fig.supylabel("query token (attending)")
    fig.suptitle(f"Block 0 attention weights of one SST-2 sentence, one panel per head: "
                 f"{batch_texts[shown_row][:60]!r}")
    fig.colorbar(image, ax=axes, label="attention weight (a row sums to 1)", shrink=0.6)
    FIGURES.save(fig, "attention_heads.png")

# %% [markdown]
# The feed-forward layer widens each token to the intermediate size (4x hidden), applies the exact
# GELU, and narrows it back. A block puts the two sublayers together, each followed by a residual
# and LayerNorm (BERT normalises after the residual, "post-LN").
#
# ```python
# # minift/core/model.py
# class FeedForward(nn.Module):
#     """hidden -> intermediate (exact erf GELU) -> hidden, the same for every token."""
#
#     def __init__(self, config: BertConfig):
#         super().__init__()
#         self.up = nn.Linear(config.hidden_size, config.intermediate_size)
#         self.down = nn.Linear(config.intermediate_size, config.hidden_size)
#
#     def forward(self, x: torch.Tensor) -> torch.Tensor:
#         return self.down(F.gelu(self.up(x)))
#
#
# class Block(nn.Module):
#     """One encoder block: attention and feed-forward, each with a post-LayerNorm residual."""
#
#     def __init__(self, config: BertConfig):
#         super().__init__()
#         self.attention = SelfAttention(config)
#         self.attention_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
#         self.ffn = FeedForward(config)
#         self.ffn_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
#         self.dropout = nn.Dropout(config.hidden_dropout_prob)
#
#     def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
#         x = self.attention_norm(x + self.dropout(self.attention(x, mask)))
#         return self.ffn_norm(x + self.dropout(self.ffn(x)))
# ```

# %%
with torch.no_grad():
    heads_joined = fused.transpose(1, 2).reshape(x_emb.shape)  # (batch, seq, hidden)
    parts = block.attention_norm(x_emb + att.out(heads_joined))
    parts = block.ffn_norm(parts + block.ffn(parts))
    block_diff = (parts - block(x_emb, extended)).abs().max().item()
print(f"block 0 by its parts vs block 0: max abs difference {block_diff:.1e}")

# %% [markdown]
# The pooler reads the first row, `[CLS]`. The model stacks it all: embeddings, the blocks, the
# pooler. Its `forward` is the walk below, one module at a time.
#
# ```python
# # minift/core/model.py
# class Pooler(nn.Module):
#     """tanh(dense(hidden state of the first token)): BERT's sentence-level output."""
#
#     def __init__(self, config: BertConfig):
#         super().__init__()
#         self.dense = nn.Linear(config.hidden_size, config.hidden_size)
#
#     def forward(self, hidden: torch.Tensor) -> torch.Tensor:
#         return torch.tanh(self.dense(hidden[:, 0]))
# ```
#
# ```python
# # minift/core/model.py
# class BertModel(nn.Module):
#     # ...
#     def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
#                 token_type_ids: torch.Tensor | None = None, *,
#                 first_token_only: bool = False, lengths: list[int] | None = None) -> BertOutput:
#         # ...
#         self.check_input(input_ids)
#         if token_type_ids is None:
#             token_type_ids = torch.zeros_like(input_ids)
#         batch, seq = input_ids.shape
#         positions = torch.arange(seq, device=input_ids.device).expand(batch, seq)
#         mask = None
#         if attention_mask is not None:
#             mask = additive_mask(attention_mask, self.embeddings.norm.weight.dtype)
#         x = self.embeddings(input_ids, token_type_ids, positions)  # (batch, seq, hidden)
#         for layer in self.layers:
#             if self.activation_checkpointing and self.training and torch.is_grad_enabled():
#                 # Keep the block's input only; run the block again in backward (the RNG state
#                 # is saved with it, so the re-run draws the same dropout masks).
#                 x = torch.utils.checkpoint.checkpoint(layer, x, mask, use_reentrant=False)
#             else:
#                 x = layer(x, mask)
#         if first_token_only:
#             x = x[:, :1]
#         pooled = self.pooler(x) if self.pooler is not None else None
#         return BertOutput(last_hidden_state=x, pooler_output=pooled)
# ```

# %%
with torch.no_grad():
    for i, layer in enumerate(model.layers):
        x = layer(x, extended)
        print(f"after block {i}       {tuple(x.shape)}")
    pooled = model.pooler(x)
    print(f"pooler ([CLS] row)  {tuple(pooled.shape)}  (batch, hidden)")
    out = model(ids, mask, types)
hidden_diff = (out.last_hidden_state - x).abs().max().item()
pooled_diff = (out.pooler_output - pooled).abs().max().item()
print(
    f"step by step vs model(...): max abs difference {hidden_diff:.1e} "
    f"(hidden states), {pooled_diff:.1e} (pooler)"
)
check(hidden_diff == 0.0 and pooled_diff == 0.0, "the step-by-step pass differs from model()")

# %% [markdown]
# ## The same numbers, faster
#
# Beside the textbook sits the speed, in its own files, entering a built model through one
# function, `unpad.speed_up`: it turns each textbook module into a faster subclass holding the
# same parameters. The fast model drops the pad tokens right after the embeddings
# (`unpad.Unpadding`), so LayerNorm, the projections and the feed-forward layers run on the real
# tokens alone, packed as `(tokens, hidden)`; attention, the one step that must know which token
# belongs to which sentence, runs on each sentence's own tokens (`varlen_attention`; on a GPU it
# re-pads for itself instead), and the output is re-padded once at the end. `cpu_kernels.py` adds a
# CPU matrix library where a timing says it is faster here. The recipes call `speed_up` on the
# model they train; `load_bert` alone never does.
#
# ```python
# # minift/fast/unpad.py
# def speed_up(model: nn.Module, *, onednn: bool | None = None, unpad: bool | None = None,
#              per_sequence: bool | None = None, attention_path: str | None = None) -> nn.Module:
#     # ...
#     if attention_path is not None and attention_path not in attention.PATHS:
#         raise ValueError(f"attention_path {attention_path!r} is not one of "
#                          f"{', '.join(attention.PATHS)} (or None: chosen per batch)")
#     if onednn is None:
#         onednn = kernels.onednn_is_faster()
#     linear = kernels.Linear if onednn else nn.Linear
#     swaps = {BertModel: FastBertModel, Block: FastBlock, SelfAttention: FastSelfAttention,
#              FeedForward: FastFeedForward, nn.Dropout: kernels.Dropout,
#              nn.Linear: linear, kernels.Linear: linear}
#     for module in model.modules():
#         module.__class__ = swaps.get(type(module), type(module))
#         if isinstance(module, FastBertModel):
#             module.unpad, module.per_sequence_attention = unpad, per_sequence
#         if isinstance(module, FastSelfAttention):
#             module.attention_path = attention_path
#     return model
# ```

# %%
fast_model = unpad.speed_up(load_bert(model_dir))
print(f"{type(model).__name__} -> {type(fast_model).__name__}, "
      f"{type(model.layers[0]).__name__} -> {type(fast_model.layers[0]).__name__}")
unpadding = unpad.Unpadding.from_mask(mask)
with torch.no_grad():
    y = fast_model.embeddings(unpadding.unpad(ids), unpadding.unpad(types),
                              unpadding.unpad(positions))
    print(f"unpadded embeddings {tuple(y.shape)}  (tokens, hidden) instead of {batch} x {seq}")
    for layer in fast_model.layers:
        y = layer(y, extended, unpadding)
    y = unpadding.pad(y)  # (batch, seq, hidden), zeros at the padding
    fast = fast_model(ids, mask, types)
real = mask.bool()
walk_diff = (fast.last_hidden_state - y).abs().max().item()
paths_diff = (fast.last_hidden_state - x)[real].abs().max().item()
print(f"unpadded walk vs fast model(...): max abs difference {walk_diff:.1e}")
print(f"fast vs textbook at real tokens: max abs difference {paths_diff:.1e}")
check(walk_diff == 0.0 and paths_diff < 1e-5, "the fast and the textbook model disagree")

# %% [markdown]
# BERT's pooler, `tanh(dense([CLS]))`, was trained for next-sentence prediction, and
# all-MiniLM-L6-v2 never uses it. Sentence-transformers summarises a sentence differently: the
# mean of the hidden states of the real tokens, normalised to length 1
# (`minift.core.sentence.mean_pooling`, then `F.normalize`). That is what `minift.core.sentence.encode`
# returns.

# %%
by_parts = F.normalize(mean_pooling(x, mask), dim=-1)
by_encode = encode(model, tokenizer, batch_texts)
print(
    f"sentence embeddings {tuple(by_encode.shape)}; mean pooling by hand vs encode(): max abs "
    f"difference {(by_parts - by_encode).abs().max().item():.1e}"
)

# %% [markdown]
# ## Against the reference
#
# Same folder, same sentences, same token ids: `transformers.BertModel` gives the hidden states
# and pooler output, `SentenceTransformer` the sentence embeddings. Float32 arithmetic done in a
# different order differs in the last bits, so we look at the largest difference, not at
# equality. A real bug (a wrong epsilon, a mask on the wrong axis) shows up orders of magnitude
# above it.

# %%
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything here is local; never touch the network
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
import transformers  # noqa: E402  (reference libraries: only here, never in minift/)
from sentence_transformers import SentenceTransformer  # noqa: E402

transformers.utils.logging.disable_progress_bar()

compare = sentences[:NUM_COMPARE]
reference = transformers.BertModel.from_pretrained(model_dir).eval()
for name, ours_model in (("textbook", model), ("fast", fast_model)):
    worst_hidden = worst_pooled = 0.0
    with torch.no_grad():
        for start in range(0, len(compare), 50):
            b = tokenizer(compare[start : start + 50])
            ours = ours_model(b.input_ids, b.attention_mask, b.token_type_ids)
            ref = reference(input_ids=b.input_ids, attention_mask=b.attention_mask,
                            token_type_ids=b.token_type_ids)
            real = b.attention_mask.bool()  # padding positions are never used: real tokens only
            worst_hidden = max(worst_hidden, (ours.last_hidden_state - ref.last_hidden_state)
                               [real].abs().max().item())
            worst_pooled = max(worst_pooled,
                               (ours.pooler_output - ref.pooler_output).abs().max().item())
    print(
        f"minift ({name}) vs transformers.BertModel on {len(compare)} SST-2 sentences: max abs "
        f"difference {worst_hidden:.1e} (hidden states), {worst_pooled:.1e} (pooler)"
    )
    check(max(worst_hidden, worst_pooled) < 1e-4, f"minift ({name}) and transformers disagree")

st_model = SentenceTransformer(str(model_dir), device="cpu")
theirs = torch.as_tensor(st_model.encode(compare, batch_size=32, convert_to_numpy=True))
mine = encode(model, tokenizer, compare, batch_size=32, max_length=st_model.max_seq_length)
cosine = F.cosine_similarity(mine, theirs, dim=-1)
print(
    f"minift encode vs SentenceTransformer.encode on {len(compare)} sentences: lowest cosine "
    f"{cosine.min().item():.7f}, max abs difference {(mine - theirs).abs().max().item():.1e}"
)
check(cosine.min().item() > 0.9999, "minift and sentence-transformers embeddings disagree")

# %% [markdown]
# ## What sentence embeddings are good for
#
# The embeddings are unit vectors, so a dot product is a cosine similarity. Search a pool of SST-2
# dev sentences for the nearest neighbours of two short reviews written for the purpose, one
# warm and one scathing. The model was never trained on sentiment, only on which sentences mean
# the same thing, yet the label of the neighbours (0 negative, 1 positive) already leans the right
# way. Fine-tuning (the next lessons) turns that lean into a classifier.

# %%
pool = dev[:NUM_POOL]
pool_emb = encode(model, tokenizer, [example.text for example in pool])
queries = ["a warm , funny and deeply moving film .", "a dull , tedious mess with no ideas ."]
query_emb = encode(model, tokenizer, queries)
similarity = query_emb @ pool_emb.T  # (queries, pool): cosines
for query, row in zip(queries, similarity, strict=True):
    print(f"\nquery: {query!r}")
    top = row.topk(3)
    for score, index in zip(top.values.tolist(), top.indices.tolist(), strict=True):
        print(f"  {score:.3f}  label {pool[index].label}  {pool[index].text}")

# Leave-one-out k-nearest-neighbour vote inside the pool: a first, training-free classifier.
k = 5
labels = torch.tensor([int(example.label) for example in pool])
pairwise = pool_emb @ pool_emb.T
pairwise.fill_diagonal_(-2.0)  # a sentence may not vote for itself
votes = labels[pairwise.topk(k, dim=1).indices].float().mean(dim=1)
knn_accuracy = ((votes > 0.5).long() == labels).float().mean().item()
majority = max(labels.float().mean().item(), 1 - labels.float().mean().item())
print(
    f"\n{k}-NN accuracy within {len(pool)} SST-2 dev sentences: {knn_accuracy:.3f} "
    f"(always guessing the majority label: {majority:.3f})"
)

# %% [markdown]
# A picture of the same pool: the 384-dimensional embeddings projected on the two directions in
# which they vary most (principal component analysis, `plots.project_2d`), coloured by label, with
# the two queries as stars. Two dimensions keep little of 384, but the labels already lean apart.

# %%
if FIGURES:
    coords = plots.project_2d(torch.cat([pool_emb, query_emb]))
    fig, ax = plots.figure(7, 5.5)
    label_names = {"0": "0 (negative)", "1": "1 (positive)"}
    plots.draw_embeddings(
        ax, coords[: len(pool)], [label_names[example.label] for example in pool],
        f"{len(pool)} SST-2 dev sentences: embeddings projected to 2-D (PCA)",
    )
    for (x_star, y_star), query in zip(coords[len(pool):], queries, strict=True):
        ax.scatter(x_star, y_star, marker="*", s=300, color="black", zorder=3)
        right = x_star > 0  # label towards the middle, inside the axes
        ax.annotate(f"query: {query[:18]}...", (x_star, y_star), textcoords="offset points",
                    xytext=(-10 if right else 10, 10), ha="right" if right else "left")
    ax.title.set_fontsize(11)
    FIGURES.save(fig, "embeddings_pca.png")

print(f"\nlesson ran in {time.perf_counter() - START:.1f} s")

# %% [markdown]
# ## What to try next
#
# - Set `eps = 1e-5` (torch's default) on every `torch.nn.LayerNorm` in `model.modules()` and
#   rerun the comparison with transformers: watch the difference jump by orders of magnitude.
# - Replace `F.gelu(x)` by `F.gelu(x, approximate="tanh")` in `FeedForward` and compare again.
# - Drop the additive mask in the step-by-step pass (`layer(x, None)`) and see which sentence's
#   hidden states change, and which do not.
# - Swap mean pooling for the `[CLS]` hidden state or the pooler output in the similarity search;
#   compare the k-NN accuracy printed above.
# - Point `resolve_model_dir` at another BERT checkpoint folder and rerun the comparison.
