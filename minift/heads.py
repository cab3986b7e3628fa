"""Task heads on the encoder: sequence classification, token classification, and freezing.

Each head is the encoder plus dropout plus one linear layer, exactly as transformers'
``BertForSequenceClassification`` and ``BertForTokenClassification`` (same parameter names for the
head, ``classifier.weight`` / ``classifier.bias``, and the encoder stored under ``bert.``), so a
checkpoint saved here loads there with identical logits, and the other way round.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from minift.checkpoint import (
    CheckpointError,
    load_bert_with_heads,
    read_config_json,
    resolve_model_dir,
    save_bert,
)
from minift.model import BertConfig, BertModel


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
        self.classifier = nn.Linear(config.hidden_size, num_labels)
        nn.init.normal_(self.classifier.weight, std=config.initializer_range)  # as transformers
        nn.init.zeros_(self.classifier.bias)

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
                                   labels.reshape(-1), ignore_index=-100)
        return ClassifierOutput(loss=loss, logits=logits)

    # ---- HF-format checkpoints ----

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, num_labels: int | None = None,
                        id2label: dict[int, str] | None = None):
        """Load an encoder (and the ``classifier.*`` head when the checkpoint has one).

        With no head in the checkpoint (a plain encoder such as MiniLM), the head is freshly
        initialised as transformers does: N(0, initializer_range) weights, zero bias.
        """
        encoder, heads = load_bert_with_heads(path, add_pooling_layer=cls.add_pooling_layer)
        raw_id2label = _read_id2label(path)
        if id2label is None and num_labels is None and raw_id2label:
            id2label = raw_id2label
        if num_labels is None:
            num_labels = len(id2label) if id2label else 2
        model = cls(encoder.config, num_labels, id2label)
        model.bert.load_state_dict(encoder.state_dict())
        if "classifier.weight" in heads:
            weight, bias = heads["classifier.weight"], heads.get("classifier.bias")
            if weight.shape != model.classifier.weight.shape or bias is None:
                raise CheckpointError(
                    f"{path}: classifier.weight has shape {tuple(weight.shape)} but the model "
                    f"needs {tuple(model.classifier.weight.shape)} ({num_labels} labels)"
                )
            with torch.no_grad():
                model.classifier.weight.copy_(weight)
                model.classifier.bias.copy_(bias)
        return model

    def save_pretrained(self, path: str | os.PathLike) -> None:
        """Write an HF folder that ``transformers.AutoModelFor...`` loads with the same logits."""
        extra = {
            "architectures": [self.architecture],
            "id2label": {str(i): label for i, label in self.id2label.items()},
            "label2id": {label: i for i, label in self.id2label.items()},
        }
        if self.classifier_dropout is not None:
            extra["classifier_dropout"] = self.classifier_dropout
        heads = {"classifier.weight": self.classifier.weight, "classifier.bias": self.classifier.bias}
        save_bert(self.bert, path, heads=heads, config_extra=extra, prefix="bert.")


def _read_id2label(path) -> dict[int, str] | None:
    raw = read_config_json(resolve_model_dir(path)).get("id2label")
    return {int(i): str(label) for i, label in raw.items()} if isinstance(raw, dict) else None


class SequenceClassifier(_Classifier):
    """Classifies a sentence or a sentence pair from the pooled [CLS] output."""

    architecture = "BertForSequenceClassification"

    def features(self, input_ids, attention_mask, token_type_ids):
        return self.bert(input_ids, attention_mask, token_type_ids).pooler_output  # (batch, hidden)


class TokenClassifier(_Classifier):
    """Classifies every token from its last hidden state (NER, POS tagging)."""

    architecture = "BertForTokenClassification"
    add_pooling_layer = False  # as transformers: the pooler has no use for token labels

    def features(self, input_ids, attention_mask, token_type_ids):
        return self.bert(input_ids, attention_mask, token_type_ids).last_hidden_state


# --------------------------------------------------------------------------------------------
# Freezing: how much of the encoder is fine-tuned
# --------------------------------------------------------------------------------------------


def freeze(model: _Classifier, mode: str) -> tuple[int, int]:
    """Choose what trains; return (trainable, total) parameter counts.

    - ``"none"``: everything trains (full fine-tuning).
    - ``"head"``: only the classifier trains; the encoder is a frozen feature extractor
      (pooler included).
    - ``"last-N"``: the last N encoder blocks, the pooler and the classifier train; embeddings and
      the earlier blocks are frozen.
    """
    blocks = model.bert.layers
    if mode == "none":
        trainable = [model]
    elif mode == "head":
        trainable = [model.classifier]
    elif mode.startswith("last-") and mode[5:].isdigit():
        n = int(mode[5:])
        if not 1 <= n <= len(blocks):
            raise ValueError(f"freeze mode {mode!r}: N must be between 1 and {len(blocks)}")
        trainable = [*blocks[len(blocks) - n :], model.classifier]
        if model.bert.pooler is not None:
            trainable.append(model.bert.pooler)
    else:
        raise ValueError(f"unknown freeze mode {mode!r}: use 'none', 'head' or 'last-N'")
    for p in model.parameters():
        p.requires_grad_(False)
    for module in trainable:
        for p in module.parameters():
            p.requires_grad_(True)
    return (sum(p.numel() for p in model.parameters() if p.requires_grad),
            sum(p.numel() for p in model.parameters()))
