"""`minift plot`: the curves of a real short run, the comparison of two, and the named errors."""

import json

import pytest

from minift.run.cli import main

matplotlib = pytest.importorskip("matplotlib")  # the optional `plots` extra

from png import assert_picture  # noqa: E402
from test_cli import SENTENCES, write_tsv  # noqa: E402


@pytest.fixture(scope="module")
def run(tmp_path_factory, minilm_dir):
    """A 4-step fine-tune that evaluates twice, drawn by `--plot` when it ends."""
    folder = tmp_path_factory.mktemp("plots")
    train = write_tsv(folder / "train.tsv", SENTENCES)
    dev = write_tsv(folder / "dev.tsv", SENTENCES[:6])
    out = folder / "run"
    code = main(["finetune", "--model", str(minilm_dir), "--train", str(train), "--dev", str(dev),
                 "--max-steps", "4", "--eval-every", "2", "--batch-size", "8",
                 "--max-length", "32", "--no-progress", "--out", str(out), "--plot"])
    assert code == 0
    return out


def test_plot_flag_draws_the_curves_and_the_confusion_matrix(run):
    metrics = json.loads((run / "metrics.json").read_text())
    assert sum(map(sum, metrics["dev"]["confusion"])) == 6  # every dev example counted once
    for name in ("loss.png", "dev_accuracy.png", "dev_f1.png", "dev_loss.png"):
        assert_picture(run / name, (800, 450))
    assert_picture(run / "lr.png", (800, 350))
    assert_picture(run / "confusion.png", (600, 500))


def test_plot_compares_runs_in_the_out_folder(run, tmp_path, capsys):
    other = tmp_path / "other"
    other.mkdir()
    log = (run / "log.jsonl").read_text().splitlines()
    (other / "log.jsonl").write_text("\n".join(log[:2]) + "\n")  # a shorter run, no metrics.json
    out = tmp_path / "compare"
    assert main(["plot", str(run), str(other), "--out", str(out)]) == 0
    assert {"loss.png", "lr.png"} <= {p.name for p in out.iterdir()}
    assert_picture(out / "loss.png", (800, 450))
    assert "wrote" in capsys.readouterr().out


def _error(capsys, folder) -> str:
    assert main(["plot", str(folder)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("minift: error: ") and err.count("\n") == 1
    return err


def test_plot_refuses_a_folder_without_a_log(tmp_path, capsys):
    assert "no log.jsonl" in _error(capsys, tmp_path)


def test_plot_refuses_an_empty_log(tmp_path, capsys):
    (tmp_path / "log.jsonl").write_text("")
    assert "log is empty" in _error(capsys, tmp_path)


def test_plot_names_the_corrupt_line(tmp_path, capsys):
    good = json.dumps({"step": 10, "epoch": 0.5, "loss": 0.7, "lr": 1e-5})
    (tmp_path / "log.jsonl").write_text(good + "\n" + good + "\n" + '{"step": 3, "lo\n')
    assert "log.jsonl:3: not a JSON record" in _error(capsys, tmp_path)


def test_without_matplotlib_lessons_skip_and_commands_refuse(monkeypatch, tmp_path, capsys):
    from minift.run import plots

    monkeypatch.setattr(plots, "available", lambda: False)
    assert plots.lesson_figures(tmp_path / "figures") is None
    assert "figures skipped" in capsys.readouterr().out
    assert not (tmp_path / "figures").exists()
    out = tmp_path / "run"
    assert main(["finetune", "--task", "sst2", "--out", str(out), "--plot"]) == 2
    assert "--plot needs matplotlib" in capsys.readouterr().err
    assert not out.exists()  # refused before anything was written
    (tmp_path / "log.jsonl").write_text('{"step": 1, "loss": 0.5, "lr": 0.1}\n')
    assert "minift plot needs matplotlib" in _error(capsys, tmp_path)


def test_figures_folder_is_emptied_and_holds_what_was_saved(tmp_path):
    from minift.run import plots

    (tmp_path / "figures").mkdir()
    (tmp_path / "figures" / "stale.png").write_bytes(b"old")
    figures = plots.Figures(tmp_path / "figures")
    fig, ax = plots.figure(4, 3)
    ax.plot([0, 1, 2], [2, 0, 1])
    figures.save(fig, "line.png")
    assert [p.name for p in (tmp_path / "figures").iterdir()] == ["line.png"]
    assert_picture(tmp_path / "figures" / "line.png", (400, 300))


# Issue 31, row 10: odd inputs are skipped with a note (or a named error), never a traceback.

TRAIN = {"step": 1, "epoch": 0.1, "loss": 0.7, "lr": 1e-5}
EVAL = {"step": 2, "eval": {"accuracy": 0.5, "loss": 0.69}}


def _odd_run(folder, records, metrics=None):
    folder.mkdir(exist_ok=True)
    (folder / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    if metrics is not None:
        (folder / "metrics.json").write_text(json.dumps(metrics))
    return folder


def _plot(capsys, folder) -> tuple[set[str], str]:
    assert main(["plot", str(folder)]) == 0
    out = capsys.readouterr().out
    return {p.name for p in folder.glob("*.png")}, out


def test_a_log_without_lr_skips_the_lr_figure(tmp_path, capsys):
    lr_less = {k: v for k, v in TRAIN.items() if k != "lr"}
    run = _odd_run(tmp_path / "run", [lr_less, {**lr_less, "step": 2}, EVAL])
    written, out = _plot(capsys, run)
    assert {"loss.png", "dev_accuracy.png"} <= written and "lr.png" not in written
    assert "note: no training record logs an 'lr': lr.png skipped" in out
    run = _odd_run(tmp_path / "mixed", [lr_less, {**TRAIN, "step": 2}])  # one record with lr
    assert "lr.png" in _plot(capsys, run)[0]


def test_metrics_json_that_is_a_list_is_skipped(tmp_path, capsys):
    run = _odd_run(tmp_path / "run", [TRAIN, EVAL], metrics=[1, 2, 3])
    written, out = _plot(capsys, run)
    assert "loss.png" in written and "confusion.png" not in written
    assert f"note: {run / 'metrics.json'} holds a JSON list, not an object" in out


def test_a_confusion_matrix_without_accuracy_is_drawn(tmp_path, capsys):
    metrics = {"labels": ["neg", "pos"], "dev": {"confusion": [[3, 1], [0, 2]]}}
    written, _ = _plot(capsys, _odd_run(tmp_path / "run", [TRAIN, EVAL], metrics))
    assert "confusion.png" in written
    assert_picture(tmp_path / "run" / "confusion.png", (600, 500))


@pytest.mark.parametrize("dev, skipped", [
    ({"confusion": [[3, 1]]}, "dev.confusion is not a square table"),
    ({"confusion": "3 1 0 2"}, "dev.confusion is not a square table"),
    ({"per_type": {"PER": {"f1": 0.5}}}, "dev.per_type is not a table of precision, recall"),
    ({"per_tag": [1, 2]}, "dev.per_tag is not a table"),
])
def test_odd_metrics_are_skipped_with_a_note(tmp_path, capsys, dev, skipped):
    metrics = {"labels": ["neg", "pos"], "dev": dev}
    written, out = _plot(capsys, _odd_run(tmp_path / "run", [TRAIN], metrics))
    assert written == {"loss.png", "lr.png"}
    assert skipped in out


def test_odd_log_values_are_skipped_or_named(tmp_path, capsys):
    odd_eval = {"step": 3, "eval": {"a/b": 0.5, "flag": True, "name": "x", "accuracy": 0.6}}
    written, out = _plot(capsys, _odd_run(tmp_path / "run", [TRAIN, odd_eval]))
    assert written == {"loss.png", "lr.png", "dev_accuracy.png"}
    assert "the metric 'a/b' is not a file name" in out
    _odd_run(tmp_path / "bad", [{"step": True, "loss": 0.5}])
    assert "log.jsonl:1: expected a JSON object with an integer 'step'" in _error(
        capsys, tmp_path / "bad")
    (tmp_path / "bad" / "log.jsonl").write_bytes(b'{"step": 1, "loss": 0.5}\n\xff\n')
    assert "log.jsonl:2: expected UTF-8 text" in _error(capsys, tmp_path / "bad")
