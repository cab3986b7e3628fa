"""Pair classification that learns: MRPC and RTE on their full training sets, minift beside
transformers.

Question (issue #19, claim 3): does fine-tuning all-MiniLM-L6-v2 on sentence pairs learn the task,
or only the majority label? An earlier run (``finetune_glue.md``: 1,500 MRPC pairs, 2 epochs at
5e-5) scored 70.34 against the 68.38 of always answering "paraphrase". Here both GLUE pair tasks
are trained on all their training pairs (MRPC 3,668; RTE 2,490) and scored on their dev sets
(408; 277), which no choice below ever looks at:

1. Max length: the shortest that keeps 99% of the training pairs whole (MRPC 128 keeps all of
   them; RTE 256 truncates 3 of 2,490; 128 would cut 12% of them).
2. Learning rate and epochs, chosen on a held-out part of the TRAINING set (``--dev-from-train``:
   400 MRPC / 250 RTE pairs, split seed 0), seed 0: one run per learning rate in ``LRS`` for
   ``MAX_EPOCHS`` epochs, scored after every epoch; the best (held-out accuracy) learning rate and
   epoch count is the recipe. One seed picks among near configurations partly by noise (lesson
   10); what this run must show is whether the recipe clears the majority rate, not the optimum.
3. The recipe on the full training set, ``SEEDS`` seeds, with ``minift finetune`` and with
   transformers' ``BertForSequenceClassification`` (``finetune_glue.reference_finetune``: torch
   AdamW with transformers' decay grouping and warmup schedule) on the same batches. Dev is
   scored once, after the last epoch: no model selection on dev in either library.

Batch 32, warmup 10% then linear decay, weight decay 0.01, clipping at 1. Results are written
after every run; rerun the command to resume (finished runs are kept when the settings match).
minift's seeds run first, then transformers': a run stopped early has every minift seed. The
figure (when matplotlib is there) shows both steps: the held-out curves that chose the recipe,
and every seed's dev accuracy beside the majority rate.

    python benchmarks/claims_pairs.py --threads 1   # the full run (see the results file)
    python benchmarks/claims_pairs.py --quick       # a smoke test: 200 pairs, 2 seeds
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from collections import Counter
from pathlib import Path

import torch
from claims_common import SEEDS, claims_parser, mean_std, paired, parse, report
from finetune_glue import reference_finetune
from speed_common import RESULTS, result_name

from minift.core.metrics import format_table, precision_recall_f1
from minift.data.readers import read_examples, task_files
from minift.run import plots
from minift.run.recipes import finetune

LRS = [5e-5, 1e-4, 2e-4]
MAX_EPOCHS = 3
BATCH_SIZE = 32
TASKS = {  # max length (see 1. above), pairs held out of train for the choice of lr and epochs
    "mrpc": dict(max_length=128, held_out=400),
    "rte": dict(max_length=256, held_out=250),
}
QUICK = dict(limit_train=200, lrs=[1e-4], max_epochs=1, held_out=64)


def held_out_curve(task: str, lr: float, quick: bool, device: str) -> dict:
    """Train on the training set minus its held-out part; held-out accuracy after each epoch."""
    spec = TASKS[task]
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        finetune(model="minilm", task=task, out=out, lr=lr, pooling="pooler",
                 epochs=QUICK["max_epochs"] if quick else MAX_EPOCHS, batch_size=BATCH_SIZE,
                 max_length=spec["max_length"],
                 dev_from_train=QUICK["held_out"] if quick else spec["held_out"], split_seed=0,
                 limit_train=QUICK["limit_train"] if quick else None, seed=0, progress=False,
                 device=device)
        evals = [json.loads(line) for line in (Path(out) / "log.jsonl").read_text().splitlines()]
    curve = [100 * r["eval"]["accuracy"] for r in evals if "eval" in r]
    return {"task": task, "lr": lr, "held_out_accuracy": curve,
            "seconds": time.perf_counter() - start}


def choose(curves: list[dict]) -> dict:
    """The best (held-out accuracy) lr and epoch count; ties go to fewer epochs, then lower lr."""
    options = [(acc, -epoch, -c["lr"], c["lr"], epoch)
               for c in curves for epoch, acc in enumerate(c["held_out_accuracy"], 1)]
    acc, _, _, lr, epochs = max(options)
    return {"lr": lr, "epochs": epochs, "held_out_accuracy": acc}


def final_run(task: str, library: str, recipe: dict, seed: int, quick: bool,
              device: str) -> dict:
    """One fine-tune on the whole training set with the chosen recipe; dev scored at the end."""
    common = dict(task=task, epochs=recipe["epochs"], lr=recipe["lr"], batch_size=BATCH_SIZE,
                  max_length=TASKS[task]["max_length"], seed=seed,
                  limit_train=QUICK["limit_train"] if quick else None)
    start = time.perf_counter()
    if library == "minift":
        with tempfile.TemporaryDirectory() as out:
            dev = finetune(model="minilm", out=out, progress=False, device=device,
                           eval_every=10**9,  # one evaluation: at the end
                           pooling="pooler", **common)["dev"]  # transformers' head
    else:
        dev, _ = reference_finetune(freeze="none", keep="last", **common)
    return {"task": task, "library": library, "seed": seed, "accuracy": 100 * dev["accuracy"],
            "f1": 100 * dev["f1"], "seconds": time.perf_counter() - start}


def majority(task: str) -> dict:
    """Dev accuracy and F1 (of label id 1, as the recipes report it) of always answering the
    training set's commonest label."""
    train, dev, text_col, pair_col, label_col = task_files(task)
    cols = dict(text_col=text_col, pair_col=pair_col, label_col=label_col)
    label = Counter(e.label for e in read_examples(train, **cols)).most_common(1)[0][0]
    gold = [e.label for e in read_examples(dev, **cols)]
    positive = "1" if task == "mrpc" else "not_entailment"  # label id 1, whose F1 is reported
    f1 = precision_recall_f1([g == positive for g in gold], [label == positive] * len(gold),
                             average="binary", pos_label=True)["f1"]
    return {"label": label, "accuracy": 100 * gold.count(label) / len(gold), "f1": 100 * f1}


def summary(state: dict) -> str:
    """The markdown: the choice on held-out training pairs, then minift beside transformers."""
    choice_rows = [{"task": c["task"], "lr": f"{c['lr']:g}",
                    **{f"epoch {e}": acc for e, acc in enumerate(c["held_out_accuracy"], 1)}}
                   for c in state["curves"]]
    rows = []
    for task, recipe in state["recipes"].items():
        runs = {lib: {r["seed"]: r for r in state["runs"] if r["task"] == task
                      and r["library"] == lib} for lib in ("minift", "transformers")}
        both = sorted(set(runs["minift"]) & set(runs["transformers"]))
        base = state["majority"][task]

        def scores(lib, key, seeds=None, runs=runs):
            return [runs[lib][s][key] for s in (sorted(runs[lib]) if seeds is None else seeds)]

        if not runs["minift"]:
            continue
        rows.append({
            "task": task, "lr": recipe["lr"], "epochs": recipe["epochs"],
            "max length": TASKS[task]["max_length"],
            "seeds (minift / transformers)": f"{len(runs['minift'])} / {len(runs['transformers'])}",
            "majority acc / F1": f"{base['accuracy']:.2f} / {base['f1']:.2f}",
            "minift acc": mean_std(scores("minift", "accuracy")),
            "transformers acc": mean_std(scores("transformers", "accuracy"))
            if runs["transformers"] else "not run yet",
            "minift - transformers (acc, paired)": paired(scores("minift", "accuracy", both),
                                                          scores("transformers", "accuracy",
                                                                 both)) if both else "",
            "minift - majority (acc)": paired(scores("minift", "accuracy"),
                                              [base["accuracy"]] * len(runs["minift"])),
            "minift F1": mean_std(scores("minift", "f1")),
            "transformers F1": mean_std(scores("transformers", "f1"))
            if runs["transformers"] else "",
            "s a run (minift / transformers)": "{:.0f} / {}".format(
                statistics.mean(scores("minift", "seconds")),
                f"{statistics.mean(scores('transformers', 'seconds')):.0f}"
                if runs["transformers"] else "-"),
        })
    return (
        "The choice of learning rate and epochs, on pairs held out of the TRAINING set (seed 0; "
        "held-out accuracy in points after each epoch of a run of that many epochs):\n\n"
        f"{format_table(choice_rows, float_format='.2f')}\n\n"
        "The chosen recipe on the whole training set, scored once on dev after the last epoch "
        "(no model selection on dev). Accuracy and F1 (of label id 1: MRPC 'paraphrase', RTE "
        "'not_entailment') in points, mean ± std over seeds; differences ± their standard error "
        "(paired by seed for minift - transformers; against the fixed majority baseline for "
        "minift - majority). Seconds: a whole run on this machine, shared with other jobs.\n\n"
        f"{format_table(rows, float_format='.4g') if rows else 'No run yet.'}\n"
    )


def draw(state: dict, name: str) -> Path | None:
    """Left: held-out accuracy after each epoch, a line a learning rate, the chosen recipe ringed.
    Right: dev accuracy of every seed (a dot each) of both libraries, the majority rate dotted,
    and the held-out accuracy that chose the recipe as a star: where the star sits far above the
    dots, the choice did not carry over to dev."""
    tasks = [t for t in state["recipes"] if any(r["task"] == t for r in state["runs"])]
    if not plots.available() or not tasks:
        return None
    fig, (left, right) = plots.figure(11, 4.2, ncols=2)
    for i, task in enumerate(tasks):
        for curve in (c for c in state["curves"] if c["task"] == task):
            acc = curve["held_out_accuracy"]
            shade = 0.35 + 0.65 * sorted(state["settings"]["lrs"]).index(curve["lr"]) / max(
                len(state["settings"]["lrs"]) - 1, 1)
            left.plot(range(1, len(acc) + 1), acc, marker="o", ms=4, color=f"C{i}", alpha=shade,
                      linestyle="-" if i == 0 else "--", label=f"{task} lr {curve['lr']:g}")
        recipe = state["recipes"][task]
        left.scatter([recipe["epochs"]], [recipe["held_out_accuracy"]], s=160, facecolors="none",
                     edgecolors="black", zorder=3)
    left.set_xlabel("epochs")
    left.set_xticks(range(1, state["settings"]["max_epochs"] + 1))
    left.set_ylabel("accuracy on pairs held out of TRAIN (points)")
    left.set_title("choosing the recipe (ringed), seed 0")
    left.legend(fontsize=8, ncol=2)
    ticks = []
    for i, task in enumerate(tasks):
        for j, library in enumerate(("minift", "transformers")):
            x = 3 * i + j
            acc = [r["accuracy"] for r in state["runs"] if r["task"] == task
                   and r["library"] == library]
            if acc:
                right.scatter([x] * len(acc), acc, color=f"C{i}", alpha=0.5, s=20,
                              marker="o" if library == "minift" else "D")
                right.errorbar([x], [statistics.mean(acc)],
                               yerr=[statistics.stdev(acc) if len(acc) > 1 else 0.0],
                               color=f"C{i}", marker="_", markersize=20, capsize=4)
            ticks.append((x, f"{task}\n{library}"))
        base = state["majority"][task]["accuracy"]
        right.hlines(base, 3 * i - 0.4, 3 * i + 1.4, color="grey", linestyle=":",
                     label="majority label" if i == 0 else None)
        right.scatter([3 * i + 0.5], [state["recipes"][task]["held_out_accuracy"]], marker="*",
                      s=150, color=f"C{i}", label="held-out accuracy that chose the recipe"
                      if i == 0 else None)
    right.set_xticks([x for x, _ in ticks], [t for _, t in ticks])
    right.set_ylabel("dev accuracy (points), mean ± std")
    right.set_title("the recipe on all the training pairs, a dot a seed")
    right.legend(fontsize=8, loc="upper right")
    fig.suptitle("Pair classification with all-MiniLM-L6-v2: MRPC and RTE")
    return plots.save(fig, RESULTS / f"{name}.png")


def main() -> None:
    parser = claims_parser(__doc__)
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    args = parse(parser)
    seeds = args.seeds or ([0, 1] if args.quick else SEEDS)
    device = torch.device(args.device)
    lrs = QUICK["lrs"] if args.quick else LRS
    settings = {"tasks": TASKS, "lrs": lrs, "max_epochs": MAX_EPOCHS, "batch_size": BATCH_SIZE,
                "quick": args.quick}
    path = RESULTS / f"{result_name('claims_pairs', device, args.quick)}.json"
    state = {"settings": settings, "curves": [], "recipes": {}, "runs": [],
             "majority": {t: majority(t) for t in TASKS}}
    if path.exists():  # resume: keep what a run with the same settings finished
        old = json.loads(path.read_text())
        if old.get("settings") == json.loads(json.dumps(settings)):
            state |= {k: old[k] for k in ("curves", "recipes", "runs")}
            print(f"resuming: {len(state['curves'])} curves, {len(state['runs'])} runs kept")

    def save() -> None:
        name = result_name("claims_pairs", device, args.quick)
        figure = draw(state, name)
        report("claims_pairs", device, args.quick, state, summary(state)
               + (f"\n![held-out choice and dev accuracy]({figure.name})\n" if figure else ""),
               "Pair classification: MRPC and RTE in full, minift beside transformers")

    for task in args.tasks:
        for lr in lrs:
            if not any(c["task"] == task and c["lr"] == lr for c in state["curves"]):
                state["curves"].append(held_out_curve(task, lr, args.quick, args.device))
                print(f"{task} lr {lr}: held-out accuracy {state['curves'][-1]}", flush=True)
                save()
        state["recipes"][task] = choose([c for c in state["curves"] if c["task"] == task])
        save()
    for library in ("minift", "transformers"):
        for seed in seeds:
            for task in args.tasks:
                if any(r["task"] == task and r["library"] == library and r["seed"] == seed
                       for r in state["runs"]):
                    continue
                state["runs"].append(final_run(task, library, state["recipes"][task], seed,
                                               args.quick, args.device))
                print(f"{state['runs'][-1]}", flush=True)
                save()


if __name__ == "__main__":
    main()
