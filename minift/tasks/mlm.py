"""Masked-language modelling: lines of text in, masked batches out, the MLM head and its scores."""

from __future__ import annotations

import math
import os
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from minift.core import masking
from minift.core.align import IGNORE_INDEX
from minift.core.labels import DataError
from minift.core.loop import to_device
from minift.core.model import BertConfig, BertModel
from minift.data.batches import length_grouped_batches, pad_batch, pad_rows
from minift.data.readers import read_utf8_lines
from minift.hf.checkpoint import CheckpointError, load_encoder_weights, read_checkpoint, save_bert

# --- Reading text ---------------------------------------------------------------------------------


def read_text_lines(paths: str | os.PathLike | Sequence[str | os.PathLike]) -> list[str]:
    """The passages of one or more text files (UTF-8), one a line, in file order; blank lines
    skipped."""
    if isinstance(paths, str | os.PathLike):
        paths = [paths]
    if len(paths) == 0:
        raise DataError("expected at least one text file, found none")
    passages = []
    for path in map(Path, paths):
        found = [line for line in read_utf8_lines(path) if line.strip()]
        if not found:
            raise DataError(f"{path}: expected one passage of text a line, found an empty file")
        passages += found
    return passages


def held_out_split(passages: Sequence[str], fraction: float, seed: int,
                   max_held_out: int | None = None) -> tuple[list[str], list[str]]:
    """(training, held-out) passages: a seeded random `fraction` of them (at least one, at most
    `max_held_out`) is held out; both keep file order. Needs at least two passages."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"held-out fraction: expected a number in (0, 1), got {fraction}")
    if len(passages) < 2:
        raise DataError(f"expected at least 2 passages to hold some out for evaluation, found "
                        f"{len(passages)} (or give a separate evaluation text)")
    n = max(1, round(fraction * len(passages)))
    n = min(n, len(passages) - 1, max_held_out or n)
    held = set(random.Random(seed).sample(range(len(passages)), n))
    train = [p for i, p in enumerate(passages) if i not in held]
    return train, [p for i, p in enumerate(passages) if i in held]


# --- Sequences ------------------------------------------------------------------------------------


class TextSequences:
    """Passages tokenized once (by the tokenizer's `backend`, without special tokens) and laid out
    as the model's sequences (unpadded, on the CPU).

    `input_ids[i]` and `word_ids[i]` are LongTensors of one sequence: `[CLS] ... [SEP]` with
    `[SEP]` after every passage when packed. Word ids number the words of a sequence 0, 1, 2, ...
    (-1 at special tokens), the grouping that whole-word and span masking need: a word is the
    WordPiece pieces of one pre-tokenized word (split at whitespace and punctuation).

    Without `pack`, a passage longer than `max_length - 2` tokens is cut (the rest is dropped, as
    truncation does). With `pack`, consecutive passages fill full-length sequences (RoBERTa's
    FULL-SENTENCES, SpanBERT): no compute is spent on padding, and span masking, whose last span
    overshoots the budget by about half a span per sequence, gets long sequences where that half
    span is small. A passage longer than a whole sequence is then cut into sequence-sized
    pieces, none dropped.
    """

    def __init__(self, passages: Sequence[str], tokenizer, *, max_length: int, pack: bool = False,
                 chunk_size: int = 1024) -> None:
        if len(passages) == 0:
            raise ValueError("expected at least one passage, found none")
        if max_length < 3:
            raise ValueError(f"max_length: expected at least 3 ([CLS], a token, [SEP]), got "
                             f"{max_length}")
        ids = {name: getattr(tokenizer, f"{name}_token_id") for name in ("cls", "sep", "pad")}
        missing = [f"[{name.upper()}]" for name, value in ids.items() if value is None]
        if missing:
            raise ValueError(f"the tokenizer has no {', '.join(missing)} token")
        self.cls_id, self.sep_id, self.pad_token_id = ids["cls"], ids["sep"], ids["pad"]
        self.max_length, self.pack = max_length, pack

        bodies = []  # (ids, word ids) of each passage, no special tokens
        for start in range(0, len(passages), chunk_size):
            chunk = list(passages[start : start + chunk_size])
            for e in tokenizer.backend.encode_batch(chunk, add_special_tokens=False):
                if e.ids:
                    bodies.append((e.ids, [-1 if w is None else w for w in e.word_ids]))
        if not bodies:
            raise ValueError("the passages hold no tokens at all")
        self.input_ids: list[Tensor] = []
        self.word_ids: list[Tensor] = []
        if pack:
            self._pack(bodies)
        else:
            for body, words in bodies:
                self._add([(body[: max_length - 2], words[: max_length - 2])])
        self.lengths: list[int] = [len(ids) for ids in self.input_ids]

    def _add(self, pieces: list[tuple[list[int], list[int]]]) -> None:
        """One sequence from passage pieces: [CLS] piece [SEP] piece [SEP] ..., words renumbered."""
        ids, words, next_word = [self.cls_id], [-1], 0
        for body, body_words in pieces:
            first = min((w for w in body_words if w >= 0), default=0)
            renumbered = [-1 if w < 0 else w - first + next_word for w in body_words]
            next_word = max((w for w in renumbered if w >= 0), default=next_word - 1) + 1
            ids += [*body, self.sep_id]
            words += [*renumbered, -1]
        self.input_ids.append(torch.tensor(ids, dtype=torch.long))
        self.word_ids.append(torch.tensor(words, dtype=torch.long))

    def _pack(self, bodies: list[tuple[list[int], list[int]]]) -> None:
        """Greedy packing in order: a piece and its [SEP] go in if they fit, else start anew."""
        capacity = self.max_length - 2  # [CLS] and the first piece's [SEP]
        pieces, used = [], 1  # the pieces of the sequence being filled; tokens used ([CLS])
        for body, words in bodies:
            for start in range(0, len(body), capacity):
                piece = (body[start : start + capacity], words[start : start + capacity])
                if pieces and used + len(piece[0]) + 1 > self.max_length:
                    self._add(pieces)
                    pieces, used = [], 1
                pieces.append(piece)
                used += len(piece[0]) + 1
        if pieces:
            self._add(pieces)

    def __len__(self) -> int:
        return len(self.input_ids)

    def batch(self, indices: Sequence[int]) -> dict[str, Tensor]:
        """The unmasked batch of the sequences at `indices`, padded on the right to the longest:
        `input_ids`, `attention_mask`, `token_type_ids` (all 0) and `word_ids` (-1 at padding),
        each (batch, seq)."""
        batch = pad_batch([self.input_ids[i] for i in indices], None, self.pad_token_id)
        batch["word_ids"] = pad_rows([self.word_ids[i] for i in indices], -1)
        return batch


# --- Masking a batch ------------------------------------------------------------------------------

STRATEGIES = ("mlm", "wwm", "span")


@dataclass
class MaskingCollator:
    """Masks a batch of `TextSequences.batch` with one of the strategies of `minift.core.masking`.

    `strategy`: "mlm" (BERT, token by token), "wwm" (whole words) or "span" (SpanBERT spans);
    `mlm_probability` is the selection rate (the budget for spans). Never selected: the
    `special_ids` ([CLS], [SEP], [PAD], [UNK], as the reference collator) and padding.
    """

    strategy: str
    mask_token_id: int
    vocab_size: int
    special_ids: frozenset[int]
    mlm_probability: float = 0.15

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ValueError(f"masking: expected one of {', '.join(STRATEGIES)}, got "
                             f"{self.strategy!r}")
        if not 0.0 < self.mlm_probability < 1.0:
            raise ValueError(f"mlm_probability: expected a number in (0, 1), got "
                             f"{self.mlm_probability}")

    @classmethod
    def from_tokenizer(cls, tokenizer, strategy: str,
                       mlm_probability: float = 0.15) -> MaskingCollator:
        """The collator of a `Tokenizer`: its [MASK], vocabulary size and special tokens."""
        if tokenizer.mask_token_id is None:
            raise ValueError("the tokenizer has no [MASK] token: it cannot be used for MLM")
        return cls(strategy, tokenizer.mask_token_id, tokenizer.vocab_size,
                   frozenset(tokenizer.special_token_ids), mlm_probability)

    def __call__(self, batch: dict[str, Tensor], generator: torch.Generator) -> dict[str, Tensor]:
        """`input_ids` masked, `labels` (`IGNORE_INDEX`, -100, where nothing is to be predicted),
        the attention mask and token types as they were; `word_ids` is dropped (the model does
        not take it)."""
        input_ids = batch["input_ids"]
        special = masking.special_tokens_mask_from(input_ids, self.special_ids)
        special |= batch["attention_mask"] == 0
        common = dict(mask_token_id=self.mask_token_id, vocab_size=self.vocab_size,
                      generator=generator)
        if self.strategy == "mlm":
            masked, labels = masking.mlm(input_ids, special, mlm_probability=self.mlm_probability,
                                         **common)
        elif self.strategy == "wwm":
            masked, labels = masking.whole_word_mask(input_ids, special, batch["word_ids"],
                                                     mlm_probability=self.mlm_probability, **common)
        else:
            masked, labels = masking.span_mask(input_ids, special, batch["word_ids"],
                                               budget=self.mlm_probability, **common)
        return {"input_ids": masked, "attention_mask": batch["attention_mask"],
                "token_type_ids": batch["token_type_ids"], "labels": labels}


# --- An epoch of masked batches -------------------------------------------------------------------


def batch_seed(seed: int, epoch: int, index: int) -> int:
    """The generator seed of batch `index` of `epoch`: distinct for every (seed, epoch, index)
    with epoch and index below a million, and the same every time it is asked for."""
    return ((seed * 1_000_003 + epoch) * 1_000_003 + index) % 2**63


class MaskedBatches(Sequence):
    """One epoch of masked batches, masked when asked for (batch i with `batch_seed(seed,
    epoch, i)`): a resumed run sees exactly the masks of an uninterrupted one (the loop rebuilds
    the epoch it resumes in), and an evaluation set masked once with a fixed seed gives
    before/after numbers on the very same masks. With `shuffle` the order is
    `length_grouped_batches` with a generator seeded from (seed, epoch); without, sequences go
    longest first."""

    def __init__(self, sequences: TextSequences, collator: MaskingCollator, batch_size: int, *,
                 seed: int, epoch: int = 0, shuffle: bool = True) -> None:
        self.sequences, self.collator = sequences, collator
        self.seed, self.epoch = seed, epoch
        # the order's generator gets a seed no batch index uses (indices stay below a million)
        order = torch.Generator().manual_seed(batch_seed(seed, epoch, 1_000_002))
        self.groups = length_grouped_batches(sequences.lengths, batch_size,
                                             generator=order if shuffle else None, shuffle=shuffle)

    def __len__(self) -> int:
        return len(self.groups)

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        if not isinstance(index, int):
            raise TypeError(f"MaskedBatches takes an int index, got {type(index).__name__}")
        if not -len(self) <= index < len(self):
            raise IndexError(f"batch {index} of an epoch of {len(self)} batches")
        index %= len(self)
        generator = torch.Generator().manual_seed(batch_seed(self.seed, self.epoch, index))
        return self.collator(self.sequences.batch(self.groups[index]), generator)


# The MLM head's weights: HF name -> name here. Old TF-converted checkpoints call the LayerNorm's
# parameters gamma / beta; they are read under these names too.
MLM_HEAD_KEYS = {
    "cls.predictions.transform.dense.weight": "transform.weight",
    "cls.predictions.transform.dense.bias": "transform.bias",
    "cls.predictions.transform.LayerNorm.weight": "transform_norm.weight",
    "cls.predictions.transform.LayerNorm.bias": "transform_norm.bias",
    "cls.predictions.bias": "bias",
}


def _mlm_head_weights(checkpoint, params: dict[str, Tensor]) -> dict[str, Tensor]:
    """The ``cls.predictions.*`` weights of ``checkpoint`` under the names of ``params`` (a
    ``MaskedLM``'s named parameters), checked: all or none of them, shapes as the model's, and a
    stored decoder weight equal to the word embeddings it is tied to."""
    folder, found = checkpoint.folder, {}
    for name, tensor in checkpoint.heads.items():
        if not name.startswith("cls.predictions."):
            continue
        hf = name.replace("LayerNorm.gamma", "LayerNorm.weight").replace("LayerNorm.beta",
                                                                         "LayerNorm.bias")
        hf = {"cls.predictions.decoder.bias": "cls.predictions.bias"}.get(hf, hf)
        if hf == "cls.predictions.decoder.weight":
            if not torch.equal(tensor, params["bert.embeddings.word_embeddings.weight"]):
                raise CheckpointError(f"{folder}: {name} differs from bert.embeddings."
                                      "word_embeddings.weight; minift's MaskedLM ties the decoder "
                                      "to the embeddings")
            continue
        if hf not in MLM_HEAD_KEYS:
            raise CheckpointError(f"{folder}: unknown MLM head weight {name!r} (known: "
                                  f"{', '.join(MLM_HEAD_KEYS)})")
        found[MLM_HEAD_KEYS[hf]] = (name, tensor)
    missing = sorted(set(MLM_HEAD_KEYS.values()) - set(found))
    if found and missing:
        raise CheckpointError(f"{folder}: the MLM head is incomplete, missing (minift names): "
                              f"{', '.join(missing)}")
    for ours, (name, tensor) in found.items():
        if tensor.shape != params[ours].shape:
            raise CheckpointError(f"{folder}: {name} has shape {tuple(tensor.shape)}, the config "
                                  f"needs {tuple(params[ours].shape)}")
    return {ours: tensor for ours, (_, tensor) in found.items()}


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
    other), plus an output bias per token. The encoder has no pooler, as the reference.
    Checkpoint names: ``MLM_HEAD_KEYS``; the decoder weight is not stored (the reference drops
    tied copies too).

    Sparse head: with ``labels``, the transform and the decoder run only at the positions whose
    label is not -100 (about 15% of the tokens), so the largest matmul of pretraining,
    (tokens, hidden) x (hidden, vocab), shrinks about sixfold; the loss is the same as computing
    every logit and ignoring the -100 positions.
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
        # BERT's initialisation of the head: N(0, initializer_range) weights, zero bias, unit norm.
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
        """See ``MaskedLMOutput``. No target at all gives a nan loss, as the reference (the
        training loop skips such batches)."""
        hidden = self.bert(input_ids, attention_mask, token_type_ids).last_hidden_state
        if labels is None:
            return MaskedLMOutput(loss=None, logits=self.head(hidden))  # (batch, seq, vocab)
        if labels.shape != input_ids.shape:
            raise ValueError(f"labels: expected the shape of input_ids {tuple(input_ids.shape)}, "
                             f"got {tuple(labels.shape)}")
        logits, loss = self.sparse_head(hidden, labels)
        return MaskedLMOutput(loss=loss, logits=logits)

    def sparse_head(self, hidden: torch.Tensor,
                    labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The logits of the target positions only (see ``MaskedLMOutput``) and their mean
        cross-entropy."""
        targets = labels != IGNORE_INDEX
        logits = self.head(hidden[targets])
        return logits, F.cross_entropy(logits.float(), labels[targets])

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike) -> MaskedLM:
        """Load the encoder and, when the checkpoint has them, the ``cls.predictions.*`` weights.

        Without them (the published all-MiniLM-L6-v2 has none: it was trained for sentence
        embeddings and shipped without its MLM head) the head is initialised as BERT does and
        ``head_loaded`` is False: its predictions are then near-uniform until it is trained.
        Other heads (``cls.seq_relationship.*``, ``classifier.*``) and a pooler are dropped.
        """
        checkpoint = read_checkpoint(path)
        if checkpoint.raw_config.get("tie_word_embeddings", True) is False:
            raise CheckpointError(f"{checkpoint.folder / 'config.json'}: tie_word_embeddings is "
                                  "false; minift's MaskedLM always ties the decoder to the "
                                  "embeddings")
        model = cls(checkpoint.config)
        load_encoder_weights(model.bert, checkpoint, init_missing_pooler=True)
        model.load_heads(checkpoint)
        return model

    def load_heads(self, checkpoint) -> None:
        """Copy the ``cls.predictions.*`` weights of ``checkpoint`` (when it has them)."""
        params = dict(self.named_parameters())
        found = _mlm_head_weights(checkpoint, params)
        with torch.no_grad():
            for ours, tensor in found.items():
                params[ours].copy_(tensor)
        self.head_loaded = self.head_loaded or bool(found)

    def save_pretrained(self, path: str | os.PathLike) -> None:
        """Write an HF folder that ``transformers.BertForMaskedLM`` loads with the same logits."""
        extra = {"architectures": [self.architecture], "tie_word_embeddings": True}
        save_bert(self.bert, path, heads=self.head_tensors(), config_extra=extra, prefix="bert.")

    def head_tensors(self) -> dict[str, torch.Tensor]:
        """The head's weights under their HF names (the tied decoder is not stored)."""
        params = dict(self.named_parameters())
        return {hf: params[ours] for hf, ours in MLM_HEAD_KEYS.items()}


def mlm_metrics(model, batches, device, *, progress: bool = False) -> dict[str, float]:
    """Masked-token loss, perplexity (exp of the mean masked-token loss) and accuracy (argmax
    equals the original token), averaged over every masked token of ``batches``.

    Batches with a ``next_sentence_label`` (``minift.tasks.nsp.PreTraining``'s) add next-sentence
    prediction: ``nsp_accuracy`` and ``nsp_loss`` over the pairs, ``mlm_loss`` the masked-token
    loss and ``loss`` the sum of the two (what ``BertForPreTraining`` trains on).
    """
    model.eval()
    # Per batch, on the device until the end: (mlm loss, right tokens) and (nsp loss sum, right
    # pairs), as float32 (whole numbers below 2**24 are exact there); the counts on the host.
    masked_sums, pair_sums, sizes, pair_counts = [], [], [], []
    with torch.no_grad():
        for batch in tqdm(batches, desc="held-out", leave=False, disable=not progress):
            targets = batch["labels"][batch["labels"] != IGNORE_INDEX]  # the host's copy
            if targets.numel() == 0 and batch.get("next_sentence_label") is None:
                continue
            batch = to_device(batch, device)
            gold = batch.get("next_sentence_label")
            out = model(**batch)  # the sparse head: logits of the targets only
            if targets.numel():
                targets = targets.to(device, non_blocking=True)
                masked_sums.append(torch.stack([getattr(out, "mlm_loss", out.loss).float(),
                                                (out.logits.argmax(-1) == targets).sum().float()]))
                sizes.append(targets.numel())
            if gold is not None:
                logits = out.seq_relationship_logits
                pair_sums.append(torch.stack([
                    F.cross_entropy(logits.float(), gold, reduction="sum"),
                    (logits.argmax(-1) == gold).sum().float()]))
                pair_counts.append(len(gold))
    # The device is read here, once, at the end.
    read = torch.stack(masked_sums + pair_sums).tolist() if sizes or pair_counts else []
    tokens_read, pairs_read = read[: len(sizes)], read[len(sizes) :]
    loss_sum = sum(x * n for (x, _), n in zip(tokens_read, sizes, strict=True))
    correct, count = sum(int(c) for _, c in tokens_read), sum(sizes)
    nsp_sum, right = sum(x for x, _ in pairs_read), sum(int(r) for _, r in pairs_read)
    pairs = sum(pair_counts)
    if count == 0:
        raise ValueError("the evaluation text got no masked token: give more held-out text")
    loss = loss_sum / count
    masked = {"perplexity": math.exp(min(loss, 700.0)), "masked_accuracy": correct / count,
              "masked_tokens": count}
    if not pairs:
        return {"loss": loss, **masked}
    return {"loss": loss + nsp_sum / pairs, "mlm_loss": loss, **masked,
            "nsp_accuracy": right / pairs, "nsp_loss": nsp_sum / pairs, "pairs": pairs}
