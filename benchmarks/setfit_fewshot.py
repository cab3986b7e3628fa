"""Few-shot SetFit: minift vs the setfit library, same shots, base model, pairs and epochs.

Question: with 8 or 16 labelled sentences per class, does minift's SetFit reach the setfit
library's accuracy, and how long does its training take? Settings: SST-2 with 8 and 16 shots per
class, and a dataset with more classes (SST-5 by default, or Emotion) with 8. For each seed the
same examples are drawn for both (`minift.tasks.setfit.sample_shots`, seeded with the seed), and both
libraries train from the published all-MiniLM-L6-v2 with setfit's defaults: oversampled pairs
(the same number for both; the pairs are setfit's for seed 42 and reshuffled by the seed in
minift), batches of 16 pairs, one epoch, AdamW at 2e-5 with 10% warmup, the cosine-similarity
loss, then a logistic-regression head (scikit-learn in setfit, L-BFGS in minift). Each seed runs
the two back to back, alternating which goes first. Model loading is not timed; training is
(pairs, contrastive phase, head); evaluation is not. Accuracy is on a fixed seeded subset of
each dev set, the same for both.

    python benchmarks/setfit_fewshot.py            # the full run: ~42 min wall on the shared
                                                   # 2-core box at load ~11 (~40% of a core)
    python benchmarks/setfit_fewshot.py --quick    # a smoke run of a few minutes
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import tempfile
import time
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")

import torch  # noqa: E402

from minift.core.contrastive import contrastive_pairs
from minift.core.metrics import format_table
from minift.data.readers import read_examples, read_semicolon_examples
from minift.data.tokenizer import Tokenizer
from minift.fast.cpu_kernels import cpu_model
from minift.fast.unpad import speed_up
from minift.hf.checkpoint import load_bert, resolve_model_dir
from minift.tasks.setfit import SetFitConfig, sample_shots, train_setfit

HERE = Path(__file__).resolve().parent


def load_dataset(name: str, data_dir: Path):
    """(train examples, dev examples) of sst2, sst5 or emotion in MINIFT_DATA."""
    if name == "sst2":
        cols = dict(text_col="sentence", label_col="label")
        return (
            read_examples(data_dir / "sst2" / "train.tsv", **cols),
            read_examples(data_dir / "sst2" / "dev.tsv", **cols),
        )
    if name == "sst5":
        cols = dict(text_col="text", label_col="label")
        return (
            read_examples(data_dir / "sst5" / "train.jsonl", **cols),
            read_examples(data_dir / "sst5" / "dev.jsonl", **cols),
        )
    if name == "emotion":
        return (
            read_semicolon_examples(data_dir / "emotion" / "train.txt"),
            read_semicolon_examples(data_dir / "emotion" / "val.txt"),
        )
    raise ValueError(f"unknown dataset {name!r}: expected sst2, sst5 or emotion")


def run_minift(folder, tokenizer, texts, labels, names, dev_texts, seed):
    encoder = speed_up(load_bert(folder))
    start = time.perf_counter()
    model, stats = train_setfit(
        encoder, tokenizer, texts, labels, SetFitConfig(seed=seed), label_names=names, log=None
    )
    seconds = time.perf_counter() - start
    return model.predict(dev_texts), seconds, stats["pairs"]


def run_setfit(folder, texts, labels, dev_texts, seed):
    from datasets import Dataset
    from setfit import SetFitModel, Trainer, TrainingArguments

    model = SetFitModel.from_pretrained(str(folder))
    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(
            output_dir=out,
            batch_size=16,
            num_epochs=1,
            sampling_strategy="oversampling",
            seed=seed,
            show_progress_bar=False,
            report_to="none",
            save_strategy="no",
            logging_strategy="no",
        )
        trainer = Trainer(
            model=model,
            args=args,
            train_dataset=Dataset.from_dict({"text": texts, "label": labels}),
        )
        start = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - start
    return [str(p) for p in model.predict(dev_texts)], seconds


def summary(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value)."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: 1 seed, 4 and 2 shots, 40 dev sentences"
    )
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument(
        "--multiclass",
        choices=["emotion", "sst5"],
        default="sst5",
        help="the dataset with more than two classes (8 shots)",
    )
    parser.add_argument("--dev-size", type=int, default=500, help="fixed dev subset per dataset")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch intra-op threads for both libraries (default 1: on a shared "
        "2-core machine a second thread stalls whenever another process "
        "holds a core)",
    )
    parser.add_argument("--out", default=str(HERE / "results"), help="folder for JSON + markdown")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    import datasets
    import sentence_transformers
    import setfit
    import sklearn
    import transformers

    datasets.disable_progress_bars()
    seeds = 1 if args.quick else args.seeds
    dev_size = 40 if args.quick else args.dev_size
    settings = [("sst2", 8), ("sst2", 16), (args.multiclass, 8)]
    if args.quick:
        settings = [("sst2", 4), (args.multiclass, 2)]
    folder = resolve_model_dir("minilm")
    tokenizer = Tokenizer.from_pretrained(folder)
    data_dir = Path(os.environ.get("MINIFT_DATA") or HERE.parents[1] / "shared" / "data")
    cache, records, rows = {}, [], []
    for name, shots in settings:
        if name not in cache:
            train, dev = load_dataset(name, data_dir)
            keep = sorted(random.Random(0).sample(range(len(dev)), min(dev_size, len(dev))))
            cache[name] = train, [dev[i] for i in keep]
        train, dev = cache[name]
        dev_texts, dev_gold = [ex.text for ex in dev], [ex.label for ex in dev]
        names = sorted({ex.label for ex in train})
        runs = []
        for seed in range(seeds):
            chosen = sample_shots(
                [ex.label for ex in train], shots, torch.Generator().manual_seed(seed)
            )
            texts = [train[i].text for i in chosen]
            labels = [train[i].label for i in chosen]
            pairs = len(contrastive_pairs(labels))
            result = {"seed": seed, "pairs": pairs}
            order = ("minift", "setfit") if seed % 2 == 0 else ("setfit", "minift")
            for library in order:
                if library == "minift":
                    pred, seconds, ours_pairs = run_minift(
                        folder, tokenizer, texts, labels, names, dev_texts, seed
                    )
                    if ours_pairs != pairs:
                        raise RuntimeError(f"minift trained on {ours_pairs} pairs, not {pairs}")
                else:
                    pred, seconds = run_setfit(folder, texts, labels, dev_texts, seed)
                acc = sum(p == g for p, g in zip(pred, dev_gold, strict=True)) / len(dev_gold)
                result[library] = {"accuracy": acc, "train_seconds": seconds}
            runs.append(result)
            print(
                f"{name} {shots}-shot seed {seed}: {pairs} pairs; minift "
                f"{100 * result['minift']['accuracy']:.1f}% in "
                f"{result['minift']['train_seconds']:.1f} s, setfit "
                f"{100 * result['setfit']['accuracy']:.1f}% in "
                f"{result['setfit']['train_seconds']:.1f} s",
                flush=True,
            )
        ours_acc = summary([100 * r["minift"]["accuracy"] for r in runs])
        ref_acc = summary([100 * r["setfit"]["accuracy"] for r in runs])
        ours_s = summary([r["minift"]["train_seconds"] for r in runs])
        ref_s = summary([r["setfit"]["train_seconds"] for r in runs])
        ratios = [r["setfit"]["train_seconds"] / r["minift"]["train_seconds"] for r in runs]
        record = {
            "dataset": name,
            "shots": shots,
            "classes": len(names),
            "seeds": seeds,
            "dev_examples": len(dev),
            "pairs": runs[0]["pairs"],
            "epochs": 1,
            "minift": {
                "accuracy_mean": ours_acc[0],
                "accuracy_std": ours_acc[1],
                "train_seconds_mean": ours_s[0],
            },
            "setfit": {
                "accuracy_mean": ref_acc[0],
                "accuracy_std": ref_acc[1],
                "train_seconds_mean": ref_s[0],
            },
            "speedup_median": statistics.median(ratios),
            "accuracy_within_one_std": ours_acc[0] >= ref_acc[0] - ref_acc[1],
            "runs": runs,
        }
        records.append(record)
        rows.append(
            {
                "dataset": name,
                "shots": shots,
                "pairs": record["pairs"],
                "minift acc": f"{ours_acc[0]:.1f} ± {ours_acc[1]:.1f}",
                "setfit acc": f"{ref_acc[0]:.1f} ± {ref_acc[1]:.1f}",
                "minift train s": ours_s[0],
                "setfit train s": ref_s[0],
                "speedup (median)": record["speedup_median"],
            }
        )
        print(format_table(rows[-1:], float_format=".2f"), flush=True)
    machine = {
        "platform": platform.platform(),
        "processor": cpu_model(),
        "cpus": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "sentence_transformers": sentence_transformers.__version__,
        "setfit": setfit.__version__,
        "scikit_learn": sklearn.__version__,
        "quick": args.quick,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = "setfit_fewshot_quick" if args.quick else "setfit_fewshot"
    (out / f"{name}.json").write_text(
        json.dumps({"machine": machine, "settings": records}, indent=2) + "\n"
    )
    table = format_table(rows, float_format=".2f")
    (out / f"{name}.md").write_text(
        f"# Few-shot SetFit on all-MiniLM-L6-v2: minift vs setfit {machine['setfit']}\n\n"
        f"`python benchmarks/setfit_fewshot.py{' --quick' if args.quick else ''}` on "
        f"{machine['platform']} ({machine['cpus']} CPUs, shared), {machine['threads']} torch "
        f"thread(s), torch {machine['torch']}, transformers {machine['transformers']}, "
        f"sentence-transformers {machine['sentence_transformers']}. {seeds} seeds per row; each "
        f"seed draws the same shots for both libraries, which train with setfit's defaults "
        f"(oversampled pairs, batch 16, 1 epoch, lr 2e-5, cosine-similarity loss, logistic-"
        f"regression head). Accuracy in points (mean ± sample std over seeds) on a fixed random "
        f"subset of {dev_size} dev sentences per dataset (Emotion: its validation split). "
        f"Training seconds: mean per seed (pairs, contrastive phase and head; model loading and "
        f"evaluation not timed); speedup = setfit seconds / minift seconds, median over seeds "
        f"(the two run back to back for each seed).\n\n{table}\n"
    )
    print(table)


if __name__ == "__main__":
    main()
