"""Sentence pairs for next-sentence prediction (NSP), built from documents as BERT built them.

BERT's second pretraining objective: given ``[CLS] A [SEP] B [SEP]``, did B follow A in the
document (label 0), or was it taken from another document (label 1)? The pairs are batched like
``minift.tasks.mlm.TextSequences``, so the MLM masking collator masks them too.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from minift.core.labels import DataError
from minift.core.model import BertConfig, BertModel
from minift.data.batches import PaddedRows
from minift.data.readers import read_utf8_lines
from minift.hf.checkpoint import (
    fresh_linear,
    linear_tensors,
    load_encoder_weights,
    load_linear,
    read_checkpoint,
    save_bert,
)
from minift.tasks.classify import ClassifierOutput
from minift.tasks.mlm import MaskedBatches, MaskedLM, mlm_metrics

# --- 1. Documents ---------------------------------------------------------------------------------


def read_documents(path: str | os.PathLike) -> list[list[str]]:
    """The documents of a file, each a list of sentences (non-empty ones, in order).

    ``.jsonl``: one JSON object a line with a ``sentences`` list of strings. Otherwise text: one
    sentence a line, documents separated by blank lines. The file needs at least two documents
    (NSP draws B from another document).
    """
    path = Path(path)
    documents: list[list[str]] = []
    lines = read_utf8_lines(path)
    if path.suffix.lower() == ".jsonl":
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(f"{path}:{number}: not valid JSON ({err.msg})") from None
            sentences = obj.get("sentences") if isinstance(obj, dict) else None
            if not isinstance(sentences, list) or not all(isinstance(s, str) for s in sentences):
                raise DataError(f"{path}:{number}: expected an object with a 'sentences' list of "
                                "strings")
            kept = [s.strip() for s in sentences if s.strip()]
            if kept:
                documents.append(kept)
    else:
        current: list[str] = []
        for line in [*lines, ""]:
            if line.strip():
                current.append(line.strip())
            elif current:
                documents.append(current)
                current = []
    if len(documents) < 2:
        raise DataError(f"{path}: found {len(documents)} document(s); next-sentence prediction "
                        "needs at least 2 (a blank line between documents, or JSONL with a "
                        "'sentences' list a line)")
    return documents


# --- 2. Pairs -------------------------------------------------------------------------------------


@dataclass
class SentencePair:
    """Token ids of segment A and segment B (no special tokens) and the NSP label: 0 when B is
    the continuation of A in its document, 1 when B comes from another document."""

    a: list[int]
    b: list[int]
    label: int


def _uniform(generator: torch.Generator) -> float:
    return float(torch.rand((), generator=generator))


def _integer(low: int, high: int, generator: torch.Generator) -> int:
    """A uniform integer in [low, high], both ends included (Python's ``randint``)."""
    return int(torch.randint(low, high + 1, (), generator=generator))


def _trim(a: list[int], b: list[int], max_tokens: int, generator: torch.Generator) -> None:
    """BERT's ``truncate_seq_pair``: drop a token from the longer side, from its front or its
    back at random, until the two fit in ``max_tokens``."""
    while len(a) + len(b) > max_tokens:
        longer = a if len(a) > len(b) else b
        if _uniform(generator) < 0.5:
            del longer[0]
        else:
            longer.pop()


def nsp_pairs(documents: Sequence[Sequence[list[int]]], max_length: int,
              generator: torch.Generator, *, short_seq_prob: float = 0.1) -> list[SentencePair]:
    """The NSP pairs of one pass over tokenized documents (each a list of sentences, each a list
    of token ids), as ``create_instances_from_document`` of BERT's ``create_pretraining_data.py``.

    Sentences are gathered into a chunk until it reaches the target length; a random cut splits
    it into A and B; half of the time B is replaced by sentences from a random other document
    (the chunk's unused sentences go back to the queue). A chunk of a single sentence always
    gets a random B (there is no cut to make), so the share of random pairs is a little over one
    half. With probability ``short_seq_prob`` (BERT's 0.1) a chunk aims at a random shorter
    length, so the model also sees short inputs.
    """
    if max_length < 5:
        raise ValueError(f"max_length must be at least 5 for a pair, got {max_length}")
    if len(documents) < 2:
        raise ValueError("next-sentence prediction needs at least 2 documents")
    max_tokens = max_length - 3
    pairs = []
    for index, document in enumerate(documents):
        target = max_tokens
        if _uniform(generator) < short_seq_prob:
            target = _integer(2, max_tokens, generator)
        chunk: list[list[int]] = []
        length, i = 0, 0
        while i < len(document):
            chunk.append(document[i])
            length += len(document[i])
            if i == len(document) - 1 or length >= target:
                cut = _integer(1, len(chunk) - 1, generator) if len(chunk) >= 2 else 1
                a = [t for sentence in chunk[:cut] for t in sentence]
                if len(chunk) == 1 or _uniform(generator) < 0.5:
                    other = _integer(0, len(documents) - 2, generator)
                    other += other >= index  # any document but this one
                    source = documents[other]
                    b: list[int] = []
                    for sentence in source[_integer(0, len(source) - 1, generator):]:
                        b += sentence
                        if len(b) >= target - len(a):
                            break
                    i -= len(chunk) - cut  # the unused sentences go back to the queue
                    label = 1
                else:
                    b = [t for sentence in chunk[cut:] for t in sentence]
                    label = 0
                _trim(a, b, max_tokens, generator)
                if a and b:
                    pairs.append(SentencePair(a, b, label))
                chunk, length = [], 0
            i += 1
    return pairs


def tokenize_documents(documents: Sequence[Sequence[str]], tokenizer) -> list[list[list[int]]]:
    """Each document's sentences as token ids without special tokens (empty ones dropped)."""
    flat = [s for doc in documents for s in doc]
    encoded = iter(tokenizer.backend.encode_batch(flat, add_special_tokens=False))
    out = []
    for doc in documents:
        sentences = [next(encoded).ids for _ in doc]
        out.append([ids for ids in sentences if ids])
    return [doc for doc in out if doc]


# --- 3. Batches -----------------------------------------------------------------------------------


class PairSequences(PaddedRows):
    """Pairs as unpadded rows ``[CLS] A [SEP] B [SEP]`` (token types 0 then 1) with labels,
    batched as ``TextSequences``. Word ids are not kept (all -1): only token-level masking
    (``"mlm"``) applies to pairs."""

    def __init__(self, pairs: Sequence[SentencePair], tokenizer):
        cls, sep = tokenizer.cls_token_id, tokenizer.sep_token_id
        self.pad_token_id = tokenizer.pad_token_id
        self.input_ids = [torch.tensor([cls, *p.a, sep, *p.b, sep]) for p in pairs]
        self.token_type_ids = [torch.tensor([0] * (len(p.a) + 2) + [1] * (len(p.b) + 1))
                               for p in pairs]
        self.labels = torch.tensor([p.label for p in pairs])
        self.lengths = [len(ids) for ids in self.input_ids]

    def batch(self, indices: Sequence[int]) -> dict[str, Tensor]:
        """The unmasked padded batch with ``word_ids`` (-1: none) and ``next_sentence_label``."""
        batch = super().batch(indices)
        batch["word_ids"] = torch.full_like(batch["input_ids"], -1)
        batch["next_sentence_label"] = self.labels[list(indices)]
        return batch


class NSPMaskedBatches(MaskedBatches):
    """``MaskedBatches`` over ``PairSequences``, each batch with its ``next_sentence_label``."""

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        masked = super().__getitem__(index)
        groups = self.groups[index % len(self)]
        masked["next_sentence_label"] = self.sequences.labels[groups]
        return masked


class NextSentencePrediction(nn.Module):
    """The encoder + BERT's next-sentence head, as transformers' ``BertForNextSentencePrediction``:
    one linear layer (``cls.seq_relationship``, hidden -> 2) on the pooled [CLS] output. Label 0:
    segment B follows segment A in its document; 1: B is a random segment."""

    architecture = "BertForNextSentencePrediction"

    def __init__(self, config: BertConfig):
        super().__init__()
        self.bert = BertModel(config, add_pooling_layer=True)
        self.seq_relationship = fresh_linear(config, 2)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None,
                labels: torch.Tensor | None = None) -> ClassifierOutput:
        """(batch, 2) logits; the mean cross-entropy with ``labels``."""
        pooled = self.bert(input_ids, attention_mask, token_type_ids,
                           first_token_only=True).pooler_output
        logits = self.seq_relationship(pooled)
        loss = None if labels is None else F.cross_entropy(logits.float(), labels.reshape(-1))
        return ClassifierOutput(loss, logits)

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike) -> NextSentencePrediction:
        """Load an encoder and, when the checkpoint has it, ``cls.seq_relationship``."""
        checkpoint = read_checkpoint(path)
        model = cls(checkpoint.config)
        load_encoder_weights(model.bert, checkpoint, init_missing_pooler=True)
        load_linear(model.seq_relationship, checkpoint, "cls.seq_relationship")
        return model

    def save_pretrained(self, path: str | os.PathLike) -> None:
        """Write an HF folder that ``transformers.BertForNextSentencePrediction`` loads."""
        heads = linear_tensors(self.seq_relationship, "cls.seq_relationship")
        save_bert(self.bert, path, heads=heads, prefix="bert.",
                  config_extra={"architectures": [self.architecture]})


@dataclass
class PreTrainingOutput:
    """``loss`` = MLM loss + NSP loss (None without both labels), the MLM ``logits`` (as
    ``MaskedLMOutput``), ``seq_relationship_logits`` (batch, 2), and the two losses apart."""

    loss: torch.Tensor | None
    logits: torch.Tensor
    seq_relationship_logits: torch.Tensor
    mlm_loss: torch.Tensor | None = None
    nsp_loss: torch.Tensor | None = None


class PreTraining(MaskedLM):
    """BERT's two pretraining objectives at once, as transformers' ``BertForPreTraining``: the MLM
    head of ``MaskedLM`` on every token and the next-sentence head (``cls.seq_relationship``) on
    the pooled output; the loss is their unweighted sum."""

    architecture = "BertForPreTraining"
    add_pooling_layer = True

    def __init__(self, config: BertConfig):
        super().__init__(config)
        self.seq_relationship = fresh_linear(config, 2)
        self.nsp_loaded = False

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None, labels: torch.Tensor | None = None,
                next_sentence_label: torch.Tensor | None = None) -> PreTrainingOutput:
        """MLM logits (all positions without ``labels``; the target rows only with them, the
        sparse head) and NSP logits; the summed loss when both labels are given."""
        out = self.bert(input_ids, attention_mask, token_type_ids)
        hidden, pooled = out.last_hidden_state, out.pooler_output
        nsp_logits = self.seq_relationship(pooled)
        if labels is None:
            return PreTrainingOutput(None, self.head(hidden), nsp_logits)
        logits, mlm_loss = self.sparse_head(hidden, labels)  # (targets, vocab)
        nsp_loss = loss = None
        if next_sentence_label is not None:
            nsp_loss = F.cross_entropy(nsp_logits.float(), next_sentence_label.reshape(-1))
            loss = mlm_loss + nsp_loss
        return PreTrainingOutput(loss, logits, nsp_logits, mlm_loss, nsp_loss)

    def load_heads(self, checkpoint) -> None:
        """The MLM head and, when the checkpoint has it, ``cls.seq_relationship``."""
        super().load_heads(checkpoint)
        self.nsp_loaded = load_linear(self.seq_relationship, checkpoint, "cls.seq_relationship")

    def head_tensors(self) -> dict[str, torch.Tensor]:
        """Both heads' weights under their HF names."""
        return super().head_tensors() | linear_tensors(self.seq_relationship,
                                                       "cls.seq_relationship")


# A ``PreTraining`` model on ``NSPMaskedBatches``: ``mlm_metrics`` adds the NSP scores itself.
pretraining_metrics = mlm_metrics
