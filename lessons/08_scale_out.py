# %% [markdown]
# # Lesson 08: scaling out: data parallelism with torchrun and DDP, and activation checkpointing
#
# ## Why this matters
#
# A fine-tuning step is a forward and a backward pass over a batch, then an optimizer update.
# Data parallelism runs the same model in N processes (N GPUs, or N machines), gives each one a
# different shard of the global batch, and before the update averages their gradients with an
# all-reduce, so every process applies the same update to the same weights and they never drift
# apart. Each process does 1/N of the arithmetic, and the run takes the same steps as one process
# with the whole batch would: same batches, same gradients, same weights. It is the first thing to
# reach for when one device is too slow, because it changes nothing about the model and very
# little about the loop. When one device is too small instead, activation checkpointing trades
# compute for memory: it keeps less for the backward pass and recomputes the rest.
#
# minift does not build its own engine for this. Starting N processes, telling each who it is,
# letting them find each other (on one machine or many), overlapping the gradient all-reduce with
# the backward pass in buckets, and stopping the whole job when one process dies are solved, tested
# problems in PyTorch: `torchrun` and `DistributedDataParallel` (DDP). A home-made loop of
# all-reduces would have to solve them again, and the failure cases are where home-made versions
# go wrong: a dead process leaves the others waiting forever. What minift adds is small and lives in
# `minift/core/ddp.py` and the "Data parallel" part of `minift/core/loop.py`: how a global batch is
# split, how each shard's loss is weighted so N processes equal one, and that only rank 0 writes.
# This lesson shows that code on real SST-2 batches, runs `minift finetune` under torchrun with 2
# processes and with 1, compares the saved weights, and then measures what activation
# checkpointing saves on the real MiniLM classifier.

# %%
import contextlib
import inspect
import io
import json
import math
import os
import random
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from common import DATA, MINIFT_QUICK, REPO, START, check, figures, work_folder

import minift.core.checkpoints
import minift.core.loop
import minift.core.resume
import minift.run.recipes
from minift.core import ddp as distributed
from minift.core.labels import LabelVocab
from minift.core.metrics import format_table
from minift.core.model import set_activation_checkpointing
from minift.data.readers import encode_labels, read_examples, task_files
from minift.data.tokenizer import Tokenizer
from minift.fast.unpad import speed_up
from minift.hf.checkpoint import resolve_model_dir
from minift.hf.safetensors import read_safetensors
from minift.run import plots
from minift.tasks.classify import ClassificationDataset, SequenceClassifier

# MINIFT_QUICK=1 (what CI sets) shrinks the data, the training steps and the repeats; the
# lesson's cells are the same.
NUM_TRAIN = 64 if MINIFT_QUICK else 1000  # --limit-train: a seeded subset of SST-2's train set
NUM_DEV = 64 if MINIFT_QUICK else None  # dev examples scored (None: the whole dev set)
MAX_STEPS = 4 if MINIFT_QUICK else 60  # optimizer steps of every run
BATCH_SIZE = 16  # the GLOBAL batch: each of N processes gets BATCH_SIZE / N rows
MAX_LENGTH = 32
LR = 1e-4
SEED = 0
NPROC = 2  # processes of the data-parallel runs (one per core of a 2-core CPU)
CKPT_LENGTHS = (128, 512)  # sequence lengths of the activation-checkpointing measurement
CKPT_BATCH = 4 if MINIFT_QUICK else 8
CKPT_REPEATS = 1 if MINIFT_QUICK else 5  # timed steps per setting (median), interleaved

os.environ["MINIFT_DATA"] = str(DATA)  # where `minift finetune --task` looks for the data
WORK = work_folder("08")  # runs/lessons/08/ (git-ignored): emptied now, removed at the end
FIGURES = figures("08")  # lessons/figures/08/ (git-ignored); None without matplotlib


def show_source(function, *needles: str) -> None:
    """Print the lines of `function`'s source that contain each needle, with file and line."""
    lines, first = inspect.getsourcelines(function)
    file = Path(inspect.getsourcefile(function))
    file = file.relative_to(REPO) if file.is_relative_to(REPO) else file
    for needle in needles:
        hits = [(first + i, line.rstrip()) for i, line in enumerate(lines) if needle in line]
        check(bool(hits), f"{function.__qualname__} no longer contains {needle!r}")
        for number, line in hits:
            print(f"  {file}:{number}: {line.strip()}")


print(f"quick mode: {MINIFT_QUICK}; data: {DATA}; work folder: {WORK}")

# %% [markdown]
# ## How a global batch is split: `distributed.shard`
#
# Every process (a *rank*, numbered 0 to N-1; N is the *world size*) builds the same batches: the
# same data, shuffled by a generator seeded with the same seed and epoch. Each then keeps rows
# `rank, rank + N, rank + 2N, ...` of every batch, which is what PyTorch's `DistributedSampler`
# does, one batch at a time. The shards are disjoint and together they are the global batch.
# Because minift's batches are grouped by length (lesson 02), neighbouring rows have about the
# same length, so taking every N-th row gives each rank about the same amount of work.
#
# Below is the first global batch of the runs further down (the same subset, tokenizer, seed and
# batch size as `minift finetune --limit-train ... --batch-size 16`), split for 2 ranks. `shard`
# only reads `rank` and `world_size` from a `Context`, so it can be called here without starting
# any process.

# %%
train_path, dev_path, text_col, pair_col, label_col = task_files("sst2", DATA)
columns = dict(text_col=text_col, pair_col=pair_col, label_col=label_col)
train_all = read_examples(train_path, **columns)
dev_all = read_examples(dev_path, **columns)
# The CLI's --limit-train subset: a seeded sample, kept in file order.
train_examples = [
    train_all[i] for i in sorted(random.Random(SEED).sample(range(len(train_all)), NUM_TRAIN))
]
vocab = LabelVocab.from_examples(train_examples)
model_dir = resolve_model_dir("minilm")
tokenizer = Tokenizer.from_pretrained(model_dir)
train_set = ClassificationDataset(
    train_examples, tokenizer, max_length=MAX_LENGTH,
    label_ids=encode_labels(train_examples, vocab),
)  # fmt: skip
first_batch = train_set.batches(BATCH_SIZE, generator=torch.Generator().manual_seed(SEED))[0]
texts = {tuple(ids.tolist()): example.text for ids, example in
         zip(train_set.input_ids, train_examples, strict=True)}  # fmt: skip


def text_of(row: torch.Tensor, mask: torch.Tensor) -> str:
    return texts[tuple(row[mask.bool()].tolist())]


print(
    f"SST-2 train: {len(train_all):,} sentences, subset {len(train_examples)}; the first global "
    f"batch: {dict((k, tuple(v.shape)) for k, v in first_batch.items())}"
)
shards = [distributed.shard(first_batch, distributed.Context(rank, NPROC)) for rank in range(NPROC)]
for rank, part in enumerate(shards):
    rows = list(range(rank, len(first_batch["labels"]), NPROC))
    print(f"\nrank {rank} of {NPROC}: rows {rows}, input_ids {tuple(part['input_ids'].shape)}")
    for row in range(min(len(rows), 3)):
        text = text_of(part["input_ids"][row], part["attention_mask"][row])
        print(f"  row {rows[row]:>2} label {part['labels'][row].item()}: {text[:70]!r}")
    print(f"  ... tokens per row: {part['attention_mask'].sum(1).tolist()}")

# The shards are disjoint and together are the whole batch.
together = torch.cat([part["input_ids"] for part in shards])
order = [row for rank in range(NPROC) for row in range(rank, len(together), NPROC)]
check(torch.equal(together, first_batch["input_ids"][order]), "the shards are not the batch")

# %% [markdown]
# `--batch-size` is the *global* batch in minift, whatever N is. The CLI builds batches of
# `batch_size` rows and the loop shards each of them; the lines below are printed from the code
# itself. With `--batch-size 16` and 2 processes each rank runs 8 rows a step (the shapes
# above). The number of steps per epoch, the schedule and the result do not depend on N; only the
# time per step does. (Other trainers, transformers' among them, take the *per-device* batch
# instead, so their global batch grows with N; the section on learning rates below is about
# that.)

# %%
show_source(minift.run.recipes._epoch_batches, "dataset.batches(batch_size")
show_source(minift.core.loop._backward_window, "parallel.shard(batch)")

# %% [markdown]
# ## Why each shard's loss is weighted, and by what
#
# The model returns the *mean* loss over its batch's targets. The gradient one process would
# compute is that of the mean over all n targets of the global batch. A rank holding n_r of them
# computes the mean over its own n_r; multiply it by n_r / n and the ranks' terms add up to the
# global mean exactly, however unequal the shards. DDP then *averages* the ranks' gradients (it
# sums them with an all-reduce and divides by N), so each rank multiplies by N as well:
#
#     weight_r = n_r * N / n        (DDP's average)  1/N * sum_r weight_r * mean_r = global mean
#
# Averaging the ranks' plain means instead is right only when every shard holds as many targets.
# That fails at the end of an epoch (a last batch of 5 rows splits 3 and 2) and in every batch of
# a token-level task (NER, MLM), where the rows hold different numbers of labelled tokens. Below,
# on a real batch of 5 SST-2 sentences and the real MiniLM classifier (dropout off, so that
# the runs are comparable), the rule reproduces the one-process gradient and the plain average
# does not. The code that does it in the loop follows.

# %%
torch.manual_seed(SEED)
probe = speed_up(SequenceClassifier.from_pretrained(
    model_dir, num_labels=len(vocab), id2label=dict(enumerate(vocab.labels))
)).eval()  # eval(): no dropout, so every pass below computes the same function
small = {key: value[:5] for key, value in first_batch.items()}  # a last batch of 5 rows


def gradient(batch: dict, weight: float = 1.0) -> tuple[torch.Tensor, float]:
    """The flat gradient of `weight * mean loss` over `batch` (all parameters), and the loss."""
    loss = probe(**batch).loss
    grads = torch.autograd.grad(loss * weight, list(probe.parameters()))
    return torch.cat([g.flatten() for g in grads]), loss.item()


one_grad, one_loss = gradient(small)
parts = [distributed.shard(small, distributed.Context(rank, NPROC)) for rank in range(NPROC)]
n = len(small["labels"])
weighted, plain, rows = [], [], []
for rank, part in enumerate(parts):
    n_r = len(part["labels"])
    weight = n_r * NPROC / n
    grad, loss = gradient(part, weight)
    weighted.append(grad)
    plain.append(gradient(part)[0])
    rows.append({"rank": rank, "targets n_r": n_r, "mean loss": loss, "weight n_r*N/n": weight})
print(format_table(rows, float_format=".6f"))
ddp_weighted = torch.stack(weighted).mean(0)  # what DDP's all-reduce average gives each rank
ddp_plain = torch.stack(plain).mean(0)
sum_weighted = sum(r["mean loss"] * r["weight n_r*N/n"] for r in rows) / NPROC
sum_plain = sum(r["mean loss"] for r in rows) / NPROC
norm = one_grad.norm().item()
weighted_error = (ddp_weighted - one_grad).abs().max().item()
plain_error = (ddp_plain - one_grad).abs().max().item()
print(f"one process, mean loss over {n} rows: {one_loss:.6f}; gradient norm {norm:.4f}")
print(f"weighted ranks: loss {sum_weighted:.6f}, gradient max abs diff {weighted_error:.2e}")
print(f"plain average:  loss {sum_plain:.6f}, gradient max abs diff {plain_error:.2e}")
check(abs(sum_weighted - one_loss) < 1e-5, "the weighted rank losses do not add up")
check(weighted_error < 1e-5 * max(norm, 1.0), "the weighted gradient is not one process's")
check(plain_error > 100 * weighted_error, "the plain average is as good as the weighted one")

# %% [markdown]
# The same comparison as a picture: each dot one gradient component (a random sample of them),
# its value on one process against its value on two. Weighted by the share of targets, the
# two-process gradient lies on the diagonal; the plain average of the ranks' means leaves it.

# %%
if FIGURES:
    sample = torch.randperm(len(one_grad), generator=torch.Generator().manual_seed(SEED))[:4000]
    fig, ax = plots.figure(6.5, 5.5)
    x = one_grad[sample]
    ax.scatter(x, ddp_plain[sample], s=6, color="C3", alpha=0.5,
               label=f"plain average (max diff {plain_error:.1e})")
    ax.scatter(x, ddp_weighted[sample], s=6, color="C0", alpha=0.5,
               label=f"weighted n_r*N/n (max diff {weighted_error:.1e})")
    ax.axline((0, 0), slope=1, color="black", linewidth=0.8, label="equal")
    ax.set_xlabel("gradient component, one process")
    ax.set_ylabel(f"same component, {NPROC} processes")
    ax.set_title(f"Gradient on {n} rows split {'/'.join(str(len(p['labels'])) for p in parts)}: "
                 f"{len(sample)} of its components, 2 processes against 1", fontsize=11)
    ax.legend(fontsize=9)
    FIGURES.save(fig, "gradient_agreement.png")
probe.save_pretrained(WORK / "initial")  # the runs below start from these very weights

# %%
show_source(
    minift.core.loop._backward_window, "weight = n_targets", "no_sync()", "scaler.scale(loss * weight)"
)
gradient_mb = sum(p.numel() for p in probe.parameters() if p.requires_grad) * 4 / 1e6
print(f"one all-reduce of MiniLM's float32 gradient moves {gradient_mb:.1f} MB per rank")

# %% [markdown]
# The `no_sync` line is about gradient accumulation. With `--grad-accum K`, one optimizer step
# runs K micro-batches, each a forward and a backward; the gradients add up in `.grad` between
# them. Under DDP every backward would normally end in an all-reduce of the whole gradient (the
# size printed above), K of them per step, where only the sum at the end matters.
# `ddp.no_sync()` turns the all-reduce off for the first K-1 backwards, so the ranks sync once per
# step, on the sum. The weight covers accumulation too: n counts the targets of the whole window,
# so the step's gradient is the mean over every target of the K global batches.
#
# ## The real thing: `minift finetune` on 2 processes and on 1
#
# `torchrun --nproc_per_node=2 -m minift finetune ...` starts two copies of the command and sets
# RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT in each; `minift.core.ddp.setup`
# reads them and joins the process group (gloo on CPU). Below it is launched as
# `python -m torch.distributed.run` (the module behind the `torchrun` command) with
# `--standalone`, which picks a free port on this machine, so two jobs never collide.
#
# One thing makes two processes differ from one by more than rounding: dropout. Each rank seeds
# its dropout with seed + rank, and even rank 0 draws masks for 8 rows where one process draws
# them for 16, so with dropout on the runs take slightly different steps (as two runs with
# different seeds would). The CLI has no dropout option, but `--model` takes any checkpoint
# folder and the dropout rates are in its `config.json`: a folder with links to MiniLM's files
# and a copy of its config with `hidden_dropout_prob` and `attention_probs_dropout_prob` at 0
# (the classifier's dropout follows `hidden_dropout_prob`) turns dropout off. First that run,
# on 2 processes and on 1, to show that the two agree; then the realistic run with dropout, to
# show by how much they then differ.

# %%
no_dropout_dir = WORK / "minilm-no-dropout"
no_dropout_dir.mkdir()
for item in model_dir.iterdir():
    if item.name != "config.json":
        (no_dropout_dir / item.name).symlink_to(item)
config = json.loads((model_dir / "config.json").read_text())
config |= {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}
(no_dropout_dir / "config.json").write_text(json.dumps(config, indent=2))

if NUM_DEV is None:
    data_options = {"task": "sst2"}
else:  # quick mode scores a seeded subset of the dev set (all of it takes a while on a CPU)
    dev_file = WORK / "dev_subset.tsv"
    keep = sorted(random.Random(SEED).sample(range(len(dev_all)), NUM_DEV))
    lines = dev_path.read_text(encoding="utf-8").splitlines()
    dev_file.write_text("\n".join([lines[0]] + [lines[1 + i] for i in keep]) + "\n")
    data_options = {"train": str(train_path), "dev": str(dev_file), "text_col": text_col}
options = dict(
    limit_train=NUM_TRAIN, max_steps=MAX_STEPS, max_length=MAX_LENGTH, batch_size=BATCH_SIZE,
    lr=LR, seed=SEED,
)  # fmt: skip
train_args = [
    f"--{key.replace('_', '-')}={value}" for key, value in (data_options | options).items()
] + ["--no-progress"]
ddp_args = [*train_args, "--keep-resume"]  # keep resume.pt (removed when a run ends) to look in
ENV = os.environ | {
    "OMP_NUM_THREADS": "1",  # one thread per process: the 2 processes fill the 2 cores
    "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    "MINIFT_DATA": str(DATA),
    "MINIFT_DIST_TIMEOUT": "300",
}


def torchrun(model: Path | str, out: Path) -> str:
    """`minift finetune` on NPROC processes; what they printed."""
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone",
        f"--nproc_per_node={NPROC}", "-m", "minift", "finetune", "--model", str(model),
        *ddp_args, "--out", str(out),
    ]  # fmt: skip
    shown = " ".join(["torchrun", *command[4:]]).replace(str(WORK), "$WORK")
    print(f"$ {shown}")
    result = subprocess.run(command, env=ENV, cwd=REPO, capture_output=True, text=True)
    check(
        result.returncode == 0, f"torchrun failed:\n{result.stdout[-3000:]}{result.stderr[-3000:]}"
    )
    return result.stdout


def one_process(model: Path | str, out: Path) -> None:
    """The same run in this process, through `minift.run.recipes.finetune` (what the CLI calls)."""
    shown = " ".join(
        ["python -m minift finetune --model", str(model), *train_args, "--out", str(out)]
    )
    print(f"$ {shown.replace(str(WORK), '$WORK')}  (here: minift.run.recipes.finetune, output hidden)")
    with contextlib.redirect_stdout(io.StringIO()):
        minift.run.recipes.finetune(
            model=str(model), out=str(out), **data_options, **options, progress=False
        )


ddp_stdout = torchrun(no_dropout_dir, WORK / "ddp")
print(ddp_stdout)

# %% [markdown]
# Each line of that output appears once, though two processes ran the command: the ranks other
# than 0 print nothing. Rank 0 also evaluates (the metrics are broadcast to the others, so early
# stopping is decided alike everywhere) and writes every file. The folder holds one log, one
# best model and, since this run passed `--keep-resume` (a finished run removes it otherwise),
# one `resume.pt`, carrying the random-number states of both ranks, so that a resumed run draws
# what the uninterrupted one would:

# %%
for path in sorted((WORK / "ddp").rglob("*")):
    if path.is_file():
        print(f"  {str(path.relative_to(WORK / 'ddp')):<30} {path.stat().st_size:>12,} bytes")
log = [json.loads(line) for line in (WORK / "ddp" / "log.jsonl").read_text().splitlines()]
resume = torch.load(WORK / "ddp" / "resume.pt", weights_only=True)
print(f"log.jsonl: {len(log)} records; resume.pt run settings: world_size "
      f"{resume['run']['world_size']}, RNG states of {len(resume['rng_ranks'])} ranks")  # fmt: skip
for marker in ("train: 2 processes", "dev before fine-tuning", "written to"):
    count = ddp_stdout.count(marker)
    print(f"  {marker!r} printed {count} time(s)")
    check(count == 1, f"{marker!r} was printed {count} times, expected once (by rank 0)")
check(len(resume["rng_ranks"]) == NPROC, "resume.pt lacks a rank's RNG states")

# %% [markdown]
# Now the same command in one process (through `minift.run.recipes.finetune`, the function the command
# line calls), and the two results side by side: the saved weights, tensor by tensor, the
# training loss the log recorded, and the dev scores.

# %%
one_process(no_dropout_dir, WORK / "one")
INITIAL = read_safetensors(WORK / "initial" / "model.safetensors")  # both runs started here


def compare(a: Path, b: Path) -> dict:
    """The saved weights and logs of two runs side by side, and how far training moved them."""
    weights_a = read_safetensors(a / "model.safetensors")
    weights_b = read_safetensors(b / "model.safetensors")
    check(weights_a.keys() == weights_b.keys() == INITIAL.keys(), "different tensors were saved")
    diffs = {name: (weights_a[name] - weights_b[name]).abs().max().item() for name in weights_a}
    worst = max(diffs, key=diffs.get)
    numbers = sum(w.numel() for w in weights_a.values())
    losses = []
    for folder in (a, b):
        records = (folder / "log.jsonl").read_text().splitlines()
        losses.append([r["loss"] for r in map(json.loads, records) if "eval" not in r])
    return {
        "max_abs_diff": diffs[worst],
        "worst": worst,
        "identical": sum(int((weights_a[k] == weights_b[k]).sum()) for k in weights_a) / numbers,
        "numbers": numbers,
        "moved": max((weights_a[k] - INITIAL[k]).abs().max().item() for k in weights_a),
        "mean_diff": sum((weights_a[k] - weights_b[k]).abs().sum().item() for k in weights_a)
        / numbers,
        "mean_moved": sum((weights_a[k] - INITIAL[k]).abs().sum().item() for k in weights_a)
        / numbers,
        "losses": losses,
        "loss_diff": max(abs(x - y) for x, y in zip(*losses, strict=True)),
        "dev": [json.loads((f / "metrics.json").read_text())["dev"] for f in (a, b)],
        "before": json.loads((a / "metrics.json").read_text())["before"],
    }


exact = compare(WORK / "ddp", WORK / "one")
print(
    f"dropout off, {NPROC} processes against 1, after {MAX_STEPS} steps: the saved weights "
    f"differ by at most {exact['max_abs_diff']:.2e} (in {exact['worst']}); "
    f"{exact['identical']:.2%} of the {exact['numbers']:,} numbers are bit-identical, the mean "
    f"difference is {exact['mean_diff']:.1e}. Training moved the weights by up to "
    f"{exact['moved']:.2e}, {exact['mean_moved']:.1e} on average."
)
print(
    f"logged training losses: {[round(x, 6) for x in exact['losses'][0]]} on {NPROC} processes, "
    f"{[round(x, 6) for x in exact['losses'][1]]} on 1 (largest difference "
    f"{exact['loss_diff']:.1e})"
)
print(
    f"dev accuracy {exact['dev'][0]['accuracy']:.4f} on {NPROC} processes and "
    f"{exact['dev'][1]['accuracy']:.4f} on 1 (before fine-tuning: "
    f"{exact['before']['accuracy']:.4f})"
)
check(exact["max_abs_diff"] < 0.1 * exact["moved"], "2 processes and 1 took different steps")
check(exact["mean_diff"] < 1e-3 * exact["mean_moved"], "2 processes and 1 took different steps")
check(exact["loss_diff"] < 1e-4, "2 processes and 1 logged different losses")
dev_size = NUM_DEV or len(dev_all)
check(
    abs(exact["dev"][0]["accuracy"] - exact["dev"][1]["accuracy"]) <= 1.5 / dev_size,
    "the dev accuracy differs by more than one sentence",
)

# %% [markdown]
# The two runs agree to float rounding. What is left comes from the order of additions: one
# process sums 16 rows in one matrix product, two processes sum 8 and 8 and then add the halves
# in the all-reduce, and floating-point addition is not associative. Most of it never reaches the
# weights (the share of bit-identical numbers), and where it does, it is far below how far
# training moved them.
#
# Look at where the largest difference sits. A key bias adds the same number, q . b_k, to every
# attention score of a query, and softmax does not change when all its inputs shift by the same
# amount: the true gradient of a key bias is zero, and what autograd computes for it is rounding
# noise, different in the two runs. AdamW divides each gradient by its own running size (plus a
# small epsilon), so even pure noise moves a weight by a fraction of the learning rate, in a
# direction that differs between the runs. The gradients of the first global batch show it:

# %%
names = [name for name, _ in probe.named_parameters()]
named_grads = dict(
    zip(
        names, torch.autograd.grad(probe(**first_batch).loss, list(probe.parameters())), strict=True
    )
)
for kind in ("query", "key", "value"):
    largest = max(
        grad.abs().max().item()
        for name, grad in named_grads.items()
        if name.endswith(f"attention.{kind}.bias")
    )
    print(f"  largest |gradient| of any {kind} bias: {largest:.1e}")
print(f"the largest difference between the runs is in: {exact['worst']}")

# %% [markdown]
# Now with dropout, as one would train for real: the same two commands on the published MiniLM
# folder.

# %%
torchrun("minilm", WORK / "ddp-dropout")
one_process("minilm", WORK / "one-dropout")
realistic = compare(WORK / "ddp-dropout", WORK / "one-dropout")
print(
    f"dropout on, {NPROC} processes against 1: the saved weights differ by at most "
    f"{realistic['max_abs_diff']:.2e}, {realistic['mean_diff']:.1e} on average: "
    f"{realistic['mean_diff'] / max(exact['mean_diff'], 1e-30):,.3g} times the mean difference "
    f"without dropout (training moved them by up to {realistic['moved']:.2e}, "
    f"{realistic['mean_moved']:.1e} on average)"
)
print(
    f"logged training losses: {[round(x, 6) for x in realistic['losses'][0]]} on {NPROC} "
    f"processes, {[round(x, 6) for x in realistic['losses'][1]]} on 1"
)
print(
    f"dev accuracy {realistic['dev'][0]['accuracy']:.4f} on {NPROC} processes and "
    f"{realistic['dev'][1]['accuracy']:.4f} on 1"
)
check(realistic["mean_diff"] > 10 * exact["mean_diff"], "dropout made no difference")

# %% [markdown]
# With dropout the two runs are two equally good samples of the same training: they differ as
# two seeds do, which is why data-parallel runs are judged by their dev scores, not by their
# weights. Measured against how far training moved the weights, the difference is largest in
# short runs like the quick one: AdamW's first steps move each weight by about the learning
# rate in the direction of its gradient's sign, and another dropout mask flips that sign for
# many weights. `tests/test_ddp.py` holds the dropout-free equality on a tiny model for
# sequence and token classification (where the ranks' shards hold different numbers of
# targets), gradient accumulation, resume and SetFit's contrastive phase.
#
# Speed is not the point on this machine: two processes of one thread each against one process
# with its threads, 8 sentences a step, on a 2-core CPU that other jobs share, say nothing about
# a GPU cluster. For the record, the loop's own clock at the last step:

# %%
for name, folder in (("2 processes", "ddp"), ("1 process", "one")):
    records = (WORK / folder / "log.jsonl").read_text().splitlines()
    last = [r for r in map(json.loads, records) if "eval" not in r][-1]
    print(f"  {name}: {last['step']} steps in {last['time']:.2f} s")

# %% [markdown]
# ## What changes when scaling out
#
# **The batch and the learning rate.** In minift, N does not change the global batch: each rank
# takes `--batch-size / N` rows, so the steps per epoch, the learning-rate schedule and (without
# dropout) the weights are those of one process. Adding devices makes each step faster, not
# different. Frameworks that take a *per-device* batch (transformers' `per_device_train_batch_size`,
# most examples written for DDP) grow the global batch with N instead: fewer, larger steps per
# epoch, and the learning rate that was right for the small batch no longer is. The usual rule
# of thumb is the linear scaling rule (Goyal et al., 2017, "Accurate, Large Minibatch SGD"):
# multiply the learning rate by the growth of the batch, and warm it up over the first steps
# because a large rate on fresh weights diverges. For Adam-type optimizers the square-root rule
# (Malladi et al., 2022) is often the better start. Both are rules of thumb, not laws: past a
# task's critical batch size a larger batch stops buying fewer steps, and fine-tuning on a small
# data set has few steps to spare, so a larger batch may simply under-train. Check on the dev
# set. The table puts numbers on it for the whole SST-2 training set and a batch of 32.

# %%
BASE_BATCH, BASE_LR = 32, 5e-5
scaling = []
for n_proc in (1, 2, 4, 8):
    scaling.append(
        {
            "N": n_proc,
            "minift: rows per rank": BASE_BATCH // n_proc,
            "minift: steps/epoch": math.ceil(len(train_all) / BASE_BATCH),
            "per-device 32: global": BASE_BATCH * n_proc,
            "per-device: steps/epoch": math.ceil(len(train_all) / (BASE_BATCH * n_proc)),
            "linear-rule lr": BASE_LR * n_proc,
            "sqrt-rule lr": BASE_LR * math.sqrt(n_proc),
        }
    )
print(f"SST-2 train: {len(train_all):,} sentences; batch {BASE_BATCH} at lr {BASE_LR:g}")
print(format_table(scaling, float_format=".3g"))

# %% [markdown]
# **Checkpoints.** Rank 0 writes the best model, the log and `resume.pt`; the other ranks write
# nothing. `resume.pt` holds the random-number states of every rank (dropout draws from
# seed + rank), and on `--resume` every rank reads the file and restores its own. A run may
# resume with a different N: the loop warns that `world_size` changed, rank r takes the states
# of rank `r % (saved ranks)`, and training continues. It is then not bit-exact with the
# uninterrupted run: the dropout masks are drawn in different streams and the sums are split
# differently. Since every rank reads `resume.pt`, across machines the output folder must be on
# a shared filesystem. The lines that do it:

# %%
show_source(minift.core.checkpoints.Checkpoints.start, "checkpoint = load_resume(")
show_source(minift.core.loop.train, '"world_size": parallel.world_size')
show_source(minift.core.resume.save_resume, "rng = distributed.gather(_rng_states())")
show_source(minift.core.resume.restore, "_set_rng_states(rng[ctx.rank % len(rng)])")

# %% [markdown]
# **Several machines.** torchrun starts the processes of one machine; with `--nnodes` several
# machines join one job. Each runs the same command, with a rendezvous endpoint they can all
# reach (any one of the machines, with a free port); the c10d rendezvous hands out the ranks, so
# rank = the machine's place times the processes per machine plus the local rank:

# %%
for node in (0, 1):
    print(
        f"  machine {node}: torchrun --nnodes=2 --nproc_per_node=8 --rdzv-backend=c10d "
        "--rdzv-endpoint=HOST:29400 --rdzv-id=sst2-run -m minift finetune --device cuda "
        "--task sst2 --out /shared/runs/sst2"
    )

# %% [markdown]
# **GPUs.** With `--device cuda` the process group uses NCCL instead of gloo, and each process
# drives the GPU numbered by its LOCAL_RANK (its rank on its own machine), so 8 processes on a
# machine take GPUs 0 to 7; DDP is told that device. NCCL all-reduces straight between GPU
# memories (NVLink, InfiniBand), where gloo goes through the CPU.

# %%
show_source(distributed.setup, 'backend = "nccl"', "torch.cuda.set_device")
show_source(distributed.local_device, 'torch.device("cuda", int(os.environ')
show_source(distributed.Context.wrap, "device_ids=[device.index]")  # DDP wraps the model there

# %% [markdown]
# **Failures.** A rank that raises (bad data in its shard, out of memory) exits; the others
# would wait for it in the next all-reduce forever. torchrun's agent watches its processes: when
# one fails it stops the others and exits non-zero with the failing rank's error and number.
# `tests/test_ddp.py` makes one rank fail in the middle of a run and checks that the job
# stops promptly, names the failing rank, and leaves the last `resume.pt` intact. Outside torchrun,
# `MINIFT_DIST_TIMEOUT` bounds the wait in a collective.

# %% [markdown]
# ## Activation checkpointing: memory for compute
#
# Data parallelism makes training faster; it does not make a model fit. During the forward pass
# autograd keeps, for every operation, what its derivative will need: the input of each linear
# layer, the input of each GELU, the attention probabilities, each dropout mask. All of it stays
# alive until the backward pass reaches that operation, so the memory grows with the depth times
# the activations of one block, and the attention part with the square of the sequence length.
#
# With activation checkpointing (`--activation-checkpointing`, `set_activation_checkpointing`)
# each block runs under `torch.utils.checkpoint`: the forward keeps only the block's input (and
# the random-number state, so that dropout draws the same masks again) and frees everything
# computed inside; when the backward pass reaches the block, it runs the block's forward again to
# rebuild what it needs, then its backward. The price is one more forward pass per block.
#
# The cell below measures both sides on the real MiniLM classifier in training mode (dropout on,
# as in fine-tuning), on full-length rows of real SST-2 dev text (sentences packed one after the
# other, so no row is padded). Memory: every tensor autograd saves for the backward pass goes
# through the pack hook of `torch.autograd.graph.saved_tensors_hooks`; the hook adds up the
# bytes of their storages, each storage once (several saved tensors can be views of one) and
# parameters left out (they are in memory anyway). Under checkpointing the hook does not see what
# `torch.utils.checkpoint` keeps itself, the input of each block, so forward pre-hooks on the
# blocks add those. Time: a forward and a backward pass, the two settings interleaved, the median
# of the repeats. Gradients: both settings start from the same random-number state, so they must
# agree.

# %%
ckpt_model = speed_up(SequenceClassifier.from_pretrained(model_dir, num_labels=2)).train()
parameter_storages = {p.untyped_storage().data_ptr() for p in ckpt_model.parameters()}
dev_tokens = tokenizer([example.text for example in dev_all])
pairs = zip(dev_tokens.input_ids, dev_tokens.attention_mask, strict=True)
# Every dev sentence's word pieces, [CLS] and [SEP] dropped, one sentence after the other.
stream = torch.cat([ids[mask.bool()][1:-1] for ids, mask in pairs])


def packed_batch(seq: int, batch: int) -> dict[str, torch.Tensor]:
    """`batch` rows of [CLS] + seq - 2 word pieces of running dev text + [SEP]; no padding."""
    pieces = stream[: batch * (seq - 2)].view(batch, seq - 2)
    cls = torch.full((batch, 1), tokenizer.cls_token_id)
    sep = torch.full((batch, 1), tokenizer.sep_token_id)
    input_ids = torch.cat([cls, pieces, sep], dim=1)  # (batch, seq)
    labels = torch.tensor([example.label == "1" for example in dev_all[:batch]]).long()
    return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "labels": labels}


def training_pass(batch: dict, checkpointing: bool, count: bool) -> tuple[float, int, torch.Tensor]:
    """Forward and backward; the seconds, the bytes saved for backward (when `count`), the grads."""
    set_activation_checkpointing(ckpt_model, checkpointing)
    ckpt_model.zero_grad(set_to_none=True)
    saved: dict[int, int] = {}  # storage address -> bytes

    def keep(tensor: torch.Tensor) -> None:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in parameter_storages:
            saved[storage.data_ptr()] = storage.nbytes()

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        keep(tensor)
        return tensor

    def block_input(module: torch.nn.Module, args: tuple) -> None:
        keep(args[0])  # what checkpoint holds on to: the block's input

    hooks = (
        [layer.register_forward_pre_hook(block_input) for layer in ckpt_model.bert.layers]
        if count
        else []
    )
    counting = (
        torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor)
        if count
        else contextlib.nullcontext()
    )
    torch.manual_seed(SEED)  # the same dropout masks in both settings
    start = time.perf_counter()
    with counting:
        loss = ckpt_model(**batch).loss
    for hook in hooks:
        hook.remove()
    loss.backward()
    seconds = time.perf_counter() - start
    grads = torch.cat([p.grad.flatten() for p in ckpt_model.parameters()])
    return seconds, sum(saved.values()), grads


hidden, layers = ckpt_model.bert.config.hidden_size, ckpt_model.bert.config.num_hidden_layers
# One untimed step at the longest length first: the first step of a process pays for setting up
# its memory, which would be charged to whichever setting ran first.
training_pass(packed_batch(max(CKPT_LENGTHS), CKPT_BATCH), checkpointing=False, count=False)
ckpt_rows = []
for seq in CKPT_LENGTHS:
    batch = packed_batch(seq, CKPT_BATCH)
    times: dict[bool, list[float]] = {False: [], True: []}
    saved_bytes, grads = {}, {}
    for repeat in range(CKPT_REPEATS):
        for checkpointing in (False, True):  # interleaved: contention hits both alike
            seconds, nbytes, grad = training_pass(batch, checkpointing, count=repeat == 0)
            times[checkpointing].append(seconds)
            if repeat == 0:
                saved_bytes[checkpointing], grads[checkpointing] = nbytes, grad
    grad_diff = (grads[False] - grads[True]).abs().max().item()
    ckpt_rows.append(
        {
            "seq": seq,
            "batch": CKPT_BATCH,
            "saved MB": saved_bytes[False] / 1e6,
            "saved MB, ckpt": saved_bytes[True] / 1e6,
            "block inputs MB": layers * CKPT_BATCH * seq * hidden * 4 / 1e6,
            "memory ratio": saved_bytes[False] / saved_bytes[True],
            "step s": statistics.median(times[False]),
            "step s, ckpt": statistics.median(times[True]),
            "time ratio": statistics.median(times[True]) / statistics.median(times[False]),
            "grad max diff": grad_diff,
        }
    )
    check(grad_diff < 1e-5, f"checkpointing changed the gradients at seq {seq}")
    check(saved_bytes[True] < saved_bytes[False] / 5, f"checkpointing saved little at seq {seq}")
print(f"MiniLM classifier, training mode, {CKPT_REPEATS} timed step(s) per setting")
print(format_table(ckpt_rows, float_format=".3g"))
if FIGURES:
    fig, (ax_mem, ax_time) = plots.figure(11, 4.2, ncols=2)
    places = range(len(ckpt_rows))
    for k, (label, suffix) in enumerate((("without", ""), ("with checkpointing", ", ckpt"))):
        offsets = [i + (k - 0.5) * 0.4 for i in places]
        ax_mem.bar(offsets, [row[f"saved MB{suffix}"] for row in ckpt_rows], 0.4, label=label)
        ax_time.bar(offsets, [row[f"step s{suffix}"] for row in ckpt_rows], 0.4, label=label)
    for ax in (ax_mem, ax_time):
        ax.set_xticks(list(places), [f"seq {row['seq']}" for row in ckpt_rows])
        ax.set_xlabel(f"sequence length (batch {CKPT_BATCH})")
        ax.legend()
    ax_mem.set_ylabel("MB saved for backward")
    ax_mem.set_title("Memory kept between forward and backward")
    ax_time.set_ylabel("seconds per training step (median)")
    ax_time.set_title("Time of a training step")
    FIGURES.save(fig, "checkpointing.png")
short, long = ckpt_rows[0], ckpt_rows[-1]
growth = (long["saved MB"] / long["seq"]) / (short["saved MB"] / short["seq"])
print(
    f"\nwithout checkpointing, the bytes kept per token grew {growth:.2f} times from seq "
    f"{short['seq']} to {long['seq']}; with it, {layers} block inputs of {hidden} floats a token "
    f"are {long['block inputs MB']:.3g} MB of the {long['saved MB, ckpt']:.3g} MB kept at seq "
    f"{long['seq']}"
)
check(growth > 1.2, "the activations did not grow faster than the sequence")
# Forward = 1 unit of arithmetic, backward = 2 (gradients for inputs and for weights); the
# checkpointed step runs the blocks' forward once more.
textbook = (1 + 2 + 1) / (1 + 2)
print(f"textbook time ratio (forward + backward + recomputed forward) / (forward + backward): "
      f"{textbook:.2f}")  # fmt: skip

# %% [markdown]
# Read the table by rows. Without checkpointing, autograd keeps far more than the blocks'
# inputs, and the bytes kept per token grow with the sequence length (the printed factor): the
# attention probabilities and their dropout masks are (batch, heads, seq, seq) in every block.
# With checkpointing, what is kept is about the blocks' inputs plus the embeddings, pooler and
# head, a small fraction of it (the memory ratio). The gradients agree (the last column), because
# the recomputation replays the same operations on the same inputs with the same dropout masks.
# The time ratio is the price: each block's forward runs twice. A backward pass does about twice
# the arithmetic of a forward (gradients for the inputs and for the weights), which gives the
# textbook ratio printed last. Measured ratios come out lower or higher: not everything in the
# step is recomputed (embeddings, pooler, head, the optimizer), a second forward finds its
# weights in cache, and on a busy CPU every timing carries noise, which is why the two settings
# were interleaved.
#
# These are the bytes autograd keeps between the passes, not the peak memory of a step (which
# also holds the gradients, AdamW's two moments, and the temporaries of whichever operation is
# running). `benchmarks/activation_checkpointing.py` measures the peak of whole training steps,
# each in a fresh process, for MiniLM and a BERT-base shape, against transformers'
# `gradient_checkpointing_enable()`:

# %%
results = REPO / "benchmarks" / "results" / "activation_checkpointing.md"
if results.is_file():
    print(results.read_text(encoding="utf-8"))
else:
    print(f"{results.relative_to(REPO)} is not there yet; to make it, run")
    print("  python benchmarks/activation_checkpointing.py")

shutil.rmtree(WORK)
print(f"\nlesson ran in {time.perf_counter() - START:.1f} s")

# %% [markdown]
# ## What to try next
#
# - Run the lesson's command with `--nproc_per_node=1`: torchrun with one process is one process
#   (`WORLD_SIZE=1`, no process group), and the weights are those of `python -m minift finetune`.
# - Add `--grad-accum 2` to both runs (and halve `--batch-size` to keep the global batch): the
#   weights of 2 processes and 1 still agree, and `no_sync` skips every other all-reduce.
# - Set `--limit-train 70` so the epoch's last batch holds 6 rows, then 3 rows, then 1: with 1,
#   rank 1's shard is empty, and the loop runs a stand-in row at weight 0 so that it still joins
#   the all-reduce (`_stand_in` in `minift/core/loop.py`).
# - Interrupt a 2-process run (`--eval-every 2`, kill it after step 4) and resume it with
#   `--nproc_per_node=1 --resume`: read the warning, and compare with the uninterrupted run.
# - On a machine with GPUs: `torchrun --nproc_per_node=NUM_GPUS -m minift finetune --device cuda
#   --task sst2 --amp bf16 --out runs/ddp`, and the same with one GPU, for the speed-up.
# - Measure activation checkpointing on a token classifier at seq 512 (`TokenClassifier`), or add
#   `--activation-checkpointing` to `minift pretrain`, where long packed sequences are the rule.
