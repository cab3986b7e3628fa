# %% [markdown]
# # Lesson 02: fine-tuning a sentiment classifier, step by step
#
# ## Why this matters
#
# A pretrained encoder knows a great deal about language and nothing about your labels. Fine-tuning
# puts one small linear layer on top of it and trains the whole stack, end to end, on a few
# thousand labelled sentences: a cheap recipe that has stayed the strong baseline for sentence
# classification since BERT. It is also a recipe with many quiet knobs (which parameters get
# weight decay, how the learning rate warms up and decays, how gradients are clipped, when to
# stop), and every training framework hides them behind one `trainer.train()`. When the result is
# worse than expected, the knobs are where the answer is; and when it is better than expected,
# the first question is whether the number was measured on data that helped to choose it.
#
# This lesson fine-tunes all-MiniLM-L6-v2 on SST-2 (movie-review sentences labelled positive or
# negative) with minift's pieces, one at a time: the data, split three ways (train, a
# validation set held out of the training file, and SST-2's dev file kept aside as the test
# set); the classifier and its score before training; one optimizer step written out by hand
# and held equal to the training loop; the loop itself, trained for long enough to overfit, with
# the validation loss watched and early stopping choosing the model; the test score of that
# model, measured once, with its confusion matrix and mistakes; and the saved folder loaded by
# `transformers.AutoModelForSequenceClassification`, with the same logits.

# %%
import copy
import math
import os
import shutil
import time
from collections import Counter

import torch
import torch.nn.functional as F
from common import DATA, MINIFT_QUICK, START, check, figures, work_folder

from minift.core.checkpoints import Checkpoints
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
from minift.run.recipes.prepare import dev_from_train
from minift.tasks.classify import ClassificationDataset, SequenceClassifier

# MINIFT_QUICK=1 (what CI sets) validates on 200 sentences; the full run on 1,000 (a smoother
# validation curve, a surer choice of step). Both train on 256 sentences (the more sentences,
# the more epochs it takes to overfit them) and test on all of dev.tsv.
NUM_TRAIN = 256  # training sentences, drawn from train.tsv
NUM_VAL = 200 if MINIFT_QUICK else 1000  # validation sentences, held out of train.tsv
BATCH_SIZE = 16  # NUM_TRAIN / BATCH_SIZE optimizer steps in one epoch
EPOCHS = 6  # far more than a training set this small needs: on purpose, to see it overfit
EVAL_EVERY = 8  # optimizer steps between evaluations
PATIENCE = 4  # evaluations without a lower validation loss before training stops
MAX_LENGTH = 64  # tokens; SST-2 sentences are short
# BERT's fine-tuning default is 5e-5; a run this short learns faster at a higher rate.
LR = 1e-4
WEIGHT_DECAY = 0.01
SEED = 0  # the classifier's initialisation, dropout, the data order and the validation split

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
WORK = work_folder("02")  # runs/lessons/02/ (git-ignored): emptied now, removed at the end
FIGURES = figures("02")  # lessons/figures/02/ (git-ignored); None without matplotlib
torch.set_printoptions(precision=4, sci_mode=False, linewidth=100)


print(f"quick mode: {MINIFT_QUICK}; data: {DATA}; device: {DEVICE}; work folder: {WORK}")

# %% [markdown]
# ## The data, in three parts
#
# `task_files` knows where GLUE's tasks live in the data folder and which columns hold the text
# and the label; `read_examples` reads the TSV into `Example`s that remember their file and line,
# so that a bad row can be reported by where it is.

# %%
train_path, dev_path, text_col, pair_col, label_col = task_files("sst2", DATA)
columns = dict(text_col=text_col, pair_col=pair_col, label_col=label_col)
train_all = read_examples(train_path, **columns)
test_examples = read_examples(dev_path, **columns)  # SST-2's dev.tsv: our test set, see below
print(f"{train_path}: {len(train_all):,} examples; {dev_path}: {len(test_examples):,} examples")
for example in train_all[:3]:
    print(f"  {example.where}  label {example.label}  {example.text!r}")
print("train.tsv labels:", dict(sorted(Counter(e.label for e in train_all).items())))
print("dev.tsv labels:  ", dict(sorted(Counter(e.label for e in test_examples).items())))

# %% [markdown]
# A run makes choices by looking at held-out data: when to stop, which checkpoint to keep (and,
# in lesson 10, which learning rate). Whatever data those choices are made on stops being
# held out: the model that scored best on it was picked *because* it scored best there, luck
# included, so its score there is biased upwards (lesson 10 measures this winner's curse). An
# honest number needs data that played no part in any choice. SST-2's test labels are not
# public, so the labelled dev.tsv becomes our test set, read once at the very end, and the
# choices are made on a validation set held out of train.tsv.
#
# `dev_from_train` draws that split with its own seed: `NUM_VAL` examples for validation and
# `NUM_TRAIN` of the others to train on, the split `minift finetune --dev-from-train NUM_VAL
# --limit-train NUM_TRAIN` takes. The labels in the file are strings; `LabelVocab` gives them
# the ids the model predicts (numeric labels in numeric order, so "0" is id 0), and
# `encode_labels` maps a whole split, refusing a label the training file never had.

# %%
train_examples, val_examples = dev_from_train(train_all, NUM_VAL, NUM_TRAIN, SEED, str(train_path))
vocab = LabelVocab.from_examples(train_all)
print(f"labels {vocab.labels}; {vocab.to_dict()}")
LABEL_NAMES = {"0": "negative", "1": "positive"}  # SST-2's meaning of its labels
train_labels, val_labels, test_labels = (
    encode_labels(examples, vocab) for examples in (train_examples, val_examples, test_examples)
)
print(f"train {len(train_examples)}, validation {len(val_examples)} (both from train.tsv), "
      f"test {len(test_examples)} (dev.tsv)")
print(f"first label ids: {train_labels[:12]}")
check(not {e.where for e in train_examples} & {e.where for e in val_examples},
      "a validation example is also a training example")

# %% [markdown]
# `ClassificationDataset` tokenizes a split once and keeps every example unpadded, so each one's
# length in tokens is known before any batch is built; the training batches group similar
# lengths together (`length_grouped_batches`), which saves most of the padding (lesson 07
# counts it). SST-2's train.tsv mixes whole sentences with short phrases cut from them, while
# dev.tsv holds whole sentences only, which shows in the lengths: the validation set, drawn
# from train.tsv, is not distributed like the test set.

# %%
model_dir = resolve_model_dir("minilm")
tokenizer = Tokenizer.from_pretrained(model_dir)
train_set, val_set, test_set = (
    ClassificationDataset(examples, tokenizer, max_length=MAX_LENGTH, label_ids=labels)
    for examples, labels in ((train_examples, train_labels), (val_examples, val_labels),
                             (test_examples, test_labels))
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


for name, dataset in (("train", train_set), ("validation", val_set), ("test", test_set)):
    print(f"{name + ' lengths in tokens:':<30}{length_summary(dataset.lengths)}")
val_median, test_median = (sorted(d.lengths)[len(d) // 2] for d in (val_set, test_set))
check(test_median > 1.5 * val_median, "the test sentences are not longer than the validation ones")
batch = train_set.batch(train_set.batch_indices(BATCH_SIZE, generator=None, shuffle=False)[0])
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
# To evaluate, `predict` runs a split in batches sorted by length (little padding, nothing
# shuffled) and puts each row of logits back at its example's place. Two numbers come from the
# logits: the accuracy, and the loss the model trains on (the mean cross-entropy of the right
# label), which is the one to watch for overfitting: it sees the confidence of every prediction,
# where the accuracy sees only which side of 0.5 it falls on. Before any training the head is
# random, so the predictions say nothing about sentiment yet: the accuracy sits near the share
# of the most common label, and the loss near ln(2), a coin's.

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


def scores(logits: torch.Tensor, labels: list[int]) -> dict[str, float]:
    """Mean cross-entropy, accuracy and F1 of the positive class (GLUE's F1 for SST-2)."""
    pred = logits.argmax(-1).tolist()
    f1 = precision_recall_f1(labels, pred, average="binary", pos_label=POSITIVE)["f1"]
    loss = F.cross_entropy(logits, torch.tensor(labels)).item()
    return {"loss": loss, "accuracy": accuracy(labels, pred), "f1": f1}


def validate(model: torch.nn.Module) -> dict[str, float]:
    """What the training loop calls at each evaluation: the scores on the validation set."""
    return scores(predict(model, val_set), val_labels)


before_logits = predict(model, val_set)
before = scores(before_logits, val_labels)
val_majority = max(Counter(val_labels).values()) / len(val_labels)
print(f"validation before training: loss {before['loss']:.4f} (ln 2 = {math.log(2):.4f}), "
      f"accuracy {before['accuracy']:.4f}, F1 {before['f1']:.4f}")
print(f"the most common label makes up {val_majority:.4f} of the validation set")
print("predicted labels before training:",
      dict(sorted(Counter(before_logits.argmax(-1).tolist()).items())))

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
# (evaluation, the best checkpoint, early stopping, logging, resume). Given the same starting
# weights, the same batches, the same seed and the hand-written AdamW, it ends in the same place,
# to the bit:

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
# ## The real run: overfitting, watched
#
# Now the loop, on the whole training set, for `EPOCHS` epochs: far more than a few hundred
# sentences need, so that the model can learn them by heart. The data order is a function of
# the epoch (`train_batches(epoch)` seeds its own generator), so a run can be repeated or
# resumed exactly. Every `eval_every` steps the loop calls `validate`; whenever the validation
# loss (`metric`, lower is better) reaches a new low, it saves the model to `run/best`; and
# after `patience` evaluations in a row without a new low it stops: early stopping. Training
# loss is logged at every step (`log_every=1`); the table puts beside each evaluation the mean
# training loss of the steps since the previous one (measured with dropout on, as the model
# trained).

# %%
config = TrainConfig(
    out_dir=WORK / "run", epochs=EPOCHS, lr=LR, weight_decay=WEIGHT_DECAY, warmup_ratio=0.1,
    eval_every=EVAL_EVERY, metric="loss", greater_is_better=False, patience=PATIENCE, seed=SEED,
    progress=False, log_every=1,
)  # fmt: skip
planned_steps = EPOCHS * math.ceil(len(train_set) / BATCH_SIZE)


def train_batches(epoch: int) -> list[dict[str, torch.Tensor]]:
    return train_set.batches(BATCH_SIZE, generator=torch.Generator().manual_seed(SEED + epoch))


result = train(model, train_batches, config, evaluate=validate, device=DEVICE,
               recorder=Checkpoints())  # the files: log.jsonl, best/, resume.pt
step_losses = {r["step"]: r["loss"] for r in result.history if "loss" in r}
curve, previous = [], 0
for record in (r for r in result.history if "eval" in r):
    window = [loss for step, loss in step_losses.items() if previous < step <= record["step"]]
    previous = record["step"]
    curve.append({"step": record["step"], "epoch": record["step"] * BATCH_SIZE / len(train_set),
                  "train loss": sum(window) / len(window),
                  "validation loss": record["eval"]["loss"],
                  "validation accuracy": record["eval"]["accuracy"]})
print(format_table(curve, float_format=".3f"))
chosen = next(row for row in curve if row["step"] == result.best_step)
last = curve[-1]
print(f"lowest validation loss {result.best_metric:.4f} at step {result.best_step}; stopped at "
      f"step {result.steps} of the {planned_steps} planned (stopped early: {result.stopped_early})")
print(f"from step {chosen['step']} to step {last['step']}: training loss {chosen['train loss']:.3f}"
      f" -> {last['train loss']:.3f}, validation loss {chosen['validation loss']:.3f} -> "
      f"{last['validation loss']:.3f}")
check(result.best_metric < before["loss"] - 0.1 and chosen["train loss"] < curve[0]["train loss"],
      "the two losses did not fall together before the chosen step")
check(result.stopped_early and result.steps < planned_steps, "early stopping did not stop the run")
check(result.steps == result.best_step + PATIENCE * EVAL_EVERY,
      "the run did not stop `patience` evaluations after its lowest validation loss")
check(last["train loss"] < 0.5 * chosen["train loss"],
      "the training loss did not keep falling after the chosen step")
check(max(row["validation loss"] for row in curve if row["step"] > result.best_step)
      > 1.1 * result.best_metric, "the validation loss did not turn up after its lowest point")

# %% [markdown]
# Read the table from the top. At first both losses fall together: the model learns what
# sentiment looks like, and that carries over to sentences it has never seen. Then they part:
# the training loss keeps falling (a model with 22 million parameters can learn a few hundred
# sentences by heart) while the validation loss turns up. That is overfitting. Watch the loss
# rather than the accuracy: a model that grows certain of its answers pays for every confident
# mistake in the loss, while the accuracy only counts which side of 0.5 a prediction lands on.
# Early stopping keeps the checkpoint of the lowest validation loss and, after `PATIENCE`
# evaluations without a new low, stops the run before its planned steps.
#
# The picture: both losses per evaluation with the chosen step marked, and the validation
# accuracy beside them with the test score of the chosen model (next section).

# %%
best = speed_up(SequenceClassifier.from_pretrained(WORK / "run" / "best")).to(DEVICE)
reloaded = validate(best)
print(f"the saved best model, reloaded: validation loss {reloaded['loss']:.6f} "
      f"(the loop recorded {result.best_metric:.6f} at step {result.best_step})")
check(abs(reloaded["loss"] - result.best_metric) < 1e-6,
      "the reloaded best model scores differently")

# %% [markdown]
# ## The test score, measured once
#
# Only now, with the model chosen and nothing left to decide, does the test set come out: SST-2's
# dev.tsv, scored once by the chosen model. Accuracy is the headline; F1 of the positive class
# is what GLUE's tables report beside it. The confusion matrix (rows: the gold label, columns:
# the prediction) tells the two kinds of mistake apart. The validation accuracy of the same model
# is printed beside it, but it is not the number to report: the step was chosen on the
# validation set, and its sentences are drawn from train.tsv's phrases, not from whole reviews
# like the test set's.

# %%
test_logits = predict(best, test_set)  # the one and only use of the test set
pred = test_logits.argmax(-1).tolist()
test = scores(test_logits, test_labels)
test_majority = max(Counter(test_labels).values()) / len(test_labels)
print(format_table([
    {"": "validation, before training", **before},
    {"": f"validation, chosen (step {result.best_step})", **reloaded},
    {"": f"test (dev.tsv, {len(test_set)} sentences), chosen", **test},
], float_format=".4f"))  # fmt: skip
print(f"test accuracy {test['accuracy']:.4f}; always answering the most common label: "
      f"{test_majority:.4f}")
matrix = confusion_matrix(test_labels, pred, labels=list(range(len(vocab))))
names_of = [f"{label} ({LABEL_NAMES[label]})" for label in vocab.labels]
print(
    format_table(
        [{"gold \\ predicted": names_of[i], **dict(zip(names_of, row, strict=True))}
         for i, row in enumerate(matrix)]
    )
)  # fmt: skip
check(test["accuracy"] > test_majority + 0.1,
      "fine-tuning did not beat always answering the majority label by 10 points on test")

if FIGURES:
    fig, (ax_loss, ax_acc) = plots.figure(11, 4.2, ncols=2)
    steps = [row["step"] for row in curve]
    ax_loss.plot(steps, [row["train loss"] for row in curve], "o-", label="training loss "
                 "(mean since the last evaluation)")
    ax_loss.plot(steps, [row["validation loss"] for row in curve], "o-",
                 label="validation loss")
    for ax in (ax_loss, ax_acc):
        labelled = ax is ax_loss  # the markers are named once, in the left legend
        ax.axvline(result.best_step, color="black", linestyle="--", label=f"chosen: lowest "
                   f"validation loss (step {result.best_step})" if labelled else None)
        ax.axvline(result.steps, color="grey", linestyle=":", label=f"stopped: {PATIENCE} "
                   "evaluations without a new low" if labelled else None)
        ax.axvspan(result.steps, planned_steps, color="grey", alpha=0.12,
                   label="planned steps not run" if labelled else None)
        ax.set_xlim(0, planned_steps)
        ax.set_xlabel(f"optimizer step ({planned_steps} planned, {EPOCHS} epochs)")
    ax_loss.set(title="SST-2: the losses part as the model overfits", ylabel="cross-entropy")
    highest = max(max(row["train loss"], row["validation loss"]) for row in curve)
    ax_loss.set_ylim(0, 1.5 * highest)  # room for the legend above the curves
    ax_loss.legend(fontsize=8, loc="upper right")
    ax_acc.plot(steps, [row["validation accuracy"] for row in curve], "o-", color="C1",
                label="validation accuracy")
    ax_acc.plot([result.best_step], [test["accuracy"]], "*", color="C3", markersize=15,
                label=f"test accuracy of the chosen model, measured once ({test['accuracy']:.3f})")
    ax_acc.axhline(test_majority, color="C3", alpha=0.5, label="test: always the majority label")
    ax_acc.set(title="accuracy (validation: train.tsv phrases; test: dev.tsv)", ylabel="accuracy")
    ax_acc.legend(fontsize=8, loc="lower right")
    FIGURES.save(fig, "loss_curves.png")

    fig, ax = plots.figure(6, 5)
    plots.draw_confusion(ax, matrix, names_of, f"SST-2 test (dev.tsv) confusion matrix "
                         f"({len(pred)} sentences, accuracy {test['accuracy']:.3f})")
    FIGURES.save(fig, "confusion_matrix.png")

# %% [markdown]
# The mistakes the model was surest of are worth reading: negation, contrast ("but"), irony and
# reviews that praise one thing and pan another are where a sentence classifier trained on a few
# hundred examples usually slips, and a few gold labels are debatable.

# %%
probs = test_logits.softmax(-1)
wrong = [i for i, (g, p) in enumerate(zip(test_labels, pred, strict=True)) if g != p]
wrong.sort(key=lambda i: -probs[i, pred[i]].item())
print(f"{len(wrong)} of {len(test_labels)} test sentences misclassified; the most confident:")
for i in wrong[:6]:
    gold, guess = vocab.decode(test_labels[i]), vocab.decode(pred[i])
    print(
        f"  gold {LABEL_NAMES[gold]:<8} predicted {LABEL_NAMES[guess]:<8} "
        f"(p={probs[i, pred[i]]:.2f})  {test_examples[i].text}"
    )

# %% [markdown]
# ## Saving, and loading in transformers
#
# `save_pretrained` writes the Hugging Face layout: `config.json` (with `architectures`,
# `id2label` and `label2id`) and `model.safetensors` with transformers' parameter names; the
# tokenizer's `save_pretrained` adds its files beside them. So the folder loads in
# `transformers.AutoModelForSequenceClassification`, and its logits should be ours up to float
# rounding (compared on the validation sentences).

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
ours = predict(best, val_set)
worst = 0.0
with torch.no_grad():
    for indices in length_grouped_batches(val_set.lengths, 64, generator=None, shuffle=False):
        inputs = {k: v.to(DEVICE) for k, v in val_set.batch(indices).items() if k != "labels"}
        theirs = reference(**inputs).logits.float().cpu()
        worst = max(worst, (theirs - ours[indices]).abs().max().item())
print(
    f"logits, minift vs transformers on {len(val_set)} validation sentences: "
    f"max abs difference {worst:.1e}"
)
check(worst < 1e-4, "the saved model gives other logits in transformers")

hf_tokenizer = transformers.AutoTokenizer.from_pretrained(saved)
texts = [example.text for example in val_examples[:32]]
same_ids = hf_tokenizer(texts, padding=True)["input_ids"] == tokenizer(texts).input_ids.tolist()
print(f"the saved tokenizer gives the same token ids in transformers: {same_ids}")
check(same_ids, "the saved tokenizer gives other ids in transformers")

print(f"\nlesson ran in {time.perf_counter() - START:.1f} s")

# %%
shutil.rmtree(WORK)  # keep the saved folder instead if you want to use the model

# %% [markdown]
# ## What to try next
#
# - Set `PATIENCE = 1`, or evaluate less often (`EVAL_EVERY`), and see where the run stops
#   against the lowest point of the validation curve.
# - Choose on accuracy instead (`metric="accuracy", greater_is_better=True`, what `minift
#   finetune` does): the accuracy curve is flatter and noisier than the loss, so the chosen step
#   moves.
# - Change `LR` to `2e-5` and to `1e-3` and watch the curves: too low learns slowly and
#   overfits late, too high can fall apart in the first steps (the warmup is what keeps it from
#   doing so).
# - Train on more of SST-2 (`NUM_TRAIN`): the gap between the two losses opens later.
# - The same recipe from the command line, with the test file scored once by the best model:
#   `minift finetune --task sst2 --dev-from-train 200 --limit-train 256 --epochs 6 --lr 1e-4
#   --batch-size 16 --eval-every 8 --patience 3 --test $MINIFT_DATA/sst2/dev.tsv --out
#   runs/sst2`.
# - Put `weight_decay` on every parameter (`[{"params": model.parameters(), "weight_decay":
#   0.01}]`) and compare the LayerNorm weights after training.
# - all-MiniLM-L6-v2 was trained for mean pooling, not for the pooler: build the model with
#   `pooling="mean"` (the default for this checkpoint) and compare the accuracy.
# - Sentence pairs go through the same classifier (`minift finetune --task mrpc`):
#   `benchmarks/claims_pairs.py` measures MRPC and RTE on their full training sets.
# - Lesson 03 freezes parts of the encoder and measures what that costs.
