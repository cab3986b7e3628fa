"""Hyperparameter search: what ``minift search TASK`` runs, honest by construction.

A search runs one recipe for every configuration of a grid (``minift.run.grid``), each with
several seeds, and picks the configuration of best mean dev score. Four habits keep it honest:

- **every trial starts from the same checkpoint, loaded afresh**, into its own folder
  (``minift.run.trials``): nothing a previous trial trained leaks into the next;
- **several seeds a configuration** (3 by default): the seeds of one configuration often differ
  by as much as two configurations do, so one seed a configuration picks noise;
- **the choice is made on dev, on one named metric with its direction** (never a sum of
  unrelated metrics); the test set, when given, is read before the first trial and scored once,
  at the end, for the chosen configuration only;
- **resumable**: each finished trial is one line of ``trials.jsonl``; after a kill, the same
  command skips what is done.

Trials run one after another, never side by side: on a CPU two trials at once would only share
its cores (and make every time in the report wrong).
"""

from __future__ import annotations

import json
import math
import shutil
import statistics
from collections.abc import Callable, Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

from minift.core.files import atomic_write
from minift.hf.checkpoint import resolve_model_dir
from minift.run.grid import (
    DEFAULT_GRID,
    HYPERPARAMETERS,
    GridError,
    LogRange,
    configurations,
    describe,
    parse_grid,
)
from minift.run.options import RECIPES, OptionError, SearchOptions
from minift.run.trials import TrialLog, model_folder, run_trial, trial_folder_name, trial_key


class MetricError(OptionError):
    """A ``metric`` the task does not report."""


# --- 1. The metrics a search chooses on --------------------------------------------------------

# The dev metrics a search can choose on, by task, the default first. finetune's f1 is binary
# (label 1) for two labels, macro for more. seq2seq's BLEU is the one its runs pick their best
# checkpoint by (texts written with the decoding options, beams included); lm's perplexity is
# exp(loss): the two rank configurations alike.
METRICS = {"finetune": ("accuracy", "f1", "loss"),
           "ner": ("entity_f1", "f1", "precision", "recall", "token_accuracy", "accuracy", "loss"),
           "qa": ("f1", "exact_match"), "setfit": ("accuracy",),
           "seq2seq": ("bleu", "rouge_l", "loss"), "lm": ("perplexity", "loss")}
METRIC_KEYS = {"entity_f1": "f1"}  # the key in the recipe's dev scores, where it is another
LOWER_IS_BETTER = {"loss", "perplexity"}
# ner's metrics that only a NER (entity) or a POS (token) tag set reports.
_ENTITY_ONLY, _POS_ONLY = {"entity_f1", "f1", "precision", "recall"}, {"accuracy"}

# --- 2. Summaries and the choice ------------------------------------------------------------------


def summarise(configs: Sequence[dict], log: TrialLog, seeds: Sequence[int], key: str) -> list:
    """One row a configuration: mean and sample standard deviation of ``key`` over its finished
    seeds, the value of each seed, the mean of every other dev metric, seconds and steps."""
    rows = []
    for config in configs:
        done = [record for seed in seeds if (record := log.get(config, seed)) is not None]
        values = [record["dev"][key] for record in done]
        names = [name for name in done[0]["dev"]] if done else []
        rows.append({
            "config": config,
            "mean": statistics.fmean(values) if values else None,
            "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "per_seed": [{"seed": record["seed"], "value": record["dev"][key]}
                         for record in done],
            "dev": {name: statistics.fmean(record["dev"][name] for record in done)
                    for name in names},
            "seeds_done": len(done),
            "steps": sum(record["steps"] or 0 for record in done),
            "seconds": sum(record["seconds"] for record in done),
            "trials": [record["folder"] for record in done],
        })
    return rows


def rank(rows: Sequence[dict], greater_is_better: bool) -> list[dict]:
    """The rows best first (by mean; a nan or missing mean last; ties keep the grid order)."""
    def score(row: dict) -> float:
        mean = row["mean"]
        if mean is None or math.isnan(mean):
            return math.inf
        return -mean if greater_is_better else mean
    return sorted(rows, key=score)


def choose(rows: Sequence[dict], greater_is_better: bool) -> dict:
    """The row of the best mean dev score (the first in grid order on a tie)."""
    return rank(rows, greater_is_better)[0]


# --- 3. Successive halving ------------------------------------------------------------------------


def halving_budgets(max_epochs: int, keep: float, min_epochs: int) -> list[int]:
    """The epochs of the rungs before the last: ``min_epochs``, then each 1 / ``keep`` times
    the one before (at least one more), while shorter than ``max_epochs``."""
    budgets, budget = [], min_epochs
    while budget < max_epochs:
        budgets.append(budget)
        budget = max(budget + 1, round(budget / keep))
    return budgets


def run_halving(configs: list[dict], run: Callable[[list[dict]], None], log: TrialLog,
                seeds: Sequence[int], key: str, greater_is_better: bool, fixed_epochs: int,
                keep: float, min_epochs: int) -> tuple[list[dict], list[dict], list[dict]]:
    """Successive halving over epochs: every configuration trains ``min_epochs`` (all seeds,
    each trial a fresh run), the best ``keep`` share (at least one) goes on to the next budget,
    and so on; the last rung trains the survivors in full. Returns ``(rows, final, rungs)``: a
    row a configuration in grid order (its last rung's, with ``epochs_trained`` and
    ``stopped_early``), the last rung's rows (the choice is made among these), a record a rung.
    """
    full = [config.get("epochs", fixed_epochs) for config in configs]
    alive = list(range(len(configs)))
    last: dict[int, dict] = {}
    rungs = []
    for budget in halving_budgets(max(full), keep, min_epochs):
        if len(alive) == 1:
            break
        # each for ``budget`` epochs, but one whose full budget that is stays itself, so that
        # its trial is the full grid's, shared
        short = [configs[i] if budget >= full[i] else configs[i] | {"epochs": budget}
                 for i in alive]
        print(f"halving: {len(alive)} configurations at {budget} epoch(s)", flush=True)
        run(short)
        rows = dict(zip(alive, summarise(short, log, seeds, key), strict=True))
        for i in alive:
            last[i] = rows[i] | {"config": configs[i], "epochs_trained": min(budget, full[i]),
                                 "stopped_early": True}
        ranked = rank([rows[i] | {"index": i} for i in alive], greater_is_better)
        kept = sorted(row["index"] for row in ranked[:max(1, math.ceil(len(alive) * keep))])
        rungs.append({"epochs": budget,
                      "results": [{"config": configs[i], "mean": rows[i]["mean"],
                                   "std": rows[i]["std"]} for i in alive],
                      "kept": [configs[i] for i in kept]})
        alive = kept
    print(f"halving: {len(alive)} configuration(s) in full", flush=True)
    run([configs[i] for i in alive])
    final = summarise([configs[i] for i in alive], log, seeds, key)
    for i, row in zip(alive, final, strict=True):
        last[i] = row | {"epochs_trained": full[i], "stopped_early": False}
    return [last[i] for i in range(len(configs))], final, rungs


def halving_cost(configs: list[dict], used: list[dict], log: TrialLog, seeds: Sequence[int],
                 fixed_epochs: int) -> dict:
    """Optimizer steps and seconds the halving used, against the full grid's: taken from
    ``trials.jsonl`` where the full grid's trials ran, else scaled from a shorter trial of the
    configuration (steps grow with the epochs); ``estimated`` says whether any was scaled."""
    spent = {"steps": sum(r["steps"] or 0 for r in used),
             "seconds": sum(r["seconds"] for r in used)}
    grid = {"steps": 0.0, "seconds": 0.0}
    estimated = False
    for config in configs:
        epochs = config.get("epochs", fixed_epochs)
        for seed in seeds:
            record = log.get(config, seed)
            if record is None:  # stopped early: the longest shorter run, scaled to full
                shorter = [r for r in used if r["seed"] == seed
                           and {k: v for k, v in r["config"].items() if k != "epochs"}
                           == {k: v for k, v in config.items() if k != "epochs"}]
                longest = max(shorter, key=lambda r: r["config"]["epochs"])
                record = {"steps": (longest["steps"] or 0) * epochs / longest["config"]["epochs"],
                          "seconds": longest["seconds"] * epochs / longest["config"]["epochs"]}
                estimated = True
            grid["steps"] += record["steps"] or 0
            grid["seconds"] += record["seconds"]
    return {"halving": spent, "full_grid": grid, "estimated": estimated,
            "steps_saved": 1 - spent["steps"] / grid["steps"] if grid["steps"] else None}


# --- 4. The test set, and what a search writes ----------------------------------------------------


def _recipe_module(task: str):
    """The module of the task's recipe: its ``read_test`` and ``score_saved`` (seq2seq and lm:
    their ``check_model`` too). Imported by name: ``minift.run.recipes.lm`` is also the name of
    the ``lm`` function the package exports."""
    from importlib import import_module

    module = {"finetune": "classify", "ner": "tag", "qa": "squad", "setfit": "fewshot"}
    return import_module(f"minift.run.recipes.{module.get(task, task)}")


def read_test(task: str, fixed: dict, path: str) -> Any:
    """The test set, read once (before any trial, so a bad file stops the search at once) by
    the recipe's own reader."""
    if not Path(path).is_file():
        raise OptionError(f"`test` {path}: no such file")
    return _recipe_module(task).read_test(path, fixed)


def check_test_is_not_dev(task: str, fixed: dict, test: str) -> None:
    """Refuse a test file that is the dev file the choice is made on (its score would be the
    dev score again, not a test of the choice); lm: also a file of the training text, whose
    slice is the held-out text when there is no ``eval_text``."""
    from minift.data.readers import task_files
    from minift.run.recipes import data_folder

    dev = [fixed.get("dev")]
    if task == "finetune" and fixed.get("dev_from_train"):
        dev = []  # the dev set is a slice of the training file
    elif task == "finetune" and fixed.get("task"):
        dev = [task_files(fixed["task"], data_folder(fixed.get("data_dir")))[1]]
    elif task == "seq2seq":  # the recipe's own files: E2E's with `task`
        dev = [_recipe_module(task).data_files(RECIPES[task](**{"out": ""} | fixed))[1]]
    elif task == "lm":  # the held-out text: `eval_text`, else a slice of `text`
        text = fixed.get("text", [])
        dev = [fixed.get("eval_text"), *([text] if isinstance(text, str | Path) else text)]
    if any(path is not None and Path(path).resolve() == Path(test).resolve() for path in dev):
        raise OptionError(f"`test` {test} is the dev file the choice is made on; give another "
                         "file (finetune: `dev_from_train` N makes dev a slice of train; lm: "
                         "the held-out text is `eval_text`, else a slice of `text`)")


def test_scores(task: str, fixed: dict, test: Any, trials: Path, row: dict, key: str) -> dict:
    """The scores on ``test`` (``read_test``) of every seed's model of one configuration, by the
    recipe's own evaluation (``score_saved``): mean, std and per seed."""
    import torch

    device = torch.device(fixed.get("device") or ("cuda" if torch.cuda.is_available()
                                                  else "cpu"))
    # the configuration's options too: the length of the inputs, seq2seq's decoding
    options = fixed | row["config"]
    per_seed = []
    for name in row["trials"]:
        scores = _recipe_module(task).score_saved(model_folder(task, trials / name), test,
                                                  options, device)
        per_seed.append({"seed": int(name.rsplit("seed", 1)[1]), **scores})
    values = [run[key] for run in per_seed]
    return {"mean": statistics.fmean(values),
            "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "examples": len(test), "per_seed": per_seed}


def _fmt(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def search_markdown(result: dict) -> str:
    """``search.md``: the configurations best first, the chosen one, the test score, halving."""
    metric, better = result["metric"], "higher" if result["greater_is_better"] else "lower"
    names = list(result["grid"])
    lines = [f"# minift search {result['task']}: {len(result['configs'])} configurations x "
             f"{len(result['seeds'])} seeds", "",
             f"Chosen on the mean dev {metric} ({better} is better) over the seeds; the test "
             "set, when given, is scored once, for the chosen configuration only.", "",
             "| " + " | ".join(names) + f" | dev {metric} mean ± std | per seed | seconds |",
             "|" + "---|" * len(names) + "---:|---|---:|"]
    ranked = rank(result["configs"], result["greater_is_better"])
    for row in sorted(ranked, key=lambda row: bool(row.get("stopped_early"))):
        config = row["config"]
        spread = ("(not run)" if row["mean"] is None
                  else f"{row['mean']:.4f} ± {row['std']:.4f}")
        if row.get("stopped_early"):
            spread += f" (stopped after {row['epochs_trained']} epoch(s))"
        seeds = ", ".join(f"{run['value']:.4f}" for run in row["per_seed"])
        lines.append("| " + " | ".join(_fmt(config.get(n, "")) for n in names)
                     + f" | {spread} | {seeds} | {row['seconds']:.0f} |")
    chosen = result["chosen"]
    lines += ["", f"Chosen: {describe(chosen['config'])}, dev {metric} {chosen['mean']:.4f} ± "
              f"{chosen['std']:.4f}; its model (the seed with the best dev score) is in "
              f"`{chosen['model']}`."]
    if chosen.get("test"):
        test = chosen["test"]
        lines.append(f"Test {metric} ({test['examples']} examples, scored once): "
                     f"{test['mean']:.4f} ± {test['std']:.4f} over the seeds.")
    halving = result.get("halving")
    if halving:
        cost = halving["cost"]
        saved = cost["steps_saved"]
        lines += ["", f"Successive halving (keep {halving['keep']:g} a rung, first rung "
                  f"{halving['min_epochs']} epoch(s)): {cost['halving']['steps']:.0f} optimizer "
                  f"steps against {cost['full_grid']['steps']:.0f} for the full grid"
                  + (" (estimated)" if cost["estimated"] else "")
                  + (f", {saved:.0%} saved" if saved is not None else "") + "."]
        same = halving["same_as_full_grid"]
        lines.append("Same choice as the full grid: "
                     + ("unknown (the full grid has not run in this folder)" if same is None
                        else "yes" if same else
                        f"no (the full grid picks {describe(halving['full_grid_choice'])})") + ".")
    return "\n".join(lines) + "\n"


def _x_axis(grid: dict) -> str | None:
    """The hyperparameter on the picture's x axis: the learning rate, else the first numeric
    one (a log range is written ``"log:LOW:HIGH"`` in ``search.json``)."""
    for name in ("lr", *grid):
        values = grid.get(name)
        if isinstance(values, str) or (values and not isinstance(values[0], str)):
            return name
    return None


def draw(result: dict, path: Path) -> Path | None:
    """``search.png`` (``plots.draw_search``); None without matplotlib or a numeric axis."""
    from minift.run import plots

    x = _x_axis(result["grid"])
    if x is None or not plots.available():
        return None
    fig, ax = plots.figure(8.0, 4.5)
    rows = [row for row in result["configs"] if not row.get("stopped_early")]
    plots.draw_search(ax, rows, x, f"dev {result['metric']}",
                      log_x=x == "lr", chosen=result["chosen"]["config"])
    return plots.save(fig, path)


# --- 5. The search --------------------------------------------------------------------------------

# Options of a command that are the search's own, not the trials': where the search writes,
# how runs resume (a search resumes by itself), the test set (scored once, by the search).
_NOT_FIXED = {"out", "overwrite", "resume", "keep_resume", "plot", "test", "seed", "seeds",
              "progress", "question", "context", "context_file", "show"}


def fixed_options(task: str, options: dict) -> dict:
    """The options of ``options`` that the task's recipe takes and every trial shares."""
    parameters = {spec.name for spec in fields(RECIPES[task])}
    return {k: v for k, v in options.items()
            if k in parameters and k not in _NOT_FIXED and v is not None}


def _check_against_model(task: str, fixed: dict, configs: list[dict]) -> None:
    """Values that are valid only for this model: the freeze depth and the maximum length
    (seq2seq and lm: every check their recipe makes against the model, ``check_model``)."""
    from minift.run.recipes import check_device, check_freeze, check_max_length

    check_device(fixed.get("device"))
    folder = resolve_model_dir(fixed.get("model", "minilm"))
    checked = task in ("seq2seq", "lm")
    if checked:  # the fixed options alone first: what fails there is not the grid's doing
        _recipe_module(task).check_model(folder, RECIPES[task](**{"out": ""} | fixed))
    for config in configs:
        options = fixed | config
        try:
            if checked:
                _recipe_module(task).check_model(folder, RECIPES[task](**{"out": ""} | options))
            if "freeze" in options:
                check_freeze(folder, options["freeze"])
            if "max_length" in config:
                check_max_length(folder, config["max_length"], minimum=4 if task == "qa" else 1)
        except ValueError as err:
            raise GridError(f"`grid`: {describe(config)}: {err}") from None


def _check_metric(task: str, metric: str, fixed: dict) -> tuple[str, bool]:
    """``metric`` -> (key, greater is better); a metric the task does not report is an error."""
    reported = METRICS[task]
    if metric not in reported:
        raise MetricError(f"`metric` {metric}: {task} reports {', '.join(reported)}")
    if task == "ner":
        from minift.data.readers import is_bio, read_conll

        kind = fixed.get("tags", "auto")
        if kind == "auto" and fixed.get("train"):
            kind = "ner" if is_bio(read_conll(fixed["train"], column=fixed.get("column", -1))) \
                else "pos"
        if (kind == "pos" and metric in _ENTITY_ONLY) or (kind == "ner" and metric in _POS_ONLY):
            raise MetricError(f"`metric` {metric}: the {kind} tags of {fixed.get('train')} do not "
                              f"report it (ner: entity_f1, precision, recall; pos: accuracy)")
    return METRIC_KEYS.get(metric, metric), metric not in LOWER_IS_BETTER


def _check_same_search(out: Path, fixed: dict, seeds: list[int]) -> None:
    """A folder holds one search: rerunning it with other fixed options would mix trials."""
    path = out / "options.json"
    mine = {"fixed": fixed, "seeds": seeds}
    if path.is_file():
        theirs = json.loads(path.read_text(encoding="utf-8"))
        if theirs != json.loads(json.dumps(mine)):
            changed = sorted(k for k in set(theirs["fixed"]) | set(fixed)
                             if theirs["fixed"].get(k) != fixed.get(k))
            raise OptionError(f"`out` {out} holds a search with other fixed options "
                             f"({', '.join(changed) or 'the seeds'} differ, see {path}); "
                             "give another `out`")
    else:
        atomic_write(path, (json.dumps(mine, indent=2) + "\n").encode("utf-8"))


def search(task: str, *, out: str, options: dict,
           on_trial: Callable[[dict], None] | None = None, **settings: Any) -> dict:
    """Search the hyperparameters of ``task``; write ``trials/``, ``trials.jsonl``,
    ``search.json``, ``search.md``, ``search.png`` and ``model/`` (the chosen configuration's
    best seed) into ``out``; return what ``search.json`` holds. All is checked before a trial.

    ``options``: the command's (the recipe's keywords); those the recipe takes are fixed for
    every trial, ``seed`` being the first seed. ``settings``: ``SearchOptions``' fields.
    ``on_trial``: called with each trial's record once it is in ``trials.jsonl`` (benchmarks).
    """
    from minift.run.recipes import claim_folder

    o = SearchOptions(**settings)
    if task not in HYPERPARAMETERS:
        raise ValueError(f"minift search: no task {task!r}; use {', '.join(HYPERPARAMETERS)}")
    if not out:
        raise OptionError("`out` DIR is needed: the folder of the search")
    axes = parse_grid(task, DEFAULT_GRID[task] if o.grid is None else o.grid)
    configs = configurations(axes, o.random_draws, o.random_seed)
    fixed = fixed_options(task, options)
    metric = o.metric or METRICS[task][0]
    key, greater = _check_metric(task, metric, fixed)
    fixed_epochs = fixed.get("epochs", 1 if task == "setfit" else 3)
    if o.halving and fixed.get("max_steps") is not None:
        raise OptionError("`halving` shortens the epochs; it does not go with `max_steps`")
    _check_against_model(task, fixed, configs)
    if o.test:
        check_test_is_not_dev(task, fixed, o.test)
    test_set = read_test(task, fixed, o.test) if o.test else None  # read once, scored at the end
    base = options.get("seed") or 0
    seed_list = list(range(base, base + o.seeds))

    model = resolve_model_dir(fixed.get("model", "minilm"))
    with claim_folder(out, model=model, check_files=True,
                      overwrite=bool(options.get("overwrite")),
                      record={"command": f"search {task}"}) as folder:
        _check_same_search(folder, fixed, seed_list)
        trials = folder / "trials"
        log = TrialLog(folder / "trials.jsonl")
        used: dict[str, dict] = {}  # each trial once (a rung and the full grid can share one)
        count = {"run": 0}
        print(f"search {task}: {len(configs)} configurations x {len(seed_list)} seeds; "
              f"{len(log.records)} trials done before")

        def run(batch: list[dict]) -> None:
            """Run the trials of ``batch`` that ``trials.jsonl`` lacks, one after another."""
            for config in batch:
                for seed in seed_list:
                    record = log.get(config, seed)
                    if record is None:
                        name = trial_folder_name(config, seed)
                        count["run"] += 1
                        print(f"trial {count['run']}: {describe(config)} seed {seed} "
                              f"(log: {trials / name / 'trial.log'})", flush=True)
                        record = run_trial(task, fixed, config, seed, trials / name)
                        log.append(record)
                        if on_trial is not None:
                            on_trial(record)
                        print(f"  dev {metric} {record['dev'][key]:.4f} ({record['seconds']:.0f} "
                              f"s, {record['steps']} steps)", flush=True)
                    used[trial_key(config, seed)] = record

        result: dict = {"task": task, "metric": metric, "metric_key": key,
                        "greater_is_better": greater, "seeds": seed_list,
                        "grid": {n: str(v) if isinstance(v, LogRange) else v
                                 for n, v in axes.items()},
                        "random": o.random_draws, "fixed": fixed}
        if o.halving:
            rows, final, rungs = run_halving(configs, run, log, seed_list, key, greater,
                                             fixed_epochs, o.halving_keep, o.halving_min_epochs)
            chosen_row = choose(final, greater)
            complete = all(log.get(c, s) for c in configs for s in seed_list)
            full_choice = (choose(summarise(configs, log, seed_list, key), greater)["config"]
                           if complete else None)  # known when the full grid ran here too
            result["configs"] = rows
            result["halving"] = {
                "keep": o.halving_keep, "min_epochs": o.halving_min_epochs, "rungs": rungs,
                "cost": halving_cost(configs, list(used.values()), log, seed_list, fixed_epochs),
                "same_as_full_grid": (None if full_choice is None
                                      else full_choice == chosen_row["config"]),
                "full_grid_choice": full_choice}
        else:
            run(configs)
            result["configs"] = summarise(configs, log, seed_list, key)
            chosen_row = choose(result["configs"], greater)
        print(f"chosen: {describe(chosen_row['config'])} (dev {metric} {chosen_row['mean']:.4f} "
              f"± {chosen_row['std']:.4f})")

        best_seed = rank([{"mean": run["value"], "folder": name} for run, name in
                          zip(chosen_row["per_seed"], chosen_row["trials"], strict=True)],
                         greater)[0]["folder"]
        target = folder / "model"
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(model_folder(task, trials / best_seed), target,
                        ignore=shutil.ignore_patterns(".minift.lock", "trial.log"))
        result["chosen"] = {name: chosen_row[name]
                            for name in ("config", "mean", "std", "per_seed")}
        result["chosen"] |= {"model": "model", "model_trial": best_seed, "test": None}
        if test_set is not None:
            print(f"scoring the chosen configuration's {len(chosen_row['trials'])} models on "
                  f"the test set ({o.test}), once")
            test = test_scores(task, fixed, test_set, trials, chosen_row, key)
            result["chosen"]["test"] = test
            print(f"test {metric}: {test['mean']:.4f} ± {test['std']:.4f}")
        atomic_write(folder / "search.json", (json.dumps(result, indent=2) + "\n").encode())
        atomic_write(folder / "search.md", search_markdown(result).encode("utf-8"))
        picture = draw(result, folder / "search.png")
    print(f"search.json, search.md{', search.png' if picture else ''} and the chosen model "
          f"written to {folder}")
    return result
