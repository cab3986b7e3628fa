# %% [markdown]
# # Lesson 05: masked-language modelling, what gets hidden
#
# ## Why this matters
#
# BERT learned language by filling in blanks: hide 15% of the tokens of a sentence and train the
# encoder to predict them from both sides. Every BERT-style checkpoint starts from this objective,
# and running it again on the text of one domain is continued pretraining (lesson 12). Before
# training with it, look at what it asks of the model: which tokens are hidden, how, and what the
# model must predict at each of them.
#
# What gets hidden matters. BERT hid single WordPiece tokens, so the model could often guess
# `##ings` from `earn` next to it; whole-word masking hides every piece of a word together, and
# SpanBERT hides runs of whole words, so the model must use the wider context. This lesson shows
# the three strategies of `minift/core/masking.py` on real financial sentences and measures their
# rates over thousands of draws, then the MLM head of `minift/tasks/mlm.py`: a decoder tied to the
# word embeddings, run only where there is something to predict. BERT's other pretraining
# objective, next-sentence prediction, is in lesson 11, with sentence pairs.

# %%
import math
import random
import time
from collections import Counter

import torch
from common import DATA, MINIFT_QUICK, START, check, figures

from minift.core.metrics import format_table
from minift.data.tokenizer import Tokenizer
from minift.fast.unpad import speed_up
from minift.hf.checkpoint import resolve_model_dir
from minift.run import plots
from minift.tasks.mlm import MaskedBatches, MaskedLM, MaskingCollator, TextSequences

FIGURES = figures("05")  # lessons/figures/05/ (git-ignored); None without matplotlib

print(f"quick mode: {MINIFT_QUICK}; data: {DATA}")

# %% [markdown]
# ## The data: Financial PhraseBank
#
# 2,264 sentences from financial news on which all annotators agreed about the sentiment
# (`sentence@label`). Only the sentences matter here, not the labels. Quick mode takes a seeded
# random 200 of them (the file is grouped by label, so never its head).

# %%
lines = (DATA / "financial_phrasebank" / "Sentences_AllAgree.txt").read_text(encoding="utf-8")
sentences = [line.rsplit("@", 1)[0] for line in lines.splitlines() if line.strip()]
print(f"{len(sentences)} sentences")
if MINIFT_QUICK:
    sentences = random.Random(1).sample(sentences, 200)
for sentence in sentences[:3]:
    print(f"  {sentence}")

# %% [markdown]
# ## Three ways to choose what to hide
#
# `TextSequences` tokenizes the passages and, with `pack=True`, packs consecutive sentences into
# full-length sequences, `[CLS] a [SEP] b [SEP] ...`, as RoBERTa and SpanBERT do: no compute goes
# to padding. It also numbers the words of each sequence (a word is the WordPiece pieces of one
# pre-tokenized word), which whole-word and span masking need. `MaskingCollator` then calls
# `minift.core.masking`: `mlm` picks each token with probability 0.15; `wwm` picks each *word* with
# probability 0.15 and takes all of its pieces; `span` draws span lengths in words from a
# geometric distribution (p = 0.2, at most 10) until 15% of the tokens are covered. Of what is
# picked, 80% becomes `[MASK]`, 10% a random token and 10% stays (per token for `mlm`, per word or
# per span for the others). Below, the model sees the first line; `~x` is a random replacement
# and `=x` a token that stayed but must still be predicted. The second line is what it must
# predict.

# %%
tokenizer = Tokenizer.from_pretrained(resolve_model_dir("minilm"))
demo = TextSequences(sentences[:40], tokenizer, max_length=96, pack=True)
demo_batch = demo.batch([0])
original = demo_batch["input_ids"][0]


def show(masked: dict) -> tuple[str, str]:
    """What the model sees, and what it must predict, as two readable lines."""
    sees, predict = [], []
    for token_id, seen, label in zip(
        original.tolist(),
        masked["input_ids"][0].tolist(),
        masked["labels"][0].tolist(),
        strict=True,
    ):
        token = tokenizer.convert_ids_to_tokens(token_id)
        if label == -100:
            sees.append(token)
        elif seen == tokenizer.mask_token_id:
            sees.append("[MASK]")
            predict.append(token)
        elif seen != token_id:
            sees.append("~" + tokenizer.convert_ids_to_tokens(seen))
            predict.append(token)
        else:
            sees.append("=" + token)
            predict.append(token)
    return " ".join(sees), " ".join(predict)


masked_by = {}
for strategy in ("mlm", "wwm", "span"):
    collator = MaskingCollator.from_tokenizer(tokenizer, strategy)
    masked = masked_by[strategy] = collator(demo_batch, torch.Generator().manual_seed(7))
    sees, predict = show(masked)
    print(
        f"--- {strategy}: {int((masked['labels'] != -100).sum())} of "
        f"{int((~torch.isin(original, torch.tensor(sorted(tokenizer.special_token_ids)))).sum())}"
        " maskable tokens selected"
    )
    print("sees:    ", sees)
    print("predict: ", predict)

# %% [markdown]
# The same three maskings as a map of the first tokens of the sequence: each cell a token, its
# colour what the strategy did to it. `mlm` scatters single pieces (half a word may be hidden),
# `wwm` hides whole words, `span` hides runs of consecutive words.

# %%
if FIGURES:
    from matplotlib.patches import Patch

    shown_tokens = 40
    treatments = {"kept, not predicted": "white", "[MASK]": "C3", "random token": "C1",
                  "unchanged, predicted": "C2"}
    fig, axes = plots.figure(13, 5.6, nrows=3, sharex=True)
    for ax, (strategy, masked) in zip(axes, masked_by.items(), strict=True):
        seen, targets = masked["input_ids"][0].tolist(), masked["labels"][0].tolist()
        for x, token_id in enumerate(original.tolist()[:shown_tokens]):
            if targets[x] == -100:
                kind = "kept, not predicted"
            elif seen[x] == tokenizer.mask_token_id:
                kind = "[MASK]"
            else:
                kind = "random token" if seen[x] != token_id else "unchanged, predicted"
            ax.bar(x, 1, width=1, color=treatments[kind], edgecolor="0.7",
                   alpha=0.6 if kind != "kept, not predicted" else 1)
            ax.text(x, 0.5, tokenizer.convert_ids_to_tokens(token_id), rotation=90,
                    ha="center", va="center", fontsize=8)
        selected = sum(t != -100 for t in targets)
        ax.set_title(f"{strategy}: {selected} of {len(targets)} tokens to predict (first "
                     f"{shown_tokens} shown)", fontsize=11)
        ax.set_yticks([])
        ax.grid(False)
        ax.set_xlim(-0.5, shown_tokens - 0.5)
        ax.spines["left"].set_visible(False)
    axes[-1].set_xlabel("token position in the packed sequence")
    fig.legend(handles=[Patch(facecolor=c, edgecolor="0.7", label=k, alpha=0.6 if c != "white"
                              else 1) for k, c in treatments.items()],
               loc="outside lower center", ncols=4)
    fig.suptitle("What each masking strategy hides in one Financial PhraseBank sequence")
    FIGURES.save(fig, "masking_map.png")

# %% [markdown]
# One draw shows the idea, many draws show the rates. Over all the sentences, masked once
# per strategy, count the share of maskable tokens selected, how the selected ones were treated,
# and how long the runs of consecutive selected tokens are. Span masking overshoots its 15%
# budget: spans are whole words and are never cut, so the last span of a sequence passes the
# target by about half a span. On one short sentence a sequence that overshoot is large next to
# the target; packed into full-length sequences it is small. That is why `--pack` exists.


# %%
def masking_stats(strategy: str, pack: bool, max_length: int = 128) -> dict:
    sequences = TextSequences(sentences, tokenizer, max_length=max_length, pack=pack)
    collator = MaskingCollator.from_tokenizer(tokenizer, strategy)
    special = torch.tensor(sorted(tokenizer.special_token_ids))
    counts, runs = Counter(), []
    for batch in MaskedBatches(sequences, collator, 64, seed=0, shuffle=False):
        original_ids = batch["input_ids"].clone()
        selected = batch["labels"] != -100
        original_ids[selected] = batch["labels"][selected]
        counts["maskable"] += int((~torch.isin(original_ids, special)).sum())
        counts["selected"] += int(selected.sum())
        counts["[MASK]"] += int((selected & (batch["input_ids"] == tokenizer.mask_token_id)).sum())
        counts["kept"] += int((selected & (batch["input_ids"] == original_ids)).sum())
        for row in selected.int().tolist():  # lengths of runs of consecutive selected tokens
            runs += [len(r) for r in "".join(map(str, row)).split("0") if r]
    counts["random"] = counts["selected"] - counts["[MASK]"] - counts["kept"]
    return {
        "strategy": strategy,
        "sequences": "packed" if pack else "one sentence",
        "selected %": 100 * counts["selected"] / counts["maskable"],
        "[MASK] %": 100 * counts["[MASK]"] / counts["selected"],
        "random %": 100 * counts["random"] / counts["selected"],
        "kept %": 100 * counts["kept"] / counts["selected"],
        "mean run (tokens)": sum(runs) / len(runs),
    }


stats = [
    masking_stats("mlm", True),
    masking_stats("wwm", True),
    masking_stats("span", True),
    masking_stats("span", False),
]
print(format_table(stats, float_format=".2f"))
check(stats[3]["selected %"] > stats[2]["selected %"], "span overshoot should shrink when packed")

# %% [markdown]
# ## The MLM head
#
# `MaskedLM` is the encoder plus BERT's prediction head: a dense layer, GELU and LayerNorm, then a
# decoder back to the 30,522 tokens whose weight *is* the word-embedding matrix (one
# `nn.Parameter`, as in transformers' `BertForMaskedLM`), plus one bias per token. The published
# all-MiniLM-L6-v2 was trained for sentence embeddings and ships without `cls.predictions.*`
# weights, so the head is initialised as BERT initialises it, and before any training its
# guesses are noise: its loss below sits near that of a uniform guess over the vocabulary,
# ln 30,522 = 10.33 nats (lesson 12 shows its top guesses for a masked word, before and after
# training).

# %%
mlm = speed_up(MaskedLM.from_pretrained("minilm")).eval()
print(f"head loaded from the checkpoint: {mlm.head_loaded}")
check(not mlm.head_loaded, "the published MiniLM was expected to have no MLM head")
check(mlm.decoder.weight is mlm.bert.embeddings.word_embeddings.weight, "decoder not tied")
head_params = sum(p.numel() for n, p in mlm.named_parameters() if not n.startswith("bert."))
print(
    f"decoder tied to the word embeddings: one {tuple(mlm.decoder.weight.shape)} matrix; the "
    f"head adds only {head_params:,} parameters of its own"
)

# %% [markdown]
# The sparse head: with labels, `MaskedLM` runs the transform and the 384 x 30,522 decoder only
# at the positions whose label is not -100. In a packed batch that is about one position in
# seven, and the loss is the same (tests/test_mlm.py holds the two equal, gradients included):

# %%
batch = MaskedBatches(demo, MaskingCollator.from_tokenizer(tokenizer, "mlm"), 8, seed=0)[0]
real_tokens = int(batch["attention_mask"].sum())
targets = int((batch["labels"] != -100).sum())
with torch.no_grad():
    sparse = mlm(**batch)
    dense = mlm(**{k: v for k, v in batch.items() if k != "labels"}).logits
    dense_loss = torch.nn.functional.cross_entropy(dense.flatten(0, 1), batch["labels"].flatten())
uniform = math.log(tokenizer.vocab_size)
print(
    f"decoder rows computed: {targets} (sparse) instead of {dense.shape[0] * dense.shape[1]} "
    f"({real_tokens} real tokens); loss {sparse.loss.item():.5f} vs dense "
    f"{dense_loss.item():.5f} (a uniform guess: {uniform:.2f} nats)"
)
check(abs(sparse.loss.item() - dense_loss.item()) < 1e-4, "sparse and dense losses differ")
check(sparse.loss.item() > uniform - 1, "the fresh head was expected to guess about at random")
del mlm, dense

# %% [markdown]
# The head is all there is to add for masked-language modelling: everything else is the encoder.
# Lesson 12 trains it, first alone on the frozen encoder and then with the whole model, on
# Financial PhraseBank text, and asks whether that makes a better sentiment classifier.

# %%
print(f"\nlesson ran in {time.perf_counter() - START:.1f} s")

# %% [markdown]
# ## What to try next
#
# - Mask the same sentences with `mlm_probability` 0.3 or 0.4 (`MaskingCollator.from_tokenizer`'s
#   third argument): how do the rates and the span overshoot move?
# - Count, over many draws, how often `mlm` hides only part of a word, the shortcut whole-word
#   masking removes.
# - Continued pretraining with these objectives is lesson 12 (`minift pretrain --masking mlm`,
#   `wwm` or `span`); BERT's pair objective, next-sentence prediction, is lesson 11.
