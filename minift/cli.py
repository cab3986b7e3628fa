"""The ``minift`` command line: the one place where the pieces are wired together.

``minift finetune`` fine-tunes a sequence (or pair) classifier on a TSV / CSV / JSONL file or a
GLUE task from MINIFT_DATA; ``minift similarity`` prints the cosine similarity of sentence pairs.
``minift pretrain`` continues masked-language-model pretraining on domain text (one passage a line).
``minift setfit`` trains few-shot classifiers with SetFit over several seeds.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
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


def pick_device(device: str | None):
    """The device to run on (default: cuda when available); under torchrun, also join the
    process group (`minift.distributed`) and take this rank's own GPU."""
    import torch

    from minift import distributed

    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    distributed.setup(device.type)
    return distributed.local_device(device)


def _is_main() -> bool:
    """False on the ranks of a torchrun job that only help to train (rank 0 writes the results)."""
    from minift import distributed

    return distributed.context().is_main


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
        activation_checkpointing: bool = False,
             progress: bool = True, device: str | None = None) -> dict:
    """Fine-tune a sequence classifier; write the best model and ``metrics.json`` into ``out``.

    Every input is checked (files, columns, labels, hyper-parameters) before training starts.
    Returns the metrics dict that is written: ``{"before": ..., "dev": ..., "train": ...}``.
    """
    import torch

    from minift import heads
    from minift.batches import ClassificationDataset
    from minift.checkpoint import resolve_model_dir
    from minift.data import encode_labels, read_examples, task_files
    from minift.labels import LabelVocab
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
    device = pick_device(device)
    classifier.to(device)
    if activation_checkpointing:  # recompute each block in backward: less memory
        from minift.model import set_activation_checkpointing

        set_activation_checkpointing(classifier)
    print(f"data: {len(train_examples)} train / {len(dev_examples)} dev examples, "
          f"labels {vocab.labels}; model {folder}")
    print(f"freeze={freeze}: {trainable:,} of {total:,} parameters train")

    def evaluate(m):
        return classification_metrics(m, dev_batches, len(vocab), device)

    before = evaluate(classifier) if _is_main() else {}  # under torchrun rank 0 evaluates
    if before:
        print(f"dev before fine-tuning: accuracy {before['accuracy']:.4f}  "
              f"f1 {before['f1']:.4f}")

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
    if not _is_main():
        return {}  # the other ranks of a torchrun job are done: rank 0 writes the results
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
             activation_checkpointing=args.activation_checkpointing,
             progress=not args.no_progress, device=args.device)
    return 0


# --------------------------------------------------------------------------------------------
# ner: token classification (named entities, or parts of speech) on CoNLL column files
# --------------------------------------------------------------------------------------------


def predict_tags(model, dataset, batch_size: int, device) -> tuple[list[list[int]], float | None]:
    """Predicted tag ids of every word of every sentence of a ``TokenClassificationDataset``,
    and the mean loss over its labelled tokens (None when it has no labels).

    ``model(**batch)`` returns ``.logits`` (batch, seq, labels) and ``.loss``: minift's
    ``TokenClassifier`` and transformers' ``BertForTokenClassification`` both do.
    """
    import torch

    model.eval()
    piece_predictions: list = [None] * len(dataset)
    loss_sum, targets = 0.0, 0
    with torch.no_grad():
        for indices in dataset.batch_indices(batch_size, generator=None, shuffle=False):
            batch = {k: v.to(device) for k, v in dataset.batch(indices).items()}
            out = model(**batch)
            if "labels" in batch:
                n = int((batch["labels"] != -100).sum())
                if n:  # a batch without targets has a nan mean loss
                    loss_sum, targets = loss_sum + out.loss.item() * n, targets + n
            for i, row in zip(indices, out.logits.argmax(-1).cpu(), strict=True):
                piece_predictions[i] = row
    return dataset.word_predictions(piece_predictions), (loss_sum / targets if targets else None)


def tagging_scores(gold: list[list[str]], pred: list[list[str]], task: str) -> dict:
    """NER: entity-level micro precision, recall, F1 (seqeval's default mode), per type, and the
    strict IOB2 mode's micro scores. POS: token accuracy and per-tag scores."""
    from minift.metrics import entity_scores, per_class_scores, token_accuracy

    if task == "pos":
        flat_gold = [tag for tags in gold for tag in tags]
        flat_pred = [tag for tags in pred for tag in tags]
        return {"accuracy": token_accuracy(gold, pred), "tokens": len(flat_gold),
                "per_tag": per_class_scores(flat_gold, flat_pred, sorted(set(flat_gold)))}
    scores = entity_scores(gold, pred, mode="default")
    strict = entity_scores(gold, pred, mode="strict")
    keys = ("f1", "precision", "recall")
    return {
        **{key: scores[key] for key in (*keys, "support", "per_type", "mode")},
        "strict": {key: strict[key] for key in keys},
        "token_accuracy": token_accuracy(gold, pred),
    }


def _scores_table(scores: dict, task: str, split: str) -> str:
    from minift.metrics import format_table

    per = scores["per_tag" if task == "pos" else "per_type"]
    rows = [{split: name, **{k: row[k] for k in ("precision", "recall", "f1", "support")}}
            for name, row in per.items()]
    if task == "ner":
        rows.append({split: "micro avg", **{k: scores[k] for k in ("precision", "recall", "f1",
                                                                    "support")}})
    return format_table(rows)


def ner(*, model: str, train: str, dev: str, out: str, test: str | None = None,
        column: int = -1, scheme: str = "iob2", task: str = "auto",
        limit_train: int | None = None, epochs: int = 3, max_steps: int | None = None,
        lr: float = 5e-5, batch_size: int = 32, max_length: int = 128, stride_words: int = 16,
        label_all_subwords: bool = False, freeze: str = "none", amp: str = "off", seed: int = 0,
        resume: bool = False, warmup_ratio: float = 0.1, weight_decay: float = 0.01,
        schedule: str = "linear", grad_accum: int = 1, eval_every: int | None = None,
        patience: int | None = None, optimizer: str = "auto", compile: bool = False,
        activation_checkpointing: bool = False,
        progress: bool = True, device: str | None = None) -> dict:
    """Fine-tune a token classifier on CoNLL column files; write the best model, the tokenizer,
    ``metrics.json`` and ``{dev,test}_predictions.txt`` (``word gold predicted``) into ``out``.

    ``column`` (0-based, negative from the end) picks the tags. ``task`` "ner" scores entities
    (micro F1, seqeval's default mode; the tags are checked as strict IOB2, or converted with
    ``scheme="iob1"``); "pos" scores token accuracy; "auto" takes "ner" when every training tag
    reads as O/B-X/I-X. The tag set is the whole training file's (``limit_train`` or not); a
    dev or test tag outside it is an error naming its file:line. Everything (files, tags,
    lengths, hyper-parameters) is checked before training; sentences longer than
    ``max_length`` tokens are windowed, never truncated.
    Returns the metrics dict that is written: ``{"dev": ..., "test": ..., "train": ...}``.
    """
    import torch

    from minift import heads
    from minift.batches import TokenClassificationDataset
    from minift.checkpoint import read_config, read_config_json, resolve_model_dir
    from minift.data import (
        apply_scheme,
        encode_tags,
        entity_label_set,
        is_bio,
        read_conll,
        write_conll,
    )
    from minift.labels import SCHEMES, LabelVocab
    from minift.tokenizer import Tokenizer
    from minift.train import TrainConfig
    from minift.train import train as run_training

    for name, value in (("learning rate", lr), ("batch size", batch_size),
                        ("epochs", epochs), ("max length", max_length)):
        if value <= 0:
            raise ValueError(f"{name} must be positive, got {value}")
    for name, value in (("--max-steps", max_steps), ("--limit-train", limit_train)):
        if value is not None and value <= 0:
            raise ValueError(f"{name} must be positive, got {value}")
    if stride_words < 0:
        raise ValueError(f"--stride-words must be >= 0, got {stride_words}")
    if task not in ("auto", "ner", "pos"):
        raise ValueError(f"--task must be auto, ner or pos, got {task!r}")
    if scheme not in SCHEMES:
        raise ValueError(f"--scheme must be one of {', '.join(SCHEMES)}, got {scheme!r}")
    folder = resolve_model_dir(model)
    positions = read_config(folder).max_position_embeddings
    if max_length > positions:
        raise ValueError(f"--max-length {max_length} is more than the model's "
                         f"{positions} positions ({folder}/config.json)")

    # ---- data: read every file, fix the tag set, check every tag ----
    files = {"train": train, "dev": dev} | ({"test": test} if test else {})
    splits = {name: read_conll(path, column=column) for name, path in files.items()}
    if task == "auto":
        task = "ner" if is_bio(splits["train"]) else "pos"
    if task == "ner":
        splits = {name: apply_scheme(sentences, scheme) for name, sentences in splits.items()}
    # The tag set is the whole training file's, so that a small --limit-train subset that lacks
    # a rare tag (POS's "WP$") does not make that tag an error in dev and test.
    if task == "ner":
        labels = entity_label_set(splits["train"])
    else:
        labels = LabelVocab.from_sequences([s.tags for s in splits["train"]])
    splits["train"] = _subset(splits["train"], limit_train, seed)
    config = read_config_json(folder)
    if "BertForTokenClassification" in (config.get("architectures") or []) and "id2label" in config:
        trained = LabelVocab.from_dict(config)  # continue from a token classifier: keep its ids
        if set(trained.labels) != set(labels.labels):
            raise ValueError(f"{folder} is a token classifier for the tags {trained.labels}, "
                             f"but {train} has the tags {labels.labels}")
        labels = trained
    if len(labels) < 2:
        raise ValueError(f"{train}: found a single tag {labels.labels}; a tagger needs two")
    label_ids = {name: encode_tags(sentences, labels) for name, sentences in splits.items()}

    tokenizer = Tokenizer.from_pretrained(folder)
    train_options = dict(label_all_subwords=label_all_subwords,
                         b_to_i=labels.b_to_i() if label_all_subwords else None)
    datasets = {
        name: TokenClassificationDataset(
            [s.words for s in sentences], tokenizer, max_length=max_length,
            label_ids=label_ids[name], stride_words=stride_words,
            **(train_options if name == "train" else {}))
        for name, sentences in splits.items()
    }
    print(f"data: {task} tags from column {column} ({len(labels)} tags: "
          f"{' '.join(labels.labels)}); model {folder}")
    for name, data in datasets.items():
        plan = data.plan
        windows = (f"{plan.num_windowed} longer than {max_length} tokens, split into "
                   f"{plan.num_windows - plan.num_sentences + plan.num_windowed} windows of whole "
                   f"words ({stride_words} words of overlap), none truncated"
                   if plan.num_windowed else f"all fit in {max_length} tokens")
        print(f"{name}: {plan.num_sentences} sentences, "
              f"{sum(len(s.words) for s in splits[name])} words; {windows}")

    # ---- model and training ----
    torch.manual_seed(seed)  # the fresh head's initialisation
    tagger = heads.TokenClassifier.from_pretrained(folder, num_labels=len(labels),
                                                   id2label=dict(enumerate(labels.labels)))
    trainable, total = heads.freeze(tagger, freeze)
    device = pick_device(device)
    tagger.to(device)
    if activation_checkpointing:  # recompute each block in backward: less memory
        from minift.model import set_activation_checkpointing

        set_activation_checkpointing(tagger)
    print(f"freeze={freeze}: {trainable:,} of {total:,} parameters train")
    metric = "f1" if task == "ner" else "accuracy"

    def evaluate_split(m, name: str) -> tuple[dict, list[list[str]]]:
        predicted, loss = predict_tags(m, datasets[name], batch_size, device)
        tags = [labels.decode(p) for p in predicted]
        scores = tagging_scores([s.tags for s in splits[name]], tags, task)
        return scores | ({"loss": loss} if loss is not None else {}), tags

    def evaluate(m) -> dict[str, float]:
        scores, _ = evaluate_split(m, "dev")
        return {k: v for k, v in scores.items() if isinstance(v, float)}

    out_dir = Path(out)
    train_config = TrainConfig(
        out_dir=out_dir / "run", epochs=epochs, max_steps=max_steps, lr=lr,
        weight_decay=weight_decay, warmup_ratio=warmup_ratio, schedule=schedule,
        grad_accum=grad_accum, amp=amp, optimizer=optimizer, eval_every=eval_every,
        metric=metric, greater_is_better=True, patience=patience, seed=seed,
        compile=compile, progress=progress,
    )
    train_set = datasets["train"]
    start = time.perf_counter()
    result = run_training(
        tagger,
        lambda epoch: train_set.batches(batch_size,
                                        generator=torch.Generator().manual_seed(seed + epoch)),
        train_config, evaluate=evaluate, device=device, resume=resume,
    )
    seconds = time.perf_counter() - start
    if not _is_main():
        return {}  # the other ranks of a torchrun job are done: rank 0 writes the results

    # ---- the best checkpoint on dev and test ----
    best = heads.TokenClassifier.from_pretrained(out_dir / "run" / "best").to(device)
    metrics: dict = {}
    for name in ("dev", "test"):
        if name not in datasets:
            continue
        metrics[name], tags = evaluate_split(best, name)
        write_conll(out_dir / f"{name}_predictions.txt", [s.words for s in splits[name]],
                    [s.tags for s in splits[name]], tags)
    best.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    metrics["train"] = {
        "steps": result.steps, "seconds": seconds, "best_step": result.best_step,
        "stopped_early": result.stopped_early, "sentences": len(splits["train"]),
        "windows": len(train_set), "trainable_parameters": trainable, "total_parameters": total,
    }
    metrics |= {"task": task, "column": column, "scheme": scheme if task == "ner" else None,
                "labels": labels.labels, "max_length": max_length}
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    for name in ("dev", "test"):
        if name in metrics:
            main_score = (f"entity F1 {metrics[name]['f1']:.4f} (seqeval default mode, micro; "
                          f"strict IOB2 {metrics[name]['strict']['f1']:.4f})" if task == "ner"
                          else f"token accuracy {metrics[name]['accuracy']:.4f}")
            print(f"\n{name}: {main_score}")
            print(_scores_table(metrics[name], task, name))
    print(f"model, tokenizer, metrics.json and predictions written to {out_dir}")
    return metrics


def cmd_ner(args: argparse.Namespace) -> int:
    ner(model=args.model, train=args.train, dev=args.dev, test=args.test, out=args.out,
        column=args.column, scheme=args.scheme, task=args.task, limit_train=args.limit_train,
        epochs=args.epochs, max_steps=args.max_steps, lr=args.lr, batch_size=args.batch_size,
        max_length=args.max_length, stride_words=args.stride_words,
        label_all_subwords=args.label_all_subwords, freeze=args.freeze, amp=args.amp,
        seed=args.seed, resume=args.resume, warmup_ratio=args.warmup_ratio,
        weight_decay=args.weight_decay, schedule=args.schedule, grad_accum=args.grad_accum,
        eval_every=args.eval_every, patience=args.patience, optimizer=args.optimizer,
        compile=args.compile, activation_checkpointing=args.activation_checkpointing,
        progress=not args.no_progress, device=args.device)
    return 0


def add_training_options(p: argparse.ArgumentParser) -> None:
    """The training-loop options that `finetune` and `ner` share (see `minift.train`)."""
    p.add_argument("--warmup-ratio", type=float, default=0.1)
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--schedule", choices=["linear", "cosine", "constant"], default="linear")
    p.add_argument("--freeze", default="none", help="none | head | last-N")
    p.add_argument("--amp", choices=["off", "bf16", "fp16"], default="off")
    p.add_argument("--optimizer", choices=["auto", "fused", "foreach", "hand"], default="auto")
    p.add_argument("--eval-every", type=int, help="steps between evaluations (default: epoch)")
    p.add_argument("--patience", type=int, help="early stopping after N evals without gain")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--activation-checkpointing", action="store_true",
                   help="recompute each encoder block in backward: less memory, ~1/3 more time")
    p.add_argument("--resume", action="store_true", help="continue from OUT/run/resume.pt")
    p.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda when available)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--out", required=True, help="output folder")


def add_ner_parser(sub) -> None:
    """Register ``minift ner`` on the subcommand parsers ``sub``."""
    p = sub.add_parser("ner", help="fine-tune a token classifier (NER or POS) on CoNLL files")
    p.add_argument("--model", default="minilm", help="'minilm' or a checkpoint folder")
    p.add_argument("--train", required=True, help="CoNLL column file (word ... tag a line)")
    p.add_argument("--dev", required=True, help="development file, same columns")
    p.add_argument("--test", help="test file, same columns (optional)")
    p.add_argument("--column", type=int, default=-1,
                   help="0-based tag column (default: the last); CoNLL-2003 here: 1 POS, 2 NER")
    p.add_argument("--scheme", choices=["iob1", "iob2"], default="iob2",
                   help="NER tags: iob2 checks strict IOB2, iob1 converts to it")
    p.add_argument("--task", choices=["auto", "ner", "pos"], default="auto",
                   help="ner: entity F1; pos: token accuracy; auto: ner when tags are O/B-/I-")
    p.add_argument("--limit-train", type=int, help="a seeded random subset of N sentences")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--max-steps", type=int, help="optimizer steps; overrides --epochs")
    p.add_argument("--lr", type=float, default=5e-5)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--grad-accum", type=int, default=1)
    p.add_argument("--max-length", type=int, default=128,
                   help="tokens per window; longer sentences are split into windows")
    p.add_argument("--stride-words", type=int, default=16, help="overlap of windows, in words")
    p.add_argument("--label-all-subwords", action="store_true",
                   help="train on every sub-word (B- continuations become I-), not the first")
    add_training_options(p)
    p.set_defaults(func=cmd_ner)


# --------------------------------------------------------------------------------------------
# pretrain: continued masked-language-model pretraining on domain text
# --------------------------------------------------------------------------------------------


def mlm_metrics(model, batches, device) -> dict[str, float]:
    """Masked-token loss, perplexity (exp of the mean masked-token loss) and accuracy (argmax
    equals the original token), averaged over every masked token of ``batches``."""
    import math

    import torch

    model.eval()
    loss_sum, correct, count = 0.0, 0, 0
    with torch.no_grad():
        for batch in batches:
            batch = {k: v.to(device) for k, v in batch.items()}
            targets = batch["labels"][batch["labels"] != -100]
            if targets.numel() == 0:
                continue
            out = model(**batch)  # the sparse head: logits of the targets only
            loss_sum += out.loss.item() * targets.numel()
            correct += int((out.logits.argmax(-1) == targets).sum())
            count += targets.numel()
    if count == 0:
        raise ValueError("the evaluation text got no masked token: give more held-out text")
    loss = loss_sum / count
    return {"loss": loss, "perplexity": math.exp(min(loss, 700.0)),
            "masked_accuracy": correct / count, "masked_tokens": count}


def pretrain(*, model: str, text: str | list[str], out: str, eval_text: str | None = None,
             masking: str = "mlm", steps: int = 1000, lr: float = 5e-5, batch_size: int = 32,
             max_length: int = 128, seed: int = 0, amp: str = "off", pack: bool = False,
             mlm_probability: float = 0.15, eval_fraction: float = 0.05,
             max_eval_passages: int = 2000, eval_seed: int = 0, warmup_ratio: float = 0.06,
             weight_decay: float = 0.01, grad_accum: int = 1, eval_every: int | None = None,
             save_every: int | None = None, optimizer: str = "auto", resume: bool = False,
             compile: bool = False, activation_checkpointing: bool = False,
             progress: bool = True, device: str | None = None) -> dict:
    """Continue pretraining an encoder with masked-language modelling on domain text.

    ``text``: one or more files of passages, one a line. Held-out text for evaluation is
    ``eval_text``, else a random ``eval_fraction`` of the passages (at most ``max_eval_passages``)
    chosen with ``eval_seed`` and left out of training. The held-out text is masked ONCE, with
    ``eval_seed``, by the same strategy as training, so every evaluation (before, during, after)
    scores the very same masked tokens. Training batches are masked afresh every epoch (dynamic
    masking), each from its own seeded generator, so ``resume`` continues exactly.
    Writes the best model (by held-out loss; with its MLM head, HF ``BertForMaskedLM`` format), the
    tokenizer and ``metrics.json`` into ``out``; returns the metrics dict:
    ``{"before": {...}, "after": {...}, "train": {...}, "data": {...}}`` where before/after hold
    ``perplexity``, ``masked_accuracy``, ``loss`` and ``masked_tokens``. Every input is checked
    before training starts.
    """
    import torch

    from minift.checkpoint import read_config, resolve_model_dir
    from minift.heads import MaskedLM
    from minift.metrics import format_table
    from minift.mlm_data import (
        STRATEGIES,
        MaskedBatches,
        MaskingCollator,
        TextSequences,
        held_out_split,
        read_text_lines,
    )
    from minift.tokenizer import Tokenizer
    from minift.train import TrainConfig
    from minift.train import train as run_training

    for name, value in (("steps", steps), ("learning rate", lr), ("batch size", batch_size),
                        ("max length", max_length)):
        if value <= 0:
            raise ValueError(f"{name} must be positive, got {value}")
    if masking not in STRATEGIES:
        raise ValueError(f"--masking: expected one of {', '.join(STRATEGIES)}, got {masking!r}")
    folder = resolve_model_dir(model)
    positions = read_config(folder).max_position_embeddings
    if not 3 <= max_length <= positions:
        raise ValueError(f"max length must be between 3 and the model's {positions} positions, "
                         f"got {max_length}")
    passages = read_text_lines([text] if isinstance(text, str | Path) else list(text))
    if eval_text is not None:
        eval_passages = read_text_lines(eval_text)
    else:
        passages, eval_passages = held_out_split(passages, eval_fraction, eval_seed,
                                                 max_eval_passages)
    tokenizer = Tokenizer.from_pretrained(folder)
    collator = MaskingCollator.from_tokenizer(tokenizer, masking, mlm_probability)
    train_seqs = TextSequences(passages, tokenizer, max_length=max_length, pack=pack)
    eval_seqs = TextSequences(eval_passages, tokenizer, max_length=max_length, pack=pack)
    eval_batches = list(MaskedBatches(eval_seqs, collator, batch_size, seed=eval_seed,
                                      shuffle=False))  # masked once: fixed for every evaluation

    torch.manual_seed(seed)  # a fresh MLM head's initialisation
    mlm = MaskedLM.from_pretrained(folder)
    device = pick_device(device)
    mlm.to(device)
    if activation_checkpointing:  # recompute each block in backward: less memory
        from minift.model import set_activation_checkpointing

        set_activation_checkpointing(mlm)
    tokens = sum(train_seqs.lengths)
    print(f"data: {len(passages)} passages -> {len(train_seqs)} sequences, {tokens:,} tokens "
          f"(max length {max_length}, {'packed' if pack else 'one passage a sequence'}); "
          f"held out: {len(eval_passages)} passages "
          f"({'--eval-text' if eval_text else f'seeded {eval_fraction:.0%} slice'})")
    print(f"model {folder}; MLM head "
          + ("loaded from the checkpoint" if mlm.head_loaded else
             "not in the checkpoint: initialised as BERT does (N(0, initializer_range))"))
    if masking == "span" and not pack:
        print("note: span masking overshoots its budget on short sequences; --pack helps")

    def evaluate(m):
        return mlm_metrics(m, eval_batches, device)

    before = evaluate(mlm) if _is_main() else {}  # under torchrun rank 0 evaluates
    if before:
        print(f"held-out before: perplexity {before['perplexity']:.2f}  masked accuracy "
              f"{before['masked_accuracy']:.4f} ({before['masked_tokens']} masked tokens)")
    out_dir = Path(out)
    config = TrainConfig(
        out_dir=out_dir / "run", max_steps=steps, lr=lr, weight_decay=weight_decay,
        warmup_ratio=warmup_ratio, grad_accum=grad_accum, amp=amp, optimizer=optimizer,
        eval_every=eval_every or steps, save_every=save_every, metric="loss",
        greater_is_better=False, seed=seed, compile=compile, progress=progress,
    )
    start = time.perf_counter()
    result = run_training(
        mlm,
        lambda epoch: MaskedBatches(train_seqs, collator, batch_size, seed=seed, epoch=epoch),
        config, evaluate=evaluate, device=device, resume=resume,
    )
    seconds = time.perf_counter() - start
    if not _is_main():
        return {}  # the other ranks of a torchrun job are done: rank 0 writes the results
    best = MaskedLM.from_pretrained(out_dir / "run" / "best").to(device)
    after = evaluate(best)
    best.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    metrics = {
        "before": before,
        "after": after,
        "train": {"steps": result.steps, "seconds": seconds, "best_step": result.best_step,
                  "epochs": result.epochs_completed, "masking": masking, "pack": pack,
                  "lr": lr, "batch_size": batch_size, "max_length": max_length, "seed": seed,
                  "head_loaded": mlm.head_loaded},
        "data": {"passages": len(passages), "sequences": len(train_seqs), "tokens": tokens,
                 "eval_passages": len(eval_passages), "eval_seed": eval_seed},
    }
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    keys = ("perplexity", "masked_accuracy", "loss")
    print(format_table([{"held-out": "before", **{k: before[k] for k in keys}},
                        {"held-out": "after", **{k: after[k] for k in keys}}]))
    print(f"model (with MLM head), tokenizer and metrics.json written to {out_dir}")
    return metrics


def cmd_pretrain(args: argparse.Namespace) -> int:
    pretrain(model=args.model, text=args.text, out=args.out, eval_text=args.eval_text,
             masking=args.masking, steps=args.steps, lr=args.lr, batch_size=args.batch_size,
             max_length=args.max_length, seed=args.seed, amp=args.amp, pack=args.pack,
             mlm_probability=args.mlm_probability, eval_fraction=args.eval_fraction,
             eval_seed=args.eval_seed, warmup_ratio=args.warmup_ratio,
             weight_decay=args.weight_decay, grad_accum=args.grad_accum,
             eval_every=args.eval_every, save_every=args.save_every, optimizer=args.optimizer,
             resume=args.resume, compile=args.compile,
             activation_checkpointing=args.activation_checkpointing,
             progress=not args.no_progress, device=args.device)
    return 0


def add_pretrain_parser(sub) -> None:
    """Register ``minift pretrain`` on the subcommand parsers ``sub``."""
    p = sub.add_parser("pretrain", help="continue MLM pretraining on domain text")
    p.add_argument("--model", default="minilm", help="'minilm' or a checkpoint folder")
    p.add_argument("--text", nargs="+", required=True, metavar="FILE",
                   help="text file(s), one passage a line")
    p.add_argument("--eval-text", metavar="FILE",
                   help="held-out text (default: a seeded slice of --text, left out of training)")
    p.add_argument("--eval-fraction", type=float, default=0.05,
                   help="share of the passages held out when there is no --eval-text")
    p.add_argument("--eval-seed", type=int, default=0,
                   help="seed of the held-out slice and of its (fixed) masks")
    p.add_argument("--masking", choices=["mlm", "wwm", "span"], default="mlm",
                   help="mlm: BERT tokens; wwm: whole words; span: SpanBERT spans")
    p.add_argument("--mlm-probability", type=float, default=0.15, help="masking rate / budget")
    p.add_argument("--pack", action="store_true",
                   help="pack consecutive passages into full-length sequences")
    p.add_argument("--steps", type=int, default=1000, help="optimizer steps")
    p.add_argument("--lr", type=float, default=5e-5)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--grad-accum", type=int, default=1)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--warmup-ratio", type=float, default=0.06)
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--amp", choices=["off", "bf16", "fp16"], default="off")
    p.add_argument("--optimizer", choices=["auto", "fused", "foreach", "hand"], default="auto")
    p.add_argument("--eval-every", type=int, help="steps between evaluations (default: the end)")
    p.add_argument("--save-every", type=int,
                   help="steps between resume checkpoints (default: at each evaluation)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--activation-checkpointing", action="store_true",
                   help="recompute each encoder block in backward: less memory, ~1/3 more time")
    p.add_argument("--resume", action="store_true", help="continue from OUT/run/resume.pt")
    p.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda when available)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--out", required=True, help="output folder")
    p.set_defaults(func=cmd_pretrain)


# --------------------------------------------------------------------------------------------
# setfit: few-shot classification (contrastive fine-tuning, then a head), over several seeds
# --------------------------------------------------------------------------------------------


def read_labelled(path: str, text_col: str, label_col: str, format: str | None = None) -> list:
    """Examples of a labelled file: TSV, CSV, JSONL (`data.read_examples`), or semicolon
    `text;label` lines (`format="semicolon"`, or a `.txt` file, as the Emotion data set ships)."""
    from minift.data import read_examples, read_semicolon_examples

    if format == "semicolon" or (format is None and Path(path).suffix.lower() == ".txt"):
        return read_semicolon_examples(path, text_col=text_col, label_col=label_col)
    return read_examples(path, text_col=text_col, label_col=label_col, format=format)


def setfit(*, model: str, train: str, dev: str, out: str, text_col: str = "text",
           label_col: str = "label", format: str | None = None, shots: int = 8, seeds: int = 5,
           loss: str = "cosine", sampling: str = "oversampling",
           num_iterations: int | None = None, epochs: int = 1, batch_size: int = 16,
           lr: float = 2e-5, head: str = "logistic", end_to_end: bool = False,
           max_length: int = 256, max_dev: int | None = None, device: str | None = None) -> dict:
    """Few-shot SetFit over seeds 0..seeds-1; write ``metrics.json`` into ``out``.

    For each seed s: draw ``shots`` training examples of every class (a generator seeded with s),
    train SetFit with seed s from the same base model, and measure accuracy on dev (all of it, or
    a fixed seeded subset of ``max_dev``). Prints and returns
    ``{"dev": {"accuracy_mean", "accuracy_std", "per_seed": [...]}, "train": ..., "config": ...,
    "labels": ...}``; the standard deviation is the sample one (n - 1), 0 for a single seed. The
    model of seed 0 is saved in ``out/model`` (``minift.setfit.SetFitModel.from_pretrained``).
    """
    import statistics
    from dataclasses import asdict, replace

    import torch

    from minift.checkpoint import load_bert, resolve_model_dir
    from minift.data import encode_labels
    from minift.labels import LabelVocab
    from minift.metrics import accuracy
    from minift.setfit import SetFitConfig, sample_shots, train_setfit
    from minift.tokenizer import Tokenizer

    if shots < 1 or seeds < 1:
        raise ValueError(f"--shots and --seeds must be >= 1, got {shots} and {seeds}")
    if max_dev is not None and max_dev < 1:
        raise ValueError(f"--max-dev must be positive, got {max_dev}")
    config = SetFitConfig(loss=loss, sampling=sampling, num_iterations=num_iterations,
                          epochs=epochs, batch_size=batch_size, lr=lr, head=head,
                          end_to_end=end_to_end, max_length=max_length)
    folder = resolve_model_dir(model)
    train_examples = read_labelled(train, text_col, label_col, format)
    dev_examples = _subset(read_labelled(dev, text_col, label_col, format), max_dev, 0)
    vocab = LabelVocab.from_examples(train_examples)
    if len(vocab) < 2:
        raise ValueError(f"{train}: found a single label {vocab.labels}; SetFit needs two")
    encode_labels(dev_examples, vocab)  # a dev label unseen in train stops here
    dev_texts = [ex.text for ex in dev_examples]
    dev_gold = [ex.label for ex in dev_examples]
    tokenizer = Tokenizer.from_pretrained(folder)
    device = pick_device(device)
    print(f"data: {len(train_examples)} train / {len(dev_examples)} dev examples, labels "
          f"{vocab.labels}; {shots} shots a class, {seeds} seeds; model {folder}")
    out_dir = Path(out)
    per_seed = []
    for seed in range(seeds):
        chosen = sample_shots([ex.label for ex in train_examples], shots,
                              torch.Generator().manual_seed(seed))
        encoder = load_bert(folder).to(device)
        start = time.perf_counter()
        classifier, stats = train_setfit(
            encoder, tokenizer, [train_examples[i].text for i in chosen],
            [train_examples[i].label for i in chosen], replace(config, seed=seed),
            label_names=vocab.labels)
        seconds = time.perf_counter() - start
        if not _is_main():
            continue  # under torchrun the other ranks only help train the next seed
        score = accuracy(dev_gold, classifier.predict(dev_texts))
        print(f"seed {seed}: dev accuracy {score:.4f}  ({stats['pairs']} pairs, "
              f"{seconds:.1f} s training)")
        per_seed.append({"seed": seed, "accuracy": score, "pairs": stats["pairs"],
                         "train_seconds": seconds, "examples": [train_examples[i].line
                                                                for i in chosen]})
        if seed == 0:
            classifier.save_pretrained(out_dir / "model")
    if not _is_main():
        return {}  # rank 0 writes the results
    scores = [run["accuracy"] for run in per_seed]
    mean = statistics.fmean(scores)
    std = statistics.stdev(scores) if len(scores) > 1 else 0.0
    metrics = {
        "dev": {"accuracy_mean": mean, "accuracy_std": std, "per_seed": per_seed,
                "examples": len(dev_examples)},
        "train": {"shots": shots, "seeds": seeds, "examples": shots * len(vocab),
                  "pairs": per_seed[0]["pairs"]},
        "config": {k: v for k, v in asdict(config).items() if k != "seed"},
        "labels": vocab.labels,
        "model": str(folder),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    print(f"dev accuracy over {seeds} seeds: {mean:.4f} +/- {std:.4f}; metrics.json and the "
          f"seed-0 model written to {out_dir}")
    return metrics


def cmd_setfit(args: argparse.Namespace) -> int:
    setfit(model=args.model, train=args.train, dev=args.dev, out=args.out,
           text_col=args.text_col, label_col=args.label_col, format=args.format,
           shots=args.shots, seeds=args.seeds, loss=args.loss, sampling=args.sampling,
           num_iterations=args.num_iterations, epochs=args.epochs, batch_size=args.batch_size,
           lr=args.lr, head=args.head, end_to_end=args.end_to_end, max_length=args.max_length,
           max_dev=args.max_dev, device=args.device)
    return 0


def add_setfit_parser(sub) -> None:
    """Register ``minift setfit`` on the subcommand parsers ``sub``."""
    p = sub.add_parser("setfit", help="few-shot classification with SetFit, over several seeds")
    p.add_argument("--model", default="minilm", help="'minilm' or a checkpoint folder")
    p.add_argument("--train", required=True, help="training file (.tsv .csv .jsonl, or .txt "
                   "for semicolon 'text;label' lines)")
    p.add_argument("--dev", required=True, help="development file, same format")
    p.add_argument("--text-col", default="text")
    p.add_argument("--label-col", default="label")
    p.add_argument("--format", choices=["tsv", "csv", "jsonl", "semicolon"],
                   help="file format (default: from the suffix)")
    p.add_argument("--shots", type=int, default=8, help="training examples per class")
    p.add_argument("--seeds", type=int, default=5, help="runs, seeds 0..N-1")
    p.add_argument("--loss", choices=["cosine", "contrastive"], default="cosine")
    p.add_argument("--sampling", choices=["oversampling", "undersampling", "unique"],
                   default="oversampling", help="how positive and negative pairs are balanced")
    p.add_argument("--num-iterations", type=int,
                   help="legacy: N positive and N negative pairs per example (overrides "
                        "--sampling)")
    p.add_argument("--epochs", type=int, default=1, help="contrastive epochs")
    p.add_argument("--batch-size", type=int, default=16, help="pairs per step")
    p.add_argument("--lr", type=float, default=2e-5, help="encoder learning rate")
    p.add_argument("--head", choices=["logistic", "linear"], default="logistic",
                   help="logistic regression (L-BFGS) or a linear head trained by AdamW")
    p.add_argument("--end-to-end", action="store_true",
                   help="with --head linear: train the encoder with the head")
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--max-dev", type=int, help="evaluate on a fixed seeded subset of N")
    p.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda when available)")
    p.add_argument("--out", required=True, help="output folder")
    p.set_defaults(func=cmd_setfit)


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
    add_training_options(ft)
    ft.set_defaults(func=cmd_finetune)

    add_ner_parser(sub)
    add_pretrain_parser(sub)
    add_setfit_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``minift`` console script and ``python -m minift``."""
    from minift import distributed

    args = build_parser().parse_args(argv)
    # Under torchrun every rank runs this command; only rank 0 prints (errors show from all).
    helper_rank = distributed.launched() and os.environ.get("RANK", "0") != "0"
    clean = False
    try:
        with open(os.devnull, "w") if helper_rank else contextlib.nullcontext() as quiet:
            with contextlib.redirect_stdout(quiet) if helper_rank else contextlib.nullcontext():
                status = args.func(args)
        clean = True
        return status
    except ValueError as err:  # bad input: one clear line, no traceback
        where = f" (rank {os.environ['RANK']})" if distributed.launched() else ""
        print(f"minift: error{where}: {err}", file=sys.stderr)
        return 2
    finally:
        distributed.teardown(clean)


if __name__ == "__main__":
    sys.exit(main())
