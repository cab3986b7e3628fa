"""The skeleton the recipes on ``minift.core.loop.train`` share (``Recipe``, ``run_recipe``), and
the pieces they build it from.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from minift.core import ddp as distributed
from minift.core.checkpoints import Checkpoints
from minift.core.files import atomic_write
from minift.core.freeze import freeze as apply_freeze
from minift.core.loop import TrainConfig, train
from minift.core.metrics import format_table
from minift.core.model import set_activation_checkpointing
from minift.data.batches import BucketedBatches, bucket_lengths
from minift.fast.unpad import speed_up
from minift.run.options import LOOP, loop_fields
from minift.run.recipes.prepare import is_main, pick_device


def train_config(options: Any, **settings: Any) -> TrainConfig:
    """The ``TrainConfig`` of a recipe's options (``head_lr``: the classifier's own rate), then
    ``settings``. The loop keeps ``resume.pt``: the recipe removes it once the final model and
    metrics.json are saved (``prepare.finish_run``), so a kill during that save leaves the folder
    resumable; without ``keep_resume`` that last one is light (weights and progress)."""
    taken = {name: getattr(options, name) for name in loop_fields()
             if name in LOOP and hasattr(options, name)}
    if getattr(options, "head_lr", None) is not None:
        taken["lr_by_prefix"] = {"classifier.": options.head_lr}
    return TrainConfig(**taken | {"out_dir": Path(options.out), **settings, "keep_resume": True,
                                  "light_final_resume": not options.keep_resume})


@dataclass
class Recipe:
    """What one recipe hands to ``run_recipe``; the rest of a run is the same for all of them.
    ``evaluate(model, device)`` returns the full scores on the held-out set (its numbers drive
    the best checkpoint and early stopping; other entries, such as predictions, ride along)."""
    config: TrainConfig  # its out_dir is the output folder
    build: Callable[[], Any]  # load the model to train
    load: Callable[[Path], Any]  # reload a saved model (the best one): a head's from_pretrained
    train_batches: Callable[[int], Sequence[dict]]  # the batches of an epoch
    evaluate: Callable[[Any, Any], dict]
    tokenizer: Any
    options: Any  # the recipe's options: device, resume, keep_resume, activation_checkpointing
    before: Callable[[dict], str] | None = None  # score before training; the line to print


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

    def metrics(self, after: str = "after", **train: Any) -> dict:
        """What a recipe's metrics.json starts with: the held-out scores before (when scored)
        and after (named ``after``), and "train": the run's ``facts``, then ``train``."""
        before = {"before": self.before} if self.before else {}
        return before | {after: self.after, "train": self.facts() | train}

    def facts(self) -> dict:
        """The facts of a run every recipe's metrics.json records."""
        result = self.result
        return {"steps": result.steps, "seconds": self.seconds, "best_step": result.best_step,
                "stopped_early": result.stopped_early,
                "trainable_parameters": self.trainable, "total_parameters": self.total}


def _copy_best(best_dir: Path, out: Path) -> None:
    """Copy the files of ``best/`` into ``out``, each atomically; ``best/`` stays whole until the
    run is finished (``prepare.finish_run``), so a kill here leaves a folder that resumes."""
    for file in sorted(best_dir.iterdir()):
        if file.is_file():
            with open(file, "rb") as source:
                atomic_write(out / file.name, lambda f, source=source: shutil.copyfileobj(source, f))


def static_shapes(model: Any, train_batches: Callable[[int], Sequence[dict]], options: Any,
                  pad_token_id: int) -> Callable[[int], Sequence[dict]]:
    """What ``--compile`` trains on: batches padded up to one of four bucket lengths (seq2seq:
    two a side, its pairs of shapes four; from the options' longest ``max_length`` /
    ``max_target_length``), through the encoder's padded path (the unpadded path's token count
    changes with every batch; evaluation takes it too, as small batches on a GPU do anyway).
    torch.compile, compiling for static shapes, then sees eight shapes at most (four, times two
    batch sizes: ``minift.data.batches.bucket_lengths``). The extra padding is masked, so the
    losses are the unbucketed batches'; dropout draws its masks over the padded shape, another
    draw of the same distribution (compiled code draws from a random stream of its own anyway)."""
    longest = max(getattr(options, name, 0) or 0 for name in ("max_length", "max_target_length"))
    pairs = getattr(options, "max_target_length", None) is not None
    buckets = bucket_lengths(longest, count=2 if pairs else 4)
    speed_up(model, unpad=False)
    if is_main():
        print(f"compile: batches padded to {buckets} tokens, the encoder on its padded path")
    return lambda epoch: BucketedBatches(train_batches(epoch), buckets, pad_token_id)


def run_recipe(recipe: Recipe) -> Outcome | None:
    """Load, score before, train, take the best weights, score them, save; None on the ranks of
    a torchrun job other than 0 (rank 0 writes the results). No held-out set is scored twice on
    the same weights: when the best step is the last, the loop's last evaluation is "after"."""
    options = recipe.options
    out = Path(recipe.config.out_dir)
    device = pick_device(options.device)
    model = speed_up(recipe.build()).to(device)  # the fast modules: one visible door
    train_batches = recipe.train_batches
    if recipe.config.compile and not recipe.config.compile_dynamic:
        train_batches = static_shapes(model, train_batches, options, recipe.tokenizer.pad_token_id)
    if options.activation_checkpointing:  # recompute each block in backward: less memory
        set_activation_checkpointing(model)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    before = {}
    if recipe.before is not None and is_main():  # under torchrun rank 0 evaluates
        before = recipe.evaluate(model, device)
        print(recipe.before(before))

    last: dict = {}

    def numbers(m) -> dict:
        last["scores"] = full = recipe.evaluate(m, device)
        return {k: v for k, v in full.items()
                if isinstance(v, int | float) and not isinstance(v, bool)}

    start = time.perf_counter()
    result = train(model, train_batches, recipe.config, evaluate=numbers, device=device,
                   recorder=Checkpoints(resume=options.resume),  # out_dir's files
                   parallel=distributed.setup(device.type))  # under torchrun: the ranks' door
    seconds = time.perf_counter() - start
    if not is_main():
        return None

    best_dir = out / "best"
    # A run resumed after it completed with keep_resume: its best model is out's own (copied
    # there, and best/ removed, at its end), unless a later step replaced it in best/.
    saved = best_dir if best_dir.is_dir() or not options.resume else out
    if result.best_step == result.steps and "scores" in last:
        best, after = model, last["scores"]  # the loop's last evaluation scored these weights
    elif result.best_step is not None:
        print(f"scoring the best model (step {result.best_step} of {result.steps})")
        best = speed_up(recipe.load(saved)).to(device)
        after = recipe.evaluate(best, device)
    else:  # no evaluation gave a number to compare: keep the last weights
        best, after = model, last.get("scores") or recipe.evaluate(model, device)
    if best_dir.is_dir():
        _copy_best(best_dir, out)
    elif saved is not out or best is model:
        best.save_pretrained(out)
    recipe.tokenizer.save_pretrained(out)
    # Then the recipe writes metrics.json, and prepare.finish_run removes best/ and resume.pt.
    return Outcome(model=model, best=best, before=before, after=after, result=result,
                   seconds=seconds, trainable=trainable, total=total)


def head_builder(head: type, folder: Path, labels: list[str], options: Any,
                 **settings: Any) -> Callable[[], Any]:
    """``build`` for a classifier head (``SequenceClassifier`` / ``TokenClassifier``) on the
    encoder in ``folder``: a fresh head seeded with ``options.seed``, frozen as ``options.freeze``
    says, its dropout ``options.dropout`` (transformers' ``classifier_dropout``, saved in
    ``config.json``; the encoder keeps its own); ``init="random"``: BERT's random weights.
    ``settings``: the head's own keywords (``SequenceClassifier``'s ``pooling``)."""
    init, freeze = options.init, options.freeze

    def build():
        print(f"loading {folder}" if init == "pretrained" else
              f"building {folder}'s architecture from random weights (init=random)")
        torch.manual_seed(options.seed)  # the fresh head's initialisation (and the encoder's)
        load = head.from_pretrained if init == "pretrained" else head.from_config
        model = load(folder, num_labels=len(labels), id2label=dict(enumerate(labels)),
                     **settings)
        trainable, total = apply_freeze(model, freeze)
        print(f"freeze={freeze}: {trainable:,} of {total:,} parameters train")
        if options.dropout is not None:
            model.classifier_dropout = options.dropout
            model.dropout.p = options.dropout
        return model

    return build


def report(metrics: dict, keys: tuple[str, ...], written: str, out: Path, *,
           column: str = "held-out", after: str = "after") -> None:
    """Print the scores ``keys`` before and after training (``metrics[after]``) as a table, then
    what was written into ``out``."""
    print(format_table([{column: when, **{k: metrics[name][k] for k in keys}}
                        for when, name in (("before", "before"), ("after", after))]))
    print(f"{written} written to {out}")
