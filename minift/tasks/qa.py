"""Extractive question answering, SQuAD v1.1: read the questions, cut long contexts into
windows, turn start/end logits back into answer text, score exact match and F1.

The model sees ``[CLS] question [SEP] context [SEP]`` and predicts two positions, the tokens
where the answer starts and ends; everything else here is the bookkeeping around them. It is
transformers' recipe (``prepare_train_features`` and ``postprocess_qa_predictions`` of its
``run_qa.py`` example) written out; unanswerable questions (SQuAD 2.0) are refused.
"""

from __future__ import annotations

import json
import os
import random
import re
import string
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from minift.core.labels import DataError
from minift.core.model import BertConfig, BertModel
from minift.data.batches import PaddedRows
from minift.data.readers import excerpt, read_utf8_text
from minift.hf.checkpoint import (
    fresh_linear,
    linear_tensors,
    load_encoder_weights,
    load_linear,
    read_checkpoint,
    save_bert,
)

# --- 1. Reading SQuAD -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    """A reference answer: its ``text`` and the character offset of its start in the context."""

    text: str
    start: int

    @property
    def end(self) -> int:
        """One past the answer's last character."""
        return self.start + len(self.text)


@dataclass
class Question:
    """One SQuAD question and its paragraph. ``article`` and ``paragraph`` number them in file
    order (``paragraph`` across the whole file), so a split by article is easy to check."""

    id: str
    question: str
    context: str
    answers: list[Answer]
    title: str = ""
    article: int = 0
    paragraph: int = 0


def _field(obj: object, key: str, kind: type, where: str, path: Path):
    if not isinstance(obj, dict) or key not in obj:
        raise DataError(f"{path}: {where}: expected a JSON object with {key!r}, this is not "
                        "SQuAD-shaped ({'data': [{'title', 'paragraphs': [{'context', 'qas': "
                        "[{'id', 'question', 'answers'}]}]}]})")
    value = obj[key]
    if not isinstance(value, kind):
        raise DataError(f"{path}: {where}.{key}: expected {kind.__name__}, found "
                        f"{type(value).__name__}")
    return value


def _check_answer(answer: Answer, context: str, here: str) -> None:
    """An answer is a non-empty span of its context at ``answer_start``; anything else (an empty
    text, a start past the context's end) would be trained on as "no answer", which SQuAD v1.1's
    answerable questions never are."""
    if isinstance(answer.start, bool):
        raise DataError(f"{here}: expected an integer answer_start, found {answer.start}")
    if answer.text.strip() == "":
        raise DataError(f"{here}: expected the answer's text, found {answer.text!r}; minift "
                        "supports answerable questions only (SQuAD v1.1), each answer a "
                        "non-empty span of the context")
    if not 0 <= answer.start <= len(context) - len(answer.text):
        raise DataError(f"{here} {excerpt(answer.text)}: answer_start {answer.start} is outside "
                        f"the context ({len(context):,} characters): the answer must lie in it")
    found = context[answer.start:answer.end]
    if found != answer.text:
        raise DataError(f"{here} {excerpt(answer.text)} is not at answer_start {answer.start} of "
                        f"the context (found {excerpt(found)} there)")


def read_squad(path: str | os.PathLike, *, require_answers: bool = True) -> list[Question]:
    """The questions of a SQuAD v1.1 JSON file, in file order, every answer checked to sit in
    its context at ``answer_start``. ``require_answers``: a question without answers is an error
    (a training file needs them; an evaluation-only file may lack them)."""
    path = Path(path)
    try:
        raw = json.loads(read_utf8_text(path))  # bounded: a file over the cap is refused unread
    except json.JSONDecodeError as err:
        raise DataError(f"{path}: not valid JSON (line {err.lineno}: {err.msg})") from None
    questions: list[Question] = []
    seen: set[str] = set()
    paragraph_index = 0
    for a, article in enumerate(_field(raw, "data", list, "top level", path)):
        title = article.get("title", "") if isinstance(article, dict) else ""
        for p, paragraph in enumerate(_field(article, "paragraphs", list, f"data[{a}]", path)):
            where = f"data[{a}].paragraphs[{p}]"
            context = _field(paragraph, "context", str, where, path)
            for q, qa in enumerate(_field(paragraph, "qas", list, where, path)):
                qid = str(_field(qa, "id", (str, int), f"{where}.qas[{q}]", path))
                here = f"{path}: question {qid[:80]} ({where}.qas[{q}])"
                if qa.get("is_impossible"):
                    raise DataError(f"{here}: is_impossible is true, a SQuAD 2.0 unanswerable "
                                    "question; minift supports SQuAD v1.1 (answerable questions "
                                    "only)")
                if qid in seen:
                    raise DataError(f"{here}: the id is used twice")
                seen.add(qid)
                text = _field(qa, "question", str, f"{where}.qas[{q}]", path)
                answers = []
                for n, ans in enumerate(_field(qa, "answers", list, f"{where}.qas[{q}]", path)):
                    spot = f"{where}.qas[{q}].answers[{n}]"
                    answer = Answer(_field(ans, "text", str, spot, path),
                                    _field(ans, "answer_start", int, spot, path))
                    _check_answer(answer, context, f"{here}: answer {n}")
                    answers.append(answer)
                if require_answers and not answers:
                    raise DataError(f"{here}: no answers; every training question needs one")
                questions.append(Question(qid, text, context, answers, title, a, paragraph_index))
            paragraph_index += 1
    if not questions:
        raise DataError(f"{path}: no questions found")
    return questions


def split_by_article(questions: Sequence[Question], dev_articles: int,
                     seed: int = 0) -> tuple[list[Question], list[Question]]:
    """(train, dev): ``dev_articles`` whole articles, drawn with ``random.Random(seed)``, go to
    dev, the rest to train; no article, hence no paragraph, is in both. File order is kept."""
    articles = sorted({q.article for q in questions})
    if not 1 <= dev_articles < len(articles):
        raise ValueError(f"--dev-articles must be between 1 and {len(articles) - 1} (the file "
                         f"has {len(articles)} articles), got {dev_articles}")
    held = set(random.Random(seed).sample(articles, dev_articles))
    return ([q for q in questions if q.article not in held],
            [q for q in questions if q.article in held])


# --- 2. Windows over long contexts ----------------------------------------------------------------


@dataclass
class Window:
    """One model input: ``[CLS] question [SEP] context piece [SEP]``.

    ``question`` indexes the question list. ``sequence_ids[t]`` is 0 for a question token, 1 for
    a context token, None for [CLS] and [SEP] (the reference's ``sequence_ids``).
    ``offsets[t]`` is the (start, end) character span of token t in the context for context
    tokens, None for the question and special tokens (what decoding may pick from).
    ``start_position`` / ``end_position`` are the answer's first and last token, both 0 ([CLS])
    when the answer is not whole inside this window (or there is no answer).
    """

    question: int
    input_ids: list[int]
    token_type_ids: list[int]
    sequence_ids: list[int | None]
    offsets: list[tuple[int, int] | None]
    start_position: int = 0
    end_position: int = 0


def context_spans(num_tokens: int, capacity: int, doc_stride: int) -> list[tuple[int, int]]:
    """The [start, stop) token ranges of the context in each window: ``capacity`` tokens each,
    each starting ``capacity - doc_stride`` tokens after the last, until one reaches the end
    (how the ``tokenizers`` library cuts an overflowing sequence with a stride)."""
    spans, start = [], 0
    while True:
        stop = min(start + capacity, num_tokens)
        spans.append((start, stop))
        if stop == num_tokens:
            return spans
        start += capacity - doc_stride


def answer_positions(offsets: Sequence[tuple[int, int] | None], answer: Answer) -> tuple[int, int]:
    """Token positions of ``answer`` in one window, or (0, 0) when the window's context does not
    hold it whole.

    The reference's rule, kept as it is: the start is the last context token that starts at or
    before the answer's first character; the end is the first context token that ends at or
    after the answer's last character. An answer with a leading space therefore starts at the
    token before the space, as in transformers.
    """
    context = [t for t, o in enumerate(offsets) if o is not None]
    first, last = context[0], context[-1]
    if not (offsets[first][0] <= answer.start and offsets[last][1] >= answer.end):
        return 0, 0
    start = first
    while start <= last and offsets[start][0] <= answer.start:
        start += 1
    end = last
    while end >= first and offsets[end][1] >= answer.end:
        end -= 1
    return start - 1, end + 1


def make_windows(questions: Sequence[Question], tokenizer, *, max_length: int = 384,
                 doc_stride: int = 128) -> list[Window]:
    """The windows of every question, in order (all windows of question 0 first).

    The question is left-stripped (some SQuAD questions start with spaces) and never cut; the
    context is cut into pieces of ``max_length - len(question) - 3`` tokens overlapping by
    ``doc_stride`` (``context_spans``), so that an answer cut by one window edge lies whole in
    the next. Training positions use the first reference answer.
    """
    if max_length < 4:
        raise ValueError(f"max_length must be at least 4, got {max_length}")
    if doc_stride < 0:
        raise ValueError(f"doc_stride must be >= 0, got {doc_stride}")
    cls, sep, backend = tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.backend
    asked = backend.encode_batch([q.question.lstrip() for q in questions], add_special_tokens=False)
    contexts = backend.encode_batch([q.context for q in questions], add_special_tokens=False)
    windows = []
    for index, (q, qe, ce) in enumerate(zip(questions, asked, contexts, strict=True)):
        capacity = max_length - len(qe.ids) - 3
        if capacity < 1 or (len(ce.ids) > capacity and doc_stride >= capacity):
            raise DataError(
                f"question {q.id}: {len(qe.ids)} question tokens leave {max(capacity, 0)} of "
                f"max_length {max_length} for the context, "
                + ("none" if capacity < 1 else f"not more than doc_stride {doc_stride}")
                + ": raise --max-length or lower --doc-stride")
        prefix = [cls, *qe.ids, sep]
        for start, stop in context_spans(len(ce.ids), capacity, doc_stride):
            body = ce.ids[start:stop]
            offsets = [None] * len(prefix) + [tuple(o) for o in ce.offsets[start:stop]] + [None]
            window = Window(index, [*prefix, *body, sep],
                            [0] * len(prefix) + [1] * (len(body) + 1),
                            [None, *[0] * len(qe.ids), None, *[1] * len(body), None], offsets)
            if q.answers:
                window.start_position, window.end_position = answer_positions(offsets, q.answers[0])
            windows.append(window)
    return windows


class WindowDataset(PaddedRows):
    """Windows as padded batches, with ``start_positions`` / ``end_positions`` when ``labels``
    (the names of ``BertForQuestionAnswering``'s arguments)."""

    def __init__(self, windows: Sequence[Window], pad_token_id: int, *, labels: bool = True):
        self.windows, self.labels, self.pad_token_id = list(windows), labels, pad_token_id
        self.input_ids = [torch.tensor(w.input_ids) for w in windows]
        self.token_type_ids = [torch.tensor(w.token_type_ids) for w in windows]
        self.lengths = [len(w.input_ids) for w in windows]

    def batch(self, indices: Sequence[int]) -> dict[str, torch.Tensor]:
        """The padded batch of the windows at ``indices``, with their answer positions."""
        batch = super().batch(indices)
        if self.labels:
            windows = [self.windows[i] for i in indices]
            batch["start_positions"] = torch.tensor([w.start_position for w in windows])
            batch["end_positions"] = torch.tensor([w.end_position for w in windows])
        return batch


def train_and_dev_windows(train: Sequence[Question], dev: Sequence[Question], tokenizer, *,
                          max_length: int = 384, doc_stride: int = 128):
    """``(train_windows, train_set, dev_windows, dev_set)``: the windows of a train/dev split and
    their datasets (the dev set carries no answer positions)."""
    train_windows, dev_windows = (make_windows(split, tokenizer, max_length=max_length,
                                               doc_stride=doc_stride) for split in (train, dev))
    return (train_windows, WindowDataset(train_windows, tokenizer.pad_token_id),
            dev_windows, WindowDataset(dev_windows, tokenizer.pad_token_id, labels=False))


# --- 3. Decoding: logits back to answer text ------------------------------------------------------


@dataclass
class Span:
    """A candidate answer: its text, its character span [start, end) in the context, its score
    (start logit + end logit) and its probability (softmax of the scores over the n-best)."""

    text: str
    start: int
    end: int
    score: float
    start_logit: float
    end_logit: float
    probability: float = 0.0


def best_answers(context: str, windows: Sequence[Window], start_logits: Sequence[torch.Tensor],
                 end_logits: Sequence[torch.Tensor], *, n_best: int = 20,
                 max_answer_length: int = 30) -> list[Span]:
    """The n-best answers of one question from the logits of its windows, best first.

    In each window, every pair of the ``n_best`` highest start and ``n_best`` highest end logits
    is a candidate when both tokens are context tokens, end >= start and the span is at most
    ``max_answer_length`` tokens. The best ``n_best`` over all windows are kept (transformers'
    ``postprocess_qa_predictions``, SQuAD v1.1); with none at all, one empty answer of score 0.
    Logits are 1-D over the window's tokens (padding after the window is ignored).
    """
    candidates = []
    for window, starts, ends in zip(windows, start_logits, end_logits, strict=True):
        n = len(window.offsets)
        starts, ends = starts[:n].float(), ends[:n].float()
        top_starts = starts.topk(min(n_best, n)).indices.tolist()
        top_ends = ends.topk(min(n_best, n)).indices.tolist()
        for s in top_starts:
            for e in top_ends:
                if (window.offsets[s] is None or window.offsets[e] is None or e < s
                        or e - s + 1 > max_answer_length):
                    continue
                begin, stop = window.offsets[s][0], window.offsets[e][1]
                candidates.append(Span(context[begin:stop], begin, stop, float(starts[s] + ends[e]),
                                       float(starts[s]), float(ends[e])))
    candidates = sorted(candidates, key=lambda c: c.score, reverse=True)[:n_best]
    if not candidates or (len(candidates) == 1 and candidates[0].text == ""):
        candidates.insert(0, Span("", 0, 0, 0.0, 0.0, 0.0))
    probabilities = torch.tensor([c.score for c in candidates], dtype=torch.float64).softmax(0)
    for c, p in zip(candidates, probabilities.tolist(), strict=True):
        c.probability = p
    return candidates


def predict_answers(questions: Sequence[Question], windows: Sequence[Window],
                    start_logits: Sequence[torch.Tensor], end_logits: Sequence[torch.Tensor],
                    **options) -> dict[str, list[Span]]:
    """Question id -> its n-best answers (``best_answers`` over all its windows)."""
    by_question: dict[int, list[int]] = {}
    for i, window in enumerate(windows):
        by_question.setdefault(window.question, []).append(i)
    out = {}
    for index, q in enumerate(questions):
        mine = by_question.get(index, [])
        out[q.id] = best_answers(q.context, [windows[i] for i in mine],
                                 [start_logits[i] for i in mine], [end_logits[i] for i in mine],
                                 **options)
    return out


# --- 4. Scoring: SQuAD v1.1 exact match and F1 ----------------------------------------------------

_PUNCTUATION = set(string.punctuation)


def normalize_answer(text: str) -> str:
    """The official normalisation, in its order: lower case, drop ASCII punctuation
    (``string.punctuation``), drop the articles a / an / the as whole words, collapse
    whitespace."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def exact_match(prediction: str, reference: str) -> float:
    """1.0 when the two normalised answers are equal, else 0.0."""
    return float(normalize_answer(prediction) == normalize_answer(reference))


def f1(prediction: str, reference: str) -> float:
    """Token F1 of the normalised answers: the overlap counted as a bag of words (a word twice in
    both counts twice); 0 when they share no word (two empty answers too, as the official
    script)."""
    pred, ref = normalize_answer(prediction).split(), normalize_answer(reference).split()
    same = sum((Counter(pred) & Counter(ref)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred), same / len(ref)
    return 2 * precision * recall / (precision + recall)


def squad_scores(predictions: dict[str, str], questions: Sequence[Question]) -> dict:
    """``{"exact_match", "f1", "questions"}``: each score the best over a question's reference
    answers, averaged over the questions and given in points (0-100), as the official SQuAD v1.1
    script prints them. A question without a prediction scores 0."""
    em = f = 0.0
    for q in questions:
        if not q.answers:
            raise ValueError(f"question {q.id}: no reference answers to score against")
        predicted = predictions.get(q.id, "")
        em += max(exact_match(predicted, a.text) for a in q.answers)
        f += max(f1(predicted, a.text) for a in q.answers)
    n = len(questions)
    return {"exact_match": 100 * em / n, "f1": 100 * f / n, "questions": n}


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
    a batch is padded. transformers leaves them as computed; without padding the two agree.
    """

    architecture = "BertForQuestionAnswering"

    def __init__(self, config: BertConfig):
        super().__init__()
        self.bert = BertModel(config, add_pooling_layer=False)
        self.qa_outputs = fresh_linear(config, 2)

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
    def from_pretrained(cls, path: str | os.PathLike) -> QuestionAnswering:
        """Load an encoder and, when the checkpoint has it, the ``qa_outputs`` head (otherwise
        fresh, as transformers initialises it)."""
        checkpoint = read_checkpoint(path)
        model = cls(checkpoint.config)
        load_encoder_weights(model.bert, checkpoint)
        load_linear(model.qa_outputs, checkpoint, "qa_outputs")
        return model

    def save_pretrained(self, path: str | os.PathLike) -> None:
        """Write an HF folder that ``transformers.BertForQuestionAnswering`` loads."""
        save_bert(self.bert, path, heads=linear_tensors(self.qa_outputs, "qa_outputs"),
                  prefix="bert.", config_extra={"architectures": [self.architecture]})


def qa_predictions(model, questions: Sequence, windows: Sequence, dataset, batch_size: int,
                   device, *, progress: bool = False, n_best: int = 20,
                   max_answer_length: int = 30) -> dict[str, list]:
    """Question id -> its n-best answers (``best_answers``), from the start and end logits of
    every window. ``model(**batch)`` returns ``.start_logits`` and ``.end_logits``:
    minift's ``QuestionAnswering`` and transformers' ``BertForQuestionAnswering`` both do."""
    model.eval()
    starts: list = [None] * len(windows)
    ends: list = [None] * len(windows)
    with torch.no_grad():
        for indices in tqdm(dataset.batch_indices(batch_size, generator=None, shuffle=False),
                            desc="answering", leave=False, disable=not progress):
            batch = {k: v.to(device) for k, v in dataset.batch(indices).items()
                     if k not in ("start_positions", "end_positions")}
            out = model(**batch)
            for i, s, e in zip(indices, out.start_logits.float().cpu(),
                               out.end_logits.float().cpu(), strict=True):
                starts[i], ends[i] = s, e
    return predict_answers(questions, windows, starts, ends, n_best=n_best,
                           max_answer_length=max_answer_length)


def qa_scores(model, questions: Sequence, windows: Sequence, dataset, batch_size: int, device,
              **options) -> dict:
    """SQuAD v1.1 ``exact_match`` and ``f1`` (points) and ``questions``, with ``predictions``
    (id -> best answer text) riding along."""
    answers = qa_predictions(model, questions, windows, dataset, batch_size, device, **options)
    predictions = {qid: spans[0].text for qid, spans in answers.items()}
    return squad_scores(predictions, questions) | {"predictions": predictions}

