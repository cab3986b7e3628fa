"""``setfit``: few-shot classification (contrastive fine-tuning, then a head) over several seeds;
and the scoring of a saved SetFit model on a test file, which ``minift.run.search`` reuses."""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, fields, replace
from pathlib import Path
from typing import Any

import torch

from minift.core.labels import LabelVocab
from minift.core.metrics import accuracy
from minift.data.readers import encode_labels
from minift.data.tokenizer import Tokenizer
from minift.fast.unpad import speed_up
from minift.hf.checkpoint import load_bert, resolve_model_dir
from minift.run.options import SetfitOptions
from minift.run.recipes import prepare
from minift.tasks.setfit import SetFitConfig, SetFitModel, sample_shots, train_setfit


def _count(n: int, noun: str) -> str:
    """``1 seed``, ``5 seeds``."""
    return f"{n} {noun}{'' if n == 1 else 's'}"


def read_test(path: str, options: dict) -> list:
    """A test file in the format and columns of the options."""
    return prepare.read_labelled(path, options.get("text_col", "text"),
                                 options.get("label_col", "label"), options.get("format"))


def score_saved(folder: Path, test: list, options: dict, device) -> dict[str, float]:
    """The accuracy on ``test`` (``read_test``) of the SetFit model saved in ``folder``."""
    model = SetFitModel.from_pretrained(folder)
    predicted = model.predict([ex.text for ex in test])
    return {"accuracy": accuracy([ex.label for ex in test], predicted)}


def setfit(**options: Any) -> dict:
    """Few-shot SetFit over seeds ``seed``..``seed + seeds - 1`` (options: ``SetfitOptions``'
    fields); write ``metrics.json`` and the first seed's model (``out/model``) into ``out``.
    Seed s draws ``shots`` examples of every class with a generator seeded with s and trains from
    the same base model; the spread over the seeds is the sample standard deviation (n - 1)."""
    o = SetfitOptions(**options)
    shared = {f.name for f in fields(SetFitConfig)} & {f.name for f in fields(o)} - {"seed"}
    config = SetFitConfig(**{name: getattr(o, name) for name in shared})  # the seed: per run
    prepare.check_device(o.device)
    folder = resolve_model_dir(o.model)
    prepare.check_max_length(folder, o.max_length)
    train_examples, dev_examples = (prepare.read_labelled(path, o.text_col, o.label_col, o.format)
                                    for path in (o.train, o.dev))
    dev_examples = prepare.subset(dev_examples, o.limit_dev, 0)
    vocab = LabelVocab.from_examples(train_examples)
    if len(vocab) < 2:
        raise ValueError(f"{o.train}: found a single label {vocab.labels}; SetFit needs two")
    encode_labels(dev_examples, vocab)  # a dev label unseen in train stops here
    draws = [sample_shots([ex.label for ex in train_examples], o.shots,
                          torch.Generator().manual_seed(s))
             for s in range(o.seed, o.seed + o.seeds)]
    dev_texts = [ex.text for ex in dev_examples]
    dev_gold = [ex.label for ex in dev_examples]

    with prepare.claim_run("setfit", o, folder, {"train": o.train, "dev": o.dev}) as out_dir:
        tokenizer = Tokenizer.from_pretrained(folder)
        device = prepare.pick_device(o.device)
        print(f"data: {len(train_examples)} train / {len(dev_examples)} dev examples, labels "
              f"{vocab.labels}; {o.shots} shots a class, {_count(o.seeds, 'seed')}; model {folder}")
        per_seed = []
        for run_seed, chosen in enumerate(draws, start=o.seed):
            print(f"seed {run_seed}: loading {folder}")
            encoder = speed_up(load_bert(folder)).to(device)
            start = time.perf_counter()
            classifier, stats = train_setfit(
                encoder, tokenizer, [train_examples[i].text for i in chosen],
                [train_examples[i].label for i in chosen],
                replace(config, seed=run_seed), label_names=vocab.labels)
            seconds = time.perf_counter() - start
            if not prepare.is_main():
                continue  # under torchrun the other ranks only help train the next seed
            print(f"seed {run_seed}: scoring {len(dev_texts)} dev examples")
            score = accuracy(dev_gold, classifier.predict(dev_texts))
            print(f"seed {run_seed}: dev accuracy {score:.4f}  ({stats['pairs']} pairs, "
                  f"{seconds:.1f} s training)")
            per_seed.append({"seed": run_seed, "accuracy": score, "pairs": stats["pairs"],
                             "steps": stats["steps"], "train_seconds": seconds,
                             "examples": [train_examples[i].line for i in chosen]})
            if run_seed == o.seed:  # the first seed's model
                classifier.save_pretrained(out_dir / "model")
        if not prepare.is_main():
            return {}  # rank 0 writes the results
        scores = [run["accuracy"] for run in per_seed]
        mean = statistics.fmean(scores)
        std = statistics.stdev(scores) if len(scores) > 1 else 0.0
        metrics = {
            "dev": {"accuracy_mean": mean, "accuracy_std": std, "per_seed": per_seed,
                    "examples": len(dev_examples)},
            "train": {"shots": o.shots, "seeds": o.seeds, "examples": o.shots * len(vocab),
                      "pairs": per_seed[0]["pairs"], "steps": per_seed[0]["steps"]},
            "config": {k: v for k, v in asdict(config).items() if k != "seed"},
            "labels": vocab.labels,
            "model": str(folder),
        }
        prepare.write_metrics(out_dir, metrics)
    spread = f"{mean:.4f} +/- {std:.4f}" if o.seeds > 1 else f"{mean:.4f}"
    print(f"dev accuracy over {_count(o.seeds, 'seed')}: {spread}; metrics.json and the "
          f"seed-0 model written to {out_dir}")
    return metrics
