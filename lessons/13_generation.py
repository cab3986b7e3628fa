# %% [markdown]
# # Lesson 13: from an encoder to a writer
#
# ## Why this matters
#
# Every lesson so far read text: a label, a span, an embedding. This one writes. An encoder
# reads a whole sentence at once, every token seeing every other; a writer must produce tokens
# one at a time, each from the ones before it. Four ideas turn the first into the second, and
# this lesson shows each on real data:
#
# 1. the **causal mask**: a decoder token may look only to its left;
# 2. **cross-attention**: the decoder's tokens read the encoder's output, the source;
# 3. **warm starting**: both halves begin as the same pretrained BERT (Rothe, Narayan and
#    Severyn 2020, "Leveraging Pre-trained Checkpoints for Sequence Generation Tasks"), only
#    the cross-attention and the output head fresh;
# 4. **teacher forcing**: training feeds the decoder the true target shifted one step right,
#    so that all positions learn in one pass.
#
# Then `minift seq2seq` trains all-MiniLM-L6-v2 as a BERT2BERT encoder-decoder on E2E NLG (a
# restaurant's attributes in, a sentence out), and the lesson compares greedy decoding with
# beam search and works BLEU out by hand on a real output.
#
# **The data.** E2E's official training set (42k pairs) could not be had, so minift trains on
# E2E's *official dev set* (`devset.csv`, 4,672 pairs) and scores on the official test set
# (`testset_w_refs.csv`). The published baseline, TGen, reached test BLEU 65.93 trained on the
# full 42k pairs: it is the anchor, not a number this lesson (which trains for seconds) can
# claim.

# %%
import json
import math
import shutil
import time
from collections import Counter

import sacrebleu
import torch
from common import DATA, MINIFT_QUICK, REPO, START, check, figures, work_folder

from minift.core.bleu import corpus_bleu, tokenize_13a
from minift.core.decoder import IGNORE_INDEX, causal_mask, shift_right
from minift.core.generate import generate
from minift.data.text_pairs import e2e_files, group_by_source, read_text_pairs
from minift.data.tokenizer import Tokenizer, named_checkpoint
from minift.hf.encoder_decoder import warm_start
from minift.run import plots
from minift.run.recipes import prepare
from minift.run.recipes.seq2seq import seq2seq
from minift.tasks.seq2seq import Seq2SeqModel, generate_texts, source_rows, target_rows

torch.set_num_threads(1)
FIGURES = figures("13")  # lessons/figures/13/ (git-ignored); None without matplotlib
WORK = work_folder("13")  # runs/lessons/13/ (git-ignored): emptied now, removed at the end
# Quick mode (what CI runs): 240 training pairs, 40 steps of 8, 12 test sources, beams 1-4.
# The full run: every dev-set pair, 600 steps of 16, 100 test sources, beams 1-8.
STEPS, BATCH = (40, 8) if MINIFT_QUICK else (600, 16)
LIMIT_TRAIN = 240 if MINIFT_QUICK else None
SOURCES = 12 if MINIFT_QUICK else 100
BEAMS = (1, 2, 4) if MINIFT_QUICK else (1, 2, 3, 4, 6, 8)
MAX_LENGTH, MAX_TARGET, MAX_NEW = 64, 48, 40
TRAIN_FILE, TEST_FILE, SOURCE_COL, TARGET_COL = e2e_files(DATA)
tokenizer = Tokenizer.from_pretrained(named_checkpoint("minilm"))

# %% [markdown]
# ## 1. The data: a meaning representation in, a sentence out
#
# Each E2E row pairs a *meaning representation* (attribute[value] pairs) with one sentence a
# crowd worker wrote for it; the same source appears with several references.

# %%
train_pairs = read_text_pairs(TRAIN_FILE, source_col=SOURCE_COL, target_col=TARGET_COL)
test = group_by_source(read_text_pairs(TEST_FILE, source_col=SOURCE_COL, target_col=TARGET_COL))
print(f"train (E2E's official dev set): {len(train_pairs):,} pairs; "
      f"test: {len(test):,} distinct sources")
example = train_pairs[0]
print(f"source: {example.source}\ntarget: {example.target}")
references_per_source = sum(len(e.references) for e in test) / len(test)
print(f"references per test source: {references_per_source:.1f} on average")
check(references_per_source > 2, "E2E's test set should hold several references a source")

# %% [markdown]
# ## 2. The causal mask
#
# Self-attention in the encoder lets every token see every other. A decoder that is trained to
# predict token t + 1 must not see it, so query i may attend key j only when j <= i. minift
# builds that as a comparison of positions (`past_length` counts tokens already in the cache,
# section 6):
#
# ```python
# # minift/core/decoder.py
#     keys = past_length + query_length
#     query_positions = torch.arange(past_length, keys, device=device)[:, None]  # (query, 1)
#     allowed = torch.arange(keys, device=device)[None, :] <= query_positions  # (query, keys)
# ```
#
# The mask is additive: 0 where allowed, the dtype's minimum where not, so the softmax gives
# forbidden keys a weight of exactly 0. Below it is drawn over the first tokens of a real
# target; the right panel is the one row a *cached* generation step uses (one new query
# after the tokens already written), which must be the full mask's last row.

# %%
target_ids = target_rows([example.target], tokenizer, MAX_TARGET)[0][0]
decoder_input = shift_right(target_ids[None], tokenizer.cls_token_id, tokenizer.pad_token_id)[0]
shown = min(10, len(decoder_input))
tokens_shown = tokenizer.convert_ids_to_tokens(decoder_input[:shown])
full = causal_mask(None, shown, 0, torch.float32, torch.device("cpu"))[0, 0]  # (query, keys)
one_step = causal_mask(None, 1, shown - 1, torch.float32, torch.device("cpu"))[0, 0]  # (1, keys)
allowed = (full == 0).int()
print("allowed keys per query:", allowed.sum(1).tolist())
check(allowed.sum(1).tolist() == list(range(1, shown + 1)), "query i should see keys 0..i")
check(torch.equal(one_step[0], full[-1]), "a cached step's row should be the full mask's last")

if FIGURES:
    fig, (left, right) = plots.figure(11, 4.8, ncols=2)
    left.imshow(allowed, cmap="Blues", vmin=0, vmax=1.4)
    left.set_xticks(range(shown), tokens_shown, rotation=60, ha="right")
    left.set_yticks(range(shown), tokens_shown)
    left.set_xlabel("key (may be read)")
    left.set_ylabel("query (the token being read from)")
    left.set_title("causal mask over a real target: query i sees keys 0..i")
    right.imshow((one_step == 0).int(), cmap="Oranges", vmin=0, vmax=1.4)  # one row: a strip
    right.set_xticks(range(shown), tokens_shown, rotation=60, ha="right")
    right.set_yticks([0], [tokens_shown[-1]])
    right.set_title(f"one cached step: 1 query, {shown - 1} cached keys + itself")
    for ax in (left, right):
        ax.grid(False)
    FIGURES.save(fig, "causal_mask.png")

# %% [markdown]
# ## 3. Warm starting: what comes from MiniLM, what is fresh
#
# `minift.hf.encoder_decoder.warm_start` builds the encoder-decoder and copies MiniLM into both
# halves: the encoder whole, the decoder's embeddings and blocks (self-attention, feed-forward,
# norms) from the very same tensors. What MiniLM never had stays freshly initialised: each
# decoder block's cross-attention (and its LayerNorm), and the LM head's transform and bias
# (all-MiniLM-L6-v2 ships no `cls.predictions`); the head's output matrix is tied to the word
# embeddings, so it is pretrained (counted once, with the decoder's embeddings). A clean way
# to tell the two apart: warm-start twice with two seeds. What came from the checkpoint is
# equal; fresh random weights differ. Fresh biases and LayerNorm gains start at the constants
# 0 and 1, equal under any seed, so inside the fresh parts they are counted on their own.

# %%
model_a, model_b = warm_start("minilm", seed=0), warm_start("minilm", seed=1)
params_b = dict(model_b.named_parameters())
groups = Counter()
fresh_names = []
for name, param in model_a.named_parameters():
    same = torch.equal(param, params_b[name])
    part = ("encoder" if name.startswith("encoder.") else
            "decoder cross-attention" if ".cross_attention" in name else
            "decoder LM head" if name.startswith("decoder.head.") else "decoder body")
    constant = same and part in ("decoder cross-attention", "decoder LM head")
    if constant:  # fresh too, but a bias (0) or a LayerNorm gain (1): equal under any seed
        check(bool((param == 0).all() or (param == 1).all()), f"{name} should start at 0 or 1")
    origin = "fresh, random" if not same else "fresh, 0 or 1" if constant else "from MiniLM"
    groups[part, origin] += param.numel()
    if not same:
        fresh_names.append(name)
for (part, origin), count in sorted(groups.items()):
    print(f"{part:24} {origin:12} {count:>11,} weights")
warm_total = sum(c for (_, origin), c in groups.items() if origin == "from MiniLM")
fresh_total = sum(c for (_, origin), c in groups.items() if origin != "from MiniLM")
print(f"total: {warm_total:,} from MiniLM, {fresh_total:,} fresh "
      f"({100 * fresh_total / (warm_total + fresh_total):.1f}%)")
check(all(".cross_attention" in n or n.startswith("decoder.head.") for n in fresh_names),
      "only the cross-attention and the LM head should be fresh")
encoder_state, body_state = model_a.encoder.state_dict(), model_a.decoder.bert.state_dict()
shared = [k for k in body_state if k in encoder_state]
check(shared and all(torch.equal(body_state[k], encoder_state[k]) for k in shared),
      "the decoder's body should start as the encoder's very weights")
print(f"{len(shared)} decoder tensors equal to the encoder's, name for name")
check(model_a.decoder.head.decoder.weight is model_a.decoder.bert.embeddings.word_embeddings.weight,
      "the LM head's output matrix should be the word embeddings themselves (tied)")
del model_a, model_b

# %% [markdown]
# ## 4. Teacher forcing: the decoder reads the target shifted right
#
# Training does not generate. The decoder is given the true target, moved one step right
# behind a start token ([CLS]: BERT was never taught a start token of its own), and at every
# position it is scored on the next true token. The causal mask makes this honest: position
# t cannot peek at token t. One forward pass trains all positions at once.
#
# ```python
# # minift/core/decoder.py
# def shift_right(labels: torch.Tensor, start_token_id: int, pad_token_id: int) -> torch.Tensor:
#     # ...
#     shifted = torch.full_like(labels, start_token_id)
#     shifted[:, 1:] = labels[:, :-1]
#     return shifted.masked_fill(shifted == IGNORE_INDEX, pad_token_id)
# ```
#
# The real target from section 1, as the decoder reads it (input) and as it is scored
# (label):

# %%
labels_tokens = tokenizer.convert_ids_to_tokens(target_ids)
input_tokens = tokenizer.convert_ids_to_tokens(decoder_input)
print(f"{'t':>3}  {'decoder input':15} {'label (next token)':18}")
for t in range(min(12, len(labels_tokens))):
    print(f"{t:>3}  {input_tokens[t]:15} {labels_tokens[t]:18}")
print(f"... {len(labels_tokens)} positions; the last label is {labels_tokens[-1]} (stop)")
check(input_tokens[0] == "[CLS]" and input_tokens[1:] == labels_tokens[:-1],
      "the decoder input should be [CLS] then the labels but the last")
check(labels_tokens[-1] == "[SEP]", "the target should end with [SEP], so the model learns to stop")
check(IGNORE_INDEX == -100, "padding labels are -100, which the loss skips")

# %% [markdown]
# ## 5. Training with `minift seq2seq`
#
# The recipe (`minift seq2seq --task e2e`, here its Python form) warm-starts the model,
# trains it by teacher forcing, and scores the test sources before and after by greedy
# generation: BLEU (sacrebleu's, lowercased for this uncased tokenizer) and the teacher-forced
# loss. Quick mode trains 40 steps of 8 pairs on a seeded 240-pair subset and scores a seeded
# 12-source subset of the test set; that is far from a good model, but enough to watch it
# learn the task's shape.

# %%
metrics = seq2seq(task="e2e", data_dir=str(DATA), out=str(WORK / "run"), limit_train=LIMIT_TRAIN,
                  limit_dev=SOURCES, max_steps=STEPS, eval_every=STEPS, batch_size=BATCH,
                  lr=2e-4, max_length=MAX_LENGTH, max_target_length=MAX_TARGET,
                  max_new_tokens=MAX_NEW, progress=False)
before, after = metrics["before"], metrics["dev"]
for when, scores_at in (("before", before), (f"after {STEPS} steps", after)):
    print(f"{when}: BLEU {scores_at['bleu']:.2f}  ROUGE-L {scores_at['rouge_l']:.2f}  "
          f"loss {scores_at['loss']:.3f}")
uniform_loss = math.log(tokenizer.vocab_size)
print(f"a uniform guess over {tokenizer.vocab_size:,} tokens: loss ln {tokenizer.vocab_size} = "
      f"{uniform_loss:.2f}")
check(abs(before["loss"] - uniform_loss) < 1.5, "before training the loss should be near a uniform guess's")
check(after["loss"] < before["loss"] - 2, "training should cut the test loss by over 2 nats")
check(after["bleu"] > before["bleu"] + 2, "training should raise BLEU by over 2 points")
check(after["rouge_l"] > before["rouge_l"] + 15, "training should raise ROUGE-L by over 15")

# %% [markdown]
# Before training the fresh cross-attention and head make the decoder write noise (BLEU near
# 0, the loss near a uniform guess's over the whole vocabulary, printed above). After a few
# steps it writes restaurant sentences (section 6 prints some), with the shape right and the
# facts wrong: it has not yet learnt to read the source. ROUGE-L (the longest common
# subsequence with the best reference) rises faster than BLEU, which needs exact 4-grams.
#
# ## 6. Greedy against beam search
#
# Greedy decoding takes the most probable token at each step. Beam search keeps the `k` most
# probable partial sentences and extends them all, which can find a sentence whose total
# probability is higher though its first tokens were not the best. Generation is cached: the
# source's cross-attention keys and values are projected once, and each step feeds one new
# token (section 2's one-row mask). Below, the same trained model on the same test sources,
# with each output's mean log-probability per token (the model's own score).

# %%
model = Seq2SeqModel.from_pretrained(WORK / "run").eval()
examples = prepare.subset(test, SOURCES, 0)  # the recipe's seeded test sources
references = [list(e.references) for e in examples]
rows, _ = source_rows([e.source for e in examples], tokenizer, MAX_LENGTH)


def mean_log_prob(source_row: torch.Tensor, text: str) -> float:
    """The model's mean log-probability per token of ``text`` ([SEP] included) given the
    source, by teacher forcing."""
    labels = target_rows([text], tokenizer, MAX_TARGET)[0][0][None]
    with torch.no_grad():
        logits = model(source_row[None], labels=labels).logits
    return logits.log_softmax(-1).gather(-1, labels[..., None]).mean().item()


outputs, scores = {}, {}
with torch.no_grad():
    for beams in BEAMS:
        outputs[beams] = generate_texts(model, tokenizer, rows, batch_size=BATCH,
                                        max_new_tokens=MAX_NEW, device="cpu", num_beams=beams)
bleu_by_beam = {b: corpus_bleu(outputs[b], references, lowercase=True).score for b in BEAMS}
widest = BEAMS[-1]
for beams in (1, widest):
    scores[beams] = [mean_log_prob(r, t) for r, t in zip(rows, outputs[beams], strict=True)]
for i in range(3):
    print(f"source: {examples[i].source}")
    print(f"  greedy  ({scores[1][i]:+.3f}): {outputs[1][i]}")
    print(f"  beam {widest:<2} ({scores[widest][i]:+.3f}): {outputs[widest][i]}")
print("corpus BLEU by beam size:", {b: round(s, 2) for b, s in bleu_by_beam.items()})
check(abs(bleu_by_beam[1] - after["bleu"]) < 1e-6,
      "greedy BLEU here should be the recipe's own score of the same sources")
mean_greedy = sum(scores[1]) / SOURCES
mean_beam = sum(scores[widest]) / SOURCES
distinct = len(set(outputs[1]))
print(f"greedy wrote {distinct} distinct sentences for {SOURCES} sources")
if MINIFT_QUICK:
    check(distinct <= SOURCES // 2, "after quick mode's steps the model should mostly ignore "
          "its source")
print(f"mean log-probability per token: greedy {mean_greedy:.3f}, beam {widest} {mean_beam:.3f}")
check(mean_beam > mean_greedy - 0.05,
      "beam search should find outputs the model scores at least about as well as greedy's")
check(outputs[1] == generate_texts(model, tokenizer, rows, batch_size=1, max_new_tokens=MAX_NEW,
                                   device="cpu"),
      "greedy decoding should not depend on how the sources are batched")

# %% [markdown]
# In quick mode greedy writes the same few sentences whatever the source (the count is
# printed): the model has learnt what an E2E sentence looks like, not yet which facts to
# put in it. Section 7 shows why. Wide beams also repeat themselves ("it is located near
# ..." again and again), the failure `no_repeat_ngram_size` exists for.
#
# Beam search optimises the model's probability, not BLEU: a wider beam finds sentences the
# model likes at least as much, and whether BLEU follows depends on how good the model is.
# Papers report both, and beam widths of 4 to 10 are usual for this kind of task.

# %%
if FIGURES:
    fig, ax = plots.figure(7, 4.2)
    ax.plot(list(BEAMS), [bleu_by_beam[b] for b in BEAMS], marker="o")
    ax.axhline(before["bleu"], color="grey", linestyle=":", label="before training")
    ax.set_xlabel("beam size (1 = greedy)")
    ax.set_ylabel("test BLEU")
    ax.set_xticks(list(BEAMS))
    ax.set_title(f"BLEU against beam size, {SOURCES} E2E test sources, {STEPS} steps")
    ax.legend()
    FIGURES.save(fig, "bleu_beams.png")

# %% [markdown]
# ## 7. Cross-attention over a real source
#
# Which source tokens does each written token read? A forward hook on the last decoder
# block's cross-attention recomputes its attention probabilities from the same projections
# (softmax(QK^T / sqrt(d) + mask)), checked by rebuilding the block's output from them. The
# heatmap is their mean over the heads: one row per generated token, one column per source
# token.

# %%
captured = {}


def capture(module, args, output):
    x, memory, mask, _ = args
    q, k, v = (module.split_heads(p(t)) for p, t in
               ((module.query, x), (module.key, memory), (module.value, memory)))
    probs = (q @ k.transpose(-1, -2) / math.sqrt(q.size(-1)) + mask).softmax(-1)
    rebuilt = module.out((probs @ v).transpose(1, 2).flatten(2))
    captured["probs"], captured["error"] = probs, (rebuilt - output).abs().max().item()


source_row = rows[0][None]
with torch.no_grad():
    written = generate(model, source_row, torch.ones_like(source_row), max_new_tokens=MAX_NEW)
    hook = model.decoder.bert.layers[-1].cross_attention.register_forward_hook(capture)
    model(source_row, torch.ones_like(source_row), decoder_input_ids=written[:, :-1])
    hook.remove()
heat = captured["probs"][0].mean(0)  # (generated, source)
source_tokens = tokenizer.convert_ids_to_tokens(source_row[0])
out_tokens = tokenizer.convert_ids_to_tokens(written[0, 1:])
print(f"rebuilt output differs from the block's by {captured['error']:.2e}")
check(captured["error"] < 1e-4, "the recomputed probabilities should be the ones the model used")
check(torch.allclose(heat.sum(-1), torch.ones(len(out_tokens)), atol=1e-5),
      "each row of cross-attention should sum to 1")
uniform = 1 / len(source_tokens)
print(f"largest weight {heat.max():.3f} against a uniform 1/{len(source_tokens)} = {uniform:.3f}")
if MINIFT_QUICK:
    check(heat.max() < 3 * uniform, "after quick mode's steps cross-attention should be near flat")
for t in range(min(8, len(out_tokens))):
    print(f"{out_tokens[t]:>12} reads most: {source_tokens[int(heat[t].argmax())]}"
          f" ({heat[t].max():.2f})")

if FIGURES:
    fig, ax = plots.figure(11, 5.5)
    image = ax.imshow(heat, cmap="viridis", aspect="auto")
    ax.grid(False)
    fig.colorbar(image, ax=ax, label="attention weight")
    ax.set_xticks(range(len(source_tokens)), source_tokens, rotation=70, ha="right", fontsize=7)
    ax.set_yticks(range(len(out_tokens)), out_tokens, fontsize=7)
    ax.set_xlabel("source token (the meaning representation)")
    ax.set_ylabel("generated token")
    ax.set_title("cross-attention of the last decoder block, mean over heads")
    FIGURES.save(fig, "cross_attention.png")

# %% [markdown]
# Read the numbers before the picture. Every block's cross-attention started from random
# weights, and after quick mode's few steps the last block's weights are still close to
# uniform over the source (the largest weight printed against 1 / source length): the
# decoder has learnt the language of the task (section 6's sentences) faster than where to
# look, which is also why its names are wrong. Train longer (the full run) and compare the
# rows of the name and area tokens.
#
# ## 8. BLEU by hand on a real output
#
# BLEU (Papineni et al. 2002) compares the n-grams (n = 1..4) of an output with its
# references. For each order, the *modified precision* counts a hypothesis n-gram as matched
# at most as often as the one reference that holds it most often holds it (so "the the the"
# cannot score). The geometric mean of the four precisions is multiplied by a *brevity
# penalty* exp(1 - r / c) when the output (c words) is shorter than the reference closest in
# length (r words), because precision alone would reward saying little. Text is lowercased
# (this tokenizer is uncased) and split by sacrebleu's 13a tokenizer.

# %%
def ngrams(words, n):
    return Counter(tuple(words[i:i + n]) for i in range(len(words) - n + 1))


def hand_statistics(hypothesis, refs):
    hyp = tokenize_13a(hypothesis.lower()).split()
    ref_words = [tokenize_13a(r.lower()).split() for r in refs]
    matched, total = [], []
    for n in range(1, 5):
        most = Counter()
        for words in ref_words:
            most |= ngrams(words, n)  # the most times any one reference holds each n-gram
        mine = ngrams(hyp, n)
        matched.append(sum(min(c, most[g]) for g, c in mine.items()))
        total.append(sum(mine.values()))
    closest = min((abs(len(w) - len(hyp)), len(w)) for w in ref_words)[1]
    return hyp, matched, total, closest


chosen = next(((b, i) for b in BEAMS for i, text in enumerate(outputs[b])
               if min(hand_statistics(text, references[i])[1]) > 0), None)
check(chosen is not None, "some output should match its references at every order 1-4")
hypothesis, refs = outputs[chosen[0]][chosen[1]], references[chosen[1]]
print(f"(beam size {chosen[0]}, test source {chosen[1]}: the first output matched at all orders)")
hyp_words, matched, total, ref_len = hand_statistics(hypothesis, refs)
print(f"output: {hypothesis}\n{len(refs)} references, e.g. {refs[0]}")
for n in range(4):
    print(f"  {n + 1}-grams: {matched[n]:>2} of {total[n]:>2} matched -> "
          f"{100 * matched[n] / total[n]:.1f}%")
bp = 1.0 if len(hyp_words) >= ref_len else math.exp(1 - ref_len / len(hyp_words))
geometric = math.exp(sum(math.log(m / t) for m, t in zip(matched, total, strict=True)) / 4)
by_hand = 100 * bp * geometric
ours = corpus_bleu([hypothesis], [refs], lowercase=True).score
theirs = sacrebleu.corpus_bleu([hypothesis], [[r] for r in refs], lowercase=True).score
print(f"c = {len(hyp_words)} words, closest reference r = {ref_len}: brevity penalty {bp:.3f}")
print(f"BLEU by hand {by_hand:.4f}; minift.core.bleu {ours:.4f}; sacrebleu {theirs:.4f}")
check(abs(by_hand - ours) < 1e-9 and abs(ours - theirs) < 1e-9,
      "BLEU worked by hand should equal core.bleu and sacrebleu")

# %% [markdown]
# Corpus BLEU (section 5's number) is not the mean of sentence scores: the matched and total
# n-gram counts and the lengths are summed over all outputs first, then combined once. With
# several references (section 1 printed how many a test source has on average) an output has
# more ways to match, which is why E2E scores run higher than translation's.

# %% [markdown]
# ## Beside transformers
#
# Is this encoder-decoder the one transformers builds? `benchmarks/generation_e2e.py` trains
# minift's and transformers' `EncoderDecoderModel` from one warm start, on the same batches with
# the same AdamW settings, over three seeds, and decodes the same test sources with both. Its
# committed result (trained, like this lesson, on E2E's official dev set):

# %%
BENCH = json.loads((REPO / "benchmarks" / "results" / "generation_e2e.json").read_text())
print(f"`{BENCH['command']}` on {BENCH['machine']['cpu_model']} "
      f"({BENCH['machine']['torch_threads']} thread), seeds {BENCH['settings']['seeds']}:")
print(f"train: {BENCH['settings']['train_rows']:,} rows of E2E's official dev set; test: "
      f"{BENCH['settings']['test_sources']} sources of the official test set")
scores, speed = BENCH["summary"]["scores"], BENCH["summary"]["speed"]
for way in ("greedy", "beam4"):
    for metric in ("bleu", "rouge_l"):
        ours, theirs = scores[f"minift/{way}/{metric}"], scores[f"transformers/{way}/{metric}"]
        print(f"{way:>6} {metric:>7}: minift {ours['mean']:.2f} ± {ours['std']:.2f}, "
              f"transformers {theirs['mean']:.2f} ± {theirs['std']:.2f}")
        check(ours["values"] == theirs["values"], "the benchmark's two models should write "
              "the same texts from the same start, seed for seed")
    print(f"{way:>6} tokens/s: minift {speed[f'minift/{way}']['mean']:.0f} with the cache, "
          f"{speed[f'minift_no_cache/{way}']['mean']:.0f} without; transformers' generate "
          f"{speed[f'transformers/{way}']['mean']:.0f}")

# %% [markdown]
# Seed for seed the two libraries score the same, because they wrote the same texts: the same
# weights, batches and arithmetic give the same model, and greedy and beam search pick the same
# tokens (tests/test_generate.py holds them to `generate` token for token). The cache is what
# makes decoding fast: without it the decoder reruns every earlier position at each step. The
# timings come from a machine shared with other jobs, so read their ratios, not their values.
#
# ## What to try next
#
# - Train longer (`minift seq2seq --task e2e`, the full run of this lesson): BLEU climbs
#   steeply over the first few hundred steps; the published TGen baseline (65.93, on the full
#   42k training set) is the anchor.
# - `minift generate --num-beams 4 --no-repeat-ngram-size 3` on the trained folder, or
#   sampling with `--sample --top-p 0.9`: fluent, but further from the references.
# - Freeze the encoder and train only the decoder and cross-attention; or start the decoder
#   from random weights, to see what warm starting buys.

# %%
shutil.rmtree(WORK)  # the trained encoder-decoder
print(f"\nlesson ran in {time.perf_counter() - START:.1f} s")
