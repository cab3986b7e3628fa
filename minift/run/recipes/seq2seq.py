"""``seq2seq``: fine-tune a BERT2BERT encoder-decoder on (source, target) rows, scored on dev by
generating (BLEU, ROUGE-L); and ``generate``: a text for each line of a file with a trained
``seq2seq`` or ``lm`` model. Both decode with ``DecodingOptions``' fields, so a run's dev texts
are what ``generate`` writes with the same values.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Any

import torch

from minift.core.decoder import CausalLM
from minift.core.files import atomic_write
from minift.core.generate import generate as decode
from minift.core.labels import DataError
from minift.data.readers import read_utf8_lines
from minift.data.text_pairs import TextPair, e2e_files, group_by_source, read_text_pairs
from minift.data.tokenizer import Tokenizer
from minift.hf.checkpoint import read_config, read_config_json, resolve_model_dir
from minift.run.options import GenerateOptions, OptionError, Seq2seqOptions
from minift.run.recipes import prepare, skeleton
from minift.tasks.lm import LanguageModel
from minift.tasks.seq2seq import (
    Seq2SeqDataset,
    Seq2SeqModel,
    generate_texts,
    seq2seq_metrics,
    source_rows,
    warn_truncated,
)

E2E_NOTE = ("E2E NLG: trained on the official dev set (devset.csv; the official 42k train set "
            "could not be had), scored on the official test set (testset_w_refs.csv)")


def data_files(o: Seq2seqOptions) -> tuple[str, str, str, str]:
    """``(train, dev, source_col, target_col)``: E2E's from the data folder, or the options'."""
    if o.task is not None:
        if o.train or o.dev:
            raise OptionError("give either `task` or `train`/`dev`, not both")
        train, dev, source, target = e2e_files(prepare.data_folder(o.data_dir))
        return str(train), str(dev), source, target
    if not (o.train and o.dev):
        raise OptionError("give `task` e2e, or both `train` FILE and `dev` FILE")
    return o.train, o.dev, o.source_col, o.target_col


def decoder_kind(folder: Path, needed: bool = True) -> str | None:
    """``"seq2seq"`` for an encoder-decoder folder, ``"lm"`` for a decoder alone; a folder with
    no decoder (an encoder, a classifier) is None, or with ``needed`` an ``OptionError`` naming
    what it holds."""
    raw = read_config_json(folder)
    if raw.get("model_type") == "encoder-decoder":
        return "seq2seq"
    if raw.get("is_decoder") is True and not raw.get("add_cross_attention"):
        return "lm"
    if not needed:
        return None
    found = raw.get("architectures") or [raw.get("model_type")]
    raise OptionError(f"`model` {folder} holds no decoder (its config.json: {found}, is_decoder "
                      f"{raw.get('is_decoder')!r}): give the folder of a 'minift seq2seq' or "
                      "'minift lm' run (an EncoderDecoderModel or BertLMHeadModel folder)")


def model_positions(folder: Path) -> tuple[int | None, int | None]:
    """``(encoder, decoder)`` positions of an encoder checkpoint (both halves start from it), an
    encoder-decoder folder or a decoder folder (no encoder: None); None where config.json does
    not say (loading the folder then names what is wrong)."""
    raw = read_config_json(folder)
    if raw.get("model_type") == "encoder-decoder":
        encoder, decoder = raw.get("encoder"), raw.get("decoder")
    elif raw.get("is_decoder") is True:
        encoder, decoder = None, raw
    else:  # an encoder checkpoint: read whole, so a bad one is named before anything loads
        positions = read_config(folder, raw).max_position_embeddings
        return positions, positions

    def positions(part: Any) -> int | None:
        value = part.get("max_position_embeddings") if isinstance(part, dict) else None
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    return positions(encoder), positions(decoder)


def check_lengths(folder: Path, *, source: int | None = None, target: int | None = None,
                  new_tokens: int | None = None) -> None:
    """The lengths a run asks for against the model's positions, before it loads: a source of
    ``source`` (``max_length``) tokens in the encoder; the start token and then ``target``
    (``max_target_length``) or ``new_tokens`` (``max_new_tokens``) tokens in the decoder."""
    encoder, decoder = model_positions(folder)
    if source is not None and encoder is not None and source > encoder:
        raise OptionError(f"`max_length` {source} is more than the model's {encoder} "
                          "positions (the encoder's)")
    for option, length in (("max_target_length", target), ("max_new_tokens", new_tokens)):
        if length is not None and decoder is not None and length > decoder:
            raise OptionError(f"`{option}` {length} does not fit the decoder: the start token "
                              f"and all but the last of them take {length} positions, the "
                              f"model has {decoder}")


def check_model(folder: Path, o: Seq2seqOptions) -> None:
    """What ``seq2seq`` checks against the model before it loads one (and ``minift search
    seq2seq`` before its first trial): a starting point with an encoder, and the lengths."""
    if decoder_kind(folder, needed=False) == "lm":
        raise OptionError(f"`model` {folder} is a language model (a decoder alone): seq2seq "
                          "starts from an encoder checkpoint or an encoder-decoder folder")
    check_lengths(folder, source=o.max_length, target=o.max_target_length,
                  new_tokens=o.max_new_tokens)


def scoring(pairs: list[TextPair], tokenizer, o: Seq2seqOptions):
    """``evaluate(model, device)`` on the rows ``pairs``: the teacher-forced loss over every row,
    BLEU and ROUGE-L of one text per distinct source written with the decoding options, as
    ``minift generate`` with the same options writes it."""
    examples = group_by_source(pairs)
    dataset = Seq2SeqDataset(pairs, tokenizer, max_length=o.max_length,
                             max_target_length=o.max_target_length)
    batches = dataset.batches(o.batch_size, generator=None, shuffle=False)
    decoding = o.decoding()

    def evaluate(model, device) -> dict:
        return seq2seq_metrics(model, batches, examples, tokenizer, max_length=o.max_length,
                               max_new_tokens=o.max_new_tokens, batch_size=o.batch_size,
                               device=device, progress=o.progress, **decoding)
    return evaluate


def read_test(path: str, options: dict) -> list[TextPair]:
    """The rows of a test file, in the columns of the options (E2E's with ``task``)."""
    source_col, target_col = data_files(Seq2seqOptions(**{"out": ""} | options))[2:]
    return read_text_pairs(path, source_col=source_col, target_col=target_col)


def score_saved(folder: Path, test: list[TextPair], options: dict, device) -> dict[str, float]:
    """The scores on ``test`` (``read_test``) of the encoder-decoder saved in ``folder``, as the
    run scored its dev set (``scoring``)."""
    o = Seq2seqOptions(**{"out": str(folder)} | options | {"progress": False})
    model = Seq2SeqModel.from_pretrained(folder).to(device)
    scores = scoring(test, Tokenizer.from_pretrained(folder), o)(model, device)
    return {k: v for k, v in scores.items() if k != "predictions"}


def _build(folder: Path, o: Seq2seqOptions):
    """``build``: an encoder-decoder folder as it is, else a warm start from an encoder."""
    def build():
        if read_config_json(folder).get("model_type") == "encoder-decoder":
            print(f"loading the encoder-decoder {folder}")
            return Seq2SeqModel.from_pretrained(folder).train()
        print(f"warm-starting an encoder-decoder from {folder} (cross-attention fresh, "
              f"seed {o.seed})")
        return Seq2SeqModel.warm_started(folder, seed=o.seed)
    return build


def seq2seq(**options: Any) -> dict:
    """Fine-tune an encoder-decoder (options: ``Seq2seqOptions``' fields); write the best model
    (HF ``EncoderDecoderModel``), ``dev_predictions.txt`` and ``metrics.json`` into ``out``.

    **The best checkpoint is the one of highest dev BLEU**, not of lowest dev loss: the loss
    scores teacher forcing, one next token given the reference's previous ones, while BLEU scores
    what the model writes alone, the thing it is for, and the two need not peak together.
    ``patience`` waits on BLEU too.
    """
    o = Seq2seqOptions(**options)
    config = skeleton.train_config(o, metric="bleu", greater_is_better=True)
    prepare.check_device(o.device)
    folder = resolve_model_dir(o.model)
    check_model(folder, o)
    train, dev, source_col, target_col = data_files(o)
    columns = dict(source_col=source_col, target_col=target_col)
    train_pairs = prepare.subset(read_text_pairs(train, **columns), o.limit_train, o.seed)
    dev_rows = read_text_pairs(dev, **columns)
    dev_examples = prepare.subset(group_by_source(dev_rows), o.limit_dev, 0)  # by source
    kept = {e.source for e in dev_examples}
    dev_pairs = [p for p in dev_rows if p.source in kept]

    with prepare.claim_run("seq2seq", o, folder, {"train": train, "dev": dev}) as out_dir:
        if o.task == "e2e":
            print(f"note: {E2E_NOTE}")
        print(f"data: {len(train_pairs)} train rows / {len(dev_pairs)} dev rows "
              f"({len(dev_examples)} distinct dev sources); tokenizing")
        tokenizer = Tokenizer.from_pretrained(folder)
        train_set = Seq2SeqDataset(train_pairs, tokenizer, max_length=o.max_length,
                                   max_target_length=o.max_target_length)
        evaluate = scoring(dev_pairs, tokenizer, o)
        outcome = skeleton.run_recipe(skeleton.Recipe(
            config=config, build=_build(folder, o), load=Seq2SeqModel.from_pretrained,
            train_batches=prepare.epoch_batches(train_set, o.batch_size, o.seed),
            evaluate=evaluate, tokenizer=tokenizer, options=o,
            before=lambda s: f"dev before fine-tuning: BLEU {s['bleu']:.2f}  ROUGE-L "
                             f"{s['rouge_l']:.2f}  loss {s['loss']:.4f}",
        ))
        if outcome is None:
            return {}  # the other ranks of a torchrun job are done: rank 0 writes the results
        predictions = outcome.after.pop("predictions")
        outcome.before.pop("predictions", None)
        atomic_write(out_dir / "dev_predictions.txt",
                     "".join(f"{text}\n" for text in predictions).encode("utf-8"))
        metrics = outcome.metrics("dev", epochs=outcome.result.epochs_completed, lr=o.lr,
                                  batch_size=o.batch_size, seed=o.seed)
        metrics["data"] = {"train_rows": len(train_pairs), "dev_rows": len(dev_pairs),
                           "dev_sources": len(dev_examples),
                           "truncated_train_sources": train_set.truncated_sources,
                           "truncated_train_targets": train_set.truncated_targets,
                           **({"note": E2E_NOTE} if o.task == "e2e" else {})}
        prepare.write_metrics(out_dir, metrics)

    skeleton.report(metrics, ("bleu", "rouge_l", "loss"),
                    "model, tokenizer, dev_predictions.txt, metrics.json and log.jsonl", out_dir,
                    column="dev", after="dev")
    return metrics


# --- generate -------------------------------------------------------------------------------------


def read_inputs(path: str) -> list[str]:
    """The lines of ``path`` (``-``: stdin), every line one input, blank ones too, so that output
    line i answers input line i."""
    lines = sys.stdin.read().splitlines() if path == "-" else read_utf8_lines(path)
    if not lines:
        raise DataError(f"{'stdin' if path == '-' else path}: expected one input a line, found "
                        "none")
    return lines


def continue_prompts(model: CausalLM, tokenizer, lines: list[str], o: GenerateOptions,
                     device, **decoding) -> list[str]:
    """A language model's continuation of each line (``[CLS]`` + its tokens, cut to
    ``max_length``), stopping at ``[SEP]``; prompts of one length are continued together;
    ``decoding``: greedy, beams or sampling (``minift.core.generate.generate``'s keywords)."""
    rows, cut = source_rows(lines, tokenizer, o.max_length + 1)  # [CLS] text (no [SEP])
    warn_truncated(cut, len(lines), "prompts", "max_length", o.max_length)
    prompts = [row[:-1] for row in rows]
    texts: list[str | None] = [None] * len(lines)
    by_length: dict[int, list[int]] = {}
    for i, prompt in enumerate(prompts):
        by_length.setdefault(len(prompt), []).append(i)
    for group in by_length.values():
        for start in range(0, len(group), o.batch_size):
            part = group[start : start + o.batch_size]
            ids = torch.stack([prompts[i] for i in part]).to(device)
            written = decode(model, ids, max_new_tokens=o.max_new_tokens,
                             eos_token_id=tokenizer.sep_token_id,
                             pad_token_id=tokenizer.pad_token_id, **decoding)
            for i, row in zip(part, written[:, ids.size(1):].tolist(), strict=True):
                texts[i] = tokenizer.decode(row, skip_special_tokens=True)
    return texts


def generate(**options: Any) -> list[str]:
    """A text for each line of ``input`` (options: ``GenerateOptions``' fields): an
    encoder-decoder's output for a source, a language model's continuation of a prompt; printed
    one a line, in input order, and returned."""
    o = GenerateOptions(**options)
    decoding = o.decoding()  # a bad combination stops here, before anything loads
    prepare.check_device(o.device)
    folder = resolve_model_dir(o.model)
    kind = decoder_kind(folder)
    encoder, decoder = model_positions(folder)
    if kind == "seq2seq":
        max_length = o.max_length or encoder or 512  # (None: the load names the bad config)
        check_lengths(folder, source=max_length, new_tokens=o.max_new_tokens)
    else:  # a prompt and its continuation share the positions
        positions = decoder or 512
        max_length = o.max_length or max(2, positions - o.max_new_tokens + 1)
        if max_length + o.max_new_tokens - 1 > positions:  # the last token is never read
            raise OptionError(f"a prompt of `max_length` {max_length} and `max_new_tokens` "
                              f"{o.max_new_tokens} need {max_length + o.max_new_tokens - 1} "
                              f"positions, the model has {positions}")
    o = dataclasses.replace(o, max_length=max_length)
    lines = read_inputs(o.input)
    device = prepare.pick_device(o.device)
    if o.sample:  # one stream of draws for the whole file, in its batches' order
        decoding["generator"] = torch.Generator(device).manual_seed(o.seed)
    tokenizer = Tokenizer.from_pretrained(folder)
    with torch.no_grad():
        if kind == "seq2seq":
            model = Seq2SeqModel.from_pretrained(folder).to(device)
            rows, cut = source_rows(lines, tokenizer, o.max_length)
            warn_truncated(cut, len(lines), "sources", "max_length", o.max_length)
            texts = generate_texts(model, tokenizer, rows, batch_size=o.batch_size,
                                   max_new_tokens=o.max_new_tokens, device=device,
                                   progress=o.progress, **decoding)
        else:
            model = LanguageModel.from_pretrained(folder).to(device).eval()
            texts = continue_prompts(model, tokenizer, lines, o, device, **decoding)
    for text in texts:
        print(text)
    return texts
