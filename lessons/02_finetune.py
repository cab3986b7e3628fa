# %% [markdown]
# # Lesson 02: fine-tuning a sentiment classifier, step by step
#
# ## Why this matters
#
# A pretrained encoder knows a great deal about language and nothing about your labels. Fine-tuning
# puts one small linear layer on top of it and trains the whole stack, end to end, on a few
# thousand labelled sentences: a cheap recipe that has stayed the strong baseline for sentence
# classification since BERT. It is also a recipe with many quiet knobs (which parameters get
# weight decay, how the learning rate warms up and decays, how gradients are clipped, how
# batches are padded), and every training framework hides them behind one `trainer.train()`.
# When the result is worse than expected, the knobs are where the answer is.
#
# This lesson fine-tunes all-MiniLM-L6-v2 on SST-2 (movie-review sentences labelled positive or
# negative) with minift's pieces, one at a time: reading the data and its labels, tokenizing,
# batching by length; the classifier and its accuracy before training; one optimizer step
# written out by hand and then held equal to the training loop; the loop itself; the scores,
# the confusion matrix and the mistakes; and finally the saved folder loaded by
# `transformers.AutoModelForSequenceClassification`, with the same logits.

# %%
import copy
import math
import os
import shutil
import time
from collections import Counter

import torch
from common import DATA, MINIFT_QUICK, START, check, figures, seeded_subset, work_folder

from minift.core.labels import LabelVocab
from minift.core.loop import TrainConfig, train
from minift.core.metrics import accuracy, confusion_matrix, format_table, precision_recall_f1
from minift.core.optim import AdamW, lr_schedule, make_scheduler, param_groups
from minift.data.batches import length_grouped_batches
from minift.data.readers import encode_labels, read_examples, task_files
from minift.data.tokenizer import Tokenizer
from minift.fast.unpad import speed_up
from minift.hf.checkpoint import resolve_model_dir
from minift.run import plots
from minift.tasks.classify import ClassificationDataset, SequenceClassifier

# MINIFT_QUICK=1 (what CI sets) shrinks the data and the number of steps; the steps are the same.
NUM_TRAIN = 320 if MINIFT_QUICK else 6400  # a seeded subset of the training sentences
NUM_DEV = 160 if MINIFT_QUICK else None  # None: the whole dev set
BATCH_SIZE = 8 if MINIFT_QUICK else 32  # NUM_TRAIN / BATCH_SIZE optimizer steps in one epoch
EVAL_EVERY = 20 if MINIFT_QUICK else 50  # optimizer steps between evaluations on dev
MAX_LENGTH = 64  # tokens; SST-2 sentences are short
# BERT's fine-tuning default is 5e-5; the 40 steps of quick mode need a higher rate to learn.
LR = 2e-4 if MINIFT_QUICK else 5e-5
WEIGHT_DECAY = 0.01
SEED = 0

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
WORK = work_folder("02")  # runs/lessons/02/ (git-ignored): emptied now, removed at the end
FIGURES = figures("02")  # lessons/figures/02/ (git-ignored); None without matplotlib
torch.set_printoptions(precision=4, sci_mode=False, linewidth=100)


print(f"quick mode: {MINIFT_QUICK}; data: {DATA}; device: {DEVICE}; work folder: {WORK}")

# %% [markdown]
# ## The data
#
# `task_files` knows where GLUE's tasks live in the data folder and which columns hold the text
# and the label; `read_examples` reads the TSV into `Example`s that remember their file and line,
# so that a bad row can be reported by where it is.

# %%
train_path, dev_path, text_col, pair_col, label_col = task_files("sst2", DATA)
columns = dict(text_col=text_col, pair_col=pair_col, label_col=label_col)
train_all = read_examples(train_path, **columns)
dev_all = read_examples(dev_path, **columns)
print(f"{train_path}: {len(train_all):,} examples; {dev_path}: {len(dev_all):,} examples")
for example in train_all[:3]:
    print(f"  {example.where}  label {example.label}  {example.text!r}")
print("train labels:", dict(sorted(Counter(e.label for e in train_all).items())))
print("dev labels:  ", dict(sorted(Counter(e.label for e in dev_all).items())))

# %% [markdown]
# The labels in the file are strings. `LabelVocab` gives them the ids the model predicts, built
# from the training set alone (numeric labels in numeric order, so "0" is id 0), and
# `encode_labels` maps a whole split, refusing a label the training set never had. `to_dict` is
# what goes into the saved `config.json`.
#
# A seeded random subset keeps the run short (the same subset `minift finetune --limit-train`
# takes with the same seed). SST-2's training set mixes whole sentences with short phrases cut
# from them; the dev set holds whole sentences only, which shows in the token lengths below.

# %%
vocab = LabelVocab.from_examples(train_all)
print(f"labels {vocab.labels}; {vocab.to_dict()}")
LABEL_NAMES = {"0": "negative", "1": "positive"}  # SST-2's meaning of its labels

train_examples = seeded_subset(train_all, NUM_TRAIN, SEED)  # lessons/common.py
dev_examples = seeded_subset(dev_all, NUM_DEV, SEED)  # NUM_DEV None: all of it
train_labels = encode_labels(train_examples, vocab)
dev_labels = encode_labels(dev_examples, vocab)
print(f"training on {len(train_examples)} examples, evaluating on {len(dev_examples)}")
print(f"first label ids: {train_labels[:12]}")

# %% [markdown]
# `ClassificationDataset` tokenizes a split once and keeps every example unpadded, so each one's
# length in tokens is known before any batch is built.

# %%
model_dir = resolve_model_dir("minilm")
tokenizer = Tokenizer.from_pretrained(model_dir)
train_set = ClassificationDataset(
    train_examples, tokenizer, max_length=MAX_LENGTH, label_ids=train_labels
)
dev_set = ClassificationDataset(
    dev_examples, tokenizer, max_length=MAX_LENGTH, label_ids=dev_labels
)
print(f"{train_examples[0].text!r}")
print("  tokens:", tokenizer.convert_ids_to_tokens(train_set.input_ids[0]))
print("  ids:   ", train_set.input_ids[0].tolist())


def length_summary(lengths: list[int]) -> str:
    ordered = sorted(lengths)
    return (
        f"min {ordered[0]}, median {ordered[len(ordered) // 2]}, max {ordered[-1]}, "
        f"{sum(n == MAX_LENGTH for n in lengths)} at the limit of {MAX_LENGTH}"
    )


print(f"train lengths in tokens: {length_summary(train_set.lengths)}")
print(f"dev lengths in tokens:   {length_summary(dev_set.lengths)}")

# %% [markdown]
# A batch is padded to its longest member ("dynamic padding"), and every pad token costs the same
# compute as a real one. Random batches put a short phrase beside a long sentence; padding every
# example to `max_length` is worse still. `length_grouped_batches` shuffles, cuts the shuffled
# order into large chunks (50 batches each by default), sorts each chunk by length, cuts it into
# batches and shuffles the batches: neighbours in a batch have similar lengths, and the order of
# training is still random. With `group_size_multiplier=1` each chunk is one batch: plain random
# batches. Counting the tokens each way on our training subset:

# %%
lengths = train_set.lengths


def tokens_computed(batches: list[list[int]]) -> int:
    return sum(len(batch) * max(lengths[i] for i in batch) for batch in batches)


random_batches = length_grouped_batches(
    lengths, BATCH_SIZE, generator=torch.Generator().manual_seed(SEED), group_size_multiplier=1
)
grouped_batches = length_grouped_batches(
    lengths, BATCH_SIZE, generator=torch.Generator().manual_seed(SEED)
)
real_tokens = sum(lengths)
padding_rows = []
for name, total in [
    (f"pad to max_length {MAX_LENGTH}", len(lengths) * MAX_LENGTH),
    ("random batches", tokens_computed(random_batches)),
    ("length-grouped batches", tokens_computed(grouped_batches)),
]:
    padding_rows.append(
        {"batches": name, "tokens computed": total, "padding share": 1 - real_tokens / total}
    )
print(f"{real_tokens:,} real tokens in {len(lengths)} examples, batch size {BATCH_SIZE}")
print(format_table(padding_rows, float_format=".3f"))
saving = 1 - tokens_computed(grouped_batches) / tokens_computed(random_batches)
print(f"grouping by length computes {saving:.1%} fewer tokens than random batches")
check(saving > 0, "length grouping did not reduce padding")

batch = train_set.batch(grouped_batches[0])
print("one batch:", {name: tuple(tensor.shape) for name, tensor in batch.items()})

# %% [markdown]
# ## The model
#
# `SequenceClassifier` is the encoder, dropout, and one linear layer that reads the pooled output
# (`tanh(dense(h_[CLS]))`, BERT's pooler: `pooling="pooler"`), exactly as transformers' `BertForSequenceClassification`,
# down to the parameter names. The encoder comes from the checkpoint; the checkpoint has no
# classifier, so the linear layer starts fresh: small random weights (normal, standard deviation
# `initializer_range`), zero bias. The seed makes that draw repeatable.
# Left to itself, `SequenceClassifier` reads what the checkpoint was trained for: all-MiniLM-L6-v2's
# sentence-transformers config says the mean of the token states (`pooling="mean"`), and its pooler
# was never trained. This lesson asks for the pooler because transformers has no other, and the
# end of the lesson checks transformers' logits against ours.

# %%
torch.manual_seed(SEED)  # the fresh head's initialisation
model = speed_up(SequenceClassifier.from_pretrained(
    model_dir, num_labels=len(vocab), id2label=dict(enumerate(vocab.labels)), pooling="pooler"
)).to(DEVICE)
print("dropout:", model.dropout, "  classifier:", model.classifier)


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


parts = [
    ("embeddings", model.bert.embeddings),
    (f"{len(model.bert.layers)} encoder blocks", model.bert.layers),
    ("pooler", model.bert.pooler),
    ("classifier", model.classifier),
    ("all", model),
]
print(format_table([{"part": name, "parameters": count(module)} for name, module in parts]))

# The head, by hand: the logits are the linear layer on the pooler output (dropout is off in eval).
# The pooler reads [CLS] alone, so the classifier asks the encoder to compute [CLS] alone in its
# last block (`first_token_only`: same numbers up to float rounding, less work).
model.eval()
with torch.no_grad():
    inputs = {k: v.to(DEVICE) for k, v in batch.items() if k != "labels"}
    pooled = model.bert(**inputs, first_token_only=True).pooler_output  # (batch, hidden)
    by_hand = model.classifier(pooled)  # (batch, labels)
    head_diff = (by_hand - model(**inputs).logits).abs().max().item()
print(
    f"pooled {tuple(pooled.shape)} -> logits {tuple(by_hand.shape)}; "
    f"by hand vs model(): max abs difference {head_diff:.1e}"
)
check(head_diff == 0.0, "the head by hand differs from the model")

# %% [markdown]
# To evaluate, `predict` runs the dev set in batches sorted by length (little padding, nothing
# shuffled) and puts each row of logits back at its example's place. Before any training the
# head is random, so the predictions say nothing about sentiment yet: the accuracy sits near the
# share of the most common label, and the predictions often fall mostly on one side.

# %%
POSITIVE = vocab.encode("1")


def predict(model: torch.nn.Module, dataset: ClassificationDataset) -> torch.Tensor:
    """Logits (examples, labels) for every example of `dataset`, in dataset order."""
    was_training = model.training
    model.eval()
    groups = length_grouped_batches(dataset.lengths, 64, generator=None, shuffle=False)
    logits = torch.empty(len(dataset), model.num_labels)
    with torch.no_grad():
        for indices in groups:
            inputs = {k: v.to(DEVICE) for k, v in dataset.batch(indices).items() if k != "labels"}
            logits[indices] = model(**inputs).logits.float().cpu()
    model.train(was_training)
    return logits


def scores(pred: list[int]) -> dict[str, float]:
    """Dev accuracy and F1 of the positive class (GLUE's F1 for SST-2's binary task)."""
    f1 = precision_recall_f1(dev_labels, pred, average="binary", pos_label=POSITIVE)["f1"]
    return {"accuracy": accuracy(dev_labels, pred), "f1": f1}


def dev_scores(model: torch.nn.Module) -> dict[str, float]:
    return scores(predict(model, dev_set).argmax(-1).tolist())


before_pred = predict(model, dev_set).argmax(-1).tolist()
before = scores(before_pred)
majority = max(Counter(dev_labels).values()) / len(dev_labels)
print(f"dev before training: accuracy {before['accuracy']:.4f}, F1 {before['f1']:.4f}")
print(f"the most common dev label makes up {majority:.4f} of the dev set")
print(f"predicted labels before training: {dict(sorted(Counter(before_pred).items()))}")

# %% [markdown]
# ## One step, by hand
#
# Training is this one step, repeated. Forward the batch and get the mean cross-entropy of the
# right label; backward, which leaves a gradient in every parameter's `.grad`; clip the gradient
# so that its global norm is at most 1 (one unlucky batch cannot throw the weights far); let
# AdamW update the parameters; and move the learning-rate schedule one step on.
#
# Weight decay (AdamW's pull of every weight towards zero) is not applied to everything:
# `param_groups` puts biases and LayerNorm parameters into a group without it, as BERT's recipe
# and transformers' Trainer do. Shrinking a LayerNorm's scale or a bias towards zero is not
# regularisation, just a distortion.

# %%
names = {id(p): name for name, p in model.named_parameters()}
groups = param_groups(model, WEIGHT_DECAY)
group_rows = []
for group in groups:
    group_names = [names[id(p)] for p in group["params"]]
    group_rows.append(
        {
            "weight decay": group["weight_decay"],
            "tensors": len(group["params"]),
            "parameters": sum(p.numel() for p in group["params"]),
            "for example": ", ".join(group_names[:2] + group_names[-1:]),
        }
    )
print(format_table(group_rows, float_format=".2f"))
check(sum(row["parameters"] for row in group_rows) == count(model), "a parameter has no group")

# %% [markdown]
# The schedule warms up linearly from zero, then decays linearly to zero at the last step
# (`lr_schedule` is the multiplier; `make_scheduler` applies it). To see both halves in a few
# rows, the demonstration below uses a schedule of three steps, on a copy of the model (the real
# run starts from the untouched weights).

# %%
DEMO_STEPS = 3
DEMO_WARMUP = math.ceil(0.1 * DEMO_STEPS)  # warmup_ratio 0.1, rounded up as transformers does
print(
    "multipliers of the demo schedule:",
    [
        lr_schedule(s, total_steps=DEMO_STEPS, warmup_steps=DEMO_WARMUP)
        for s in range(DEMO_STEPS + 1)
    ],
)

demo_batches = train_set.batches(BATCH_SIZE, generator=torch.Generator().manual_seed(SEED))
start_weights = copy.deepcopy(model.state_dict())
by_hand_model = copy.deepcopy(model).train()
optimizer = AdamW(param_groups(by_hand_model, WEIGHT_DECAY), lr=LR)  # the hand-written AdamW
scheduler = make_scheduler(optimizer, total_steps=DEMO_STEPS, warmup_steps=DEMO_WARMUP)
trainable = [p for p in by_hand_model.parameters() if p.requires_grad]
torch.manual_seed(SEED)  # dropout draws from the global generator; train() seeds it the same way

step_rows = []
for step, demo_batch in enumerate(demo_batches[:DEMO_STEPS], start=1):
    demo_batch = {k: v.to(DEVICE) for k, v in demo_batch.items()}
    head_before = by_hand_model.classifier.weight.detach().clone()
    lr = scheduler.get_last_lr()[0]  # the learning rate this step uses

    out = by_hand_model(**demo_batch)  # forward: logits (batch, labels), mean cross-entropy
    out.loss.backward()  # backward: a .grad for every trainable parameter
    grad_norm = torch.nn.utils.clip_grad_norm_(trainable, max_norm=1.0)  # the norm before clipping
    optimizer.step()  # AdamW: decay, moments, bias correction, update
    optimizer.zero_grad(set_to_none=True)
    scheduler.step()  # the next step's learning rate

    step_rows.append(
        {
            "step": step,
            "lr": lr,
            "loss": out.loss.item(),
            "grad norm": grad_norm.item(),
            "largest head change": (by_hand_model.classifier.weight - head_before)
            .abs()
            .max()
            .item(),
        }
    )
print(format_table(step_rows, float_format=".3e"))
print(f"the loss of a guess with no information, ln(2) = {math.log(2):.4f}")
check(
    step_rows[0]["lr"] == 0.0 and step_rows[0]["largest head change"] == 0.0,
    "the first warmup step should not move the weights",
)

# The loss by hand: the mean over the batch of -log softmax(logits)[gold label].
with torch.no_grad():
    by_hand_model.eval()
    out = by_hand_model(**demo_batch)
    log_probs = out.logits.log_softmax(dim=-1)  # (batch, labels)
    nll = -log_probs[torch.arange(len(demo_batch["labels"])), demo_batch["labels"]].mean()
print(f"cross-entropy by hand {nll.item():.6f} vs the model's loss {out.loss.item():.6f}")
check(abs(nll.item() - out.loss.item()) < 1e-6, "the cross-entropy by hand differs")

# %% [markdown]
# The warmup shows in the first row: its learning rate is zero, so the step computes gradients
# and moves nothing. (transformers' schedule does the same.) The next rows move the weights.
#
# `minift.core.loop.train` runs exactly this step in a loop, with the bookkeeping around it
# (evaluation, the best checkpoint, logging, resume). Given the same starting weights, the same
# batches, the same seed and the hand-written AdamW, it ends in the same place, to the bit:

# %%
loop_model = copy.deepcopy(model)
loop_model.load_state_dict(start_weights)
demo_config = TrainConfig(
    out_dir=WORK / "demo", max_steps=DEMO_STEPS, lr=LR, weight_decay=WEIGHT_DECAY,
    optimizer="hand", seed=SEED, progress=False,
)  # fmt: skip
train(loop_model, lambda epoch: demo_batches, demo_config, device=DEVICE)
loop_state, hand_state = loop_model.state_dict(), by_hand_model.state_dict()
loop_diff = max((loop_state[k] - hand_state[k]).abs().max().item() for k in hand_state)
print(
    f"train() vs the hand-written steps, after {DEMO_STEPS} steps: max abs difference {loop_diff}"
)
check(loop_diff == 0.0, "the training loop and the hand-written step disagree")
del by_hand_model, loop_model, optimizer, scheduler

# %% [markdown]
# ## The real run
#
# Now the loop, on the whole training subset for one epoch. The data order is a function of the
# epoch (`train_batches(epoch)` seeds its own generator), so a run can be repeated or resumed
# exactly. `evaluate` runs every `eval_every` steps (and at the end); whenever dev accuracy
# improves, the model is saved to `run/best`.

# %%
config = TrainConfig(
    out_dir=WORK / "run", epochs=1, lr=LR, weight_decay=WEIGHT_DECAY, warmup_ratio=0.1,
    eval_every=EVAL_EVERY, metric="accuracy", greater_is_better=True, seed=SEED,
    progress=False, log_every=5 if MINIFT_QUICK else 25,
)  # fmt: skip


def train_batches(epoch: int) -> list[dict[str, torch.Tensor]]:
    return train_set.batches(BATCH_SIZE, generator=torch.Generator().manual_seed(SEED + epoch))


result = train(model, train_batches, config, evaluate=dev_scores, device=DEVICE)
train_log = [r for r in result.history if "loss" in r]
eval_log = [{"step": r["step"], **r["eval"]} for r in result.history if "eval" in r]
print(format_table(train_log, ["step", "epoch", "loss", "lr", "examples_per_s"], ".3g"))
print(format_table(eval_log))
print(
    f"{result.steps} steps in {train_log[-1]['time']:.0f} s of training; "
    f"best dev accuracy {result.best_metric:.4f} at step {result.best_step}"
)

# %% [markdown]
# The same log as a picture (what `minift plot RUN` draws from a run's `log.jsonl`): the training
# loss, each point the mean over the steps since the previous record and the line a smoothed
# average, and the dev accuracy at each evaluation, starting from the untrained model's.

# %%
if FIGURES:
    fig, (ax_loss, ax_acc) = plots.figure(11, 4.2, ncols=2)
    plots.draw_loss(ax_loss, {"SST-2 run": train_log})
    dev_curve = [{"step": 0, "eval": before}] + [r for r in result.history if "eval" in r]
    plots.draw_metric(ax_acc, "accuracy", {"SST-2 dev": dev_curve})
    ax_acc.axhline(majority, color="grey", linestyle="--", label="always the majority label")
    ax_acc.legend()
    ax_acc.set_title("dev accuracy (step 0: before training)")
    FIGURES.save(fig, "loss_and_accuracy.png")

# %% [markdown]
# ## How good is it?
#
# Load the best checkpoint back and score it. Accuracy is the headline; F1 of the positive class
# is what GLUE's tables report beside it. The confusion matrix (rows: the gold label, columns:
# the prediction) tells the two kinds of mistake apart.

# %%
best = speed_up(SequenceClassifier.from_pretrained(WORK / "run" / "best")).to(DEVICE)
logits = predict(best, dev_set)
pred = logits.argmax(-1).tolist()
after = scores(pred)
print(
    format_table([{"": "before training", **before}, {"": f"after {result.steps} steps", **after}])
)
matrix = confusion_matrix(dev_labels, pred, labels=list(range(len(vocab))))
names_of = [f"{label} ({LABEL_NAMES[label]})" for label in vocab.labels]
print(
    format_table(
        [{"gold \\ predicted": names_of[i], **dict(zip(names_of, row, strict=True))}
         for i, row in enumerate(matrix)]
    )
)  # fmt: skip
check(after["accuracy"] == result.best_metric, "the reloaded best model scores differently")
check(after["accuracy"] > majority, "fine-tuning did not beat always answering the majority label")
if FIGURES:
    fig, ax = plots.figure(6, 5)
    plots.draw_confusion(ax, matrix, names_of, f"SST-2 dev confusion matrix ({len(pred)} "
                         f"sentences, accuracy {after['accuracy']:.3f})")
    FIGURES.save(fig, "confusion_matrix.png")

# %% [markdown]
# The mistakes the model was surest of are worth reading: negation, contrast ("but"), irony and
# reviews that praise one thing and pan another are where a sentence classifier trained on a few
# thousand examples usually slips, and a few gold labels are debatable.

# %%
probs = logits.softmax(-1)
wrong = [i for i, (g, p) in enumerate(zip(dev_labels, pred, strict=True)) if g != p]
wrong.sort(key=lambda i: -probs[i, pred[i]].item())
print(f"{len(wrong)} of {len(dev_labels)} dev sentences misclassified; the most confident:")
for i in wrong[:6]:
    gold, guess = vocab.decode(dev_labels[i]), vocab.decode(pred[i])
    print(
        f"  gold {LABEL_NAMES[gold]:<8} predicted {LABEL_NAMES[guess]:<8} "
        f"(p={probs[i, pred[i]]:.2f})  {dev_examples[i].text}"
    )

# %% [markdown]
# ## Saving, and loading in transformers
#
# `save_pretrained` writes the Hugging Face layout: `config.json` (with `architectures`,
# `id2label` and `label2id`) and `model.safetensors` with transformers' parameter names; the
# tokenizer's `save_pretrained` adds its files beside them. So the folder loads in
# `transformers.AutoModelForSequenceClassification`, and its logits should be ours up to float
# rounding.

# %%
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything here is local; never touch the network
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
import transformers  # noqa: E402  (reference libraries: only here, never in minift/)

transformers.utils.logging.disable_progress_bar()

saved = WORK / "sst2-minilm"
best.save_pretrained(saved)
tokenizer.save_pretrained(saved)
for path in sorted(saved.iterdir()):
    print(f"  {path.name:<26} {path.stat().st_size:>12,} bytes")

reference = transformers.AutoModelForSequenceClassification.from_pretrained(saved).to(DEVICE)
reference.eval()
print(f"transformers loaded {type(reference).__name__}, id2label {reference.config.id2label}")
worst = 0.0
with torch.no_grad():
    for indices in length_grouped_batches(dev_set.lengths, 64, generator=None, shuffle=False):
        inputs = {k: v.to(DEVICE) for k, v in dev_set.batch(indices).items() if k != "labels"}
        theirs = reference(**inputs).logits.float().cpu()
        worst = max(worst, (theirs - logits[indices]).abs().max().item())
print(
    f"logits, minift vs transformers on {len(dev_set)} dev sentences: "
    f"max abs difference {worst:.1e}"
)
check(worst < 1e-4, "the saved model gives other logits in transformers")

hf_tokenizer = transformers.AutoTokenizer.from_pretrained(saved)
texts = [example.text for example in dev_examples[:32]]
same_ids = hf_tokenizer(texts, padding=True)["input_ids"] == tokenizer(texts).input_ids.tolist()
print(f"the saved tokenizer gives the same token ids in transformers: {same_ids}")
check(same_ids, "the saved tokenizer gives other ids in transformers")

print(f"\nlesson ran in {time.perf_counter() - START:.1f} s")

# %%
shutil.rmtree(WORK)  # keep the saved folder instead if you want to use the model

# %% [markdown]
# ## What to try next
#
# - Change `LR` to `2e-5` and to `2e-4` and watch the evaluation table: too low learns slowly,
#   too high can fall apart in the first steps (the warmup is what keeps it from doing so).
# - Set `warmup_ratio=0.0`, or `schedule="constant"`, in the `TrainConfig`.
# - Put `weight_decay` on every parameter (`[{"params": model.parameters(), "weight_decay":
#   0.01}]`) and compare the LayerNorm weights after training.
# - all-MiniLM-L6-v2 was trained for mean pooling, not for the pooler: build the model with
#   `pooling="mean"` (the default for this checkpoint) and compare the accuracy.
# - Train on more of SST-2 (`NUM_TRAIN`) or for more epochs; or run the same recipe from the
#   command line: `minift finetune --task sst2 --limit-train 6400 --max-length 64 --epochs 1
#   --out runs/sst2`.
# - Sentence pairs go through the same classifier (`minift finetune --task mrpc`):
#   `benchmarks/claims_pairs.py` measures MRPC and RTE on their full training sets; MRPC
#   learns (about 9 points over always answering "paraphrase"), RTE stays at the majority
#   rate with this small encoder (see `benchmarks/results/claims_pairs.md`).
# - Lesson 03 freezes parts of the encoder and measures what that costs.
