"""Token classification (NER, part-of-speech tagging): the head, the dataset, the evaluation.

Named-entity recognition and POS tagging label *words*, but the encoder sees sub-word tokens:
the word labels are aligned to the sub-words (``minift.core.align``), and a sentence too long for
the model is cut into overlapping windows of whole words, never truncated.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from tqdm import tqdm

from minift.core.align import (
    IGNORE_INDEX,
    align_labels,
    decode_word_predictions,
    plan_windows,
    tokens_per_word,
    word_id_rows,
)
from minift.core.labels import DataError
from minift.core.loop import to_device
from minift.core.metrics import entity_scores, format_table, per_class_scores, token_accuracy
from minift.data.batches import PaddedRows, as_rows, check_pads_right, pad_rows, with_lengths
from minift.tasks.classify import _Classifier


class TokenClassifier(_Classifier):
    """Classifies every token from its last hidden state (NER, POS tagging), as transformers'
    ``BertForTokenClassification``."""

    architecture = "BertForTokenClassification"
    add_pooling_layer = False  # as transformers: the pooler has no use for token labels

    def features(self, input_ids, attention_mask, token_type_ids, lengths=None):
        return self.bert(input_ids, attention_mask, token_type_ids,
                         lengths=lengths).last_hidden_state


def _short(word: str, limit: int = 30) -> str:
    """A word for an error message: its repr, cut after `limit` characters."""
    return repr(word) if len(word) <= limit else repr(word[:limit]) + "..."


def _encode_words(tokenizer, sentences: list[list[str]]) -> list[tuple[Tensor, Tensor, list]]:
    """(input_ids, token_type_ids, word_ids) of each sentence of words, untruncated, unpadded."""
    encoding = tokenizer(sentences, is_split_into_words=True, truncation=False, padding=False)
    return list(zip(as_rows(encoding["input_ids"]), as_rows(encoding["token_type_ids"]),
                    word_id_rows(encoding, len(sentences)), strict=True))


def _check_sentences(sentences, label_ids, where) -> None:
    """Refuse an empty data set, a sentence that is not a non-empty list of words, and label ids
    or places (`where`) that are not one per word."""
    if len(sentences) == 0:
        raise ValueError("expected at least one sentence, found none")
    for s, words in enumerate(sentences):
        if isinstance(words, str) or len(words) == 0:
            raise ValueError(f"sentence {s}: expected a non-empty list of words, "
                             f"found {words!r:.80}")
    if label_ids is not None:
        if len(label_ids) != len(sentences):
            raise ValueError(f"expected one list of label ids per sentence ({len(sentences)}), "
                             f"found {len(label_ids)}")
        for s, (words, ids) in enumerate(zip(sentences, label_ids, strict=True)):
            if len(ids) != len(words):
                raise ValueError(f"sentence {s}: {len(words)} words but {len(ids)} label ids")
    if where is not None and [len(w) for w in where] != [len(s) for s in sentences]:
        raise ValueError("expected `where` to hold one place per word of every sentence")


def _special_tokens(whole: list[tuple], counts: list[list[int]], where) -> int:
    """How many special tokens every sentence has (the same for all, or an error), after refusing
    a data set where no word at all produced a sub-word token."""
    if not any(any(c) for c in counts):
        start = f"{where[0][0]}: " if where is not None else ""
        raise DataError(
            f"{start}no word of the {len(counts)} sentences produced a sub-word token (every "
            "word is made only of characters the tokenizer drops, such as U+200B): there is "
            "nothing to train on or to score")
    n_special = {len(e[0]) - sum(c) for e, c in zip(whole, counts, strict=True)}
    if len(n_special) != 1:
        raise ValueError("expected the same number of special tokens in every sentence, "
                         f"found {sorted(n_special)}")
    return n_special.pop()


class TokenClassificationDataset(PaddedRows):
    """Sentences of words tokenized once into padded batches of token labels, long ones windowed.

    A sentence that does not fit `max_length` tokens (special tokens included) is cut into
    windows of whole words that overlap by `stride_words` words (`minift.core.align.plan_windows`),
    each tokenized as a sentence of its own. The examples handed out are these windows ("pieces"),
    in sentence order; `plan.num_windowed` says how many sentences were cut. `where` (optional):
    every word's file:line (`TaggedSentence.where`) for the errors.

    Batches are `ClassificationDataset`'s plus `labels` (batch, seq) when `label_ids` are given:
    the word's label at its first sub-word, `IGNORE_INDEX` elsewhere (`align_labels`; with
    `label_all_subwords` continuations get the word's label, `B-X` turned into `I-X` by `b_to_i`).
    """

    def __init__(self, sentences: Sequence[Sequence[str]], tokenizer, *, max_length: int,
                 label_ids: Sequence[Sequence[int]] | None = None,
                 label_all_subwords: bool = False, b_to_i: dict[int, int] | None = None,
                 stride_words: int = 16, chunk_size: int = 1024,
                 where: Sequence[Sequence[str]] | None = None) -> None:
        _check_sentences(sentences, label_ids, where)
        check_pads_right(tokenizer)
        self.pad_token_id = int(tokenizer.pad_token_id)
        self.max_length = max_length
        self.sentences = [list(words) for words in sentences]

        # Tokenize every sentence whole: its sub-words per word decide the windows.
        whole: list[tuple[Tensor, Tensor, list[int | None]]] = []
        for start in range(0, len(sentences), chunk_size):
            whole += _encode_words(tokenizer, self.sentences[start : start + chunk_size])
        counts = [tokens_per_word(ids, len(words))
                  for (_, _, ids), words in zip(whole, self.sentences, strict=True)]
        self.num_special_tokens = _special_tokens(whole, counts, where)
        max_tokens = max_length - self.num_special_tokens  # sub-words a window may hold
        if max_tokens < 1:
            raise ValueError(f"max_length={max_length} leaves no room for a word beside the "
                             f"{self.num_special_tokens} special tokens")
        places = None
        if where is not None:  # "train.txt:57, word 'Llanfair...'" for a word no window holds
            places = [[f"{w}, word {_short(word)}" for w, word in zip(ws, words, strict=True)]
                      for ws, words in zip(where, self.sentences, strict=True)]
        self.plan = plan_windows(counts, max_tokens, stride_words, where=places)

        self.input_ids: list[Tensor] = []
        self.token_type_ids: list[Tensor] = []
        self.word_ids: list[list[int | None]] = []
        self.labels: list[Tensor] | None = None if label_ids is None else []
        b_to_i = (b_to_i or {}) if label_all_subwords else None
        for s, start, end in self.plan.pieces():
            if (start, end) == (0, len(self.sentences[s])):
                ids, types, word_ids = whole[s]
            else:
                [(ids, types, word_ids)] = _encode_words(tokenizer, [self.sentences[s][start:end]])
            if len(ids) > max_length:  # the plan guarantees it; a tokenizer that disagrees fails
                place = f"sentence {s}" if where is None else where[s][start]
                raise ValueError(f"{place}, words {start}..{end - 1}: {len(ids)} tokens, "
                                 f"more than max_length={max_length}")
            self.input_ids.append(ids)
            self.token_type_ids.append(types)
            self.word_ids.append(word_ids)
            if label_ids is not None:
                aligned = align_labels(list(label_ids[s][start:end]), word_ids,
                                       label_all_subwords=label_all_subwords, b_to_i=b_to_i)
                self.labels.append(torch.tensor(aligned, dtype=torch.long))
        self.lengths: list[int] = [len(ids) for ids in self.input_ids]

    def batch(self, indices: Sequence[int]) -> dict[str, Tensor]:
        """The padded batch of the pieces at `indices`, in that order, with their `labels`."""
        batch = super().batch(indices)
        if self.labels is not None:
            batch["labels"] = pad_rows([self.labels[i] for i in indices], IGNORE_INDEX)
        return batch

    def word_predictions(self, token_predictions: Sequence[Sequence[int] | Tensor],
                         fill: int = 0) -> list[list[int]]:
        """One prediction per word of every sentence from one per token of every piece.

        `token_predictions[k]` lines up with piece k's tokens (e.g. `logits.argmax(-1)` of its
        row, padding cut or not). Each word is read at its first sub-word, in the window where
        it has most context (`WindowPlan.merge`); a word the tokenizer dropped entirely gets
        `fill` (id 0 is "O" in a `LabelVocab` of NER tags).
        """
        if len(token_predictions) != len(self):
            raise ValueError(f"got predictions for {len(token_predictions)} pieces, "
                             f"expected {len(self)}")
        per_piece = []
        pieces = zip(self.plan.pieces(), self.word_ids, token_predictions, strict=True)
        for k, ((_, start, end), word_ids, row) in enumerate(pieces):
            row = row.tolist() if isinstance(row, Tensor) else list(row)
            if len(row) < len(word_ids):
                raise ValueError(f"piece {k}: {len(row)} token predictions for {len(word_ids)} "
                                 "tokens")
            per_piece.append(decode_word_predictions(row[: len(word_ids)], word_ids,
                                                     num_words=end - start, fill=fill))
        return self.plan.merge(per_piece)


def predict_tags(model, dataset, batch_size: int, device, *, progress: bool = False,
                 desc: str = "tagging") -> tuple[list[list[int]], float | None]:
    """Predicted tag ids of every word of every sentence of a ``TokenClassificationDataset``,
    and the mean loss over its labelled tokens (None when it has no labels).

    ``model(**batch)`` returns ``.logits`` (batch, seq, labels) and ``.loss``: minift's
    ``TokenClassifier`` and transformers' ``BertForTokenClassification`` both do.
    """
    model.eval()
    piece_predictions: list = [None] * len(dataset)
    counts, widths, losses, predicted = [], [], [], []  # the last two stay on the device
    with torch.no_grad():
        batches = dataset.batch_indices(batch_size, generator=None, shuffle=False)
        for indices in tqdm(batches, desc=desc, leave=False, disable=not progress):
            batch = dataset.batch(indices)
            if isinstance(model, TokenClassifier):  # ours takes host-counted lengths
                batch = with_lengths(batch)
            out = model(**to_device(batch, device))
            if "labels" in batch:  # counted on the host's copy: no wait for the device
                n = int((batch["labels"] != IGNORE_INDEX).sum())
                if n:  # a batch without targets has a nan mean loss
                    counts.append(n)
                    losses.append(out.loss.float())
            predicted.append(out.logits.argmax(-1).flatten())  # (batch * seq,)
            widths.append(batch["input_ids"].shape[1])
    # The device is read here, at the end: once for the losses, once for the predictions.
    loss_sum = sum(x * n for x, n in zip(torch.stack(losses).tolist() if losses else [], counts,
                                         strict=True))
    flat, start = torch.cat(predicted).tolist() if predicted else [], 0
    for indices, seq in zip(batches, widths, strict=True):  # back in the dataset's order
        for i in indices:
            piece_predictions[i], start = flat[start : start + seq], start + seq
    targets = sum(counts)
    return dataset.word_predictions(piece_predictions), (loss_sum / targets if targets else None)


def tagging_scores(gold: list[list[str]], pred: list[list[str]], task: str) -> dict:
    """NER: entity-level micro precision, recall, F1 (seqeval's default mode), per type, and the
    strict IOB2 mode's micro scores. POS: token accuracy and per-tag scores."""
    if task == "pos":
        flat_gold = [tag for tags in gold for tag in tags]
        flat_pred = [tag for tags in pred for tag in tags]
        return {"accuracy": token_accuracy(gold, pred), "tokens": len(flat_gold),
                "per_tag": per_class_scores(flat_gold, flat_pred, sorted(set(flat_gold)))}
    scores = entity_scores(gold, pred, mode="default")
    strict = entity_scores(gold, pred, mode="strict")
    keys = ("f1", "precision", "recall")
    return {
        **{key: scores[key] for key in (*keys, "support", "per_type", "mode")},
        "strict": {key: strict[key] for key in keys},
        "token_accuracy": token_accuracy(gold, pred),
    }


def scores_table(scores: dict, task: str, split: str) -> str:
    """The per-type (NER, with the micro average) or per-tag (POS) scores as a markdown table."""
    per = scores["per_tag" if task == "pos" else "per_type"]
    columns = ("precision", "recall", "f1", "support")
    rows = [{split: name, **{k: row[k] for k in columns}} for name, row in per.items()]
    if task == "ner":
        rows.append({split: "micro avg", **{k: scores[k] for k in columns}})
    return format_table(rows)
