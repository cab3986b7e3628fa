"""A real hyperparameter search on SST-2: does the chosen configuration beat the default beyond
the noise of the seeds?

Question: on a small SST-2 task, how far apart are the seeds of one configuration, how far apart
are the configurations, and does the configuration a search picks on dev score better on a test
set it never saw than ``minift finetune``'s defaults (lr 5e-5, batch 32, 3 epochs)?

Setup (``minift search finetune``, through ``minift.run.search.search``): MiniLM (all-MiniLM-L6-v2),
max length 64, one dev evaluation a trial (at the end: the score of the last weights,
not the best of several evaluations, which would already be a choice on dev). From SST-2's
train.tsv, one split drawn once (``--dev-from-train``, split seed
0, the same for every seed): ``--dev`` sentences are the dev set the search chooses on, and
``--train`` others the training set. SST-2's dev.tsv (872 sentences) is the test set: read once,
scored at the end for the chosen configuration only (and, as the baseline of this benchmark,
for the default configuration). Grid: learning rate x batch size, 3 epochs, 3 seeds each.

Then successive halving on the same folder (keep a third a rung, first rung 1 epoch): its
short trials are new, its full-length ones the grid's, so the steps it costs on its own and
whether it picks the grid's configuration are measured, not estimated.

Every finished trial is a line of ``runs/benchmarks/search_sst2/trials.jsonl`` and rewrites the
results files: a stopped run keeps what it finished, and the same command continues it.

    python benchmarks/search_sst2.py            # the full run (the results file gives its time)
    python benchmarks/search_sst2.py --quick    # a smoke test: 2 configurations, tiny subsets
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from speed_common import RESULTS, machine, write_report

from minift.core.metrics import format_table
from minift.run import search as searching
from minift.run.recipes import data_folder

HERE = Path(__file__).resolve().parent
LRS = "2e-5,5e-5,1e-4,2e-4,5e-4,1e-3"
BATCH_SIZES = "16,32"
DEFAULT = {"lr": 5e-5, "batch_size": 32}  # minift finetune's defaults (3 epochs, as the grid)


def spread(values: list[float]) -> str:
    if not values:
        return "-"
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * statistics.fmean(values):.2f} ± {100 * std:.2f}"


def table(log: searching.TrialLog, configs: list[dict], seeds: list[int]) -> str:
    rows = searching.summarise(configs, log, seeds, "accuracy")
    lines = []
    for row in searching.rank(rows, True):
        values = [run["value"] for run in row["per_seed"]]
        lines.append({"lr": f"{row['config']['lr']:g}", "batch": row["config"]["batch_size"],
                      "dev acc (mean ± std, pts)": spread(values),
                      "per seed": " ".join(f"{100 * v:.1f}" for v in values),
                      "seeds": len(values), "s / trial": (f"{row['seconds'] / len(values):.0f}"
                                                          if values else "-")})
    return format_table(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke test")
    parser.add_argument("--train", type=int, help="training sentences (default 800; quick 48)")
    parser.add_argument("--dev", type=int, help="dev sentences (default 400; quick 48)")
    parser.add_argument("--no-halving", action="store_true", help="the grid only")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1: on a CPU shared with other jobs, two threads "
                             "each fighting for two cores run far slower than one)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    q = args.quick
    n_train = args.train or (48 if q else 800)
    n_dev = args.dev or (48 if q else 400)
    grid = ["lr=5e-5,1e-3", "batch_size=16,32"] if q else [f"lr={LRS}",
                                                          f"batch_size={BATCH_SIZES}"]
    seeds = 2 if q else 3
    name = "search_sst2" + ("_quick" if q else "")
    out = HERE.parent / "runs" / "benchmarks" / name
    test = str(data_folder() / "sst2" / "dev.tsv")
    options = {"model": "minilm", "task": "sst2", "dev_from_train": n_dev, "split_seed": 0,
               "limit_train": n_train, "max_length": 64, "epochs": 2 if q else 3,
               "eval_every": 10_000, "device": "cpu",  # one evaluation, at the end
               "pooling": "pooler"}  # the head its results were measured with
    info = machine(torch.device("cpu"))
    started = time.perf_counter()
    configs = searching.configurations(searching.parse_grid("finetune", grid))
    seed_list = list(range(seeds))
    setup = {"model": "minilm (all-MiniLM-L6-v2)", "train": n_train, "dev": n_dev,
             "dev_from": "sst2/train.tsv (split seed 0)", "test": "sst2/dev.tsv (872)",
             "max_length": 64, "epochs": options["epochs"], "grid": grid, "seeds": seed_list,
             "default": DEFAULT, "folder": str(out.relative_to(HERE.parent))}
    command = "python benchmarks/search_sst2.py" + (" --quick" if q else "")
    title = "Hyperparameter search on SST-2 (minift search finetune)"

    def report(stage: str, extra: dict | None = None, text: str = "") -> None:
        log = searching.TrialLog(out / "trials.jsonl")
        done = sum(1 for c in configs for s in seed_list if log.get(c, s))
        payload = {"machine": info, "quick": q, "setup": setup, "stage": stage,
                   "trials_done": done, "trials": len(configs) * len(seed_list),
                   "wall_seconds": time.perf_counter() - started,
                   "grid_rows": searching.summarise(configs, log, seed_list, "accuracy")} | (
                       extra or {})
        body = (f"Stage: {stage}; {done} of {len(configs) * len(seed_list)} grid trials done; "
                f"{payload['wall_seconds'] / 60:.0f} minutes of this run.\n\n"
                f"Setup: MiniLM, {n_train} training and {n_dev} dev sentences drawn once from "
                f"SST-2 train.tsv (split seed 0), max length 64, {options['epochs']} epochs, "
                f"{seeds} seeds a configuration; SST-2 dev.tsv (872) is the test set. Dev "
                "accuracy in points, best first:\n\n" + table(log, configs, seed_list) + text)
        write_report(name, payload, body, title, command)

    # 1. The grid: the choice on dev, the chosen configuration's test score (scored once).
    result = searching.search("finetune", out=str(out), options=options, grid=grid, seeds=seeds,
                              test=test, on_trial=lambda record: report("grid"))
    # 2. The baseline: the default configuration's models on the same test set.
    rows = {json.dumps(row["config"], sort_keys=True): row for row in result["configs"]}
    default_row = rows[json.dumps(DEFAULT, sort_keys=True)]
    fixed = searching.fixed_options("finetune", options)
    default_test = searching.test_scores("finetune", fixed,
                                         searching.read_test("finetune", fixed, test),
                                         out / "trials", default_row, "accuracy")
    chosen = result["chosen"]
    comparison = [
        {"": "chosen " + searching.describe(chosen["config"]),
         "dev acc (pts)": spread([r["value"] for r in chosen["per_seed"]]),
         "test acc (pts)": spread([r["accuracy"] for r in chosen["test"]["per_seed"]])},
        {"": "default " + searching.describe(DEFAULT),
         "dev acc (pts)": spread([r["value"] for r in default_row["per_seed"]]),
         "test acc (pts)": spread([r["accuracy"] for r in default_test["per_seed"]])},
    ]
    extra = {"chosen": chosen, "default": {"config": DEFAULT, "dev": default_row,
                                           "test": default_test}}
    text = ("\n\nThe chosen configuration against the default one, mean ± std over the seeds "
            "(test: SST-2 dev.tsv, 872 sentences, never seen by the search):\n\n"
            + format_table(comparison))
    report("grid done", extra, text)

    # 3. Successive halving over the same trials.
    if args.no_halving:
        return
    halved = searching.search("finetune", out=str(out), options=options, grid=grid,
                              seeds=seeds, halving=True, halving_keep=1 / 3,
                              halving_min_epochs=1, on_trial=lambda record: report("halving",
                                                                                  extra, text))
    halving = halved["halving"]
    cost = halving["cost"]
    extra |= {"halving": halving, "halving_chosen": halved["chosen"]["config"]}
    rungs = ", ".join(str(r["epochs"]) for r in halving["rungs"]) or "none"
    text += (f"\n\nSuccessive halving (a third kept a rung; shorter rungs at {rungs} "
             f"epoch(s), then {options['epochs']}): {cost['halving']['steps']:.0f} optimizer "
             f"steps against {cost['full_grid']['steps']:.0f} for the full grid ({cost['steps_saved']:.0%} "
             f"saved; {cost['halving']['seconds'] / 60:.0f} against "
             f"{cost['full_grid']['seconds'] / 60:.0f} trial-minutes); it picks "
             f"{searching.describe(halved['chosen']['config'])}, "
             + ("the same configuration as the full grid." if halving["same_as_full_grid"]
                else "not the full grid's configuration."))
    report("done", extra, text)
    print(f"results in {RESULTS / name}.md")


if __name__ == "__main__":
    main()
