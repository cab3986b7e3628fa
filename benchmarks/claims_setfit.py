"""SetFit against ordinary fine-tuning with few labels: learning curves on SST-2 and Emotion.

Question (issue #19, claim 5): with 8, 16, 32 or 64 labelled examples a class, where does
SetFit (``minift.tasks.setfit``) beat an ordinary classification fine-tune (``minift.run.recipes.finetune``),
and where does fine-tuning catch up? Two data sets: SST-2 (2 classes; scored on all 872 dev
sentences, as GLUE has no public test labels) and Emotion (6 classes; scored on its 2,000 test
tweets). Both start from all-MiniLM-L6-v2.

The examples. For every size and seed, ``minift.tasks.setfit.sample_shots`` draws that many examples of
every class from the training file with a generator seeded by the seed; both methods train on
exactly these, and nothing else. Seeds 0-4 for every few-shot cell.

SetFit: ``minift.tasks.setfit.train_setfit`` with setfit's defaults (oversampled pairs, batches of 16
pairs, one epoch, AdamW at 2e-5 with 10% warmup, the cosine-similarity loss, then a logistic
regression on the embeddings of all the drawn examples), except that the contrastive phase stops
after ``CAP_STEPS`` = 120 steps (``SetFitConfig.max_steps``): the oversampled pairs grow with the
square of the examples (Emotion at 64 a class: 122,880 pairs, 7,680 steps), so a fixed budget
of 1,920 pairs, the first ones of setfit's shuffled order, caps every cell. 1,920 is the number
setfit itself builds for 8 a class of Emotion's 6 classes, so the 8-a-class cells of both data
sets, and SST-2's 16, run setfit's defaults exactly; the cap cuts SST-2 a little at 32 a class
(2,112 pairs) and much at 64 (8,320), and Emotion from 16 a class on (7,680 and more). The table gives the pairs built
and the pairs trained. What the cap costs is measured where it cuts hard: Emotion at 16 a class
again at twice the cap (``check_cap``), same seeds; and the runs of an earlier, lower cap (64
steps) are kept in the results file (``set_aside``) and set against the same cells at 120.

Fine-tune: ``minift.run.recipes.finetune``, a recipe fixed in advance and the same at every size, the
kind a careful user picks with few labels: AdamW at 1e-4 (MiniLM), batch 16, warmup 10% then
linear decay, weight decay 0.01, max length 128, and max(``FT_MIN_STEPS`` steps, ``FT_MIN_EPOCHS``
epochs), so that 16 sentences still get 100 updates. No model selection: the recipe evaluates
once, at its last step, on (at most 256 of) the drawn training examples themselves, so its "best"
model is its last; the evaluation set is the recipe's ``test=`` file, scored once, after training.
The fine-tune never sees the evaluation set before that.

The full training set (67,349 sentences of SST-2, 16,000 tweets of Emotion) is far beyond this
benchmark's CPU budget at 5 seeds: its cell runs ``--full-seeds`` (default seed 0 only), and the
fine-tune's steps are capped at ``FULL_STEPS`` (16,000 sentences: one epoch of Emotion, a quarter
of SST-2's). SetFit cannot pair 67,349 sentences (2.3 billion pairs), so its full cell trains the
contrastive phase on the 64-a-class draw of the same seed (capped as above) and fits the logistic
regression on the embeddings of the whole training set.

The run order makes the cheap, most informative cells finish first: every size from the
smallest with seeds 0-2 (both data sets, both methods), then every size again with seeds 3 and 4,
then the full set, then the cap check.
Results are written after every run, and a rerun with the same settings goes on from the results
file (``--seeds`` or ``--full-seeds`` can add seeds later). Accuracy in points; seconds are the
run's CPU seconds (``time.process_time``, one torch thread: loading, training and scoring), which
a shared machine inflates less than the wall clock.

    python benchmarks/claims_setfit.py --threads 1          # the full run (see the results file)
    python benchmarks/claims_setfit.py --quick --threads 1  # a smoke test: tiny sizes, 2 seeds
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import random
import statistics
import tempfile
import time
from pathlib import Path

import torch
from claims_common import SEEDS, claims_parser, mean_std, paired, parse, report
from speed_common import RESULTS, data_dir, result_name

from minift.core.metrics import accuracy, format_table
from minift.data.readers import read_examples, read_semicolon_examples
from minift.data.tokenizer import Tokenizer
from minift.fast.unpad import speed_up
from minift.hf.checkpoint import load_bert, resolve_model_dir
from minift.run import plots
from minift.run.recipes import finetune
from minift.tasks.setfit import (
    LinearHead,
    SetFitConfig,
    SetFitModel,
    fit_logistic_regression,
    sample_shots,
    train_body,
    train_setfit,
)

SIZES = [8, 16, 32, 64]  # examples a class
CAP_STEPS = 120  # the contrastive phase's cap: 120 steps of 16 pairs, 1,920 pairs
FT = dict(lr=1e-4, batch_size=16, warmup_ratio=0.1, weight_decay=0.01, max_length=128)
FT_MIN_STEPS, FT_MIN_EPOCHS = 100, 5
FULL_STEPS = 1000  # the fine-tune's steps on the full training set (16,000 sentences)
FULL_BODY_SIZE = 64  # SetFit on the full set: the contrastive phase on this draw a class
TRAIN_DEV = 256  # the recipe's own end-of-run evaluation: at most this many training examples
CHECK = ("emotion", 16)  # a cell the cap cuts hard (7,680 pairs), rerun at twice the cap
SEED_GROUPS = ([0, 1, 2], [3, 4])  # every size with the first seeds, then the others
METHODS = ("setfit", "finetune")


def settings(quick: bool) -> dict:
    """Everything a run's numbers depend on (a rerun resumes only when these are equal)."""
    if quick:  # a smoke test of every code path: tiny sizes, a few steps
        return {"sizes": [2, 4], "cap_steps": 4, "finetune": FT, "ft_min_steps": 4,
                "ft_min_epochs": 1, "full_steps": 8, "full_body_size": 4, "train_dev": 16,
                "check": ["emotion", 4], "check_cap": 8, "quick": True}
    return {"sizes": SIZES, "cap_steps": CAP_STEPS, "finetune": FT, "ft_min_steps": FT_MIN_STEPS,
            "ft_min_epochs": FT_MIN_EPOCHS, "full_steps": FULL_STEPS,
            "full_body_size": FULL_BODY_SIZE, "train_dev": TRAIN_DEV, "check": list(CHECK),
            "check_cap": 2 * CAP_STEPS, "quick": False}


# Settings that may change between runs without changing a finished run's numbers: more sizes,
# another check, another cap (a SetFit run the cap did not cut is the same under any cap).
FREE = ("sizes", "check", "check_cap", "cap_steps")


def reusable(run: dict, s: dict) -> bool:
    """Whether a finished run of the results file is what these settings would run."""
    if run["method"] == "finetune" or run["cap"] == s["cap_steps"]:
        return True
    if run["cap"] == s["check_cap"] and [run["dataset"], run["size"]] == s["check"]:
        return True
    return run["steps"] < run["cap"] and run["steps"] < s["cap_steps"]  # the cap did not cut it


def read_dataset(name: str, quick: bool) -> dict:
    """The training pool and the evaluation set of ``name`` (sst2 or emotion), as
    ``{"train": [(text, label)], "eval": [(text, label)], "eval_name": str}``. Quick mode: a
    seeded pool of 600 and 100 evaluation examples."""
    folder = data_dir() / name
    if name == "sst2":
        read = lambda file: read_examples(folder / file, text_col="sentence", label_col="label")  # noqa: E731
        train, evaluation, eval_name = read("train.tsv"), read("dev.tsv"), "dev.tsv"
    else:
        train = read_semicolon_examples(folder / "train.txt")
        evaluation, eval_name = read_semicolon_examples(folder / "test.txt"), "test.txt"
    pairs = lambda examples: [(ex.text, ex.label) for ex in examples]  # noqa: E731
    data = {"train": pairs(train), "eval": pairs(evaluation), "eval_name": eval_name}
    if quick:
        data["train"] = random.Random(0).sample(data["train"], 600)
        data["eval"] = random.Random(0).sample(data["eval"], 100)
    return data


def write_tsv(path: Path, rows: list[tuple[str, str]]) -> Path:
    """``text<TAB>label`` rows under a header: what ``finetune`` reads."""
    for text, _ in rows:
        if "\t" in text or "\n" in text:
            raise ValueError(f"a text holds a tab or a newline: {text[:60]!r}")
    path.write_text("text\tlabel\n" + "".join(f"{t}\t{y}\n" for t, y in rows), encoding="utf-8")
    return path


def draw(data: dict, size: int | str, seed: int) -> list[tuple[str, str]]:
    """The training examples of a cell: ``size`` a class drawn with the seed, or all."""
    if size == "full":
        return data["train"]
    chosen = sample_shots([y for _, y in data["train"]], size, torch.Generator().manual_seed(seed))
    return [data["train"][i] for i in chosen]


def ft_steps(n: int, full: bool, s: dict) -> int:
    """The fine-tune's steps for ``n`` examples: max(FT_MIN_STEPS, FT_MIN_EPOCHS epochs);
    FULL_STEPS on the full set."""
    steps = max(s["ft_min_steps"], s["ft_min_epochs"] * math.ceil(n / FT["batch_size"]))
    return min(steps, s["full_steps"]) if full else steps


def run_finetune(examples: list, full: bool, seed: int, folder: Path, s: dict,
                 device: str) -> dict:
    """The ordinary fine-tune on ``examples``; the evaluation set scored once, at the end."""
    steps = ft_steps(len(examples), full, s)
    train = write_tsv(folder / "train.tsv", examples)
    own = write_tsv(folder / "train_dev.tsv", examples[:s["train_dev"]])  # no selection
    with tempfile.TemporaryDirectory() as out, contextlib.redirect_stdout(io.StringIO()):
        metrics = finetune(model="minilm", out=out, train=str(train), dev=str(own),
                           test=str(folder / "eval.tsv"), max_steps=steps, eval_every=steps,
                           seed=seed, progress=False, device=device, pooling="pooler", **FT)
    if metrics["train"]["best_step"] != steps:
        raise RuntimeError(f"the recipe kept step {metrics['train']['best_step']}, not the last")
    return {"accuracy": 100 * metrics["test"]["accuracy"], "steps": steps,
            "train_accuracy": 100 * metrics["dev"]["accuracy"],
            "train_seconds": metrics["train"]["seconds"]}


def run_setfit(data: dict, examples: list, size: int | str, seed: int, cap: int | None,
               s: dict, device: str) -> dict:
    """SetFit on ``examples`` (full set: the body on the FULL_BODY_SIZE draw, the head on all)."""
    folder = resolve_model_dir("minilm")
    tokenizer = Tokenizer.from_pretrained(folder)
    names = sorted({y for _, y in data["train"]})
    config = SetFitConfig(seed=seed, max_steps=cap, progress=False)
    encoder = speed_up(load_bert(folder)).to(device)
    start = time.perf_counter()
    if size != "full":
        model, stats = train_setfit(encoder, tokenizer, [t for t, _ in examples],
                                    [y for _, y in examples], config, label_names=names, log=None)
    else:
        body = draw(data, s["full_body_size"], seed)
        torch.manual_seed(seed)  # dropout, as train_setfit seeds it
        stats = train_body(encoder, tokenizer, [t for t, _ in body], [y for _, y in body],
                           config, log=None)
        head = LinearHead(encoder.config.hidden_size, len(names), binary=len(names) == 2)
        model = SetFitModel(encoder, tokenizer, head.to(device), names,
                            max_length=config.max_length)
        ids = torch.tensor([names.index(y) for _, y in examples])
        fit_logistic_regression(head, model.embed([t for t, _ in examples]), ids, C=config.C)
        model.eval()
    seconds = time.perf_counter() - start
    predicted = model.predict([t for t, _ in data["eval"]])
    return {"accuracy": 100 * accuracy([y for _, y in data["eval"]], predicted),
            "pairs": stats["pairs"], "pairs_trained": stats["pairs_trained"],
            "steps": stats["steps"], "train_seconds": seconds}


def plan(seeds: list[int], full_seeds: list[int], s: dict) -> list[tuple]:
    """Every run, in the order they go: (dataset, size, seed, method, cap)."""
    cap = s["cap_steps"]
    groups = [[seed for seed in group if seed in seeds] for group in SEED_GROUPS]
    groups.append([seed for seed in seeds if all(seed not in g for g in SEED_GROUPS)])
    units = [(name, size, seed, method, cap) for group in groups for size in s["sizes"]
             for seed in group for name in ("sst2", "emotion") for method in METHODS]
    units += [(name, "full", seed, method, cap) for seed in full_seeds
              for name in ("sst2", "emotion") for method in METHODS]
    units += [(*s["check"], seed, "setfit", s["check_cap"]) for seed in seeds]
    return units


def key(unit: tuple) -> str:
    name, size, seed, method, cap = unit
    return f"{name}/{size}/{seed}/{method}/cap {cap}"


def runs_of(runs: list[dict], name: str, size, method: str, cap: int) -> dict:
    """{seed: run} of a cell (the fine-tune's runs carry the cap too, unused)."""
    return {r["seed"]: r for r in runs
            if (r["dataset"], r["size"], r["method"], r["cap"]) == (name, size, method, cap)}


def cell_rows(runs: list[dict], name: str, sizes: list, cap: int) -> tuple[list, list]:
    """The table rows of a data set, and its verdict per size."""
    rows, verdicts = [], []
    for size in sizes:
        sf, ft = runs_of(runs, name, size, "setfit", cap), runs_of(runs, name, size, "finetune", cap)
        both = sorted(set(sf) & set(ft))
        if not sf and not ft:
            continue
        row = {"examples a class": size if size == "full" else str(size),
               "examples": (sf or ft)[next(iter(sf or ft))]["examples"],
               "SetFit pairs (built / trained)": "", "fine-tune steps": "",
               "seeds (SetFit / fine-tune)": f"{len(sf)} / {len(ft)}",
               "SetFit": mean_std([r["accuracy"] for r in sf.values()]) if sf else "",
               "fine-tune": mean_std([r["accuracy"] for r in ft.values()]) if ft else "",
               "SetFit - fine-tune (paired)": "", "SetFit CPU s": "", "fine-tune CPU s": ""}
        if sf:
            first = sf[min(sf)]
            row["SetFit pairs (built / trained)"] = f"{first['pairs']:,} / {first['pairs_trained']:,}"
            row["SetFit CPU s"] = f"{statistics.median(r['cpu_seconds'] for r in sf.values()):.0f}"
        if ft:
            row["fine-tune steps"] = str(ft[min(ft)]["steps"])
            row["fine-tune CPU s"] = f"{statistics.median(r['cpu_seconds'] for r in ft.values()):.0f}"
        if both:
            a, b = [sf[s]["accuracy"] for s in both], [ft[s]["accuracy"] for s in both]
            row["SetFit - fine-tune (paired)"] = paired(a, b)
            verdicts.append((size, a, b))
        rows.append(row)
    return rows, verdicts


def verdict(name: str, verdicts: list, majority: float) -> str:
    """Where each method wins: a paired difference beyond two standard errors, else a tie."""
    if not verdicts:
        return ""
    words = []
    for size, a, b in verdicts:
        deltas = [x - y for x, y in zip(a, b, strict=True)]
        mean = statistics.mean(deltas)
        se = statistics.stdev(deltas) / len(deltas) ** 0.5 if len(deltas) > 1 else math.inf
        who = ("one seed, no standard error" if len(deltas) == 1 else "SetFit ahead"
               if mean > 2 * se else "fine-tune ahead" if mean < -2 * se
               else "within noise (|difference| < 2 SE)")
        words.append(f"{'the full set' if size == 'full' else f'{size} a class'}: {who} "
                     f"({mean:+.2f})")
    crossing = next((size for size, a, b in verdicts
                     if statistics.mean(b) >= statistics.mean(a)), None)
    cross = (f"the fine-tune's mean first reaches SetFit's at "
             f"{'the full set' if crossing == 'full' else f'{crossing} a class'}"
             if crossing is not None else "the fine-tune's mean stays below SetFit's at every "
             "size run")
    return (f"**{name}** (majority class {majority:.2f}): " + "; ".join(words) + f"; {cross}.")


def cap_rows(runs: list[dict], cap: int) -> list[dict]:
    """SetFit's cells run at another cap too (the check, and runs of an earlier cap set
    aside): that cap against this one, paired by seed."""
    rows = []
    others = sorted({(r["dataset"], str(r["size"]), r["cap"]) for r in runs
                     if r["method"] == "setfit" and r["cap"] != cap})
    for dataset, size, other in others:
        size = size if size == "full" else int(size)
        here, there = (runs_of(runs, dataset, size, "setfit", c) for c in (cap, other))
        both = sorted(set(here) & set(there))
        if not both:
            continue
        rows.append({
            "cell": f"{dataset}, {size} a class", "seeds": len(both),
            "pairs built": f"{here[both[0]]['pairs']:,}",
            "pairs trained (other cap / this cap)":
                f"{there[both[0]]['pairs_trained']:,} / {here[both[0]]['pairs_trained']:,}",
            "other cap (steps)": other, "at the other cap": mean_std([there[s]["accuracy"]
                                                                     for s in both]),
            f"at {cap} steps": mean_std([here[s]["accuracy"] for s in both]),
            "other - this (paired)": paired([there[s]["accuracy"] for s in both],
                                            [here[s]["accuracy"] for s in both]),
            "CPU s at the other cap": f"{statistics.median(there[s]['cpu_seconds'] for s in both):.0f}"})
    return rows


def figure(runs: list[dict], datasets: dict, sizes: list, cap: int, name: str) -> Path | None:
    """Accuracy against examples a class (log axis), both methods with ± std bands."""
    if not plots.available():
        return None
    fig, axes = plots.figure(12, 4.6, ncols=2)
    for ax, (dataset, data) in zip(axes, datasets.items(), strict=True):
        classes = len({y for _, y in data["train"]})
        for method, color, label in (("setfit", "C2", "SetFit"), ("finetune", "C0", "fine-tune")):
            xs, means, stds = [], [], []
            for size in sizes:
                done = [r["accuracy"] for r in runs_of(runs, dataset, size, method, cap).values()]
                if done:
                    xs.append(len(data["train"]) / classes if size == "full" else size)
                    means.append(statistics.mean(done))
                    stds.append(statistics.stdev(done) if len(done) > 1 else 0.0)
            if not xs:
                continue
            few = [i for i, s in enumerate(sizes[:len(xs)]) if s != "full"]
            ax.plot([xs[i] for i in few], [means[i] for i in few], color=color, marker="o",
                    label=label)
            ax.fill_between([xs[i] for i in few], [means[i] - stds[i] for i in few],
                            [means[i] + stds[i] for i in few], color=color, alpha=0.2)
            if len(few) < len(xs):  # the full set: a marker of its own, error bar ± std
                ax.errorbar(xs[-1], means[-1], yerr=stds[-1], color=color, marker="*",
                            markersize=12, linestyle="none", capsize=4)
        majority = datasets[dataset]["majority"]
        ax.axhline(majority, color="grey", linestyle=":", label=f"majority class ({majority:.1f})")
        ax.set_xscale("log", base=2)
        ticks = [size for size in sizes if size != "full"]
        labels = [str(t) for t in ticks]
        if any(r["dataset"] == dataset and r["size"] == "full" for r in runs):
            ticks.append(len(data["train"]) / classes)
            labels.append(f"full\n({ticks[-1]:,.0f})")
        ax.set_xticks(ticks, labels)
        ax.set_xticks([], minor=True)
        ax.set_xlabel("training examples a class (log scale; star: the full set)")
        ax.set_ylabel(f"accuracy on {data['eval_name']} (points)")
        ax.set_title(f"{dataset}: {len(data['eval']):,} evaluation examples")
        ax.legend(loc="lower right")
    fig.suptitle("SetFit against fine-tuning, all-MiniLM-L6-v2, mean ± std over seeds")
    return plots.save(fig, RESULTS / f"{name}.png")


def main() -> None:
    parser = claims_parser(__doc__)
    parser.add_argument("--full-seeds", type=int, nargs="*",
                        help="seeds of the full-set cell (default [0]; none: skip it)")
    parser.add_argument("--write-only", action="store_true",
                        help="rewrite the report and figure from the results file; run nothing")
    args = parse(parser)
    seeds = args.seeds or ([0, 1] if args.quick else SEEDS)
    full_seeds = [0] if args.full_seeds is None else args.full_seeds
    device = torch.device(args.device)
    name = result_name("claims_setfit", device, args.quick)
    s = settings(args.quick)
    path = RESULTS / f"{name}.json"
    runs: list[dict] = []
    set_aside: list[dict] = []  # runs of an earlier cap that this one would not repeat
    if path.exists():
        done = json.loads(path.read_text(encoding="utf-8"))
        same = {k: v for k, v in s.items() if k not in FREE}
        if {k: v for k, v in done.get("settings", {}).items() if k not in FREE} == same:
            runs = [r for r in done["runs"] if reusable(r, s)]
            set_aside = done.get("set_aside", []) + [r for r in done["runs"]
                                                     if not reusable(r, s)]
            for r in runs:  # a SetFit run the old cap did not cut stands for the new cap
                if r["cap"] != s["check_cap"] or [r["dataset"], r["size"]] != s["check"]:
                    r["cap"] = s["cap_steps"]
            print(f"resuming: {len(runs)} of the {len(done['runs'])} runs in {path}")
    datasets = {n: read_dataset(n, args.quick) for n in ("sst2", "emotion")}
    for data in datasets.values():
        gold = [y for _, y in data["eval"]]
        data["majority"] = 100 * max(gold.count(y) for y in set(gold)) / len(gold)
    units = plan(seeds, full_seeds, s)
    sizes = s["sizes"] + ["full"]

    def write() -> None:
        picture = figure(runs, datasets, sizes, s["cap_steps"], name)
        parts = []
        for dataset, data in datasets.items():
            rows, verdicts = cell_rows(runs, dataset, sizes, s["cap_steps"])
            if rows:
                parts.append(f"### {dataset}: accuracy on {data['eval_name']} "
                             f"({len(data['eval']):,} examples; majority class "
                             f"{data['majority']:.2f})\n\n" + format_table(rows))
            parts.append(verdict(dataset, verdicts, data["majority"]))
        checks = cap_rows(runs + set_aside, s["cap_steps"])
        if checks:
            parts.append("### What the cap costs: SetFit cells run at another cap too (same "
                         "seeds and examples)\n\n" + format_table(checks))
        cap, full_steps = s["cap_steps"], s["full_steps"]
        text = (
            f"all-MiniLM-L6-v2 on SST-2 (scored on {len(datasets['sst2']['eval']):,} sentences of "
            f"its dev set) and Emotion (scored on {len(datasets['emotion']['eval']):,} tweets of "
            f"its test set). For every size and seed both methods train on exactly the "
            f"same examples, drawn per class with a generator seeded by the seed (`sample_shots`)."
            f" **SetFit**: `train_setfit` with setfit's defaults (oversampled pairs, batch 16, one "
            f"epoch, lr 2e-5, cosine loss, logistic-regression head on all the drawn examples), "
            f"the contrastive phase capped at {cap} steps ({cap * 16:,} pairs, "
            f"`SetFitConfig(max_steps={cap})`). **Fine-tune**: `minift.run.recipes.finetune`, fixed "
            f"in advance: lr {FT['lr']:.0e}, batch {FT['batch_size']}, warmup 10% and linear decay,"
            f" weight decay {FT['weight_decay']}, max length {FT['max_length']}, "
            f"max({s['ft_min_steps']} steps, {s['ft_min_epochs']} epochs); no model selection: the recipe "
            f"evaluates once, at the last step, on the training examples (at most "
            f"{s['train_dev']}), "
            f"and the evaluation set is its `test=` file, scored once after training. **Full "
            f"set**: seeds {full_seeds}; the fine-tune capped at {full_steps} steps "
            f"({full_steps * FT['batch_size']:,} sentences); SetFit's contrastive phase on the "
            f"{s['full_body_size']}-a-class draw of the "
            f"seed (capped the same), its logistic regression on the whole training set. "
            f"Accuracy in points, mean ± std over seeds; the paired difference is SetFit minus "
            f"fine-tune on the same seed (same examples) ± its standard error; 'ahead' below "
            f"means a paired difference beyond two standard errors. CPU s: the median CPU "
            f"seconds of a run (one torch thread; loading, training and scoring)"
            + (f"; figure: `{picture.relative_to(RESULTS.parent.parent)}`" if picture else "")
            + ".\n\n" + "\n\n".join(p for p in parts if p) + "\n")
        report("claims_setfit", device, args.quick,
               {"settings": s, "seeds": seeds, "full_seeds": full_seeds,
                "majority": {n: d["majority"] for n, d in datasets.items()}, "runs": runs,
                "set_aside": set_aside},
               text, "SetFit against fine-tuning with few labels: learning curves")

    if args.write_only:
        write()
        return
    finished = {key((r["dataset"], r["size"], r["seed"], r["method"], r["cap"])) for r in runs}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for dataset, data in datasets.items():
            (folder / dataset).mkdir()
            write_tsv(folder / dataset / "eval.tsv", data["eval"])
        for unit in units:
            if key(unit) in finished:
                continue
            dataset, size, seed, method, cap = unit
            data = datasets[dataset]
            examples = draw(data, size, seed)
            cpu = time.process_time()
            if method == "setfit":
                result = run_setfit(data, examples, size, seed, cap, s, args.device)
            else:
                result = run_finetune(examples, size == "full", seed, folder / dataset, s,
                                      args.device)
            runs.append({"dataset": dataset, "size": size, "seed": seed, "method": method,
                         "cap": cap, "examples": len(examples), **result,
                         "cpu_seconds": time.process_time() - cpu})
            print(f"{key(unit)}: {result['accuracy']:.2f} ({runs[-1]['cpu_seconds']:.0f} CPU s, "
                  f"{time.strftime('%H:%M:%S')})", flush=True)
            write()
    write()


if __name__ == "__main__":
    main()
