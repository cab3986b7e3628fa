"""The `minift` command: a tiny real fine-tune end to end, and bad input stopped before training."""

import json

import pytest
import torch
import transformers

import minift.run.recipes
from minift.data.tokenizer import Tokenizer
from minift.run.cli import main
from minift.run.recipes import finetune

SENTENCES = [
    ("a gripping , beautifully acted film", "1"),
    ("dull , lifeless and far too long", "0"),
    ("one of the best movies of the year", "1"),
    ("a mess from start to finish", "0"),
    ("funny , warm and wise", "1"),
    ("i wanted my two hours back", "0"),
] * 4


def write_tsv(path, rows, header="text\tlabel"):
    path.write_text(header + "\n" + "".join(f"{t}\t{label}\n" for t, label in rows),
                    encoding="utf-8")
    return path


@pytest.fixture()
def files(tmp_path):
    return (write_tsv(tmp_path / "train.tsv", SENTENCES),
            write_tsv(tmp_path / "dev.tsv", SENTENCES[:6]))


def test_tiny_finetune_writes_a_model_transformers_loads(files, tmp_path, minilm_dir):
    train, dev = files
    out = tmp_path / "out"
    code = main(["finetune", "--model", str(minilm_dir), "--train", str(train), "--dev", str(dev),
                 "--max-steps", "2", "--batch-size", "8", "--max-length", "32",
                 "--no-progress", "--out", str(out)])
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["dev"]) >= {"accuracy", "f1", "loss"}
    assert set(metrics["before"]) >= {"accuracy", "f1"}
    assert metrics["train"]["steps"] == 2
    assert 0.0 <= metrics["dev"]["accuracy"] <= 1.0

    # The written folder is an HF sequence classifier with identical logits.
    from minift.tasks.classify import SequenceClassifier

    ours = SequenceClassifier.from_pretrained(out).eval()
    ref = transformers.BertForSequenceClassification.from_pretrained(out).eval()
    assert ref.config.id2label == {0: "0", 1: "1"}
    batch = Tokenizer.from_pretrained(out)([t for t, _ in SENTENCES[:6]], max_length=32)
    with torch.no_grad():
        torch.testing.assert_close(ours(**batch).logits, ref(**batch).logits, atol=1e-5, rtol=0)


@pytest.fixture()
def no_training(monkeypatch):
    """Fail the test if training is ever reached: bad input must stop before it."""

    def refuse(*args, **kwargs):
        raise AssertionError("training started despite bad input")

    monkeypatch.setattr(minift.run.recipes.skeleton, "train", refuse)


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(lr=0.0), "lr must be positive, got 0.0"),
        (dict(lr=-1e-5), "lr must be positive"),
        (dict(batch_size=0), "batch_size must be at least 1, got 0"),
        (dict(epochs=0), "epochs must be at least 1"),
        (dict(max_steps=-3), "max_steps must be at least 1"),
        (dict(freeze="last-99"), "freeze mode"),
        (dict(model="/no/such/folder"), "does not exist"),
    ],
)
def test_bad_settings_stop_before_training(files, tmp_path, minilm_dir, no_training, change,
                                           message):
    train, dev = files
    kwargs = dict(model=str(minilm_dir), train=str(train), dev=str(dev), out=str(tmp_path / "o"),
                  progress=False) | change
    with pytest.raises(ValueError, match=message):
        finetune(**kwargs)


def test_bad_files_stop_before_training_with_file_and_line(tmp_path, minilm_dir, no_training):
    train = write_tsv(tmp_path / "train.tsv", SENTENCES)
    cases = {
        # dev label never seen in training: line 3 (header is line 1)
        "unknown.tsv": ("text\tlabel\nfine\t1\nodd\t7\n", "unknown.tsv:3"),
        "empty_text.tsv": ("text\tlabel\nfine\t1\n   \t0\n", "empty_text.tsv:3"),
        "malformed.tsv": ("text\tlabel\nfine\t1\nno label column here\n", "malformed.tsv:3"),
        "empty.tsv": ("", "empty.tsv"),
    }
    for name, (text, where) in cases.items():
        dev = tmp_path / name
        dev.write_text(text, encoding="utf-8")
        with pytest.raises(ValueError, match=where):
            finetune(model=str(minilm_dir), train=str(train), dev=str(dev),
                     out=str(tmp_path / "o"), progress=False)


def test_cli_reports_bad_input_in_one_line(tmp_path, capsys, minilm_dir):
    train = write_tsv(tmp_path / "train.tsv", SENTENCES)
    code = main(["finetune", "--model", str(minilm_dir), "--train", str(train), "--dev",
                 str(tmp_path / "missing.tsv"), "--out", str(tmp_path / "o")])
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("minift: error:") and "missing.tsv" in err


def test_similarity_command_prints_scores(capsys, minilm_dir):
    assert main(["similarity", "--model", str(minilm_dir),
                 "--pair", "A cat sat on the mat. ||| A cat was sitting on a rug."]) == 0
    out = capsys.readouterr().out
    score = float(out.strip().splitlines()[-1].split()[0])
    assert 0.5 < score <= 1.0  # two paraphrases: clearly similar
