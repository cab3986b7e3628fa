"""Data parallel training under torchrun: 2 CPU processes (gloo) against 1, files, resume, failure.

Every run here is `tests/ddp_worker.py`: a tiny BERT classifier without dropout, 21 examples of
random lengths in batches of 4 (the epoch's last batch has one row, so one rank's shard is
empty), trained for a few AdamW steps. Two processes with the same global batch take the same
steps as one process: the weights agree to float rounding (atol 1e-5).
"""

import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from minift.core import ddp as distributed
from minift.hf.safetensors import read_safetensors

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
WORKER = HERE / "ddp_worker.py"
FAIL_WITHIN_S = 60  # a failing rank must end the job in this time, never hang

spec = importlib.util.spec_from_file_location("ddp_worker", WORKER)
ddp_worker = importlib.util.module_from_spec(spec)
spec.loader.exec_module(ddp_worker)


def torchrun(*args: str, nproc: int = 2, module: bool = False) -> subprocess.CompletedProcess:
    """Launch `nproc` processes of the worker (or of `python -m`, with `module`) via torchrun."""
    target = ["-m", *args] if module else [str(WORKER), *args]
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc_per_node={nproc}", *target]
    env = os.environ | {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO),
                        "MINIFT_DIST_TIMEOUT": "120"}
    return subprocess.run(command, capture_output=True, text=True, env=env, cwd=REPO,
                          timeout=600)


def check(process: subprocess.CompletedProcess) -> None:
    assert process.returncode == 0, process.stdout[-3000:] + process.stderr[-3000:]


def records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


def assert_weights_close(a: dict, b: dict, atol: float) -> None:
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=atol, rtol=0, msg=name)


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory):
    """6 steps of token classification on 2 ranks, uninterrupted (shared by several tests)."""
    tmp = tmp_path_factory.mktemp("ddp")
    process = torchrun("--out", str(tmp / "out"), "--result", str(tmp / "w.safetensors"),
                       "--task", "tokens", "--steps", "6", "--stats", str(tmp / "stats"))
    check(process)
    return tmp


def single_process(tmp: Path, grads: list | None = None, **kwargs) -> tuple[dict, list[dict]]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = ddp_worker.run(str(tmp / "single"), grads=grads, **kwargs)
    finally:
        torch.set_num_threads(threads)
    return model.state_dict(), records(tmp / "single")


def test_two_processes_take_the_steps_of_one(two_process_run, tmp_path):
    tmp = two_process_run
    single_grads = []
    single, single_log = single_process(tmp_path, single_grads, task="tokens", steps=6,
                                        batch_size=4, grad_accum=1)
    ddp = read_safetensors(tmp / "w.safetensors")
    assert_weights_close(ddp, single, atol=1e-5)
    # The gradient of every step too (AdamW alone would hide a wrongly scaled gradient).
    ddp_grads = read_safetensors(tmp / "stats" / "grads0.safetensors")
    assert len(ddp_grads) == len(single_grads) == 6
    for i, grad in enumerate(single_grads):
        torch.testing.assert_close(ddp_grads[f"step{i}"], grad, atol=1e-6, rtol=1e-4)
    # ... and the run moved the weights well beyond that tolerance.
    start = ddp_worker.make_model("tokens").state_dict()
    assert max(float((ddp[k] - start[k]).abs().max()) for k in start) > 1e-2

    # The ranks split the data, rows 0, 2, 4, ... and 1, 3, 5, ... of every global batch. The
    # last batch has one row: rank 1 then runs a stand-in row at weight 0 to join the all-reduce.
    rows = [json.loads((tmp / "stats" / f"rank{r}.json").read_text()) for r in (0, 1)]
    global_rows = ddp_worker.rows_per_step(task="tokens", steps=6, batch_size=4)
    assert global_rows[-1] == 1
    assert rows[0] == [(n + 1) // 2 for n in global_rows]
    assert rows[1] == [max(n // 2, 1) for n in global_rows]

    # One log, written once, whose losses (summed over ranks) are the single process's.
    log = records(tmp / "out")
    assert [r["step"] for r in log] == [r["step"] for r in single_log]
    for ours, theirs in zip(log, single_log, strict=True):
        if "loss" in ours:
            assert ours["loss"] == pytest.approx(theirs["loss"], abs=1e-5)
        else:
            assert ours["eval"]["loss"] == pytest.approx(theirs["eval"]["loss"], abs=1e-5)


@pytest.mark.parametrize("task,grad_accum,batch_size", [("sequence", 2, 3), ("tokens", 3, 2)])
def test_accumulation_under_ddp_equals_one_process(tmp_path, task, grad_accum, batch_size):
    """no_sync on the micro-steps, and every micro-batch weighted by its share of targets."""
    check(torchrun("--out", str(tmp_path / "out"), "--result", str(tmp_path / "w.safetensors"),
                   "--task", task, "--steps", "4", "--grad-accum", str(grad_accum),
                   "--batch-size", str(batch_size)))
    single, _ = single_process(tmp_path, task=task, steps=4, batch_size=batch_size,
                               grad_accum=grad_accum)
    assert_weights_close(read_safetensors(tmp_path / "w.safetensors"), single, atol=1e-5)


def test_only_rank_0_writes(two_process_run):
    out = two_process_run / "out"
    assert sorted(p.name for p in out.iterdir()) == ["best", "log.jsonl", "resume.pt"]
    checkpoint = torch.load(out / "resume.pt", weights_only=True)
    assert checkpoint["run"]["world_size"] == 2
    assert len(checkpoint["rng_ranks"]) == 2  # each rank's dropout stream, for exact resume
    assert not torch.equal(checkpoint["rng_ranks"][0]["torch"], checkpoint["rng_ranks"][1]["torch"])


def test_resume_under_ddp_gives_the_uninterrupted_weights(two_process_run, tmp_path):
    out, result = tmp_path / "out", tmp_path / "w.safetensors"
    crashed = torchrun("--out", str(out), "--result", str(result), "--task", "tokens",
                       "--steps", "6", "--crash-after", "3")
    assert crashed.returncode != 0 and not result.exists()
    assert torch.load(out / "resume.pt", weights_only=True)["progress"]["step"] == 2
    check(torchrun("--out", str(out), "--result", str(result), "--task", "tokens", "--steps",
                   "6", "--resume"))
    uninterrupted = read_safetensors(two_process_run / "w.safetensors")
    resumed = read_safetensors(result)
    assert all(torch.equal(resumed[k], uninterrupted[k]) for k in uninterrupted)

    def numbers(log):  # everything but the timings
        return [{k: v for k, v in r.items() if k not in ("examples_per_s", "time")} for r in log]

    assert numbers(records(out)) == numbers(records(two_process_run / "out"))


def test_a_failing_rank_stops_the_job_with_its_error(tmp_path):
    """Rank 1 meets a token id outside the vocabulary at step 4; rank 0 is waiting for it."""
    out = tmp_path / "out"
    start = time.monotonic()
    process = torchrun("--out", str(out), "--result", str(tmp_path / "w.safetensors"),
                       "--task", "tokens", "--steps", "6", "--bad-step", "4")
    elapsed = time.monotonic() - start
    assert process.returncode != 0
    assert elapsed < FAIL_WITHIN_S, f"the job took {elapsed:.0f} s to stop"
    assert "index out of range" in process.stderr  # the failing rank's own error
    assert "rank: 1" in process.stderr  # torchrun names the rank that failed first
    # The checkpoint of step 2 is intact and loads.
    assert torch.load(out / "resume.pt", weights_only=True)["progress"]["step"] == 2


def test_setfit_body_under_ddp_equals_one_process(tmp_path):
    """SetFit's contrastive phase: 50 pairs in batches of 7 split over 2 ranks."""
    check(torchrun("--out", str(tmp_path / "out"), "--result", str(tmp_path / "w.safetensors"),
                   "--task", "setfit", "--stats", str(tmp_path / "stats")))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    single_grads = []
    try:
        single = ddp_worker.run_setfit(single_grads).state_dict()
    finally:
        torch.set_num_threads(threads)
    ddp = read_safetensors(tmp_path / "w.safetensors")
    assert_weights_close(ddp, single, atol=1e-5)
    ddp_grads = read_safetensors(tmp_path / "stats" / "grads0.safetensors")
    assert len(ddp_grads) == len(single_grads) == 8  # ceil(50 / 7) steps
    for i, grad in enumerate(single_grads):
        torch.testing.assert_close(ddp_grads[f"step{i}"], grad, atol=1e-6, rtol=1e-4)
    start = ddp_worker.setfit_encoder().state_dict()
    assert max(float((ddp[k] - start[k]).abs().max()) for k in start) > 1e-2


def test_shard_splits_rows_round_robin():
    batch = {"input_ids": torch.arange(10).reshape(5, 2), "labels": torch.arange(5),
             "scale": torch.tensor(2.0), "name": "x", "lengths": [2, 1, 2, 0, 1], "pair": [1, 2]}
    shards = [distributed.shard(batch, distributed.Context(rank, 2)) for rank in (0, 1)]
    assert shards[0]["labels"].tolist() == [0, 2, 4] and shards[1]["labels"].tolist() == [1, 3]
    assert torch.equal(shards[1]["input_ids"], batch["input_ids"][1::2])
    assert shards[1]["scale"] is batch["scale"] and shards[1]["name"] == "x"
    # a list with one entry per row (host-counted lengths) is split with the rows; others not
    assert shards[0]["lengths"] == [2, 2, 1] and shards[1]["lengths"] == [1, 0]
    assert shards[1]["pair"] == [1, 2]
    assert distributed.shard(batch, distributed.Context())["labels"] is batch["labels"]


def test_one_process_through_the_ddp_door_trains_as_the_loop_default(tmp_path):
    """`setup()` without torchrun gives a one-rank `Context`; handed to the loop as `parallel`,
    it must change nothing: the same weights (torch.equal) as the loop's own `OneProcess`."""
    from minift.core.loop import TrainConfig, train

    gen = torch.Generator().manual_seed(0)
    batches = [{"x": torch.randn(4, 3, generator=gen), "labels": torch.randn(4, generator=gen)}
               for _ in range(3)]

    class Linear(torch.nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.lin = torch.nn.Linear(3, 1)

        def forward(self, x, labels):
            return {"loss": torch.nn.functional.mse_loss(self.lin(x).squeeze(-1), labels)}

    config = TrainConfig(out_dir=tmp_path, epochs=2, grad_accum=2, lr=1e-2, progress=False)
    door, default = Linear(), Linear()
    context = distributed.setup("cpu")
    assert (context.rank, context.world_size, context.is_main) == (0, 1, True)
    train(door, lambda epoch: batches, config, parallel=context)
    train(default, lambda epoch: batches, config)
    for key, value in door.state_dict().items():
        assert torch.equal(value, default.state_dict()[key]), key


def test_setup_names_missing_launch_variables(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    for name in ("RANK", "MASTER_ADDR", "MASTER_PORT", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ValueError, match="MASTER_ADDR.*torchrun"):
        distributed.setup("cpu")


@pytest.mark.slow  # 13 s: two processes that each import torch and load MiniLM
def test_torchrun_minift_finetune(tmp_path, minilm_dir):
    """`torchrun -m minift finetune` trains on 2 ranks (with activation checkpointing); one set
    of results, one log."""
    rows = [("a gripping , beautifully acted film", "1"), ("dull and far too long", "0")] * 6
    for name in ("train", "dev"):
        (tmp_path / f"{name}.tsv").write_text(
            "text\tlabel\n" + "".join(f"{t}\t{y}\n" for t, y in rows), encoding="utf-8")
    out = tmp_path / "out"
    process = torchrun("minift", "finetune", "--model", str(minilm_dir), "--train",
                       str(tmp_path / "train.tsv"), "--dev", str(tmp_path / "dev.tsv"),
                       "--max-steps", "2", "--batch-size", "4", "--max-length", "16",
                       "--activation-checkpointing", "--no-progress", "--out", str(out),
                       module=True)
    check(process)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["train"]["steps"] == 2
    assert process.stdout.count("dev before fine-tuning") == 1  # rank 1 prints nothing
    assert "2 processes (DistributedDataParallel)" in process.stdout
    names = {p.name for p in out.iterdir()}
    assert {"log.jsonl", "metrics.json", "model.safetensors"} <= names
    assert not {"resume.pt", "best", "run"} & names  # a finished run keeps no resume state


@pytest.mark.slow  # 12-18 s each, as above
@pytest.mark.parametrize("command", ["ner", "pretrain"])
def test_torchrun_minift_ner_and_pretrain(tmp_path, minilm_dir, data_dir, command):
    """The other training commands run under torchrun too: rank 0 writes one set of results."""
    out = tmp_path / "out"
    common = ["--model", str(minilm_dir), "--batch-size", "4", "--max-length", "32",
              "--no-progress", "--out", str(out)]
    if command == "ner":
        blocks = (data_dir / "conll2003" / "train.txt").read_text(encoding="utf-8").split("\n\n")
        for name, part in (("train", blocks[1:13]), ("dev", blocks[13:19])):
            (tmp_path / f"{name}.txt").write_text("\n\n".join(part) + "\n\n", encoding="utf-8")
        args = ["ner", "--train", str(tmp_path / "train.txt"), "--dev", str(tmp_path / "dev.txt"),
                "--max-steps", "2", *common]
    else:
        lines = (data_dir / "sst2" / "train.tsv").read_text(encoding="utf-8").splitlines()[1:41]
        (tmp_path / "text.txt").write_text("".join(line.split("\t")[0] + "\n" for line in lines),
                                           encoding="utf-8")
        args = ["pretrain", "--text", str(tmp_path / "text.txt"), "--max-steps", "2", *common]
    process = torchrun("minift", *args, module=True)
    check(process)
    assert "2 processes (DistributedDataParallel)" in process.stdout
    assert json.loads((out / "metrics.json").read_text())["train"]["steps"] == 2
    names = {p.name for p in out.iterdir()}
    assert {"log.jsonl", "metrics.json", "model.safetensors"} <= names
    assert not {"resume.pt", "best", "run"} & names  # a finished run keeps no resume state
