"""CoNLL-2003 NER and POS tagging: minift vs the transformers recipe, same weights, data, batches.

Question: does a MiniLM token classifier fine-tuned by ``minift ner`` reach the CoNLL-2003 test
entity F1 (seqeval, default mode, micro average) of the standard transformers recipe, and the
same part-of-speech token accuracy? Each task is trained twice in one process, interleaved:

- minift: ``minift.run.recipes.ner`` (the ``minift ner`` command) on a fixed seeded subset of the
  training sentences; it keeps the checkpoint with the best dev score and writes its test
  predictions, which are scored here with seqeval itself;
- reference: ``transformers.BertForTokenClassification`` from the same checkpoint with the same
  initial head, torch's ``AdamW`` with transformers' weight-decay grouping, transformers' linear
  warmup schedule, gradient clipping at 1.0, the same hyper-parameters, and the very same
  batches (the subset, the label order, the length-grouped order of each epoch, the windows of
  long sentences), keeping the epoch with the best dev score as minift does.

Sentences longer than --max-length tokens are split into windows for both (the transformers
example script would truncate them instead). Writes ``results/ner_conll.{json,md}``.

    python benchmarks/ner_conll.py --threads 1  # the full run: 15 min on a shared 2-core CPU
    python benchmarks/ner_conll.py --quick      # a smoke run: 200 sentences, small dev and test

On a crowded machine (more busy processes than cores) ``--threads 1`` is several times faster
than torch's default of one thread per core.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import random
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

import torch
import transformers
from seqeval.metrics import accuracy_score, f1_score, precision_score, recall_score
from seqeval.scheme import IOB2
from speed_common import reference_adamw
from transformers import BertForTokenClassification, get_linear_schedule_with_warmup

from minift.core.align import IGNORE_INDEX
from minift.core.labels import LabelVocab
from minift.core.metrics import format_table
from minift.data.readers import apply_scheme, encode_tags, entity_label_set, read_conll, write_conll
from minift.data.tokenizer import Tokenizer
from minift.fast.cpu_kernels import cpu_model
from minift.fast.unpad import speed_up
from minift.hf.checkpoint import resolve_model_dir
from minift.run.recipes import ner
from minift.tasks.tag import TokenClassificationDataset, TokenClassifier, predict_tags

HERE = Path(__file__).resolve().parent
COLUMNS = {"ner": 2, "pos": 1}  # CoNLL-2003 as stored here: word POS NER


def data_dir() -> Path:
    path = os.environ.get("MINIFT_DATA") or HERE.parent.parent / "shared" / "data"
    return Path(path) / "conll2003"


def seeded_subset(items: list, size: int | None, seed: int) -> list:
    """A fixed seeded random subset in file order (`minift ner --limit-train`'s rule)."""
    if size is None or size >= len(items):
        return list(items)
    return [items[i] for i in sorted(random.Random(seed).sample(range(len(items)), size))]


def write_files(folder: Path, dev_size: int | None, test_size: int | None, seed: int) -> Path:
    """train.txt, dev.txt and test.txt in `folder`: dev and test cut to seeded random subsets
    (all three columns kept), train the original file."""
    source = data_dir()
    (folder / "train.txt").symlink_to(source / "train.txt")
    for name, size in (("dev", dev_size), ("test", test_size)):
        pos = read_conll(source / f"{name}.txt", column=1)
        tags = read_conll(source / f"{name}.txt", column=2)
        keep = seeded_subset(list(range(len(pos))), size, seed)
        write_conll(
            folder / f"{name}.txt",
            [pos[i].words for i in keep],
            [pos[i].tags for i in keep],
            [tags[i].tags for i in keep],
        )
    return folder


def scores(gold: list[list[str]], pred: list[list[str]], task: str) -> dict[str, float]:
    """seqeval's numbers: entity P/R/F1 (default mode, micro; and strict IOB2 F1) or accuracy."""
    if task == "pos":
        return {"accuracy": accuracy_score(gold, pred)}
    return {
        "f1": f1_score(gold, pred),
        "precision": precision_score(gold, pred),
        "recall": recall_score(gold, pred),
        "f1_strict": f1_score(gold, pred, mode="strict", scheme=IOB2),
    }


def read_split(folder: Path, name: str, task: str):
    sentences = read_conll(folder / f"{name}.txt", column=COLUMNS[task])
    return apply_scheme(sentences, "iob2") if task == "ner" else sentences


def check_alignment(folder: Path, dataset: TokenClassificationDataset, sentences, ids) -> None:
    """The batches are transformers' recipe (word_ids; first sub-word labelled) on a sample."""
    hf = transformers.AutoTokenizer.from_pretrained(folder)
    whole = {}  # sentence -> its piece, for sentences that fit in one window
    for k, (s, start, end) in enumerate(dataset.plan.pieces()):
        if (start, end) == (0, len(sentences[s].words)):
            whole[s] = k
    sample = list(whole)[:256]
    encoded = hf([sentences[i].words for i in sample], is_split_into_words=True)
    for row, i in enumerate(sample):
        words, previous, labels = encoded.word_ids(row), None, []
        for word in words:
            labels.append(IGNORE_INDEX if word is None or word == previous else ids[i][word])
            previous = word
        if encoded["input_ids"][row] != dataset.input_ids[whole[i]].tolist():
            raise RuntimeError(f"sentence {i}: token ids differ from transformers'")
        if labels != dataset.labels[whole[i]].tolist():
            raise RuntimeError(f"sentence {i}: aligned labels differ from transformers' recipe")


def reference_run(
    *,
    data,
    task,
    train,
    labels,
    limit_train,
    epochs,
    lr,
    batch_size,
    max_length,
    seed,
    warmup_ratio=0.1,
    weight_decay=0.01,
    max_grad_norm=1.0,
    stride_words=16,
):
    """The transformers recipe on minift's batches; returns dev and test scores and seconds."""
    splits = {
        "train": train,
        "dev": read_split(data, "dev", task),
        "test": read_split(data, "test", task),
    }
    folder = resolve_model_dir("minilm")
    tokenizer = Tokenizer.from_pretrained(folder)
    ids = {name: encode_tags(s, labels) for name, s in splits.items()}
    datasets = {
        name: TokenClassificationDataset(
            [s.words for s in sentences],
            tokenizer,
            max_length=max_length,
            label_ids=ids[name],
            stride_words=stride_words,
        )
        for name, sentences in splits.items()
    }
    check_alignment(folder, datasets["train"], splits["train"], ids["train"])

    id2label = dict(enumerate(labels.labels))
    model = BertForTokenClassification.from_pretrained(
        folder,
        num_labels=len(labels),
        id2label=id2label,
        label2id={t: i for i, t in id2label.items()},
    )
    torch.manual_seed(seed)  # the head minift starts from (the same draws as in `ner`)
    head = speed_up(TokenClassifier.from_pretrained(folder, num_labels=len(labels), id2label=id2label))
    with torch.no_grad():
        model.classifier.weight.copy_(head.classifier.weight)
        model.classifier.bias.copy_(head.classifier.bias)
    del head

    optimizer = reference_adamw(model, lr, weight_decay)
    steps_per_epoch = -(-len(datasets["train"]) // batch_size)
    total = steps_per_epoch * epochs
    scheduler = get_linear_schedule_with_warmup(optimizer, math.ceil(warmup_ratio * total), total)

    def evaluate(name: str) -> dict[str, float]:
        predicted, _ = predict_tags(model, datasets[name], batch_size, torch.device("cpu"))
        return scores([s.tags for s in splits[name]], [labels.decode(p) for p in predicted], task)

    metric = "f1" if task == "ner" else "accuracy"
    torch.manual_seed(seed)  # dropout
    start = time.perf_counter()
    best, best_state = None, None
    for epoch in range(epochs):
        model.train()
        for batch in datasets["train"].batches(
            batch_size, generator=torch.Generator().manual_seed(seed + epoch)
        ):
            model(**batch).loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
        dev = evaluate("dev")
        if best is None or dev[metric] > best[metric]:  # the best epoch on dev, as minift
            best, best_state = dev, copy.deepcopy(model.state_dict())
    seconds = time.perf_counter() - start
    model.load_state_dict(best_state)
    return {
        "dev": best,
        "test": evaluate("test"),
        "seconds": seconds,
        "test_windowed": datasets["test"].plan.num_windowed,
    }


def minift_run(*, data, task, limit_train, epochs, lr, batch_size, max_length, seed):
    """`minift ner`; its test predictions file is scored with seqeval."""
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        metrics = ner(
            model="minilm",
            train=str(data / "train.txt"),
            dev=str(data / "dev.txt"),
            test=str(data / "test.txt"),
            column=COLUMNS[task],
            tags=task,
            limit_train=limit_train,
            epochs=epochs,
            lr=lr,
            batch_size=batch_size,
            max_length=max_length,
            seed=seed,
            out=out,
            progress=False,
        )
        seconds = time.perf_counter() - start
        result = {}
        for name in ("dev", "test"):
            file = Path(out) / f"{name}_predictions.txt"
            gold = [s.tags for s in read_conll(file, column=1)]
            pred = [s.tags for s in read_conll(file, column=2)]
            result[name] = scores(gold, pred, task)
    own = metrics["test"]["f1" if task == "ner" else "accuracy"]
    seqeval_value = result["test"]["f1" if task == "ner" else "accuracy"]
    if abs(own - seqeval_value) > 1e-9:
        raise RuntimeError(f"minift's metric {own} differs from seqeval's {seqeval_value}")
    return result | {
        "seconds": seconds,
        "train_seconds": metrics["train"]["seconds"],
        "steps": metrics["train"]["steps"],
        "labels": metrics["labels"],
        "sentences": metrics["train"]["sentences"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="200 sentences: a smoke run")
    parser.add_argument("--train-size", type=int, help="training subset (default 3000; quick 200)")
    parser.add_argument(
        "--dev-size", type=int, help="dev subset for the best epoch (default 1000; quick 200)"
    )
    parser.add_argument("--test-size", type=int, help="test subset (default: all; quick 300)")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--threads", type=int, help="torch threads (default: torch's); 1 on a crowded machine"
    )
    parser.add_argument("--out", default=str(HERE / "results"), help="folder for JSON + markdown")
    args = parser.parse_args()
    transformers.logging.set_verbosity_error()  # no load report for the fresh head
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    size = args.train_size or (200 if args.quick else 3000)
    dev_size = args.dev_size or (200 if args.quick else 1000)
    test_size = args.test_size or (300 if args.quick else None)
    epochs = 1 if args.quick else args.epochs
    common = dict(
        limit_train=size,
        epochs=epochs,
        lr=args.lr,
        batch_size=args.batch_size,
        max_length=args.max_length,
        seed=args.seed,
    )
    data = write_files(Path(tempfile.mkdtemp(prefix="ner_conll_")), dev_size, test_size, args.seed)
    counts = {name: len(read_conll(data / f"{name}.txt")) for name in ("dev", "test")}
    rows, records = [], []
    for task in ("ner", "pos"):
        ours = minift_run(data=data, task=task, **common)
        # The subset and label order minift used, rebuilt the way `minift ner` builds them:
        # the tags of the whole training file, then the seeded subset.
        all_train = read_split(data, "train", task)
        labels = (
            entity_label_set(all_train)
            if task == "ner"
            else LabelVocab.from_sequences([s.tags for s in all_train])
        )
        train = seeded_subset(all_train, size, args.seed)
        if labels.labels != ours["labels"] or len(train) != ours["sentences"]:
            raise RuntimeError("the reference's subset or label order differs from minift's")
        ref = reference_run(data=data, task=task, train=train, labels=labels, **common)
        key = "f1" if task == "ner" else "accuracy"
        record = {
            "task": task,
            "train_sentences": len(train),
            "dev_sentences": counts["dev"],
            "test_sentences": counts["test"],
            "epochs": epochs,
            "lr": args.lr,
            "batch_size": args.batch_size,
            "max_length": args.max_length,
            "labels": labels.labels,
            "minift": ours,
            "reference": ref,
        }
        records.append(record)
        rows.append(
            {
                "task": task,
                "metric (test)": "entity F1" if task == "ner" else "token accuracy",
                "train sentences": len(train),
                "minift": 100 * ours["test"][key],
                "transformers": 100 * ref["test"][key],
                "Δ (pts)": 100 * (ours["test"][key] - ref["test"][key]),
                "minift dev": 100 * ours["dev"][key],
                "transformers dev": 100 * ref["dev"][key],
                "time ratio (minift/ref)": ours["train_seconds"] / ref["seconds"],
            }
        )
        print(format_table(rows[-1:], float_format=".2f"), flush=True)
    machine = {
        "platform": platform.platform(),
        "processor": cpu_model(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "seqeval": version("seqeval"),
        "threads": torch.get_num_threads(),
        "quick": args.quick,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = "ner_conll_quick" if args.quick else "ner_conll"
    command = "python benchmarks/ner_conll.py" + (" --quick" if args.quick else "")
    command += f" --threads {args.threads}" if args.threads is not None else ""
    (out / f"{name}.json").write_text(
        json.dumps({"machine": machine, "command": command, "runs": records}, indent=2) + "\n"
    )
    table = format_table(rows, float_format=".2f")
    strict = [
        f"{r['task']}: minift {100 * r['minift']['test']['f1_strict']:.2f}, transformers "
        f"{100 * r['reference']['test']['f1_strict']:.2f}"
        for r in records
        if r["task"] == "ner"
    ]
    (out / f"{name}.md").write_text(
        f"# CoNLL-2003 NER and POS with all-MiniLM-L6-v2: minift vs transformers\n\n"
        f"`{command}` on {machine['platform']}, torch {machine['torch']}, transformers "
        f"{machine['transformers']}, {machine['threads']} threads. Training: a fixed seeded "
        f"subset of {size} of the 14,041 training sentences, {epochs} epoch(s), lr {args.lr}, "
        f"batch {args.batch_size}, max length {args.max_length} (longer sentences windowed), "
        f"linear warmup 10%, weight decay 0.01, the checkpoint of the best dev epoch (dev: a "
        f"seeded subset of {counts['dev']} of the 3,250 sentences). Test set: {counts['test']} "
        f"of the 3,453 sentences. NER: entity F1 by seqeval (default mode, micro average) in "
        f"points; POS: token accuracy in points. Both sides start from the same weights (head "
        f"included) and see the same batches. Time ratio = minift training seconds / reference "
        f"training seconds (both evaluate dev once an epoch); measured on a shared machine.\n\n"
        f"{table}\n\nStrict IOB2 entity F1 (seqeval mode='strict'): {'; '.join(strict)}.\n"
    )
    print(table)


if __name__ == "__main__":
    main()
