"""``qa``: extractive question answering on SQuAD-format files, and ``answer``: one question
answered with a trained span head; and the scoring of a saved span head on a test file, which
``minift.run.search`` reuses."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from minift.core.files import atomic_write
from minift.data.readers import DataError, read_utf8_text
from minift.data.tokenizer import Tokenizer
from minift.fast.unpad import speed_up
from minift.hf.checkpoint import read_config_json, resolve_model_dir
from minift.run.options import AnswerOptions, OptionError, QaOptions, SpanOptions
from minift.run.recipes import prepare, skeleton
from minift.tasks import qa as squad_qa


def _check_lengths(folder: Path, o: SpanOptions) -> None:
    prepare.check_max_length(folder, o.max_length, minimum=4)
    if not o.doc_stride < o.max_length:
        raise OptionError(f"`doc_stride` must be between 0 and `max_length` - 1 "
                          f"({o.max_length - 1}), got {o.doc_stride}")


def _questions(o: QaOptions) -> tuple[list, list, dict]:
    """``(train, dev, split)``: the questions of ``train`` and ``dev``, or of one ``squad`` file
    split by article (``dev_articles`` whole articles drawn with ``split_seed`` are dev)."""
    if o.squad is not None:
        if o.train or o.dev:
            raise OptionError("give either `squad` FILE `dev_articles` N, or `train` and `dev`")
        if o.dev_articles is None:
            raise OptionError("`squad` needs `dev_articles` N (the articles held out for dev)")
        train, dev = squad_qa.split_by_article(squad_qa.read_squad(o.squad), o.dev_articles,
                                               o.split_seed)
        return train, dev, {"file": str(o.squad), "dev_articles": o.dev_articles,
                            "split_seed": o.split_seed}
    if o.train and o.dev:
        if o.dev_articles is not None:
            raise OptionError("`dev_articles` goes with `squad`, not with `train`/`dev`")
        return (squad_qa.read_squad(o.train), squad_qa.read_squad(o.dev),
                {"train": str(o.train), "dev": str(o.dev)})
    raise OptionError("give `train` FILE and `dev` FILE, or `squad` FILE `dev_articles` N")


def read_test(path: str, options: dict) -> list:
    """The questions of a SQuAD test file."""
    return squad_qa.read_squad(path)


def score_saved(folder: Path, test: list, options: dict, device) -> dict[str, float]:
    """Exact match and F1 on ``test`` (``read_test``) of the span head saved in ``folder``."""
    o = QaOptions(**{"out": str(folder)} | options | {"progress": False})
    tokenizer = Tokenizer.from_pretrained(folder)
    model = speed_up(squad_qa.QuestionAnswering.from_pretrained(folder)).to(device)
    windows = squad_qa.make_windows(test, tokenizer, max_length=o.max_length,
                                    doc_stride=o.doc_stride)
    dataset = squad_qa.WindowDataset(windows, tokenizer.pad_token_id, labels=False)
    scores = squad_qa.qa_scores(model, test, windows, dataset, o.batch_size, device,
                                n_best=o.n_best, max_answer_length=o.max_answer_length)
    return {k: v for k, v in scores.items() if k != "predictions"}


def qa(**options: Any) -> dict:
    """Fine-tune a span head on SQuAD v1.1 files (options: ``QaOptions``' fields); write the best
    model (by dev F1), the tokenizer, ``predictions.json`` and ``metrics.json`` into ``out``. One
    ``squad`` file is split by whole articles, so that no paragraph is in both train and dev;
    the scores are in points (0-100), as the official script's."""
    o = QaOptions(**options)
    config = skeleton.train_config(o, metric="f1", greater_is_better=True)
    prepare.check_device(o.device)
    folder = resolve_model_dir(o.model)
    _check_lengths(folder, o)
    train_questions, dev_questions, split = _questions(o)
    train_questions = prepare.subset(train_questions, o.limit_train, o.seed)
    dev_questions = prepare.subset(dev_questions, o.limit_dev, 0)
    tokenizer = Tokenizer.from_pretrained(folder)
    train_windows, train_set, dev_windows, dev_set = squad_qa.train_and_dev_windows(
        train_questions, dev_questions, tokenizer, max_length=o.max_length,
        doc_stride=o.doc_stride)

    files = {"squad": o.squad, "train": o.train, "dev": o.dev}
    with prepare.claim_run("qa", o, folder, files) as out_dir:
        print(f"data: {len(train_questions)} train questions -> {len(train_windows)} windows, "
              f"{len(dev_questions)} dev questions -> {len(dev_windows)} windows (max length "
              f"{o.max_length}, stride {o.doc_stride})")

        def build():
            print(f"loading {folder}")
            torch.manual_seed(o.seed)  # the fresh head's initialisation
            return squad_qa.QuestionAnswering.from_pretrained(folder)

        outcome = skeleton.run_recipe(skeleton.Recipe(
            config=config, build=build, load=squad_qa.QuestionAnswering.from_pretrained,
            train_batches=prepare.epoch_batches(train_set, o.batch_size, o.seed),
            evaluate=lambda m, device: squad_qa.qa_scores(
                m, dev_questions, dev_windows, dev_set, o.batch_size, device,
                progress=o.progress, n_best=o.n_best, max_answer_length=o.max_answer_length),
            tokenizer=tokenizer, options=o,
        ))
        if outcome is None:
            return {}  # the other ranks of a torchrun job are done: rank 0 writes the results
        predictions = outcome.after.pop("predictions")
        atomic_write(out_dir / "predictions.json",
                     (json.dumps(predictions, indent=1, ensure_ascii=False) + "\n").encode())
        metrics = outcome.metrics("dev", questions=len(train_questions),
                                  windows=len(train_windows), lr=o.lr, batch_size=o.batch_size,
                                  epochs=o.epochs, seed=o.seed)
        metrics["data"] = split | {"max_length": o.max_length, "doc_stride": o.doc_stride,
                                   "dev_windows": len(dev_windows)}
        prepare.write_metrics(out_dir, metrics)
    dev_scores = metrics["dev"]
    print(f"dev: exact match {dev_scores['exact_match']:.2f}  F1 {dev_scores['f1']:.2f} "
          f"({dev_scores['questions']} questions, SQuAD v1.1 scoring, points)")
    print(f"model, tokenizer, metrics.json, predictions.json and log.jsonl written to {out_dir}")
    return metrics


def answer(**options: Any) -> list:
    """Answer one question from a context (text, or a UTF-8 file) with a trained span head;
    print the answer, its score (start + end logit), its probability among the n-best and its
    character span; return the n-best ``minift.tasks.qa.Span``s. The options are
    ``minift.run.options.AnswerOptions``'s fields."""
    o = AnswerOptions(**options)
    if not o.question or not o.question.strip():
        raise OptionError("`question` is empty")
    if (o.context is None) == (o.context_file is None):
        raise OptionError("give the context as `context` TEXT or `context_file` FILE (one)")
    context = o.context
    if o.context_file is not None:
        try:  # read with the readers' bounds: no device, FIFO or oversized file
            context = read_utf8_text(o.context_file)
        except DataError as err:
            raise OptionError(f"`context_file` {err}") from None
    if not context.strip():
        raise ValueError("the context is empty")
    prepare.check_device(o.device)
    folder = resolve_model_dir(o.model)
    architectures = read_config_json(folder).get("architectures") or []
    if "BertForQuestionAnswering" not in architectures:
        raise ValueError(f"{folder} is not a question-answering model (config.json architectures "
                         f"{architectures}); train one with 'minift qa --train ... --out DIR'")
    _check_lengths(folder, o)
    tokenizer = Tokenizer.from_pretrained(folder)
    asked = squad_qa.Question("question", o.question, context, [])
    windows = squad_qa.make_windows([asked], tokenizer, max_length=o.max_length,
                                    doc_stride=o.doc_stride)
    device = torch.device(o.device or "cpu")
    span_model = speed_up(squad_qa.QuestionAnswering.from_pretrained(folder)).to(device)
    dataset = squad_qa.WindowDataset(windows, tokenizer.pad_token_id, labels=False)
    spans = squad_qa.qa_predictions(span_model, [asked], windows, dataset, 8, device,
                                    n_best=o.n_best,
                                    max_answer_length=o.max_answer_length)["question"]
    for rank, span in enumerate(spans[:o.show], 1):
        print(f"{rank}. answer: {span.text!r}  score {span.score:.3f}  probability "
              f"{span.probability:.3f}  characters [{span.start}, {span.end})")
    return spans
