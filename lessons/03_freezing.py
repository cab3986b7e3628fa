# %% [markdown]
# # Lesson 03: what to fine-tune: the head, the top blocks, or everything
#
# ## Why this matters
#
# Fine-tuning every weight of the encoder (lesson 02) is the strong default, but it is not the
# only kind of transfer learning. At the other end, the encoder is a frozen feature extractor and
# only the small classifier on top trains: each step skips the backward pass through the
# encoder and AdamW keeps state for a few hundred numbers instead of millions, one encoder can
# serve many tasks at once, and the pretrained weights cannot be damaged by a bad run. In
# between, the top few blocks train and the rest stay frozen. Which one to choose is a trade of
# accuracy against time and memory, and the trade depends on the model and the data, so it is
# worth measuring rather than guessing.
#
# This lesson trains the same classifier three ways (head only, the last two blocks, everything) on
# the same SST-2 subset, for the same number of steps, from the same seed, with
# `minift.core.freeze.freeze` choosing what trains; it is what
# `minift finetune --freeze head|last-2|none` does. It first shows why the fewer weights train, the
# higher the learning rate they need (the head alone far higher than full fine-tuning), and runs
# the partial setups at both rates to prove the point; then it prints the table: dev accuracy, F1,
# training time and the optimizer memory each setup needs.

# %%
import math
import shutil
import time

import torch
from common import DATA, MINIFT_QUICK, START, check, figures, sst2_datasets, work_folder

from minift.core.checkpoints import Checkpoints
from minift.core.freeze import freeze
from minift.core.loop import TrainConfig, train
from minift.core.metrics import accuracy, format_table, precision_recall_f1
from minift.core.optim import lr_schedule
from minift.data.batches import length_grouped_batches
from minift.fast.unpad import speed_up
from minift.hf.checkpoint import resolve_model_dir
from minift.run import plots
from minift.tasks.classify import SequenceClassifier

# MINIFT_QUICK=1 (what CI sets) shrinks the data and takes smaller batches (more steps, so that
# the higher rates still show their effect); the runs and the table are the same.
NUM_TRAIN = 512 if MINIFT_QUICK else 2000  # a seeded subset of SST-2's training sentences
NUM_DEV = 256 if MINIFT_QUICK else None  # None: the whole dev set
BATCH_SIZE = 16 if MINIFT_QUICK else 32  # quick: more, smaller steps on the same examples
MAX_LENGTH = 64
EPOCHS = 1
FINETUNE_LR = 5e-5  # BERT's fine-tuning default, for full fine-tuning
TOP_LR = 5e-4  # for the last two blocks (see below why)
HEAD_LR = 1e-2  # for the head alone
SEED = 0

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
WORK = work_folder("03")  # runs/lessons/03/ (git-ignored): emptied now, removed at the end
FIGURES = figures("03")  # lessons/figures/03/ (git-ignored); None without matplotlib


print(f"quick mode: {MINIFT_QUICK}; data: {DATA}; device: {DEVICE}")

# %% [markdown]
# ## The data
#
# As in lesson 02: SST-2 read with `read_examples`, labels from the training set, a seeded
# subset, tokenized once (`sst2_datasets` in `lessons/common.py` holds lesson 02's steps in one
# function); every run below sees the same batches in the same order.

# %%
model_dir = resolve_model_dir("minilm")
vocab, train_set, dev_set = sst2_datasets(model_dir, NUM_TRAIN, NUM_DEV, MAX_LENGTH, SEED)
dev_labels = dev_set.labels.tolist()
STEPS = len(train_set.batches(BATCH_SIZE, generator=torch.Generator().manual_seed(SEED))) * EPOCHS
print(
    f"{len(train_set)} training examples, {len(dev_set)} dev examples; batch size {BATCH_SIZE}, "
    f"{EPOCHS} epoch: {STEPS} optimizer steps for every setup"
)


def train_batches(epoch: int) -> list[dict[str, torch.Tensor]]:
    return train_set.batches(BATCH_SIZE, generator=torch.Generator().manual_seed(SEED + epoch))


POSITIVE = vocab.encode("1")


def dev_scores(model: torch.nn.Module) -> dict[str, float]:
    """Dev accuracy and F1 of the positive class, in batches sorted by length."""
    model.eval()
    gold, pred = [], []
    with torch.no_grad():
        for indices in length_grouped_batches(dev_set.lengths, 64, generator=None, shuffle=False):
            batch = {k: v.to(DEVICE) for k, v in dev_set.batch(indices).items()}
            pred += model(**batch).logits.argmax(-1).tolist()
            gold += batch["labels"].tolist()
    f1 = precision_recall_f1(gold, pred, average="binary", pos_label=POSITIVE)["f1"]
    return {"accuracy": accuracy(gold, pred), "f1": f1}


def new_model() -> SequenceClassifier:
    """The pretrained encoder with a fresh head; the seed makes every setup's head the same."""
    torch.manual_seed(SEED)
    return speed_up(SequenceClassifier.from_pretrained(  # BERT's pooler, which this lesson reads
        model_dir, num_labels=len(vocab), id2label=dict(enumerate(vocab.labels)), pooling="pooler"
    )).to(DEVICE)


# %% [markdown]
# ## What each setting trains
#
# `freeze(model, mode)` sets `requires_grad` on every parameter and returns the trainable and
# total counts. `"head"` leaves only the classifier; `"last-2"` adds the last two encoder blocks
# and the pooler (which sits between them and the classifier); `"none"` trains everything. A
# frozen parameter gets no gradient, so autograd does not even build the backward graph for the
# frozen bottom of the network, and the optimizer (`param_groups` takes trainable parameters
# only) keeps no state for it: AdamW holds two numbers per trainable parameter.

# %%
SETUPS = {"head": "head only", "last-2": "last 2 blocks", "none": "everything"}


def module_of(name: str) -> str:
    """The module a parameter belongs to: `bert.layers.4.ffn.up.weight` -> `bert.layers.4`."""
    parts = name.split(".")
    if parts[0] == "classifier":
        return "classifier"
    return ".".join(parts[:3] if parts[1] == "layers" else parts[:2])


probe = new_model()
freeze_rows = []
for mode, name in SETUPS.items():
    trainable, total = freeze(probe, mode)
    modules = sorted({module_of(n) for n, p in probe.named_parameters() if p.requires_grad})
    freeze_rows.append(
        {
            "freeze": mode,
            "trains": name,
            "trainable parameters": trainable,
            "share": trainable / total,
            "modules that train": ", ".join(modules) if mode != "none" else "all",
        }
    )
print(format_table(freeze_rows, float_format=".4%"))

# %% [markdown]
# ## Why fewer trainable weights need a higher learning rate
#
# AdamW divides each gradient by its own running size, so each step moves a weight by about the
# learning rate at most (exactly that when the gradient keeps its sign), whatever the scale of
# the gradient. Over a run, a weight can travel roughly the sum of the learning rates of all
# steps (warmup and decay included), and the logit a weight feeds can change by that travel
# times the size of its input.
#
# In full fine-tuning that budget is spread over millions of weights in every layer, and many
# small moves, compounded through the layers, move the features themselves towards what the
# classifier needs. The fewer layers train, the less of that there is. With a frozen encoder, the
# classifier's few hundred weights have to do all the work, on the pooled features as they are;
# and the pooled features of this checkpoint are small (it was trained with mean pooling, so
# nothing ever asked its pooler for large, telling activations). The cell below measures them on
# the training set and prints the largest change of a logit the head could make at each
# learning rate.
#
# A high learning rate is safe for the head alone: training it is logistic regression on fixed
# features, a convex problem with nothing pretrained to damage. The same rate on the whole
# encoder would wreck the weights that make it worth fine-tuning. The top two blocks sit in
# between, and so does the rate this lesson gives them.

# %%
probe.eval()
with torch.no_grad():
    pooled = torch.cat(
        [
            probe.bert(**{k: v.to(DEVICE) for k, v in batch.items() if k != "labels"}).pooler_output
            for batch in train_set.batches(64, generator=None, shuffle=False)
        ]
    )  # (examples, hidden)
feature_l1 = pooled.abs().sum(dim=1).mean().item()  # mean over examples of sum_i |x_i|
print(
    f"pooled features on {len(pooled)} training sentences: mean |x| "
    f"{pooled.abs().mean().item():.4f}, mean sum of |x| over the {pooled.shape[1]} features "
    f"{feature_l1:.2f}"
)
warmup = math.ceil(0.1 * STEPS)  # warmup_ratio 0.1, rounded up as the loop does
schedule_sum = sum(lr_schedule(s, total_steps=STEPS, warmup_steps=warmup) for s in range(STEPS))
for lr in (FINETUNE_LR, TOP_LR, HEAD_LR):
    travel = lr * schedule_sum
    print(
        f"lr {lr:g}: over {STEPS} steps a head weight moves at most about {travel:.3g}, so a "
        f"logit changes by at most about {travel * feature_l1:.3g}"
    )
del probe, pooled

# %% [markdown]
# At the fine-tuning rate the head cannot move the logits far from where its random start put
# them (near zero: both classes near 50%), so head-only training at that rate cannot learn
# much, however good the features. At the higher rate it can.
#
# ## The runs
#
# Five runs, each from the same pretrained weights and the same fresh head: the head alone and
# the last two blocks, each at the fine-tuning rate and at a rate of its own, then everything at
# the fine-tuning rate. Same batches, same steps, same seed. The training time is the loop's own
# clock at its last step (the evaluation after it is not included).

# %%
RUNS = [
    ("head", FINETUNE_LR),
    ("head", HEAD_LR),
    ("last-2", FINETUNE_LR),
    ("last-2", TOP_LR),
    ("none", FINETUNE_LR),
]

before = dev_scores(new_model())
print(f"dev before training (every setup starts here): {before}")


def run(mode: str, lr: float) -> dict:
    """Fine-tune with `freeze(model, mode)` at learning rate `lr`; one row of the table."""
    model = new_model()
    trainable, total = freeze(model, mode)
    head_start = model.classifier.weight.detach().clone()
    config = TrainConfig(
        out_dir=WORK / f"{mode}-{lr:g}", epochs=EPOCHS, lr=lr, metric="accuracy",
        greater_is_better=True, seed=SEED, progress=False,
    )  # fmt: skip
    result = train(model, train_batches, config, evaluate=dev_scores, device=DEVICE,
                   recorder=Checkpoints())
    seconds = [r for r in result.history if "loss" in r][-1]["time"]
    head_change = (model.classifier.weight.detach() - head_start).abs().max().item()
    shutil.rmtree(config.out_dir)  # the best model and resume checkpoint are not needed here
    return {
        "freeze": mode,
        "lr": lr,
        "trainable": trainable,
        "AdamW state (MB)": trainable * 2 * 4 / 1e6,  # two float32 moments per trainable weight
        "dev accuracy": result.last_eval["accuracy"],
        "dev F1": result.last_eval["f1"],
        "training s": seconds,
        "largest head change": head_change,
    }


rows = []
for mode, lr in RUNS:
    rows.append(run(mode, lr))
    print(f"  {mode} at lr {lr:g}: done, {rows[-1]['training s']:.1f} s")

# %% [markdown]
# ## The table

# %%
table = [{"freeze": "(no training)", "lr": None, "trainable": 0, "AdamW state (MB)": 0.0,
          "dev accuracy": before["accuracy"], "dev F1": before["f1"], "training s": 0.0,
          "largest head change": 0.0}] + rows  # fmt: skip
print(format_table(table, float_format=".4g"))

head_low, head_high, top_low, top_high, full = rows
print()
print(
    f"At the fine-tuning rate, the head alone moved its weights by at most "
    f"{head_low['largest head change']:.2g} and ended at dev accuracy "
    f"{head_low['dev accuracy']:.4f} (the untrained model: {before['accuracy']:.4f}); at lr "
    f"{HEAD_LR:g} it reached {head_high['dev accuracy']:.4f}."
)
print(
    f"The last two blocks reached {top_low['dev accuracy']:.4f} at the fine-tuning rate and "
    f"{top_high['dev accuracy']:.4f} at lr {TOP_LR:g}; full fine-tuning at the fine-tuning rate "
    f"reached {full['dev accuracy']:.4f}."
)
print(
    f"Full fine-tuning trained {full['trainable'] / head_high['trainable']:,.0f} times as many "
    f"parameters as the head alone and {full['trainable'] / top_high['trainable']:.1f} times as "
    f"many as the last two blocks; it took {full['training s'] / head_high['training s']:.1f} "
    f"and {full['training s'] / top_high['training s']:.1f} times as long as they did."
)

if FIGURES:
    fig, (ax_acc, ax_time) = plots.figure(11, 4.2, ncols=2, sharey=True)
    names = [f"{row['freeze']}\nlr {row['lr']:g}" for row in rows]
    colours = [{"head": "C0", "last-2": "C1", "none": "C2"}[row["freeze"]] for row in rows]
    ax_acc.barh(names, [row["dev accuracy"] for row in rows], color=colours)
    for y, row in enumerate(rows):
        ax_acc.text(row["dev accuracy"] + 0.01, y, f"{row['dev accuracy']:.3f}", va="center")
    ax_acc.axvline(before["accuracy"], color="black", linestyle="--", label="before training")
    majority = max(dev_labels.count(k) for k in set(dev_labels)) / len(dev_labels)
    ax_acc.axvline(majority, color="grey", linestyle=":", label="always the majority label")
    ax_acc.set_xlim(0, 1)
    ax_acc.set_xlabel(f"dev accuracy ({len(dev_set)} sentences, 0-1)")
    ax_acc.set_title("Accuracy per freezing choice")
    ax_acc.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), ncols=2)
    ax_acc.invert_yaxis()
    ax_time.barh(names, [row["training s"] for row in rows], color=colours)
    ax_time.set_xlabel(f"training time, {STEPS} steps (s, this machine)")
    ax_time.set_title("Training time per freezing choice")
    FIGURES.save(fig, "freezing.png")

# Only the parameters freeze() left trainable change, and the head trains in every setup.
check(all(row["largest head change"] > 0 for row in rows), "a head did not train")
# The lesson's conclusions, in quick mode too (fewer steps, the same conclusions). MARGIN: a gap
# the prose calls a difference (0.02 accuracy: 5 of quick mode's 256 dev sentences, 17 of 872).
MARGIN = 0.02
check(head_low["largest head change"] < head_high["largest head change"] / 20,
      "at the fine-tuning rate the head moved as far as at its own rate")
check(head_high["dev accuracy"] > head_low["dev accuracy"] + MARGIN,
      "a higher head lr did not help")
check(top_high["dev accuracy"] > top_low["dev accuracy"] + MARGIN, "a higher top lr did not help")
check(full["dev accuracy"] > max(head_low["dev accuracy"], top_low["dev accuracy"]),
      "at the fine-tuning rate, a frozen setup beat full fine-tuning")
check(top_high["dev accuracy"] > max(full["dev accuracy"], head_high["dev accuracy"]),
      "the last two blocks at their rate did not beat the head alone and full fine-tuning")
if not MINIFT_QUICK:  # a clock comparison: left out of CI's short, shared-machine runs
    check(top_high["training s"] < full["training s"], "the last two blocks were not faster")

shutil.rmtree(WORK)
print(f"\nlesson ran in {time.perf_counter() - START:.1f} s")

# %% [markdown]
# ## What the table says
#
# Read the table from the top. At the fine-tuning rate, the head alone barely leaves its starting
# point, as the bound above predicted: its weights move a small fraction of what they move at a
# rate of its own (a check under the table holds it below a twentieth). In this short budget the
# last two blocks do not get much further at that rate: only full fine-tuning learns clearly at
# it, because only there do enough weights move. The learning rate, not the frozen encoder, is
# what held the partial setups back.
#
# At rates of their own, both partial setups do better. The head alone is the cheapest setup (no
# backward pass through the encoder, almost no optimizer memory), and it learns slowly: the pooled
# features of a frozen encoder that was never trained to expose sentiment through its pooler only
# go so far in so few steps. The last two blocks let the features themselves adapt, and at their
# higher rate they beat both the head alone and full fine-tuning at BERT's default rate, in a
# fraction of its time and optimizer memory. That says less about freezing than about learning
# rates: full fine-tuning at the default rate is under-trained after so few steps. The checks
# under the table hold each of these sentences, in quick mode too; the printed sentences put
# numbers on them. (Where the head alone lands against full fine-tuning depends on the budget:
# behind it at full size, ahead of it in quick mode's smaller, more frequent steps; the lesson
# does not rank those two.)
#
# ## Each setting at its own rate, at full size
#
# One seed and hand-picked rates cannot rank the settings. `benchmarks/claims_freezing.py` does it
# properly: the head alone and the last 1, 2, 3 and all 6 blocks, each with a small learning-rate
# sweep scored on a held-out slice of SST-2's training set (not the dev set), then five seeds at
# the chosen rate scored on all 872 dev sentences; 2,000 training sentences and one epoch a run,
# as here. Its results, in `benchmarks/results/claims_freezing.md` (mean ± std over the five
# seeds, dev accuracy in points): the head alone 62.96 ± 2.85 at lr 0.09, the last block
# 78.69 ± 0.95 at 3e-3, the last two 80.87 ± 1.10 at 1e-3, the last three 80.89 ± 0.80 at 3e-4,
# all six 79.89 ± 1.13 at 1e-4. Paired by seed against all six, the last two and three blocks
# are about a point ahead (+0.99 ± 0.47 and +1.01 ± 0.33, ± the standard error), the last block
# about a point behind (-1.19 ± 0.63), the head alone 17 behind (-16.93 ± 0.86). The fewer blocks
# train, the higher the rate the held-out sweep chose, from 1e-4 for everything to 0.09 for the
# head alone: this lesson's point, measured. AdamW's state is 6 kB for the head, 30 MB for the
# last two blocks, 182 MB for everything; the last two blocks train in about half the time of
# all six (the median seconds a run are in the result file, beside the CPU that measured them).
#
# The ranking is not a law. Give full fine-tuning a higher rate or more steps and the order of
# the top two can turn; with far more data, the gap between the top blocks and everything tends to
# close; with an encoder whose pooled features already separate the classes (one trained with a
# classification objective), the head alone comes much closer.
#
# ## What to try next
#
# - Add `("none", 2e-4)` to `RUNS`: is full fine-tuning still behind the last two blocks when
#   it gets a higher rate too?
# - Add `("last-4", TOP_LR)` and `("last-1", TOP_LR)`: where does the accuracy stop growing?
# - Give the head-only run more steps (`EPOCHS = 5`): it is cheap, and it is far from done.
# - Try `HEAD_LR` at `1e-3` and `1e-1`, and `TOP_LR` at `2e-3`: the fewer weights train, the
#   higher the learning rate they tolerate, up to a point.
# - Swap the pooler for mean pooling (what all-MiniLM-L6-v2 was trained with, and the default
#   for it): `pooling="mean"` in `new_model`, and rerun the head-only row.
# - From the command line: `minift finetune --task sst2 --limit-train 2000 --max-length 64
#   --epochs 1 --freeze last-2 --lr 5e-4 --out runs/last2`. `--head-lr 1e-2` gives the
#   classifier a rate of its own beside the blocks' `--lr` (`TrainConfig.lr_by_prefix`, one
#   more pair of AdamW parameter groups: `minift.core.optim.param_groups`).
