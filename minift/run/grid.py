"""The search grid: what ``minift search TASK --grid name=v1,v2`` may vary, and how it is read.

A hyperparameter a search may vary is a field of the recipe's options marked ``search=True``
(``minift.run.options``); its values are parsed by the field's own type, choices and check, so a
grid value is refused for the same reason the option would be.
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import Field, dataclass, fields
from typing import Any

from minift.run.options import RECIPES, SEARCHED, OptionError, kind, positive


class GridError(OptionError):
    """A ``grid`` (or ``random_draws``) that cannot be searched: names the value."""


def grid_parser(spec: Field) -> Callable[[str], Any]:
    """The parser of one ``--grid`` value of a searchable field: its type (int and float: a
    finite number), choices and check."""
    convert = kind(spec) if kind(spec) in (int, float) else str

    def parse(text: str) -> Any:
        try:
            value = convert(text)
        except ValueError:
            raise ValueError("is not " + ("a whole number" if convert is int
                                          else "a number")) from None
        if convert is not str and not math.isfinite(value):
            raise ValueError("is not a finite number")
        choices, check = spec.metadata.get("choices"), spec.metadata.get("check")
        if choices and value not in choices:
            raise ValueError(f"is not one of {', '.join(choices)}")
        if check is not None:
            check(value)
        return value

    parse.log_range = spec.metadata.get("check") is positive  # name=log:LOW:HIGH is allowed
    return parse


# task -> {the recipe's keyword: its value parser}, for the fields marked ``search``.
HYPERPARAMETERS: dict[str, dict[str, Callable[[str], Any]]] = {
    task: {spec.name: grid_parser(spec) for spec in fields(RECIPES[task])
           if spec.metadata.get("search")}
    for task in SEARCHED}

# The BERT paper's fine-tuning grid (Devlin et al. 2019, appendix A.3); seq2seq and lm fine-tune
# the same BERT body, so they start from it too (a grid to begin with, not one tuned for them).
BERT_GRID = ["lr=5e-5,3e-5,2e-5", "batch_size=16,32", "epochs=2,3,4"]
DEFAULT_GRID = {"finetune": BERT_GRID, "ner": BERT_GRID, "qa": BERT_GRID,
                "setfit": ["lr=1e-5,2e-5,5e-5", "batch_size=16,32"], "seq2seq": BERT_GRID,
                "lm": BERT_GRID}


@dataclass(frozen=True)
class LogRange:
    """``name=log:low:high``: a value drawn log-uniformly from [low, high] (``--random`` only),
    rounded to three significant digits so that it reads well in a table."""
    low: float
    high: float

    def draw(self, rng: random.Random) -> float:
        return float(f"{math.exp(rng.uniform(math.log(self.low), math.log(self.high))):.3g}")

    def __str__(self) -> str:
        return f"log:{self.low:g}:{self.high:g}"


def parse_grid(task: str, specs: Sequence[str]) -> dict[str, list | LogRange]:
    """``--grid`` options -> {hyperparameter: values, or a ``LogRange``}, in the order given;
    names are the recipe's keywords (``batch_size``; ``batch-size`` works too)."""
    allowed = HYPERPARAMETERS[task]
    if not specs:
        raise GridError("the grid is empty: give at least one `grid` name=v1,v2,...")
    grid: dict[str, list | LogRange] = {}
    for spec in specs:
        name, sep, text = spec.partition("=")
        name = name.strip().replace("-", "_")
        if not sep or not name:
            raise GridError(f"`grid` {spec!r}: expected name=v1,v2,... (or name=log:low:high)")
        if name not in allowed:
            raise GridError(f"`grid` {spec!r}: {task} has no hyperparameter {name!r}; a search "
                            f"can vary {', '.join(allowed)}")
        if name in grid:
            raise GridError(f"`grid` {spec!r}: {name} is given twice")
        parse = allowed[name]
        if text.startswith("log:"):
            bounds = text[4:].split(":")
            if not getattr(parse, "log_range", False) or len(bounds) != 2:
                raise GridError(f"`grid` {spec!r}: a log range is name=log:LOW:HIGH, for a "
                                "positive real hyperparameter such as lr")
            try:
                low, high = (parse(bound) for bound in bounds)
            except ValueError as err:
                raise GridError(f"`grid` {spec!r}: a bound {err}") from None
            if not low < high:
                raise GridError(f"`grid` {spec!r}: LOW must be less than HIGH")
            grid[name] = LogRange(low, high)
            continue
        items = [item.strip() for item in text.split(",")]
        if not text.strip() or "" in items:
            raise GridError(f"`grid` {spec!r}: an empty value (expected {name}=v1,v2,...)")
        values = []
        for item in items:
            try:
                values.append(parse(item))
            except ValueError as err:
                raise GridError(f"`grid` {spec!r}: {name}={item} {err}") from None
        if len(set(values)) < len(values):
            raise GridError(f"`grid` {spec!r}: a value is listed twice")
        grid[name] = values
    return grid


def configurations(grid: dict[str, list | LogRange], random_draws: int | None = None,
                   seed: int = 0) -> list[dict]:
    """The configurations to try: every combination of the grid, in order (the last name
    varies fastest), or ``random_draws`` distinct ones drawn with a generator seeded by
    ``seed`` (a list: one of its values, uniformly; a ``LogRange``: log-uniformly)."""
    names = list(grid)
    if random_draws is None:
        ranges = [name for name in names if isinstance(grid[name], LogRange)]
        if ranges:
            raise GridError(f"`grid` {ranges[0]}={grid[ranges[0]]}: a range is drawn from; "
                            "it needs `random_draws` N")
        return [dict(zip(names, values, strict=True))
                for values in itertools.product(*(grid[name] for name in names))]
    if random_draws < 1:
        raise GridError(f"`random_draws` must be at least 1, got {random_draws}")
    if not any(isinstance(values, LogRange) for values in grid.values()):
        size = math.prod(len(values) for values in grid.values())
        if random_draws > size:
            raise GridError(f"`random_draws` {random_draws}: the grid holds only {size} "
                            "configurations (drop `random_draws` to run them all)")
    rng = random.Random(seed)
    drawn: list[dict] = []
    while len(drawn) < random_draws:
        config = {name: values.draw(rng) if isinstance(values, LogRange) else rng.choice(values)
                  for name, values in grid.items()}
        if config not in drawn:
            drawn.append(config)
    return drawn


def describe(config: dict) -> str:
    """``lr=3e-05 batch_size=16``: a configuration on one line."""
    return " ".join(f"{name}={value:g}" if isinstance(value, float) else f"{name}={value}"
                    for name, value in config.items()) or "(the fixed options)"
