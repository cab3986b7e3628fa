"""The learning rate of a head trained alone on a frozen encoder: the default of `--freeze head`.

Question (issue #34): `minift finetune --freeze head` trains a linear head on features the
encoder computes once (all-MiniLM-L6-v2 mean-pools, its own convention). Which learning rate
should that head get when the user gives none? Full fine-tuning's 5e-5 moves a fresh head
(weights of size 0.02) next to nothing in a hundred steps; a logistic regression on fixed
features is convex and takes far higher rates. This sweep picks the rate, so that the default
is a measurement and not a guess.

Method, for each task, budget, rate and seed:
1. the features: ``encode_features`` of all-MiniLM-L6-v2 with its default pooling (mean), max
   length 64, computed once a task for a fixed pool of training examples and a fixed held-out
   slice of the same training file (drawn with seed ``SPLIT_SEED``); a run's training subset
   (``prepare.subset`` of the pool, the run's seed) takes its rows;
2. a fresh head (N(0, 0.02) weights, zero bias, the run's seed) trained by minift's loop with the
   very ``TrainConfig`` of ``finetune --freeze head`` (batch 32, AdamW with weight decay 0.01,
   warmup 10 % and linear decay, head dropout 0.1) on the run's seeded subset of the pool;
3. the last head scored once on the held-out slice (no selection on it).

The tasks are not the one ``claims_frozen.py`` then tests the chosen rate on (SST-2): Emotion
(tweets, 6 labels) and Financial PhraseBank 50Agree (financial news, 3 labels). Three budgets:
256 examples for the default 3 epochs (24 steps), 3,000 for one epoch (94 steps, the issue's
setting) and for 3 epochs (282 steps). Beside them, the ceiling of a linear probe: scikit-learn's
``LogisticRegression`` (L-BFGS to convergence, C=1) on the same features of the same subset.
The choice: the rate with the smallest mean regret, each cell's (task, budget)
best mean accuracy minus the rate's, averaged over the cells, so that neither task's scale
weighs more. One thread runs it in a few minutes.

    python benchmarks/frozen_head_lr.py --threads 1          # the sweep (see the results file)
    python benchmarks/frozen_head_lr.py --threads 1 --quick  # a smoke test
"""

from __future__ import annotations

import dataclasses
import random
import statistics
import tempfile
from pathlib import Path

import torch
from claims_common import claims_parser, parse, report
from sklearn.linear_model import LogisticRegression
from speed_common import data_dir

from minift.core.freeze import freeze
from minift.core.labels import LabelVocab
from minift.core.loop import train
from minift.core.metrics import format_table
from minift.data.readers import Example, encode_labels, read_semicolon_examples
from minift.data.tokenizer import Tokenizer
from minift.fast.unpad import speed_up
from minift.hf.checkpoint import resolve_model_dir
from minift.run.options import FROZEN_HEAD_LR, FinetuneOptions
from minift.run.recipes.prepare import epoch_batches, subset
from minift.run.recipes.skeleton import train_config
from minift.tasks.classify import (
    ClassificationDataset,
    FeatureRows,
    SequenceClassifier,
    classification_metrics,
    encode_features,
)

RATES = [3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1, 1.0]
BUDGETS = [(256, 3), (3000, 1), (3000, 3)]  # (training examples, epochs)
HELDOUT, SPLIT_SEED, MAX_LENGTH = 800, 0, 64
SEEDS = [0, 1, 2]


def financial_phrasebank(folder: Path) -> list[Example]:
    """Financial PhraseBank's 4,846 `sentence@label` lines on which half the annotators agree."""
    path = folder / "financial_phrasebank" / "Sentences_50Agree.txt"
    lines = path.read_text(encoding="iso-8859-1").splitlines()
    return [Example(text, None, label, i + 1, str(path))
            for i, (text, label) in enumerate(line.rsplit("@", 1) for line in lines if line)]


def tasks(folder: Path) -> dict[str, list[Example]]:
    return {"emotion": read_semicolon_examples(folder / "emotion" / "train.txt"),
            "financial_phrasebank": financial_phrasebank(folder)}


def split(examples: list[Example], pool_size: int) -> tuple[list[Example], list[Example]]:
    """(a pool of ``pool_size`` training examples, the held-out slice), fixed by SPLIT_SEED."""
    order = random.Random(SPLIT_SEED).sample(range(len(examples)), pool_size + HELDOUT)
    return [examples[i] for i in order[HELDOUT:]], [examples[i] for i in order[:HELDOUT]]


def sweep_task(name: str, examples: list[Example], budgets: list, rates: list, seeds: list,
               device: str) -> list[dict]:
    """Every (budget, rate, seed) run of one task, on features computed once."""
    folder = resolve_model_dir("minilm")
    tokenizer = Tokenizer.from_pretrained(folder)
    pool, heldout = split(examples, max(n for n, _ in budgets))
    vocab = LabelVocab.from_examples(pool)
    model = speed_up(SequenceClassifier.from_pretrained(folder, num_labels=len(vocab))).to(device)
    freeze(model, "head")
    held_set = ClassificationDataset(heldout, tokenizer, max_length=MAX_LENGTH,
                                     label_ids=encode_labels(heldout, vocab))
    held = FeatureRows(held_set, encode_features(model, held_set, batch_size=64, device=device))
    held_batches = held.batches(64, generator=None, shuffle=False)
    pool_set = ClassificationDataset(pool, tokenizer, max_length=MAX_LENGTH)
    pool_features = encode_features(model, pool_set, batch_size=64, device=device)
    row_of = {id(e): i for i, e in enumerate(pool)}
    majority = max(sum(1 for e in heldout if e.label == label) for label in vocab.labels)
    print(f"{name}: {len(vocab)} labels, pool {len(pool)}, held-out {len(heldout)} "
          f"(majority {100 * majority / len(heldout):.2f}), pooling {model.pooling}", flush=True)
    runs = []
    for size, epochs in budgets:
        for seed in seeds:
            chosen = subset(pool, size, seed)
            rows = ClassificationDataset(chosen, tokenizer, max_length=MAX_LENGTH,
                                         label_ids=encode_labels(chosen, vocab))
            rows = FeatureRows(rows, pool_features[[row_of[id(e)] for e in chosen]])
            probe = LogisticRegression(max_iter=5000).fit(rows.features.numpy(),
                                                          rows.dataset.labels.numpy())
            ceiling = 100 * probe.score(held.features.numpy(), held_set.labels.numpy())
            for lr in rates:
                with torch.no_grad():  # a fresh head, as the recipe draws one
                    torch.manual_seed(seed)
                    torch.nn.init.normal_(model.classifier.weight, std=0.02)
                    torch.nn.init.zeros_(model.classifier.bias)
                with tempfile.TemporaryDirectory() as out:
                    options = FinetuneOptions(out=out, freeze="head", lr=lr, epochs=epochs,
                                              seed=seed, progress=False)
                    config = dataclasses.replace(train_config(options), keep_resume=False)
                    result = train(model, epoch_batches(rows, options.batch_size, seed), config,
                                   device=device)
                accuracy = classification_metrics(model, held_batches, len(vocab), device)
                runs.append({"task": name, "examples": size, "epochs": epochs, "steps":
                             result.steps, "lr": lr, "seed": seed,
                             "accuracy": 100 * accuracy["accuracy"], "probe": ceiling,
                             "majority": 100 * majority / len(heldout)})
            print(f"{name} {size}x{epochs} seed {seed}: " + "  ".join(
                f"{r['lr']:g} {r['accuracy']:.1f}" for r in runs[-len(rates):])
                + f"  (LogisticRegression {ceiling:.1f})", flush=True)
    return runs


def choose(runs: list[dict]) -> tuple[float, list[dict]]:
    """The rate of smallest mean regret, and the table of every rate's cells and regret."""
    cells = sorted({(r["task"], r["examples"], r["epochs"]) for r in runs})
    rates = sorted({r["lr"] for r in runs})
    def cell(r: dict) -> tuple:
        return r["task"], r["examples"], r["epochs"]

    mean = {(c, lr): statistics.mean(r["accuracy"] for r in runs if cell(r) == c and r["lr"] == lr)
            for c in cells for lr in rates}
    best = {c: max(mean[c, lr] for lr in rates) for c in cells}
    table = []
    for lr in rates:
        row = {"lr": f"{lr:g}"}
        row |= {f"{task} {n}x{e}": mean[(task, n, e), lr] for task, n, e in cells}
        row["mean regret"] = statistics.mean(best[c] - mean[c, lr] for c in cells)
        table.append(row)
    chosen = min(table, key=lambda row: row["mean regret"])
    table.append({"lr": "LogisticRegression"} | {
        f"{task} {n}x{e}": statistics.mean(r["probe"] for r in runs
                                           if cell(r) == (task, n, e) and r["lr"] == rates[0])
        for task, n, e in cells} | {"mean regret": None})
    return float(chosen["lr"]), table


def main() -> None:
    parser = claims_parser(__doc__)
    args = parse(parser)
    seeds = args.seeds or ([0] if args.quick else SEEDS)
    budgets = [(64, 1)] if args.quick else BUDGETS
    rates = RATES[2:5] if args.quick else RATES
    runs = []
    for name, examples in tasks(data_dir()).items():
        runs += sweep_task(name, examples, budgets, rates, seeds, args.device)
    chosen, table = choose(runs)
    majority = {r["task"]: r["majority"] for r in runs}
    text = (f"A head trained alone on all-MiniLM-L6-v2's frozen mean-pooled features (max length "
            f"{MAX_LENGTH}), by minift's loop with `finetune --freeze head`'s TrainConfig, "
            f"scored once (last head) on {HELDOUT} held-out examples of the same training file; "
            f"mean held-out accuracy in points over seeds {seeds}. Columns: task, training "
            f"examples x epochs. Last row: scikit-learn's LogisticRegression (C=1, to "
            f"convergence) on the same features, the linear probe's ceiling. Majority "
            f"label: " + ", ".join(f"{t} {m:.2f}" for t, m in majority.items())
            + ". Mean regret: each column's best minus this rate's, averaged. Chosen: "
            f"**{chosen:g}** (`minift.run.options.FROZEN_HEAD_LR` is {FROZEN_HEAD_LR:g}).\n\n"
            + format_table(table, float_format=".2f"))
    report("frozen_head_lr", torch.device(args.device), args.quick,
           {"seeds": seeds, "budgets": budgets, "rates": rates, "heldout": HELDOUT,
            "split_seed": SPLIT_SEED, "max_length": MAX_LENGTH, "chosen_lr": chosen,
            "runs": runs}, text, "The learning rate of a head on a frozen encoder")


if __name__ == "__main__":
    main()
