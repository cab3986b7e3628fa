"""``lm``: fine-tune the decoder alone as a left-to-right language model on plain text (a BERT
checkpoint made a GPT-style writer), scored by held-out perplexity before and after."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from minift.data.tokenizer import Tokenizer
from minift.hf.checkpoint import resolve_model_dir
from minift.run.options import LmOptions, OptionError
from minift.run.recipes import skeleton
from minift.run.recipes.mlm import read_passages, written
from minift.run.recipes.prepare import check_device, claim_run
from minift.run.recipes.seq2seq import decoder_kind, model_positions
from minift.tasks.lm import LanguageModel, LMBatches, lm_metrics
from minift.tasks.mlm import TextSequences, read_text_lines


def check_model(folder: Path, o: LmOptions) -> None:
    """What ``lm`` checks against the model before it loads one (and ``minift search lm``
    before its first trial): a model without an encoder to read, and the length."""
    if decoder_kind(folder, needed=False) == "seq2seq":
        raise OptionError(f"`model` {folder} is an encoder-decoder: lm trains a decoder alone "
                          "(give an encoder checkpoint or an lm run's folder)")
    if o.max_length < 3:
        raise OptionError(f"`max_length` must be at least 3 ([CLS], a token, [SEP]), got "
                          f"{o.max_length}")
    positions = model_positions(folder)[1]
    if positions is not None and o.max_length > positions:
        raise OptionError(f"`max_length` {o.max_length} is more than the model's {positions} "
                          "positions")


def held_out_batches(passages: list[str], tokenizer, o: LmOptions) -> list:
    """The batches held-out ``passages`` are scored in (the run's held-out text, or a search's
    test file): sequences as training makes them (``max_length``, ``pack``), longest first."""
    sequences = TextSequences(passages, tokenizer, max_length=o.max_length, pack=o.pack)
    return list(LMBatches(sequences, o.batch_size, seed=o.eval_seed, shuffle=False))


def read_test(path: str, options: dict) -> list[str]:
    """The passages of a test text file, one a line (as ``text`` and ``eval_text`` are read)."""
    return read_text_lines(path)


def score_saved(folder: Path, test: list[str], options: dict, device) -> dict[str, float]:
    """Perplexity, loss and tokens on ``test`` (``read_test``) of the language model saved in
    ``folder``, scored as the run scored its held-out text."""
    o = LmOptions(**{"out": str(folder), "text": ""} | options | {"progress": False})
    model = LanguageModel.from_pretrained(folder).to(device)
    batches = held_out_batches(test, Tokenizer.from_pretrained(folder), o)
    return lm_metrics(model, batches, device)


def lm(**options: Any) -> dict:
    """Fine-tune a causal language model on ``text`` (options: ``LmOptions``' fields); write the
    best model by held-out loss (HF ``BertLMHeadModel``) and ``metrics.json`` into ``out``.
    ``model`` is an encoder checkpoint (its self-attention made causal, its MLM head or a fresh
    one as the LM head) or an earlier ``lm`` run's folder."""
    o = LmOptions(**options)
    config = skeleton.train_config(o, metric="loss", greater_is_better=False)
    check_device(o.device)
    folder = resolve_model_dir(o.model)
    check_model(folder, o)
    files = [o.text] if isinstance(o.text, str | Path) else list(o.text)
    passages, eval_passages = read_passages(o, files)

    with claim_run("lm", o, folder, {"text": files, "eval_text": o.eval_text}) as out_dir:
        tokenizer = Tokenizer.from_pretrained(folder)
        train_seqs = TextSequences(passages, tokenizer, max_length=o.max_length, pack=o.pack)
        eval_batches = held_out_batches(eval_passages, tokenizer, o)
        tokens = sum(train_seqs.lengths)
        print(f"data: {len(passages)} passages -> {len(train_seqs)} sequences, {tokens:,} tokens "
              f"({'packed' if o.pack else 'one passage a sequence'}); held out: "
              f"{len(eval_passages)} passages")

        def build():
            print(f"loading {folder} as a left-to-right decoder (causal self-attention)")
            return LanguageModel.from_pretrained(folder, seed=o.seed).train()

        outcome = skeleton.run_recipe(skeleton.Recipe(
            config=config, build=build, load=LanguageModel.from_pretrained,
            train_batches=lambda epoch: LMBatches(train_seqs, o.batch_size, seed=o.seed,
                                                  epoch=epoch),
            evaluate=lambda m, device: lm_metrics(m, eval_batches, device, progress=o.progress),
            tokenizer=tokenizer, options=o,
            before=lambda s: f"held-out before: perplexity {s['perplexity']:.2f} "
                             f"({s['tokens']} tokens)",
        ))
        if outcome is None:
            return {}  # the other ranks of a torchrun job are done: rank 0 writes the results
        metrics = outcome.metrics(epochs=outcome.result.epochs_completed, pack=o.pack,
                                  lr=o.lr, batch_size=o.batch_size, max_length=o.max_length,
                                  seed=o.seed)
        metrics["data"] = {"passages": len(passages), "sequences": len(train_seqs),
                           "tokens": tokens, "eval_passages": len(eval_passages),
                           "eval_seed": o.eval_seed}
        return written(out_dir, metrics, ("perplexity", "loss"), "language model")
