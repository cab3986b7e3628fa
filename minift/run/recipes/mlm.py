"""``pretrain``: continued masked-language-model pretraining on domain text (with ``nsp``: BERT's
two objectives, MLM and next-sentence prediction, on documents)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from minift.core.freeze import freeze as apply_freeze
from minift.data.tokenizer import Tokenizer
from minift.hf.checkpoint import resolve_model_dir
from minift.run.options import OptionError, PretrainOptions, TextOptions
from minift.run.recipes import skeleton
from minift.run.recipes.prepare import check_device, check_max_length, claim_run, write_metrics
from minift.tasks import nsp as nsp_data
from minift.tasks.mlm import (
    MaskedBatches,
    MaskedLM,
    MaskingCollator,
    TextSequences,
    held_out_split,
    mlm_metrics,
    read_text_lines,
)
from minift.tasks.nsp import pretraining_metrics


def read_passages(o: TextOptions, files: list) -> tuple[list[str], list[str]]:
    """(training, held-out) passages: ``eval_text``'s, else a seeded slice of ``text``'s."""
    passages = read_text_lines(files)
    if o.eval_text is not None:
        return passages, read_text_lines(o.eval_text)
    return held_out_split(passages, o.eval_fraction, o.eval_seed, o.max_eval_passages)


def pretrain(**options: Any) -> dict:
    """Continue pretraining an encoder with masked-language modelling on domain text (options:
    ``PretrainOptions``' fields); write the best model by held-out loss (HF ``BertForMaskedLM``),
    the tokenizer and ``metrics.json`` into ``out``.

    The held-out text is masked ONCE, with ``eval_seed``, by the training strategy, so every
    evaluation scores the very same masked tokens; training batches are masked afresh every epoch
    (dynamic masking), each from its own seeded generator, so ``resume`` continues exactly.

    ``freeze="head"``: only the MLM head's own weights train (transform and output bias; the
    decoder is the frozen word embeddings). A checkpoint published without its MLM head
    (all-MiniLM-L6-v2) gets one this way before the whole model is trained (a second run, from
    this one's output, at a low rate): the fresh head's large early gradients never reach the
    encoder.
    """
    o = PretrainOptions(**options)
    if o.freeze != "none" and o.nsp:
        raise OptionError("`freeze` head trains the MLM head alone: it does not take `nsp`")
    config = skeleton.train_config(o, eval_every=o.eval_every or o.max_steps,
                                   metric="loss", greater_is_better=False)
    check_device(o.device)
    folder = resolve_model_dir(o.model)
    check_max_length(folder, o.max_length, minimum=3)
    files = [o.text] if isinstance(o.text, str | Path) else list(o.text)
    if o.nsp:
        return _pretrain_nsp(o, files, folder, config)
    passages, eval_passages = read_passages(o, files)

    with claim_run("pretrain", o, folder, {"text": files, "eval_text": o.eval_text}) as out_dir:
        print(f"data: {len(passages)} passages, {len(eval_passages)} held out; tokenizing")
        tokenizer = Tokenizer.from_pretrained(folder)
        collator = MaskingCollator.from_tokenizer(tokenizer, o.masking, o.mlm_probability)
        train_seqs = TextSequences(passages, tokenizer, max_length=o.max_length, pack=o.pack)
        eval_seqs = TextSequences(eval_passages, tokenizer, max_length=o.max_length, pack=o.pack)
        eval_batches = list(MaskedBatches(eval_seqs, collator, o.batch_size, seed=o.eval_seed,
                                          shuffle=False))  # masked once: fixed for every eval
        tokens = sum(train_seqs.lengths)
        print(f"data: {len(passages)} passages -> {len(train_seqs)} sequences, {tokens:,} tokens "
              f"(max length {o.max_length}, "
              f"{'packed' if o.pack else 'one passage a sequence'}); held out: "
              f"{len(eval_passages)} passages "
              f"({'--eval-text' if o.eval_text else f'seeded {o.eval_fraction:.0%} slice'})")
        if o.masking == "span" and not o.pack:
            print("note: span masking overshoots its budget on short sequences; --pack helps")

        def build():
            print(f"loading {folder}")
            torch.manual_seed(o.seed)  # a fresh MLM head's initialisation
            mlm = MaskedLM.from_pretrained(folder)
            print("MLM head " + ("loaded from the checkpoint" if mlm.head_loaded else
                                 "not in the checkpoint: initialised as BERT does "
                                 "(N(0, initializer_range))"))
            if o.freeze != "none":
                trainable, total = apply_freeze(mlm, o.freeze)
                print(f"freeze={o.freeze}: {trainable:,} of {total:,} parameters train")
            return mlm

        outcome = skeleton.run_recipe(skeleton.Recipe(
            config=config, build=build, load=MaskedLM.from_pretrained,
            train_batches=lambda epoch: MaskedBatches(train_seqs, collator, o.batch_size,
                                                      seed=o.seed, epoch=epoch),
            evaluate=lambda m, device: mlm_metrics(m, eval_batches, device, progress=o.progress),
            tokenizer=tokenizer, options=o,
            before=lambda s: f"held-out before: perplexity {s['perplexity']:.2f}  masked "
                             f"accuracy {s['masked_accuracy']:.4f} ({s['masked_tokens']} "
                             "masked tokens)",
        ))
        if outcome is None:
            return {}  # the other ranks of a torchrun job are done: rank 0 writes the results
        metrics = outcome.metrics(
            epochs=outcome.result.epochs_completed, masking=o.masking, pack=o.pack, lr=o.lr,
            batch_size=o.batch_size, max_length=o.max_length, seed=o.seed, freeze=o.freeze,
            head_loaded=outcome.model.head_loaded)
        metrics["data"] = {"passages": len(passages), "sequences": len(train_seqs),
                           "tokens": tokens, "eval_passages": len(eval_passages),
                           "eval_seed": o.eval_seed}
        return written(out_dir, metrics, ("perplexity", "masked_accuracy", "loss"),
                        "model (with MLM head)")


def written(out_dir: Path, metrics: dict, keys: tuple, model: str) -> dict:
    """Write ``metrics.json``; print the held-out scores before and after, and what was written."""
    write_metrics(out_dir, metrics)
    skeleton.report(metrics, keys, f"{model}, tokenizer, metrics.json and log.jsonl", out_dir)
    return metrics


def _pretrain_nsp(o: PretrainOptions, files: list, folder: Path, config) -> dict:
    """``pretrain(nsp=True)``: MLM and next-sentence prediction, BERT's two objectives; ``text``
    holds documents, held out whole, their sentence pairs built once from seeded generators."""
    if o.masking != "mlm" or o.pack:
        raise OptionError("`nsp` builds sentence pairs: it takes `masking` mlm and no `pack`")
    check_max_length(folder, o.max_length, minimum=5)
    documents = [doc for path in files for doc in nsp_data.read_documents(path)]
    if o.eval_text is not None:
        eval_documents = nsp_data.read_documents(o.eval_text)
    else:
        documents, eval_documents = held_out_split(documents, o.eval_fraction, o.eval_seed,
                                                   o.max_eval_passages)
        if len(eval_documents) < 2:
            raise OptionError(f"`eval_fraction` {o.eval_fraction} holds out "
                              f"{len(eval_documents)} document; NSP needs at least 2 (raise "
                              "it, or give `eval_text`)")
    tokenizer = Tokenizer.from_pretrained(folder)
    collator = MaskingCollator.from_tokenizer(tokenizer, "mlm", o.mlm_probability)
    train_pairs = nsp_data.nsp_pairs(nsp_data.tokenize_documents(documents, tokenizer),
                                     o.max_length, torch.Generator().manual_seed(o.seed))
    eval_pairs = nsp_data.nsp_pairs(nsp_data.tokenize_documents(eval_documents, tokenizer),
                                    o.max_length, torch.Generator().manual_seed(o.eval_seed))
    train_seqs = nsp_data.PairSequences(train_pairs, tokenizer)
    eval_seqs = nsp_data.PairSequences(eval_pairs, tokenizer)
    eval_batches = list(nsp_data.NSPMaskedBatches(eval_seqs, collator, o.batch_size,
                                                  seed=o.eval_seed, shuffle=False))
    with claim_run("pretrain", o, folder, {"text": files, "eval_text": o.eval_text}) as out_dir:
        share = sum(p.label for p in train_pairs) / len(train_pairs)
        print(f"data: {len(documents)} documents -> {len(train_pairs)} sentence pairs "
              f"({share:.1%} with a random B); held out: {len(eval_documents)} documents -> "
              f"{len(eval_pairs)} pairs")

        def build():
            print(f"loading {folder}")
            torch.manual_seed(o.seed)  # fresh heads' initialisation
            model = nsp_data.PreTraining.from_pretrained(folder)
            print(f"MLM head {'loaded' if model.head_loaded else 'initialised'}, NSP head "
                  f"{'loaded' if model.nsp_loaded else 'initialised'}")
            return model

        outcome = skeleton.run_recipe(skeleton.Recipe(
            config=config, build=build, load=nsp_data.PreTraining.from_pretrained,
            train_batches=lambda epoch: nsp_data.NSPMaskedBatches(train_seqs, collator,
                                                                  o.batch_size, seed=o.seed,
                                                                  epoch=epoch),
            evaluate=lambda m, device: pretraining_metrics(m, eval_batches, device,
                                                           progress=o.progress),
            tokenizer=tokenizer, options=o,
            before=lambda s: f"held-out before: perplexity {s['perplexity']:.2f}  masked "
                             f"accuracy {s['masked_accuracy']:.4f}  NSP accuracy "
                             f"{s['nsp_accuracy']:.4f} ({s['pairs']} pairs)",
        ))
        if outcome is None:
            return {}
        metrics = outcome.metrics(epochs=outcome.result.epochs_completed, masking="mlm",
                                  nsp=True, batch_size=o.batch_size, max_length=o.max_length,
                                  seed=o.seed)
        metrics["data"] = {"documents": len(documents), "pairs": len(train_pairs),
                           "random_share": share, "eval_documents": len(eval_documents),
                           "eval_pairs": len(eval_pairs), "eval_seed": o.eval_seed}
        return written(out_dir, metrics, ("perplexity", "masked_accuracy", "nsp_accuracy", "loss"),
                        "model (MLM and NSP heads)")
