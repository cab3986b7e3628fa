# %% [markdown]
# # Lesson 05: masked-language modelling and domain adaptation
#
# ## Why this matters
#
# BERT learned language by filling in blanks: hide 15% of the tokens of a sentence and train the
# encoder to predict them from both sides. The same objective, run again on the text of one
# domain (financial news, clinical notes, contracts), teaches a general encoder that domain's
# words and phrasing before it ever sees a label: "continued pretraining" or "domain-adaptive
# pretraining" (Gururangan et al. 2020). Labels are expensive and domain text is cheap, so this is
# often the cheapest accuracy a practitioner can buy, when it works.
#
# What gets hidden matters. BERT hid single WordPiece tokens, so the model could often guess
# `##ings` from `earn` next to it; whole-word masking hides every piece of a word together, and
# SpanBERT hides runs of whole words, so the model must use the wider context. This lesson shows
# the three strategies of `minift/masking.py` on real financial sentences, the MLM head of
# `minift/heads.py` (a decoder tied to the word embeddings, run only where there is something to
# predict), and `minift pretrain` end to end: adapt all-MiniLM-L6-v2 to Financial PhraseBank text,
# then fine-tune a sentiment classifier from it and from the plain model, with the same budget.

# %%
import json
import os
import random
import shutil
import time
from collections import Counter
from pathlib import Path

import torch
import transformers

from minift import plots
from minift.checkpoint import load_bert, resolve_model_dir, save_bert
from minift.heads import MaskedLM
from minift.metrics import format_table
from minift.mlm_data import MaskedBatches, MaskingCollator, TextSequences
from minift.nsp_data import nsp_pairs, read_documents, tokenize_documents
from minift.recipes import finetune, pretrain
from minift.tokenizer import Tokenizer

# MINIFT_QUICK=1 (what CI sets) shrinks the data and the steps; the steps of the lesson are the same.
MINIFT_QUICK = os.environ.get("MINIFT_QUICK") == "1"
PRETRAIN_STEPS = 2 if MINIFT_QUICK else 160  # as benchmarks/domain_adaptation.py
LABELLED = 32 if MINIFT_QUICK else 320  # labelled examples for fine-tuning, as the benchmark
FINETUNE_EPOCHS = 1 if MINIFT_QUICK else 2

try:
    REPO = Path(__file__).resolve().parents[1]
except NameError:  # opened as a notebook: the working directory is lessons/
    REPO = Path.cwd().resolve().parent
DATA = Path(os.environ.get("MINIFT_DATA") or REPO.parent / "shared" / "data")
# Figures go to lessons/figures/05/ (git-ignored; emptied now, kept at the end), and show inline
# in a notebook. Without matplotlib, FIGURES is None and the lesson runs without them.
FIGURES = plots.lesson_figures(REPO / "lessons" / "figures" / "05")
START = time.perf_counter()
# The lesson's files go to runs/lessons/05/ (git-ignored): emptied now, removed at the end; a run
# that stops halfway leaves it there until the next run empties it.
WORK = REPO / "runs" / "lessons" / "05"
shutil.rmtree(WORK, ignore_errors=True)
WORK.mkdir(parents=True)


def check(condition: bool, message: str) -> None:
    """Stop the lesson when a claim it makes does not hold (CI runs every lesson)."""
    if not condition:
        raise RuntimeError(message)


print(f"quick mode: {MINIFT_QUICK}; data: {DATA}; scratch folder: {WORK}")

# %% [markdown]
# ## The data: Financial PhraseBank
#
# 2,264 sentences from financial news on which all annotators agreed about the sentiment
# (`sentence@label`). We fix the split of the benchmark `benchmarks/domain_adaptation.py`: shuffle
# the indices with `random.Random(0)`, the first 20% are dev, the rest train. Continued pretraining
# may read the *text* of the training sentences, never the dev sentences, whose text serves as
# held-out text for perplexity.

# %%
lines = (DATA / "financial_phrasebank" / "Sentences_AllAgree.txt").read_text(encoding="utf-8")
pairs = [tuple(line.rsplit("@", 1)) for line in lines.splitlines() if line.strip()]
order = list(range(len(pairs)))
random.Random(0).shuffle(order)
n_dev = round(0.2 * len(pairs))
train_pairs = [pairs[i] for i in sorted(order[n_dev:])]
dev_pairs = [pairs[i] for i in sorted(order[:n_dev])]
print(f"{len(pairs)} sentences -> {len(train_pairs)} train / {len(dev_pairs)} dev")
print("labels (train):", dict(Counter(label for _, label in train_pairs)))
if MINIFT_QUICK:  # seeded random subsets: the file is grouped by label, so never take a head
    train_pairs = random.Random(1).sample(train_pairs, 200)
    dev_pairs = random.Random(1).sample(dev_pairs, 48)
for sentence, label in train_pairs[:3]:
    print(f"  {label:>8}  {sentence}")

# %% [markdown]
# ## Three ways to choose what to hide
#
# `TextSequences` tokenizes the passages and, with `pack=True`, packs consecutive sentences into
# full-length sequences, `[CLS] a [SEP] b [SEP] ...`, as RoBERTa and SpanBERT do: no compute goes
# to padding. It also numbers the words of each sequence (a word is the WordPiece pieces of one
# pre-tokenized word), which whole-word and span masking need. `MaskingCollator` then calls
# `minift.masking`: `mlm` picks each token with probability 0.15; `wwm` picks each *word* with
# probability 0.15 and takes all of its pieces; `span` draws span lengths in words from a
# geometric distribution (p = 0.2, at most 10) until 15% of the tokens are covered. Of what is
# picked, 80% becomes `[MASK]`, 10% a random token and 10% stays (per token for `mlm`, per word or
# per span for the others). Below, the model sees the first line; `~x` is a random replacement
# and `=x` a token that stayed but must still be predicted. The second line is what it must
# predict.

# %%
tokenizer = Tokenizer.from_pretrained(resolve_model_dir("minilm"))
demo = TextSequences([s for s, _ in train_pairs[:40]], tokenizer, max_length=96, pack=True)
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
# One draw shows the idea, many draws show the rates. Over the whole training text, masked once
# per strategy, count the share of maskable tokens selected, how the selected ones were treated,
# and how long the runs of consecutive selected tokens are. Span masking overshoots its 15%
# budget: spans are whole words and are never cut, so the last span of a sequence passes the
# target by about half a span. On one short sentence a sequence that overshoot is large next to
# the target; packed into full-length sequences it is small. That is why `--pack` exists.


# %%
def masking_stats(strategy: str, pack: bool, max_length: int = 128) -> dict:
    sequences = TextSequences(
        [s for s, _ in train_pairs], tokenizer, max_length=max_length, pack=pack
    )
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
# guesses are noise. Watch what it predicts for a masked word now, and again after adaptation.

# %%
mlm = MaskedLM.from_pretrained("minilm").eval()
print(f"head loaded from the checkpoint: {mlm.head_loaded}")
check(not mlm.head_loaded, "the published MiniLM was expected to have no MLM head")
check(mlm.decoder.weight is mlm.bert.embeddings.word_embeddings.weight, "decoder not tied")
head_params = sum(p.numel() for n, p in mlm.named_parameters() if not n.startswith("bert."))
print(
    f"decoder tied to the word embeddings: one {tuple(mlm.decoder.weight.shape)} matrix; the "
    f"head adds only {head_params:,} parameters of its own"
)

PROBE = "operating profit [MASK] to eur 13.1 mn from eur 8.7 mn ."


def top_predictions(model: MaskedLM, text: str = PROBE, k: int = 5) -> list[str]:
    enc = tokenizer([text])
    position = enc.input_ids[0].tolist().index(tokenizer.mask_token_id)
    with torch.no_grad():
        logits = model(**enc).logits[0, position]
    return tokenizer.convert_ids_to_tokens(logits.topk(k).indices)


print(f"{PROBE!r}\n  top 5 before adaptation: {top_predictions(mlm)}")

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
print(
    f"decoder rows computed: {targets} (sparse) instead of {dense.shape[0] * dense.shape[1]} "
    f"({real_tokens} real tokens); loss {sparse.loss.item():.5f} vs dense "
    f"{dense_loss.item():.5f}"
)
check(abs(sparse.loss.item() - dense_loss.item()) < 1e-4, "sparse and dense losses differ")
del mlm, dense

# %% [markdown]
# ## Domain adaptation end to end
#
# `minift pretrain` (here its programmatic form, `minift.recipes.pretrain`) reads text files of one
# passage a line, masks them afresh every epoch, trains with the fine-tuning loop (AdamW, warmup,
# checkpoints, resume) and measures masked-token accuracy and perplexity (exp of the mean loss on
# the masked tokens) on held-out text, masked once with a fixed seed so that "before" and "after"
# score the same hidden tokens. The command line equivalent:
#
# ```bash
# minift pretrain --model minilm --text train.txt --eval-text dev.txt --masking wwm --pack \
#     --steps 160 --batch-size 4 --max-length 128 --lr 1e-4 --out adapted/
# ```

# %%
(WORK / "train.txt").write_text("".join(s + "\n" for s, _ in train_pairs), encoding="utf-8")
(WORK / "dev.txt").write_text("".join(s + "\n" for s, _ in dev_pairs), encoding="utf-8")
adapted_metrics = pretrain(
    model="minilm",
    text=str(WORK / "train.txt"),
    eval_text=str(WORK / "dev.txt"),
    masking="wwm",
    pack=True,
    steps=PRETRAIN_STEPS,
    batch_size=4,
    max_length=128,
    lr=1e-4,
    seed=0,
    eval_every=max(1, PRETRAIN_STEPS // 8),  # a held-out point every eighth of the run
    out=str(WORK / "adapted"),
    progress=False,
)
adapted = MaskedLM.from_pretrained(WORK / "adapted").eval()
print(f"{PROBE!r}\n  top 5 after adaptation: {top_predictions(adapted)}")
before, after = adapted_metrics["before"], adapted_metrics["after"]
check(after["loss"] < before["loss"], "continued pretraining did not lower the held-out loss")

# %% [markdown]
# The held-out perplexity at each evaluation of the run (step 0: the published weights, with the
# freshly initialised head), from the run's `log.jsonl`, beside the training loss.

# %%
if FIGURES:
    train_records, eval_records = plots.read_log(WORK / "adapted")
    eval_records = [{"step": 0, "eval": before}] + eval_records
    fig, (ax_loss, ax_ppl) = plots.figure(11, 4.2, ncols=2)
    plots.draw_loss(ax_loss, {"wwm, packed": train_records})
    plots.draw_metric(ax_ppl, "perplexity", {"held-out sentences": eval_records})
    ax_ppl.set_yscale("log")
    ax_ppl.set_title("held-out perplexity during continued pretraining")
    FIGURES.save(fig, "perplexity.png")

# %% [markdown]
# The folder `pretrain` wrote is a `BertForMaskedLM` checkpoint: transformers loads it and
# computes the same logits.

# %%
reference = transformers.BertForMaskedLM.from_pretrained(WORK / "adapted").eval()
enc = tokenizer([PROBE, "net sales decreased ."])
real = enc.attention_mask.bool()
with torch.no_grad():
    difference = (adapted(**enc).logits - reference(**enc).logits)[real].abs().max().item()
print(
    f"minift vs transformers.BertForMaskedLM, same folder: max abs logit difference "
    f"{difference:.1e}"
)
check(difference < 1e-4, "the saved MLM model and transformers disagree")
del reference, adapted

# %% [markdown]
# Now the question that matters: does the adapted encoder make a better sentiment classifier?
# Both arms get the same fine-tuning budget: the same labelled examples, epochs, learning rate,
# batch size and seed. `BertForMaskedLM` has no pooler, and the classifier reads the pooled
# `[CLS]`, so the adapted encoder keeps MiniLM's pooler (MLM never trains it): the two arms differ
# only in the encoder.

# %%
encoder = load_bert("minilm")  # with its pooler
missing, _ = encoder.load_state_dict(
    load_bert(WORK / "adapted", add_pooling_layer=False).state_dict(), strict=False
)
check(all(key.startswith("pooler.") for key in missing), f"unexpected missing keys {missing}")
save_bert(encoder, WORK / "adapted_cls")
tokenizer.save_pretrained(WORK / "adapted_cls")
for name, part in (("train", train_pairs), ("dev", dev_pairs)):
    (WORK / f"{name}.jsonl").write_text(
        "".join(json.dumps({"sentence": s, "label": y}) + "\n" for s, y in part), encoding="utf-8"
    )

rows = []
for arm, model_dir in (("MiniLM", "minilm"), ("MiniLM + MLM", str(WORK / "adapted_cls"))):
    result = finetune(
        model=model_dir,
        out=str(WORK / "ft"),
        train=str(WORK / "train.jsonl"),
        dev=str(WORK / "dev.jsonl"),
        text_col="sentence",
        limit_train=LABELLED,
        epochs=FINETUNE_EPOCHS,
        lr=8e-5,
        batch_size=16,
        max_length=64,
        seed=0,
        progress=False,
    )
    rows.append(
        {
            "encoder": arm,
            "held-out perplexity": (after if arm != "MiniLM" else before)["perplexity"],
            "dev accuracy": 100 * result["dev"]["accuracy"],
            "dev macro-F1": 100 * result["dev"]["f1"],
        }
    )
print(
    f"\n{LABELLED} labelled examples, {FINETUNE_EPOCHS} epoch(s), {len(dev_pairs)} dev "
    f"sentences, one seed (the MiniLM row's perplexity is that of its untrained MLM head):"
)
print(format_table(rows, float_format=".2f"))

# %% [markdown]
# ## BERT's other objective: next-sentence prediction
#
# BERT was pretrained on two tasks at once: masked words, and whether segment B really follows
# segment A (`[CLS] A [SEP] B [SEP]`, label 0) or was taken from another document (label 1). The
# pairs come from documents: sentences are gathered into a chunk until it is long enough, a random
# cut splits it into A and B, and half of the time B is replaced by sentences of a random other
# document (`minift.nsp_data.nsp_pairs`, BERT's `create_instances_from_document` with a seeded
# `torch.Generator`). Here on real CSAbstruct abstracts (one JSON line an abstract with its
# `sentences`), the format `minift pretrain --nsp` reads; `heads.PreTraining` trains both heads
# with the loss of transformers' `BertForPreTraining` (MLM loss + NSP loss).

# %%
abstracts = read_documents(DATA / "csabstruct" / "dev.jsonl")[: 40 if MINIFT_QUICK else 295]
pairs = nsp_pairs(tokenize_documents(abstracts, tokenizer), 128, torch.Generator().manual_seed(0))
random_share = sum(p.label for p in pairs) / len(pairs)
print(f"{len(abstracts)} abstracts -> {len(pairs)} pairs (max length 128); "
      f"{random_share:.0%} have a random B")
for label in (0, 1):
    pair = next(p for p in pairs if p.label == label)
    print(f"\nlabel {label} ({'B follows A' if label == 0 else 'B from another abstract'}):")
    print(f"  A: {tokenizer.decode(pair.a)[:150]}")
    print(f"  B: {tokenizer.decode(pair.b)[:150]}")
check(0.3 < random_share < 0.85, "about half the pairs should have a random B")

# %% [markdown]
# A single-sentence chunk has no cut to make, so its B is always random: that is why the share
# printed is a little over one half. Train both objectives with
# `minift pretrain --model minilm --text abstracts.jsonl --nsp --out DIR`: it prints the NSP
# accuracy on held-out abstracts before and after.

# %% [markdown]
# One seed on a few hundred examples is noisy: a point or two either way is within the spread of
# seeds. `benchmarks/domain_adaptation.py` runs both arms over several seeds and reports mean and
# spread; its latest table, if it has been run, is printed below.

# %%
results = REPO / "benchmarks" / "results" / "domain_adaptation.md"
print(results.read_text(encoding="utf-8") if results.is_file() else f"({results} not found)")
shutil.rmtree(WORK)  # the adapted model, its classifier copy and the fine-tuned runs
print(f"\nlesson ran in {time.perf_counter() - START:.1f} s")

# %% [markdown]
# ## What to try next
#
# - More domain text. A couple of thousand sentences is a few tens of thousands of tokens;
#   domain-adaptive pretraining in the literature reads gigabytes. Add the larger
#   `Sentences_50Agree.txt` (ISO-8859-1: convert it first), minus the dev sentences.
# - More steps. Task-adaptive pretraining (Gururangan et al.) runs 100 epochs over the task's text;
#   here a run is a few. Watch the held-out perplexity fall and check when accuracy follows.
# - Warm the fresh head up first: train only the MLM head for some steps with the encoder frozen,
#   so that its random gradients do not shake the encoder, then train everything.
# - Start from a checkpoint that has its MLM head (bert-base-uncased), so "before" is a real
#   language model and the steps go to the domain, not to learning a head.
# - Compare `--masking mlm`, `wwm` and `span` on the same budget.
