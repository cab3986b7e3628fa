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
    load_encoder_weights,
    read_checkpoint,
    read_config,
    read_config_json,
    save_bert,
)
from minift.labels import IGNORE_INDEX
from minift.model import BertConfig, BertModel
from minift.padding import speed_up


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
                                   labels.reshape(-1), ignore_index=IGNORE_INDEX)
        return ClassifierOutput(loss=loss, logits=logits)

    # ---- HF-format checkpoints ----

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, num_labels: int | None = None,
                        id2label: dict[int, str] | None = None, *, fast: bool = True):
        """Load an encoder (and the ``classifier.*`` head when the checkpoint has one).

        With no head in the checkpoint (a plain encoder such as MiniLM), the head is freshly
        initialised as transformers does: N(0, initializer_range) weights, zero bias.
        ``fast``: swap in the fast modules (``padding.speed_up``), as ``load_bert`` does.
        """
        checkpoint = read_checkpoint(path)
        heads = checkpoint.heads
        raw_id2label = _read_id2label(checkpoint.raw_config)
        if id2label is None and num_labels is None and raw_id2label:
            id2label = raw_id2label
        if num_labels is None:
            num_labels = len(id2label) if id2label else 2
        # transformers' classifier_dropout (None: the encoder's hidden_dropout_prob).
        classifier_dropout = checkpoint.raw_config.get("classifier_dropout")
        model = cls(checkpoint.config, num_labels, id2label, classifier_dropout)
        load_encoder_weights(model.bert, checkpoint, init_missing_pooler=True)
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
        return speed_up(model) if fast else model

    @classmethod
    def from_config(cls, path: str | os.PathLike, num_labels: int = 2,
                    id2label: dict[int, str] | None = None, *, fast: bool = True):
        """The architecture of the checkpoint in ``path``, from random weights: no pretraining.

        Only ``config.json`` is read. Every weight gets BERT's initialisation
        (``model.init_weights``, what transformers' ``from_config`` gives), drawn from torch's
        global generator: seed it first. What pretraining is worth is ``from_pretrained``
        against this, trained the same way (``benchmarks/claims_transfer.py``).
        """
        raw = read_config_json(path)
        model = cls(read_config(path, raw), num_labels, id2label, raw.get("classifier_dropout"))
        return speed_up(model) if fast else model

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


class TokenClassifier(_Classifier):
    """Classifies every token from its last hidden state (NER, POS tagging)."""

    architecture = "BertForTokenClassification"
    add_pooling_layer = False  # as transformers: the pooler has no use for token labels

    def features(self, input_ids, attention_mask, token_type_ids):
        return self.bert(input_ids, attention_mask, token_type_ids).last_hidden_state


# --------------------------------------------------------------------------------------------
# Freezing: how much of the encoder is fine-tuned
# --------------------------------------------------------------------------------------------


def freeze(model: nn.Module, mode: str) -> tuple[int, int]:
    """Choose what trains; return (trainable, total) parameter counts.

    - ``"none"``: everything trains (full fine-tuning).
    - ``"head"``: only the head trains, every parameter outside the encoder ``model.bert``: the
      classifier, or ``MaskedLM``'s transform and output bias (its decoder weight IS the word
      embeddings, so it stays frozen with them). The encoder is a frozen feature extractor
      (pooler included).
    - ``"last-N"`` (classifiers): the last N encoder blocks, the pooler and the classifier train;
      embeddings and the earlier blocks are frozen.
    """
    blocks = model.bert.layers
    if mode == "none":
        trainable = list(model.parameters())
    elif mode == "head":
        encoder = {id(p) for p in model.bert.parameters()}
        trainable = [p for p in model.parameters() if id(p) not in encoder]
    elif mode.startswith("last-") and mode[5:].isdigit():
        n = int(mode[5:])
        if not 1 <= n <= len(blocks):
            raise ValueError(f"freeze mode {mode!r}: N must be between 1 and {len(blocks)}")
        kept = [*blocks[len(blocks) - n :], model.classifier]
        if model.bert.pooler is not None:
            kept.append(model.bert.pooler)
        trainable = [p for module in kept for p in module.parameters()]
    else:
        raise ValueError(f"unknown freeze mode {mode!r}: use 'none', 'head' or 'last-N'")
    for p in model.parameters():
        p.requires_grad_(False)
    for p in trainable:
        p.requires_grad_(True)
    return (sum(p.numel() for p in model.parameters() if p.requires_grad),
            sum(p.numel() for p in model.parameters()))


# --------------------------------------------------------------------------------------------
# Masked-language modelling: the pretraining head, tied to the word embeddings
# --------------------------------------------------------------------------------------------


@dataclass
class MaskedLMOutput:
    """``loss`` (mean cross-entropy over the labels that are not -100; None without labels) and
    ``logits``: (batch, seq, vocab) without labels; with labels only the rows of the target
    positions, (targets, vocab), in the row-major order of ``labels[labels != -100]``."""

    loss: torch.Tensor | None
    logits: torch.Tensor


class MaskedLM(nn.Module):
    """The encoder + BERT's MLM head, as transformers' ``BertForMaskedLM``.

    The head is a transform (dense, GELU, LayerNorm) and a decoder back to the vocabulary whose
    weight IS the word-embedding matrix (one ``nn.Parameter``, so a step on one is a step on the
    other), plus an output bias per token. The encoder has no pooler (``add_pooling_layer=False``,
    as the reference). Checkpoint names: ``cls.predictions.transform.dense.*``,
    ``cls.predictions.transform.LayerNorm.*`` and ``cls.predictions.bias``; the decoder weight is
    not stored (the reference drops tied copies too).

    Sparse head: with ``labels``, the transform and the decoder run only at the positions whose
    label is not -100 (about 15% of the tokens), so the largest matmul of pretraining,
    (tokens, hidden) x (hidden, vocab), shrinks about sixfold; the loss is the same as computing
    every logit and ignoring the -100 positions (a test holds the two equal).
    """

    architecture = "BertForMaskedLM"
    add_pooling_layer = False

    def __init__(self, config: BertConfig):
        super().__init__()
        hidden, vocab = config.hidden_size, config.vocab_size
        self.bert = BertModel(config, add_pooling_layer=self.add_pooling_layer)
        self.transform = nn.Linear(hidden, hidden)
        self.transform_norm = nn.LayerNorm(hidden, eps=config.layer_norm_eps)
        self.decoder = nn.Linear(hidden, vocab, bias=False)
        self.decoder.weight = self.bert.embeddings.word_embeddings.weight  # tied: one Parameter
        self.bias = nn.Parameter(torch.zeros(vocab))
        self.head_loaded = False  # True when from_pretrained found cls.predictions.* weights
        # BERT's initialisation of the head: N(0, initializer_range) weights, zero biases, unit norm.
        nn.init.normal_(self.transform.weight, std=config.initializer_range)
        nn.init.zeros_(self.transform.bias)

    @property
    def config(self) -> BertConfig:
        return self.bert.config

    def head(self, hidden: torch.Tensor) -> torch.Tensor:
        """(..., hidden) -> (..., vocab): dense, GELU, LayerNorm, then the tied decoder + bias."""
        x = self.transform_norm(F.gelu(self.transform(hidden)))
        return self.decoder(x) + self.bias

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None,
                labels: torch.Tensor | None = None) -> MaskedLMOutput:
        """Logits at every position without labels; with labels, the loss and the logits of the
        target positions only (see ``MaskedLMOutput``). No target at all gives a nan loss, as the
        reference (the training loop skips such batches)."""
        hidden = self.bert(input_ids, attention_mask, token_type_ids).last_hidden_state
        if labels is None:
            return MaskedLMOutput(loss=None, logits=self.head(hidden))  # (batch, seq, vocab)
        if labels.shape != input_ids.shape:
            raise ValueError(f"labels: expected the shape of input_ids {tuple(input_ids.shape)}, "
                             f"got {tuple(labels.shape)}")
        targets = labels != IGNORE_INDEX
        logits = self.head(hidden[targets])  # (targets, vocab): the sparse head
        loss = F.cross_entropy(logits.float(), labels[targets])
        return MaskedLMOutput(loss=loss, logits=logits)

    # ---- HF-format checkpoints ----

    # HF name -> name here. Old TF-converted checkpoints call the LayerNorm's parameters
    # gamma / beta; they are read under these names too.
    HEAD_KEYS = {
        "cls.predictions.transform.dense.weight": "transform.weight",
        "cls.predictions.transform.dense.bias": "transform.bias",
        "cls.predictions.transform.LayerNorm.weight": "transform_norm.weight",
        "cls.predictions.transform.LayerNorm.bias": "transform_norm.bias",
        "cls.predictions.bias": "bias",
    }

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, *, fast: bool = True) -> MaskedLM:
        """Load the encoder and, when the checkpoint has them, the ``cls.predictions.*`` weights.

        Without them (the published all-MiniLM-L6-v2 has none: it was trained for sentence
        embeddings and shipped without its MLM head) the head is initialised as BERT does and
        ``head_loaded`` is False: its predictions are then near-uniform until it is trained.
        A stored decoder weight must equal the word embeddings (minift always ties them); other
        heads (``cls.seq_relationship.*``, ``classifier.*``) and a pooler are not used and dropped.
        ``fast``: swap in the fast modules (``padding.speed_up``), as ``load_bert`` does.
        """
        checkpoint = read_checkpoint(path)
        folder = checkpoint.folder
        if checkpoint.raw_config.get("tie_word_embeddings", True) is False:
            raise CheckpointError(f"{folder / 'config.json'}: tie_word_embeddings is false; "
                                  "minift's MaskedLM always ties the decoder to the embeddings")
        model = cls(checkpoint.config)
        load_encoder_weights(model.bert, checkpoint, init_missing_pooler=True)
        model.load_heads(checkpoint)
        return speed_up(model) if fast else model

    def load_heads(self, checkpoint) -> None:
        """Copy the ``cls.predictions.*`` weights of ``checkpoint`` (when it has them)."""
        folder, model, cls = checkpoint.folder, self, type(self)
        found = {}
        for name, tensor in checkpoint.heads.items():
            if not name.startswith("cls.predictions."):
                continue
            hf = name.replace("LayerNorm.gamma", "LayerNorm.weight")
            hf = hf.replace("LayerNorm.beta", "LayerNorm.bias")
            hf = {"cls.predictions.decoder.bias": "cls.predictions.bias"}.get(hf, hf)
            if hf == "cls.predictions.decoder.weight":
                if not torch.equal(tensor, model.bert.embeddings.word_embeddings.weight):
                    raise CheckpointError(
                        f"{folder}: {name} differs from bert.embeddings.word_embeddings.weight; "
                        "minift's MaskedLM ties the decoder to the embeddings"
                    )
                continue
            if hf not in cls.HEAD_KEYS:
                raise CheckpointError(f"{folder}: unknown MLM head weight {name!r} (known: "
                                      f"{', '.join(cls.HEAD_KEYS)})")
            found[cls.HEAD_KEYS[hf]] = (name, tensor)
        if found:
            missing = sorted(set(cls.HEAD_KEYS.values()) - set(found))
            if missing:
                raise CheckpointError(f"{folder}: the MLM head is incomplete, missing (minift "
                                      f"names): {', '.join(missing)}")
            params = dict(model.named_parameters())
            with torch.no_grad():
                for ours, (name, tensor) in found.items():
                    if tensor.shape != params[ours].shape:
                        raise CheckpointError(
                            f"{folder}: {name} has shape {tuple(tensor.shape)}, the config needs "
                            f"{tuple(params[ours].shape)}"
                        )
                    params[ours].copy_(tensor)
            model.head_loaded = True

    def save_pretrained(self, path: str | os.PathLike) -> None:
        """Write an HF folder that ``transformers.BertForMaskedLM`` loads with the same logits."""
        extra = {"architectures": [self.architecture], "tie_word_embeddings": True}
        save_bert(self.bert, path, heads=self.head_tensors(), config_extra=extra, prefix="bert.")

    def head_tensors(self) -> dict[str, torch.Tensor]:
        """The head's weights under their HF names (the tied decoder is not stored)."""
        params = dict(self.named_parameters())
        return {hf: params[ours] for hf, ours in self.HEAD_KEYS.items()}


# --------------------------------------------------------------------------------------------
# Heads of one linear layer stored under their own name: spans (QA) and next sentences (NSP)
# --------------------------------------------------------------------------------------------


def _load_linear(linear: nn.Linear, checkpoint, name: str) -> bool:
    """Copy ``name.weight`` / ``name.bias`` of ``checkpoint`` into ``linear``; False when the
    checkpoint has no such head (``linear`` keeps its fresh initialisation)."""
    heads = checkpoint.heads
    if f"{name}.weight" not in heads:
        return False
    weight, bias = heads[f"{name}.weight"], heads.get(f"{name}.bias")
    if weight.shape != linear.weight.shape or bias is None or bias.shape != linear.bias.shape:
        raise CheckpointError(f"{checkpoint.source}: {name}.weight has shape "
                              f"{tuple(weight.shape)} and {name}.bias "
                              f"{None if bias is None else tuple(bias.shape)}; the model needs "
                              f"{tuple(linear.weight.shape)} and {tuple(linear.bias.shape)}")
    with torch.no_grad():
        linear.weight.copy_(weight)
        linear.bias.copy_(bias)
    return True


def _fresh_linear(config: BertConfig, outputs: int) -> nn.Linear:
    """hidden -> ``outputs``, initialised as BERT's heads: N(0, initializer_range), zero bias."""
    linear = nn.Linear(config.hidden_size, outputs)
    nn.init.normal_(linear.weight, std=config.initializer_range)
    nn.init.zeros_(linear.bias)
    return linear


@dataclass
class SpanOutput:
    """``loss`` (None without positions), ``start_logits`` and ``end_logits``, (batch, seq)."""

    loss: torch.Tensor | None
    start_logits: torch.Tensor
    end_logits: torch.Tensor


def span_loss(start_logits: torch.Tensor, end_logits: torch.Tensor,
              start_positions: torch.Tensor, end_positions: torch.Tensor) -> torch.Tensor:
    """``BertForQuestionAnswering``'s loss: the mean of the start and end cross-entropies.

    Positions outside the window are clamped to ``seq`` and that index is ignored, as in
    transformers (a batch where every position is ignored gives nan, as there).
    """
    ignored = start_logits.shape[1]
    start = start_positions.reshape(-1).clamp(0, ignored)
    end = end_positions.reshape(-1).clamp(0, ignored)
    return (F.cross_entropy(start_logits.float(), start, ignore_index=ignored)
            + F.cross_entropy(end_logits.float(), end, ignore_index=ignored)) / 2


class QuestionAnswering(nn.Module):
    """The encoder + one linear layer to a start and an end logit per token, as transformers'
    ``BertForQuestionAnswering`` (head ``qa_outputs.{weight,bias}``, (2, hidden); no dropout
    before it; no pooler).

    One deliberate difference: the logits of padding positions are set to the dtype's lowest
    value, so no answer can start or end in the padding and the loss does not depend on how much
    a batch is padded. transformers leaves them as computed; on a batch without padding the two
    agree exactly (the tests hold both statements).
    """

    architecture = "BertForQuestionAnswering"

    def __init__(self, config: BertConfig):
        super().__init__()
        self.bert = BertModel(config, add_pooling_layer=False)
        self.qa_outputs = _fresh_linear(config, 2)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None,
                start_positions: torch.Tensor | None = None,
                end_positions: torch.Tensor | None = None) -> SpanOutput:
        """Start and end logits; the loss when both positions are given (see ``span_loss``)."""
        hidden = self.bert(input_ids, attention_mask, token_type_ids).last_hidden_state
        logits = self.qa_outputs(hidden)  # (batch, seq, 2)
        if attention_mask is not None:
            logits = logits.masked_fill((attention_mask == 0)[..., None],
                                        torch.finfo(logits.dtype).min)
        start_logits, end_logits = logits.unbind(-1)  # (batch, seq) each
        loss = None
        if start_positions is not None and end_positions is not None:
            loss = span_loss(start_logits, end_logits, start_positions, end_positions)
        return SpanOutput(loss, start_logits, end_logits)

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, *, fast: bool = True) -> QuestionAnswering:
        """Load an encoder and, when the checkpoint has it, the ``qa_outputs`` head (otherwise
        fresh, as transformers initialises it). ``fast``: ``padding.speed_up``."""
        checkpoint = read_checkpoint(path)
        model = cls(checkpoint.config)
        load_encoder_weights(model.bert, checkpoint)
        _load_linear(model.qa_outputs, checkpoint, "qa_outputs")
        return speed_up(model) if fast else model

    def save_pretrained(self, path: str | os.PathLike) -> None:
        """Write an HF folder that ``transformers.BertForQuestionAnswering`` loads."""
        heads = {"qa_outputs.weight": self.qa_outputs.weight, "qa_outputs.bias": self.qa_outputs.bias}
        save_bert(self.bert, path, heads=heads, prefix="bert.",
                  config_extra={"architectures": [self.architecture]})


class NextSentencePrediction(nn.Module):
    """The encoder + BERT's next-sentence head, as transformers' ``BertForNextSentencePrediction``:
    one linear layer (``cls.seq_relationship``, hidden -> 2) on the pooled [CLS] output. Label 0:
    segment B follows segment A in its document; 1: B is a random segment."""

    architecture = "BertForNextSentencePrediction"

    def __init__(self, config: BertConfig):
        super().__init__()
        self.bert = BertModel(config, add_pooling_layer=True)
        self.seq_relationship = _fresh_linear(config, 2)

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
    def from_pretrained(cls, path: str | os.PathLike, *, fast: bool = True
                        ) -> NextSentencePrediction:
        """Load an encoder and, when the checkpoint has it, ``cls.seq_relationship``."""
        checkpoint = read_checkpoint(path)
        model = cls(checkpoint.config)
        load_encoder_weights(model.bert, checkpoint, init_missing_pooler=True)
        _load_linear(model.seq_relationship, checkpoint, "cls.seq_relationship")
        return speed_up(model) if fast else model

    def save_pretrained(self, path: str | os.PathLike) -> None:
        """Write an HF folder that ``transformers.BertForNextSentencePrediction`` loads."""
        heads = {"cls.seq_relationship.weight": self.seq_relationship.weight,
                 "cls.seq_relationship.bias": self.seq_relationship.bias}
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
        self.seq_relationship = _fresh_linear(config, 2)
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
        targets = labels != -100
        logits = self.head(hidden[targets])  # (targets, vocab)
        mlm_loss = F.cross_entropy(logits.float(), labels[targets])
        nsp_loss = loss = None
        if next_sentence_label is not None:
            nsp_loss = F.cross_entropy(nsp_logits.float(), next_sentence_label.reshape(-1))
            loss = mlm_loss + nsp_loss
        return PreTrainingOutput(loss, logits, nsp_logits, mlm_loss, nsp_loss)

    def load_heads(self, checkpoint) -> None:
        """The MLM head and, when the checkpoint has it, ``cls.seq_relationship``."""
        super().load_heads(checkpoint)
        self.nsp_loaded = _load_linear(self.seq_relationship, checkpoint, "cls.seq_relationship")

    def head_tensors(self) -> dict[str, torch.Tensor]:
        """Both heads' weights under their HF names."""
        return super().head_tensors() | {
            "cls.seq_relationship.weight": self.seq_relationship.weight,
            "cls.seq_relationship.bias": self.seq_relationship.bias}
