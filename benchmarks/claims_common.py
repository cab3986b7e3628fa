"""What the claims benchmarks (``claims_transfer.py``, ``claims_freezing.py``) share: the run's
options, the summary statistics over seeds, and where the results go.

Scores are in points (0-100). "mean ± std" is the sample standard deviation over seeds; a paired
difference (two arms run with the same seeds, so the same training subset and head draw) is
reported with its standard error, std of the differences / sqrt(seeds): the noise left in it.
"""

from __future__ import annotations

import argparse
import statistics
import sys

import torch
from speed_common import machine, result_name, write_report

from minift.fast.cpu_kernels import cpu_model

SEEDS = [0, 1, 2, 3, 4]


def claims_parser(doc: str) -> argparse.ArgumentParser:
    """--quick, --seeds, --device: what every claims benchmark takes."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny subsets, 2 seeds: a smoke test")
    parser.add_argument("--seeds", type=int, nargs="+", help=f"seeds (default {SEEDS})")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's); on a "
                        "CPU shared with other jobs, 1 avoids oversubscription, which can make "
                        "a run ten times slower")
    return parser


def parse(parser: argparse.ArgumentParser) -> argparse.Namespace:
    """Parse the options and set the torch threads."""
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    return args


def mean_std(values: list[float]) -> str:
    """'mean ± std' of scores in points (one value: the value alone)."""
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def paired(a: list[float], b: list[float]) -> str:
    """The mean of a - b over paired seeds, ± its standard error."""
    deltas = [x - y for x, y in zip(a, b, strict=True)]
    if len(deltas) == 1:
        return f"{deltas[0]:+.2f}"
    return f"{statistics.mean(deltas):+.2f} ± {statistics.stdev(deltas) / len(deltas) ** 0.5:.2f}"


def report(base: str, device: torch.device, quick: bool, payload: dict, table: str,
           title: str) -> None:
    """Write ``benchmarks/results/<base>[_cuda][_quick].{json,md}``, naming the CPU."""
    info = machine(device) | {"cpu_model": cpu_model()}
    write_report(result_name(base, device, quick), {"machine": info} | payload, table, title,
                 f"python benchmarks/{base}.py {' '.join(sys.argv[1:])}".rstrip())
