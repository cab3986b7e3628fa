"""``ner``: fine-tune a token classifier (named entities, or parts of speech) on CoNLL column
files; and the scoring of a saved one on a test file, which ``minift.run.search`` reuses."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from minift.core.labels import LabelVocab
from minift.data import readers
from minift.data.tokenizer import Tokenizer
from minift.fast.unpad import speed_up
from minift.hf.checkpoint import read_config_json, resolve_model_dir
from minift.run.options import NerOptions
from minift.run.recipes import prepare, skeleton
from minift.tasks import tag as tagging


def tag_set(o: NerOptions, folder: Path, splits: dict, task: str) -> LabelVocab:
    """The tag set: the whole training file's (so that a small ``limit_train`` subset that
    lacks a rare tag, POS's "WP$", does not make that tag an error in dev and test); a token
    classifier's own, in its order, when training continues from one."""
    if task == "ner":
        labels = readers.entity_label_set(splits["train"])
    else:
        labels = LabelVocab.from_sequences([s.tags for s in splits["train"]])
    saved = read_config_json(folder)
    if "BertForTokenClassification" in (saved.get("architectures") or []) and "id2label" in saved:
        trained = LabelVocab.from_dict(saved)  # continue from a token classifier: keep its ids
        if set(trained.labels) != set(labels.labels):
            raise ValueError(f"{folder} is a token classifier for the tags {trained.labels}, "
                             f"but {o.train} has the tags {labels.labels}")
        labels = trained
    if len(labels) < 2:
        raise ValueError(f"{o.train}: found a single tag {labels.labels}; a tagger needs two")
    return labels


def tag_dataset(sentences: list, labels: LabelVocab, tokenizer, o: NerOptions,
                train: bool = False) -> tagging.TokenClassificationDataset:
    """Sentences as windows of whole words, with their tag ids (``train``: the training
    options, ``label_all_subwords``)."""
    options = {}
    if train:
        options = dict(label_all_subwords=o.label_all_subwords,
                       b_to_i=labels.b_to_i() if o.label_all_subwords else None)
    return tagging.TokenClassificationDataset(
        [s.words for s in sentences], tokenizer, max_length=o.max_length,
        label_ids=readers.encode_tags(sentences, labels), stride_words=o.stride_words,
        where=[s.where for s in sentences], **options)


def scores(model, dataset, sentences: list, labels: LabelVocab, task: str, o: NerOptions,
           device, name: str) -> dict:
    """The tagger's scores on ``dataset`` (entity or token scores, the loss), with the
    predicted tags riding along (``predicted``)."""
    predicted, loss = tagging.predict_tags(model, dataset, o.batch_size, device,
                                           progress=o.progress, desc=name)
    tags = [labels.decode(p) for p in predicted]
    result = tagging.tagging_scores([s.tags for s in sentences], tags, task)
    return result | ({"loss": loss} if loss is not None else {}) | {"predicted": tags}


def read_test(path: str, options: dict) -> list:
    """A CoNLL test file, its tags in the options' column."""
    return readers.read_conll(path, column=options.get("column", -1))


def score_saved(folder: Path, test: list, options: dict, device) -> dict[str, float]:
    """The scores on ``test`` (``read_test``) of the tagger saved in ``folder`` (its task and
    scheme from its ``metrics.json``)."""
    o = NerOptions(**{"out": str(folder), "train": "", "dev": ""} | options | {"progress": False})
    metrics = json.loads((folder / "metrics.json").read_text(encoding="utf-8"))
    task = metrics["task"]
    sentences = readers.apply_scheme(test, metrics["scheme"]) if task == "ner" else test
    labels = LabelVocab.from_dict(read_config_json(folder))
    model = speed_up(tagging.TokenClassifier.from_pretrained(folder)).to(device)
    dataset = tag_dataset(sentences, labels, Tokenizer.from_pretrained(folder), o)
    result = scores(model, dataset, sentences, labels, task, o, device, "test")
    return {k: v for k, v in result.items() if isinstance(v, int | float)}


def ner(**options: Any) -> dict:
    """Fine-tune a token classifier on CoNLL column files (options: ``NerOptions``' fields);
    write the best model, the tokenizer, ``metrics.json`` and ``{dev,test}_predictions.txt``
    (``word gold predicted``) into ``out``. NER scores entities (micro F1, seqeval's default
    mode), POS token accuracy; sentences longer than ``max_length`` are windowed, not cut."""
    o = NerOptions(**options)
    prepare.check_device(o.device)
    folder = resolve_model_dir(o.model)
    prepare.check_max_length(folder, o.max_length)
    prepare.check_freeze(folder, o.freeze)
    files = {"train": o.train, "dev": o.dev} | ({"test": o.test} if o.test else {})
    splits = {name: readers.read_conll(path, column=o.column) for name, path in files.items()}
    task = o.tags if o.tags != "auto" else "ner" if readers.is_bio(splits["train"]) else "pos"
    config = skeleton.train_config(o, metric="f1" if task == "ner" else "accuracy",
                                   greater_is_better=True)
    if task == "ner":
        splits = {name: readers.apply_scheme(part, o.scheme) for name, part in splits.items()}
    labels = tag_set(o, folder, splits, task)
    splits["train"] = prepare.subset(splits["train"], o.limit_train, o.seed)
    splits["dev"] = prepare.subset(splits["dev"], o.limit_dev, 0)
    for sentences in splits.values():
        readers.encode_tags(sentences, labels)  # a tag outside the set stops here, before loading

    with prepare.claim_run("ner", o, folder, files, task=task, labels=labels.labels) as out_dir:
        print(f"data: {task} tags from column {o.column} ({len(labels)} tags: "
              f"{' '.join(labels.labels)}); tokenizing")
        tokenizer = Tokenizer.from_pretrained(folder)
        datasets = {name: tag_dataset(sentences, labels, tokenizer, o, train=name == "train")
                    for name, sentences in splits.items()}
        for name, data in datasets.items():
            plan = data.plan
            windows = (f"{plan.num_windowed} longer than {o.max_length} tokens, split into "
                       f"{plan.num_windows - plan.num_sentences + plan.num_windowed} windows of "
                       f"whole words ({o.stride_words} words of overlap), none truncated"
                       if plan.num_windowed else f"all fit in {o.max_length} tokens")
            print(f"{name}: {plan.num_sentences} sentences, "
                  f"{sum(len(s.words) for s in splits[name])} words; {windows}")

        def evaluate(m, device, name: str = "dev") -> dict:
            return scores(m, datasets[name], splits[name], labels, task, o, device, name)

        outcome = skeleton.run_recipe(skeleton.Recipe(
            config=config,
            build=skeleton.head_builder(tagging.TokenClassifier, folder, labels.labels, o),
            load=tagging.TokenClassifier.from_pretrained,
            train_batches=prepare.epoch_batches(datasets["train"], o.batch_size, o.seed,
                                                lengths=True),
            evaluate=evaluate, tokenizer=tokenizer, options=o,
        ))
        if outcome is None:
            return {}  # the other ranks of a torchrun job are done: rank 0 writes the results
        scored = {"dev": outcome.after}  # the best weights on dev (scored already), and test
        if "test" in datasets:
            print("scoring the best model on test")
            scored["test"] = evaluate(outcome.best, next(outcome.best.parameters()).device,
                                      "test")
        metrics: dict = {}
        for name, result in scored.items():
            readers.write_conll(out_dir / f"{name}_predictions.txt",
                                [s.words for s in splits[name]], [s.tags for s in splits[name]],
                                result["predicted"])
            metrics[name] = {k: v for k, v in result.items() if k != "predicted"}
        metrics["train"] = outcome.facts() | {"sentences": len(splits["train"]),
                                              "windows": len(datasets["train"]),
                                              "init": o.init, "head_lr": o.head_lr}
        metrics |= {"task": task, "column": o.column,
                    "scheme": o.scheme if task == "ner" else None, "labels": labels.labels,
                    "max_length": o.max_length}
        prepare.write_metrics(out_dir, metrics)
    for name in ("dev", "test"):
        if name in metrics:
            main_score = (f"entity F1 {metrics[name]['f1']:.4f} (seqeval default mode, micro; "
                          f"strict IOB2 {metrics[name]['strict']['f1']:.4f})" if task == "ner"
                          else f"token accuracy {metrics[name]['accuracy']:.4f}")
            print(f"\n{name}: {main_score}")
            print(tagging.scores_table(metrics[name], task, name))
    print(f"model, tokenizer, metrics.json, log.jsonl and predictions written to {out_dir}")
    return metrics
