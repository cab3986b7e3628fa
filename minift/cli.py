"""The ``minift`` command line: the one place where the pieces are wired together.

``minift finetune`` fine-tunes a sequence (or pair) classifier on a TSV / CSV / JSONL file or a
GLUE task from MINIFT_DATA; ``minift similarity`` prints the cosine similarity of sentence pairs.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

DEFAULT_PAIRS = [
    ("A man is playing a guitar.", "Someone is playing an instrument."),
    ("A man is playing a guitar.", "The stock market fell sharply today."),
    ("The cat sits on the mat.", "A cat is sitting on a rug."),
    ("How do I fine-tune BERT?", "What is the recipe for training an encoder on my labels?"),
    ("It was a dark and stormy night.", "Quarterly revenue grew by eight percent."),
]


def cmd_similarity(args: argparse.Namespace) -> int:
    from minift.checkpoint import load_bert, resolve_model_dir
    from minift.sentence import encode
    from minift.tokenizer import Tokenizer

    folder = resolve_model_dir(args.model)
    model, tokenizer = load_bert(folder), Tokenizer.from_pretrained(folder)
    pairs = DEFAULT_PAIRS
    if args.pair:
        pairs = []
        for text in args.pair:
            if "|||" not in text:
                raise ValueError(f"--pair {text!r}: separate the two sentences with '|||'")
            first, second = text.split("|||", 1)
            pairs.append((first.strip(), second.strip()))
    n = sum(p.numel() for p in model.parameters())
    print(f"model: {folder} ({model.config.num_hidden_layers} layers, hidden "
          f"{model.config.hidden_size}, {n / 1e6:.1f}M parameters)")
    left = encode(model, tokenizer, [a for a, _ in pairs])
    right = encode(model, tokenizer, [b for _, b in pairs])
    print(f"{'cosine':>7}  sentence pair")
    for (a, b), score in zip(pairs, (left * right).sum(-1).tolist(), strict=True):
        print(f"{score:7.3f}  {a}  <->  {b}")
    return 0


# --------------------------------------------------------------------------------------------
# finetune
# --------------------------------------------------------------------------------------------


def _subset(examples: list, limit: int | None, seed: int) -> list:
    """A fixed, seeded random subset of ``limit`` examples (all of them when None)."""
    if limit is None or limit >= len(examples):
        return examples
    keep = sorted(random.Random(seed).sample(range(len(examples)), limit))
    return [examples[i] for i in keep]


def classification_metrics(model, batches, num_labels: int, device) -> dict[str, float]:
    """Dev loss, accuracy and F1 (binary on label 1 for two labels, else macro)."""
    import torch

    from minift.metrics import accuracy, precision_recall_f1

    model.eval()
    gold, pred, loss_sum = [], [], 0.0
    with torch.no_grad():
        for batch in batches:
            batch = {k: v.to(device) for k, v in batch.items()}
            out = model(**batch)
            loss_sum += out.loss.item() * len(batch["labels"])
            gold += batch["labels"].tolist()
            pred += out.logits.argmax(-1).tolist()
    if num_labels == 2:
        scores = precision_recall_f1(gold, pred, average="binary", pos_label=1)
    else:
        scores = precision_recall_f1(gold, pred, average="macro", labels=list(range(num_labels)))
    return {"loss": loss_sum / len(gold), "accuracy": accuracy(gold, pred), "f1": scores["f1"]}


def finetune(*, model: str, out: str, task: str | None = None, train: str | None = None,
             dev: str | None = None, text_col: str = "sentence", pair_col: str | None = None,
             label_col: str = "label", limit_train: int | None = None, epochs: int = 3,
             max_steps: int | None = None, lr: float = 5e-5, batch_size: int = 32,
             max_length: int = 128, freeze: str = "none", amp: str = "off", seed: int = 0,
             resume: bool = False, warmup_ratio: float = 0.1, weight_decay: float = 0.01,
             schedule: str = "linear", grad_accum: int = 1, eval_every: int | None = None,
             patience: int | None = None, optimizer: str = "auto", compile: bool = False,
             progress: bool = True, device: str | None = None) -> dict:
    """Fine-tune a sequence classifier; write the best model and ``metrics.json`` into ``out``.

    Every input is checked (files, columns, labels, hyper-parameters) before training starts.
    Returns the metrics dict that is written: ``{"before": ..., "dev": ..., "train": ...}``.
    """
    import torch

    from minift import heads
    from minift.checkpoint import resolve_model_dir
    from minift.data import (
        ClassificationDataset,
        LabelVocab,
        encode_labels,
        read_examples,
        task_files,
    )
    from minift.tokenizer import Tokenizer
    from minift.train import TrainConfig
    from minift.train import train as run_training

    for name, value in (("learning rate", lr), ("batch size", batch_size),
                        ("epochs", epochs), ("max length", max_length)):
        if value <= 0:
            raise ValueError(f"{name} must be positive, got {value}")
    if max_steps is not None and max_steps <= 0:
        raise ValueError(f"max steps must be positive, got {max_steps}")
    if limit_train is not None and limit_train <= 0:
        raise ValueError(f"--limit-train must be positive, got {limit_train}")
    folder = resolve_model_dir(model)
    if task is not None:
        if train or dev:
            raise ValueError("give either --task or --train/--dev, not both")
        train, dev, text_col, pair_col, label_col = task_files(task)
    elif not (train and dev):
        raise ValueError("give --task sst2|mrpc|rte, or both --train FILE and --dev FILE")
    columns = dict(text_col=text_col, pair_col=pair_col, label_col=label_col)
    train_examples = _subset(read_examples(train, **columns), limit_train, seed)
    dev_examples = read_examples(dev, **columns)
    vocab = LabelVocab.from_examples(train_examples)
    if len(vocab) < 2:
        raise ValueError(f"{train}: found a single label {vocab.labels}; a classifier needs two")
    train_labels = encode_labels(train_examples, vocab)
    dev_labels = encode_labels(dev_examples, vocab)  # a dev label unseen in train stops here

    tokenizer = Tokenizer.from_pretrained(folder)
    train_set = ClassificationDataset(train_examples, tokenizer, max_length=max_length,
                                      label_ids=train_labels)
    dev_set = ClassificationDataset(dev_examples, tokenizer, max_length=max_length,
                                    label_ids=dev_labels)
    dev_batches = dev_set.batches(batch_size, generator=None, shuffle=False)
    torch.manual_seed(seed)  # the fresh head's initialisation
    classifier = heads.SequenceClassifier.from_pretrained(
        folder, num_labels=len(vocab), id2label=dict(enumerate(vocab.labels)))
    trainable, total = heads.freeze(classifier, freeze)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    classifier.to(device)
    print(f"data: {len(train_examples)} train / {len(dev_examples)} dev examples, "
          f"labels {vocab.labels}; model {folder}")
    print(f"freeze={freeze}: {trainable:,} of {total:,} parameters train")

    def evaluate(m):
        return classification_metrics(m, dev_batches, len(vocab), device)

    before = evaluate(classifier)
    print(f"dev before fine-tuning: accuracy {before['accuracy']:.4f}  f1 {before['f1']:.4f}")

    out_dir = Path(out)
    config = TrainConfig(
        out_dir=out_dir / "run", epochs=epochs, max_steps=max_steps, lr=lr,
        weight_decay=weight_decay, warmup_ratio=warmup_ratio, schedule=schedule,
        grad_accum=grad_accum, amp=amp, optimizer=optimizer, eval_every=eval_every,
        metric="accuracy", greater_is_better=True, patience=patience, seed=seed,
        compile=compile, progress=progress,
    )
    start = time.perf_counter()
    result = run_training(
        classifier,
        lambda epoch: train_set.batches(batch_size,
                                        generator=torch.Generator().manual_seed(seed + epoch)),
        config, evaluate=evaluate, device=device, resume=resume,
    )
    seconds = time.perf_counter() - start
    best = heads.SequenceClassifier.from_pretrained(out_dir / "run" / "best").to(device)
    after = evaluate(best)
    best.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    metrics = {
        "before": before,
        "dev": after,
        "train": {"steps": result.steps, "seconds": seconds, "best_step": result.best_step,
                  "stopped_early": result.stopped_early, "examples": len(train_examples),
                  "trainable_parameters": trainable, "total_parameters": total},
        "labels": vocab.labels,
    }
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    from minift.metrics import format_table

    print(format_table([{"": "before", **{k: before[k] for k in ("loss", "accuracy", "f1")}},
                        {"": "after", **{k: after[k] for k in ("loss", "accuracy", "f1")}}]))
    print(f"model, tokenizer and metrics.json written to {out_dir}")
    return metrics


def cmd_finetune(args: argparse.Namespace) -> int:
    finetune(model=args.model, out=args.out, task=args.task, train=args.train, dev=args.dev,
             text_col=args.text_col, pair_col=args.pair_col, label_col=args.label_col,
             limit_train=args.limit_train, epochs=args.epochs, max_steps=args.max_steps,
             lr=args.lr, batch_size=args.batch_size, max_length=args.max_length,
             freeze=args.freeze, amp=args.amp, seed=args.seed, resume=args.resume,
             warmup_ratio=args.warmup_ratio, weight_decay=args.weight_decay,
             schedule=args.schedule, grad_accum=args.grad_accum, eval_every=args.eval_every,
             patience=args.patience, optimizer=args.optimizer, compile=args.compile,
             progress=not args.no_progress, device=args.device)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="minift", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sim = sub.add_parser("similarity", help="cosine similarity of sentence pairs")
    sim.add_argument("--model", default="minilm", help="'minilm' or a checkpoint folder")
    sim.add_argument("--pair", action="append", metavar="'A ||| B'",
                     help="a sentence pair (repeatable); default: a few built-in pairs")
    sim.set_defaults(func=cmd_similarity)

    ft = sub.add_parser("finetune", help="fine-tune a sequence / pair classifier")
    ft.add_argument("--model", default="minilm", help="'minilm' or a checkpoint folder")
    ft.add_argument("--task", choices=["sst2", "mrpc", "rte"], help="a GLUE task in MINIFT_DATA")
    ft.add_argument("--train", help="training file (.tsv, .csv or .jsonl)")
    ft.add_argument("--dev", help="development file, same format")
    ft.add_argument("--text-col", default="sentence")
    ft.add_argument("--pair-col", default=None, help="second text of a pair (optional)")
    ft.add_argument("--label-col", default="label")
    ft.add_argument("--limit-train", type=int, help="a seeded random subset of N examples")
    ft.add_argument("--epochs", type=int, default=3)
    ft.add_argument("--max-steps", type=int, help="optimizer steps; overrides --epochs")
    ft.add_argument("--lr", type=float, default=5e-5)
    ft.add_argument("--batch-size", type=int, default=32)
    ft.add_argument("--grad-accum", type=int, default=1)
    ft.add_argument("--max-length", type=int, default=128)
    ft.add_argument("--warmup-ratio", type=float, default=0.1)
    ft.add_argument("--weight-decay", type=float, default=0.01)
    ft.add_argument("--schedule", choices=["linear", "cosine", "constant"], default="linear")
    ft.add_argument("--freeze", default="none", help="none | head | last-N")
    ft.add_argument("--amp", choices=["off", "bf16", "fp16"], default="off")
    ft.add_argument("--optimizer", choices=["auto", "fused", "foreach", "hand"], default="auto")
    ft.add_argument("--eval-every", type=int, help="steps between evaluations (default: epoch)")
    ft.add_argument("--patience", type=int, help="early stopping after N evals without gain")
    ft.add_argument("--seed", type=int, default=0)
    ft.add_argument("--compile", action="store_true", help="torch.compile the model")
    ft.add_argument("--resume", action="store_true", help="continue from OUT/run/resume.pt")
    ft.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda when available)")
    ft.add_argument("--no-progress", action="store_true", help="no progress bar")
    ft.add_argument("--out", required=True, help="output folder")
    ft.set_defaults(func=cmd_finetune)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``minift`` console script and ``python -m minift``."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ValueError as err:  # bad input: one clear line, no traceback
        print(f"minift: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
