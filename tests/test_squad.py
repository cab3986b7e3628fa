"""minift.run.recipes.squad, `minift qa` as a user calls it: named errors before any model
loads, a tiny end-to-end run, answering a question, exact resume.

The model is a small random BERT with MiniLM's tokenizer (as tests/test_cli.py); the data is a few
real SQuAD dev questions.
"""

import json
import math
import re
import string
from collections import Counter
from pathlib import Path

import pytest
import torch
from recipe_runs import run

import minift.run.recipes


@pytest.fixture(scope="module")
def small_squad(data_dir, tmp_path_factory) -> Path:
    """3 real articles, 2 paragraphs each, 2 questions a paragraph."""
    full = json.loads((data_dir / "squad" / "dev-v1.1.json").read_text(encoding="utf-8"))
    small = {"version": "1.1", "data": [
        {"title": a["title"], "paragraphs": [{"context": p["context"], "qas": p["qas"][:2]}
                                             for p in a["paragraphs"][:2]]}
        for a in full["data"][:3]]}
    path = tmp_path_factory.mktemp("squad") / "small.json"
    path.write_text(json.dumps(small), encoding="utf-8")
    return path


@pytest.fixture()
def no_loading(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded despite bad input")

    monkeypatch.setattr(minift.run.recipes.skeleton, "run_recipe", refuse)
    monkeypatch.setattr("minift.tasks.qa.QuestionAnswering.from_pretrained", refuse)


def write(tmp_path, data) -> Path:
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def one_question(answer_start=20, **extra):
    return {"data": [{"title": "t", "paragraphs": [{"context": "The capital city is Paris.",
            "qas": [{"id": "q7", "question": "Capital?",
                     "answers": [{"text": "Paris", "answer_start": answer_start}], **extra}]}]}]}


@pytest.mark.parametrize("make, extra, message", [
    (lambda p: write(p, one_question(answer_start=2)), [],
     "question q7 .*'Paris' is not at answer_start 2"),
    (lambda p: write(p, one_question(is_impossible=True)), [], "SQuAD 2.0"),
    (lambda p: write(p, {"rows": []}), [], "not SQuAD-shaped"),
    (lambda p: write(p, one_question()), ["--max-length", "65"], "more than the model's 64"),
    (lambda p: write(p, one_question()), ["--max-length", "5", "--doc-stride", "0"],
     "question q7: 2 question tokens leave 0 of max_length 5"),
    (lambda p: write(p, one_question()), ["--doc-stride", "64"], "--doc-stride must be between"),
    (lambda p: write(p, one_question()), ["--lr", "nan"], "--lr must be positive"),
])
def test_bad_input_is_refused_before_loading(tiny, tmp_path, capsys, no_loading, make, extra,
                                             message):
    path = make(tmp_path)
    code, _, err = run(capsys, "qa", "--model", tiny, "--train", path, "--dev", path,
                       "--max-length", "64", "--doc-stride", "16", *extra,
                       "--out", tmp_path / "run")
    assert code == 2 and err.startswith("minift: error: ")
    assert re.search(message, err), err
    assert not (tmp_path / "run").exists()


def test_data_options_must_be_complete(tiny, small_squad, tmp_path, capsys, no_loading):
    out = ["--out", tmp_path / "run"]
    for argv, message in [
        (["--train", small_squad, *out], "give --train FILE and --dev FILE"),
        (["--squad", small_squad, *out], "--squad needs --dev-articles"),
        (["--squad", small_squad, "--dev-articles", "3", *out], "between 1 and 2"),
        (["--squad", small_squad, "--dev-articles", "1"], "--out DIR is needed"),
        (["--squad", small_squad, "--train", small_squad, "--dev-articles", "1", *out],
         "either --squad"),
    ]:
        code, _, err = run(capsys, "qa", "--model", tiny, "--max-length", "64",
                           "--doc-stride", "16", *argv)
        assert code == 2 and message in err, err


def test_answer_mode_checks_before_loading(tiny, tmp_path, capsys, no_loading):
    code, _, err = run(capsys, "qa", "--model", tiny, "--question", "Who?", "--context", "Me.")
    assert code == 2 and "is not a question-answering model" in err
    code, _, err = run(capsys, "qa", "--model", tiny, "--question", "Who?")
    assert code == 2 and "--context TEXT or --context-file FILE" in err
    code, _, err = run(capsys, "qa", "--model", tiny, "--question", "Who?", "--context-file",
                       tmp_path / "missing.txt")
    assert code == 2 and "no such file" in err
    code, _, err = run(capsys, "qa", "--model", tiny, "--question", "Who?", "--context-file",
                       "/dev/zero")  # read with the readers' bounds, never to the end
    assert code == 2 and "character device" in err


def official_squad_scores(predictions: dict, answers: dict) -> tuple[float, float]:
    """Exact match and F1 in points as the official SQuAD v1.1 evaluate script computes them:
    answers normalised (lowercase, no punctuation, no a/an/the, single spaces), the best over
    each question's answers, averaged over the questions."""
    def normalize(text):
        text = "".join(ch for ch in text.lower() if ch not in set(string.punctuation))
        return " ".join(re.sub(r"\b(a|an|the)\b", " ", text).split())

    def f1(prediction, truth):
        pred, gold = normalize(prediction).split(), normalize(truth).split()
        common = sum((Counter(pred) & Counter(gold)).values())
        if common == 0:
            return 0.0
        precision, recall = common / len(pred), common / len(gold)
        return 2 * precision * recall / (precision + recall)

    em = sum(max(float(normalize(predictions[q]) == normalize(t)) for t in truths)
             for q, truths in answers.items())
    f = sum(max(f1(predictions[q], t) for t in truths) for q, truths in answers.items())
    return 100 * em / len(answers), 100 * f / len(answers)


def test_train_then_answer(tiny, small_squad, tmp_path, capsys):
    out = tmp_path / "run"
    code, printed, err = run(capsys, "qa", "--model", tiny, "--squad", small_squad,
                             "--dev-articles", "1", "--max-length", "64", "--doc-stride", "16",
                             "--batch-size", "8", "--epochs", "1", "--lr", "1e-3",
                             "--no-progress", "--out", out)
    assert code == 0, err
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["dev"]) == {"exact_match", "f1", "questions"}
    assert metrics["dev"]["questions"] == 4 and 0 <= metrics["dev"]["f1"] <= 100
    predictions = json.loads((out / "predictions.json").read_text())
    assert len(predictions) == 4 and all(isinstance(v, str) for v in predictions.values())
    # metrics.json holds the official v1.1 script's scores of predictions.json (points, abs 1e-9)
    answers = {q["id"]: [a["text"] for a in q["answers"]]
               for a in json.loads(small_squad.read_text())["data"]
               for p in a["paragraphs"] for q in p["qas"]}
    em, f1 = official_squad_scores(predictions, {qid: answers[qid] for qid in predictions})
    assert 0 < f1  # a comparison of zeros would prove nothing
    assert math.isclose(metrics["dev"]["exact_match"], em, abs_tol=1e-9)
    assert math.isclose(metrics["dev"]["f1"], f1, abs_tol=1e-9)
    assert not (out / "resume.pt").exists() and not (out / "best").exists()
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["BertForQuestionAnswering"]

    context = "Super Bowl 50 was won by the Denver Broncos, who beat the Carolina Panthers."
    (tmp_path / "context.txt").write_text(context, encoding="utf-8")
    code, printed, err = run(capsys, "qa", "--model", out, "--question", "Who won?",
                             "--context-file", tmp_path / "context.txt", "--show", "2",
                             "--max-length", "64", "--doc-stride", "16")
    assert code == 0, err
    lines = printed.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith("1. answer: ")
    start, end = map(int, lines[0].rsplit("[", 1)[1].rstrip(")").split(", "))
    assert repr(context[start:end]) in lines[0]


def test_resume_after_a_stop_gives_the_uninterrupted_model(tiny, small_squad, tmp_path,
                                                           monkeypatch):
    """`minift qa --resume`: a run stopped after its step-2 checkpoint and resumed ends with the
    weights, scores and predictions of a run that was never stopped (the windows' batches and
    the head's initialisation are seeded, and resume.pt holds the optimizer and schedule)."""
    from minift.data.batches import PaddedRows
    from minift.hf.safetensors import read_safetensors

    class Stop(Exception):
        pass

    plain_batches = PaddedRows.batches
    steps = {"left": None, "taken": 0}

    def batches(self, batch_size, *, generator, shuffle=True, drop_last=False):
        batch_list = plain_batches(self, batch_size, generator=generator, shuffle=shuffle,
                                   drop_last=drop_last)
        if not shuffle:  # scoring
            return batch_list

        class Stopping(list):
            def __getitem__(self, i):
                if steps["left"] == 0:
                    raise Stop
                if steps["left"] is not None:
                    steps["left"] -= 1
                steps["taken"] += 1
                return list.__getitem__(self, i)

            def __iter__(self):
                return (self[i] for i in range(len(self)))

        return Stopping(batch_list)

    monkeypatch.setattr(PaddedRows, "batches", batches)
    settings = dict(model=tiny, squad=str(small_squad), dev_articles=1, max_length=64,
                    doc_stride=16, batch_size=4, epochs=2, lr=1e-3, eval_every=2,
                    progress=False)
    full = minift.run.recipes.qa(out=str(tmp_path / "full"), **settings)
    steps["left"] = 3  # step 3 fails to get its batch: the step-2 checkpoint is the last
    with pytest.raises(Stop):
        minift.run.recipes.qa(out=str(tmp_path / "cut"), **settings)
    assert (tmp_path / "cut" / "resume.pt").exists()
    steps["left"], steps["taken"] = None, 0
    resumed = minift.run.recipes.qa(out=str(tmp_path / "cut"), resume=True, **settings)
    assert steps["taken"] == full["train"]["steps"] - 2  # it went on from step 2, not from 0

    assert resumed["dev"] == full["dev"]
    assert resumed["train"]["steps"] == full["train"]["steps"] > 3
    a = read_safetensors(tmp_path / "full" / "model.safetensors")
    b = read_safetensors(tmp_path / "cut" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    for name in ("predictions.json",):
        assert (tmp_path / "full" / name).read_text() == (tmp_path / "cut" / name).read_text()

