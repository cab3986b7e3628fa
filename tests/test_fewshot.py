"""minift.run.recipes.fewshot, `minift setfit` as a user calls it: a tiny run over two seeds
writes each seed's scores, their mean and spread, and the seed-0 model; `--max-steps` caps the
contrastive phase; one class or too few examples for the shots are refused. (SetFit itself is
tested in test_setfit.py.)"""

import json
import math

import numpy as np
import pytest

from minift.core.contrastive import contrastive_pairs
from minift.run.cli import main
from minift.tasks.setfit import SetFitModel

pytestmark = pytest.mark.usefixtures("one_thread")


def _write_tsv(path, rows):
    path.write_text("sentence\tlabel\n" + "".join(f"{t}\t{y}\n" for t, y in rows))


def test_cli_tiny_run_writes_metrics(tiny_dir, sst2, tmp_path, capsys):
    _write_tsv(tmp_path / "train.tsv", [(ex.text, ex.label) for ex in sst2[0][:40]])
    _write_tsv(tmp_path / "dev.tsv", [(ex.text, ex.label) for ex in sst2[1][:16]])
    code = main(
        [
            "setfit",
            "--model",
            str(tiny_dir),
            "--train",
            str(tmp_path / "train.tsv"),
            "--dev",
            str(tmp_path / "dev.tsv"),
            "--text-col",
            "sentence",
            "--shots",
            "3",
            "--seeds",
            "2",
            "--max-length",
            "64",
            "--out",
            str(tmp_path / "out"),
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "contrastive pairs: " in printed  # the count is printed before training
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    dev = metrics["dev"]
    assert [run["seed"] for run in dev["per_seed"]] == [0, 1]
    scores = [run["accuracy"] for run in dev["per_seed"]]
    assert all(0.0 <= s <= 1.0 for s in scores)
    assert dev["accuracy_mean"] == pytest.approx(np.mean(scores))
    assert dev["accuracy_std"] == pytest.approx(np.std(scores, ddof=1))
    assert metrics["train"]["pairs"] == len(contrastive_pairs([0] * 3 + [1] * 3))
    assert SetFitModel.from_pretrained(tmp_path / "out" / "model").labels == ["0", "1"]


def test_cli_max_steps_caps_the_contrastive_phase(tiny_dir, sst2, tmp_path, capsys):
    """--max-steps reaches SetFitConfig: 8 shots of 2 classes make 144 pairs (9 steps of 16):
    2 * (8 * 9 / 2) = 72 same-class pairs (self-pairs included) and 8 * 8 = 64 others,
    oversampled to 72 each; the cap stops at 2, and a cap above the steps changes nothing."""
    _write_tsv(tmp_path / "train.tsv", [(ex.text, ex.label) for ex in sst2[0][:60]])
    _write_tsv(tmp_path / "dev.tsv", [(ex.text, ex.label) for ex in sst2[1][:8]])
    base = ["setfit", "--model", str(tiny_dir), "--train", str(tmp_path / "train.tsv"),
            "--dev", str(tmp_path / "dev.tsv"), "--text-col", "sentence", "--seeds", "1",
            "--max-length", "32", "--no-progress"]
    full = math.ceil(len(contrastive_pairs([0] * 8 + [1] * 8)) / 16)
    for cap, steps in ((2, 2), (full + 5, full)):
        out = tmp_path / f"out{cap}"
        assert main([*base, "--max-steps", str(cap), "--out", str(out)]) == 0
        train = json.loads((out / "metrics.json").read_text())["train"]
        assert (train["steps"], train["pairs"]) == (steps, 144)
        assert ("capped at max_steps=2" in capsys.readouterr().out) == (cap == 2)
    assert main([*base, "--max-steps", "0", "--out", str(tmp_path / "bad")]) == 2
    assert "--max-steps must be at least 1, got 0" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


def test_cli_refuses_one_class_and_too_few_examples(tiny_dir, sst2, tmp_path, capsys):
    _write_tsv(tmp_path / "one.tsv", [(ex.text, "1") for ex in sst2[0][:10]])
    _write_tsv(tmp_path / "few.tsv", [(ex.text, ex.label) for ex in sst2[0][:10]])
    base = [
        "setfit",
        "--model",
        str(tiny_dir),
        "--text-col",
        "sentence",
        "--max-length",
        "64",
        "--out",
        str(tmp_path / "out"),
    ]
    assert (
        main([*base, "--train", str(tmp_path / "one.tsv"), "--dev", str(tmp_path / "one.tsv")]) == 2
    )
    assert "found a single label" in capsys.readouterr().err
    assert (
        main(
            [
                *base,
                "--train",
                str(tmp_path / "few.tsv"),
                "--dev",
                str(tmp_path / "few.tsv"),
                "--shots",
                "50",
            ]
        )
        == 2
    )
    assert "fewer than the 50 shots" in capsys.readouterr().err
    assert not (tmp_path / "out" / "metrics.json").exists()

