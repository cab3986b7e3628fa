"""Fine-tuning results: minift vs the transformers recipe, same weights, data and batches.

Question: does minift's fine-tuning reach the reference's dev accuracy, and how long does it take?
For SST-2 (a fixed seeded 3,000-sentence subset of the training set, one epoch, max length 64) the
published MiniLM checkpoint is fine-tuned three ways (full, last 2 blocks, head only); MRPC (a
fixed seeded 1,500-pair subset, two epochs, max length 128) in full. The sizes fit a 2-core CPU
shared with other work; raise them on a real machine. Each run is done
twice in one process: by ``minift.run.recipes.finetune`` and by transformers' ``BertForSequenceClassification``
trained with torch's AdamW, transformers' decay grouping and linear warmup schedule, on the very
same batches (same subset, same length-grouped order, same seed). Writes JSON and a markdown table.

    python benchmarks/finetune_glue.py                 # the full run (about 40 CPU-minutes)
    python benchmarks/finetune_glue.py --quick         # minutes: tiny subsets, a smoke test
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import transformers
from speed_common import reference_adamw
from transformers import BertForSequenceClassification, get_linear_schedule_with_warmup

from minift.core.labels import LabelVocab
from minift.core.metrics import accuracy, format_table, precision_recall_f1
from minift.data.readers import encode_labels, read_examples, task_files
from minift.data.tokenizer import Tokenizer
from minift.fast.cpu_kernels import cpu_model
from minift.hf.checkpoint import resolve_model_dir
from minift.run.recipes import finetune
from minift.tasks.classify import ClassificationDataset

HERE = Path(__file__).resolve().parent


def reference_finetune(*, task, limit_train, epochs, lr, batch_size, max_length, freeze, seed,
                       warmup_ratio=0.1, weight_decay=0.01, max_grad_norm=1.0, keep="best"):
    """The transformers recipe on the batches minift uses; returns dev metrics and seconds.

    ``keep="best"``: the dev metrics of the best epoch (as ``minift finetune`` keeps); ``"last"``:
    dev is scored once, after the last epoch (no model selection on dev)."""
    folder = resolve_model_dir("minilm")
    train, dev, text_col, pair_col, label_col = task_files(task)
    cols = dict(text_col=text_col, pair_col=pair_col, label_col=label_col)
    train_ex = read_examples(train, **cols)
    if limit_train is not None and limit_train < len(train_ex):  # the subset minift takes
        keep = sorted(random.Random(seed).sample(range(len(train_ex)), limit_train))
        train_ex = [train_ex[i] for i in keep]
    dev_ex = read_examples(dev, **cols)
    vocab = LabelVocab.from_examples(train_ex)
    tok = Tokenizer.from_pretrained(folder)
    train_set = ClassificationDataset(train_ex, tok, max_length=max_length,
                                      label_ids=encode_labels(train_ex, vocab))
    dev_set = ClassificationDataset(dev_ex, tok, max_length=max_length,
                                    label_ids=encode_labels(dev_ex, vocab))
    torch.manual_seed(seed)
    model = BertForSequenceClassification.from_pretrained(folder, num_labels=len(vocab))
    n_layers = model.config.num_hidden_layers
    for name, p in model.named_parameters():
        if freeze == "head":
            p.requires_grad_(name.startswith("classifier."))
        elif freeze.startswith("last-"):
            keep = [f"bert.encoder.layer.{i}." for i in range(n_layers - int(freeze[5:]), n_layers)]
            p.requires_grad_(name.startswith((*keep, "bert.pooler.", "classifier.")))
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    opt = reference_adamw(model, lr, weight_decay)
    steps_per_epoch = -(-len(train_set) // batch_size)
    total = steps_per_epoch * epochs
    sched = get_linear_schedule_with_warmup(opt, int(warmup_ratio * total), total)
    start = time.perf_counter()
    best = None
    for epoch in range(epochs):
        model.train()
        for batch in train_set.batches(batch_size,
                                       generator=torch.Generator().manual_seed(seed + epoch)):
            loss = model(**batch).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_([p for _, p in params], max_grad_norm)
            opt.step()
            sched.step()
            opt.zero_grad()
        if keep == "last" and epoch + 1 < epochs:
            continue
        metrics = evaluate_reference(model, dev_set, batch_size, len(vocab))
        if best is None or metrics["accuracy"] > best["accuracy"]:  # best epoch, as minift
            best = metrics
    return best, time.perf_counter() - start


@torch.no_grad()
def evaluate_reference(model, dev_set, batch_size, num_labels):
    model.eval()
    gold, pred = [], []
    for batch in dev_set.batches(batch_size, generator=None, shuffle=False):
        logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
        gold += batch["labels"].tolist()
        pred += logits.argmax(-1).tolist()
    if num_labels == 2:
        f1 = precision_recall_f1(gold, pred, average="binary", pos_label=1)["f1"]
    else:
        f1 = precision_recall_f1(gold, pred, average="macro", labels=list(range(num_labels)))["f1"]
    return {"accuracy": accuracy(gold, pred), "f1": f1}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny subsets: a smoke test")
    parser.add_argument("--out", default=str(HERE / "results"), help="folder for JSON + markdown")
    parser.add_argument("--only", help="one run, e.g. sst2:none (default: all runs)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0],
                        help="seeds; with several, each row reports mean and std over them")
    args = parser.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    q = args.quick
    runs = [  # (task, freeze, train subset, epochs, lr, max_length)
        ("sst2", "none", 200 if q else 3000, 1, 5e-5, 64),
        ("sst2", "last-2", 200 if q else 3000, 1, 1e-4, 64),
        ("sst2", "head", 200 if q else 3000, 1, 1e-3, 64),
        ("mrpc", "none", 200 if q else 1500, 1 if q else 2, 5e-5, 128),
    ]
    if args.only:
        runs = [r for r in runs if f"{r[0]}:{r[1]}" == args.only]
        if not runs:
            parser.error(f"--only {args.only!r} names no run (e.g. sst2:none, mrpc:none)")
    batch_size = 32
    rows, records = [], []
    for task, freeze, limit, epochs, lr, max_length in runs:
        per_seed = []
        for seed in args.seeds:
            common = dict(task=task, limit_train=limit, epochs=epochs, lr=lr,
                          batch_size=batch_size, max_length=max_length, freeze=freeze, seed=seed)
            with tempfile.TemporaryDirectory() as out:
                start = time.perf_counter()
                ours = finetune(model="minilm", out=out, progress=False, pooling="pooler",
                                **common)  # transformers' head: the pooler
                ours_s = time.perf_counter() - start
            ref, ref_s = reference_finetune(**common)
            per_seed.append({"seed": seed, "minift": {**ours["dev"], "seconds": ours_s,
                                                      "train_seconds": ours["train"]["seconds"]},
                             "reference": {**ref, "seconds": ref_s}})
        record = {"task": task, "freeze": freeze, "train_examples": ours["train"]["examples"],
                  "epochs": epochs, "lr": lr, "max_length": max_length, "per_seed": per_seed}
        records.append(record)

        def stat(side, key, per_seed=per_seed):
            values = [100 * r[side][key] for r in per_seed]
            if len(values) == 1:
                return f"{values[0]:.2f}"
            return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"

        deltas = [100 * (r["minift"]["accuracy"] - r["reference"]["accuracy"]) for r in per_seed]
        delta = statistics.mean(deltas)
        # The standard error of the mean paired difference: the noise left in "Δ acc".
        delta_se = statistics.stdev(deltas) / len(deltas) ** 0.5 if len(deltas) > 1 else 0.0
        ratio = statistics.median(r["minift"]["train_seconds"] / r["reference"]["seconds"]
                                  for r in per_seed)
        rows.append({
            "task": task, "freeze": freeze, "train": record["train_examples"],
            "seeds": len(per_seed),
            "minift acc": stat("minift", "accuracy"), "ref acc": stat("reference", "accuracy"),
            "minift F1": stat("minift", "f1"), "ref F1": stat("reference", "f1"),
            "Δ acc (pts, mean)": delta, "Δ std err": delta_se,
            "time ratio (minift/ref)": ratio,
        })
        print(format_table(rows[-1:], float_format=".2f"), flush=True)
    machine = {"platform": platform.platform(), "processor": cpu_model(),
               "torch": torch.__version__, "transformers": transformers.__version__,
               "threads": torch.get_num_threads(), "quick": q}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = "finetune_glue_quick" if q else "finetune_glue"
    if args.only:
        name += "_" + args.only.replace(":", "_") + f"_{len(args.seeds)}seeds"
    (out / f"{name}.json").write_text(json.dumps({"machine": machine, "runs": records},
                                                 indent=2) + "\n")
    table = format_table(rows, float_format=".2f")
    (out / f"{name}.md").write_text(
        f"# Fine-tuning all-MiniLM-L6-v2: minift vs transformers\n\n"
        f"`python benchmarks/finetune_glue.py {' '.join(sys.argv[1:])}` on {machine['platform']}, "
        f"torch {machine['torch']}, transformers {machine['transformers']}, "
        f"{machine['threads']} threads. Dev-set accuracy and F1 (binary, positive class) in "
        f"points; time ratio = minift training seconds / reference training seconds (the "
        f"reference loop evaluates once an epoch like minift).\n\n{table}\n")
    print(table)


if __name__ == "__main__":
    main()
