"""minift.core.best: the best model is swapped in whole; a crash while writing it, or between the
two renames, leaves the previous best, which the next start puts back."""

import pytest
import torch
from toy_loop import Crash, Toy, assert_same, config, epochs_of, params_of, train

import minift.core.best as best_module
from minift.hf.safetensors import read_safetensors, write_safetensors


def test_crash_while_writing_best_keeps_previous_best(tmp_path, monkeypatch):
    snapshots, calls = [], []

    def evaluate(model):
        snapshots.append(params_of(model))
        return {"loss": -float(len(snapshots))}  # improves every time

    def save_best(model, folder):
        calls.append(folder)
        write_safetensors(model.state_dict(), folder / "model.safetensors")
        if len(calls) == 2:
            (folder / "half.bin").write_bytes(b"\0" * 10)
            raise Crash("while writing best")

    cfg = config(tmp_path, eval_every=1, max_steps=4)
    with pytest.raises(Crash):
        train(Toy(), epochs_of(4), cfg, evaluate=evaluate, save_best=save_best)
    best = tmp_path / "run" / "best"
    assert calls[1] != best  # written into a temporary folder, not into best/
    assert not calls[1].exists()  # and the half-written folder removed, not left beside it
    assert sorted(p.name for p in best.iterdir()) == ["model.safetensors"]
    assert_same(read_safetensors(best / "model.safetensors"), snapshots[0])

    # A crash between the two renames: best/ is gone, best.old/ holds the previous best.
    original_rename = best_module.os.rename

    def rename(src, dst):
        if str(dst).endswith("best"):
            raise Crash("between renames")
        original_rename(src, dst)

    previous_best = snapshots[0]
    snapshots.clear()
    monkeypatch.setattr(best_module.os, "rename", rename)
    with pytest.raises(Crash):
        train(Toy(seed=1), epochs_of(4), cfg, evaluate=evaluate)  # default save_best
    assert not best.exists() and (tmp_path / "run" / "best.old").is_dir()
    monkeypatch.undo()

    # The next start puts the previous best back, before anything else happens.
    def crash_at_once(model):
        raise Crash("first evaluation")

    with pytest.raises(Crash):
        train(Toy(), epochs_of(4), cfg, evaluate=crash_at_once)
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [
        "best",
        "log.jsonl",
        "resume.pt",
    ]
    assert_same(read_safetensors(best / "model.safetensors"), previous_best)
    assert not torch.equal(previous_best["out.weight"], snapshots[0]["out.weight"])



def test_a_crash_after_the_swap_keeps_the_new_best(tmp_path):
    """A crash after best.new/ became best/ but before best.old/ was removed: best/ is the new
    model and stays; the stale best.old/ (and any best.new/ left) is removed at the next start."""
    best = tmp_path / "best"
    for folder, text in ((best, "new"), (tmp_path / "best.old", "old"),
                         (tmp_path / "best.new", "half")):
        folder.mkdir()
        (folder / "model.safetensors").write_text(text)
    best_module.recover_best(best)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best"]
    assert (best / "model.safetensors").read_text() == "new"
