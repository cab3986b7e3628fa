"""Linear layers: F.linear (MKL on a CPU) against minift's ``linear`` (oneDNN), MiniLM's shapes.

Question: how much does the matrix library alone change the cost of a linear layer? PyTorch's CPU
build calls MKL for float32 ``F.linear`` and ``torch.mm``; minift's ``linear`` calls oneDNN for
the same product (see ``minift.fast.cpu_kernels.linear``). Same inputs, same weights, float32, forward alone
and forward + backward (gradients of input, weight and bias), for the three shapes of a MiniLM
block (hidden 384, intermediate 1536) and the masked-language head's decoder (384 -> 30,522),
at the token counts of an unpadded batch of 32 SST-2 sentences and of 32 x 128 tokens.

    python benchmarks/linear_speed.py            # about a minute on 2 CPU cores
    python benchmarks/linear_speed.py --quick
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from speed_common import interleaved, machine, result_name, speed_parser, write_report

from minift.core.metrics import format_table
from minift.fast.cpu_kernels import linear

SHAPES = {"Q, K, V, out (384 -> 384)": (384, 384), "FFN up (384 -> 1536)": (384, 1536),
          "FFN down (1536 -> 384)": (1536, 384), "MLM decoder (384 -> 30522)": (384, 30522)}


def main() -> None:
    parser = speed_parser(__doc__)
    args = parser.parse_args()
    device = torch.device(args.device)
    rounds = args.rounds or (2 if args.quick else 5)
    repeats = 2 if args.quick else 5
    tokens_list = (800,) if args.quick else (800, 4096)
    gen = torch.Generator().manual_seed(0)
    rows, records = [], []
    for tokens in tokens_list:
        for shape_name, (fan_in, fan_out) in SHAPES.items():
            if fan_out > 4096 and tokens > 1000:
                continue  # the decoder runs on the masked tokens only: a few hundred a batch
            x = torch.randn(tokens, fan_in, generator=gen).to(device)
            w = (torch.randn(fan_out, fan_in, generator=gen) / fan_in**0.5).to(device)
            b = torch.randn(fan_out, generator=gen).to(device)
            dy = torch.randn(tokens, fan_out, generator=gen).to(device)
            xg, wg, bg = (t.clone().requires_grad_() for t in (x, w, b))
            for mode in ("forward", "forward + backward"):
                def run(fn, mode=mode, x=x, w=w, b=b, dy=dy, xg=xg, wg=wg, bg=bg):
                    def go():
                        for _ in range(repeats):
                            if mode == "forward":
                                with torch.no_grad():
                                    fn(x, w, b)
                            else:
                                fn(xg, wg, bg).backward(dy)
                                xg.grad = wg.grad = bg.grad = None
                    return go

                timings = interleaved({"F.linear": run(F.linear), "minift": run(linear)}, device,
                                      rounds)
                ms = {k: 1e3 * t["median_s"] / repeats for k, t in timings.items()}
                flops = 2 * tokens * fan_in * fan_out * (1 if mode == "forward" else 3)
                records.append({"tokens": tokens, "shape": shape_name, "mode": mode,
                                "flops": flops, "timings": timings, "repeats": repeats})
                rows.append({"tokens": tokens, "layer": shape_name, "mode": mode,
                             "F.linear ms": ms["F.linear"], "minift ms": ms["minift"],
                             "F.linear GFLOP/s": flops / ms["F.linear"] / 1e6,
                             "minift GFLOP/s": flops / ms["minift"] / 1e6,
                             "F.linear / minift": ms["F.linear"] / ms["minift"]})
                print(format_table(rows[-1:], float_format=".2f"), flush=True)
    payload = {"machine": machine(device), "rounds": rounds, "quick": args.quick, "runs": records}
    name = result_name("linear_speed", device, args.quick)
    write_report(name, payload, format_table(rows, float_format=".2f"),
                 "Linear layers, float32: F.linear against minift's linear (oneDNN on a CPU)",
                 "python benchmarks/linear_speed.py" + (" --quick" if args.quick else ""))


if __name__ == "__main__":
    main()
