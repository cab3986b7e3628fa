"""Freezing: how much of the encoder to fine-tune, each setting at its own learning rate.

Question (issue #19, claim 2): what does training the head only, the last 1, 2 or 3 blocks, or
all six blocks of all-MiniLM-L6-v2 give on SST-2, and what does each cost? A frozen encoder needs
a far higher learning rate for its head than full fine-tuning does (lesson 03), so comparing the
settings at one rate measures the rate, not the freezing. Here each setting gets its own:

1. the rate is chosen on held-out data that is not the dev set: a fixed slice of
   ``HELDOUT`` sentences of SST-2's training set (seeded, ``HELDOUT_SEED``), kept out of every
   training subset; each rate of the setting's small grid trains once (seed 0) and the best
   held-out accuracy wins; when the winner is the grid's largest (or smallest) rate, the grid
   grows by another factor of 3 in that direction (at most ``EXTEND`` times), so that the chosen
   rate is not just the edge of a grid that was too narrow;
2. at that rate, the setting trains with ``SEEDS`` (each seed its own training subset of the rest
   of SST-2 train, and its own head draw) and is scored on all 872 SST-2 dev sentences.

Every run is ``minift.run.recipes.finetune`` with ``freeze=...``: the same subset size, batches,
steps (one epoch), max length 64, warmup and decay. The table reports dev accuracy (mean ± std),
trainable parameters, AdamW's state (the bytes of its two moments and step counters, measured on
a real optimizer after one step) and the training seconds of a run (the loop's own clock; the
evaluations are the same for all settings and left out). Results are written after every run; a
figure (dev accuracy against trained blocks, every seed a dot) when matplotlib is there. A rerun
with the same subset size goes on from the results file: a run already there (same setting, rate,
seed and evaluation set) is not repeated, so a stopped run resumes and ``--seeds`` adds seeds.

    python benchmarks/claims_freezing.py            # the full run (see the results file)
    python benchmarks/claims_freezing.py --quick    # a smoke test: tiny subsets, 2 seeds
"""

from __future__ import annotations

import json
import random
import statistics
import tempfile
import time
from pathlib import Path

import torch
from claims_common import SEEDS, claims_parser, mean_std, paired, parse, report
from speed_common import RESULTS, data_dir, result_name

from minift.core.freeze import freeze
from minift.core.metrics import format_table
from minift.core.optim import make_optimizer
from minift.data.readers import read_examples, task_files
from minift.fast.unpad import speed_up
from minift.hf.checkpoint import resolve_model_dir
from minift.run import plots
from minift.run.recipes import finetune
from minift.tasks.classify import SequenceClassifier

HELDOUT, HELDOUT_SEED = 500, 1000
# The settings in order of trained blocks, each with its learning-rate grid. The head alone is a
# convex problem on fixed features and takes rates near 1e-2 (lesson 03); the more of the encoder
# trains, the lower the rate it tolerates.
GRIDS = {
    "head": [3e-3, 1e-2, 3e-2],
    "last-1": [1e-4, 3e-4, 1e-3],
    "last-2": [1e-4, 3e-4, 1e-3],
    "last-3": [1e-4, 3e-4, 1e-3],
    "none": [5e-5, 1e-4, 3e-4],
}
BLOCKS = {"head": 0, "last-1": 1, "last-2": 2, "last-3": 3, "none": 6}
EXTEND = 2


def split_files(folder: Path) -> tuple[Path, Path]:
    """SST-2 train split into ``pool.tsv`` (the training pool) and ``heldout.tsv`` (the fixed
    held-out slice that chooses the rates), written in ``folder``."""
    train_path, _, text_col, _, label_col = task_files("sst2", data_dir())
    examples = read_examples(train_path, text_col=text_col, label_col=label_col)
    held = set(random.Random(HELDOUT_SEED).sample(range(len(examples)), HELDOUT))
    files = folder / "pool.tsv", folder / "heldout.tsv"
    for path, keep in zip(files, (lambda i: i not in held, lambda i: i in held), strict=True):
        rows = [f"{e.text}\t{e.label}\n" for i, e in enumerate(examples) if keep(i)]
        path.write_text("sentence\tlabel\n" + "".join(rows), encoding="utf-8")
    return files


def adamw_state_bytes(mode: str) -> tuple[int, int]:
    """(trainable parameters, bytes of AdamW's state) of ``freeze=mode``, measured: one step of
    minift's optimizer on zero gradients, then the size of every tensor it keeps."""
    model = speed_up(SequenceClassifier.from_pretrained(resolve_model_dir("minilm"), num_labels=2,
                                                        pooling="pooler"))
    trainable, _ = freeze(model, mode)
    optimizer = make_optimizer(model, lr=1e-3)
    for p in model.parameters():
        if p.requires_grad:
            p.grad = torch.zeros_like(p)
    optimizer.step()
    state = sum(t.numel() * t.element_size() for s in optimizer.state.values()
                for t in s.values() if torch.is_tensor(t))
    return trainable, state


def run(mode: str, lr: float, seed: int, train: Path, dev: Path, limit: int,
        device: str) -> dict:
    """One fine-tune on ``limit`` sentences of ``train`` (the pool), scored on ``dev``."""
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        metrics = finetune(model="minilm", out=out, train=str(train), dev=str(dev),
                           text_col="sentence", label_col="label", limit_train=limit, epochs=1,
                           lr=lr, batch_size=32, max_length=64, freeze=mode, seed=seed,
                           pooling="pooler",  # the head its results were measured with
                           progress=False, device=device)
    return {"freeze": mode, "lr": lr, "seed": seed,
            "scored_on": "held-out" if dev.name == "heldout.tsv" else "dev",
            "accuracy": 100 * metrics["dev"]["accuracy"],
            "train_seconds": metrics["train"]["seconds"], "seconds": time.perf_counter() - start,
            "steps": metrics["train"]["steps"]}


def key(mode: str, lr: float, seed: int, scored_on: str) -> tuple:
    """What identifies a run in the results file (the rate rounded: 3e-3 * 3 is 0.009000...01)."""
    return mode, round(lr, 12), seed, scored_on


def summary(runs: list[dict], chosen: dict[str, float], costs: dict[str, tuple]) -> str:
    """The sweep on held-out and the dev results at the chosen rates, as markdown."""
    sweep = [{"freeze": r["freeze"], "lr": f"{r['lr']:.2g}", "held-out accuracy": r["accuracy"]}
             for r in runs if r["scored_on"] == "held-out"]
    rows = []
    dev = {(r["freeze"], r["seed"]): r["accuracy"] for r in runs if r["scored_on"] == "dev"}
    for mode, lr in chosen.items():
        done = [r for r in runs if r["scored_on"] == "dev" and r["freeze"] == mode]
        if not done:
            continue
        trainable, state = costs[mode]
        both = [r["seed"] for r in done if ("none", r["seed"]) in dev]  # seeds all six ran too
        rows.append({
            "freeze": mode, "trained blocks": BLOCKS[mode], "lr (chosen)": f"{lr:.2g}",
            "seeds": len(done), "dev accuracy": mean_std([r["accuracy"] for r in done]),
            "minus all six (paired)": paired([dev[mode, s] for s in both],
                                             [dev["none", s] for s in both]) if both else "",
            "trainable parameters": f"{trainable:,}", "AdamW state (bytes)": f"{state:,}",
            "training s a run (median)": statistics.median(r["train_seconds"] for r in done),
        })
    return (format_table(rows, float_format=".2f") + "\n\nThe learning-rate sweep (seed 0, "
            "scored on the held-out slice of SST-2 train):\n\n"
            + format_table(sweep, float_format=".2f"))


def draw(runs: list[dict], chosen: dict[str, float], name: str) -> Path | None:
    """Dev accuracy against trained blocks: every seed a dot, the mean a line."""
    if not plots.available():
        return None
    fig, ax = plots.figure(7, 4.2)
    modes = [m for m in chosen if any(r["freeze"] == m and r["scored_on"] == "dev" for r in runs)]
    means = []
    for mode in modes:
        scores = [r["accuracy"] for r in runs if r["freeze"] == mode and r["scored_on"] == "dev"]
        ax.scatter([BLOCKS[mode]] * len(scores), scores, color="C0", alpha=0.5, s=20)
        means.append(statistics.mean(scores))
    ax.plot([BLOCKS[m] for m in modes], means, color="C0", marker="o", label="mean over seeds")
    for mode, mean in zip(modes, means, strict=True):
        ax.annotate(f"lr {chosen[mode]:.2g}", (BLOCKS[mode], mean), textcoords="offset points",
                    xytext=(4, -14), fontsize=9)
    ax.axhline(50.92, color="grey", linestyle=":", label="majority label (50.92)")
    ax.set_xlabel("encoder blocks trained (0: the head only; 6: all)")
    ax.set_ylabel("SST-2 dev accuracy (points)")
    ax.set_title("Freezing all-MiniLM-L6-v2, each setting at its own learning rate")
    ax.legend(loc="lower right")
    return plots.save(fig, RESULTS / f"{name}.png")


def main() -> None:
    parser = claims_parser(__doc__)
    parser.add_argument("--limit-train", type=int, help="training sentences a run (default 2000)")
    args = parse(parser)
    seeds = args.seeds or ([0, 1] if args.quick else SEEDS)
    limit = args.limit_train or (64 if args.quick else 2000)
    grids = {mode: grid[:2] if args.quick else grid for mode, grid in GRIDS.items()}
    device = torch.device(args.device)
    name = result_name("claims_freezing", device, args.quick)
    costs = {mode: adamw_state_bytes(mode) for mode in grids}
    runs: list[dict] = []
    chosen: dict[str, float] = {}
    done: dict[tuple, dict] = {}  # the runs of the results file, when its settings are these
    path = RESULTS / f"{name}.json"
    if path.is_file():
        old = json.loads(path.read_text(encoding="utf-8"))
        if [old.get(k) for k in ("limit_train", "heldout", "heldout_seed")] == [
                limit, HELDOUT, HELDOUT_SEED]:
            done = {key(r["freeze"], r["lr"], r["seed"], r["scored_on"]): r for r in old["runs"]}
            print(f"resuming: {len(done)} runs in {path}")

    def run_once(mode: str, lr: float, seed: int, train: Path, dev: Path) -> dict:
        scored_on = "held-out" if dev.name == "heldout.tsv" else "dev"
        found = done.get(key(mode, lr, seed, scored_on))
        return found or run(mode, lr, seed, train, dev, limit, args.device)

    def write() -> None:
        figure = draw(runs, chosen, name)
        text = (f"all-MiniLM-L6-v2 fine-tuned on SST-2 with `minift.run.recipes.finetune(freeze=...)`"
                f": {limit} training sentences a run (a seeded subset, the run's seed, of SST-2 "
                f"train less a fixed held-out slice of {HELDOUT}), one epoch, batch 32, max "
                f"length 64, AdamW with warmup 10% and linear decay, weight decay 0.01. Each "
                f"setting's learning rate is the best of its grid on the held-out slice (seed "
                f"0); then seeds {seeds} at that rate, scored on all 872 dev sentences (majority "
                f"label: 50.92). Accuracy in points, mean ± std over seeds; 'minus all six': the "
                f"difference to training all six blocks, paired by seed (same training subset), "
                f"± its standard error. AdamW state: the "
                f"bytes of the optimizer's tensors after one step (two fp32 moments a trainable "
                f"parameter, and a step counter a tensor). Training seconds: the loop's clock, "
                f"on this machine shared with other jobs"
                + (f"; figure: `{figure.relative_to(RESULTS.parent.parent)}`" if figure else "")
                + f".\n\n{summary(runs, chosen, costs)}\n")
        report("claims_freezing", device, args.quick,
               {"seeds": seeds, "limit_train": limit, "heldout": HELDOUT,
                "heldout_seed": HELDOUT_SEED, "grids": grids, "chosen_lr": chosen,
                "costs": {m: {"trainable": t, "adamw_state_bytes": b}
                          for m, (t, b) in costs.items()}, "runs": runs},
               text, "Freezing: what to fine-tune, each setting at its own learning rate")

    with tempfile.TemporaryDirectory() as folder:
        pool, heldout = split_files(Path(folder))
        dev = task_files("sst2", data_dir())[1]
        for mode, grid in grids.items():
            grid, sweep = list(grid), []
            for _ in range(EXTEND + 1):
                for lr in grid[len(sweep):]:
                    sweep.append(run_once(mode, lr, 0, pool, heldout))
                    print(f"{mode} lr {lr:.2g} held-out: {sweep[-1]['accuracy']:.2f}", flush=True)
                best = max(sweep, key=lambda r: r["accuracy"])["lr"]
                if best == max(grid):
                    grid.append(best * 3)
                elif best == min(grid):
                    grid.append(best / 3)
                else:
                    break
            runs += sweep
            chosen[mode] = best
            grids[mode] = grid[:len(sweep)]  # the rates tried, in the order they were
            for seed in seeds:
                runs.append(run_once(mode, chosen[mode], seed, pool, dev))
                print(f"{mode} lr {chosen[mode]:.2g} seed {seed} dev: {runs[-1]['accuracy']:.2f} "
                      f"({runs[-1]['seconds']:.0f} s)", flush=True)
                write()


if __name__ == "__main__":
    main()
