"""minift.run.recipes.prepare: the output folder (never the model's, never the user's, not
another command's run unless `overwrite`; a failed run leaves no folder it created; a resume
finds the run record unchanged or names what differs), and a dev set held out of train."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from recipe_runs import run, sentence_files

import minift.run.recipes
from minift.run.recipes import finetune


@pytest.fixture()
def files(tmp_path):
    return sentence_files(tmp_path)


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



def test_dev_from_train_is_one_split_whatever_the_seed():
    from minift.run.recipes.prepare import dev_from_train as _dev_from_train

    examples = list(range(50))
    train, dev = _dev_from_train(examples, 10, 20, split_seed=0, where="train.tsv")
    assert len(dev) == 10 and len(train) == 20 and not set(train) & set(dev)
    assert _dev_from_train(examples, 10, 20, split_seed=0, where="") == (train, dev)
    assert _dev_from_train(examples, 10, None, split_seed=0, where="")[1] == dev
    assert _dev_from_train(examples, 10, 20, split_seed=1, where="")[1] != dev
    with pytest.raises(ValueError, match="dev_from_train 50: train.tsv has only 50"):
        _dev_from_train(examples, 50, None, split_seed=0, where="train.tsv")

