"""``finetune``: fine-tune a sequence (or pair) classifier; and the scoring of a saved one on a
test file, which ``minift.run.search`` reuses."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from minift.core.labels import LabelVocab
from minift.data.batches import with_lengths
from minift.data.readers import encode_labels, read_examples, task_files
from minift.data.tokenizer import Tokenizer
from minift.fast.unpad import speed_up
from minift.hf.checkpoint import read_config_json, resolve_model_dir
from minift.run.options import FinetuneOptions, OptionError
from minift.run.recipes import prepare, skeleton
from minift.tasks.classify import (
    ClassificationDataset,
    FeatureRows,
    SequenceClassifier,
    classification_metrics,
    encode_features,
)


def data_files(o: FinetuneOptions) -> tuple[str | None, str | None, dict]:
    """``(train, dev, columns)``: the GLUE task's files and columns from the data folder, or
    the options' own."""
    if o.task is not None:
        if o.train or o.dev:
            raise OptionError("give either `task` or `train`/`dev`, not both")
        train, dev, text, pair, label = task_files(o.task, prepare.data_folder(o.data_dir))
        return train, dev, dict(text_col=text, pair_col=pair, label_col=label)
    if not (o.train and (o.dev or o.dev_from_train)):
        raise OptionError("give `task` sst2|mrpc|rte, or both `train` FILE and `dev` FILE "
                          "(or `train` FILE `dev_from_train` N)")
    return o.train, o.dev, dict(text_col=o.text_col, pair_col=o.pair_col, label_col=o.label_col)


def scores(model, examples: list, label_ids: list[int], tokenizer, labels: int,
           o: FinetuneOptions, device, batches: list | None = None) -> dict:
    """The classifier's scores on ``examples`` (loss, accuracy, f1, the confusion matrix)."""
    if batches is None:
        dataset = ClassificationDataset(examples, tokenizer, max_length=o.max_length,
                                        label_ids=label_ids)
        batches = [with_lengths(batch)
                   for batch in dataset.batches(o.batch_size, generator=None, shuffle=False)]
    return classification_metrics(model, batches, labels, device, progress=o.progress)


def read_test(path: str, options: dict) -> list:
    """A test file in the format of the task's (or the options') files."""
    return read_examples(path, **data_files(FinetuneOptions(**{"out": ""} | options))[2])


def score_saved(folder: Path, test: list, options: dict, device) -> dict[str, float]:
    """The scores on ``test`` (``read_test``) of the classifier saved in ``folder``."""
    o = FinetuneOptions(**{"out": str(folder)} | options | {"progress": False})
    vocab = LabelVocab.from_dict(read_config_json(folder))
    model = speed_up(SequenceClassifier.from_pretrained(folder)).to(device)
    result = scores(model, test, encode_labels(test, vocab), Tokenizer.from_pretrained(folder),
                    len(vocab), o, device)
    return {k: v for k, v in result.items() if k != "confusion"}


def frozen_rows(model: SequenceClassifier, datasets: list[ClassificationDataset],
                o: FinetuneOptions) -> list[FeatureRows]:
    """``datasets`` as the features of ``model``'s frozen encoder, each example encoded once on
    the run's device: what ``freeze`` head trains its head on, so an epoch costs the head alone.
    The head trains as on the examples (a test holds the two to float rounding): the encoder is
    fixed and, frozen, in eval mode."""
    device = prepare.pick_device(o.device)
    speed_up(model).to(device)
    print(f"freeze=head: the frozen encoder's {model.pooling} features of "
          f"{sum(len(d) for d in datasets)} examples, computed once")
    return [FeatureRows(d, encode_features(model, d, batch_size=o.batch_size, device=device))
            for d in datasets]


def finetune(**options: Any) -> dict:
    """Fine-tune a sequence classifier (options: ``FinetuneOptions``' fields); write the best
    model and ``metrics.json`` into ``out``; return the metrics. ``dev_from_train`` leaves the dev
    file unread, so that a task with no test set of its own (SST-2) can give it as ``test``."""
    o = FinetuneOptions(**options)
    if o.dev_from_train is not None and o.dev:
        raise OptionError("give `dev` FILE or `dev_from_train` N, not both")
    config = skeleton.train_config(o, metric="accuracy", greater_is_better=True)
    prepare.check_device(o.device)
    folder = resolve_model_dir(o.model)
    prepare.check_max_length(folder, o.max_length)
    prepare.check_freeze(folder, o.freeze)
    train, dev, columns = data_files(o)
    if o.dev_from_train is not None:
        train_examples, dev_examples = prepare.dev_from_train(
            read_examples(train, **columns), o.dev_from_train, o.limit_train, o.split_seed,
            str(train))
    else:
        train_examples = prepare.subset(read_examples(train, **columns), o.limit_train, o.seed)
        dev_examples = read_examples(dev, **columns)
    dev_examples = prepare.subset(dev_examples, o.limit_dev, 0)
    test_examples = read_examples(o.test, **columns) if o.test else []
    vocab = LabelVocab.from_examples(train_examples)
    if len(vocab) < 2:
        raise ValueError(f"{train}: found a single label {vocab.labels}; a classifier needs two")
    train_labels = encode_labels(train_examples, vocab)
    dev_labels = encode_labels(dev_examples, vocab)  # a dev label unseen in train stops here
    test_labels = encode_labels(test_examples, vocab)

    with prepare.claim_run("finetune", o, folder, {"train": train, "dev": dev, "test": o.test},
                           labels=vocab.labels) as out_dir:
        print(f"data: {len(train_examples)} train / {len(dev_examples)} dev examples, "
              f"labels {vocab.labels}; tokenizing")
        tokenizer = Tokenizer.from_pretrained(folder)
        train_set = ClassificationDataset(train_examples, tokenizer, max_length=o.max_length,
                                          label_ids=train_labels)
        dev_set = ClassificationDataset(dev_examples, tokenizer, max_length=o.max_length,
                                        label_ids=dev_labels)
        build = skeleton.head_builder(SequenceClassifier, folder, vocab.labels, o,
                                      pooling=o.pooling)
        train_rows, dev_rows = train_set, dev_set
        if o.freeze == "head":  # a fixed feature extractor: its features once, not every epoch
            model = build()
            train_rows, dev_rows = frozen_rows(model, [train_set, dev_set], o)
            build = lambda: model  # noqa: E731  (the model whose features these are)
        dev_batches = dev_rows.batches(o.batch_size, generator=None, shuffle=False)
        encoded = train_rows is train_set  # token batches, not a frozen encoder's features
        if encoded:  # host-counted lengths: the fast model unpads without reading the device
            dev_batches = [with_lengths(batch) for batch in dev_batches]
        outcome = skeleton.run_recipe(skeleton.Recipe(
            config=config,
            build=build,
            load=SequenceClassifier.from_pretrained,
            train_batches=prepare.epoch_batches(train_rows, o.batch_size, o.seed,
                                                lengths=encoded),
            evaluate=lambda m, device: scores(m, dev_examples, dev_labels, tokenizer, len(vocab),
                                              o, device, dev_batches),
            tokenizer=tokenizer, options=o,
            before=lambda s: f"dev before fine-tuning: accuracy {s['accuracy']:.4f}  "
                             f"f1 {s['f1']:.4f}",
        ))
        if outcome is None:
            return {}  # the other ranks of a torchrun job are done: rank 0 writes the results
        metrics = outcome.metrics("dev", examples=len(train_examples), init=o.init, lr=o.lr,
                                  head_lr=o.head_lr, pooling=outcome.model.pooling,
                                  cached_features=o.freeze == "head")
        metrics["labels"] = vocab.labels
        if test_examples:
            print(f"scoring the best model on {len(test_examples)} test examples ({o.test})")
            metrics["test"] = scores(outcome.best, test_examples, test_labels, tokenizer,
                                     len(vocab), o, next(outcome.best.parameters()).device)
        prepare.write_metrics(out_dir, metrics)

    skeleton.report(metrics, ("loss", "accuracy", "f1"),
                    "model, tokenizer, metrics.json and log.jsonl", out_dir, column="", after="dev")
    return metrics
