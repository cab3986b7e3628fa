"""Extractive question answering: minift vs transformers on SQuAD v1.1, same windows and batches.

Question: does ``minift qa`` reach the exact match and F1 of transformers'
``BertForQuestionAnswering`` trained the same way? Only the SQuAD dev set is available here, so it
is split by article (``minift.tasks.qa.split_by_article``, seed 0): ``--dev-articles`` whole articles
are the held-out set, the rest the training pool, no paragraph in both; each seed trains on a
seeded subset of ``--train-questions`` of the pool (the subset ``minift qa --limit-train`` takes).
MiniLM (all-MiniLM-L6-v2) is fine-tuned by ``minift.run.recipes.qa`` and by a plain loop over
transformers' ``BertForQuestionAnswering`` with torch's AdamW, transformers' weight-decay grouping,
linear warmup and decay, gradient clipping at 1.0, on the very same windows and batches (same
subset, same length-grouped order, same seed). Scored with the official v1.1 EM / F1, in points.

    python benchmarks/qa_squad.py              # the full run (see the results file for its time)
    python benchmarks/qa_squad.py --quick      # a smoke test: tiny subsets, one seed

The results are rewritten after every seed, and a rerun of the same command keeps the seeds the
results file already holds for the same settings (it goes on where a stopped run ended).
On a crowded machine (more busy processes than cores) ``--threads 1`` is much faster than
torch's default of one thread a core; each seed records the threads it ran with.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from speed_common import RESULTS, data_dir, machine, reference_adamw, write_report
from transformers import BertForQuestionAnswering, get_linear_schedule_with_warmup

from minift.core.metrics import format_table
from minift.data.tokenizer import Tokenizer
from minift.fast.cpu_kernels import cpu_model
from minift.hf.checkpoint import resolve_model_dir
from minift.run.recipes import qa as minift_qa
from minift.tasks import qa
from minift.tasks.qa import qa_predictions


def split(squad_file: Path, dev_articles: int, train_questions: int, seed: int):
    """(train subset, dev): as ``minift qa --squad --dev-articles --limit-train`` takes them."""
    pool, dev = qa.split_by_article(qa.read_squad(squad_file), dev_articles, seed=0)
    if train_questions < len(pool):
        keep = sorted(random.Random(seed).sample(range(len(pool)), train_questions))
        pool = [pool[i] for i in keep]
    return pool, dev


def reference_qa(*, squad_file, dev_articles, train_questions, epochs, lr, batch_size,
                 max_length, doc_stride, seed, device, warmup_ratio=0.1, weight_decay=0.01,
                 max_grad_norm=1.0):
    """transformers' model on minift's windows and batches; returns dev scores and seconds."""
    folder = resolve_model_dir("minilm")
    train, dev = split(squad_file, dev_articles, train_questions, seed)
    tokenizer = Tokenizer.from_pretrained(folder)
    train_windows, train_set, dev_windows, dev_set = qa.train_and_dev_windows(
        train, dev, tokenizer, max_length=max_length, doc_stride=doc_stride)
    torch.manual_seed(seed)
    model = BertForQuestionAnswering.from_pretrained(folder).to(device)
    opt = reference_adamw(model, lr, weight_decay)
    total = -(-len(train_set) // batch_size) * epochs
    sched = get_linear_schedule_with_warmup(opt, math.ceil(warmup_ratio * total), total)
    start = time.perf_counter()
    best = None
    for epoch in range(epochs):
        model.train()
        for batch in train_set.batches(batch_size,
                                       generator=torch.Generator().manual_seed(seed + epoch)):
            loss = model(**{k: v.to(device) for k, v in batch.items()}).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
            opt.step()
            sched.step()
            opt.zero_grad()
        answers = qa_predictions(model, dev, dev_windows, dev_set, batch_size, device)
        scores = qa.squad_scores({k: v[0].text for k, v in answers.items()}, dev)
        if best is None or scores["f1"] > best["f1"]:  # the best epoch, as minift keeps
            best = scores
    return best, time.perf_counter() - start, len(train_windows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny subsets, one seed")
    parser.add_argument("--seeds", type=int, nargs="+", help="default: 0 1 2 (quick: 0)")
    parser.add_argument("--train-questions", type=int, help="default 2000 (quick: 48)")
    parser.add_argument("--dev-articles", type=int, default=1, help="held-out articles")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=384)
    parser.add_argument("--doc-stride", type=int, default=128)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int,
                        help="torch threads (default: torch's); 1 on a crowded machine")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    q = args.quick
    seeds = args.seeds or ([0] if q else [0, 1, 2])
    train_questions = args.train_questions or (48 if q else 2000)
    dev_articles = args.dev_articles
    squad_file = data_dir() / "squad" / "dev-v1.1.json"
    device = torch.device(args.device)
    common = dict(dev_articles=dev_articles, epochs=args.epochs, lr=args.lr,
                  batch_size=args.batch_size, max_length=args.max_length,
                  doc_stride=args.doc_stride)
    _, dev = split(squad_file, dev_articles, train_questions, 0)
    per_seed = finished_seeds(result_name(q, device), seeds, common, train_questions)
    for seed in seeds:
        if any(r["seed"] == seed for r in per_seed):
            print(f"seed {seed}: in the results file already", flush=True)
            continue
        with tempfile.TemporaryDirectory() as out:
            start = time.perf_counter()
            ours = minift_qa(model="minilm", out=out, squad=str(squad_file),
                             limit_train=train_questions, seed=seed, progress=False,
                             device=str(device), **common)
            ours_s = time.perf_counter() - start
        ref, ref_s, windows = reference_qa(squad_file=squad_file, train_questions=train_questions,
                                           seed=seed, device=device, **common)
        per_seed.append({"seed": seed, "train_windows": windows,
                         "threads": torch.get_num_threads(),
                         "minift": {**ours["dev"], "seconds": ours_s,
                                    "train_seconds": ours["train"]["seconds"]},
                         "reference": {**ref, "seconds": ref_s}})
        print(f"seed {seed}: minift EM {ours['dev']['exact_match']:.2f} F1 "
              f"{ours['dev']['f1']:.2f} ({ours_s:.0f} s); transformers EM "
              f"{ref['exact_match']:.2f} F1 {ref['f1']:.2f} ({ref_s:.0f} s)", flush=True)

        # written after every seed, so a run stopped halfway keeps the seeds it finished
        report(per_seed, seeds, q, device, dev, dev_articles, train_questions, common, args)


def result_name(quick: bool, device: torch.device) -> str:
    return "qa_squad" + ("_" + device.type if device.type != "cpu" else "") + (
        "_quick" if quick else "")


def finished_seeds(name: str, seeds, common: dict, train_questions: int) -> list[dict]:
    """The seeds of ``seeds`` that the results file already holds for the same settings."""
    path = RESULTS / f"{name}.json"
    if not path.exists():
        return []
    done = json.loads(path.read_text(encoding="utf-8"))
    if (done.get("settings") != common
            or done.get("split", {}).get("train_questions") != train_questions):
        return []  # other settings: start over (the file is rewritten after the first seed)
    return [r for r in done["per_seed"] if r["seed"] in seeds]


def report(per_seed, seeds, q, device, dev, dev_articles, train_questions, common, args) -> None:
    """Write the JSON and markdown results of the seeds done so far."""

    def stat(side: str, key: str) -> str:
        values = [r[side][key] for r in per_seed]
        if len(values) == 1:
            return f"{values[0]:.2f}"
        return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"

    rows = [{"": side_name, "exact match": stat(side, "exact_match"), "F1": stat(side, "f1"),
             "seconds a run (median)": statistics.median(r[side]["seconds"] for r in per_seed)}
            for side, side_name in (("minift", "minift"), ("reference", "transformers"))]
    deltas = [r["minift"]["f1"] - r["reference"]["f1"] for r in per_seed]
    info = machine(device) | {"cpu_model": cpu_model()}
    info["processor"] = info["cpu_model"]
    done = [r["seed"] for r in per_seed]
    payload = {"machine": info, "quick": q, "seeds": seeds, "seeds_done": done,
               "split": {"file": "squad/dev-v1.1.json", "by": "article", "split_seed": 0,
                         "dev_articles": dev_articles, "dev_questions": len(dev),
                         "train_questions": train_questions,
                         "note": "training: a seeded subset (the seed of the run) of the other "
                                 "articles' questions; dev: all questions of the held-out "
                                 "articles"},
               "settings": common, "per_seed": per_seed, "f1_deltas": deltas}
    table = format_table(rows, float_format=".1f")
    delta = (f"minift - transformers F1 per seed: {', '.join(f'{d:+.2f}' for d in deltas)}"
             + (f" (mean {statistics.mean(deltas):+.2f}, std {statistics.stdev(deltas):.2f})"
                if len(deltas) > 1 else ""))
    text = (f"SQuAD v1.1 dev split by article (seed 0): {dev_articles} held-out articles, "
            f"{len(dev)} dev questions; each seed trains on its own seeded subset of "
            f"{train_questions} questions of the other articles ({args.epochs} epoch(s), lr "
            f"{args.lr}, batch {args.batch_size}, max length {args.max_length}, stride "
            f"{args.doc_stride}, warmup 0.1, weight decay 0.01). Seeds done {done} of {seeds}; "
            f"mean ± std "
            f"(sample) over seeds; exact match and F1 in points.\n\n{table}\n\n{delta}\n\n"
            f"Torch threads per seed: "
            f"{', '.join(str(r.get('threads', '?')) for r in per_seed)}. The seconds are wall "
            f"time on a machine other jobs may have shared: read them as rough.\n")
    write_report(result_name(q, device), payload, text, "Question answering on SQuAD: minift vs transformers",
                 f"python benchmarks/qa_squad.py {' '.join(sys.argv[1:])}")


if __name__ == "__main__":
    main()
