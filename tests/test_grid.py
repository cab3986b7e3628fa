"""minift.run.grid: a grid's values parsed by each option's own type, every combination or
seeded random draws over a log range, and every searchable name an option of its recipe. (A bad
grid stopped before any trial is tested through the search, in test_search.py.)"""

import dataclasses
import math

from scipy import stats

import minift.run.search
from minift.run.grid import LogRange, configurations, parse_grid
from minift.run.options import RECIPES


def test_grid_parsing_and_random_draws():
    grid = parse_grid("finetune", ["lr=5e-5,3e-5", "batch-size=16,32", "freeze=none,last-2"])
    assert grid == {"lr": [5e-5, 3e-5], "batch_size": [16, 32], "freeze": ["none", "last-2"]}
    assert len(configurations(grid)) == 8
    assert configurations(grid)[1] == {"lr": 5e-5, "batch_size": 16, "freeze": "last-2"}
    ranged = parse_grid("finetune", ["lr=log:1e-5:1e-4", "batch_size=16,32"])
    assert ranged["lr"] == LogRange(1e-5, 1e-4)
    drawn = configurations(ranged, 5, seed=0)
    assert drawn == configurations(ranged, 5, seed=0) != configurations(ranged, 5, seed=1)
    assert all(1e-5 <= c["lr"] <= 1e-4 for c in drawn) and len({c["lr"] for c in drawn}) == 5
    assert len(configurations(grid, 8)) == 8  # every configuration, in a seeded order


def test_every_searchable_hyperparameter_is_an_option_of_its_recipe():
    """A name the grid accepts reaches the recipe as a keyword (a typo here fails every trial)."""
    for task, names in minift.run.search.HYPERPARAMETERS.items():
        accepted = {spec.name for spec in dataclasses.fields(RECIPES[task])}
        assert set(names) <= accepted, (task, sorted(set(names) - accepted))



def test_a_log_range_is_drawn_log_uniformly():
    """400 draws from log:1e-6:1e-2: log-uniform puts a quarter in each decade (a plain uniform
    draw would put 99% in the last). Chi-square p > 1e-6, so a correct draw fails less than once
    in a million seeds; the seed is fixed, so the test always passes or always fails."""
    drawn = configurations({"lr": LogRange(1e-6, 1e-2)}, 400, seed=0)
    decades = [min(3, math.floor(math.log10(c["lr"]) + 6)) for c in drawn]
    counts = [decades.count(d) for d in range(4)]
    assert sum(counts) == 400 and all(1e-6 <= c["lr"] <= 1e-2 for c in drawn)
    assert stats.chisquare(counts).pvalue > 1e-6, counts
