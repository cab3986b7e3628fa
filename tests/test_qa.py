"""minift.tasks.qa: SQuAD reading, windows, decoding and scoring against transformers'
question-answering recipe, and the span head against BertForQuestionAnswering.

The reference is re-implemented here from transformers' ``examples/pytorch/question-answering``
(``prepare_train_features`` in ``run_qa.py``, ``postprocess_qa_predictions`` in ``utils_qa.py``)
with the HF fast tokenizer of the MiniLM folder, and run on real SQuAD v1.1 dev questions.
"""

import json
import random
import re
import tempfile
from dataclasses import replace

import numpy as np
import pytest
import torch
import transformers
from hypothesis import given, settings
from hypothesis import strategies as st
from tiny_heads import TINY, random_batch, randomize_, saved

from minift.core.labels import DataError
from minift.core.model import BertConfig
from minift.data.tokenizer import Tokenizer
from minift.hf.safetensors import CheckpointError
from minift.tasks.nsp import PreTraining
from minift.tasks.qa import (
    Answer,
    Question,
    QuestionAnswering,
    best_answers,
    context_spans,
    exact_match,
    f1,
    make_windows,
    normalize_answer,
    predict_answers,
    read_squad,
    span_loss,
    split_by_article,
    squad_scores,
)

# Found once with max_length 384 / doc_stride 128: the only four dev questions whose first answer
# straddles a window edge; the test checks they still do.
STRADDLING = ["56beb4e43aeaaa14008c9266", "56f895339e9bad19000a017b", "5726887e708984140094c91a",
              "57263b1638643c19005ad335"]


@pytest.fixture(scope="module")
def squad(data_dir):
    return read_squad(data_dir / "squad" / "dev-v1.1.json")


@pytest.fixture(scope="module")
def tokenizers(minilm_dir):
    return Tokenizer.from_pretrained(minilm_dir), transformers.AutoTokenizer.from_pretrained(
        minilm_dir)


@pytest.fixture(scope="module")
def sample(squad, tokenizers):
    """Real questions: the straddlers, contexts far over 512 tokens, a seeded random 30, and
    copies of some whose answer gets a leading or trailing space (from the context itself)."""
    ours, _ = tokenizers
    by_id = {q.id: q for q in squad}
    chosen = [by_id[i] for i in STRADDLING]
    long = [q for q in squad if len(q.context) > 3000]
    chosen += long[:: max(1, len(long) // 8)][:8]
    chosen += random.Random(0).sample(squad, 30)
    for q in chosen[:12]:
        a = q.answers[0]
        if a.start > 0 and q.context[a.start - 1] == " ":
            chosen.append(replace(q, id=q.id + "-lead", answers=[Answer(" " + a.text,
                                                                        a.start - 1)]))
        if q.context[a.end:a.end + 1] == " ":
            chosen.append(replace(q, id=q.id + "-trail", answers=[Answer(a.text + " ", a.start)]))
    assert any(len(ours.backend.encode(q.context).ids) > 700 for q in chosen)
    assert sum(q.id.endswith(("-lead", "-trail")) for q in chosen) >= 10
    return chosen


def reference_train_features(hf_tokenizer, questions, max_length, doc_stride):
    """transformers' ``prepare_train_features`` (run_qa.py), verbatim in its logic."""
    tokenized = hf_tokenizer([q.question.lstrip() for q in questions], [q.context for q in questions],
                             truncation="only_second", max_length=max_length, stride=doc_stride,
                             return_overflowing_tokens=True, return_offsets_mapping=True,
                             padding="max_length")
    sample_mapping = tokenized.pop("overflow_to_sample_mapping")
    offset_mapping = tokenized.pop("offset_mapping")
    starts, ends = [], []
    for i, offsets in enumerate(offset_mapping):
        input_ids = tokenized["input_ids"][i]
        cls_index = input_ids.index(hf_tokenizer.cls_token_id)
        sequence_ids = tokenized.sequence_ids(i)
        answer = questions[sample_mapping[i]].answers[0]
        start_char, end_char = answer.start, answer.start + len(answer.text)
        token_start_index = 0
        while sequence_ids[token_start_index] != 1:
            token_start_index += 1
        token_end_index = len(input_ids) - 1
        while sequence_ids[token_end_index] != 1:
            token_end_index -= 1
        if not (offsets[token_start_index][0] <= start_char
                and offsets[token_end_index][1] >= end_char):
            starts.append(cls_index)
            ends.append(cls_index)
        else:
            while token_start_index < len(offsets) and offsets[token_start_index][0] <= start_char:
                token_start_index += 1
            starts.append(token_start_index - 1)
            while offsets[token_end_index][1] >= end_char:
                token_end_index -= 1
            ends.append(token_end_index + 1)
    return tokenized, sample_mapping, offset_mapping, starts, ends


@pytest.mark.parametrize("max_length, doc_stride", [(384, 128), (128, 32)])
def test_windows_match_transformers_recipe(sample, tokenizers, max_length, doc_stride):
    ours, hf = tokenizers
    windows = make_windows(sample, ours, max_length=max_length, doc_stride=doc_stride)
    ref, mapping, offsets, starts, ends = reference_train_features(hf, sample, max_length,
                                                                  doc_stride)
    assert len(windows) == len(mapping)
    straddled = 0
    for i, w in enumerate(windows):
        n = sum(ref["attention_mask"][i])
        assert w.question == mapping[i]
        assert w.input_ids == ref["input_ids"][i][:n]
        assert w.token_type_ids == ref["token_type_ids"][i][:n]
        assert w.sequence_ids == ref.sequence_ids(i)[:n]
        assert [o for o in w.offsets if o is not None] == [
            tuple(o) for o, s in zip(offsets[i], ref.sequence_ids(i), strict=True) if s == 1]
        assert (w.start_position, w.end_position) == (starts[i], ends[i]), sample[w.question].id
        context = [o for o in w.offsets if o is not None]
        answer = sample[w.question].answers[0]
        straddled += context[0][0] < answer.start < context[-1][1] < answer.end
    assert straddled > 0  # some answers do straddle a window edge in this sample
    if max_length == 384:
        assert {sample[w.question].id for w in windows if w.start_position == 0} >= set(STRADDLING)


def test_positions_point_at_the_answer(sample, tokenizers):
    ours, _ = tokenizers
    for w in make_windows(sample, ours, max_length=128, doc_stride=32):
        q = sample[w.question]
        if w.start_position:
            text = q.context[w.offsets[w.start_position][0]:w.offsets[w.end_position][1]]
            if q.id.endswith(("-lead", "-trail")):
                # the reference's rule takes the token on the far side of the space too
                assert normalize_answer(q.answers[0].text) in normalize_answer(text)
                assert len(text.split()) == len(q.answers[0].text.split()) + 1
            else:
                assert normalize_answer(text) == normalize_answer(q.answers[0].text)


def test_context_spans_are_the_tokenizers_overflow():
    assert context_spans(10, 4, 1) == [(0, 4), (3, 7), (6, 10)]
    assert context_spans(3, 4, 1) == [(0, 3)]
    assert context_spans(4, 4, 2) == [(0, 4)]


def test_no_room_for_the_context_is_a_named_error(squad, tokenizers):
    ours, _ = tokenizers
    q = squad[0]
    n = len(ours.backend.encode(q.question, add_special_tokens=False).ids)
    with pytest.raises(DataError, match=f"question {q.id}: {n} question tokens leave 0"):
        make_windows([q], ours, max_length=n + 3)
    with pytest.raises(DataError, match="not more than doc_stride 128"):
        make_windows([q], ours, max_length=n + 3 + 100, doc_stride=128)


# --------------------------------------------------------------------------------------------
# Reading


def write(tmp_path, data, name="squad.json"):
    path = tmp_path / name
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def squad_file(answers=None, **qa_extra):
    answers = [{"text": "Paris", "answer_start": 20}] if answers is None else answers
    return {"version": "1.1", "data": [{"title": "France", "paragraphs": [{
        "context": "The capital city is Paris.",
        "qas": [{"id": "q1", "question": "What is the capital?", "answers": answers,
                 **qa_extra}]}]}]}


def test_read_squad_small_file(tmp_path):
    (q,) = read_squad(write(tmp_path, squad_file()))
    assert (q.id, q.title, q.answers) == ("q1", "France", [Answer("Paris", 20)])


@pytest.mark.parametrize("data, message", [
    (squad_file([{"text": "Paris", "answer_start": 4}]),
     "question q1 .*answer 0 'Paris' is not at answer_start 4 .*found 'capit'"),
    (squad_file([]), "question q1 .*no answers"),
    (squad_file(is_impossible=True), "question q1 .*SQuAD 2.0 .*supports SQuAD v1.1"),
    ({"version": "1.1", "articles": []}, "top level: expected a JSON object with 'data'"),
    ({"data": [{"title": "x", "paragraphs": [{"qas": []}]}]},
     r"data\[0\].paragraphs\[0\]: expected a JSON object with 'context'"),
    ([1, 2], "not SQuAD-shaped"),
])
def test_bad_files_get_named_errors(tmp_path, data, message):
    with pytest.raises(DataError, match=message):
        read_squad(write(tmp_path, data))


@pytest.mark.parametrize("answer, message", [
    ({"text": "", "answer_start": 1000000}, r"answer 1: expected the answer's text, found ''"),
    ({"text": "Paris", "answer_start": 1000000},
     r"answer 1 'Paris': answer_start 1000000 is outside the context \(26 characters\)"),
    ({"text": "Paris.!", "answer_start": 20}, r"answer_start 20 is outside the context"),
    ({"text": "Paris", "answer_start": -3}, r"answer_start -3 is outside the context"),
    ({"text": " ", "answer_start": 3}, r"expected the answer's text, found ' '"),
    ({"text": "T", "answer_start": False}, r"expected an integer answer_start, found False"),
])
def test_answers_past_the_context_are_refused(tmp_path, answer, message):
    """Issue 31, row 11: an answer that is not a span of its context would be trained on as
    "no answer"; the error names the file and the question id."""
    path = write(tmp_path, squad_file([{"text": "Paris", "answer_start": 20}, answer]))
    with pytest.raises(DataError, match=f"^{re.escape(str(path))}: question q1 "
                       rf"\(data\[0\].paragraphs\[0\].qas\[0\]\): answer 1"):
        read_squad(path)
    with pytest.raises(DataError, match=message):
        read_squad(path)


def test_a_squad_file_over_the_cap_is_refused_unread(tmp_path, monkeypatch):
    path = write(tmp_path, squad_file())
    monkeypatch.setenv("MINIFT_MAX_FILE_MB", "1")
    with open(path, "r+b") as f:
        f.truncate(3 << 20)
    with pytest.raises(DataError, match="expected a data file of at most 1 MiB"):
        read_squad(path)
    with pytest.raises(DataError, match="found a character device"):
        read_squad("/dev/zero")


def test_not_json_and_missing_file(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text("{oops", encoding="utf-8")
    with pytest.raises(DataError, match="not valid JSON"):
        read_squad(path)
    with pytest.raises(DataError, match="no such file"):
        read_squad(tmp_path / "missing.json")


def test_questions_without_answers_are_allowed_for_prediction(tmp_path):
    (q,) = read_squad(write(tmp_path, squad_file([])), require_answers=False)
    assert q.answers == []


def test_split_by_article(squad):
    train, dev = split_by_article(squad, 5, seed=0)
    assert len(train) + len(dev) == len(squad)
    assert len({q.article for q in dev}) == 5
    assert not {q.paragraph for q in train} & {q.paragraph for q in dev}
    assert split_by_article(squad, 5, seed=0)[1] == dev
    with pytest.raises(ValueError, match="--dev-articles must be between 1 and 47"):
        split_by_article(squad, 48)


# --------------------------------------------------------------------------------------------
# Decoding


def reference_postprocess(questions, offset_mapping, sample_mapping, start_logits, end_logits,
                          n_best_size=20, max_answer_length=30):
    """transformers' ``postprocess_qa_predictions`` (utils_qa.py), SQuAD v1.1, verbatim in its
    logic; offsets outside the context are None as ``prepare_validation_features`` sets them."""
    features_per_example = {}
    for i, k in enumerate(sample_mapping):
        features_per_example.setdefault(k, []).append(i)
    all_predictions = {}
    for example_index, example in enumerate(questions):
        prelim_predictions = []
        for feature_index in features_per_example[example_index]:
            start, end = start_logits[feature_index], end_logits[feature_index]
            offsets = offset_mapping[feature_index]
            start_indexes = np.argsort(start)[-1: -n_best_size - 1: -1].tolist()
            end_indexes = np.argsort(end)[-1: -n_best_size - 1: -1].tolist()
            for s in start_indexes:
                for e in end_indexes:
                    if (s >= len(offsets) or e >= len(offsets) or offsets[s] is None
                            or len(offsets[s]) < 2 or offsets[e] is None or len(offsets[e]) < 2):
                        continue
                    if e < s or e - s + 1 > max_answer_length:
                        continue
                    prelim_predictions.append({"offsets": (offsets[s][0], offsets[e][1]),
                                               "score": start[s] + end[e]})
        predictions = sorted(prelim_predictions, key=lambda x: x["score"], reverse=True)
        predictions = predictions[:n_best_size]
        for pred in predictions:
            pred["text"] = example.context[pred["offsets"][0]:pred["offsets"][1]]
        if not predictions or (len(predictions) == 1 and predictions[0]["text"] == ""):
            predictions.insert(0, {"text": "empty", "score": 0.0})
        all_predictions[example.id] = predictions[0]["text"]
    return all_predictions


@settings(deadline=None, max_examples=10)
@given(seed=st.integers(0, 2**31), max_answer_length=st.sampled_from([5, 30]))
def test_decoding_matches_transformers_postprocess(sample, tokenizers, seed, max_answer_length):
    ours, hf = tokenizers
    windows = make_windows(sample, ours, max_length=128, doc_stride=32)
    gen = torch.Generator().manual_seed(seed)
    start = [torch.randn(len(w.input_ids), generator=gen) for w in windows]
    end = [torch.randn(len(w.input_ids), generator=gen) for w in windows]
    ref_offsets = [w.offsets for w in windows]
    ref = reference_postprocess(sample, ref_offsets, [w.question for w in windows],
                                [s.numpy() for s in start], [e.numpy() for e in end],
                                max_answer_length=max_answer_length)
    got = predict_answers(sample, windows, start, end, max_answer_length=max_answer_length)
    assert {k: spans[0].text for k, spans in got.items()} == ref
    for q in sample:
        spans = got[q.id]
        assert len(spans) <= 20 and abs(sum(s.probability for s in spans) - 1) < 1e-9
        assert all(q.context[s.start:s.end] == s.text for s in spans)
        assert [s.score for s in spans] == sorted((s.score for s in spans), reverse=True)


def test_decoding_with_no_valid_span_gives_an_empty_answer():
    q = Question("x", "q?", "ctx", [Answer("ctx", 0)])
    from minift.tasks.qa import Window

    w = Window(0, [101, 5, 102, 7, 102], [0, 0, 0, 1, 1], [None, 0, None, 1, None],
               [None, None, None, (0, 3), None])
    start = torch.tensor([0.0, 0, 0, 1, 0])
    end = torch.tensor([0.0, 0, 0, 1, 0])
    (best,) = best_answers(q.context, [w], [start], [end])
    assert (best.text, best.start, best.end, best.score) == ("ctx", 0, 3, 2.0)
    spans = best_answers(q.context, [w], [start], [end], max_answer_length=0)
    assert spans[0].text == ""


# --------------------------------------------------------------------------------------------
# Scoring: each normalisation rule by hand, then EM / F1


@pytest.mark.parametrize("text, normalised", [
    ("Paris", "paris"),                       # lower case
    ("PARIS!", "paris"),                      # punctuation
    ("U.S.-led", "usled"),                    # punctuation inside a word joins it
    ("the Eiffel Tower", "eiffel tower"),     # article
    ("A cat and an apple", "cat and apple"),  # a / an
    ("theatre", "theatre"),                   # only whole words
    ("The.", ""),                             # punctuation first, then the article
    ("  two   spaces\tand\ttabs ", "two spaces and tabs"),  # whitespace
    ("café—naïve", "café—naïve"),             # only ASCII punctuation (string.punctuation)
])
def test_normalisation_rules(text, normalised):
    assert normalize_answer(text) == normalised


def test_exact_match_and_f1_by_hand():
    assert exact_match("The Eiffel Tower.", "eiffel tower") == 1.0
    assert exact_match("Eiffel", "eiffel tower") == 0.0
    # prediction 3 tokens, reference 2, overlap 2: P 2/3, R 1, F1 0.8
    assert f1("the big Eiffel Tower", "Eiffel Tower") == pytest.approx(0.8)
    # a bag of words: "to" twice in the prediction, once in the reference, counts once
    assert f1("to to be", "to be") == pytest.approx(2 * (2 / 3) * 1 / (2 / 3 + 1))
    assert f1("Denver Broncos", "Carolina Panthers") == 0.0
    assert f1("the", "a") == 0.0  # both normalise to nothing: 0, as the official script


def test_squad_scores_take_the_best_reference_and_report_points():
    qs = [Question("1", "?", "c", [Answer("Denver Broncos", 0), Answer("Broncos", 0)]),
          Question("2", "?", "c", [Answer("1990", 0)])]
    scores = squad_scores({"1": "Broncos", "2": "in 1990"}, qs)
    assert scores["questions"] == 2
    assert scores["exact_match"] == pytest.approx(50.0)
    assert scores["f1"] == pytest.approx(100 * (1 + 2 / 3) / 2)
    assert squad_scores({}, qs)["f1"] == 0.0  # a missing prediction scores 0


@settings(deadline=None, max_examples=10)
@given(seed=st.integers(0, 2**31), batch=st.integers(1, 4), seq=st.integers(2, 12),
       padded=st.booleans())
def test_question_answering_matches_transformers(seed, batch, seq, padded):
    torch.manual_seed(seed)
    # every weight random: a fresh head's zero bias would hide a bias that is never loaded
    hf = randomize_(transformers.BertForQuestionAnswering(transformers.BertConfig(**TINY)), seed)
    gen = torch.Generator().manual_seed(seed)
    data = random_batch(gen, batch, seq, 2, False)
    del data["labels"]
    if not padded:
        data["attention_mask"][:] = 1
    # positions inside, at the edge, and outside the window (clamped and ignored, as the reference)
    data["start_positions"] = torch.randint(0, seq + 3, (batch,), generator=gen)
    data["end_positions"] = torch.randint(0, seq + 3, (batch,), generator=gen)
    data["start_positions"][0] = 0  # at least one position counts
    ref = hf(**data)
    with tempfile.TemporaryDirectory() as tmp:
        ours = QuestionAnswering.from_pretrained(saved(hf, tmp)).eval()
    out = ours(**data)
    real = data["attention_mask"].bool()
    for name in ("start_logits", "end_logits"):
        torch.testing.assert_close(getattr(out, name)[real], getattr(ref, name)[real], atol=1e-5,
                                   rtol=0)
        assert (getattr(out, name)[~real] == torch.finfo(torch.float32).min).all()  # padding out
    if padded:  # the reference's loss with the padding's logits masked as minift masks them
        masked = [getattr(ref, n).masked_fill(~real, torch.finfo(torch.float32).min)
                  for n in ("start_logits", "end_logits")]
        expected = span_loss(*masked, data["start_positions"], data["end_positions"])
    else:
        expected = ref.loss
    torch.testing.assert_close(out.loss, expected, atol=1e-5, rtol=0, equal_nan=True)
    with tempfile.TemporaryDirectory() as tmp:  # minift -> transformers
        ours.save_pretrained(tmp)
        back = transformers.BertForQuestionAnswering.from_pretrained(tmp).eval()
    torch.testing.assert_close(back(**data).start_logits[real], out.start_logits[real],
                               atol=1e-6, rtol=0)


def test_question_answering_loss_ignores_padding():
    """Extra padding changes nothing (it does change the reference's loss)."""
    torch.manual_seed(0)
    model = QuestionAnswering(BertConfig(**TINY)).eval()
    ids = torch.randint(1, 60, (2, 6))
    positions = dict(start_positions=torch.tensor([1, 2]), end_positions=torch.tensor([3, 2]))
    short = model(ids, torch.ones(2, 6, dtype=torch.long), **positions).loss
    padded_ids = torch.cat([ids, torch.zeros(2, 4, dtype=torch.long)], 1)
    mask = torch.cat([torch.ones(2, 6), torch.zeros(2, 4)], 1).long()
    torch.testing.assert_close(model(padded_ids, mask, **positions).loss, short, atol=1e-6, rtol=0)


def test_span_heads_start_fresh_on_a_plain_encoder(minilm_dir):
    qa = QuestionAnswering.from_pretrained(minilm_dir)
    nsp = PreTraining.from_pretrained(minilm_dir)
    assert qa.qa_outputs.weight.shape == (2, 384) and qa.qa_outputs.bias.abs().sum() == 0
    assert not nsp.nsp_loaded and nsp.seq_relationship.bias.abs().sum() == 0


def test_qa_head_of_the_wrong_shape_is_refused(tmp_path):
    torch.manual_seed(0)
    hf = transformers.BertForQuestionAnswering(transformers.BertConfig(**TINY, num_labels=3))
    hf.save_pretrained(tmp_path)
    with pytest.raises(CheckpointError, match="qa_outputs.weight has shape"):
        QuestionAnswering.from_pretrained(tmp_path)
