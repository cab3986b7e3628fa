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
rate, so a third arm trains the random model at five times that rate. Results are written after
every seed, and a rerun with the same recipes goes on from the results file: a run already there
(same task, arm and seed) is not repeated, so a stopped run resumes and ``--seeds`` adds seeds. The
figure (when matplotlib is there) shows every seed's score of every arm beside the baseline.

    python benchmarks/claims_transfer.py            # the full run (see the results file)
    python benchmarks/claims_transfer.py --quick    # a smoke test: tiny subsets, 2 seeds
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
from claims_common import SEEDS, claims_parser, mean_std, paired, parse, report
from speed_common import RESULTS, data_dir, result_name

from minift.core.metrics import format_table
from minift.data.readers import read_examples, task_files
from minift.run import plots
from minift.run.recipes import finetune, ner

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
                               pooling="pooler",  # the head its results were measured with
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


def sst2_majority() -> float:
    """Dev accuracy (points) of always answering SST-2 dev's most common label."""
    _, dev, text_col, _, label_col = task_files("sst2", data_dir())
    labels = [e.label for e in read_examples(dev, text_col=text_col, label_col=label_col)]
    return 100 * max(labels.count(y) for y in set(labels)) / len(labels)


def draw(records: list[dict], recipes: dict[str, dict], name: str) -> Path | None:
    """A panel a task: every seed's dev score (a dot each) of every arm, mean ± std, and what a
    model that learned nothing scores (SST-2: the majority label; NER: 0, every token O)."""
    tasks = [t for t in recipes if any(r["task"] == t for r in records)]
    if not plots.available() or not tasks:
        return None
    fig, axes = plots.figure(5 * len(tasks) + 1, 4.2, ncols=len(tasks), squeeze=False)
    for ax, task in zip(axes[0], tasks, strict=True):
        for x, (arm, _, _) in enumerate(ARMS):
            scores = [r["score"] for r in records if r["task"] == task and r["arm"] == arm]
            if not scores:
                continue
            ax.scatter([x] * len(scores), scores, color=f"C{x}", alpha=0.5, s=20)
            ax.errorbar([x], [statistics.mean(scores)],
                        yerr=[statistics.stdev(scores) if len(scores) > 1 else 0.0],
                        color=f"C{x}", marker="_", markersize=22, capsize=4)
        floor, what = (sst2_majority(), "majority label") if task == "sst2" else (0.0, "all O")
        ax.axhline(floor, color="grey", linestyle=":", label=f"{what} ({floor:.2f})")
        lr = recipes[task]["lr"]
        ax.set_xticks(range(len(ARMS)), [f"{arm}\n(lr {lr * factor:g})" for arm, _, factor in ARMS])
        ax.set_ylabel("dev accuracy (points)" if task == "sst2" else "dev entity F1 (points)")
        ax.set_title(f"{'SST-2' if task == 'sst2' else 'CoNLL-2003 NER'}, "
                     f"{recipes[task]['limit_train']:,} sentences, one epoch")
        ax.set_xlim(-0.5, len(ARMS) - 0.5)
        ax.legend(fontsize=8, loc="center right")
    fig.suptitle("all-MiniLM-L6-v2: pretrained weights against random ones, the same recipe")
    return plots.save(fig, RESULTS / f"{name}.png")


def main() -> None:
    parser = claims_parser(__doc__)
    parser.add_argument("--tasks", nargs="+", choices=["sst2", "ner"], default=["sst2", "ner"])
    args = parse(parser)
    seeds = args.seeds or ([0, 1] if args.quick else SEEDS)
    recipes = {t: r for t, r in settings(args.quick).items() if t in args.tasks}
    device = torch.device(args.device)
    name = result_name("claims_transfer", device, args.quick)
    done: dict[tuple, dict] = {}  # the runs of the results file, when its recipes are these
    path = RESULTS / f"{name}.json"
    if path.is_file():
        old = json.loads(path.read_text(encoding="utf-8"))
        if {t: old["recipes"].get(t) for t in recipes} == json.loads(json.dumps(recipes)):
            done = {(r["task"], r["arm"], r["seed"]): r for r in old["runs"]}
            print(f"resuming: {len(done)} runs in {path}")
    records: list[dict] = []
    for task, recipe in recipes.items():
        for seed in seeds:
            for arm in ARMS:
                found = done.get((task, arm[0], seed))
                records.append(found or run(task, arm, seed, recipe, args.device))
                r = records[-1]
                print(f"{task} seed {seed} {r['arm']}: {r['score']:.2f} ({r['seconds']:.0f} s)"
                      + (" (from the results file)" if found else ""), flush=True)
            table = summary(records, recipes)
            figure = draw(records, recipes, name)
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
                    f"{table}\n"
                    + (f"\n![every seed of every arm]({figure.name})\n" if figure else ""))
            report("claims_transfer", device, args.quick,
                   {"seeds": seeds, "recipes": recipes, "runs": records}, text,
                   "Transfer learning: pretrained against random initialisation")


if __name__ == "__main__":
    main()
