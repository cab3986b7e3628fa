"""Fused QKV projection: does one matmul on the concatenated weights beat three?

Question: the query, key and value projections read the same input; fused into one
(tokens, hidden) x (hidden, 3 * hidden) matmul, the input is read (and, under autocast, cast to
bf16) once instead of three times, and the backward's input gradient is one matmul instead of
three plus two additions. Fast BERTs (MosaicBERT, ModernBERT) fuse them. Does it pay off here?
minift keeps three linear layers named as in the checkpoint; "minift, fused QKV" computes the same
q, k, v from ``torch.cat`` of the three weights (``fused_project`` below swapped in for
``FastSelfAttention.project``), on the unpadded path, inference and training step, fp32 and bf16,
same weights and batches, interleaved. transformers is not in this question: both columns are
minift.

    python benchmarks/fused_qkv.py            # a few minutes on 2 CPU cores
    python benchmarks/fused_qkv.py --quick
"""

from __future__ import annotations

import contextlib

import torch
from speed_common import (
    interleaved,
    machine,
    real_batches,
    result_name,
    speed_parser,
    to_device,
    training_steps,
    write_report,
)
from train_step import with_labels

from minift.core.metrics import format_table
from minift.core.optim import make_optimizer
from minift.data.tokenizer import Tokenizer
from minift.fast.cpu_kernels import linear
from minift.fast.unpad import FastSelfAttention, speed_up
from minift.hf.checkpoint import resolve_model_dir
from minift.tasks.classify import SequenceClassifier


def fused_project(self: FastSelfAttention, x: torch.Tensor):
    """``FastSelfAttention.project`` as one matmul: (tokens, hidden) -> q, k, v, each
    (tokens, heads, head_dim)."""
    weight = torch.cat([self.query.weight, self.key.weight, self.value.weight])  # (3 h, h)
    bias = torch.cat([self.query.bias, self.key.bias, self.value.bias])
    return linear(x, weight, bias).view(len(x), 3, self.num_heads, self.head_dim).unbind(1)


def with_fused_qkv(fn):
    def run():
        own = FastSelfAttention.project
        FastSelfAttention.project = fused_project
        try:
            fn()
        finally:
            FastSelfAttention.project = own
    return run


def main() -> None:
    parser = speed_parser(__doc__)
    args = parser.parse_args()
    device = torch.device(args.device)
    rounds = args.rounds or (2 if args.quick else 6)
    n = 2 if args.quick else 4
    folder = resolve_model_dir("minilm")
    tokenizer = Tokenizer.from_pretrained(folder)
    torch.manual_seed(0)
    model = speed_up(SequenceClassifier.from_pretrained(folder, num_labels=2)).to(device)
    optimizer = make_optimizer(model, lr=1e-5, impl="fused")
    workloads = {"SST-2 (real)": real_batches(tokenizer, "sst2", 32, n),
                 "MRPC pairs (real)": real_batches(tokenizer, "mrpc", 32, n)}
    rows, records = [], []
    for workload, batches in workloads.items():
        batches = to_device(with_labels(batches), device)
        real = sum(int(b["attention_mask"].sum()) for b in batches)
        for mode, amp in (("inference", "fp32"), ("train step", "fp32"), ("train step", "bf16")):
            def fn(batches=batches, mode=mode, amp=amp):
                autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if amp == "bf16"
                            else contextlib.nullcontext())
                if mode == "inference":
                    model.eval()
                    with torch.inference_mode(), autocast:
                        for b in batches:
                            model(b["input_ids"], b["attention_mask"], b["token_type_ids"])
                    return
                model.train()
                training_steps(model, batches, optimizer, autocast)

            timings = interleaved({"minift": fn, "minift, fused QKV": with_fused_qkv(fn)},
                                  device, rounds)
            tps = {name: real / t["median_s"] for name, t in timings.items()}
            records.append({"workload": workload, "mode": mode, "amp": amp, "real_tokens": real,
                            "timings": timings, "real_tokens_per_s": tps})
            rows.append({"workload": workload, "mode": mode, "amp": amp,
                         **{f"{name} tok/s": v for name, v in tps.items()},
                         "fused / three": tps["minift, fused QKV"] / tps["minift"]})
            print(format_table(rows[-1:], float_format=".3f"), flush=True)
    payload = {"machine": machine(device), "rounds": rounds, "quick": args.quick,
               "runs": records}
    name = result_name("fused_qkv", device, args.quick)
    write_report(name, payload, format_table(rows, float_format=".3f"),
                 "Fused QKV projection: one matmul against three, minift on all-MiniLM-L6-v2",
                 "python benchmarks/fused_qkv.py" + (" --quick" if args.quick else ""))


if __name__ == "__main__":
    main()
