"""Sequence to sequence (translation, summarisation, data-to-text): the model, the dataset, the
evaluation by generating one text per *distinct* source, scored against every reference written
for it (``minift.data.text_pairs.group_by_source``), as E2E NLG is scored.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence

import torch
from torch import Tensor
from tqdm import tqdm

from minift.core.bleu import corpus_bleu
from minift.core.decoder import IGNORE_INDEX, EncoderDecoder, shift_right
from minift.core.generate import generate
from minift.core.rouge import corpus_rouge_l
from minift.data.batches import PaddedRows, length_grouped_batches, pad_batch, pad_rows
from minift.data.text_pairs import SourceReferences, TextPair
from minift.hf.encoder_decoder import load_encoder_decoder, save_encoder_decoder, warm_start
from minift.tasks.lm import held_out_loss

# --- 1. The model ---------------------------------------------------------------------------------


class Seq2SeqModel(EncoderDecoder):
    """An ``EncoderDecoder`` that loads and saves transformers' ``EncoderDecoderModel`` folders.
    It adds no state: a loaded ``EncoderDecoder`` becomes one by a change of class (``adopt``)."""

    @classmethod
    def adopt(cls, model: EncoderDecoder) -> Seq2SeqModel:
        """``model`` itself, made a ``Seq2SeqModel``."""
        model.__class__ = cls
        return model

    @classmethod
    def warm_started(cls, path: str | os.PathLike, *, seed: int = 0) -> Seq2SeqModel:
        """Both halves from one encoder checkpoint (BERT2BERT, Rothe, Narayan and Severyn, TACL
        2020); cross-attention fresh, drawn from ``seed``."""
        return cls.adopt(warm_start(path, seed=seed))

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike) -> Seq2SeqModel:
        """An ``EncoderDecoderModel`` folder (saved here or by transformers), in eval mode."""
        return cls.adopt(load_encoder_decoder(path))

    def save_pretrained(self, path: str | os.PathLike) -> None:
        """Write transformers' ``EncoderDecoderModel`` folder (config.json, model.safetensors)."""
        save_encoder_decoder(self, path)


# --- 2. Texts to token rows -----------------------------------------------------------------------


def _rows(texts: Sequence[str], tokenizer, prefix: list[int], max_length: int,
          chunk_size: int = 1024) -> tuple[list[Tensor], int]:
    """``prefix`` + text + [SEP] of each text, the text's tokens (the tokenizer's ``backend``,
    no special tokens) cut so that the row holds ``max_length``; and how many were cut."""
    rows, cut, room = [], 0, max_length - len(prefix) - 1
    for start in range(0, len(texts), chunk_size):
        chunk = list(texts[start : start + chunk_size])
        for e in tokenizer.backend.encode_batch(chunk, add_special_tokens=False):
            cut += len(e.ids) > room
            rows.append(torch.tensor([*prefix, *e.ids[:room], tokenizer.sep_token_id],
                                     dtype=torch.long))
    return rows, cut


def warn_truncated(count: int, total: int, what: str, option: str, limit: int) -> None:
    """A ``UserWarning`` that ``count`` of ``total`` texts were cut to ``limit`` tokens (the
    option marked ```option```, which the command line shows as its flag)."""
    if count:
        warnings.warn(f"{count} of {total} {what} are longer than `{option}` {limit} tokens: "
                      "truncated (the rest is not read)", UserWarning, stacklevel=3)


def source_rows(texts: Sequence[str], tokenizer, max_length: int) -> tuple[list[Tensor], int]:
    """``[CLS] text [SEP]`` of each source, cut to ``max_length`` tokens (what the tokenizer's
    truncation gives), and how many were cut."""
    if max_length < 2:
        raise ValueError(f"max_length: expected at least 2 ([CLS] and [SEP]), got {max_length}")
    return _rows(texts, tokenizer, [tokenizer.cls_token_id], max_length)


def target_rows(texts: Sequence[str], tokenizer, max_length: int) -> tuple[list[Tensor], int]:
    """``text [SEP]`` of each target (its labels), cut to ``max_length`` tokens, the [SEP] kept
    so that the decoder always learns to stop; and how many were cut. No leading [CLS]: it is
    the decoder's start token, which teacher forcing puts there (as ``EncoderDecoderModel``)."""
    if max_length < 2:
        raise ValueError(f"max_target_length: expected at least 2 (a token and [SEP]), got "
                         f"{max_length}")
    return _rows(texts, tokenizer, [], max_length)


# --- 3. The dataset -------------------------------------------------------------------------------


class Seq2SeqDataset(PaddedRows):
    """The (source, target) rows of a file, tokenized once, padded a batch at a time.

    Batch contract: ``input_ids``, ``attention_mask`` (batch, source) padded on the right;
    ``labels`` (batch, target), -100 at padding; ``decoder_input_ids`` = ``shift_right(labels)``
    (the start token, then the labels but the last, padding as [PAD]) and
    ``decoder_attention_mask``, both (batch, target): exactly ``EncoderDecoder.forward``'s
    arguments. Length grouping uses the source and target lengths together.
    """

    def __init__(self, pairs: Sequence[TextPair], tokenizer, *, max_length: int,
                 max_target_length: int) -> None:
        if len(pairs) == 0:
            raise ValueError("expected at least one (source, target) row, found none")
        self.pad_token_id = int(tokenizer.pad_token_id)
        self.start_token_id = int(tokenizer.cls_token_id)
        self.input_ids, self.truncated_sources = source_rows([p.source for p in pairs],
                                                             tokenizer, max_length)
        self.labels, self.truncated_targets = target_rows([p.target for p in pairs], tokenizer,
                                                          max_target_length)
        warn_truncated(self.truncated_sources, len(pairs), "sources", "max_length", max_length)
        warn_truncated(self.truncated_targets, len(pairs), "targets", "max_target_length",
                       max_target_length)
        self.lengths = [len(s) + len(t) for s, t in zip(self.input_ids, self.labels, strict=True)]

    def batch(self, indices: Sequence[int]) -> dict[str, Tensor]:
        """The padded batch of the rows at ``indices``, in that order."""
        sources = pad_batch([self.input_ids[i] for i in indices], None, self.pad_token_id)
        labels = pad_rows([self.labels[i] for i in indices], IGNORE_INDEX)
        decoder_input_ids = shift_right(labels, self.start_token_id, self.pad_token_id)
        # the start token is real; after it, a position is real when the label before it was
        decoder_mask = torch.ones_like(labels)
        decoder_mask[:, 1:] = (labels[:, :-1] != IGNORE_INDEX).long()
        return {"input_ids": sources["input_ids"], "attention_mask": sources["attention_mask"],
                "decoder_input_ids": decoder_input_ids, "decoder_attention_mask": decoder_mask,
                "labels": labels}


# --- 4. Generating and scoring --------------------------------------------------------------------


def generate_texts(model: EncoderDecoder, tokenizer, sources: Sequence[Tensor], *,
                   batch_size: int, max_new_tokens: int, device,
                   progress: bool = False, **decoding) -> list[str]:
    """The text of each source row (``source_rows``), in the order given, generated in batches of
    similar lengths; greedy unless ``decoding`` (``minift.core.generate.generate``'s keywords:
    beams, sampling) says otherwise."""
    model.eval()
    texts: list[str | None] = [None] * len(sources)
    groups = length_grouped_batches([len(s) for s in sources], batch_size, generator=None,
                                    shuffle=False)
    for group in tqdm(groups, desc="generate", leave=False, disable=not progress):
        batch = pad_batch([sources[i] for i in group], None, tokenizer.pad_token_id)
        written = generate(model, batch["input_ids"].to(device),
                           batch["attention_mask"].to(device), max_new_tokens=max_new_tokens,
                           **decoding)
        for i, row in zip(group, written[:, 1:].tolist(), strict=True):  # drop the start token
            texts[i] = tokenizer.decode(row, skip_special_tokens=True)
    return texts


def is_uncased(tokenizer) -> bool:
    """True when the tokenizer lowercases (its tokens of "A" and "a" are the same): its texts
    are then scored against lowercased references (sacrebleu's ``lowercase=True``)."""
    return tokenizer.tokenize("A") == tokenizer.tokenize("a")


def seq2seq_metrics(model, loss_batches, examples: Sequence[SourceReferences], tokenizer, *,
                    max_length: int, max_new_tokens: int, batch_size: int, device,
                    progress: bool = False, **decoding) -> dict:
    """A model's dev scores: ``loss`` (teacher forcing, every row), and for one text per distinct
    source (written as ``decoding`` says, see ``generate_texts``), against all of that source's
    references: ``bleu`` (corpus BLEU, 0..100, sacrebleu's 13a tokenisation, lowercased for an
    uncased tokenizer) and ``rouge_l`` (the mean best-reference ROUGE-L F-measure, times 100 as
    papers report it); ``sources`` counts them. ``predictions`` (the texts, in source order)
    ride along for the recipe to write."""
    rows, _ = source_rows([e.source for e in examples], tokenizer, max_length)
    texts = generate_texts(model, tokenizer, rows, batch_size=batch_size,
                           max_new_tokens=max_new_tokens, device=device, progress=progress,
                           **decoding)
    references = [list(e.references) for e in examples]
    bleu = corpus_bleu(texts, references, lowercase=is_uncased(tokenizer))
    rouge = corpus_rouge_l(texts, references)
    loss, _ = held_out_loss(model, loss_batches, device, shifted=False, desc="dev loss",
                            progress=progress)
    return {"loss": loss, "bleu": bleu.score, "rouge_l": 100 * rouge.fmeasure,
            "sources": len(examples), "predictions": texts}
