"""Sequence classification (SST-2, MRPC, RTE, ...): the head, the dataset, the evaluation.

The head is the encoder plus dropout plus one linear layer, exactly as transformers'
``BertForSequenceClassification`` (same parameter names for the head, ``classifier.weight`` /
``classifier.bias``, and the encoder stored under ``bert.``), so a checkpoint saved here loads
there with identical logits, and the other way round. ``_Classifier`` is shared with the token
classifier of ``minift.tasks.tag``. ``ClassificationDataset`` tokenizes a split once into rows
padded batch by batch; ``classification_metrics`` scores a model on its batches.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from minift.core.align import IGNORE_INDEX
from minift.core.metrics import accuracy, confusion_matrix, precision_recall_f1
from minift.core.model import BertConfig, BertModel
from minift.data.batches import PaddedRows, as_rows, check_pads_right, texts_and_pairs
from minift.data.readers import Example
from minift.hf.checkpoint import (
    fresh_linear,
    linear_tensors,
    load_encoder_weights,
    load_linear,
    read_checkpoint,
    read_config,
    read_config_json,
    save_bert,
)


@dataclass
class ClassifierOutput:
    """``loss`` (mean cross-entropy over targets, None without labels) and ``logits``."""

    loss: torch.Tensor | None
    logits: torch.Tensor


class _Classifier(nn.Module):
    """Encoder + dropout + linear; subclasses choose which hidden states are classified."""

    architecture = ""
    add_pooling_layer = True

    def __init__(self, config: BertConfig, num_labels: int, id2label: dict[int, str] | None = None,
                 classifier_dropout: float | None = None):
        super().__init__()
        if num_labels < 2:
            raise ValueError(f"a classifier needs at least 2 labels, got num_labels={num_labels}")
        self.bert = BertModel(config, add_pooling_layer=self.add_pooling_layer)
        self.num_labels = num_labels
        self.id2label = id2label or {i: f"LABEL_{i}" for i in range(num_labels)}
        if len(self.id2label) != num_labels:
            raise ValueError(f"id2label has {len(self.id2label)} entries, num_labels={num_labels}")
        self.classifier_dropout = classifier_dropout
        p = config.hidden_dropout_prob if classifier_dropout is None else classifier_dropout
        self.dropout = nn.Dropout(p)
        self.classifier = fresh_linear(config, num_labels)  # initialised as transformers does

    def features(self, input_ids, attention_mask, token_type_ids) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None,
                labels: torch.Tensor | None = None) -> ClassifierOutput:
        """Logits, and the mean cross-entropy over labels that are not -100 when given."""
        logits = self.classifier(self.dropout(self.features(input_ids, attention_mask,
                                                             token_type_ids)))
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits.reshape(-1, self.num_labels).float(),
                                   labels.reshape(-1), ignore_index=IGNORE_INDEX)
        return ClassifierOutput(loss=loss, logits=logits)

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, num_labels: int | None = None,
                        id2label: dict[int, str] | None = None):
        """Load an encoder (and the ``classifier.*`` head when the checkpoint has one).

        With no head in the checkpoint (a plain encoder such as MiniLM), the head is freshly
        initialised as transformers does: N(0, initializer_range) weights, zero bias.
        """
        checkpoint = read_checkpoint(path)
        raw_id2label = _read_id2label(checkpoint.raw_config)
        if id2label is None and num_labels is None and raw_id2label:
            id2label = raw_id2label
        if num_labels is None:
            num_labels = len(id2label) if id2label else 2
        # transformers' classifier_dropout (None: the encoder's hidden_dropout_prob).
        classifier_dropout = checkpoint.raw_config.get("classifier_dropout")
        model = cls(checkpoint.config, num_labels, id2label, classifier_dropout)
        load_encoder_weights(model.bert, checkpoint, init_missing_pooler=True)
        load_linear(model.classifier, checkpoint, "classifier")
        return model

    @classmethod
    def from_config(cls, path: str | os.PathLike, num_labels: int = 2,
                    id2label: dict[int, str] | None = None):
        """The architecture of the checkpoint in ``path`` (its ``config.json``) with BERT's random
        initialisation, what transformers' ``from_config`` gives, drawn from torch's global
        generator: seed it first. What pretraining is worth is ``from_pretrained`` against this,
        trained the same way (``benchmarks/claims_transfer.py``)."""
        raw = read_config_json(path)
        return cls(read_config(path, raw), num_labels, id2label, raw.get("classifier_dropout"))

    def save_pretrained(self, path: str | os.PathLike) -> None:
        """Write an HF folder that ``transformers.AutoModelFor...`` loads with the same logits."""
        extra = {"architectures": [self.architecture],
                 "id2label": {str(i): label for i, label in self.id2label.items()},
                 "label2id": {label: i for i, label in self.id2label.items()}}
        if self.classifier_dropout is not None:
            extra["classifier_dropout"] = self.classifier_dropout
        save_bert(self.bert, path, heads=linear_tensors(self.classifier, "classifier"),
                  config_extra=extra, prefix="bert.")


def _read_id2label(config: dict) -> dict[int, str] | None:
    raw = config.get("id2label")
    return {int(i): str(label) for i, label in raw.items()} if isinstance(raw, dict) else None


class SequenceClassifier(_Classifier):
    """Classifies a sentence or a sentence pair from the pooled [CLS] output."""

    architecture = "BertForSequenceClassification"

    def features(self, input_ids, attention_mask, token_type_ids):
        # The pooler reads [CLS] alone, so the last block computes [CLS] alone (see BertModel).
        out = self.bert(input_ids, attention_mask, token_type_ids, first_token_only=True)
        return out.pooler_output  # (batch, hidden)


class ClassificationDataset(PaddedRows):
    """A split tokenized once (in chunks of `chunk_size`, unpadded), which hands out padded
    batches: the same tensors `collate` gives for those examples (a test holds them equal).

    Batch contract: a dict of LongTensors on the CPU, `input_ids`, `attention_mask`,
    `token_type_ids` of shape (batch, seq) where seq is the longest example of the batch
    (truncated to `max_length`), padded on the right with `tokenizer.pad_token_id`, 0 and 0; plus
    `labels` of shape (batch,) when `label_ids` were given.
    """

    def __init__(self, examples: Sequence[Example | str], tokenizer, *, max_length: int | None,
                 label_ids: Sequence[int] | None = None, chunk_size: int = 1024) -> None:
        if len(examples) == 0:
            raise ValueError("expected at least one example, found none")
        if label_ids is not None and len(label_ids) != len(examples):
            raise ValueError(f"expected one label id per example ({len(examples)}), "
                             f"found {len(label_ids)}")
        check_pads_right(tokenizer)
        self.pad_token_id = int(tokenizer.pad_token_id)
        self.labels = None if label_ids is None else torch.as_tensor(label_ids, dtype=torch.long)
        self.input_ids: list[Tensor] = []
        self.token_type_ids: list[Tensor] = []
        for start in range(0, len(examples), chunk_size):
            texts, pairs = texts_and_pairs(examples[start : start + chunk_size])
            rows = tokenizer(texts, pairs, max_length=max_length, padding=False, truncation=True)
            self.input_ids += as_rows(rows["input_ids"])
            self.token_type_ids += as_rows(rows["token_type_ids"])
        self.lengths: list[int] = [len(ids) for ids in self.input_ids]

    def batch(self, indices: Sequence[int]) -> dict[str, Tensor]:
        """The padded batch of the examples at `indices`, in that order, with their `labels`."""
        batch = super().batch(indices)
        if self.labels is not None:
            batch["labels"] = self.labels[list(indices)]
        return batch


def make_batches(examples: Sequence[Example | str], label_ids: Sequence[int] | None, tokenizer, *,
                 batch_size: int, max_length: int | None, generator: torch.Generator | None,
                 shuffle: bool = True) -> list[dict[str, Tensor]]:
    """One pass of padded, length-grouped batches: `ClassificationDataset(...).batches(...)`.

    Tokenizes every time it is called; for several epochs build the dataset once and call its
    `batches` once an epoch.
    """
    dataset = ClassificationDataset(examples, tokenizer, max_length=max_length, label_ids=label_ids)
    return dataset.batches(batch_size, generator=generator, shuffle=shuffle)


def classification_metrics(model, batches, num_labels: int, device, *,
                           progress: bool = False) -> dict[str, float]:
    """Dev loss, accuracy, F1 (binary on label 1 for two labels, else macro) and the confusion
    matrix (``confusion[gold][predicted]``, counts, in label-id order)."""
    model.eval()
    gold, pred, loss_sum = [], [], 0.0
    with torch.no_grad():
        for batch in tqdm(batches, desc="dev", leave=False, disable=not progress):
            batch = {k: v.to(device) for k, v in batch.items()}
            out = model(**batch)
            loss_sum += out.loss.item() * len(batch["labels"])
            gold += batch["labels"].tolist()
            pred += out.logits.argmax(-1).tolist()
    if num_labels == 2:
        scores = precision_recall_f1(gold, pred, average="binary", pos_label=1)
    else:
        scores = precision_recall_f1(gold, pred, average="macro", labels=list(range(num_labels)))
    return {"loss": loss_sum / len(gold), "accuracy": accuracy(gold, pred), "f1": scores["f1"],
            "confusion": confusion_matrix(gold, pred, labels=list(range(num_labels)))}
