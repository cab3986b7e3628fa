"""minift.run.trials: every trial starts from the checkpoint bit for bit, whatever ran before
it; trials.jsonl lets a killed search resume (a torn line dropped, a finished trial not run
again) to exactly the search that was never killed, reading its test set once.

The trials train the ``tiny`` fixture a few steps on a few sentences: what is tested is the
bookkeeping and the independence of the runs, not the scores.
"""

import json

import pytest
from search_runs import count_reads, options, search_files, without_time

import minift.run.recipes
from minift.hf.checkpoint import to_hf_state_dict
from minift.hf.safetensors import read_safetensors
from minift.run.search import search

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture()
def files(tmp_path):
    return search_files(tmp_path)


def test_every_trial_starts_from_the_checkpoint_bit_for_bit(tiny, files, tmp_path, monkeypatch):
    started = []
    real_train = minift.run.recipes.skeleton.train

    def recording_train(model, *args, **kwargs):  # the weights the loop receives
        started.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        return real_train(model, *args, **kwargs)

    monkeypatch.setattr(minift.run.recipes.skeleton, "train", recording_train)
    # A wild learning rate first, so that a leak of its trained weights would show.
    search("finetune", out=str(tmp_path / "s"), options=options(tiny, files),
           grid=["lr=0.5,1e-4"], seeds=1)
    assert len(started) == 2
    checkpoint = read_safetensors(tiny / "model.safetensors")
    for weights in started:
        encoder = {k[len("bert."):]: v for k, v in weights.items() if k.startswith("bert.")}
        hf = to_hf_state_dict(encoder)
        assert hf.keys() == checkpoint.keys()
        for name, tensor in checkpoint.items():
            assert hf[name].dtype == tensor.dtype and hf[name].shape == tensor.shape, name
            assert hf[name].view(-1).view(dtype=_int_of(tensor)).equal(
                tensor.view(-1).view(dtype=_int_of(tensor))), name  # bit for bit
    # The fresh head of a seed is the same in every configuration.
    for name in ("classifier.weight", "classifier.bias"):
        assert started[0][name].equal(started[1][name])


def _int_of(tensor):
    import torch

    return {2: torch.int16, 4: torch.int32, 8: torch.int64}[tensor.element_size()]


def test_resume_after_a_kill_gives_the_same_search(tiny, files, tmp_path, monkeypatch):
    grid = ["lr=1e-3,1e-4"]
    common = dict(options=options(tiny, files), grid=grid, seeds=1, test=files["test"])

    reads = count_reads(monkeypatch, files["test"])
    whole = search("finetune", out=str(tmp_path / "whole"), **common)
    assert len(reads) == 1, "the test file is read once"
    assert whole["chosen"]["test"]["examples"] == 4
    assert len(whole["chosen"]["test"]["per_seed"]) == 1

    # A kill during the second trial, after one finished; and a line torn by the kill.
    real_train, calls = minift.run.recipes.skeleton.train, []

    def killed(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_train(*args, **kwargs)

    monkeypatch.setattr(minift.run.recipes.skeleton, "train", killed)
    out = tmp_path / "killed"
    with pytest.raises(KeyboardInterrupt):
        search("finetune", out=str(out), **common)
    assert len((out / "trials.jsonl").read_text().splitlines()) == 1
    assert not (out / "search.json").exists()
    with open(out / "trials.jsonl", "a") as f:
        f.write('{"config": {"lr": 0.0')  # half a record

    calls.clear()  # the same command again: one trial left to run
    resumed = search("finetune", out=str(out), **common)
    assert len(calls) == 1, "the finished trial is not run again"
    assert len((out / "trials.jsonl").read_text().splitlines()) == 2
    assert without_time(resumed) == without_time(whole)
    on_disk = json.loads((out / "search.json").read_text())
    assert without_time(on_disk) == without_time(json.loads(
        (tmp_path / "whole" / "search.json").read_text()))
    assert (out / "model" / "model.safetensors").is_file()
    assert "Chosen:" in (out / "search.md").read_text()

