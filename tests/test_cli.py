"""minift.run.cli, the `minift` command: a tiny real fine-tune end to end; the command line as a new
or hostile user meets it (fast help, named errors before anything is loaded, one writer per output
folder, small output folders, no held-out set scored twice); and every command's options held to a
record.

Most cases run `minift.run.cli.main` in this process (exit code and stderr are what a shell sees);
the help case runs in a subprocess, since what it checks is what the interpreter imported.

``tests/data/cli_options.json`` was written from the parser on main at 2f309d1, before the package
moved into layers (issue #30); the options are now generated from dataclasses
(``minift/run/options.py``), and ``test_a_command_offers_the_recorded_options`` holds the generated
parser to the record: the same flags, defaults, types, choices, required-ness and arity for every
subcommand. A change to the command line is made on purpose by regenerating the record:

    python -c "import sys; sys.path.insert(0, 'tests'); from test_cli import record; record()"
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers

import minift.core.loop
import minift.run.recipes
from minift.core.model import BertConfig, BertModel
from minift.data.tokenizer import Tokenizer
from minift.run import lock
from minift.run.cli import build_parser, main
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
    """With ``--pooling pooler`` (BERT's, the one transformers has) the folder loads in
    transformers with the same logits. MiniLM's own pooling, mean, is the default (recorded in
    config.json; tests/test_classify.py shows what transformers makes of it)."""
    train, dev = files
    out = tmp_path / "out"
    code = main(["finetune", "--model", str(minilm_dir), "--train", str(train), "--dev", str(dev),
                 "--max-steps", "2", "--batch-size", "8", "--max-length", "32",
                 "--pooling", "pooler", "--no-progress", "--out", str(out)])
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
    """Each pair's cosine is that of the model card's recipe for all-MiniLM-L6-v2 (transformers'
    BertModel, mean pooling over the mask, L2 normalisation), to the 3 decimals printed (within
    5e-4 of rounding, plus 1e-5 of float noise)."""
    pairs = [("A cat sat on the mat.", "A cat was sitting on a rug."),
             ("The stock market fell sharply today.", "A cat was sitting on a rug.")]
    assert main(["similarity", "--model", str(minilm_dir),
                 *(arg for a, b in pairs for arg in ("--pair", f"{a} ||| {b}"))]) == 0
    out = capsys.readouterr().out
    scores = [float(line.split()[0]) for line in out.strip().splitlines()[-len(pairs):]]
    tokenizer = transformers.AutoTokenizer.from_pretrained(minilm_dir)
    reference = transformers.BertModel.from_pretrained(minilm_dir).eval()

    def embed(texts: list[str]) -> torch.Tensor:
        batch = tokenizer(texts, padding=True, return_tensors="pt")
        with torch.no_grad():
            hidden = reference(**batch).last_hidden_state
        mask = batch["attention_mask"][..., None].float()
        return torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)

    expected = (embed([a for a, _ in pairs]) * embed([b for _, b in pairs])).sum(-1).tolist()
    assert scores == pytest.approx(expected, abs=5e-4 + 1e-5), (scores, expected)
    assert scores[0] > 0.5 > scores[1]  # the paraphrases clearly similar, the others not


REPO = Path(__file__).resolve().parents[1]


ROWS = [("a gripping , beautifully acted film", "1"), ("dull , lifeless and far too long", "0"),
        ("one of the best movies of the year", "1"), ("a mess from start to finish", "0")] * 3


@pytest.fixture()
def tsv_files(tmp_path) -> dict[str, str]:
    """A train and a dev file of ROWS, by name."""
    for name in ("train", "dev"):
        (tmp_path / f"{name}.tsv").write_text(
            "text\tlabel\n" + "".join(f"{t}\t{y}\n" for t, y in ROWS), encoding="utf-8")
    return {"train": str(tmp_path / "train.tsv"), "dev": str(tmp_path / "dev.tsv")}


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture()
def no_loading(monkeypatch):
    """Fail the test if a model is ever loaded: bad input must stop before."""

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded despite bad input")

    monkeypatch.setattr(minift.run.recipes.skeleton, "run_recipe", refuse)  # the loop's recipes
    monkeypatch.setattr("minift.hf.checkpoint.load_bert", refuse)  # similarity
    monkeypatch.setattr(minift.run.recipes.fewshot, "load_bert", refuse)  # setfit


def finetune_args(model, files, out, *extra) -> list[str]:
    return ["finetune", "--model", model, "--train", files["train"], "--dev", files["dev"],
            "--max-length", "32", "--batch-size", "4", "--no-progress", "--out", out, *extra]


def _counting(monkeypatch, scores: list[float] | None = None) -> list:
    """Count calls of `classification_metrics`; with `scores`, report those accuracies in turn."""
    calls = []
    real = minift.run.recipes.classify.classification_metrics

    def counted(*args, **kwargs):
        result = real(*args, **kwargs)
        if scores is not None:
            result["accuracy"] = scores[len(calls)]
        calls.append(result)
        return result

    monkeypatch.setattr(minift.run.recipes.classify, "classification_metrics", counted)
    return calls


def test_help_imports_no_torch():
    script = (
        "import sys\n"
        "import minift\n"
        "assert 'torch' not in sys.modules, 'import minift imported torch'\n"
        "from minift.run.cli import main\n"
        "for argv in ([], ['finetune'], ['ner'], ['pretrain'], ['setfit'], ['similarity'], ['plot']):\n"
        "    try:\n"
        "        main([*argv, '--help'])\n"
        "    except SystemExit:\n"
        "        pass\n"
        "heavy = sorted(m for m in ('torch', 'matplotlib', 'minift.core.model', 'minift.run.recipes')\n"
        "                if m in sys.modules)\n"
        "print('HEAVY', heavy)\n"
    )
    env = os.environ | {"PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env,
                          cwd=REPO, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "HEAVY []" in done.stdout
    # python -m minift --help itself: -X importtime lists every module the interpreter imported
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", "minift", "--help"],
                          capture_output=True, text=True, env=env, cwd=REPO, timeout=120)
    assert done.returncode == 0 and "finetune" in done.stdout
    imported = {line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines()}
    assert "torch" not in imported and "minift.run.cli" in imported


def test_lazy_package_attributes():
    import minift

    assert minift.BertModel is BertModel and minift.BertConfig is BertConfig
    with pytest.raises(AttributeError):
        minift.NoSuchThing  # noqa: B018


@pytest.mark.parametrize("command", ["finetune", "ner", "pretrain", "setfit", "qa",
                                     "similarity"])
def test_help_shows_defaults_groups_and_no_rst(command, capsys):
    with pytest.raises(SystemExit):
        main([command, "--help"])
    text = capsys.readouterr().out
    assert "`" not in text
    assert "(default: minilm)" in text
    assert "--no-progress" in text and "--device" in text
    if command != "similarity":
        assert "model and data:" in text and "training:" in text and "run:" in text
        assert "(default: None)" not in text and "(default: False)" not in text


def test_version(capsys):
    with pytest.raises(SystemExit) as exit:
        main(["--version"])
    assert exit.value.code == 0 and capsys.readouterr().out.startswith("minift 0.")


def test_text_col_has_one_default():
    parser = build_parser()
    common = ["--train", "a", "--dev", "b", "--out", "o"]
    defaults = {command: parser.parse_args([command, *common]).text_col
                for command in ("finetune", "setfit")}
    assert defaults == {"finetune": "text", "setfit": "text"}


@pytest.mark.parametrize("extra, expected", [
    (["--lr", "nan"], "--lr must be positive, got nan"),
    (["--grad-accum", "0"], "--grad-accum must be at least 1, got 0"),
    (["--eval-every", "0"], "--eval-every must be at least 1, got 0"),
    (["--warmup-ratio", "2"], "--warmup-ratio must be in [0, 1], got 2.0"),
    (["--seed", "-1"], "--seed must be at least 0, got -1"),
    (["--resume"], "resume.pt does not exist"),
    (["--max-length", "65"], "--max-length 65 is more than the model's 64 positions"),
    (["--device", "tpu"], "--device tpu"),
    (["--freeze", "last-9"], "--freeze mode 'last-9'"),
])  # fmt: skip
def test_finetune_refuses_bad_values_before_loading(tiny, tsv_files, tmp_path, capsys, no_loading,
                                                    extra, expected):
    args = finetune_args(tiny, tsv_files, tmp_path / "out", *extra)
    if "--max-length" in extra:
        args.remove("32")
        args.remove("--max-length")
    code, _, err = run(capsys, *args)
    assert code == 2 and err.startswith("minift: error: ") and expected in err, err
    assert len(err.strip().splitlines()) == 1


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a torch without CUDA")
def test_device_cuda_without_cuda(tiny, tsv_files, tmp_path, capsys, no_loading):
    code, _, err = run(capsys, *finetune_args(tiny, tsv_files, tmp_path / "out", "--device", "cuda"))
    assert code == 2 and "--device cuda: this torch sees no CUDA GPU" in err


def test_out_that_cannot_be_created_is_refused_up_front(tiny, tsv_files, tmp_path, capsys,
                                                       no_loading):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    for out in (blocker / "sub", blocker):
        code, _, err = run(capsys, *finetune_args(tiny, tsv_files, out))
        assert code == 2 and f"--out {out}" in err, err


def test_setfit_checks_max_length_against_the_model(tiny, tsv_files, tmp_path, capsys, no_loading):
    code, _, err = run(capsys, "setfit", "--model", tiny, "--train", tsv_files["train"], "--dev",
                       tsv_files["dev"], "--shots", "2", "--max-length", "100", "--out",
                       tmp_path / "out")
    assert code == 2 and "--max-length 100 is more than the model's 64 positions" in err


def test_similarity_refuses_empty_texts(capsys, no_loading):
    for pair in ("|||", "a cat |||", " ||| a dog"):
        code, _, err = run(capsys, "similarity", "--pair", pair)
        assert code == 2 and "both sentences must be non-empty" in err


def test_ner_refuses_a_training_set_without_targets(minilm_dir, tmp_path, capsys, no_loading):
    train, dev = tmp_path / "train.txt", tmp_path / "dev.txt"
    train.write_text("\u200b B-PER\n\u200b O\n\n\u200b O\n\n", encoding="utf-8")
    dev.write_text("Paris B-PER\nis O\n\n", encoding="utf-8")
    code, _, err = run(capsys, "ner", "--model", minilm_dir, "--train", train, "--dev", dev,
                       "--no-progress", "--out", tmp_path / "out")
    assert code == 2 and f"{train}:1: no word of the 2 sentences produced a sub-word token" in err, err


def test_task_data_folder_is_found_or_named_in_the_error(tmp_path, monkeypatch, capsys,
                                                         no_loading, minilm_dir):
    monkeypatch.delenv("MINIFT_DATA", raising=False)
    monkeypatch.setattr(minift.run.recipes.prepare, "DEFAULT_DATA", tmp_path / "nowhere")
    code, _, err = run(capsys, "finetune", "--model", minilm_dir, "--task", "sst2", "--out",
                       tmp_path / "out")
    assert code == 2 and "--data-dir" in err and "MINIFT_DATA" in err and "data_dir=" not in err
    code, _, err = run(capsys, "finetune", "--model", minilm_dir, "--task", "sst2", "--data-dir",
                       tmp_path / "missing", "--out", tmp_path / "out")
    assert code == 2 and f"--data-dir {tmp_path / 'missing'}: no such folder" in err
    monkeypatch.setattr(minift.run.recipes.prepare, "DEFAULT_DATA", tmp_path)  # in the repository
    assert minift.run.recipes.data_folder() == tmp_path
    monkeypatch.setenv("MINIFT_DATA", str(tmp_path / "env"))
    with pytest.raises(ValueError, match="MINIFT_DATA=.*no such folder"):
        minift.run.recipes.data_folder()


def _write_lock(folder: Path, pid: int, host: str | None = None) -> Path:
    import socket

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / lock.LOCK_NAME
    path.write_text(json.dumps({"pid": pid, "host": host or socket.gethostname()}))
    return path


def test_second_run_on_a_locked_folder_is_refused(tiny, tsv_files, tmp_path, capsys, no_loading):
    out = tmp_path / "out"
    held = _write_lock(out, os.getppid())
    code, _, err = run(capsys, *finetune_args(tiny, tsv_files, out))
    assert code == 2 and f"{out} is in use by process {os.getppid()}" in err
    assert held.exists()  # the other run's lock stays


@pytest.mark.parametrize("failure, status, expected", [
    (KeyboardInterrupt(), 130, "minift: interrupted"),
    (OSError(28, "No space left on device"), 1, "minift: error: [Errno 28] No space left"),
])  # fmt: skip
def test_failures_during_training_are_one_line(tiny, tsv_files, tmp_path, capsys, monkeypatch,
                                               failure, status, expected):
    def fail(*args, **kwargs):
        raise failure

    monkeypatch.setattr(minift.run.recipes.skeleton, "train", fail)
    out = tmp_path / "out"
    code, _, err = run(capsys, *finetune_args(tiny, tsv_files, out))
    assert code == status and expected in err
    assert len(err.strip().splitlines()) == 1
    assert not (out / lock.LOCK_NAME).exists()


def test_finished_run_keeps_model_metrics_and_log_and_scores_dev_once_per_weights(
        tiny, tsv_files, tmp_path, capsys, monkeypatch):
    calls = _counting(monkeypatch)
    out = tmp_path / "out"
    code, stdout, err = run(capsys, *finetune_args(tiny, tsv_files, out, "--max-steps", "2"))
    assert code == 0, err
    assert len(calls) == 2  # before, and the end (the best step is the last: no third scoring)
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "metrics.json",
            "log.jsonl"} <= names
    assert not names & {"best", "run", "resume.pt", lock.LOCK_NAME}
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["dev"] == calls[-1] and metrics["train"]["best_step"] == 2
    assert any("eval" in json.loads(line) for line in (out / "log.jsonl").read_text().splitlines())


def test_best_step_before_the_last_is_the_saved_model(tiny, tsv_files, tmp_path, capsys,
                                                      monkeypatch):
    calls = _counting(monkeypatch, scores=[0.5, 0.9, 0.1, 0.9])  # before, step 1, step 2, best
    out = tmp_path / "out"
    code, _, err = run(capsys, *finetune_args(tiny, tsv_files, out, "--max-steps", "2",
                                              "--eval-every", "1", "--keep-resume"))
    assert code == 0, err
    assert len(calls) == 4  # the best weights (step 1) are scored once more, after reloading
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["train"]["best_step"] == 1 and math.isclose(metrics["dev"]["accuracy"], 0.9)
    assert metrics["dev"]["loss"] == pytest.approx(calls[1]["loss"])  # same weights as step 1
    names = {p.name for p in out.iterdir()}
    assert "resume.pt" in names and "best" not in names  # --keep-resume keeps it


def test_setfit_one_seed_reads_as_one_seed(tiny, tsv_files, tmp_path, capsys):
    code, stdout, err = run(capsys, "setfit", "--model", tiny, "--train", tsv_files["train"],
                            "--dev", tsv_files["dev"], "--shots", "2", "--seeds", "1",
                            "--max-length", "32", "--no-progress", "--out", tmp_path / "out")
    assert code == 0, err
    assert "1 seed;" in stdout and "over 1 seed:" in stdout
    assert "1 seeds" not in stdout and "+/-" not in stdout


RECORD = Path(__file__).parent / "data" / "cli_options.json"


COMPARED = ("flags", "default", "type", "choices", "required", "nargs")


def describe(parser: argparse.ArgumentParser) -> dict:
    rows = {}
    for action in parser._actions:
        if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction,
                               argparse._VersionAction)):
            continue
        default = action.default
        if not isinstance(default, (int, float, str, bool, type(None), list)):
            default = repr(default)
        rows[action.option_strings[0] if action.option_strings else action.dest] = {
            "flags": list(action.option_strings), "dest": action.dest, "default": default,
            "type": getattr(action.type, "__name__", None) if action.type else None,
            "choices": list(action.choices) if action.choices else None,
            "required": action.required, "nargs": action.nargs, "kind": type(action).__name__,
        }
    return rows


def commands(parser: argparse.ArgumentParser, prefix: str = "") -> dict:
    found = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                path = f"{prefix} {name}".strip()
                found[path] = describe(sub)
                found.update(commands(sub, path))
    return found


def record() -> None:
    """Rewrite the record from the live parser (a change to the command line made on purpose)."""
    RECORD.write_text(json.dumps(commands(build_parser()), indent=1, sort_keys=True))


RECORDED = json.loads(RECORD.read_text())


LIVE = commands(build_parser())


def test_the_same_commands():
    assert sorted(LIVE) == sorted(RECORDED)


@pytest.mark.parametrize("command", sorted(RECORDED))
def test_a_command_offers_the_recorded_options(command):
    live, recorded = LIVE.get(command, {}), RECORDED[command]
    assert sorted(live) == sorted(recorded), (
        f"{command}: missing {sorted(set(recorded) - set(live))}, "
        f"new {sorted(set(live) - set(recorded))}")
    for flag, was in recorded.items():
        now = {key: live[flag][key] for key in COMPARED}
        assert now == {key: was[key] for key in COMPARED}, f"{command} {flag}"


# --- One error path, one vocabulary (issues #31 and #32) -------------------------------------------


def _exit(capsys, *argv) -> tuple[int, str]:
    """Exit status and stderr of ``minift argv``; any exception escaping ``main`` fails the test
    (in a shell it would be a traceback)."""
    try:
        code = main([str(a) for a in argv])
    except SystemExit as stop:  # argparse: usage and one error line
        code = stop.code
    return code, capsys.readouterr().err


@pytest.fixture()
def broken(tmp_path) -> dict[str, Path]:
    """Inputs a careless or unlucky user gives: each must be refused in one line."""
    (tmp_path / "binary.tsv").write_bytes(bytes(range(256)) * 40)
    (tmp_path / "empty.tsv").write_bytes(b"")
    (tmp_path / "latin1.tsv").write_bytes(b"text\tlabel\ncaf\xe9\t1\nthe\t0\n")
    (tmp_path / "list.json").write_text("[1, 2]")
    (tmp_path / "a-folder").mkdir()
    run = tmp_path / "odd-run"  # what plot reads, not as it expects it (issue #31, row 10)
    run.mkdir()
    (run / "log.jsonl").write_text('{"step": 1, "loss": 0.5}\n{"step": 2, "eval": {}}\n[]\n')
    (run / "metrics.json").write_text("[1, 2]")
    return {name: tmp_path / name for name in ("binary.tsv", "empty.tsv", "latin1.tsv",
                                               "list.json", "a-folder", "missing.tsv",
                                               "odd-run")}


def test_no_command_answers_broken_input_with_a_traceback(tiny, tsv_files, tmp_path, capsys,
                                                          broken):
    good = tsv_files["dev"]
    common = ["--model", tiny, "--no-progress", "--out", tmp_path / "out"]
    cases = []
    for bad in broken.values():
        cases += [["finetune", "--train", bad, "--dev", good, *common],
                  ["finetune", "--train", good, "--dev", bad, *common],
                  ["ner", "--train", bad, "--dev", bad, *common],
                  ["pretrain", "--text", bad, *common],
                  ["seq2seq", "--train", bad, "--dev", bad, "--max-length", 32, *common],
                  ["lm", "--text", bad, "--max-length", 32, *common],
                  ["generate", "--model", bad, "--input", good],
                  ["setfit", "--train", bad, "--dev", good, "--shots", "2", *common],
                  ["qa", "--train", bad, "--dev", bad, *common],
                  ["qa", "--model", tiny, "--question", "Who?", "--context-file", bad],
                  ["similarity", "--model", bad],
                  ["plot", bad],
                  ["search", "finetune", "--train", bad, "--dev", good, *common]]
    flags = ["finetune", "--train", good, "--dev", good, *common]
    cases += [[*flags, "--max-steps", 10**30], [*flags, "--seed", 2**64], [*flags, "--seed", -1],
              [*flags, "--limit-dev", 0], [*flags, "--threads", 0], [*flags, "--lr", "inf"],
              [*flags, "--batch-size", "1e3"], [*flags, "--steps", 5],
              ["setfit", "--train", good, "--dev", good, *common, "--seeds", 2**64],
              ["setfit", "--train", good, "--dev", good, *common, "--seed", 2**64],
              ["seq2seq", "--train", good, "--dev", good, *common, "--max-new-tokens", 0],
              ["generate", "--model", tiny, "--input", good],  # an encoder: no decoder
              ["similarity", "--pair", "no separator"],
              ["similarity", "--pair", "caf\udce9 ||| coffee"],  # the shell's b'caf\xe9'
              ["qa", "--model", tiny, "--question", "caf\udce9?", "--context", "x"],
              ["search", "finetune", "--train", good,
                                                          "--dev", good, *common, "--grid", "lr=x"]]
    for argv in cases:
        code, err = _exit(capsys, *argv)
        shown = " ".join(map(str, argv))
        assert code in (1, 2), (shown, code, err)
        assert "Traceback" not in err, (shown, err)
        last = err.strip().splitlines()[-1]
        assert last.startswith("minift") and ": error" in last, (shown, err)
        assert len(err) < 2000, (shown, err)


def test_an_unforeseen_error_is_one_line_and_a_debug_switch_shows_it(tiny, tsv_files, tmp_path,
                                                                      capsys, monkeypatch):
    def crash(*args, **kwargs):
        raise TypeError("an internal slip " + "x" * 5000)

    monkeypatch.setattr(minift.run.recipes.skeleton, "train", crash)
    argv = finetune_args(str(tiny), tsv_files, str(tmp_path / "out"))
    code, err = _exit(capsys, *argv)
    assert code == 1 and err.startswith("minift: error: TypeError: an internal slip")
    assert len(err.strip().splitlines()) == 1 and len(err) < 1000 and "MINIFT_DEBUG=1" in err
    monkeypatch.setenv("MINIFT_DEBUG", "1")
    with pytest.raises(TypeError):
        main(argv)


def test_non_utf8_arguments_are_named_not_a_traceback():
    env = os.environ | {"PYTHONPATH": str(REPO)}
    for argv in ([b"similarity", b"--pair", b"caf\xe9 ||| coffee"],
                 [b"qa", b"--question", b"caf\xe9?", b"--context", b"x"]):
        done = subprocess.run([sys.executable, "-m", "minift", *argv], capture_output=True,
                              env=env, cwd=REPO, timeout=120)
        err = done.stderr.decode()
        assert done.returncode == 2 and "Traceback" not in err, err
        assert f"{argv[1].decode()} b'caf\\xe9" in err and "is not UTF-8 text" in err, err


def test_a_command_refuses_prefixes_and_renamed_flags_with_its_own_usage(capsys, tmp_path):
    files = ["--train", "t.tsv", "--dev", "d.tsv", "--out", str(tmp_path / "o")]
    for argv, expected in [
        (["ner", *files, "--seeds", "3"], "did you mean --seed (for --seeds)?"),
        (["pretrain", "--text", "a", "--out", "o", "--steps", "5"], "--steps is now --max-steps"),
        (["setfit", *files, "--max-dev", "5"], "--max-dev is now --limit-dev"),
        (["finetune", *files, "--max-step", "5"], "did you mean --max-steps"),
        (["finetune", *files, "--lim", "5"], "unrecognized arguments: --lim 5"),  # no prefixes
    ]:
        code, err = _exit(capsys, *argv)
        assert code == 2 and expected in err, err
        assert f"usage: minift {argv[0]}" in err and f"minift {argv[0]}: error:" in err
    args = build_parser().parse_args(["setfit", *files, "--seed", "3"])  # row 7: not --seeds
    assert (args.seed, args.seeds) == (3, 5)


def test_huge_numbers_are_named_errors_not_hangs(tiny, tsv_files, tmp_path, capsys, no_loading):
    files = ["--model", tiny, "--train", tsv_files["train"], "--dev", tsv_files["dev"],
             "--shots", "2", "--no-progress", "--out", tmp_path / "out"]
    code, err = _exit(capsys, "setfit", *files, "--seeds", 2**64)  # row 7: no 10-minute hang
    assert code == 2 and "--seeds 18446744073709551616 is too large" in err, err
    code, err = _exit(capsys, "setfit", *files, "--seeds", 5000)
    assert code == 2 and "--seeds must be at most 1000, got 5000" in err, err
    code, err = _exit(capsys, *finetune_args(tiny, tsv_files, str(tmp_path / "o"), "--seed",
                                             str(2**32)))
    assert code == 2 and "--seed must be at most 4294967295" in err, err


def test_setfit_end_to_end_needs_the_linear_head(tiny, tsv_files, tmp_path, capsys, no_loading):
    args = ["setfit", "--model", tiny, "--train", tsv_files["train"], "--dev", tsv_files["dev"],
            "--shots", "2", "--end-to-end", "--no-progress", "--out", tmp_path / "out"]
    code, err = _exit(capsys, *args)  # row 13: no more end_to_end: true on a frozen encoder
    assert code == 2 and "--end-to-end trains the encoder" in err and "--head linear" in err
    assert not (tmp_path / "out").exists()
    from minift.run.options import SetfitOptions

    assert SetfitOptions(out="o", train="t", dev="d", head="linear", end_to_end=True).end_to_end


@pytest.mark.parametrize("command", ["finetune", "ner", "qa", "setfit"])
def test_limit_dev_scores_a_fixed_subset_of_the_dev_set(command, tiny, tmp_path, capsys,
                                                        monkeypatch, no_loading):
    taken = []
    real = minift.run.recipes.prepare.subset

    def subset(examples, limit, seed):
        taken.append((len(examples), limit, seed))
        return real(examples, limit, seed)

    monkeypatch.setattr(minift.run.recipes.prepare, "subset", subset)
    rows = "".join(f"w{i} x\t{i % 2}\n" for i in range(12))
    tsv = tmp_path / "d.tsv"
    tsv.write_text("text\tlabel\n" + rows, encoding="utf-8")
    conll = tmp_path / "d.txt"
    conll.write_text("".join(f"Paris{i} B-LOC\nis O\n\n" for i in range(12)), encoding="utf-8")
    squad = tmp_path / "d.json"
    contexts = [f"Paris {i} is in France." for i in range(12)]
    paragraphs = [{"context": text, "qas": [{"id": str(i), "question": "Where?", "answers": [
        {"text": "France", "answer_start": text.index("France")}]}]}
        for i, text in enumerate(contexts)]
    squad.write_text(json.dumps({"data": [{"title": "t", "paragraphs": paragraphs}]}))
    data = {"finetune": tsv, "ner": conll, "qa": squad, "setfit": tsv}[command]
    extra = ["--shots", "2"] if command == "setfit" else []
    extra += ["--doc-stride", "8"] if command == "qa" else []
    code, err = _exit(capsys, command, "--model", tiny, "--train", data, "--dev", data,
                      "--limit-dev", 3, "--max-length", 32, "--no-progress", "--out",
                      tmp_path / "o", *extra)
    assert "a model was loaded despite bad input" in err, err  # the data were read, subset
    assert (12, 3, 0) in taken, taken  # the dev set: 3 of 12, drawn with seed 0 whatever --seed
