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
