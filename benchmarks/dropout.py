"""Dropout's cost: torch's ``F.dropout`` against minift's ``dropout``, mask drawn two ways.

Question: how long does drawing and applying a dropout mask take, on the tensors a training step
of the published MiniLM drops? Both functions keep each element with probability 1 - p and scale
it by 1 / (1 - p) (tests/test_cpu_kernels.py holds minift's to that distribution); ``F.dropout`` draws
its mask with ``bernoulli_``, minift's compares a uniform draw with p. Shapes: the hidden states
of a batch of 32 sequences of 64 real tokens, (2048, 384), and their attention probabilities,
(12, 64, 64) per sequence, 32 of them, as ``varlen_attention`` drops them. fp32 and bf16.
The end-to-end effect on a training step is in ``train_step.py`` ("minift, F.dropout" rows).

    python benchmarks/dropout.py            # seconds
    python benchmarks/dropout.py --quick
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from speed_common import interleaved, machine, write_report

from minift.core.metrics import format_table
from minift.fast.cpu_kernels import dropout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    rounds, repeats = (3, 2) if args.quick else (9, 5)
    gen = torch.Generator().manual_seed(0)
    shapes = {"hidden states (2048, 384)": [(2048, 384)],
              "attention probabilities 32 x (12, 64, 64)": [(1, 12, 64, 64)] * 32}
    rows, records = [], []
    for dtype in (torch.float32, torch.bfloat16):
        for what, tensor_shapes in shapes.items():
            xs = [torch.randn(s, generator=gen).to(device, dtype) for s in tensor_shapes]

            def run(fn, xs=xs):
                def go():
                    for _ in range(repeats):
                        for x in xs:
                            fn(x, 0.1, True)
                return go

            timings = interleaved({"F.dropout": run(F.dropout), "minift": run(dropout)},
                                  device, rounds)
            ms = {name: 1000 * t["median_s"] / repeats for name, t in timings.items()}
            records.append({"tensors": what, "dtype": str(dtype), "timings": timings,
                            "repeats": repeats, "ms_per_call": ms})
            rows.append({"tensors": what, "dtype": str(dtype).removeprefix("torch."),
                         "F.dropout ms": ms["F.dropout"], "minift ms": ms["minift"],
                         "F.dropout / minift": ms["F.dropout"] / ms["minift"]})
            print(format_table(rows[-1:], float_format=".2f"), flush=True)
    suffix = ("_" + device.type if device.type != "cpu" else "") + ("_quick" if args.quick else "")
    write_report("dropout" + suffix, {"machine": machine(device), "rounds": rounds,
                                      "quick": args.quick, "runs": records},
                 format_table(rows, float_format=".2f"),
                 "Dropout: time to draw and apply one mask (ms), F.dropout vs minift",
                 "python benchmarks/dropout.py" + (" --quick" if args.quick else ""))


if __name__ == "__main__":
    main()
