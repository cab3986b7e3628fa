"""minift.run.search: resume refused with other fixed options, halving that keeps everything
equal to the full grid, bad input stopped before any trial, the command line, search.json,
finetune's test file and dropout, and the seq2seq and lm searches. (The grid is tested in
test_grid.py; each trial's independence and a killed search's resume in test_trials.py.)

The real trials train the ``tiny`` fixture a few steps on a few sentences: what is tested is the
bookkeeping and the independence of the runs, not the scores.
"""

import copy
import json
import math
from pathlib import Path

import pytest
from search_runs import count_reads, options, search_files, without_time
from test_cli import SENTENCES
from test_recipes_seq2seq import ROWS, csv, generate_lines, reference_scores

import minift.data.readers
import minift.run.recipes
import minift.run.search
from minift.run.cli import main
from minift.run.search import (
    GridError,
    MetricError,
    halving_budgets,
    search,
)


@pytest.fixture(autouse=True)
def one_thread():
    """The tiny model's steps are too small to share between threads: one is faster, and far
    faster when other jobs hold the cores."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture()
def files(tmp_path):
    return search_files(tmp_path)


# --------------------------------------------------------------------------------------------
# A search folder holds one search
# --------------------------------------------------------------------------------------------


def test_a_rerun_with_other_fixed_options_is_refused(tiny, files, tmp_path, monkeypatch):
    monkeypatch.setattr(minift.run.search, "run_trial", _fake_trial)
    out = str(tmp_path / "s")
    search("finetune", out=out, options=options(tiny, files), grid=["lr=1e-3,1e-4"], seeds=1)
    with pytest.raises(ValueError, match="other fixed options .*max_length"):
        search("finetune", out=out, options=options(tiny, files, max_length=20),
               grid=["lr=1e-3,1e-4"], seeds=1)


# --------------------------------------------------------------------------------------------
# Successive halving
# --------------------------------------------------------------------------------------------


def test_halving_that_keeps_everything_equals_the_full_grid(tiny, files, tmp_path, monkeypatch):
    monkeypatch.setattr(minift.run.search, "run_trial", _fake_trial)  # the bookkeeping is tested
    common = dict(options=options(tiny, files, epochs=4), seeds=2,
                  grid=["lr=1e-4,2e-4,3e-4,5e-4", "batch_size=4,8"])
    full = search("finetune", out=str(tmp_path / "full"), **common)
    halved = search("finetune", out=str(tmp_path / "halved"), halving=True, halving_keep=1.0,
                    **common)
    assert [rung["epochs"] for rung in halved["halving"]["rungs"]] == [1, 2, 3]
    strip = ("stopped_early", "epochs_trained")
    rows = [{k: v for k, v in row.items() if k not in strip} for row in halved["configs"]]
    assert without_time(rows) == without_time(full["configs"])
    assert without_time(halved["chosen"]) == without_time(full["chosen"])


def _fake_trial(task, fixed, config, seed, folder):
    """A trial without training: a score that depends on the configuration and the seed, and
    a model folder (the tiny checkpoint) so that the search can finish."""
    import shutil

    folder.mkdir(parents=True, exist_ok=True)
    for file in Path(fixed["model"]).iterdir():
        shutil.copy(file, folder / file.name)
    score = 1.0 - abs(config.get("lr", 1e-4) - 3e-4) * 100 + 0.001 * seed
    epochs = config.get("epochs", fixed.get("epochs", 3))
    return {"config": config, "seed": seed, "dev": {"accuracy": score * epochs / 4},
            "seconds": 1.0, "steps": 10 * epochs, "folder": folder.name}


def test_halving_keeps_the_best_and_reports_the_steps_it_saved(tiny, files, tmp_path,
                                                                monkeypatch):
    monkeypatch.setattr(minift.run.search, "run_trial", _fake_trial)
    common = dict(options=options(tiny, files, epochs=4), grid=["lr=1e-4,2e-4,3e-4,5e-4"],
                  seeds=2)
    out = str(tmp_path / "s")
    halved = search("finetune", out=out, halving=True, halving_keep=0.5, **common)
    assert halving_budgets(4, 0.5, 1) == [1, 2]
    assert [len(rung["results"]) for rung in halved["halving"]["rungs"]] == [4, 2]
    assert halved["chosen"]["config"] == {"lr": 3e-4}
    cost = halved["halving"]["cost"]
    # 4 configs x 2 seeds x 1 epoch, 2 x 2 x 2, then 1 x 2 x 4 (10 steps an epoch) vs 4 x 2 x 4
    assert cost["halving"]["steps"] == 10 * (8 + 8 + 8)
    assert cost["full_grid"]["steps"] == 10 * 32 and cost["estimated"]
    assert halved["halving"]["same_as_full_grid"] is None
    # With the full grid run in the same folder, the halving knows whether it agrees.
    search("finetune", out=out, **common)
    again = search("finetune", out=out, halving=True, halving_keep=0.5, **common)
    assert again["halving"]["same_as_full_grid"] is True
    assert not again["halving"]["cost"]["estimated"]


# --------------------------------------------------------------------------------------------
# Bad input stopped before any trial
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("task, grid, extra, error, message", [
    ("finetune", ["learning_rate=1e-5"], {}, GridError, "no hyperparameter 'learning_rate'"),
    ("setfit", ["freeze=head"], {}, GridError, "no hyperparameter 'freeze'"),
    ("finetune", ["lr=-1e-5"], {}, GridError, "lr=-1e-5 must be positive"),
    ("finetune", ["lr=fast"], {}, GridError, "lr=fast is not a number"),
    ("finetune", ["batch_size=0"], {}, GridError, "batch_size=0 must be at least 1"),
    ("finetune", ["batch_size=8.5"], {}, GridError, "not a whole number"),
    ("finetune", ["dropout=1.5"], {}, GridError, r"must be in \[0, 1\)"),
    ("finetune", ["freeze=top"], {}, GridError, "not a freeze mode"),
    ("finetune", ["freeze=last-9"], {}, GridError, "N must be between 1 and 2"),
    ("finetune", ["max_length=999"], {}, GridError, "more than the model's 64 positions"),
    ("finetune", ["lr="], {}, GridError, "empty value"),
    ("finetune", ["lr=1e-5,,2e-5"], {}, GridError, "empty value"),
    ("finetune", [], {}, GridError, "the grid is empty"),
    ("finetune", ["lr"], {}, GridError, "expected name=v1,v2"),
    ("finetune", ["lr=1e-5", "lr=2e-5"], {}, GridError, "given twice"),
    ("finetune", ["lr=1e-5,1e-5"], {}, GridError, "listed twice"),
    ("finetune", ["lr=log:1e-4:1e-5"], {"random_draws": 3}, GridError, "LOW must be less"),
    ("finetune", ["lr=log:1e-5:1e-4"], {}, GridError, "needs random_draws N"),
    ("finetune", ["lr=1e-5,2e-5"], {"random_draws": 3}, GridError, "holds only 2"),
    ("finetune", ["lr=1e-5"], {"metric": "entity_f1"}, MetricError, "finetune reports accuracy"),
    ("finetune", ["lr=1e-5"], {"metric": "exact_match"}, MetricError, "metric exact_match"),
    ("finetune", ["lr=1e-5"], {"seeds": 0}, ValueError, "seeds must be at least 1"),
    ("finetune", ["lr=1e-5"], {"halving": True, "halving_keep": 0.0}, ValueError,
     "halving_keep"),
    ("finetune", ["lr=1e-5"], {"test": "/no/such/test.tsv"}, ValueError, "no such file"),
    ("finetune", ["lr=1e-5"], {"test": "DEV"}, ValueError, "is the dev file the choice is made on"),
    ("seq2seq", ["lr=1e-5"], {"metric": "accuracy"}, MetricError,
     "seq2seq reports bleu, rouge_l, loss"),
    ("seq2seq", ["num_beams=0"], {}, GridError, "num_beams=0 must be at least 1"),
    ("seq2seq", ["lr=1e-5"], {"test": "DEV"}, ValueError, "is the dev file the choice is made on"),
    ("lm", ["num_beams=2"], {}, GridError, "lm has no hyperparameter 'num_beams'"),
    ("lm", ["lr=1e-5"], {"metric": "bleu"}, MetricError, "lm reports perplexity, loss"),
])
def test_bad_input_stops_before_any_trial(tiny, files, tmp_path, monkeypatch, task, grid, extra,
                                          error, message):
    def refuse(*args, **kwargs):
        raise AssertionError("a trial ran despite bad input")

    monkeypatch.setattr(minift.run.search, "run_trial", refuse)
    if extra.get("test") == "DEV":
        extra = extra | {"test": files["dev"]}
    with pytest.raises(error, match=message):
        search(task, out=str(tmp_path / "s"), options=options(tiny, files), grid=grid, **extra)
    assert not (tmp_path / "s").exists()


def test_the_search_folder_is_checked_like_a_runs(tiny, files, tmp_path, monkeypatch):
    """A search never writes into the model folder, a folder holding the user's files or
    another command's run (unless `overwrite`); the user's files stay as they were."""
    monkeypatch.setattr(minift.run.search, "run_trial", lambda *a, **k: pytest.fail("trial ran"))
    user, run_folder = tmp_path / "user", tmp_path / "run"
    (user / "trials" / "mine").mkdir(parents=True)
    (user / "trials" / "mine" / "notes.txt").write_text("x\n")
    run_folder.mkdir()
    (run_folder / ".minift-run.json").write_text('{"command": "finetune"}\n')
    for out, message in [(tiny, "the model folder"), (user, "trials/mine/notes.txt"),
                         (run_folder, "holds a `minift finetune` run")]:
        with pytest.raises(ValueError, match=message):
            search("finetune", out=str(out), options=options(tiny, files), grid=["lr=1e-4"])
    assert (user / "trials" / "mine" / "notes.txt").read_text() == "x\n"
    with pytest.raises(ValueError, match="the model folder"):
        search("finetune", out=str(tiny), options=options(tiny, files, overwrite=True),
               grid=["lr=1e-4"])


def test_ner_metric_must_match_the_tags(tiny, tmp_path, monkeypatch):
    monkeypatch.setattr(minift.run.search, "run_trial", lambda *a, **k: pytest.fail("trial ran"))
    conll = tmp_path / "pos.txt"
    conll.write_text("The DT\ncat NN\n\nA DT\ndog NN\n", encoding="utf-8")
    with pytest.raises(MetricError, match="pos tags"):
        search("ner", out=str(tmp_path / "s"), grid=["lr=1e-4"], metric="entity_f1",
               options={"model": str(tiny), "train": str(conll), "dev": str(conll)})


def test_the_command_line_reports_a_bad_grid_in_one_line(tiny, files, tmp_path, capsys):
    code = main(["search", "finetune", "--model", str(tiny), "--train", files["train"],
                 "--dev", files["dev"], "--grid", "lr=-1", "--out", str(tmp_path / "s")])
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("minift: error:") and "--grid 'lr=-1'" in err


def test_the_command_line_fixes_every_option_and_passes_the_search_ones(tiny, files, tmp_path,
                                                                       monkeypatch):
    seen = {}

    def fake_search(task, **kwargs):
        seen.update(kwargs, task=task)

    monkeypatch.setattr(minift.run.search, "search", fake_search)
    main(["search", "finetune", "--model", str(tiny), "--train", files["train"], "--dev",
          files["dev"], "--grid", "lr=1e-4,2e-4", "--grid", "freeze=none,head", "--weight-decay",
          "0.1", "--dropout", "0.2", "--random", "3", "--metric", "f1", "--halving",
          "--test", files["test"], "--out", str(tmp_path / "s")])
    assert seen["task"] == "finetune" and seen["grid"] == ["lr=1e-4,2e-4", "freeze=none,head"]
    assert (seen["seeds"], seen["metric"], seen["random_draws"], seen["halving"]) == (
        3, "f1", 3, True)
    assert seen["test"] == files["test"]
    fixed = minift.run.search.fixed_options("finetune", seen["options"])
    assert fixed["weight_decay"] == 0.1 and fixed["dropout"] == 0.2
    assert "test" not in fixed and "out" not in fixed and "seed" not in fixed


def test_search_json_is_plain_data(tiny, files, tmp_path, monkeypatch):
    monkeypatch.setattr(minift.run.search, "run_trial", _fake_trial)
    result = search("finetune", out=str(tmp_path / "s"), options=options(tiny, files),
                    grid=["lr=1e-4,3e-4", "batch_size=4,8"], seeds=3)
    assert json.loads(json.dumps(result)) == copy.deepcopy(result)
    row = result["configs"][0]
    assert set(row) >= {"config", "mean", "std", "per_seed", "seconds", "steps"}
    assert [run["seed"] for run in row["per_seed"]] == [0, 1, 2]
    assert set(result["chosen"]) >= {"config", "mean", "std", "test"}


def test_rows_hold_the_mean_and_sample_std_over_the_seeds(tiny, files, tmp_path, monkeypatch):
    """A configuration's row: the mean and the sample standard deviation (n - 1) of its seeds'
    dev scores, and the mean of every other dev metric; the chosen configuration's test scores
    the same over its seeds' models. The seeds' scores are not evenly spaced, so a median, the
    first seed's score or the population deviation would each differ."""
    from minift.run.recipes import classify

    by_seed = [0.5, 0.6, 0.9]

    def trial(task, fixed, config, seed, folder):
        record = _fake_trial(task, fixed, config, seed, folder)
        record["dev"] = {"accuracy": by_seed[seed] * config["lr"] * 1e3, "f1": by_seed[seed] ** 2}
        return record

    test_scores = iter([0.25, 0.5, 1.0])
    monkeypatch.setattr(minift.run.search, "run_trial", trial)
    monkeypatch.setattr(classify, "score_saved", lambda *args: {"accuracy": next(test_scores)})
    result = search("finetune", out=str(tmp_path / "s"), options=options(tiny, files),
                    grid=["lr=1e-4,3e-4"], seeds=3, test=files["test"])

    def mean_and_std(values):
        mean = sum(values) / len(values)
        return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))

    for row, lr in zip(result["configs"], (1e-4, 3e-4), strict=True):
        values = [x * lr * 1e3 for x in by_seed]
        assert [run["value"] for run in row["per_seed"]] == values
        mean, std = mean_and_std(values)
        assert math.isclose(row["mean"], mean, rel_tol=1e-12)
        assert math.isclose(row["std"], std, rel_tol=1e-12)
        assert math.isclose(row["dev"]["f1"], mean_and_std([x**2 for x in by_seed])[0],
                            rel_tol=1e-12)
    test = result["chosen"]["test"]
    assert result["chosen"]["config"] == {"lr": 3e-4}
    assert [run["accuracy"] for run in test["per_seed"]] == [0.25, 0.5, 1.0]
    mean, std = mean_and_std([0.25, 0.5, 1.0])
    assert math.isclose(test["mean"], mean, rel_tol=1e-12)
    assert math.isclose(test["std"], std, rel_tol=1e-12)


# --------------------------------------------------------------------------------------------
# What the search added to finetune: a test file, the dropout
# --------------------------------------------------------------------------------------------


def test_finetune_scores_its_test_file_once_with_the_dropout_it_was_given(tiny, files, tmp_path,
                                                                         monkeypatch):
    from minift.run.recipes import finetune

    reads = count_reads(monkeypatch, files["test"])
    metrics = finetune(**options(tiny, files, dev=None), dev_from_train=4, test=files["test"],
                       dropout=0.3, out=str(tmp_path / "o"), progress=False)
    assert len(reads) == 1
    assert metrics["train"]["examples"] == len(SENTENCES) * 2 - 4
    assert set(metrics["test"]) >= {"accuracy", "f1", "loss"}
    saved = json.loads((tmp_path / "o" / "config.json").read_text())
    assert saved["classifier_dropout"] == 0.3
    with pytest.raises(ValueError, match="dev FILE or dev_from_train N, not both"):
        finetune(**options(tiny, files), dev_from_train=4, out=str(tmp_path / "p"))
    with pytest.raises(ValueError, match=r"dropout must be in \[0, 1\)"):
        finetune(**options(tiny, files), dropout=1.0, out=str(tmp_path / "p"), progress=False)


# --------------------------------------------------------------------------------------------
# Generation: seq2seq chosen on dev BLEU, lm on held-out perplexity, their test sets scored as
# their recipes score dev
# --------------------------------------------------------------------------------------------

TEST_ROWS = [("name[Aromi]", "Aromi is a Thai place."), ("name[Cotto], food[Thai]", "Cotto serves "
             "Thai food."), ("name[Cotto], food[Thai]", "Thai food at the Cotto.")]


def seq2seq_options(tiny, tmp_path, **more):
    """A seq2seq command's options: the tiny model, E2E-like rows, beam search on dev; twenty
    steps at 3e-2 teach the tiny model words of the references (dev BLEU above 0)."""
    return {"model": str(tiny), "train": str(csv(tmp_path / "train.csv", ROWS)),
            "dev": str(csv(tmp_path / "dev.csv", ROWS[:4])), "source_col": "mr",
            "target_col": "ref", "max_length": 32, "max_target_length": 16, "max_new_tokens": 8,
            "batch_size": 4, "max_steps": 20, "eval_every": 20, "num_beams": 3,
            "length_penalty": 2.0, "no_repeat_ngram_size": 2, "device": "cpu"} | more


def test_seq2seq_search_chooses_on_dev_bleu_and_scores_test_as_generate_writes_it(
        tiny, tmp_path, capsys, monkeypatch):
    """A seq2seq search ranks configurations by dev BLEU, higher first: each trial's value is its
    run's own dev BLEU (metrics.json) and the chosen one has the highest (the grid lists the
    better rate second, so a search that minimised would pick the other). The test file is read
    once, and the chosen model's test BLEU and ROUGE-L are sacrebleu's and rouge-score's on what
    ``minift generate`` writes from ``model/`` with the same decoding flags, one text a distinct
    test source (abs 1e-9)."""
    test = csv(tmp_path / "test.csv", TEST_ROWS)
    reads = count_reads(monkeypatch, str(test))
    out = tmp_path / "s"
    result = search("seq2seq", out=str(out), options=seq2seq_options(tiny, tmp_path),
                    grid=["lr=1e-4,3e-2"], seeds=1, test=str(test))
    assert len(reads) == 1, "the test file is read once"
    assert (result["metric"], result["greater_is_better"]) == ("bleu", True)
    for row in result["configs"]:
        run = json.loads((out / "trials" / row["trials"][0] / "metrics.json").read_text())
        assert row["per_seed"][0]["value"] == run["dev"]["bleu"] == row["mean"]
    means = [row["mean"] for row in result["configs"]]
    assert means[1] > means[0] and result["chosen"]["config"] == {"lr": 3e-2}

    from minift.data.text_pairs import group_by_source, read_text_pairs

    examples = group_by_source(read_text_pairs(test, source_col="mr", target_col="ref"))
    lines = generate_lines(capsys, out / "model", [e.source for e in examples],
                           tmp_path / "sources.txt", "--num-beams", 3, "--length-penalty", 2.0,
                           "--no-repeat-ngram-size", 2, "--max-new-tokens", 8)
    bleu, rouge_l = reference_scores(lines, examples)
    [scored] = result["chosen"]["test"]["per_seed"]
    assert result["chosen"]["test"]["examples"] == len(TEST_ROWS)
    assert math.isclose(scored["bleu"], bleu, abs_tol=1e-9) and bleu > 0
    assert math.isclose(scored["rouge_l"], rouge_l, abs_tol=1e-9)
    assert scored["sources"] == 2 and math.isfinite(scored["loss"])


def test_lm_search_from_the_command_line_minimises_held_out_perplexity(tiny, tmp_path, capsys):
    """``minift search lm`` ranks configurations by held-out perplexity, lower first (the
    chosen mean is the smallest, of two that differ), each trial's value its run's own; the
    test file's perplexity of the chosen model is exp of the token-weighted mean of transformers'
    ``BertLMHeadModel`` loss over its passages, each ``[CLS] passage [SEP]`` as transformers'
    tokenizer cuts it (rel 1e-5)."""
    import torch
    import transformers

    def lines(name, texts):
        path = tmp_path / name
        path.write_text("".join(f"{t}\n" for t in texts), encoding="utf-8")
        return path

    text = lines("text.txt", [f"the aromi serves thai food number {i}" for i in range(16)])
    held = lines("held.txt", ["the cotto serves thai food", "the aromi is by the river"])
    test = lines("test.txt", ["thai food at the aromi", "the cotto is a coffee shop near the "
                              "river , serving cheap thai food all day"])
    out = tmp_path / "s"
    code = main(["search", "lm", "--model", str(tiny), "--text", str(text), "--eval-text",
                 str(held), "--max-length", "12", "--batch-size", "4", "--max-steps", "3",
                 "--grid", "lr=1e-4,3e-2", "--seeds", "1", "--test", str(test), "--device",
                 "cpu", "--no-progress", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    result = json.loads((out / "search.json").read_text())
    assert (result["metric"], result["greater_is_better"]) == ("perplexity", False)
    for row in result["configs"]:
        run = json.loads((out / "trials" / row["trials"][0] / "metrics.json").read_text())
        assert row["mean"] == run["after"]["perplexity"]
    means = [row["mean"] for row in result["configs"]]
    assert means[0] != means[1] and result["chosen"]["mean"] == min(means)

    hf = transformers.BertLMHeadModel.from_pretrained(out / "model").eval()
    tokenizer = transformers.BertTokenizerFast.from_pretrained(out / "model")
    total = count = 0.0
    with torch.no_grad():
        for passage in ["thai food at the aromi", "the cotto is a coffee shop near the river , "
                        "serving cheap thai food all day"]:
            ids = tokenizer(passage, truncation=True, max_length=12,
                            return_tensors="pt")["input_ids"]
            targets = ids.size(1) - 1
            total += hf(input_ids=ids, labels=ids).loss.item() * targets
            count += targets
    [scored] = result["chosen"]["test"]["per_seed"]
    assert scored["tokens"] == count
    assert math.isclose(scored["perplexity"], math.exp(total / count), rel_tol=1e-5)


def test_seq2seq_and_lm_searches_check_the_model_before_any_trial(tiny, tmp_path, monkeypatch):
    """What the recipes check against the model (a decoder alone given to seq2seq, lengths the
    positions cannot hold) stops a search before its first trial and before its folder."""
    from minift.tasks.lm import LanguageModel

    monkeypatch.setattr(minift.run.search, "run_trial", lambda *a, **k: pytest.fail("trial ran"))
    LanguageModel.from_pretrained(tiny).save_pretrained(tmp_path / "lm")
    text = tmp_path / "text.txt"
    text.write_text("the aromi serves thai food\n" * 4, encoding="utf-8")
    out = tmp_path / "s"
    cases = [("seq2seq", seq2seq_options(tmp_path / "lm", tmp_path), "is a language model"),
             ("seq2seq", seq2seq_options(tiny, tmp_path, max_target_length=65),
              "max_target_length 65 does not fit the decoder"),
             ("lm", {"model": str(tiny), "text": [str(text)], "max_length": 65},
              "max_length 65 is more than the model's 64 positions"),
             ("lm", {"model": str(tmp_path / "lm"), "text": [str(text)], "max_length": 16},
              None)]
    for task, fixed, message in cases:
        if message is None:  # a language model's folder is a good start for lm
            minift.run.search._check_against_model(task, fixed, [{"lr": 1e-4}])
            continue
        with pytest.raises(ValueError, match=message):
            search(task, out=str(out), options=fixed, grid=["lr=1e-4"], seeds=1)
        assert not out.exists()
