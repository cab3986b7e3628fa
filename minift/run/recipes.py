"""The recipes: fine-tune a classifier, fine-tune a tagger (NER / POS), continue MLM pretraining,
few-shot SetFit, extractive question answering (SQuAD). What the ``minift`` commands run, and what lessons and benchmarks call.

Read in this order:

1. the checks every recipe makes before it loads a model (device, model folder, lengths, the
   training settings, the data folder, the output folder);
2. the evaluators (``classification_metrics``, ``predict_tags`` / ``tagging_scores``,
   ``mlm_metrics``);
3. ``Recipe`` and ``run_recipe``, the skeleton the three recipes on ``minift.core.loop.train`` share:
   load the model, score it before, train, take the best weights, score them, save;
4. the recipes ``finetune``, ``ner``, ``pretrain`` (each: its checks, its data, its model, its
   evaluator, its metrics), ``setfit``, which trains once per seed, and ``qa`` / ``answer``
   (train a span head on SQuAD files; answer one question with it).

**Everything is checked before a model is loaded**: numbers, files, columns, labels, the device,
the output folder. A bad value raises ``ValueError`` (the command prints it as one line).

**The output folder** (``out``) of a finished run holds the model with the best held-out score
(HF format: ``config.json``, ``model.safetensors``, the tokenizer files), ``metrics.json`` and
``log.jsonl`` (the training log, one JSON record a line); ``ner`` adds
``{dev,test}_predictions.txt``, ``qa`` adds ``predictions.json`` (question id -> answer text), ``setfit`` writes ``metrics.json`` and the seed-0 model in
``out/model``. While a run is unfinished the folder also holds ``resume.pt`` (what ``--resume``
continues from) and ``best/`` (the best model so far). When the run ends, the files of ``best/``
become the model in ``out`` (moved, not copied: the folder never holds the model twice) and
``resume.pt`` is removed, unless ``keep_resume``. ``.minift.lock`` marks the one run writing
into the folder (``minift.core.files``).

**No held-out set is scored twice on the same weights**: when the best step is the last, the
final evaluation of the training loop is the "after" score.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import shutil
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from minift.core import ddp as distributed
from minift.core.files import acquire, atomic_write, fsync_dir, release
from minift.core.freeze import freeze as apply_freeze
from minift.core.labels import SCHEMES, LabelVocab
from minift.core.loop import TrainConfig, train
from minift.core.metrics import (
    accuracy,
    format_table,
)
from minift.core.model import set_activation_checkpointing
from minift.data.readers import (
    apply_scheme,
    encode_labels,
    encode_tags,
    entity_label_set,
    is_bio,
    read_conll,
    read_examples,
    read_semicolon_examples,
    task_files,
    write_conll,
)
from minift.data.tokenizer import Tokenizer
from minift.fast.unpad import speed_up
from minift.hf.checkpoint import load_bert, read_config, read_config_json, resolve_model_dir
from minift.tasks import classify as heads
from minift.tasks import nsp as nsp_data
from minift.tasks import qa as squad_qa
from minift.tasks.classify import ClassificationDataset, classification_metrics
from minift.tasks.mlm import (
    STRATEGIES,
    MaskedBatches,
    MaskedLM,
    MaskingCollator,
    TextSequences,
    held_out_split,
    mlm_metrics,
    read_text_lines,
)
from minift.tasks.nsp import pretraining_metrics
from minift.tasks.qa import qa_predictions, qa_scores
from minift.tasks.setfit import SetFitConfig, sample_shots, train_setfit
from minift.tasks.tag import (
    TokenClassificationDataset,
    TokenClassifier,
    predict_tags,
    scores_table,
    tagging_scores,
)

# --------------------------------------------------------------------------------------------
# 1. Checks made before any model is loaded
# --------------------------------------------------------------------------------------------


def check_positive(**values: float | int | None) -> None:
    """Raise ValueError naming the first of ``values`` that is set and not a positive number."""
    for name, value in values.items():
        if value is not None and not value > 0:  # nan fails too
            raise ValueError(f"{name.replace('_', ' ')} must be positive, got {value}")


def check_device(device: str | None) -> None:
    """Refuse a device this torch cannot run on (``--device cuda`` without CUDA, ``tpu``, ...)."""
    if device is None:
        return

    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"--device {device}: expected cpu, cuda, cuda:N or mps") from None
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {device}: this torch sees no CUDA GPU "
                             "(torch.cuda.is_available() is False); use --device cpu")
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise ValueError(f"--device {device}: there are {torch.cuda.device_count()} "
                             "CUDA GPUs (numbered from 0)")
    elif parsed.type == "mps":
        if not torch.backends.mps.is_available():
            raise ValueError(f"--device {device}: this torch has no MPS backend here")
    elif parsed.type != "cpu":
        raise ValueError(f"--device {device}: minift runs on cpu, cuda or mps")


def check_max_length(folder: Path, max_length: int, minimum: int = 1) -> int:
    """Check ``max_length`` against the model's ``max_position_embeddings``; return the latter."""
    positions = read_config(folder).max_position_embeddings
    if max_length > positions:
        raise ValueError(f"--max-length {max_length} is more than the model's {positions} "
                         f"positions ({folder}/config.json)")
    if max_length < minimum:
        raise ValueError(f"--max-length must be at least {minimum}, got {max_length}")
    return positions


def check_freeze(folder: Path, freeze: str) -> None:
    """The syntax and range of a ``heads.freeze`` mode, checked against the model's layers."""
    layers = read_config(folder).num_hidden_layers
    if freeze in ("none", "head"):
        return
    if freeze.startswith("last-") and freeze[5:].isdigit():
        if not 1 <= int(freeze[5:]) <= layers:
            raise ValueError(f"freeze mode {freeze!r}: N must be between 1 and {layers}")
        return
    raise ValueError(f"unknown freeze mode {freeze!r}: use 'none', 'head' or 'last-N'")


INITS = ("pretrained", "random")


def check_init(init: str, head_lr: float | None) -> None:
    """``--init`` is pretrained or random; ``--head-lr``, when given, is a positive number."""
    if init not in INITS:
        raise ValueError(f"--init must be one of {', '.join(INITS)}, got {init!r}")
    check_positive(**{"--head-lr": head_lr})


def head_lrs(head_lr: float | None) -> dict[str, float] | None:
    """``TrainConfig.lr_by_prefix`` for ``--head-lr``: the classifier's own learning rate."""
    return None if head_lr is None else {"classifier.": head_lr}


def train_config(**fields: Any) -> TrainConfig:
    """A checked ``minift.core.loop.TrainConfig``; an error names the command-line option.

    The loop keeps ``resume.pt`` (``keep_resume``): ``run_recipe`` removes it itself once the
    final model is saved, so that a crash during that save still leaves the run resumable.
    """
    try:
        return TrainConfig(**fields, keep_resume=True)
    except ValueError as err:
        match = re.match(r"TrainConfig\.(\w+): (.*)", str(err), re.DOTALL)
        if match is None:
            raise
        raise ValueError(f"--{match[1].replace('_', '-')}: {match[2]}") from None


# Where the tests and lessons find the data sets when MINIFT_DATA is unset: beside the repository.
DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def data_folder(data_dir: str | os.PathLike | None = None) -> Path:
    """The folder of the data sets: ``data_dir``, else $MINIFT_DATA, else ``../shared/data``
    beside the repository (or the installed checkout): where the tests and lessons look."""
    if data_dir is not None:
        where = f"--data-dir {data_dir}"
        folder = Path(data_dir)
    elif os.environ.get("MINIFT_DATA"):
        where = f"MINIFT_DATA={os.environ['MINIFT_DATA']}"
        folder = Path(os.environ["MINIFT_DATA"])
    elif DEFAULT_DATA.is_dir():
        return DEFAULT_DATA
    else:
        raise ValueError(f"the data sets are not in {DEFAULT_DATA}: give their folder with "
                         "--data-dir DIR, or set the environment variable MINIFT_DATA=DIR")
    if not folder.is_dir():
        raise ValueError(f"{where}: no such folder")
    return folder


@contextlib.contextmanager
def claim_folder(out: str | os.PathLike, *, resume: bool = False) -> Iterator[Path]:
    """Create the output folder (or check it) and hold its lock (``minift.core.files``) for the block.

    Checks, before anything is loaded, that the folder can be created and written, and that
    ``resume.pt`` is there when resuming. Under torchrun only rank 0, the one that writes, does.
    """
    folder = Path(out)
    if os.environ.get("RANK", "0") != "0":
        yield folder
        return
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"--out {folder}: exists and is not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        lock = acquire(folder)
    except OSError as err:
        raise ValueError(f"--out {folder}: cannot write there ({err.strerror or err})") from None
    try:
        if resume and not (folder / "resume.pt").is_file():
            raise ValueError(f"--resume: {folder / 'resume.pt'} does not exist, nothing to resume "
                             "(run without --resume to start afresh)")
        yield folder
    finally:
        release(lock)


def write_metrics(out: Path, metrics: dict) -> None:
    """``out/metrics.json``, written atomically."""
    atomic_write(out / "metrics.json", (json.dumps(metrics, indent=2) + "\n").encode("utf-8"))


def pick_device(device: str | None):
    """The device to run on (default: cuda when available); under torchrun, also join the
    process group (``minift.core.ddp``) and take this rank's own GPU."""

    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    distributed.setup(device.type)
    return distributed.local_device(device)


def _is_main() -> bool:
    """False on the ranks of a torchrun job that only help to train (rank 0 writes the results)."""
    return distributed.context().is_main


def _subset(examples: list, limit: int | None, seed: int) -> list:
    """A fixed, seeded random subset of ``limit`` examples (all of them when None)."""
    if limit is None or limit >= len(examples):
        return examples
    keep = sorted(random.Random(seed).sample(range(len(examples)), limit))
    return [examples[i] for i in keep]


def _bar(items, desc: str, progress: bool):
    """``items`` under a tqdm bar that disappears when done (no bar when ``progress`` is off)."""
    return tqdm(items, desc=desc, leave=False, disable=not progress)


# --------------------------------------------------------------------------------------------
# 2. Evaluators
# --------------------------------------------------------------------------------------------


def read_labelled(path: str, text_col: str, label_col: str, format: str | None = None) -> list:
    """Examples of a labelled file: TSV, CSV, JSONL (``data.read_examples``), or semicolon
    ``text;label`` lines (``format="semicolon"``, or a ``.txt`` file, as the Emotion data set
    ships)."""

    if format == "semicolon" or (format is None and Path(path).suffix.lower() == ".txt"):
        return read_semicolon_examples(path, text_col=text_col, label_col=label_col)
    return read_examples(path, text_col=text_col, label_col=label_col, format=format)


# --------------------------------------------------------------------------------------------
# 3. The skeleton of the recipes on minift.core.loop.train
# --------------------------------------------------------------------------------------------


@dataclass
class Recipe:
    """What one recipe hands to ``run_recipe``; the rest of a run is the same for all of them.

    ``evaluate(model, device)`` returns the full scores on the held-out set (its numbers drive
    the best checkpoint and early stopping; other entries, such as predictions, ride along).
    """
    config: Any  # minift.core.loop.TrainConfig; its out_dir is the output folder
    build: Callable[[], Any]  # load the model to train
    load: Callable[[Path], Any]  # reload a saved model (the best one): a head's from_pretrained
    train_batches: Callable[[int], Sequence[dict]]  # the batches of an epoch
    evaluate: Callable[[Any, Any], dict]
    tokenizer: Any
    before: Callable[[dict], str] | None = None  # score before training; the line to print
    device: str | None = None
    resume: bool = False
    keep_resume: bool = False
    activation_checkpointing: bool = False


@dataclass
class Outcome:
    """What ``run_recipe`` did: the held-out scores before and after, and the models."""
    model: Any  # the trained model (its last weights)
    best: Any  # the best weights on the held-out set (``model`` when the best step was the last)
    before: dict
    after: dict
    result: Any  # minift.core.loop.TrainResult
    seconds: float
    trainable: int
    total: int


def _promote_best(best_dir: Path, out: Path) -> None:
    """Move the files of ``best/`` into ``out`` (each rename atomic) and remove ``best/``."""
    for file in sorted(best_dir.iterdir()):
        if file.is_file():
            os.replace(file, out / file.name)
    fsync_dir(out)
    shutil.rmtree(best_dir)


def run_recipe(recipe: Recipe) -> Outcome | None:
    """Load, score before, train, take the best weights, score them, save; None on the ranks of
    a torchrun job other than 0 (rank 0 writes the results)."""

    out = Path(recipe.config.out_dir)
    device = pick_device(recipe.device)
    model = speed_up(recipe.build()).to(device)  # the fast modules: one visible door
    if recipe.activation_checkpointing:  # recompute each block in backward: less memory
        set_activation_checkpointing(model)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    main = _is_main()

    before = {}
    if recipe.before is not None and main:  # under torchrun rank 0 evaluates
        before = recipe.evaluate(model, device)
        print(recipe.before(before))

    last: dict = {}

    def numbers(m) -> dict:
        last["scores"] = full = recipe.evaluate(m, device)
        return {k: v for k, v in full.items()
                if isinstance(v, int | float) and not isinstance(v, bool)}

    start = time.perf_counter()
    result = train(model, recipe.train_batches, recipe.config, evaluate=numbers, device=device,
                   resume=recipe.resume)
    seconds = time.perf_counter() - start
    if not main:
        return None

    best_dir = out / "best"
    if result.best_step == result.steps and "scores" in last:
        best, after = model, last["scores"]  # the loop's last evaluation scored these weights
    elif result.best_step is not None:
        print(f"scoring the best model (step {result.best_step} of {result.steps})")
        best = speed_up(recipe.load(best_dir)).to(device)
        after = recipe.evaluate(best, device)
    else:  # no evaluation gave a number to compare: keep the last weights
        best, after = model, last.get("scores") or recipe.evaluate(model, device)
    if best_dir.is_dir():
        _promote_best(best_dir, out)
    else:
        best.save_pretrained(out)
    recipe.tokenizer.save_pretrained(out)
    if not recipe.keep_resume:
        (out / "resume.pt").unlink(missing_ok=True)
    return Outcome(model=model, best=best, before=before, after=after, result=result,
                   seconds=seconds, trainable=trainable, total=total)


def _run_facts(outcome: Outcome) -> dict:
    """The facts of a run every recipe's metrics.json records."""
    result = outcome.result
    return {"steps": result.steps, "seconds": outcome.seconds, "best_step": result.best_step,
            "stopped_early": result.stopped_early,
            "trainable_parameters": outcome.trainable, "total_parameters": outcome.total}


def _head_builder(head: type, folder: Path, labels: list[str], freeze: str, seed: int,
                  init: str = "pretrained"):
    """``build`` for a classifier head (``heads.SequenceClassifier`` / ``TokenClassifier``) on
    the encoder in ``folder``: a fresh head seeded with ``seed``, frozen as ``freeze`` says.
    ``init="random"``: the same architecture from BERT's random initialisation, no pretraining."""

    def build():


        print(f"loading {folder}" if init == "pretrained" else
              f"building {folder}'s architecture from random weights (init=random)")
        torch.manual_seed(seed)  # the fresh head's initialisation (and the encoder's, if random)
        load = head.from_pretrained if init == "pretrained" else head.from_config
        model = load(folder, num_labels=len(labels), id2label=dict(enumerate(labels)))
        trainable, total = apply_freeze(model, freeze)
        print(f"freeze={freeze}: {trainable:,} of {total:,} parameters train")
        return model

    return build


def _with_dropout(build: Callable[[], Any], dropout: float | None) -> Callable[[], Any]:
    """``build`` with the classifier's dropout set to ``dropout`` (transformers'
    ``classifier_dropout``, saved in ``config.json``; the encoder keeps its own); ``build``
    itself when None."""
    if dropout is None:
        return build
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"--dropout must be in [0, 1), got {dropout}")

    def build_with_dropout():
        model = build()
        model.classifier_dropout = dropout
        model.dropout.p = dropout
        return model

    return build_with_dropout


def _dev_from_train(examples: list, size: int, limit_train: int | None, split_seed: int,
                    where: str) -> tuple[list, list]:
    """A fixed split of a training file, drawn with ``split_seed`` (the same whatever the
    training seed): ``size`` examples for dev, and ``limit_train`` of the others (all of them
    when None) to train on. Returns ``(train, dev)``, each in file order."""
    if size >= len(examples):
        raise ValueError(f"--dev-from-train {size}: {where} has only {len(examples)} examples")
    order = list(range(len(examples)))
    random.Random(split_seed).shuffle(order)
    rest = order[size:] if limit_train is None else order[size:size + limit_train]
    return [examples[i] for i in sorted(rest)], [examples[i] for i in sorted(order[:size])]


def _epoch_batches(dataset, batch_size: int, seed: int) -> Callable[[int], list]:
    """``train_batches`` of a dataset: epoch e shuffled by a generator seeded with seed + e."""
    return lambda epoch: dataset.batches(batch_size,
                                         generator=torch.Generator().manual_seed(seed + epoch))


# --------------------------------------------------------------------------------------------
# 4a. finetune: a sequence (or pair) classifier
# --------------------------------------------------------------------------------------------


def finetune(*, model: str, out: str, task: str | None = None, data_dir: str | None = None,
             train: str | None = None, dev: str | None = None, text_col: str = "text",
             pair_col: str | None = None, label_col: str = "label",
             limit_train: int | None = None, epochs: int = 3, max_steps: int | None = None,
             lr: float = 5e-5, batch_size: int = 32, max_length: int = 128, freeze: str = "none",
             head_lr: float | None = None, init: str = "pretrained",
             amp: str = "off", seed: int = 0, resume: bool = False, keep_resume: bool = False,
             warmup_ratio: float = 0.1, weight_decay: float = 0.01, schedule: str = "linear",
             grad_accum: int = 1, eval_every: int | None = None, patience: int | None = None,
             optimizer: str = "auto", compile: bool = False,
             activation_checkpointing: bool = False, progress: bool = True,
             device: str | None = None, test: str | None = None,
             dev_from_train: int | None = None, split_seed: int = 0,
             dropout: float | None = None) -> dict:
    """Fine-tune a sequence classifier; write the best model and ``metrics.json`` into ``out``.

    ``task`` (sst2, mrpc, rte) reads the GLUE task's files and columns from ``data_folder``;
    otherwise ``train`` and ``dev`` are TSV / CSV / JSONL files with the columns ``text_col``,
    ``label_col`` and optionally ``pair_col``. ``dev_from_train`` N: the dev set is N examples
    held out of the training file instead (``_dev_from_train``: a split drawn with
    ``split_seed``, the same for every ``seed``, which then also draws the ``limit_train``
    subset); the dev file is not read, so a task with no test set of its own (SST-2) can give
    its dev file as ``test``. ``test``: a file in the same format, scored once, by the best model,
    after training. ``dropout``: the classifier's dropout (default: the encoder's). ``head_lr``:
    the classifier's own learning rate (default ``lr``; a frozen encoder's head needs a far
    higher one). ``init="random"``: the checkpoint's architecture from random weights (what
    pretraining is worth). Returns the metrics dict that is written: ``{"before": ...,
    "dev": ..., "test": ..., "train": ..., "labels": ...}`` (``test`` only when given).
    """
    check_positive(learning_rate=lr, batch_size=batch_size, epochs=epochs, max_steps=max_steps)
    check_positive(**{"--limit-train": limit_train, "--dev-from-train": dev_from_train})
    check_init(init, head_lr)
    if dev_from_train is not None and dev:
        raise ValueError("give --dev FILE or --dev-from-train N, not both")
    config = train_config(
        out_dir=Path(out), epochs=epochs, max_steps=max_steps, lr=lr,
        lr_by_prefix=head_lrs(head_lr), weight_decay=weight_decay,
        warmup_ratio=warmup_ratio, schedule=schedule, grad_accum=grad_accum, amp=amp,
        optimizer=optimizer, eval_every=eval_every, metric="accuracy", greater_is_better=True,
        patience=patience, seed=seed, compile=compile, progress=progress,
    )
    check_device(device)
    folder = resolve_model_dir(model)
    check_max_length(folder, max_length)
    check_freeze(folder, freeze)
    if task is not None:
        if train or dev:
            raise ValueError("give either --task or --train/--dev, not both")
        train, dev, text_col, pair_col, label_col = task_files(task, data_folder(data_dir))
    elif not (train and (dev or dev_from_train)):
        raise ValueError("give --task sst2|mrpc|rte, or both --train FILE and --dev FILE "
                         "(or --train FILE --dev-from-train N)")
    columns = dict(text_col=text_col, pair_col=pair_col, label_col=label_col)
    if dev_from_train is not None:
        train_examples, dev_examples = _dev_from_train(read_examples(train, **columns),
                                                       dev_from_train, limit_train, split_seed,
                                                       str(train))
    else:
        train_examples = _subset(read_examples(train, **columns), limit_train, seed)
        dev_examples = read_examples(dev, **columns)
    test_examples = read_examples(test, **columns) if test else []
    vocab = LabelVocab.from_examples(train_examples)
    if len(vocab) < 2:
        raise ValueError(f"{train}: found a single label {vocab.labels}; a classifier needs two")
    train_labels = encode_labels(train_examples, vocab)
    dev_labels = encode_labels(dev_examples, vocab)  # a dev label unseen in train stops here
    test_labels = encode_labels(test_examples, vocab)
    build = _with_dropout(_head_builder(heads.SequenceClassifier, folder, vocab.labels, freeze,
                                        seed, init), dropout)

    with claim_folder(out, resume=resume) as out_dir:
        print(f"data: {len(train_examples)} train / {len(dev_examples)} dev examples, "
              f"labels {vocab.labels}; tokenizing")
        tokenizer = Tokenizer.from_pretrained(folder)
        train_set = ClassificationDataset(train_examples, tokenizer, max_length=max_length,
                                          label_ids=train_labels)
        dev_set = ClassificationDataset(dev_examples, tokenizer, max_length=max_length,
                                        label_ids=dev_labels)
        dev_batches = dev_set.batches(batch_size, generator=None, shuffle=False)

        outcome = run_recipe(Recipe(
            config=config,
            build=build,
            load=heads.SequenceClassifier.from_pretrained,
            train_batches=_epoch_batches(train_set, batch_size, seed),
            evaluate=lambda m, device: classification_metrics(m, dev_batches, len(vocab), device,
                                                              progress=progress),
            tokenizer=tokenizer,
            before=lambda s: f"dev before fine-tuning: accuracy {s['accuracy']:.4f}  "
                             f"f1 {s['f1']:.4f}",
            device=device, resume=resume, keep_resume=keep_resume,
            activation_checkpointing=activation_checkpointing,
        ))
        if outcome is None:
            return {}  # the other ranks of a torchrun job are done: rank 0 writes the results
        metrics = {
            "before": outcome.before,
            "dev": outcome.after,
            "train": _run_facts(outcome) | {"examples": len(train_examples), "init": init,
                                            "head_lr": head_lr},
            "labels": vocab.labels,
        }
        if test_examples:
            print(f"scoring the best model on {len(test_examples)} test examples ({test})")
            test_set = ClassificationDataset(test_examples, tokenizer, max_length=max_length,
                                             label_ids=test_labels)
            metrics["test"] = classification_metrics(
                outcome.best, test_set.batches(batch_size, generator=None, shuffle=False),
                len(vocab), next(outcome.best.parameters()).device, progress=progress)
        write_metrics(out_dir, metrics)

    keys = ("loss", "accuracy", "f1")
    print(format_table([{"": "before", **{k: metrics["before"][k] for k in keys}},
                        {"": "after", **{k: metrics["dev"][k] for k in keys}}]))
    print(f"model, tokenizer, metrics.json and log.jsonl written to {out_dir}")
    return metrics


# --------------------------------------------------------------------------------------------
# 4b. ner: token classification (named entities, or parts of speech) on CoNLL column files
# --------------------------------------------------------------------------------------------


def ner(*, model: str, train: str, dev: str, out: str, test: str | None = None,
        column: int = -1, scheme: str = "iob2", task: str = "auto",
        limit_train: int | None = None, epochs: int = 3, max_steps: int | None = None,
        lr: float = 5e-5, batch_size: int = 32, max_length: int = 128, stride_words: int = 16,
        label_all_subwords: bool = False, freeze: str = "none", head_lr: float | None = None,
        init: str = "pretrained", amp: str = "off", seed: int = 0,
        resume: bool = False, keep_resume: bool = False, warmup_ratio: float = 0.1,
        weight_decay: float = 0.01, schedule: str = "linear", grad_accum: int = 1,
        eval_every: int | None = None, patience: int | None = None, optimizer: str = "auto",
        compile: bool = False, activation_checkpointing: bool = False, progress: bool = True,
        device: str | None = None, dropout: float | None = None) -> dict:
    """Fine-tune a token classifier on CoNLL column files; write the best model, the tokenizer,
    ``metrics.json`` and ``{dev,test}_predictions.txt`` (``word gold predicted``) into ``out``.

    ``column`` (0-based, negative from the end) picks the tags. ``task`` "ner" scores entities
    (micro F1, seqeval's default mode; the tags are checked as strict IOB2, or converted with
    ``scheme="iob1"``); "pos" scores token accuracy; "auto" takes "ner" when every training tag
    reads as O/B-X/I-X. The tag set is the whole training file's (``limit_train`` or not); a
    dev or test tag outside it is an error naming its file:line. Sentences longer than
    ``max_length`` tokens are windowed, never truncated. A training set in which no word gets a
    token (nothing to learn from) is refused. ``head_lr`` and ``init`` as in ``finetune``.
    Returns the metrics dict that is written: ``{"dev": ..., "test": ..., "train": ...}``.
    """
    check_positive(learning_rate=lr, batch_size=batch_size, epochs=epochs, max_length=max_length,
                   **{"--max-steps": max_steps, "--limit-train": limit_train})
    if stride_words < 0:
        raise ValueError(f"--stride-words must be >= 0, got {stride_words}")
    check_init(init, head_lr)
    if task not in ("auto", "ner", "pos"):
        raise ValueError(f"--task must be auto, ner or pos, got {task!r}")
    if scheme not in SCHEMES:
        raise ValueError(f"--scheme must be one of {', '.join(SCHEMES)}, got {scheme!r}")
    if dropout is not None and not 0.0 <= dropout < 1.0:
        raise ValueError(f"--dropout must be in [0, 1), got {dropout}")
    check_device(device)
    folder = resolve_model_dir(model)
    check_max_length(folder, max_length)
    check_freeze(folder, freeze)

    # ---- data: read every file, fix the tag set, check every tag ----
    files = {"train": train, "dev": dev} | ({"test": test} if test else {})
    splits = {name: read_conll(path, column=column) for name, path in files.items()}
    if task == "auto":
        task = "ner" if is_bio(splits["train"]) else "pos"
    metric = "f1" if task == "ner" else "accuracy"
    config = train_config(
        out_dir=Path(out), epochs=epochs, max_steps=max_steps, lr=lr,
        lr_by_prefix=head_lrs(head_lr), weight_decay=weight_decay,
        warmup_ratio=warmup_ratio, schedule=schedule, grad_accum=grad_accum, amp=amp,
        optimizer=optimizer, eval_every=eval_every, metric=metric, greater_is_better=True,
        patience=patience, seed=seed, compile=compile, progress=progress,
    )
    if task == "ner":
        splits = {name: apply_scheme(sentences, scheme) for name, sentences in splits.items()}
    # The tag set is the whole training file's, so that a small --limit-train subset that lacks
    # a rare tag (POS's "WP$") does not make that tag an error in dev and test.
    if task == "ner":
        labels = entity_label_set(splits["train"])
    else:
        labels = LabelVocab.from_sequences([s.tags for s in splits["train"]])
    splits["train"] = _subset(splits["train"], limit_train, seed)
    saved = read_config_json(folder)
    if "BertForTokenClassification" in (saved.get("architectures") or []) and "id2label" in saved:
        trained = LabelVocab.from_dict(saved)  # continue from a token classifier: keep its ids
        if set(trained.labels) != set(labels.labels):
            raise ValueError(f"{folder} is a token classifier for the tags {trained.labels}, "
                             f"but {train} has the tags {labels.labels}")
        labels = trained
    if len(labels) < 2:
        raise ValueError(f"{train}: found a single tag {labels.labels}; a tagger needs two")
    label_ids = {name: encode_tags(sentences, labels) for name, sentences in splits.items()}

    with claim_folder(out, resume=resume) as out_dir:
        print(f"data: {task} tags from column {column} ({len(labels)} tags: "
              f"{' '.join(labels.labels)}); tokenizing")
        tokenizer = Tokenizer.from_pretrained(folder)
        train_options = dict(label_all_subwords=label_all_subwords,
                             b_to_i=labels.b_to_i() if label_all_subwords else None)
        datasets = {
            name: TokenClassificationDataset(
                [s.words for s in sentences], tokenizer, max_length=max_length,
                label_ids=label_ids[name], stride_words=stride_words,
                where=[s.where for s in sentences],
                **(train_options if name == "train" else {}))
            for name, sentences in splits.items()
        }
        for name, data in datasets.items():
            plan = data.plan
            windows = (f"{plan.num_windowed} longer than {max_length} tokens, split into "
                       f"{plan.num_windows - plan.num_sentences + plan.num_windowed} windows of "
                       f"whole words ({stride_words} words of overlap), none truncated"
                       if plan.num_windowed else f"all fit in {max_length} tokens")
            print(f"{name}: {plan.num_sentences} sentences, "
                  f"{sum(len(s.words) for s in splits[name])} words; {windows}")
        train_set = datasets["train"]

        def evaluate_split(m, device, name: str) -> dict:
            predicted, loss = predict_tags(m, datasets[name], batch_size, device,
                                           progress=progress, desc=name)
            tags = [labels.decode(p) for p in predicted]
            scores = tagging_scores([s.tags for s in splits[name]], tags, task)
            return scores | ({"loss": loss} if loss is not None else {}) | {"predicted": tags}

        outcome = run_recipe(Recipe(
            config=config,
            build=_with_dropout(_head_builder(TokenClassifier, folder, labels.labels,
                                              freeze, seed, init), dropout),
            load=TokenClassifier.from_pretrained,
            train_batches=_epoch_batches(train_set, batch_size, seed),
            evaluate=lambda m, device: evaluate_split(m, device, "dev"),
            tokenizer=tokenizer, device=device, resume=resume, keep_resume=keep_resume,
            activation_checkpointing=activation_checkpointing,
        ))
        if outcome is None:
            return {}  # the other ranks of a torchrun job are done: rank 0 writes the results

        # ---- the best weights on dev (scored already) and test ----
        scored = {"dev": outcome.after}
        if "test" in datasets:
            print("scoring the best model on test")
            scored["test"] = evaluate_split(outcome.best, next(outcome.best.parameters()).device,
                                            "test")
        metrics: dict = {}
        for name, scores in scored.items():
            write_conll(out_dir / f"{name}_predictions.txt", [s.words for s in splits[name]],
                        [s.tags for s in splits[name]], scores["predicted"])
            metrics[name] = {k: v for k, v in scores.items() if k != "predicted"}
        metrics["train"] = _run_facts(outcome) | {"sentences": len(splits["train"]),
                                                  "windows": len(train_set), "init": init,
                                                  "head_lr": head_lr}
        metrics |= {"task": task, "column": column, "scheme": scheme if task == "ner" else None,
                    "labels": labels.labels, "max_length": max_length}
        write_metrics(out_dir, metrics)
    for name in ("dev", "test"):
        if name in metrics:
            main_score = (f"entity F1 {metrics[name]['f1']:.4f} (seqeval default mode, micro; "
                          f"strict IOB2 {metrics[name]['strict']['f1']:.4f})" if task == "ner"
                          else f"token accuracy {metrics[name]['accuracy']:.4f}")
            print(f"\n{name}: {main_score}")
            print(scores_table(metrics[name], task, name))
    print(f"model, tokenizer, metrics.json, log.jsonl and predictions written to {out_dir}")
    return metrics


# --------------------------------------------------------------------------------------------
# 4c. pretrain: continued masked-language-model pretraining on domain text
# --------------------------------------------------------------------------------------------


def pretrain(*, model: str, text: str | list[str], out: str, eval_text: str | None = None,
             masking: str = "mlm", steps: int = 1000, lr: float = 5e-5, batch_size: int = 32,
             max_length: int = 128, seed: int = 0, amp: str = "off", pack: bool = False,
             mlm_probability: float = 0.15, eval_fraction: float = 0.05,
             max_eval_passages: int = 2000, eval_seed: int = 0, warmup_ratio: float = 0.06,
             schedule: str = "linear", weight_decay: float = 0.01, grad_accum: int = 1,
             eval_every: int | None = None, patience: int | None = None,
             save_every: int | None = None, freeze: str = "none", optimizer: str = "auto",
             resume: bool = False,
             keep_resume: bool = False, compile: bool = False,
             activation_checkpointing: bool = False, nsp: bool = False, progress: bool = True,
             device: str | None = None) -> dict:
    """Continue pretraining an encoder with masked-language modelling on domain text.

    ``nsp``: BERT's two objectives at once (``nsp_data.PreTraining``, MLM + next-sentence
    prediction). ``text`` is then read as documents (``minift.tasks.nsp.read_documents``: blank
    lines between documents, or JSONL with a ``sentences`` list); documents, not passages, are
    held out; sentence pairs are built once from seeded generators (``nsp_data.nsp_pairs``), and
    before/after also report ``nsp_accuracy`` on the held-out pairs.

    ``text``: one or more files of passages, one a line. Held-out text for evaluation is
    ``eval_text``, else a random ``eval_fraction`` of the passages (at most ``max_eval_passages``)
    chosen with ``eval_seed`` and left out of training. The held-out text is masked ONCE, with
    ``eval_seed``, by the same strategy as training, so every evaluation (before, during, after)
    scores the very same masked tokens. Training batches are masked afresh every epoch (dynamic
    masking), each from its own seeded generator, so ``resume`` continues exactly.

    ``freeze="head"``: only the MLM head's own weights train (transform and output bias; the
    decoder is the frozen word embeddings), the encoder stays as it is. A checkpoint published
    without its MLM head (all-MiniLM-L6-v2) gets one this way before the whole model is trained
    (a second run, from this one's output, at a low rate): the fresh head's large early
    gradients then never reach the encoder. ``eval_every`` with ``patience``: stop when the
    held-out loss has not improved for that many evaluations (with ``schedule="constant"``, so
    that it stops because the head has learned what it can, not because the rate decayed).
    Writes the best model (by held-out loss; with its MLM head, HF ``BertForMaskedLM`` format), the
    tokenizer and ``metrics.json`` into ``out``; returns the metrics dict:
    ``{"before": {...}, "after": {...}, "train": {...}, "data": {...}}`` where before/after hold
    ``perplexity``, ``masked_accuracy``, ``loss`` and ``masked_tokens``.
    """
    check_positive(steps=steps, learning_rate=lr, batch_size=batch_size, max_length=max_length)
    if masking not in STRATEGIES:
        raise ValueError(f"--masking: expected one of {', '.join(STRATEGIES)}, got {masking!r}")
    if freeze not in ("none", "head"):
        raise ValueError(f"--freeze: pretrain takes 'none' or 'head', got {freeze!r}")
    if freeze != "none" and nsp:
        raise ValueError("--freeze head trains the MLM head alone: it does not take --nsp")
    config = train_config(
        out_dir=Path(out), max_steps=steps, lr=lr, weight_decay=weight_decay,
        warmup_ratio=warmup_ratio, schedule=schedule, grad_accum=grad_accum, amp=amp,
        optimizer=optimizer, eval_every=steps if eval_every is None else eval_every,
        save_every=save_every, metric="loss", greater_is_better=False, patience=patience,
        seed=seed, compile=compile, progress=progress,
    )
    check_device(device)
    folder = resolve_model_dir(model)
    check_max_length(folder, max_length, minimum=3)
    files = [text] if isinstance(text, str | Path) else list(text)
    if nsp:
        return _pretrain_nsp(files=files, eval_text=eval_text, folder=folder, out=out,
                             config=config, masking=masking, pack=pack,
                             mlm_probability=mlm_probability, eval_fraction=eval_fraction,
                             max_eval_passages=max_eval_passages, eval_seed=eval_seed,
                             batch_size=batch_size, max_length=max_length, seed=seed,
                             resume=resume, keep_resume=keep_resume, progress=progress,
                             activation_checkpointing=activation_checkpointing, device=device)
    passages = read_text_lines(files)
    if eval_text is not None:
        eval_passages = read_text_lines(eval_text)
    else:
        passages, eval_passages = held_out_split(passages, eval_fraction, eval_seed,
                                                 max_eval_passages)

    with claim_folder(out, resume=resume) as out_dir:
        print(f"data: {len(passages)} passages, {len(eval_passages)} held out; tokenizing")
        tokenizer = Tokenizer.from_pretrained(folder)
        collator = MaskingCollator.from_tokenizer(tokenizer, masking, mlm_probability)
        train_seqs = TextSequences(passages, tokenizer, max_length=max_length, pack=pack)
        eval_seqs = TextSequences(eval_passages, tokenizer, max_length=max_length, pack=pack)
        eval_batches = list(MaskedBatches(eval_seqs, collator, batch_size, seed=eval_seed,
                                          shuffle=False))  # masked once: fixed for every eval
        tokens = sum(train_seqs.lengths)
        print(f"data: {len(passages)} passages -> {len(train_seqs)} sequences, {tokens:,} tokens "
              f"(max length {max_length}, {'packed' if pack else 'one passage a sequence'}); "
              f"held out: {len(eval_passages)} passages "
              f"({'--eval-text' if eval_text else f'seeded {eval_fraction:.0%} slice'})")
        if masking == "span" and not pack:
            print("note: span masking overshoots its budget on short sequences; --pack helps")

        def build():
            print(f"loading {folder}")
            torch.manual_seed(seed)  # a fresh MLM head's initialisation
            mlm = MaskedLM.from_pretrained(folder)
            print("MLM head " + ("loaded from the checkpoint" if mlm.head_loaded else
                                 "not in the checkpoint: initialised as BERT does "
                                 "(N(0, initializer_range))"))
            if freeze != "none":
                trainable, total = apply_freeze(mlm, freeze)
                print(f"freeze={freeze}: {trainable:,} of {total:,} parameters train")
            return mlm

        outcome = run_recipe(Recipe(
            config=config, build=build, load=MaskedLM.from_pretrained,
            train_batches=lambda epoch: MaskedBatches(train_seqs, collator, batch_size, seed=seed,
                                                      epoch=epoch),
            evaluate=lambda m, device: mlm_metrics(m, eval_batches, device, progress=progress),
            tokenizer=tokenizer,
            before=lambda s: f"held-out before: perplexity {s['perplexity']:.2f}  masked "
                             f"accuracy {s['masked_accuracy']:.4f} ({s['masked_tokens']} "
                             "masked tokens)",
            device=device, resume=resume, keep_resume=keep_resume,
            activation_checkpointing=activation_checkpointing,
        ))
        if outcome is None:
            return {}  # the other ranks of a torchrun job are done: rank 0 writes the results
        metrics = {
            "before": outcome.before,
            "after": outcome.after,
            "train": _run_facts(outcome) | {
                "epochs": outcome.result.epochs_completed, "masking": masking, "pack": pack,
                "lr": lr, "batch_size": batch_size, "max_length": max_length, "seed": seed,
                "freeze": freeze, "head_loaded": outcome.model.head_loaded},
            "data": {"passages": len(passages), "sequences": len(train_seqs), "tokens": tokens,
                     "eval_passages": len(eval_passages), "eval_seed": eval_seed},
        }
        write_metrics(out_dir, metrics)
    keys = ("perplexity", "masked_accuracy", "loss")
    print(format_table([{"held-out": when, **{k: metrics[when][k] for k in keys}}
                        for when in ("before", "after")]))
    print(f"model (with MLM head), tokenizer, metrics.json and log.jsonl written to {out_dir}")
    return metrics


def _pretrain_nsp(*, files, eval_text, folder, out, config, masking, pack, mlm_probability,
                  eval_fraction, max_eval_passages, eval_seed, batch_size, max_length, seed,
                  resume, keep_resume, progress, activation_checkpointing, device) -> dict:
    """``pretrain(nsp=True)``: MLM + next-sentence prediction on documents (see ``pretrain``)."""
    if masking != "mlm" or pack:
        raise ValueError("--nsp builds sentence pairs: it takes --masking mlm and no --pack")
    check_max_length(folder, max_length, minimum=5)
    documents = [doc for path in files for doc in nsp_data.read_documents(path)]
    if eval_text is not None:
        eval_documents = nsp_data.read_documents(eval_text)
    else:
        documents, eval_documents = held_out_split(documents, eval_fraction, eval_seed,
                                                   max_eval_passages)
        if len(eval_documents) < 2:
            raise ValueError(f"--eval-fraction {eval_fraction} holds out {len(eval_documents)} "
                             "document; NSP needs at least 2 (raise it, or give --eval-text)")
    tokenizer = Tokenizer.from_pretrained(folder)
    collator = MaskingCollator.from_tokenizer(tokenizer, "mlm", mlm_probability)
    train_pairs = nsp_data.nsp_pairs(nsp_data.tokenize_documents(documents, tokenizer),
                                     max_length, torch.Generator().manual_seed(seed))
    eval_pairs = nsp_data.nsp_pairs(nsp_data.tokenize_documents(eval_documents, tokenizer),
                                    max_length, torch.Generator().manual_seed(eval_seed))
    train_seqs = nsp_data.PairSequences(train_pairs, tokenizer)
    eval_seqs = nsp_data.PairSequences(eval_pairs, tokenizer)
    eval_batches = list(nsp_data.NSPMaskedBatches(eval_seqs, collator, batch_size,
                                                  seed=eval_seed, shuffle=False))
    with claim_folder(out, resume=resume) as out_dir:
        share = sum(p.label for p in train_pairs) / len(train_pairs)
        print(f"data: {len(documents)} documents -> {len(train_pairs)} sentence pairs "
              f"({share:.1%} with a random B); held out: {len(eval_documents)} documents -> "
              f"{len(eval_pairs)} pairs")

        def build():
            print(f"loading {folder}")
            torch.manual_seed(seed)  # fresh heads' initialisation
            model = nsp_data.PreTraining.from_pretrained(folder)
            print(f"MLM head {'loaded' if model.head_loaded else 'initialised'}, NSP head "
                  f"{'loaded' if model.nsp_loaded else 'initialised'}")
            return model

        outcome = run_recipe(Recipe(
            config=config, build=build, load=nsp_data.PreTraining.from_pretrained,
            train_batches=lambda epoch: nsp_data.NSPMaskedBatches(train_seqs, collator,
                                                                  batch_size, seed=seed,
                                                                  epoch=epoch),
            evaluate=lambda m, device: pretraining_metrics(m, eval_batches, device,
                                                           progress=progress),
            tokenizer=tokenizer,
            before=lambda s: f"held-out before: perplexity {s['perplexity']:.2f}  masked "
                             f"accuracy {s['masked_accuracy']:.4f}  NSP accuracy "
                             f"{s['nsp_accuracy']:.4f} ({s['pairs']} pairs)",
            device=device, resume=resume, keep_resume=keep_resume,
            activation_checkpointing=activation_checkpointing,
        ))
        if outcome is None:
            return {}
        metrics = {
            "before": outcome.before, "after": outcome.after,
            "train": _run_facts(outcome) | {"epochs": outcome.result.epochs_completed,
                                            "masking": "mlm", "nsp": True,
                                            "batch_size": batch_size, "max_length": max_length,
                                            "seed": seed},
            "data": {"documents": len(documents), "pairs": len(train_pairs),
                     "random_share": share, "eval_documents": len(eval_documents),
                     "eval_pairs": len(eval_pairs), "eval_seed": eval_seed},
        }
        write_metrics(out_dir, metrics)
    keys = ("perplexity", "masked_accuracy", "nsp_accuracy", "loss")
    print(format_table([{"held-out": when, **{k: metrics[when][k] for k in keys}}
                        for when in ("before", "after")]))
    print(f"model (MLM and NSP heads), tokenizer, metrics.json and log.jsonl written to {out_dir}")
    return metrics


# --------------------------------------------------------------------------------------------
# 4d. setfit: few-shot classification (contrastive fine-tuning, then a head), over several seeds
# --------------------------------------------------------------------------------------------


def _count(n: int, noun: str) -> str:
    """``1 seed``, ``5 seeds``."""
    return f"{n} {noun}{'' if n == 1 else 's'}"


def setfit(*, model: str, train: str, dev: str, out: str, text_col: str = "text",
           label_col: str = "label", format: str | None = None, shots: int = 8, seeds: int = 5,
           loss: str = "cosine", sampling: str = "oversampling",
           num_iterations: int | None = None, epochs: int = 1, max_steps: int | None = None,
           batch_size: int = 16, lr: float = 2e-5, head: str = "logistic",
           end_to_end: bool = False, max_length: int = 256, max_dev: int | None = None,
           progress: bool = True, device: str | None = None, seed: int = 0) -> dict:
    """Few-shot SetFit over seeds ``seed``..``seed + seeds - 1`` (0..seeds-1 by default);
    write ``metrics.json`` into ``out``.

    For each seed s: draw ``shots`` training examples of every class (a generator seeded with s),
    train SetFit with seed s from the same base model, and measure accuracy on dev (all of it, or
    a fixed seeded subset of ``max_dev``). Prints and returns
    ``{"dev": {"accuracy_mean", "accuracy_std", "per_seed": [...]}, "train": ..., "config": ...,
    "labels": ...}``; the standard deviation is the sample one (n - 1), 0 for a single seed. The
    model of the first seed is saved in ``out/model`` (``minift.tasks.setfit.SetFitModel.from_pretrained``).
    ``max_steps`` caps the contrastive phase (``SetFitConfig.max_steps``): the pairs grow with the
    square of ``shots``, so many shots and many classes otherwise make a long run.
    """
    if shots < 1 or seeds < 1:
        raise ValueError(f"--shots and --seeds must be >= 1, got {shots} and {seeds}")
    if max_dev is not None and max_dev < 1:
        raise ValueError(f"--max-dev must be positive, got {max_dev}")
    check_positive(learning_rate=lr)  # nan included
    config = SetFitConfig(loss=loss, sampling=sampling, num_iterations=num_iterations,
                          epochs=epochs, max_steps=max_steps, batch_size=batch_size, lr=lr,
                          head=head, end_to_end=end_to_end, max_length=max_length,
                          progress=progress)
    check_device(device)
    folder = resolve_model_dir(model)
    check_max_length(folder, max_length)
    train_examples = read_labelled(train, text_col, label_col, format)
    dev_examples = _subset(read_labelled(dev, text_col, label_col, format), max_dev, 0)
    vocab = LabelVocab.from_examples(train_examples)
    if len(vocab) < 2:
        raise ValueError(f"{train}: found a single label {vocab.labels}; SetFit needs two")
    encode_labels(dev_examples, vocab)  # a dev label unseen in train stops here
    draws = [sample_shots([ex.label for ex in train_examples], shots,
                          torch.Generator().manual_seed(s)) for s in range(seed, seed + seeds)]
    dev_texts = [ex.text for ex in dev_examples]
    dev_gold = [ex.label for ex in dev_examples]

    with claim_folder(out) as out_dir:
        tokenizer = Tokenizer.from_pretrained(folder)
        device = pick_device(device)
        print(f"data: {len(train_examples)} train / {len(dev_examples)} dev examples, labels "
              f"{vocab.labels}; {shots} shots a class, {_count(seeds, 'seed')}; model {folder}")
        per_seed = []
        for run_seed, chosen in enumerate(draws, start=seed):
            print(f"seed {run_seed}: loading {folder}")
            encoder = speed_up(load_bert(folder)).to(device)
            start = time.perf_counter()
            classifier, stats = train_setfit(
                encoder, tokenizer, [train_examples[i].text for i in chosen],
                [train_examples[i].label for i in chosen], replace(config, seed=run_seed),
                label_names=vocab.labels)
            seconds = time.perf_counter() - start
            if not _is_main():
                continue  # under torchrun the other ranks only help train the next seed
            print(f"seed {run_seed}: scoring {len(dev_texts)} dev examples")
            score = accuracy(dev_gold, classifier.predict(dev_texts))
            print(f"seed {run_seed}: dev accuracy {score:.4f}  ({stats['pairs']} pairs, "
                  f"{seconds:.1f} s training)")
            per_seed.append({"seed": run_seed, "accuracy": score, "pairs": stats["pairs"],
                             "steps": stats["steps"], "train_seconds": seconds,
                             "examples": [train_examples[i].line for i in chosen]})
            if run_seed == seed:  # the first seed's model
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
                      "pairs": per_seed[0]["pairs"], "steps": per_seed[0]["steps"]},
            "config": {k: v for k, v in asdict(config).items() if k != "seed"},
            "labels": vocab.labels,
            "model": str(folder),
        }
        write_metrics(out_dir, metrics)
    spread = f"{mean:.4f} +/- {std:.4f}" if seeds > 1 else f"{mean:.4f}"
    print(f"dev accuracy over {_count(seeds, 'seed')}: {spread}; metrics.json and the "
          f"seed-0 model written to {out_dir}")
    return metrics


# --------------------------------------------------------------------------------------------
# 4e. qa: extractive question answering on SQuAD-format files, and answering one question
# --------------------------------------------------------------------------------------------


def _qa_check_lengths(folder: Path, max_length: int, doc_stride: int) -> None:
    check_max_length(folder, max_length, minimum=4)
    if not 0 <= doc_stride < max_length:
        raise ValueError(f"--doc-stride must be between 0 and --max-length - 1 ({max_length - 1})"
                         f", got {doc_stride}")


def qa(*, model: str, out: str, train: str | None = None, dev: str | None = None,
       squad: str | None = None, dev_articles: int | None = None, split_seed: int = 0,
       limit_train: int | None = None, epochs: int = 2, max_steps: int | None = None,
       lr: float = 5e-5, batch_size: int = 32, max_length: int = 384, doc_stride: int = 128,
       n_best: int = 20, max_answer_length: int = 30, amp: str = "off", seed: int = 0,
       resume: bool = False, keep_resume: bool = False, warmup_ratio: float = 0.1,
       weight_decay: float = 0.01, grad_accum: int = 1, eval_every: int | None = None,
       optimizer: str = "auto", compile: bool = False, activation_checkpointing: bool = False,
       progress: bool = True, device: str | None = None) -> dict:
    """Fine-tune a span head (``squad_qa.QuestionAnswering``) on SQuAD v1.1 files; write the best
    model (by dev F1), the tokenizer, ``predictions.json`` and ``metrics.json`` into ``out``.

    Data: ``train`` and ``dev`` files, or one ``squad`` file split by article: ``dev_articles``
    whole articles (drawn with ``split_seed``) are dev, the rest train, so no paragraph is in
    both. ``limit_train`` keeps a seeded random subset of the training questions. Contexts
    longer than ``max_length`` are cut into windows overlapping by ``doc_stride`` tokens
    (``minift.tasks.qa.make_windows``). Returns the metrics written: ``{"dev": {"exact_match", "f1",
    "questions"}, "train": ..., "data": ...}``, scores in points (0-100) as the official script.
    """
    check_positive(learning_rate=lr, batch_size=batch_size, epochs=epochs, max_length=max_length,
                   n_best=n_best, **{"--max-steps": max_steps, "--limit-train": limit_train,
                                     "--max-answer-length": max_answer_length})
    config = train_config(
        out_dir=Path(out), epochs=epochs, max_steps=max_steps, lr=lr, weight_decay=weight_decay,
        warmup_ratio=warmup_ratio, grad_accum=grad_accum, amp=amp, optimizer=optimizer,
        eval_every=eval_every, metric="f1", greater_is_better=True, seed=seed, compile=compile,
        progress=progress,
    )
    check_device(device)
    folder = resolve_model_dir(model)
    _qa_check_lengths(folder, max_length, doc_stride)
    if squad is not None:
        if train or dev:
            raise ValueError("give either --squad FILE --dev-articles N, or --train and --dev")
        if dev_articles is None:
            raise ValueError("--squad needs --dev-articles N (the articles held out for dev)")
        train_questions, dev_questions = squad_qa.split_by_article(squad_qa.read_squad(squad),
                                                                   dev_articles, split_seed)
        split = {"file": str(squad), "dev_articles": dev_articles, "split_seed": split_seed}
    elif train and dev:
        if dev_articles is not None:
            raise ValueError("--dev-articles goes with --squad, not with --train/--dev")
        train_questions, dev_questions = squad_qa.read_squad(train), squad_qa.read_squad(dev)
        split = {"train": str(train), "dev": str(dev)}
    else:
        raise ValueError("give --train FILE and --dev FILE, or --squad FILE --dev-articles N")
    train_questions = _subset(train_questions, limit_train, seed)
    tokenizer = Tokenizer.from_pretrained(folder)
    train_windows, train_set, dev_windows, dev_set = squad_qa.train_and_dev_windows(
        train_questions, dev_questions, tokenizer, max_length=max_length, doc_stride=doc_stride)
    decoding = dict(n_best=n_best, max_answer_length=max_answer_length)

    with claim_folder(out, resume=resume) as out_dir:
        print(f"data: {len(train_questions)} train questions -> {len(train_windows)} windows, "
              f"{len(dev_questions)} dev questions -> {len(dev_windows)} windows (max length "
              f"{max_length}, stride {doc_stride})")

        def build():
            print(f"loading {folder}")
            torch.manual_seed(seed)  # the fresh head's initialisation
            return squad_qa.QuestionAnswering.from_pretrained(folder)

        outcome = run_recipe(Recipe(
            config=config, build=build, load=squad_qa.QuestionAnswering.from_pretrained,
            train_batches=_epoch_batches(train_set, batch_size, seed),
            evaluate=lambda m, device: qa_scores(m, dev_questions, dev_windows, dev_set,
                                                 batch_size, device, progress=progress,
                                                 **decoding),
            tokenizer=tokenizer, device=device, resume=resume, keep_resume=keep_resume,
            activation_checkpointing=activation_checkpointing,
        ))
        if outcome is None:
            return {}  # the other ranks of a torchrun job are done: rank 0 writes the results
        predictions = outcome.after.pop("predictions")
        atomic_write(out_dir / "predictions.json",
                     (json.dumps(predictions, indent=1, ensure_ascii=False) + "\n").encode())
        metrics = {
            "dev": outcome.after,
            "train": _run_facts(outcome) | {"questions": len(train_questions),
                                            "windows": len(train_windows), "lr": lr,
                                            "batch_size": batch_size, "epochs": epochs,
                                            "seed": seed},
            "data": split | {"max_length": max_length, "doc_stride": doc_stride,
                             "dev_windows": len(dev_windows)},
        }
        write_metrics(out_dir, metrics)
    dev_scores = metrics["dev"]
    print(f"dev: exact match {dev_scores['exact_match']:.2f}  F1 {dev_scores['f1']:.2f} "
          f"({dev_scores['questions']} questions, SQuAD v1.1 scoring, points)")
    print(f"model, tokenizer, metrics.json, predictions.json and log.jsonl written to {out_dir}")
    return metrics


def answer(*, model: str, question: str, context: str | None = None,
           context_file: str | None = None, max_length: int = 384, doc_stride: int = 128,
           n_best: int = 20, max_answer_length: int = 30, show: int = 1,
           device: str | None = None) -> list:
    """Answer one question from a context (text, or a UTF-8 file) with a trained span head;
    print the answer, its score (start + end logit), its probability among the n-best and its
    character span; return the n-best ``minift.tasks.qa.Span``s."""
    if not question or not question.strip():
        raise ValueError("--question is empty")
    if (context is None) == (context_file is None):
        raise ValueError("give the context as --context TEXT or --context-file FILE (one)")
    if context_file is not None:
        path = Path(context_file)
        if not path.is_file():
            raise ValueError(f"--context-file {path}: no such file")
        try:
            context = path.read_text(encoding="utf-8-sig")
        except UnicodeDecodeError as err:
            raise ValueError(f"--context-file {path}: not UTF-8 ({err.reason})") from None
    if not context.strip():
        raise ValueError("the context is empty")
    check_positive(n_best=n_best, **{"--max-answer-length": max_answer_length})
    check_device(device)
    folder = resolve_model_dir(model)
    architectures = read_config_json(folder).get("architectures") or []
    if "BertForQuestionAnswering" not in architectures:
        raise ValueError(f"{folder} is not a question-answering model (config.json architectures "
                         f"{architectures}); train one with 'minift qa --train ... --out DIR'")
    _qa_check_lengths(folder, max_length, doc_stride)
    tokenizer = Tokenizer.from_pretrained(folder)
    asked = squad_qa.Question("question", question, context, [])
    windows = squad_qa.make_windows([asked], tokenizer, max_length=max_length,
                                    doc_stride=doc_stride)
    device = torch.device(device or "cpu")
    span_model = speed_up(squad_qa.QuestionAnswering.from_pretrained(folder)).to(device)
    dataset = squad_qa.WindowDataset(windows, tokenizer.pad_token_id, labels=False)
    spans = qa_predictions(span_model, [asked], windows, dataset, 8, device, n_best=n_best,
                           max_answer_length=max_answer_length)["question"]
    for rank, span in enumerate(spans[:show], 1):
        print(f"{rank}. answer: {span.text!r}  score {span.score:.3f}  probability "
              f"{span.probability:.3f}  characters [{span.start}, {span.end})")
    return spans
