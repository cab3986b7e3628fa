"""Sequence classification (SST-2, MRPC, RTE, ...): the head, the dataset, the evaluation, and
the features of a frozen encoder, computed once.

The head is the encoder plus dropout plus one linear layer, as transformers'
``BertForSequenceClassification`` (the same names: ``classifier.*``, the encoder under
``bert.``). What the linear layer reads is the ``pooling``:

- ``pooler``: BERT's pooler, ``tanh(dense(h_[CLS]))``, trained by BERT's next-sentence
  objective. transformers' only choice: with it a checkpoint loads there with identical logits.
- ``cls``: the last hidden state of [CLS] itself, no pooler.
- ``mean``: the mean of the last hidden states of the real tokens, what sentence-transformers
  trains its embedding models on.

Its default is the checkpoint's own: a minift classifier's ``config.json`` records it; a
sentence-transformers folder states one (``minift.hf.checkpoint.read_pooling``:
all-MiniLM-L6-v2 says mean, and its pooler was never trained); else BERT's pooler.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from minift.core.align import IGNORE_INDEX
from minift.core.loop import to_device
from minift.core.metrics import accuracy, confusion_matrix, precision_recall_f1
from minift.core.model import BertConfig, BertModel
from minift.core.sentence import mean_pooling
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
    read_pooling,
    save_bert,
)

POOLINGS = ("cls", "mean", "pooler")  # what a sequence classifier's linear layer can read


@dataclass
class ClassifierOutput:
    """``loss`` (mean cross-entropy over targets, None without labels) and ``logits``."""

    loss: torch.Tensor | None
    logits: torch.Tensor


class _Classifier(nn.Module):
    """Encoder + dropout + linear; subclasses (here and ``minift.tasks.tag``) choose which hidden
    states are classified."""

    architecture = ""
    add_pooling_layer = True
    saved_settings: tuple[str, ...] = ()  # the head's own attributes, kept in config.json

    def __init__(self, config: BertConfig, num_labels: int, id2label: dict[int, str] | None = None,
                 classifier_dropout: float | None = None, *, add_pooling_layer: bool | None = None):
        super().__init__()
        if num_labels < 2:
            raise ValueError(f"a classifier needs at least 2 labels, got num_labels={num_labels}")
        pooler = self.add_pooling_layer if add_pooling_layer is None else add_pooling_layer
        self.bert = BertModel(config, add_pooling_layer=pooler)
        self.num_labels = num_labels
        self.id2label = id2label or {i: f"LABEL_{i}" for i in range(num_labels)}
        if len(self.id2label) != num_labels:
            raise ValueError(f"id2label has {len(self.id2label)} entries, num_labels={num_labels}")
        self.classifier_dropout = classifier_dropout
        p = config.hidden_dropout_prob if classifier_dropout is None else classifier_dropout
        self.dropout = nn.Dropout(p)
        self.classifier = fresh_linear(config, num_labels)  # initialised as transformers does

    def features(self, input_ids, attention_mask, token_type_ids, lengths=None) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, input_ids: Tensor | None = None, attention_mask: Tensor | None = None,
                token_type_ids: Tensor | None = None, labels: Tensor | None = None, *,
                features: Tensor | None = None,
                lengths: list[int] | None = None) -> ClassifierOutput:
        """Logits, and the mean cross-entropy over labels that are not -100 when given.
        ``features``: what ``self.features`` returns, computed earlier by a frozen encoder
        (``encode_features``): only the head runs."""
        if features is None:
            features = self.features(input_ids, attention_mask, token_type_ids, lengths)
        logits = self.classifier(self.dropout(features))
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits.reshape(-1, self.num_labels).float(),
                                   labels.reshape(-1), ignore_index=IGNORE_INDEX)
        return ClassifierOutput(loss=loss, logits=logits)

    def train(self, mode: bool = True):
        """``nn.Module.train``, except that a frozen encoder (no parameter of ``bert`` trains,
        ``--freeze head``) stays in eval mode: a fixed feature extractor, dropout off, so its
        features are the same every epoch and can be computed once (``encode_features``)."""
        super().train(mode)
        if mode and not any(p.requires_grad for p in self.bert.parameters()):
            self.bert.eval()
        return self

    @classmethod
    def _settings(cls, folder: Path, raw_config: dict, **settings) -> dict:
        """The head's own keywords for ``__init__`` from a checkpoint (none here)."""
        return settings

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, num_labels: int | None = None,
                        id2label: dict[int, str] | None = None, **settings):
        """Load an encoder and the ``classifier.*`` head when the checkpoint has one (a plain
        encoder such as MiniLM has none: fresh, as transformers initialises it). ``settings``:
        the head's own (``SequenceClassifier``: ``pooling``)."""
        checkpoint = read_checkpoint(path)
        raw = checkpoint.raw_config.get("id2label")
        raw = {int(i): str(label) for i, label in raw.items()} if isinstance(raw, dict) else None
        if id2label is None and num_labels is None and raw:
            id2label = raw
        if num_labels is None:
            num_labels = len(id2label) if id2label else 2
        # transformers' classifier_dropout (None: the encoder's hidden_dropout_prob).
        classifier_dropout = checkpoint.raw_config.get("classifier_dropout")
        model = cls(checkpoint.config, num_labels, id2label, classifier_dropout,
                    **cls._settings(checkpoint.folder, checkpoint.raw_config, **settings))
        load_encoder_weights(model.bert, checkpoint, init_missing_pooler=True)
        load_linear(model.classifier, checkpoint, "classifier")
        return model

    @classmethod
    def from_config(cls, path: str | os.PathLike, num_labels: int = 2,
                    id2label: dict[int, str] | None = None, **settings):
        """The architecture of the checkpoint in ``path`` (its ``config.json``) with BERT's random
        initialisation, drawn from torch's global generator (seed it first), as transformers'
        ``from_config``: what pretraining is worth is ``from_pretrained`` against this."""
        raw = read_config_json(path)
        return cls(read_config(path, raw), num_labels, id2label, raw.get("classifier_dropout"),
                   **cls._settings(Path(path), raw, **settings))

    def save_pretrained(self, path: str | os.PathLike) -> None:
        """Write an HF folder that ``transformers.AutoModelFor...`` loads with the same logits."""
        extra = {"architectures": [self.architecture],
                 "id2label": {str(i): label for i, label in self.id2label.items()},
                 "label2id": {label: i for i, label in self.id2label.items()}}
        if self.classifier_dropout is not None:
            extra["classifier_dropout"] = self.classifier_dropout
        extra |= {name: getattr(self, name) for name in self.saved_settings}
        save_bert(self.bert, path, heads=linear_tensors(self.classifier, "classifier"),
                  config_extra=extra, prefix="bert.")


class SequenceClassifier(_Classifier):
    """Classifies a sentence or a sentence pair from its ``pooling`` (the module's docstring):
    ``pooler``, ``cls`` or ``mean``. Only ``pooler`` builds BERT's pooler; ``cls`` and ``mean``
    have none, so their ``save_pretrained`` folder holds no pooler weights.

    transformers reads ``config.json``'s ``pooling`` key as an unknown attribute and ignores it:
    ``BertForSequenceClassification`` always classifies the pooler output, so a ``cls`` or
    ``mean`` folder loads there with a freshly drawn pooler (its loading info lists
    ``bert.pooler.dense.*`` as missing) and other logits. minift reloads it exactly.
    """

    architecture = "BertForSequenceClassification"
    saved_settings = ("pooling",)

    def __init__(self, config: BertConfig, num_labels: int, id2label: dict[int, str] | None = None,
                 classifier_dropout: float | None = None, pooling: str = "pooler"):
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {', '.join(POOLINGS)}, got {pooling!r}")
        super().__init__(config, num_labels, id2label, classifier_dropout,
                         add_pooling_layer=pooling == "pooler")
        self.pooling = pooling

    @classmethod
    def _settings(cls, folder: Path, raw_config: dict, pooling: str | None = None) -> dict:
        """``pooling``: as given, else the checkpoint's own (see the module's docstring)."""
        return {"pooling": pooling or raw_config.get("pooling") or read_pooling(folder)
                or "pooler"}

    def features(self, input_ids, attention_mask, token_type_ids, lengths=None):
        if self.pooling == "mean":
            if attention_mask is None:
                attention_mask = torch.ones_like(input_ids)
            hidden = self.bert(input_ids, attention_mask, token_type_ids,
                               lengths=lengths).last_hidden_state
            return mean_pooling(hidden, attention_mask)  # (batch, hidden)
        # The pooler and cls read [CLS] alone, so the last block computes [CLS] alone.
        out = self.bert(input_ids, attention_mask, token_type_ids, first_token_only=True,
                        lengths=lengths)
        if self.pooling == "cls":
            return out.last_hidden_state[:, 0]  # (batch, hidden)
        return out.pooler_output  # (batch, hidden)


class ClassificationDataset(PaddedRows):
    """A split tokenized once (unpadded), which hands out padded batches: the same tensors
    `collate` gives for those examples, (batch, seq) to the batch's longest example, plus
    `labels` (batch,) when `label_ids` were given."""

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
    """One pass of padded, length-grouped batches: `ClassificationDataset(...).batches(...)`,
    tokenized anew at every call (for several epochs, build the dataset once)."""
    dataset = ClassificationDataset(examples, tokenizer, max_length=max_length, label_ids=label_ids)
    return dataset.batches(batch_size, generator=generator, shuffle=shuffle)


@torch.no_grad()
def encode_features(model: _Classifier, dataset: PaddedRows, *, batch_size: int,
                    device: torch.device | str) -> Tensor:
    """``model.features`` of every example of ``dataset``, in the dataset's order, float32 on
    the CPU: (examples, hidden) for a sequence classifier; one pass in eval mode.

    A frozen encoder gives the same features every epoch, so training its head on these
    (``FeatureRows``) is training it on the encoder's outputs, at one encoder pass per example
    instead of one per epoch: the linear probe of the transfer-learning literature.
    """
    was_training = model.training
    model.eval()
    parts, order = [], []
    for indices in dataset.batch_indices(batch_size, generator=None, shuffle=False):
        batch = {k: v.to(device) for k, v in dataset.batch(indices).items() if k != "labels"}
        parts.append(model.features(batch["input_ids"], batch["attention_mask"],
                                    batch["token_type_ids"]).float().cpu())
        order += indices
    model.train(was_training)
    features = torch.cat(parts)
    features[torch.as_tensor(order)] = features.clone()  # row k -> the example it belongs to
    return features


class FeatureRows(PaddedRows):
    """A ``ClassificationDataset``'s examples as fixed features (``encode_features``): its
    batches, in its order (the same lengths), of ``features`` (batch, hidden) and ``labels``,
    for ``model(**batch)`` to skip the encoder."""

    def __init__(self, dataset: ClassificationDataset, features: Tensor) -> None:
        if len(features) != len(dataset):
            raise ValueError(f"expected one feature row per example ({len(dataset)}), "
                             f"found {len(features)}")
        self.dataset, self.features, self.lengths = dataset, features, dataset.lengths

    def __len__(self) -> int:
        return len(self.dataset)

    def batch(self, indices: Sequence[int]) -> dict[str, Tensor]:
        """The features (and labels) of the examples at `indices`, in that order."""
        rows = list(indices)
        batch = {"features": self.features[rows]}
        if self.dataset.labels is not None:
            batch["labels"] = self.dataset.labels[rows]
        return batch


def classification_metrics(model, batches, num_labels: int, device, *,
                           progress: bool = False) -> dict[str, float]:
    """Dev loss, accuracy, F1 (binary on label 1 for two labels, else macro) and the confusion
    matrix (``confusion[gold][predicted]``, counts, in label-id order)."""
    model.eval()
    gold, sizes, losses, predicted = [], [], [], []  # the last two stay on the device
    with torch.no_grad():
        for batch in tqdm(batches, desc="dev", leave=False, disable=not progress):
            gold += batch["labels"].tolist()  # the host's copy: no wait for the device
            sizes.append(len(batch["labels"]))
            out = model(**to_device(batch, device))
            losses.append(out.loss.float())
            predicted.append(out.logits.argmax(-1))
    # The device is read here, at the end: once for the losses, once for the predictions.
    loss_sum = sum(loss * n for loss, n in zip(torch.stack(losses).tolist(), sizes, strict=True))
    pred = torch.cat(predicted).tolist()
    if num_labels == 2:
        scores = precision_recall_f1(gold, pred, average="binary", pos_label=1)
    else:
        scores = precision_recall_f1(gold, pred, average="macro", labels=list(range(num_labels)))
    return {"loss": loss_sum / len(gold), "accuracy": accuracy(gold, pred), "f1": scores["f1"],
            "confusion": confusion_matrix(gold, pred, labels=list(range(num_labels)))}
