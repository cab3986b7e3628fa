"""What every recipe does before it loads a model: check what only the model or the files can
tell, find the data folder, claim the output folder; and the small data helpers they share.
Every check raises ``OptionError`` naming the option as its field.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import random
import shutil
import signal
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from minift.core import ddp as distributed
from minift.core.files import atomic_write, fsync_dir
from minift.data.batches import with_lengths
from minift.data.readers import read_examples, read_semicolon_examples
from minift.hf.checkpoint import read_config
from minift.run.lock import LOCK_NAME, acquire, release
from minift.run.options import OptionError


def check_device(device: str | None) -> None:
    """Refuse a device this torch cannot run on (``cuda`` without CUDA, ``tpu``, ...)."""
    if device is None:
        return
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError):
        raise OptionError(f"`device` {device}: expected cpu, cuda, cuda:N or mps") from None
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise OptionError(f"`device` {device}: this torch sees no CUDA GPU "
                              "(torch.cuda.is_available() is False); use `device` cpu")
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise OptionError(f"`device` {device}: there are {torch.cuda.device_count()} "
                              "CUDA GPUs (numbered from 0)")
    elif parsed.type == "mps":
        if not torch.backends.mps.is_available():
            raise OptionError(f"`device` {device}: this torch has no MPS backend here")
    elif parsed.type != "cpu":
        raise OptionError(f"`device` {device}: minift runs on cpu, cuda or mps")


def check_max_length(folder: Path, max_length: int, minimum: int = 1) -> int:
    """Check ``max_length`` against the model's ``max_position_embeddings``; return the latter."""
    positions = read_config(folder).max_position_embeddings
    if max_length > positions:
        raise OptionError(f"`max_length` {max_length} is more than the model's {positions} "
                          f"positions ({folder}/config.json)")
    if max_length < minimum:
        raise OptionError(f"`max_length` must be at least {minimum}, got {max_length}")
    return positions


def check_freeze(folder: Path, freeze: str) -> None:
    """The depth of a ``last-N`` freeze mode, checked against the model's layers."""
    layers = read_config(folder).num_hidden_layers
    if freeze.startswith("last-") and not 1 <= int(freeze[5:]) <= layers:
        raise OptionError(f"`freeze` mode {freeze!r}: N must be between 1 and {layers}")


# Where the tests and lessons find the data sets when MINIFT_DATA is unset.
DEFAULT_DATA = Path(__file__).resolve().parents[3] / "shared" / "data"


def data_folder(data_dir: str | os.PathLike | None = None) -> Path:
    """The folder of the data sets: ``data_dir``, else $MINIFT_DATA, else ``shared/data`` in
    the repository (or the installed checkout): where the tests and lessons look."""
    if data_dir is not None:
        where, folder = f"`data_dir` {data_dir}", Path(data_dir)
    elif os.environ.get("MINIFT_DATA"):
        where = f"MINIFT_DATA={os.environ['MINIFT_DATA']}"
        folder = Path(os.environ["MINIFT_DATA"])
    elif DEFAULT_DATA.is_dir():
        return DEFAULT_DATA
    else:
        raise OptionError(f"the data sets are not in {DEFAULT_DATA}: give their folder with "
                          "`data_dir` DIR, or set the environment variable MINIFT_DATA=DIR")
    if not folder.is_dir():
        raise OptionError(f"{where}: no such folder")
    return folder


# What a run records of itself for a resume to compare (``run_record``): kept while resume.pt is.
RUN_RECORD = ".minift-run.json"
# What a minift run leaves in its output folder (and a search in its own and a trial's): a
# folder holding anything else is the user's, and is never written into without `overwrite`.
RUN_FILES = {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
             "vocab.txt", "special_tokens_map.json", "metrics.json", "log.jsonl", "resume.pt",
             "predictions.json", "dev_predictions.txt", "test_predictions.txt", "trial.log",
             "setfit_head.safetensors", "setfit_head.json", "trials.jsonl", "search.json",
             "search.md", "options.json", RUN_RECORD, LOCK_NAME}
RUN_FOLDERS = {"best", "best.new", "best.old", "model"}  # holding model files only
RUNS_FOLDER = "trials"  # a search's: one run folder a trial


def _is_run_file(path: Path) -> bool:
    """A file a minift run writes: its outputs, a plot, a temporary file of an atomic write."""
    name = path.name
    return (name in RUN_FILES or name.endswith(".png")
            or (name.startswith(".") and name.endswith(".tmp")))


def _foreign(folder: Path, depth: int = 0) -> list[str]:
    """The entries of ``folder`` that no minift run writes (at most 3), links not followed."""
    found = []
    for entry in sorted(folder.iterdir()):
        if entry.is_symlink():
            found.append(entry.name)
        elif entry.is_dir() and entry.name in RUN_FOLDERS:
            found += [f"{entry.name}/{inner.name}" for inner in sorted(entry.iterdir())
                      if inner.is_symlink() or not inner.is_file() or not _is_run_file(inner)]
        elif entry.is_dir() and entry.name == RUNS_FOLDER and depth == 0:
            found += [f"{entry.name}/{inner.name}" + (f"/{name}" if name else "")
                      for inner in sorted(entry.iterdir())
                      for name in ([""] if inner.is_symlink() or not inner.is_dir()
                                   else _foreign(inner, depth=1))]
        elif not entry.is_file() or not _is_run_file(entry):
            found.append(entry.name)
        if len(found) >= 3:
            break
    return found[:3]


def _recorded_command(folder: Path) -> str | None:
    """The command a run in ``folder`` recorded (``run_record``), None for none or unreadable."""
    with contextlib.suppress(OSError, ValueError, AttributeError):
        return json.loads((folder / RUN_RECORD).read_text(encoding="utf-8")).get("command")
    return None


def check_out(out: str | os.PathLike, *, resume: bool = False,
              model: str | os.PathLike | None = None, check_files: bool = True,
              command: str | None = None, overwrite: bool = False) -> Path:
    """Refuse an output folder that would overwrite what the user gave, before anything is
    created: the model folder or a folder inside it (links resolved: always), a file; unless
    ``resume`` or ``overwrite``: a folder holding files no minift run writes, or another
    command's run (``command``: this one's, as ``run_record`` records it); ``resume`` without
    ``resume.pt``."""
    folder = Path(out)
    where = folder.resolve()
    if model is not None:
        source = Path(model).resolve()
        if where == source or source in where.parents:
            raise OptionError(f"`out` {folder}: is {'' if where == source else 'inside '}the "
                              f"model folder {model}; the model the run starts from is never "
                              "written to: give another `out`")
    if folder.exists() and not folder.is_dir():
        raise OptionError(f"`out` {folder}: exists and is not a folder")
    if resume:
        if not (folder / "resume.pt").is_file():
            raise OptionError(f"`resume`: {folder / 'resume.pt'} does not exist, nothing to "
                              "resume (run without `resume` to start afresh)")
    elif check_files and folder.is_dir() and not overwrite:
        try:
            foreign = _foreign(folder)
        except OSError as err:
            raise OptionError(f"`out` {folder}: cannot read it ({err.strerror or err})") from None
        if foreign:
            raise OptionError(f"`out` {folder}: holds files no minift run writes "
                              f"({', '.join(foreign)}); they are never overwritten: give an "
                              "empty or new folder (or `overwrite`, to write beside them)")
        other = _recorded_command(folder)
        if command is not None and other is not None and other != command:
            raise OptionError(f"`out` {folder}: holds a `minift {other}` run, not `minift "
                              f"{command}`; give another folder (or `overwrite`, to replace it)")
    return folder


@contextlib.contextmanager
def claim_folder(out: str | os.PathLike, *, resume: bool = False,
                 model: str | os.PathLike | None = None, check_files: bool = False,
                 keep_resume: bool | None = None, record: dict | None = None,
                 overwrite: bool = False) -> Iterator[Path]:
    """Check the output folder (``check_out``; ``check_files``: refuse the user's files or
    another command's run, unless ``overwrite``), create it and hold its lock for the block,
    in which SIGTERM stops as Ctrl-C does (the lock released, one line printed). A folder this
    call created and nothing filled is removed when the block fails. A training run
    (``keep_resume`` not None) ends with ``finish_run``. ``record`` (``run_record``): a resume
    is checked against the interrupted run's (``check_record``), then it is kept in the folder
    for the next run there. Under torchrun only rank 0 writes."""
    folder = check_out(out, resume=resume, model=model, check_files=check_files,
                       command=None if record is None else record["command"], overwrite=overwrite)
    if resume and record is not None:
        check_record(folder, record)
    if os.environ.get("RANK", "0") != "0":
        yield folder
        return
    created = not folder.exists()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        lock = acquire(folder)
    except OSError as err:
        raise OptionError(f"`out` {folder}: cannot write there ({err.strerror or err})") from None
    with terminate_as_interrupt():  # until the lock is released
        try:
            if record is not None:
                atomic_write(folder / RUN_RECORD,
                             (json.dumps(record, indent=2) + "\n").encode("utf-8"))
            yield folder
            if keep_resume is not None:
                finish_run(folder, keep_resume)
        finally:
            release(lock)
            if created and [p.name for p in folder.iterdir()] == [RUN_RECORD]:
                (folder / RUN_RECORD).unlink()  # a failed check left nothing else in it
            if created:
                with contextlib.suppress(OSError):
                    folder.rmdir()  # only when empty


def claim_run(command: str, options: Any, model: Path, files: dict[str, Any],
              **facts: Any) -> contextlib.AbstractContextManager[Path]:
    """``claim_folder`` for a recipe's run of ``command`` into ``options.out``, as every recipe
    claims it: the user's files refused, the ``run_record`` of ``files`` and ``facts`` kept; a
    training run (options with ``keep_resume``) resumes and finishes as its options say."""
    return claim_folder(options.out, resume=getattr(options, "resume", False), model=model,
                        check_files=True, keep_resume=getattr(options, "keep_resume", None),
                        overwrite=options.overwrite,
                        record=run_record(command, options, files, **facts))


def finish_run(folder: Path, keep_resume: bool) -> None:
    """The last step of a training run, once its model, tokenizer and metrics.json are written:
    remove ``best/`` (renamed to ``best.new`` first, which the next start removes: no half-removed
    best/), then resume.pt (unless ``keep_resume``). A kill before that leaves a folder that
    ``resume`` completes into the uninterrupted result; after it, the finished folder."""
    best, doomed = folder / "best", folder / "best.new"
    if best.is_dir():
        shutil.rmtree(doomed, ignore_errors=True)
        os.rename(best, doomed)
        fsync_dir(folder)
        shutil.rmtree(doomed)
    if not keep_resume:
        (folder / "resume.pt").unlink(missing_ok=True)
        fsync_dir(folder)


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived: the run stops as on Ctrl-C."""


@contextlib.contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """Within the block SIGTERM raises ``Terminated`` (a KeyboardInterrupt), so that a killed
    run releases its lock and says what it left; the previous handler comes back after."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, frame):
        raise Terminated("terminated (SIGTERM)")

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


# The options a resume may change (the rest change what a step computes, so the result would
# be another run's): a longer run and the learning rates (the schedule is rebuilt at the
# restored step: ``minift.core.resume``), the evaluation and saving intervals, the test file
# (scored once at the end), and how and where it runs.
RESUMABLE = {"out", "resume", "keep_resume", "epochs", "max_steps", "lr", "head_lr",
             "warmup_ratio", "schedule", "weight_decay", "eval_every", "save_every", "log_every",
             "patience", "test", "progress", "device", "compile", "activation_checkpointing",
             "data_dir"}


def _digest(path: Path) -> dict:
    """A data file's identity: its size and the sha256 of its contents (read in blocks)."""
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            sha.update(block)
    return {"size": path.stat().st_size, "sha256": sha.hexdigest()}


def _paths(files: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """``(name, path)`` of each file given (a list under ``name[i]``), skipping None."""
    for name, value in files.items():
        many = isinstance(value, list | tuple)
        for i, path in enumerate(value if many else [value]):
            if path is not None and Path(path).is_file():
                yield (f"{name}[{i}]" if many else name), str(path)


def run_record(command: str, options: Any, files: dict[str, Any], **facts: Any) -> dict:
    """What a resume of this run must find unchanged: the command, the options (as JSON), each
    data file's size and hash (``files``: name -> path, None for none), ``facts`` (the labels)."""
    values = {spec.name: getattr(options, spec.name) for spec in dataclasses.fields(options)}
    return {"command": command,
            "options": json.loads(json.dumps(values, default=str)),
            "files": {name: _digest(Path(path)) for name, path in _paths(files)},
            "facts": json.loads(json.dumps(facts, default=str))}


def check_record(folder: Path, record: dict) -> None:
    """Refuse a resume whose command, data files, labels or step-changing options differ from
    what the interrupted run recorded, naming each difference (no record: nothing to compare)."""
    try:
        saved = json.loads((folder / RUN_RECORD).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return
    except (OSError, ValueError) as err:
        raise OptionError(f"`resume`: cannot read {folder / RUN_RECORD} ({err})") from None
    if saved.get("command") != record["command"]:
        raise OptionError(f"`resume`: {folder} holds a `minift {saved.get('command')}` run, not "
                          f"`minift {record['command']}`; give another `out`")
    differences = []
    by_content = {name.split("[")[0] for name in (*saved.get("files", {}), *record["files"])}
    for key in sorted(set(saved.get("options", {})) | set(record["options"])):
        old, new = saved.get("options", {}).get(key), record["options"].get(key)
        if key not in RESUMABLE and key not in by_content and old != new:  # files: by content
            differences.append(f"`{key}` {old!r} -> {new!r}")
    for name in sorted(set(saved.get("files", {})) | set(record["files"])):
        old, new = saved.get("files", {}).get(name), record["files"].get(name)
        if name.split("[")[0] not in RESUMABLE and old != new:
            what = "content" if old and new and old["size"] == new["size"] else "size"
            differences.append(f"the file of `{name}` ({what} differs: "
                               f"{(old or {}).get('size')} -> {(new or {}).get('size')} bytes)")
    for key in sorted(set(saved.get("facts", {})) | set(record["facts"])):
        old, new = saved.get("facts", {}).get(key), record["facts"].get(key)
        if old != new:
            differences.append(f"{key} {old!r} -> {new!r}")
    if differences:
        raise OptionError(f"`resume`: the run in {folder} was started with other data or "
                          f"options ({'; '.join(differences)}); a resume may change only "
                          f"{', '.join(f'`{k}`' for k in sorted(RESUMABLE - {'out', 'resume'}))}: "
                          "resume with the same ones, or train afresh into another `out`")


def write_metrics(out: Path, metrics: dict) -> None:
    """``out/metrics.json``, written atomically."""
    atomic_write(out / "metrics.json", (json.dumps(metrics, indent=2) + "\n").encode("utf-8"))


def pick_device(device: str | None) -> torch.device:
    """The device to run on (default: cuda when available); under torchrun, also join the
    process group (``minift.core.ddp``) and take this rank's own GPU."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    distributed.setup(device.type)
    return distributed.local_device(device)


def is_main() -> bool:
    """False on the ranks of a torchrun job that only help to train (rank 0 writes)."""
    return distributed.context().is_main


def subset(examples: list, limit: int | None, seed: int) -> list:
    """A fixed, seeded random subset of ``limit`` examples (all of them when None)."""
    if limit is None or limit >= len(examples):
        return examples
    keep = sorted(random.Random(seed).sample(range(len(examples)), limit))
    return [examples[i] for i in keep]


def dev_from_train(examples: list, size: int, limit_train: int | None, split_seed: int,
                   where: str) -> tuple[list, list]:
    """A fixed split of a training file, drawn with ``split_seed`` (the same whatever the
    training seed): ``size`` examples for dev, and ``limit_train`` of the others (all of them
    when None) to train on. Returns ``(train, dev)``, each in file order."""
    if size >= len(examples):
        raise OptionError(f"`dev_from_train` {size}: {where} has only {len(examples)} examples")
    order = list(range(len(examples)))
    random.Random(split_seed).shuffle(order)
    rest = order[size:] if limit_train is None else order[size:size + limit_train]
    return [examples[i] for i in sorted(rest)], [examples[i] for i in sorted(order[:size])]


def read_labelled(path: str, text_col: str, label_col: str, format: str | None = None) -> list:
    """Examples of a labelled file: TSV, CSV, JSONL (``data.read_examples``), or semicolon
    ``text;label`` lines (``format="semicolon"``, or a ``.txt`` file, as Emotion ships)."""
    if format == "semicolon" or (format is None and Path(path).suffix.lower() == ".txt"):
        return read_semicolon_examples(path, text_col=text_col, label_col=label_col)
    return read_examples(path, text_col=text_col, label_col=label_col, format=format)


def epoch_batches(dataset, batch_size: int, seed: int, *,
                  lengths: bool = False) -> Callable[[int], list]:
    """``train_batches`` of a dataset: epoch e shuffled by a generator seeded with seed + e;
    ``lengths``: each batch carries its rows' host-counted lengths (``with_lengths``), so that
    the fast model unpads without reading the mask back from a GPU."""
    def batches(epoch: int) -> list:
        made = dataset.batches(batch_size, generator=torch.Generator().manual_seed(seed + epoch))
        return [with_lengths(batch) for batch in made] if lengths else made

    return batches
