"""minift.run.options: every option defined once, read the same way by the recipe's call, the
command line and the search grid."""

import dataclasses

import pytest

from minift.core.loop import TrainConfig
from minift.run import options, recipes
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
    assert called["progress"] is False and called["lr"] == 5e-5
    assert options.FinetuneOptions(**called) == options.FinetuneOptions(out="o", progress=False)
    assert options.flag("random_draws") == "--random" and options.flag("progress") == "--no-progress"
    for task, parsers in HYPERPARAMETERS.items():
        searchable = {spec.name for spec in dataclasses.fields(options.RECIPES[task])
                      if spec.metadata.get("search")}
        assert set(parsers) == searchable
    assert HYPERPARAMETERS["finetune"]["schedule"]("cosine") == "cosine"
    with pytest.raises(ValueError, match="is not one of"):
        HYPERPARAMETERS["finetune"]["schedule"]("step")
