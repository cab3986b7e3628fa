"""minift.run.recipes called as a user calls them: `minift qa` (named errors before any model
loads, a tiny end-to-end run, answering a question, exact resume) and the recipes' `init` and
`head_lr` options. (Each task's recipe is also run end to end by its task's test file.)

The model is a small random BERT with MiniLM's tokenizer (as tests/test_cli.py); the data is a few
real SQuAD dev questions.
"""

import json
import random
import re
import shutil
from pathlib import Path

import pytest
import torch

import minift.run.recipes
from minift.data.batches import bucket_lengths
from minift.hf.checkpoint import read_state_dict
from minift.run.cli import main
from minift.run.recipes import finetune, ner
from minift.tasks.classify import SequenceClassifier
from minift.tasks.tag import TokenClassifier


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


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


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


SENTENCES = [("a gripping , beautifully acted film", "1"), ("dull , lifeless and far too long", "0"),
             ("funny , warm and wise", "1"), ("i wanted my two hours back", "0")] * 4


CONLL = "EU B-ORG\nrejects O\nGerman B-MISC\ncall O\n\nPeter B-PER\nBlackburn I-PER\n\n" * 4


@pytest.fixture()
def files(tmp_path):
    train, dev = tmp_path / "train.tsv", tmp_path / "dev.tsv"
    for path, rows in ((train, SENTENCES), (dev, SENTENCES[:4])):
        path.write_text("text\tlabel\n" + "".join(f"{t}\t{y}\n" for t, y in rows), encoding="utf-8")
    return train, dev


def changes(before: torch.nn.Module, after: torch.nn.Module) -> dict[str, float]:
    """The largest absolute change of each parameter."""
    old = dict(before.named_parameters())
    return {name: (p - old[name]).abs().max().item() for name, p in after.named_parameters()}


def test_random_init_and_head_lr_through_the_command(files, tmp_path, tiny):
    """`--init random` starts from BERT's random weights, not the checkpoint's (the seeded draw
    of SequenceClassifier.from_config); `--head-lr` moves the classifier by its own rate while
    the encoder moves by `--lr`'s. Two steps, the first at warmup's zero rate: each weight
    moves at most about one peak rate."""
    train, dev = files
    out = tmp_path / "out"
    assert main(["finetune", "--model", str(tiny), "--train", str(train), "--dev", str(dev),
                 "--max-steps", "2", "--batch-size", "8", "--max-length", "16", "--lr", "1e-6",
                 "--head-lr", "0.05", "--init", "random", "--seed", "3", "--no-progress",
                 "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["train"]["init"] == "random" and metrics["train"]["head_lr"] == 0.05
    torch.manual_seed(3)  # the recipe's seed before building
    start = SequenceClassifier.from_config(tiny, num_labels=2)
    trained = SequenceClassifier.from_pretrained(out)
    moved = changes(start, trained)
    assert max(v for k, v in moved.items() if k.startswith("bert.")) < 2e-6
    assert 0.01 < max(v for k, v in moved.items() if k.startswith("classifier.")) < 0.06
    pretrained = dict(read_state_dict(tiny)[0])["embeddings.word_embeddings.weight"]
    assert not torch.allclose(trained.bert.embeddings.word_embeddings.weight, pretrained,
                              atol=1e-3)


def test_ner_takes_init_and_head_lr(tmp_path, tiny):
    for name in ("train", "dev"):
        (tmp_path / f"{name}.txt").write_text(CONLL, encoding="utf-8")
    metrics = ner(model=str(tiny), train=str(tmp_path / "train.txt"),
                  dev=str(tmp_path / "dev.txt"), out=str(tmp_path / "out"), max_steps=2,
                  batch_size=4, max_length=16, lr=1e-6, head_lr=0.05, init="random", seed=1,
                  progress=False)
    assert metrics["train"]["init"] == "random"
    torch.manual_seed(1)
    start = TokenClassifier.from_config(tiny, num_labels=len(metrics["labels"]))
    moved = changes(start, TokenClassifier.from_pretrained(tmp_path / "out"))
    assert max(v for k, v in moved.items() if k.startswith("bert.")) < 2e-6
    assert max(v for k, v in moved.items() if k.startswith("classifier.")) > 0.01


@pytest.mark.parametrize("recipe", ["finetune", "ner"])
@pytest.mark.parametrize("change, message", [(dict(init="scratch"), "init must be one of"),
                                             (dict(head_lr=0.0), "head_lr must be positive")])
def test_bad_init_or_head_lr_stops_before_loading(tmp_path, files, monkeypatch, recipe, change,
                                                  message):
    for module in (minift.run.recipes.classify, minift.run.recipes.tag):
        monkeypatch.setattr(module, "resolve_model_dir", lambda *a: pytest.fail("loaded"))
    train, dev = files
    kwargs = dict(model="minilm", train=str(train), dev=str(dev), out=str(tmp_path / "o"),
                  progress=False) | change
    with pytest.raises(ValueError, match=message):
        (finetune if recipe == "finetune" else ner)(**kwargs)


# ---------------------------------------------------------------------------------------------
# The output folder: never the model's, never the user's (issue #31 rows 1, 2, 5)
# ---------------------------------------------------------------------------------------------


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under `folder`, by relative path: its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}


def finetune_command(model, files, out, *extra) -> list[str]:
    train, dev = files
    return ["finetune", "--model", str(model), "--train", str(train), "--dev", str(dev),
            "--max-length", "16", "--batch-size", "8", "--max-steps", "2", "--no-progress",
            "--out", str(out), *extra]


def test_out_may_not_be_the_model_folder_or_inside_it(tiny, files, tmp_path, capsys):
    model = tmp_path / "m1"
    shutil.copytree(tiny, model)
    (tmp_path / "link").symlink_to(model, target_is_directory=True)
    before = snapshot(model)
    for out in (model, model / "run", tmp_path / "link", tmp_path / "link" / "run"):
        code, _, err = run(capsys, *finetune_command(model, files, out))
        assert code == 2 and "the model folder" in err and "--out" in err, err
        code, _, err = run(capsys, *finetune_command(model, files, out, "--resume"))
        assert code == 2 and "the model folder" in err, err
    assert snapshot(model) == before  # byte-identical: weights, config, tokenizer
    assert not (model / "run").exists()


def test_a_folder_holding_the_users_files_is_refused(tiny, files, tmp_path, capsys):
    """`mkdir -p u/best && echo x > u/best/important.txt && finetune --out u`: refused, before
    anything is written, and the user's files stay byte-identical. A folder a run wrote is
    taken again; `--resume` without resume.pt creates nothing."""
    for user_file in ("best/important.txt", "notes.txt", "best.old/model.safetensors/x",
                      "model/data.csv"):
        folder = tmp_path / user_file.replace("/", "_")
        (folder / user_file).parent.mkdir(parents=True)
        (folder / user_file).write_text("x\n")
        (folder / "metrics.json").write_text("{}\n")
        before = snapshot(folder)
        code, _, err = run(capsys, *finetune_command(tiny, files, folder))
        assert code == 2 and "holds files no minift run writes" in err, err
        assert user_file.split("/")[0] in err and "--out" in err
        assert snapshot(folder) == before and not (folder / ".minift.lock").exists()

    out = tmp_path / "out"
    assert run(capsys, *finetune_command(tiny, files, out))[0] == 0
    assert run(capsys, *finetune_command(tiny, files, out))[0] == 0  # a run's folder: taken again
    code, _, err = run(capsys, *finetune_command(tiny, files, tmp_path / "new", "--resume"))
    assert code == 2 and "nothing to resume" in err and not (tmp_path / "new").exists()


def test_another_commands_run_or_the_users_files_need_overwrite(tiny, files, tmp_path, capsys):
    """A finished `finetune` folder is not taken by `ner` (nor a user's folder by any command)
    unless `--overwrite`; with it the run writes beside the user's files, which stay as they
    were. The model folder stays refused, `--overwrite` or not."""
    out = tmp_path / "run"
    assert run(capsys, *finetune_command(tiny, files, out))[0] == 0
    (tmp_path / "t.txt").write_text("EU B-ORG\nrejects O\n\n" * 4, encoding="utf-8")
    ner = ["ner", "--model", tiny, "--train", tmp_path / "t.txt", "--dev", tmp_path / "t.txt",
           "--max-length", "16", "--max-steps", "1", "--no-progress", "--out", out]
    before = snapshot(out)
    code, _, err = run(capsys, *ner)
    assert code == 2 and "holds a `minift finetune` run" in err and "--overwrite" in err, err
    assert snapshot(out) == before
    assert run(capsys, *ner, "--overwrite")[0] == 0
    assert json.loads((out / ".minift-run.json").read_text())["command"] == "ner"

    user = tmp_path / "user"
    user.mkdir()
    (user / "notes.txt").write_text("mine\n")
    assert run(capsys, *finetune_command(tiny, files, user))[0] == 2
    assert run(capsys, *finetune_command(tiny, files, user, "--overwrite"))[0] == 0
    assert (user / "notes.txt").read_text() == "mine\n" and (user / "metrics.json").is_file()
    code, _, err = run(capsys, *finetune_command(tiny, files, tiny, "--overwrite"))
    assert code == 2 and "the model folder" in err, err


def test_a_failed_run_leaves_no_folder_it_created(tiny, files, tmp_path, monkeypatch):
    def fail(*args, **kwargs):
        raise ValueError("no")

    monkeypatch.setattr(minift.run.recipes.skeleton, "run_recipe", fail)
    train, dev = files
    with pytest.raises(ValueError, match="no"):
        finetune(model=str(tiny), train=str(train), dev=str(dev), out=str(tmp_path / "out"),
                 max_length=16, progress=False)
    assert not (tmp_path / "out").exists()


def test_keep_resume_then_resume_with_more_steps_trains_further(tiny, files, tmp_path, capsys,
                                                                 monkeypatch):
    """`--keep-resume`, then `--resume --max-steps 4` (row 5): the best model stays step 2's
    (step 4 scores worse), is found in the folder, and every later resume works the same."""
    real = minift.run.recipes.classify.classification_metrics
    accuracies = iter([0.5, 0.9,  # before, step 2
                       0.5, 0.1, None,  # before, step 4, the best (step 2) rescored
                       0.5, 0.2, None])  # before, step 6, the best rescored

    def scored(*args, **kwargs):
        result = real(*args, **kwargs)
        accuracy = next(accuracies)
        return result if accuracy is None else result | {"accuracy": accuracy}

    monkeypatch.setattr(minift.run.recipes.classify, "classification_metrics", scored)
    out = tmp_path / "r"
    code, _, err = run(capsys, *finetune_command(tiny, files, out, "--keep-resume"))
    assert code == 0, err
    first = json.loads((out / "metrics.json").read_text())
    model = (out / "model.safetensors").read_bytes()
    for steps in (4, 6):
        code, _, err = run(capsys, *finetune_command(tiny, files, out, "--max-steps", str(steps),
                                                     "--keep-resume", "--resume"))
        assert code == 0, err
        metrics = json.loads((out / "metrics.json").read_text())
        assert metrics["train"]["steps"] == steps and metrics["train"]["best_step"] == 2
        assert metrics["dev"]["loss"] == first["dev"]["loss"]  # step 2's weights, rescored
        assert (out / "model.safetensors").read_bytes() == model
        steps_logged = [json.loads(line).get("step") for line in
                        (out / "log.jsonl").read_text().splitlines()]
        assert max(s for s in steps_logged if s is not None) == steps
        assert torch.load(out / "resume.pt", weights_only=True)["progress"]["step"] == steps
        assert not (out / "best").exists()


def test_a_resume_of_other_data_or_options_is_refused_naming_them(tiny, files, tmp_path, capsys):
    """Row 3: a resume with another data file, another step-changing option or another command
    is refused, each difference named; more steps and another lr are taken."""
    out = tmp_path / "r"
    assert run(capsys, *finetune_command(tiny, files, out, "--keep-resume"))[0] == 0
    record = (out / ".minift-run.json").read_bytes()
    other = tmp_path / "other.tsv"
    other.write_text(files[0].read_text(encoding="utf-8").replace("film", "book"), "utf-8")
    for extra, message in [
        (["--train", str(other)], "(the file of --train (content differs: 515 -> 515 bytes))"),
        (["--batch-size", "4"], "(--batch-size 8 -> 4)"),
        (["--seed", "1"], "(--seed 0 -> 1)"),
    ]:
        code, _, err = run(capsys, *finetune_command(tiny, files, out, "--resume", *extra))
        assert code == 2 and message in err and "--max-steps" in err, err
    assert (out / ".minift-run.json").read_bytes() == record  # nothing written
    (tmp_path / "t.txt").write_text("EU B-ORG\nrejects O\n\n" * 4, encoding="utf-8")
    code, _, err = run(capsys, "ner", "--model", tiny, "--train", tmp_path / "t.txt", "--dev",
                       tmp_path / "t.txt", "--max-length", "16", "--no-progress", "--resume",
                       "--out", out)
    assert code == 2 and "holds a `minift finetune` run" in err, err
    code, _, err = run(capsys, *finetune_command(tiny, files, out, "--resume", "--max-steps", "3",
                                                 "--lr", "1e-4"))
    assert code == 0, err
    assert json.loads((out / "metrics.json").read_text())["train"]["steps"] == 3
    assert not (out / "resume.pt").exists()  # the record stays: the next run reads its command
    assert json.loads((out / ".minift-run.json").read_text())["command"] == "finetune"


@pytest.mark.parametrize("pooling", ["pooler", "mean"])
def test_a_frozen_run_encodes_each_example_once_and_trains_the_same_head(files, tmp_path, tiny,
                                                                        monkeypatch, pooling):
    """``freeze`` head: the encoder runs once per training and dev example (its features are
    cached), not once an epoch and an evaluation; and the head comes out as in the run that
    encodes every batch (the recipe with its cache turned off, the frozen encoder in eval mode):
    the same head weights to float32 rounding (the features are computed in other batches, so
    other padding: atol 1e-5), the same best step and dev scores."""
    from minift.fast.unpad import FastBertModel
    from minift.run.recipes import classify

    encoded = []
    forward = FastBertModel.forward
    monkeypatch.setattr(FastBertModel, "forward", lambda self, ids, *a, **k:
                        encoded.append(len(ids)) or forward(self, ids, *a, **k))
    train, dev = files
    common = dict(model=str(tiny), train=str(train), dev=str(dev), epochs=3, batch_size=4,
                  max_length=16, freeze="head", pooling=pooling, seed=5, progress=False)
    cached = finetune(out=str(tmp_path / "cached"), **common)
    assert sum(encoded) == 16 + 4  # each training and dev example once
    assert cached["train"]["cached_features"] and cached["train"]["pooling"] == pooling
    assert cached["train"]["lr"] == minift.run.options.FROZEN_HEAD_LR  # no rate given

    encoded.clear()
    monkeypatch.setattr(classify, "frozen_rows", lambda model, datasets, o: datasets)
    uncached = finetune(out=str(tmp_path / "uncached"), **common)
    assert sum(encoded) >= 3 * 16 + 4 * 4  # every epoch, and every evaluation (before + 3)
    heads = [SequenceClassifier.from_pretrained(tmp_path / run).classifier
             for run in ("cached", "uncached")]
    for ours, theirs in zip(heads[0].parameters(), heads[1].parameters(), strict=True):
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)
    assert not torch.allclose(heads[0].weight, SequenceClassifier.from_pretrained(
        tiny, num_labels=2).classifier.weight, atol=1e-3)  # and it did train
    assert cached["train"]["best_step"] == uncached["train"]["best_step"]
    for when in ("before", "dev"):
        assert cached[when]["accuracy"] == uncached[when]["accuracy"]
        assert cached[when]["loss"] == pytest.approx(uncached[when]["loss"], abs=1e-5)


def test_the_frozen_head_scores_as_logistic_regression_on_the_same_features(tmp_path, data_dir,
                                                                           monkeypatch):
    """A real task: Financial PhraseBank, the 2,264 sentences all annotators agree on, split
    1,500 / 764 (seeded). ``finetune`` with ``freeze`` head and no rate given (mean pooling,
    the default rate, 3 epochs; scored once at the end: no choice made on dev) scores within one
    point of accuracy of scikit-learn's ``LogisticRegression`` (L-BFGS to convergence, C=1)
    fitted on the very features the recipe computed (recorded as it computes them)."""
    from sklearn.linear_model import LogisticRegression

    from minift.run.recipes import classify

    path = data_dir / "financial_phrasebank" / "Sentences_AllAgree.txt"
    rows = [line.rsplit("@", 1) for line in path.read_text(encoding="utf-8").splitlines() if line]
    order = random.Random(0).sample(range(len(rows)), len(rows))
    for name, part in (("train", order[:1500]), ("dev", order[1500:])):
        (tmp_path / f"{name}.tsv").write_text(
            "text\tlabel\n" + "".join(f"{rows[i][0]}\t{rows[i][1]}\n" for i in part),
            encoding="utf-8")
    computed = []
    encode = classify.encode_features
    monkeypatch.setattr(classify, "encode_features", lambda model, data, **k:
                        computed.append((encode(model, data, **k), data.labels)) or computed[-1][0])
    metrics = finetune(model="minilm", train=str(tmp_path / "train.tsv"),
                       dev=str(tmp_path / "dev.tsv"), out=str(tmp_path / "out"), freeze="head",
                       max_length=64, eval_every=10**9, progress=False)
    assert metrics["train"]["pooling"] == "mean" and metrics["train"]["best_step"] == 141
    (train_x, train_y), (dev_x, dev_y) = computed
    probe = LogisticRegression(max_iter=5000).fit(train_x.numpy(), train_y.numpy())
    reference = probe.score(dev_x.numpy(), dev_y.numpy())
    assert reference > 0.8  # the features carry the task (the majority label scores 0.61)
    assert abs(metrics["dev"]["accuracy"] - reference) <= 0.01, (metrics["dev"], reference)


def test_compile_trains_on_bucketed_padded_batches_to_the_same_model(tmp_path, tiny,
                                                                   monkeypatch):
    """``--compile`` (here a recording stand-in for torch.compile, so the test stays fast; the
    real one is held to eager in tests/test_batches.py) trains ``ner`` on batches padded to
    ``bucket_lengths(max_length)`` through the encoder's padded path, with static shapes
    (``dynamic=False``); without dropout, the trained weights equal those of the run without
    ``--compile`` (unbucketed, the CPU's unpadded path): fp32, atol 1e-5 after four steps."""
    quiet = tmp_path / "quiet"  # the tiny model without dropout: the two runs compare exactly
    shutil.copytree(tiny, quiet)
    config = json.loads((quiet / "config.json").read_text())
    config |= {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}
    (quiet / "config.json").write_text(json.dumps(config))
    for name in ("train", "dev"):
        (tmp_path / f"{name}.txt").write_text(CONLL + "A O\n\n", encoding="utf-8")
    seen = []

    def record(module, **options):
        def forward(**batch):
            seen.append((options, batch["input_ids"].shape[1], module.bert.unpad,
                         batch["labels"].shape == batch["input_ids"].shape))
            return module(**batch)
        return forward

    monkeypatch.setattr(torch, "compile", record)
    common = dict(model=str(quiet), train=str(tmp_path / "train.txt"),
                  dev=str(tmp_path / "dev.txt"), max_steps=4, batch_size=4, max_length=16,
                  lr=1e-3, seed=0, progress=False)
    ner(out=str(tmp_path / "compiled"), compile=True, **common)
    ner(out=str(tmp_path / "eager"), **common)
    assert len(seen) == 4
    assert {options["dynamic"] for options, *_ in seen} == {False}
    assert {width for _, width, *_ in seen} <= set(bucket_lengths(16))
    assert all(unpad is False and same for _, _, unpad, same in seen)
    compiled = TokenClassifier.from_pretrained(tmp_path / "compiled")
    eager = TokenClassifier.from_pretrained(tmp_path / "eager")
    moved = changes(TokenClassifier.from_pretrained(quiet, num_labels=len(compiled.id2label)),
                    eager)
    assert max(v for k, v in moved.items() if k.startswith("bert.")) > 1e-4  # it trained
    for name, param in eager.named_parameters():
        torch.testing.assert_close(dict(compiled.named_parameters())[name], param, atol=1e-5,
                                   rtol=0, msg=name)
