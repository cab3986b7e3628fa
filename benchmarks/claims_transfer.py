"""Transfer learning: what pretraining is worth, pretrained MiniLM against its random twin.

Question (issue #19, claim 1): how much of a fine-tuned model's score comes from pretraining?
The same architecture (all-MiniLM-L6-v2's config.json: 6 blocks, hidden 384) is fine-tuned twice
with the same recipe, the same seeds, the same training subset and batches: once from the
published weights (``init="pretrained"``) and once from BERT's random initialisation
(``init="random"``, ``heads.*.from_config``). Same tokenizer. Two tasks:

- SST-2: a seeded subset of the training sentences (the seed of the run), scored on all 872 dev
  sentences (accuracy; always answering the majority label scores 50.92);
- CoNLL-2003 NER: a seeded subset of the training sentences, scored on all 3,250 dev sentences
  (entity F1, seqeval's default mode; tagging everything O scores 0).

The recipe is ``minift finetune`` / ``minift ner`` as they stand, at one learning rate for both
arms (a good one for the pretrained model). A model trained from scratch may want a higher
rate, so a third arm trains the random model at five times that rate. Results are written after every seed, so a stopped run keeps
what it finished.

    python benchmarks/claims_transfer.py            # the full run (see the results file)
    python benchmarks/claims_transfer.py --quick    # a smoke test: tiny subsets, 2 seeds
"""

from __future__ import annotations

import tempfile
import time

import torch
from claims_common import SEEDS, claims_parser, mean_std, paired, parse, report
from speed_common import data_dir

from minift.metrics import format_table
from minift.recipes import finetune, ner

# (name, init, learning-rate factor): the third arm asks whether the random model only lacked a
# higher rate, as models trained from scratch often want.
ARMS = (("pretrained", "pretrained", 1), ("random", "random", 1), ("random, lr x5", "random", 5))


def settings(quick: bool) -> dict[str, dict]:
    """The recipe of each task: the same for both arms."""
    return {
        "sst2": dict(limit_train=64 if quick else 2000, epochs=1, lr=1e-4, batch_size=32,
                     max_length=64),
        "ner": dict(limit_train=64 if quick else 1000, epochs=1, lr=2e-4, batch_size=16,
                    max_length=128),
    }


def run(task: str, arm: tuple, seed: int, recipe: dict, device: str) -> dict:
    """One fine-tune; returns the dev score in points, the seconds, the training facts."""
    name, init, factor = arm
    recipe = recipe | {"lr": recipe["lr"] * factor}
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        if task == "sst2":
            metrics = finetune(model="minilm", task="sst2", out=out, init=init, seed=seed,
                               progress=False, device=device, **recipe)
            score = 100 * metrics["dev"]["accuracy"]
        else:
            conll = data_dir() / "conll2003"
            metrics = ner(model="minilm", train=str(conll / "train.txt"),
                          dev=str(conll / "dev.txt"), column=2, out=out, init=init, seed=seed,
                          progress=False, device=device,
                          eval_every=10**9, **recipe)  # one evaluation: at the end
            score = 100 * metrics["dev"]["f1"]
    return {"task": task, "arm": name, "init": init, "lr": recipe["lr"], "seed": seed,
            "score": score,
            "seconds": time.perf_counter() - start, "steps": metrics["train"]["steps"]}


def summary(records: list[dict], recipes: dict[str, dict]) -> str:
    """The markdown table: per task and arm, mean ± std; the paired difference."""
    rows = []
    for task, recipe in recipes.items():
        names = [name for name, _, _ in ARMS]
        by_arm = {name: {r["seed"]: r for r in records if r["task"] == task and r["arm"] == name}
                  for name in names}
        seeds = sorted(set.intersection(*(set(runs) for runs in by_arm.values())))
        if not seeds:
            continue
        scores = {name: [by_arm[name][s]["score"] for s in seeds] for name in names}
        seconds = [by_arm[name][s]["seconds"] for name in names for s in seeds]
        rows.append({
            "task": task, "metric": "dev accuracy" if task == "sst2" else "dev entity F1",
            "train": recipe["limit_train"], "steps": by_arm["pretrained"][seeds[0]]["steps"],
            "lr": f"{recipe['lr']:g}", "seeds": len(seeds),
            **{name: mean_std(scores[name]) for name in names},
            "pretrained - random": paired(scores["pretrained"], scores["random"]),
            "pretrained - random, lr x5": paired(scores["pretrained"], scores["random, lr x5"]),
            "s a run (mean)": sum(seconds) / len(seconds),
        })
    return format_table(rows, float_format=".0f")


def main() -> None:
    parser = claims_parser(__doc__)
    parser.add_argument("--tasks", nargs="+", choices=["sst2", "ner"], default=["sst2", "ner"])
    args = parse(parser)
    seeds = args.seeds or ([0, 1] if args.quick else SEEDS)
    recipes = {t: r for t, r in settings(args.quick).items() if t in args.tasks}
    device = torch.device(args.device)
    records: list[dict] = []
    for task, recipe in recipes.items():
        for seed in seeds:
            for arm in ARMS:
                records.append(run(task, arm, seed, recipe, args.device))
                r = records[-1]
                print(f"{task} seed {seed} {r['arm']}: {r['score']:.2f} ({r['seconds']:.0f} s)",
                      flush=True)
            table = summary(records, recipes)
            text = (f"Pretrained all-MiniLM-L6-v2 against the same architecture from BERT's random "
                    f"initialisation (`--init random`), the same recipe, seeds, training subset "
                    f"and batches per seed. SST-2: a seeded subset of train, dev accuracy on all "
                    f"872 dev sentences (majority label: 50.92), max length 64. CoNLL-2003: a "
                    f"seeded subset of train sentences, entity F1 (seqeval default mode) on all "
                    f"3,250 dev sentences, max length 128. One epoch, batch 32 (SST-2) / 16 "
                    f"(NER), linear warmup 10% and decay, weight decay 0.01, AdamW, at the "
                    f"table's lr (x5 for the third arm). Scores in points, mean ± std over seeds; the "
                    f"differences are paired by seed, ± their standard error. Seconds: the whole run "
                    f"(load, score, train, save) on this machine, shared with other jobs.\n\n"
                    f"{table}\n")
            report("claims_transfer", device, args.quick,
                   {"seeds": seeds, "recipes": recipes, "runs": records}, text,
                   "Transfer learning: pretrained against random initialisation")


if __name__ == "__main__":
    main()
