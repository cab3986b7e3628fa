"""minift.run.options: every option defined once, read the same way by the recipe's call, the
command line and the search grid."""

import argparse
import dataclasses
import os

import pytest

from minift.core.loop import TrainConfig
from minift.run import cli, options, recipes
from minift.run.cli import build_parser
from minift.run.search import HYPERPARAMETERS


def test_the_loop_options_are_train_configs_own():
    """Read from loop.py's source (no torch at --help), they are TrainConfig's fields."""
    read = options.loop_fields()
    real = {spec.name: spec for spec in dataclasses.fields(TrainConfig)}
    assert list(read) == list(real)
    for name in options.LOOP:
        assert read[name][1] == real[name].default, name
    assert set(options.LOOP) <= set(real)


def test_a_recipe_names_an_unknown_keyword_and_a_bad_field():
    with pytest.raises(TypeError, match="'epoch'"):
        recipes.finetune(out="x", epoch=1)
    with pytest.raises(options.OptionError) as caught:
        recipes.finetune(out="x", warmup_ratio=1.5)
    assert str(caught.value) == "warmup_ratio must be in [0, 1], got 1.5"
    assert caught.value.render(options.flag) == "--warmup-ratio must be in [0, 1], got 1.5"


def test_the_parser_and_the_grid_come_from_the_fields():
    parser = build_parser()
    args = parser.parse_args(["qa", "--question", "Who?", "--context", "Me.", "--no-progress"])
    assert options.from_namespace(options.AnswerOptions, args)["question"] == "Who?"
    args = parser.parse_args(["finetune", "--out", "o", "--no-progress"])
    called = options.from_namespace(options.FinetuneOptions, args)
    assert called["progress"] is False and called["lr"] is None  # not given
    assert options.FinetuneOptions(**called) == options.FinetuneOptions(out="o", progress=False)
    assert options.FinetuneOptions(**called).lr == 5e-5  # TrainConfig's default
    assert options.flag("random_draws") == "--random" and options.flag("progress") == "--no-progress"
    for task, parsers in HYPERPARAMETERS.items():
        searchable = {spec.name for spec in dataclasses.fields(options.RECIPES[task])
                      if spec.metadata.get("search")}
        assert set(parsers) == searchable
    assert HYPERPARAMETERS["finetune"]["schedule"]("cosine") == "cosine"
    with pytest.raises(ValueError, match="is not one of"):
        HYPERPARAMETERS["finetune"]["schedule"]("step")


def test_finetune_lr_not_given_follows_what_trains():
    """No ``lr``: full fine-tuning's rate (TrainConfig's), or the frozen head's own with
    ``freeze`` head; a rate given is kept, whatever trains."""
    make = options.FinetuneOptions
    assert make(out="o").lr == options.loop_fields()["lr"][1] == 5e-5
    assert make(out="o", freeze="last-2").lr == 5e-5
    assert make(out="o", freeze="head").lr == options.FROZEN_HEAD_LR
    assert options.FROZEN_HEAD_LR > 100 * 5e-5  # a convex head on fixed features: far higher
    assert make(out="o", freeze="head", lr=3e-4).lr == 3e-4
    with pytest.raises(options.OptionError, match="lr must be positive"):
        make(out="o", freeze="head", lr=0.0)


# --- One vocabulary: a name means the same thing in every command (issue #32) --------------------

# The shared flags whose default, help or choices differ between commands, on purpose: each one's
# reason. A new difference fails the test below, and so does one that no longer differs.
OWN_MEANING = {
    "--batch-size": "setfit's step is a batch of pairs (16), the others' of examples",
    "--dev": "each command reads its own format (finetune and qa can do without: --task, --squad)",
    "--train": "each command reads its own format (finetune and qa can do without)",
    "--epochs": "setfit's are contrastive epochs (1); qa trains 2 (SQuAD's usual)",
    "--eval-every": "pretrain evaluates held-out loss, at the end by default; seq2seq generates",
    "--freeze": "pretrain freezes the encoder to train the MLM head; classifiers freeze blocks",
    "--limit-train": "qa counts questions",
    "--lr": "setfit's is the encoder's contrastive rate (2e-5)",
    "--max-length": "each task's usual input length (a window for qa and ner, a text for setfit)",
    "--max-steps": "pretrain has no epochs, so 1000 steps by default; setfit's contrastive phase",
    "--out": "plot's --out is the folder of the curves; qa answers a --question without one",
    "--patience": "pretrain waits on the held-out loss",
    "--schedule": "pretrain's help names --patience's constant schedule",
    "--split-seed": "finetune splits examples, qa articles",
    "--task": "finetune's are GLUE tasks, seq2seq's E2E NLG (ner's --task is now --tags)",
    "--warmup-ratio": "pretrain warms up over 6% (RoBERTa's), fine-tuning 10%",
}


def _flags_by_command() -> dict[str, dict[str, argparse.Action]]:
    commands = {}
    [sub] = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    for name, parser in sub.choices.items():
        if name != "search":  # search TASK offers TASK's options, the same actions
            commands[name] = {a.option_strings[0]: a for a in parser._actions if a.option_strings
                              and not isinstance(a, argparse._HelpAction)}
    return commands


def test_a_shared_name_means_the_same_thing_in_every_command():
    commands = _flags_by_command()
    shared = {flag for flags in commands.values() for flag in flags
              if sum(flag in flags for flags in commands.values()) > 1}
    differ = set()
    for flag in sorted(shared):
        actions = {name: flags[flag] for name, flags in commands.items() if flag in flags}
        for key in ("type", "nargs", "dest"):  # always the same
            assert len({repr(getattr(a, key)) for a in actions.values()}) == 1, (flag, key)
        assert len({type(a) for a in actions.values()}) == 1, flag
        if any(len({repr(getattr(a, key)) for a in actions.values()}) > 1
               for key in ("default", "help", "choices", "required")):
            differ.add(flag)
    assert differ == set(OWN_MEANING)
    for flag in ("--device", "--threads", "--model", "--limit-dev", "--seed", "--no-progress"):
        assert flag not in differ and sum(flag in f for f in commands.values()) > 1, flag


def test_one_vocabulary_for_steps_dev_subsets_threads_and_device():
    commands = _flags_by_command()
    for name, flags in commands.items():
        if "--dev" in flags:
            assert "--limit-dev" in flags and "--max-dev" not in flags, name
        if name != "plot":  # plot draws PNGs and runs no torch
            assert "--threads" in flags, name
        if name in options.RECIPES:
            assert "--max-steps" in flags and "--steps" not in flags, name
    assert commands["similarity"]["--device"].default is None  # cuda when available, as training
    assert "cuda when available" in commands["similarity"]["--device"].help


# --- Threads that suit the machine (issue #32) ----------------------------------------------------


def _measured(cores: float, how: str = "the load average is {:.1f} on {} cores"):
    return lambda: (cores, how)


def test_threads_come_from_the_flag_the_environment_or_the_load():
    choose = cli.choose_threads
    idle = dict(measure=_measured(0.2), cpus=2, default=2)
    busy = dict(measure=_measured(3.7), cpus=2, default=2)
    assert choose(3, environ={}, **busy) == (3, "")  # --threads wins
    assert choose(None, environ={"MINIFT_THREADS": "2"}, **busy) == (2, "")
    assert choose(None, environ={"OMP_NUM_THREADS": "2"}, **busy) == (None, "")  # the user's
    assert choose(None, environ={}, **idle) == (None, "")  # torch's default, no word
    threads, notice = choose(None, environ={}, **busy)
    assert threads == 1 and "load average is 3.7 on 2 cores: 1 thread" in notice
    assert "--threads" in notice and "\n" not in notice
    assert choose(None, environ={}, measure=_measured(6.2), cpus=16, default=16)[0] == 10
    assert choose(None, environ={}, measure=lambda: None, cpus=2, default=2) == (None, "")
    for bad in ("0", "two", "-1", "99999"):
        with pytest.raises(ValueError, match=f"MINIFT_THREADS='{bad}'"):
            choose(None, environ={"MINIFT_THREADS": bad}, **idle)


def _proc_stat(*samples: tuple[int, int, int]):
    """A fake /proc/stat reader: each call returns the next sample's text, (busy, idle, iowait)
    ticks summed over two cores (user holds the busy ticks, the rest of the fields are 0)."""
    texts = iter(f"cpu  {busy} 0 0 {idle} {iowait} 0 0 0 0 0\ncpu0 1 0 0 1 0 0 0 0 0 0\n"
                 f"cpu1 1 0 0 1 0 0 0 0 0 0\nintr 12345 0\nctxt 678\n"
                 for busy, idle, iowait in samples)
    return lambda: next(texts)


def test_busy_cores_reads_the_last_moment_of_proc_stat_not_the_load_average(monkeypatch):
    """The cores in use are the non-idle share of the ticks between two reads, times the cores;
    iowait counts as idle; the 1-minute load average is not read when /proc/stat answers."""
    monkeypatch.setattr(os, "getloadavg", lambda: (3.7, 3.0, 2.0))  # a lagging average: unused
    waited = []
    # 1,000 ticks pass: 900 busy, 60 idle, 40 waiting on a disk: 0.9 of the 2 cores, 1.8 cores.
    busy, how = cli.busy_cores(_proc_stat((5000, 7000, 100), (5900, 7060, 140)), waited.append)
    assert busy == pytest.approx(1.8, abs=1e-9) and "/proc/stat" in how and waited == [0.2]
    # Every tick idle: the machine is idle now, whatever the load average says.
    busy, _ = cli.busy_cores(_proc_stat((5000, 7000, 100), (5000, 8000, 100)), waited.append)
    assert busy == 0
    threads, notice = cli.choose_threads(
        None, environ={}, cpus=2, default=2,
        measure=lambda: cli.busy_cores(_proc_stat((0, 0, 0), (950, 50, 0)), lambda s: None))
    assert threads == 1 and notice.startswith("minift: other jobs keep 1.9 of 2 cores busy")
    assert "\n" not in notice and "--threads N" in notice
    # No tick between the reads: nothing measured (torch's default, no notice).
    assert cli.busy_cores(_proc_stat((5, 5, 0), (5, 5, 0)), lambda s: None) is None


def test_busy_cores_falls_back_to_the_load_average_without_proc(monkeypatch):
    """Where there is no /proc/stat (macOS) or it is not what Linux writes, the load average;
    without either, nothing (the caller keeps torch's default)."""
    def missing():
        raise FileNotFoundError("/proc/stat")

    monkeypatch.setattr(os, "getloadavg", lambda: (3.7, 3.0, 2.0))
    for reader in (missing, lambda: "something else\n", lambda: ""):
        load, how = cli.busy_cores(reader, lambda s: None)
        assert load == 3.7 and how.format(load, 2) == "the load average is 3.7 on 2 cores"

    def no_average():
        raise OSError("no load average")

    monkeypatch.setattr(os, "getloadavg", no_average)
    assert cli.busy_cores(missing, lambda s: None) is None


def test_the_command_sets_torchs_threads_once_before_any_work(monkeypatch, capsys):
    import torch

    calls = []
    monkeypatch.setattr(torch, "set_num_threads", calls.append)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("MINIFT_THREADS", raising=False)
    broken = ["similarity", "--pair", "no separator"]  # fails after the threads are set
    assert cli.main([*broken, "--threads", "3"]) == 2 and calls == [3]
    monkeypatch.setenv("MINIFT_THREADS", "2")
    assert cli.main(broken) == 2 and calls == [3, 2]
    monkeypatch.delenv("MINIFT_THREADS")
    monkeypatch.setattr(cli, "busy_cores", _measured(3.7))
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    assert cli.main(broken) == 2 and calls == [3, 2, 1]
    err = capsys.readouterr().err
    assert err.count("minift: the load average is 3.7 on 2 cores: 1 thread") == 1
    monkeypatch.setenv("MINIFT_THREADS", "lots")
    assert cli.main(broken) == 2 and "MINIFT_THREADS='lots'" in capsys.readouterr().err
    assert cli.main([*broken, "--threads", "0"]) == 2
    assert "--threads must be at least 1, got 0" in capsys.readouterr().err
    assert calls == [3, 2, 1]
