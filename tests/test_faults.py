"""Fault injection into minift.core.loop: kills at random points and a disk that fills.

- SIGKILL at seeded random points of a short run (a batch read, the middle of a file being
  written, between the two renames of the best/ swap, the middle of a log line), each followed by
  a resume, ends with exactly the weights, best model and log of the uninterrupted run, and
  leaves nothing behind but the run's files.
- A disk that fills (writes past a seeded byte budget raise ENOSPC, simulated in this process)
  fails with that OSError and never leaves a folder that does not load: resume.pt, best/ and
  log.jsonl are each the previous complete version or the new one, and resuming from what is
  left gives exactly the uninterrupted run.

The killed runs are processes forked from a multiprocessing forkserver that imported torch and
minift once, so each of the ~25 runs starts in milliseconds instead of re-importing torch.
"""

import builtins
import errno
import json
import math
import multiprocessing
import os
import random
import signal
import tempfile
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import minift.core.best as best_module
import minift.core.files as files_module
import minift.core.logbook as logbook_module
import minift.core.resume as resume_module
from minift.core.checkpoints import Checkpoints
from minift.core.loop import TrainConfig, train
from minift.hf.safetensors import read_safetensors, write_safetensors

VOCAB, CLASSES, SEQ = 12, 3, 5
KILLS = 20  # at least this many SIGKILLs in the chain


class Tiny(nn.Module):
    """Embedding, LayerNorm, dropout (so the RNG state matters), linear; mean token loss."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Embedding(VOCAB, 8)
        self.norm = nn.LayerNorm(8)
        self.drop = nn.Dropout(0.2)
        self.out = nn.Linear(8, CLASSES)

    def forward(self, input_ids, labels):
        logits = self.out(self.drop(self.norm(self.embed(input_ids))))
        return {"loss": F.cross_entropy(logits.reshape(-1, CLASSES), labels.reshape(-1))}


def batches_of(epoch: int, n: int = 6, seed: int = 10) -> list[dict[str, torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed + epoch)
    batches = []
    for _ in range(n):
        input_ids = torch.randint(0, VOCAB, (3, SEQ), generator=gen)
        labels = input_ids % CLASSES
        labels[torch.rand((3, SEQ), generator=gen) < 0.3] = -100
        batches.append({"input_ids": input_ids, "labels": labels})
    return batches


HELD_OUT = batches_of(0, n=2, seed=99)


def evaluate(model: nn.Module) -> dict[str, float]:
    return {"loss": sum(float(model(**batch)["loss"]) for batch in HELD_OUT) / len(HELD_OUT)}


def run_config(out: Path) -> TrainConfig:
    """12 steps (6 batches, grad_accum 2, 4 epochs): a checkpoint every step, an evaluation (and
    often a new best/) every 2, a log record every 3, so a resume lands with an unlogged window."""
    return TrainConfig(out_dir=out, epochs=4, grad_accum=2, lr=5e-2, eval_every=2, save_every=1,
                       log_every=3, progress=False, seed=0)  # fmt: skip


def numbers(log_path: Path) -> list[dict]:
    """The log's records without the timings."""
    records = [json.loads(line) for line in log_path.read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in ("time", "examples_per_s")} for r in records]


# ---------------------------------------------------------------------------------------------
# SIGKILL
# ---------------------------------------------------------------------------------------------


class _TickingFile:
    """A file whose first write is followed by a tick: a kill there leaves half a file."""

    def __init__(self, f, tick):
        self.f, self.tick, self.ticked = f, tick, False

    def write(self, data):
        n = self.f.write(data)
        if not self.ticked:
            self.ticked = True
            self.f.flush()
            self.tick()
        return n

    def __getattr__(self, name):
        return getattr(self.f, name)


def _killed_run(out: str, result: str, kill_at: int | None) -> None:
    """Train in `out` (resuming when resume.pt is there); SIGKILL this process at its
    `kill_at`-th event. Events: a batch read, each atomic file write (half written, then after
    it), each rename, each log line (half written). On success, write the weights to `result`
    and the number of events beside it."""
    torch.set_num_threads(1)
    count = [0]

    def tick() -> None:
        count[0] += 1
        if count[0] == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

    original_write, original_rename = files_module.atomic_write, os.rename

    def atomic_write(path, data):
        if callable(data):
            original_write(path, lambda f: data(_TickingFile(f, tick)))
        else:
            original_write(path, lambda f: _TickingFile(f, tick).write(data))
        tick()

    def rename(src, dst):
        tick()
        original_rename(src, dst)

    def append_log(path, record):
        line = json.dumps(record) + "\n"
        with open(path, "a", encoding="utf-8") as f:
            _TickingFile(f, tick).write(line[: len(line) // 2])
            f.write(line[len(line) // 2 :])

    class Batches(list):
        def __getitem__(self, index):
            tick()
            return list.__getitem__(self, index)

    # every atomic write of the loop's files: resume.pt, log.jsonl, best/model.safetensors
    resume_module.atomic_write = logbook_module.atomic_write = best_module.atomic_write = atomic_write
    os.rename, logbook_module.append_log = rename, append_log
    model = Tiny()
    resume = (Path(out) / "resume.pt").exists()
    train(model, lambda e: Batches(batches_of(e)), run_config(Path(out)), evaluate=evaluate,
          recorder=Checkpoints(resume=resume))  # fmt: skip
    write_safetensors(model.state_dict(), result)
    Path(result + ".events").write_text(str(count[0]))


@pytest.fixture(scope="module")
def forkserver():
    context = multiprocessing.get_context("forkserver")
    # Imported once, by the server (its sys.path is the default one: the test module itself is
    # imported by each child, cheaply once these are loaded).
    context.set_forkserver_preload(["torch", "minift.core.loop", "pytest"])
    return context


def _launch(context, out: Path, result: Path, kill_at: int | None) -> int:
    process = context.Process(target=_killed_run, args=(str(out), str(result), kill_at))
    process.start()
    process.join(120)
    assert process.exitcode is not None, "a training process hung"
    return process.exitcode


@pytest.mark.slow  # 20 seeded SIGKILLs and resumes (about 35 s)
def test_sigkill_at_random_points_then_resume_gives_the_uninterrupted_run(tmp_path, forkserver):
    assert _launch(forkserver, tmp_path / "full", tmp_path / "full.safetensors", None) == 0
    events = int((tmp_path / "full.safetensors.events").read_text())

    rng, kills, runs = random.Random(22), [], 0
    out, result = tmp_path / "killed", tmp_path / "killed.safetensors"
    while True:
        # Kill points within the next ~15% of a run's events: each run gets a little further.
        kill_at = rng.randint(1, events // 7) if len(kills) < KILLS else None
        code = _launch(forkserver, out, result, kill_at)
        runs += 1
        if code == 0:
            break
        assert code == -signal.SIGKILL, f"run {runs} ended with exit code {code}"
        kills.append(kill_at)
        assert runs < 100, "the killed runs make no progress"
    assert len(kills) >= KILLS, kills

    full, resumed = read_safetensors(tmp_path / "full.safetensors"), read_safetensors(result)
    assert all(torch.equal(full[key], resumed[key]) for key in full)
    best_full = read_safetensors(tmp_path / "full" / "best" / "model.safetensors")
    best_resumed = read_safetensors(out / "best" / "model.safetensors")
    assert all(torch.equal(best_full[key], best_resumed[key]) for key in best_full)
    assert numbers(out / "log.jsonl") == numbers(tmp_path / "full" / "log.jsonl")
    # Nothing a kill left half-written outlives the completed run; resume.pt went with it.
    assert sorted(p.name for p in out.iterdir()) == ["best", "log.jsonl"]
    assert sorted(p.name for p in (out / "best").iterdir()) == ["model.safetensors"]


# ---------------------------------------------------------------------------------------------
# A full disk
# ---------------------------------------------------------------------------------------------


class _Disk:
    """A simulated disk: files opened through it raise ENOSPC once `budget` bytes are written.
    `writes` records (bytes written before, size, kind, file) of every write call: `kind` is
    "log" or "atomic:" and the name written, `file` the number of the opening it went through."""

    def __init__(self, budget: float = math.inf):
        self.budget, self.used, self.writes, self.opened = budget, 0, [], 0

    def open(self, f, kind: str):
        self.opened += 1
        return _LimitedFile(f, self, kind, self.opened)


class _LimitedFile:
    def __init__(self, f, disk: _Disk, kind: str, number: int):
        self.f, self.disk, self.kind, self.number = f, disk, kind, number

    def write(self, data):
        disk = self.disk
        disk.writes.append((disk.used, len(data), self.kind, self.number))
        if disk.used + len(data) > disk.budget:
            self.f.write(data[: int(disk.budget - disk.used)])
            disk.used = disk.budget
            raise OSError(errno.ENOSPC, "No space left on device")
        disk.used += len(data)
        return self.f.write(data)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()

    def __getattr__(self, name):
        return getattr(self.f, name)


def _train_on(disk: _Disk, out: Path, monkeypatch, resume: bool = False) -> nn.Module:
    """Train in this process, every file write of minift.core.loop going through `disk`."""

    names = {}  # the temporary file of each atomic write -> the name it replaces

    class TempfileOnDisk:  # minift.core.files' `tempfile`, which remembers what each file is for
        @staticmethod
        def mkstemp(*, dir, prefix, suffix):
            fd, tmp = tempfile.mkstemp(dir=dir, prefix=prefix, suffix=suffix)
            names[fd] = prefix[1:-1]  # ".resume.pt." -> "resume.pt"
            return fd, tmp

    class OsOnDisk:  # minift.core.files' `os`, whose fdopen hands out limited files
        def __getattr__(self, name):
            return getattr(os, name)

        @staticmethod
        def fdopen(fd, *args, **kwargs):
            return disk.open(os.fdopen(fd, *args, **kwargs), "atomic:" + names.pop(fd))

    with monkeypatch.context() as patch:
        patch.setattr(files_module, "tempfile", TempfileOnDisk())
        patch.setattr(files_module, "os", OsOnDisk())
        patch.setattr(logbook_module, "open", lambda *a, **k: disk.open(builtins.open(*a, **k), "log"),
                      raising=False)  # fmt: skip
        model = Tiny()
        train(model, batches_of, run_config(out), evaluate=evaluate,
              recorder=Checkpoints(resume=resume))
    return model


def test_a_full_disk_never_leaves_a_folder_that_does_not_load(tmp_path, monkeypatch):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        unlimited = _Disk()
        full = _train_on(unlimited, tmp_path / "full", monkeypatch).state_dict()
        # The disk fills in the middle of seeded files: 4 resume.pt, 4 of best/'s model (written
        # in best.new/ before the swap), 5 log lines, and before the first byte. Files, not
        # write calls, are drawn: torch.save writes resume.pt in hundreds of calls, the best
        # model in one, so drawn calls would all but never land in the best model.
        rng = random.Random(23)
        budgets = [0]
        for kind, n in (("atomic:resume.pt", 4), ("atomic:model.safetensors", 4), ("log", 5)):
            writes = [w for w in unlimited.writes if w[2] == kind and w[1] > 1]
            for file in rng.sample(sorted({w[3] for w in writes}), n):
                start, size, _, _ = rng.choice([w for w in writes if w[3] == file])
                budgets.append(start + rng.randrange(1, size))
        outcomes = []
        for i, budget in enumerate(budgets):
            out = tmp_path / f"disk{i}"
            try:
                _train_on(_Disk(budget), out, monkeypatch)
                outcomes.append("completed")
            except OSError as error:
                assert error.errno == errno.ENOSPC, error
                outcomes.append("full")
            names = {p.name for p in out.iterdir()}
            assert names <= {"best", "log.jsonl", "resume.pt"}, names  # nothing half-written
            for line in (out / "log.jsonl").read_text().splitlines():
                json.loads(line)  # every line whole
            if "best" in names:
                assert sorted(p.name for p in (out / "best").iterdir()) == ["model.safetensors"]
                Tiny().load_state_dict(read_safetensors(out / "best" / "model.safetensors"))
            if "resume.pt" in names:
                Tiny().load_state_dict(torch.load(out / "resume.pt", weights_only=True)["model"])
            # What is left resumes (or restarts) into exactly the uninterrupted run.
            model = _train_on(unlimited, out, monkeypatch, resume="resume.pt" in names)
            assert all(torch.equal(full[key], model.state_dict()[key]) for key in full)
            assert numbers(out / "log.jsonl") == numbers(tmp_path / "full" / "log.jsonl")
        assert outcomes.count("full") == len(budgets), outcomes
    finally:
        torch.set_num_threads(threads)


# ---------------------------------------------------------------------------------------------
# SIGTERM and SIGKILL at every file of a recipe's final save
# ---------------------------------------------------------------------------------------------

FILE_EVENTS = ("replace", "rename", "unlink", "rmdir")  # how every file of the final save lands


def _final_save_run(argv: list[str], kill_at: int | None, signum: int, events: str) -> None:
    """Run the `minift` command `argv` in this process; once its training has returned, send
    `signum` to this process at its `kill_at`-th file event (each os.replace, rename, unlink
    and rmdir but the lock's: every file of the final save). Exit with the command's code;
    write the number of events to `events`."""
    import sys

    import minift.run.recipes.skeleton as skeleton
    from minift.run.cli import main
    from minift.run.lock import LOCK_NAME

    torch.set_num_threads(1)
    count, trained, real_train = [0], [False], skeleton.train

    def train(*args, **kwargs):
        result = real_train(*args, **kwargs)
        trained[0] = True
        return result

    def hooked(function):
        def call(path, *args, **kwargs):
            if trained[0] and not str(path).endswith(LOCK_NAME):
                count[0] += 1
                if count[0] == kill_at:
                    os.kill(os.getpid(), signum)
            return function(path, *args, **kwargs)

        return call

    skeleton.train = train
    for name in FILE_EVENTS:
        setattr(os, name, hooked(getattr(os, name)))
    code = main(argv)
    Path(events).write_text(str(count[0]))
    sys.exit(code)


@pytest.fixture(scope="module")
def command_server():
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["torch", "minift.run.cli", "pytest"])
    return context


def _run_command(context, argv: list[str], kill_at: int | None, signum: int,
                 events: Path) -> int:
    process = context.Process(target=_final_save_run, args=(argv, kill_at, signum, str(events)))
    process.start()
    process.join(300)
    assert process.exitcode is not None, "a run hung"
    return process.exitcode


def _finished(out: Path) -> dict:
    """What a finished run leaves, timings aside: each file's bytes, metrics.json parsed."""
    files = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    metrics = json.loads(files.pop("metrics.json"))
    metrics["train"].pop("seconds")
    record = json.loads(files.pop(".minift-run.json"))  # the command line, which names `out`
    for varying in ("out", "resume"):
        record["options"].pop(varying)
    log = [{k: v for k, v in json.loads(line).items() if k not in ("time", "examples_per_s")}
           for line in files.pop("log.jsonl").decode().splitlines()]
    return {"files": files, "metrics": metrics, "log": log, "record": record,
            "names": sorted(p.name for p in out.iterdir())}


@pytest.mark.slow  # 13 kills and resumes of a real finetune, twice: about 2 minutes on 2 cores
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGKILL])
def test_a_kill_at_every_file_of_the_final_save_leaves_a_folder_that_loads_or_resumes(
        tiny, tmp_path, command_server, signum):
    """SIGTERM (handled as Ctrl-C: exit 130, the lock released) or SIGKILL at each file event
    of `minift finetune`'s final save (the best model copied in, the tokenizer, metrics.json,
    then the light final resume.pt and best/ removed) leaves a folder that is either the finished one or one
    that `--resume` completes into exactly the uninterrupted result (issue #31 row 4)."""
    rows = "".join(f"{text}\t{label}\n" for text, label in [
        ("a gripping , beautifully acted film", 1), ("dull , lifeless and far too long", 0),
        ("funny , warm and wise", 1), ("i wanted my two hours back", 0)] * 3)
    for name in ("train", "dev"):
        (tmp_path / f"{name}.tsv").write_text("text\tlabel\n" + rows, encoding="utf-8")

    def argv(out: Path, *extra: str) -> list[str]:
        return ["finetune", "--model", str(tiny), "--train", str(tmp_path / "train.tsv"),
                "--dev", str(tmp_path / "dev.tsv"), "--max-length", "16", "--batch-size", "4",
                "--max-steps", "3", "--eval-every", "1", "--no-progress", "--out", str(out),
                *extra]

    events = tmp_path / "events"
    assert _run_command(command_server, argv(tmp_path / "full"), None, signum, events) == 0
    full, total = _finished(tmp_path / "full"), int(events.read_text())
    assert total >= 6, total  # model and config, 3 tokenizer files, metrics.json, resume.pt ...
    for kill_at in range(1, total + 1):
        out = tmp_path / f"killed{kill_at}"
        code = _run_command(command_server, argv(out), kill_at, signum, events)
        assert code == (130 if signum == signal.SIGTERM else -signal.SIGKILL), (kill_at, code)
        if signum == signal.SIGTERM:
            assert not (out / ".minift.lock").exists()  # released, as on Ctrl-C
        if (out / "resume.pt").exists():
            # the final one is light (no optimizer state): finishing the save needs no more
            assert torch.load(out / "resume.pt", weights_only=True)["optimizer"] is None
            assert _run_command(command_server, argv(out, "--resume"), None, signum, events) == 0
        assert _finished(out) == full, f"killed at file event {kill_at} of {total}"
